"""SamplingParams: SGLang's sampling-param names, validated up front (ValueError names the key)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import regex

from thinkform.engine.errors import RequestFieldError

_CONSTRAINT_KEYS = ("json_schema", "regex", "ebnf", "structural_tag")
_KEEP_NONE = (*_CONSTRAINT_KEYS, "max_new_tokens")  # None given for these means something


class SamplingParamError(RequestFieldError):
    """A bad sampling param; `field` is its name, from the message's "sampling_params.<name>:" prefix."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.field = self.field.removeprefix("sampling_params.")


@dataclass
class SamplingParams:
    max_new_tokens: int | None = 128  # None (given as such): as many as the context and the KV cache leave
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_regex: list[str] = field(default_factory=list)  # stop where the output matches one (SGLang's)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    n: int = 1
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    allowed_token_ids: list[int] | None = None  # vLLM's: only these tokens may be sampled
    bad_words: list[str] = field(default_factory=list)  # vLLM's: words that may not be written
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    no_stop_trim: bool = False  # SGLang's: the text is not trimmed at a stop at all (its whole last token stays)
    # vLLM's: the matched stop string stays, what its token wrote after it goes
    include_stop_str_in_output: bool = False
    json_schema: Any = None
    regex: str | None = None
    ebnf: str | None = None
    structural_tag: Any = None
    max_reasoning_tokens: int | None = None
    answer_reserve_tokens: int | None = None
    # SGLang's free-form params for custom logit processors; its `thinking_budget` (strict thinking) is honoured
    # as max_reasoning_tokens, the rest is ignored (no custom logit processors here)
    custom_params: dict[str, Any] | None = None
    sampling_seed: int | None = None  # SGLang's native spelling of seed
    stream_interval: int | None = None  # a stream's text every this many tokens (default: --stream-interval)
    stop_patterns: list[regex.Pattern] = field(default_factory=list, init=False, repr=False, compare=False)
    # bad_words as token sequences (with and without a leading space), filled by the request builder
    bad_word_ids: list[list[int]] = field(default_factory=list, init=False, repr=False, compare=False)
    # whether the request itself gave max_new_tokens: a default (128, or the server's) is cut to what the
    # context leaves, as SGLang cuts it; a number the request gave that cannot fit is an error
    max_new_tokens_given: bool = field(default=False, init=False, repr=False, compare=False)

    @classmethod
    def from_dict(cls, params: dict[str, Any] | None, defaults: dict[str, Any] | None = None) -> "SamplingParams":
        """`defaults` (the server's: the model's generation config, preferred params) fill what `params`
        leaves unset; a None given for a key that means nothing by it is unset too."""
        params = dict(params or {})
        given_max = params.get("max_new_tokens") is not None
        if defaults:
            given = {k: v for k, v in params.items() if v is not None or k in _KEEP_NONE}
            params = {**defaults, **given}
        names = {f.name for f in dataclasses.fields(cls)}
        for key in params:
            if key not in names:
                raise SamplingParamError(f"sampling_params.{key}: unknown sampling parameter")
        clean = {k: v for k, v in params.items() if v is not None or k in _KEEP_NONE}
        sp = cls(**clean)
        sp.normalize()
        sp.max_new_tokens_given = given_max
        return sp

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5 or self.top_k == 1

    def normalize(self) -> None:
        if self.max_new_tokens is not None:
            _check_int(self, "max_new_tokens", 0)
        _check_int(self, "min_new_tokens", 0)
        if self.max_new_tokens is not None and self.min_new_tokens > self.max_new_tokens:
            raise SamplingParamError(f"sampling_params.min_new_tokens: must be in [0, max_new_tokens "
                                     f"({self.max_new_tokens})], got {self.min_new_tokens}")
        _check_int(self, "n", 1)
        _check_int(self, "top_k", -1)
        if self.top_k == 0:
            raise SamplingParamError("sampling_params.top_k: must be -1 (off) or >= 1, got 0")
        _check_num(self, "temperature", 0.0, None)
        _check_num(self, "top_p", 0.0, 1.0, low_open=True)
        _check_num(self, "min_p", 0.0, 1.0)
        _check_num(self, "frequency_penalty", -2.0, 2.0)
        _check_num(self, "presence_penalty", -2.0, 2.0)
        _check_num(self, "repetition_penalty", 0.0, None, low_open=True)
        self._take_sampling_seed()
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise SamplingParamError(f"sampling_params.seed: must be an integer, got {self.seed!r}")
        if self.seed is not None and not -(2**63) <= self.seed < 2**64:
            raise SamplingParamError(f"sampling_params.seed: must fit in 64 bits, got {self.seed}")
        self.stop = _str_list(self.stop, "stop")
        self.stop_regex = _str_list(self.stop_regex, "stop_regex")
        self.stop_patterns = [_stop_pattern(p) for p in self.stop_regex]
        if self.stream_interval is not None:
            _check_int(self, "stream_interval", 1)
        self.stop_token_ids = _int_list(self.stop_token_ids, "stop_token_ids")
        if self.allowed_token_ids is not None:
            self.allowed_token_ids = _int_list(self.allowed_token_ids, "allowed_token_ids")
            if not self.allowed_token_ids:
                raise SamplingParamError("sampling_params.allowed_token_ids: must name at least one token")
        self.bad_words = _str_list(self.bad_words, "bad_words")
        self.logit_bias = _logit_bias(self.logit_bias)
        for name in ("max_reasoning_tokens", "answer_reserve_tokens"):
            if getattr(self, name) is not None:
                _check_int(self, name, 0)
        self._take_thinking_budget()
        for name in ("ignore_eos", "skip_special_tokens", "spaces_between_special_tokens", "no_stop_trim",
                     "include_stop_str_in_output"):
            if not isinstance(getattr(self, name), bool):
                raise SamplingParamError(f"sampling_params.{name}: must be a boolean, got {getattr(self, name)!r}")

    def _take_sampling_seed(self) -> None:
        if self.sampling_seed is None:
            return
        if self.seed is not None and self.seed != self.sampling_seed:
            raise SamplingParamError(f"sampling_params.sampling_seed: {self.sampling_seed} conflicts with seed={self.seed}")
        self.seed = self.sampling_seed

    def _take_thinking_budget(self) -> None:
        """custom_params.thinking_budget (SGLang's per-request budget under --enable-strict-thinking) is our
        max_reasoning_tokens; a different max_reasoning_tokens beside it is an error, not a silent choice."""
        if self.custom_params is None:
            return
        if not isinstance(self.custom_params, dict):
            raise SamplingParamError(f"sampling_params.custom_params: must be a mapping, got {self.custom_params!r}")
        budget = self.custom_params.get("thinking_budget")
        if budget is None:
            return
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
            raise SamplingParamError("sampling_params.custom_params.thinking_budget: must be an integer >= 0, "
                                     f"got {budget!r}")
        if self.max_reasoning_tokens is not None and self.max_reasoning_tokens != budget:
            raise SamplingParamError(f"sampling_params.custom_params.thinking_budget: {budget} conflicts with "
                                     f"max_reasoning_tokens={self.max_reasoning_tokens}")
        self.max_reasoning_tokens = budget


def _check_int(sp: SamplingParams, name: str, low: int) -> None:
    value = getattr(sp, name)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
        setattr(sp, name, value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SamplingParamError(f"sampling_params.{name}: must be an integer, got {value!r}")
    if value < low:
        raise SamplingParamError(f"sampling_params.{name}: must be >= {low}, got {value}")


def _check_num(sp: SamplingParams, name: str, low: float, high: float | None, low_open: bool = False) -> None:
    value = getattr(sp, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise SamplingParamError(f"sampling_params.{name}: must be a number, got {value!r}")
    if value in (float("inf"), float("-inf")):
        raise SamplingParamError(f"sampling_params.{name}: must be a finite number, got {value}")
    if value < low or (low_open and value == low) or (high is not None and value > high):
        bound = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'}]"
        raise SamplingParamError(f"sampling_params.{name}: must be in {bound}, got {value}")
    setattr(sp, name, float(value))


def _str_list(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(s, str) and s for s in value):
        raise SamplingParamError(f"sampling_params.{name}: must be a non-empty string or a list of them")
    return list(value)


def _stop_pattern(pattern: str) -> regex.Pattern:
    """Compiled with `regex` (Python's `re` syntax): its partial matches let a stream hold back text a
    match may still take."""
    try:
        compiled = regex.compile(pattern)
    except regex.error as e:
        raise SamplingParamError(f"sampling_params.stop_regex: {pattern!r} is not a valid regex ({e})") from None
    if compiled.fullmatch(""):
        raise SamplingParamError(f"sampling_params.stop_regex: {pattern!r} matches the empty string (it would "
                                 "stop before the first token)")
    return compiled


def _int_list(value: Any, name: str) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, (set, frozenset)):  # SGLang's type for stop_token_ids
        value = list(value)
    if not isinstance(value, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value):
        raise SamplingParamError(f"sampling_params.{name}: must be a list of token ids")
    return list(value)


def _logit_bias(value: Any) -> dict[int, float]:
    if not value:
        return {}
    if not isinstance(value, dict):
        raise SamplingParamError("sampling_params.logit_bias: must be a mapping of token id to bias")
    out: dict[int, float] = {}
    for k, v in value.items():
        try:
            tid = int(k)
        except (TypeError, ValueError):
            raise SamplingParamError(f"sampling_params.logit_bias: key {k!r} is not a token id") from None
        if tid < 0:
            raise SamplingParamError(f"sampling_params.logit_bias: key {k!r} is not a token id (negative)")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise SamplingParamError(f"sampling_params.logit_bias[{k}]: bias must be a number")
        out[tid] = float(max(-100.0, min(100.0, v)))
    return out
