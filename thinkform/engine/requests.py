"""Turns API arguments into validated, tokenized requests and their sequences (one per sample)."""
from __future__ import annotations

import contextlib
import itertools
import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from thinkform.args import EngineArgs
from thinkform.engine.detokenizer import IncrementalDetokenizer
from thinkform.engine.errors import ContextLengthError, RequestFieldError
from thinkform.engine.limits import RequestLimits
from thinkform.engine.output import OutputEvent, failed_output, output_event
from thinkform.engine.sampling_params import SamplingParamError, SamplingParams
from thinkform.engine.sequence import Sequence
from thinkform.reasoning.markers import ReasoningMarkers
from thinkform.structured.backends.base import CompiledGrammar
from thinkform.structured.closing import TagScope, TagTracker, closing_reserve
from thinkform.structured.framing import FramingGuard
from thinkform.structured.gate import AnswerGuard, Phase, ReasoningGate
from thinkform.structured.runaway import NumberGuard, TaggedNumberGuard
from thinkform.structured.spec import (Constraint, constraint_from_fields, is_json_format, json_tag_bounds,
                                      only_tags, tag_grammar, tag_openings, tag_strings, text_tag, wrapper_tags,
                                      xml_tags)
from thinkform.structured.utf8 import Utf8Guard

logger = logging.getLogger("thinkform")

REASONING_STARTS = ("reasoning", "open", "answer")


@dataclass
class PromptLogprobs:
    """What one prompt of a request asks of logprobs, resolved from LogprobOptions."""
    return_logprob: bool
    top_logprobs_num: int
    scored_from: int  # the first prompt token in input_token_logprobs
    token_ids: list[int] | None  # these tokens' logprobs at every position (None: none)


@dataclass
class LogprobOptions:
    """What a request asks of logprobs, in SGLang's terms. `return_logprob`, `top_logprobs_num` and
    `logprob_start_len` are one value for every prompt or a list of one per prompt; `token_ids_logprob` is
    one list of ids for every prompt or one list per prompt. `logprob_start_len` is the first prompt token
    returned in input_token_logprobs (-1: the last one only); each entry's third slot holds the token's text
    with `return_text_in_logprobs`."""
    return_logprob: bool | list[bool] | None = False
    top_logprobs_num: int | list[int] | None = 0
    logprob_start_len: int | list[int] | None = -1
    return_text_in_logprobs: bool = False
    token_ids_logprob: list[int] | list[list[int]] | None = None

    def resolve(self, prompts: list[list[int]], vocab_size: int, parallel: bool) -> list[PromptLogprobs]:
        """Each prompt's logprob asks, checked; raises RequestFieldError naming the field. `parallel`: some
        prompt is sampled n > 1 times, where SGLang refuses per-prompt lists."""
        count = len(prompts)
        wants = _flags(self.return_logprob, count, parallel)
        tops = _per_prompt("top_logprobs_num", self.top_logprobs_num, count, parallel)
        starts = _per_prompt("logprob_start_len", self.logprob_start_len, count, parallel)
        ids = _token_ids_per_prompt(self.token_ids_logprob, count, vocab_size, parallel)
        return [PromptLogprobs(want, _top_k(k, vocab_size), _scored_from(start, len(prompt)), each)
                for want, k, start, prompt, each in zip(wants, tops, starts, prompts, ids)]


def _per_prompt(name: str, value: Any, count: int, parallel: bool) -> list[Any]:
    """SGLang's normalisation: one value serves every prompt; a list gives one per prompt, and cannot be
    combined with parallel sampling (its samples would not line up with the list)."""
    if not isinstance(value, list):
        return [value] * count
    if parallel:
        raise RequestFieldError(f"{name}: a list (one value per prompt) cannot be combined with n > 1 "
                                "(parallel sampling); give one value for all prompts")
    if len(value) != count:
        raise RequestFieldError(f"{name}: a list needs one value per prompt ({count}), got {len(value)}")
    return value


def _flags(value: Any, count: int, parallel: bool) -> list[bool]:
    if isinstance(value, list) and not all(isinstance(v, bool) for v in value):  # one value keeps its truthiness
        raise RequestFieldError("return_logprob: a list needs true or false for each prompt")
    return [bool(v) for v in _per_prompt("return_logprob", value, count, parallel)]


def _top_k(k: Any, vocab_size: int) -> int:
    """SGLang's range: 0 up to the vocabulary (distillation and RL ask for more than OpenAI's 20)."""
    k = 0 if k is None else k
    if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= vocab_size:
        raise RequestFieldError(f"top_logprobs_num: must be an integer in [0, {vocab_size}] (the vocabulary) "
                                "(or a list of one per prompt)")
    return k


def _scored_from(start: Any, num_tokens: int) -> int:
    start = -1 if start is None else start
    if not isinstance(start, int) or isinstance(start, bool) or start < -1:
        raise RequestFieldError("logprob_start_len: must be an integer, -1 (the last prompt token) or more")
    if start >= num_tokens:
        raise RequestFieldError(f"logprob_start_len: {start} is not below the prompt's {num_tokens} tokens")
    return num_tokens - 1 if start == -1 else start


def _token_ids_per_prompt(ids: Any, count: int, vocab_size: int, parallel: bool) -> list[list[int] | None]:
    """One list of ids serves every prompt (also wrapped in a list); a list of lists gives one per prompt,
    refused with parallel sampling as SGLang does."""
    if not ids:
        return [None] * count
    if not isinstance(ids, list) or not isinstance(ids[0], list):
        lists = [ids] * count
    elif len(ids) == 1:
        lists = ids * count
    elif parallel:
        raise RequestFieldError("token_ids_logprob: one list per prompt cannot be combined with n > 1 "
                                "(parallel sampling); give one list for all prompts")
    elif len(ids) != count:
        raise RequestFieldError(f"token_ids_logprob: a list of lists needs one per prompt ({count}), got {len(ids)}")
    else:
        lists = ids
    for each in lists:
        if not isinstance(each, list) or len(each) > 1024 or not all(
                isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab_size for t in each):
            raise RequestFieldError(f"token_ids_logprob: must be up to 1024 token ids in [0, {vocab_size}) "
                                    "(or one such list per prompt)")
    return [list(each) or None for each in lists]


@dataclass
class PreparedRequest:
    rids: list[str]  # one per prompt (SGLang's: a batch's string rid is a prefix, rid_0, rid_1, ...)
    prompt_ids: list[list[int]]
    params: list[SamplingParams]
    constraint: list[Constraint | None]
    reasoning_start: str
    single: bool
    stream: bool
    logprobs: LogprobOptions
    prompt_logprobs: list[PromptLogprobs]  # each prompt's logprob asks, resolved
    compiled: dict[tuple[str, str], Any] = field(default_factory=dict)
    seqs: list[Sequence] = field(default_factory=list)
    # async_generate's: the ids the caller gave, and the abort_all epoch its preparation began in (engine.py)
    given_rids: list[str] = field(default_factory=list)
    abort_epoch: int | None = None
    arrival: float = field(default_factory=time.perf_counter)  # the engine sets when generate was called

    @property
    def num_seqs(self) -> int:
        return sum(p.n for p in self.params)

    def constraints(self) -> list[tuple[int | None, Constraint]]:
        """Each distinct constraint with the index of its first prompt (None for a single prompt), which its
        compile error names."""
        seen: dict[tuple[str, str], tuple[int | None, Constraint]] = {}
        for i, c in enumerate(self.constraint):
            if c is not None:
                seen.setdefault(c.key, (i if len(self.constraint) > 1 else None, c))
        return list(seen.values())


@contextlib.contextmanager
def naming_item(index: int | None) -> Iterator[None]:
    """A bad prompt or sampling param of a batch fails the whole batch; its error says which one it was."""
    try:
        yield
    except ValueError as e:
        if index is not None and e.args and isinstance(e.args[0], str):
            e.args = (f"{e.args[0]} (prompt {index} of the batch)", *e.args[1:])
        raise


class RequestBuilder:
    def __init__(self, parts: Any, args: EngineArgs) -> None:
        self.parts = parts
        self.args = args
        self.limits = RequestLimits.from_args(args)
        # seeds for requests without one: from --random-seed where given (a restarted server samples the same
        # way), else fresh ones
        self._seeds = random.Random(args.random_seed) if args.random_seed is not None else None
        self._seeds_lock = threading.Lock()
        # each new sequence's lazy detokenizer gets the next phase (see IncrementalDetokenizer's lazy_phase)
        self._lazy_phases = itertools.count()

    def build(self, prompt: Any, sampling_params: Any, input_ids: Any, require_reasoning: bool,
              reasoning_start: str | None, rid: Any, logprobs: LogprobOptions, stream: bool) -> PreparedRequest:
        prompts, batched = self._token_lists(prompt, input_ids)
        params = self._params(sampling_params, len(prompts))
        start = self._reasoning_start(require_reasoning, reasoning_start)
        rids = _prompt_rids(rid, len(prompts), batched)
        prompt_logprobs = logprobs.resolve(prompts, self.parts.vocab_size, parallel=any(p.n > 1 for p in params))
        constraints = []
        for i, (ids, p) in enumerate(zip(prompts, params)):
            with naming_item(i if len(prompts) > 1 else None):
                self._check_lengths(ids, p)
                constraints.append(self._constraint(p))
        single = not batched and params[0].n == 1
        return PreparedRequest(rids=rids, prompt_ids=prompts, params=params,
                               constraint=constraints, reasoning_start=start, single=single, stream=stream,
                               logprobs=logprobs, prompt_logprobs=prompt_logprobs)

    def _constraint(self, p: SamplingParams) -> Constraint | None:
        fields = {"json_schema": p.json_schema, "regex": p.regex, "ebnf": p.ebnf, "structural_tag": p.structural_tag}
        self.limits.check_constraints(fields)
        constraint = constraint_from_fields(**fields)
        if constraint is not None and p.allowed_token_ids is not None:
            raise SamplingParamError("sampling_params.allowed_token_ids: cannot be combined with a constraint "
                                     f"({constraint.field}): the grammar decides which tokens may come")
        return constraint

    def _token_lists(self, prompt: Any, input_ids: Any) -> tuple[list[list[int]], bool]:
        if (prompt is None) == (input_ids is None):
            raise ValueError("text/prompt and input_ids: give exactly one of them")
        if input_ids is not None:
            if input_ids and all(isinstance(t, int) and not isinstance(t, bool) for t in input_ids):
                lists, batched = [list(input_ids)], False
            elif input_ids and all(isinstance(x, list) for x in input_ids):
                lists, batched = [list(x) for x in input_ids], True
            else:
                raise RequestFieldError("input_ids: must be a non-empty list of token ids or a list of such lists",
                                        field="prompt")
            for i, ids in enumerate(lists):
                if not ids or any(not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < self.parts.vocab_size
                                  for t in ids):
                    with naming_item(i if len(lists) > 1 else None):
                        raise RequestFieldError(f"input_ids: token ids must be integers in [0, {self.parts.vocab_size})",
                                                field="prompt")
            return lists, batched
        if isinstance(prompt, str):
            return [self._encode(prompt)], False
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            lists = []
            for i, text in enumerate(prompt):
                with naming_item(i if len(prompt) > 1 else None):
                    lists.append(self._encode(text))
            return lists, True
        raise RequestFieldError("text/prompt: must be a string or a non-empty list of strings", field="prompt")

    def _encode(self, text: str) -> list[int]:
        ids = self.parts.tokenizer.encode(text)
        if not ids:
            raise RequestFieldError("text/prompt: the prompt is empty (no tokens)", field="prompt")
        return ids

    def _params(self, sampling_params: Any, count: int) -> list[SamplingParams]:
        if isinstance(sampling_params, list):
            if len(sampling_params) != count:
                raise ValueError(f"sampling_params: got {len(sampling_params)} for {count} prompts")
            params = []
            for i, p in enumerate(sampling_params):
                with naming_item(i if count > 1 else None):
                    params.append(self._one_params(p))
            return params
        if sampling_params is not None and not isinstance(sampling_params, dict):
            raise ValueError("sampling_params: must be a mapping (or a list of them, one per prompt)")
        # one object per prompt: length checks clamp max_new_tokens to each prompt's room
        return [self._one_params(sampling_params) for _ in range(count)]

    def _one_params(self, p: Any) -> SamplingParams:
        if p is not None and not isinstance(p, dict):
            raise ValueError("sampling_params: must be a mapping (or a list of them, one per prompt)")
        sp = SamplingParams.from_dict(p, self.parts.sampling_defaults)
        if sp.n > self.args.max_n:
            raise ValueError(f"sampling_params.n: {sp.n} is more than the server's max_n ({self.args.max_n})")
        for name, ids in (("logit_bias", list(sp.logit_bias)), ("allowed_token_ids", sp.allowed_token_ids or [])):
            outside = [t for t in ids if t >= self.parts.vocab_size]
            if outside:
                raise SamplingParamError(f"sampling_params.{name}: token id {outside[0]} is not in the vocabulary "
                                         f"(ids 0..{self.parts.vocab_size - 1})")
        sp.bad_word_ids = self._bad_word_ids(sp.bad_words)
        if isinstance(p, dict) and p.get("max_new_tokens") is not None:
            self.limits.check_max_new_tokens(sp.max_new_tokens)
        elif sp.max_new_tokens is not None:  # the default may not exceed a lower limit
            sp.max_new_tokens = min(sp.max_new_tokens, self.limits.max_new_tokens)
        return sp

    def _bad_word_ids(self, words: list[str]) -> list[list[int]]:
        """Each bad word as the tokens it is written with, alone and after a space (as vLLM reads them)."""
        out: list[list[int]] = []
        for word in words:
            for text in (word, " " + word.lstrip()):
                ids = self.parts.tokenizer.encode(text, add_special_tokens=False)
                if ids and ids not in out:
                    out.append(ids)
        return out

    def _reasoning_start(self, require_reasoning: bool, start: str | None) -> str:
        if start is not None and start not in REASONING_STARTS:
            raise ValueError(f"reasoning_start: must be one of {REASONING_STARTS}")
        if self.parts.markers is None:
            return "answer"
        if start is not None:
            return start
        return "reasoning" if require_reasoning else "answer"

    def _check_lengths(self, ids: list[int], p: SamplingParams) -> None:
        ctx = self.parts.context_length
        if len(ids) >= ctx:
            raise ContextLengthError(f"The input ({len(ids)} tokens) is longer than the model's context length "
                                     f"({ctx} tokens).", field="prompt")
        capacity = self.parts.pool.token_capacity
        if p.max_new_tokens is None:  # as SGLang: what the context, the KV cache and the server's limit leave
            p.max_new_tokens = max(0, min(self.limits.max_new_tokens, capacity - len(ids), ctx - len(ids)))
        elif not p.max_new_tokens_given:  # a default: cut to what the context and the KV cache leave (as SGLang)
            p.max_new_tokens = max(0, min(p.max_new_tokens, ctx - len(ids), capacity - len(ids)))
        if len(ids) + p.max_new_tokens > ctx:  # a 400 as in SGLang and vLLM, not a silent cut
            raise ContextLengthError(
                f"Requested token count exceeds the model's maximum context length of {ctx} tokens. You requested "
                f"a total of {len(ids) + p.max_new_tokens} tokens: {len(ids)} tokens from the input messages and "
                f"{p.max_new_tokens} tokens for the completion. Please reduce the number of tokens in the input "
                f"messages or the completion to fit within the limit.", field="max_new_tokens")
        # a prompt is admitted with room for one token after it, even one that only scores its prompt
        if len(ids) + max(p.max_new_tokens, 1) > capacity:
            raise ValueError(f"prompt + max_new_tokens ({len(ids)} + {p.max_new_tokens}) can never fit in the KV "
                             f"cache ({capacity} tokens; raise --max-total-tokens)")

    # -- sequences -------------------------------------------------------------------------------------------
    def sequences(self, req: PreparedRequest, sink: Callable[[Sequence, OutputEvent, bool], None]) -> list[Sequence]:
        seqs: list[Sequence] = []
        for ids, p, c, lp, rid in zip(req.prompt_ids, req.params, req.constraint, req.prompt_logprobs, req.rids):
            markers = self.markers_for(c)
            for k in range(p.n):
                index = len(seqs)
                gate = self._gate(req, p, c, markers)
                seq = Sequence(
                    rid=rid, index=index, output_id=rid if p.n == 1 else f"{rid}-{k}", prompt_ids=ids, params=p,
                    detok=IncrementalDetokenizer(self.parts.tokenizer, ids, self._hidden(p, c),
                                                 lazy=not req.stream and not p.stop and not p.stop_patterns,
                                                 lazy_phase=next(self._lazy_phases)),
                    generator=self._generator(p, k), sink=lambda s, fin: None, stream=req.stream, gate=gate,
                    reasoning=markers is not None and req.reasoning_start != "answer",
                    reasoning_start=req.reasoning_start, exact_answer=c is not None and c.kind != "structural_tag",
                    return_logprob=lp.return_logprob,
                    top_logprobs_num=lp.top_logprobs_num,
                    return_text_in_logprobs=bool(req.logprobs.return_text_in_logprobs),
                    token_ids_logprob=lp.token_ids if lp.return_logprob else None, logprob_start=lp.scored_from,
                    arrival=req.arrival)
                if seq.return_logprob:
                    seq.input_token_logprobs.append((None, ids[lp.scored_from], None))
                    seq.input_top_logprobs.append(None)
                    seq.input_token_ranks.append(None)
                    seq.input_token_ids_logprobs.append(None)
                seq.sink = _bind_sink(sink, markers)
                seqs.append(seq)
        return seqs

    def _hidden(self, p: SamplingParams, c: Constraint | None) -> frozenset[int]:
        """The special tokens the text leaves out: none without skip_special_tokens; the tool-call format's
        shown where the request may call tools (a structural tag), for the server's parser to read."""
        if not p.skip_special_tokens:
            return frozenset()
        if c is not None and c.kind == "structural_tag":
            return self.parts.hidden_ids - self.parts.tool_markup_ids
        return self.parts.hidden_ids

    def markers_for(self, c: Constraint | None) -> ReasoningMarkers | None:
        """The family's markers as this constraint's request reads them (ReasoningMarkers.for_answer)."""
        markers = self.parts.markers
        tag = c is not None and c.kind == "structural_tag"
        return markers.for_answer(tag, tag_openings(c.data()) if tag else None) if markers is not None else None

    def _gate(self, req: PreparedRequest, p: SamplingParams, c: Constraint | None,
              markers: ReasoningMarkers | None) -> ReasoningGate | None:
        in_reasoning = markers is not None and req.reasoning_start != "answer"
        if c is None and not in_reasoning:
            return None
        compiled = req.compiled[c.key] if c is not None else None
        matcher = compiled.new_matcher() if compiled is not None else None
        # the grammar's measured shortest answer (None: unknown) sizes the answer reserve and the closing
        shortest = self.parts.ending_search.shortest_answer(compiled) if compiled is not None else None
        # a tool call's answer must have room for the call of whichever tool the model picks
        call = self.parts.ending_search.longest_call(compiled) if compiled is not None else None
        kind = c.kind if c is not None else None
        budget = p.max_reasoning_tokens if p.max_reasoning_tokens is not None else self.args.max_reasoning_tokens
        tag = c.data() if c is not None and c.kind == "structural_tag" else None  # parsed once for both
        text = None  # a structural tag of text in tags only: closed as its grammar, its own strings' tokens kept
        if tag is not None and is_json_format(tag):  # a structural tag that is one JSON schema: a JSON answer
            kind, tag = "json_schema", None
        elif tag is not None and (whole := tag_grammar(tag)) is not None:  # one grammar or regex: closed as those
            kind, text, tag = whole[0], tag if text_tag(tag) else None, None
        json_answer = kind in ("json_schema", "json_object")
        tags = json_tag_bounds(tag) if tag is not None else []
        xml = [(b, e) for b, e, _, _ in xml_tags(tag)] if tag is not None else []
        wrappers = wrapper_tags(tag) if tag is not None else []
        calls_only = tag is not None and only_tags(tag)
        guards = self._guards(c, json_answer, tags, kind in ("regex", "ebnf") and text is None, tag or text)
        # the added tokens its strings spell (Qwen's `<tool_call>`, an added token but no markup), as the model writes
        added = self._spelled_by(tag_strings(text), self.parts.vocab.added_ids) if text is not None else None
        return ReasoningGate(
            self.parts.vocab, markers, Phase(req.reasoning_start), matcher, max_new_tokens=p.max_new_tokens,
            max_reasoning_tokens=budget, guards=guards, combined_keeps=self.parts.combined_keeps,
            answer_reserve_tokens=self._answer_reserve(p, max(shortest or 0, call or 0) or None),
            answer_check=compiled.answer_check if compiled else None,
            **self._closing(p, compiled, kind, guards, tags, shortest, xml, wrappers, calls_only, call or 0, added))

    def _answer_reserve(self, p: SamplingParams, shortest: int | None) -> int:
        """Tokens kept for the answer: the request's or the server's answer_reserve_tokens; by default
        min(128, max_new_tokens / 4), raised to the grammar's shortest answer plus the closing reserve
        where that is longer (twenty required fields need more than 128 tokens to arrive at all)."""
        if p.answer_reserve_tokens is not None:
            return p.answer_reserve_tokens
        if self.args.answer_reserve_tokens is not None:
            return self.args.answer_reserve_tokens
        reserve = min(128, p.max_new_tokens // 4)
        if shortest is not None:
            # the answer comes first: a budget too small for both leaves the thinking short, not the answer
            reserve = max(reserve, min(shortest + closing_reserve(p.max_new_tokens), p.max_new_tokens))
        return reserve

    def _closing(self, p: SamplingParams, compiled: CompiledGrammar | None, kind: str | None,
                 guards: list[AnswerGuard], tags: list[tuple[str, str]], shortest: int | None,
                 xml_bounds: list[tuple[str, str]], wrappers: list[tuple[str, str]],
                 calls_only: bool = False, call: int = 0,
                 grammar_added: frozenset[int] | None = None) -> dict[str, Any]:
        """Budget closing near max_new_tokens: the answer gets a short ending of its grammar (ending.py); a
        JSON answer whose ending is not found in time is steered to its end (closing.py). For a structural
        tag, both only inside a call's arguments, or after a complete call where the answer may end or its
        section close (_call_scope), with room kept for the tag's and the section's end strings; free text
        beside the calls is never ended early, and no call is written for the model."""
        search = self.parts.ending_search
        # a grammar whose shortest answer fits in the closing reserve, and that cannot grow, is looked at only
        # there: no search at all for the usual answer that ends on its own well before its budget. One whose
        # ending may grow at once (one more list item, an optional object) keeps about its shortest answer to
        # spare, and is looked at early too (closing an array's open item may need more than the reserve)
        grows = compiled is not None and compiled.ending_grows
        early = shortest is None or shortest > closing_reserve(p.max_new_tokens) or grows
        growth = min(shortest if shortest is not None else 16, 32) if grows else 0
        grammar_literals = compiled.closing_literals if compiled is not None else ()
        # a long shortest answer (a pythonic call of a tool with eleven required arguments: 159 tokens) is first
        # looked for where it still fits with the reserve to spare: at 4× the reserve it no longer did
        first = shortest + closing_reserve(p.max_new_tokens) if shortest is not None else 0
        if kind in ("json_schema", "json_object"):
            number = next((g for g in guards if isinstance(g, NumberGuard)), None)
            return {"closing": self.parts.closing_rules, "ending": search, "ending_early": early,
                    "ending_growth": growth, "ending_literals": grammar_literals, "ending_first": first,
                    "closing_in_string": number.in_string if number is not None else None,
                    "ending_added": frozenset()}
        if kind in ("regex", "ebnf"):  # grammar_added: a text-only structural tag's own strings' added tokens
            # such a tag is closed only where its text is unfinished (inside a tag), never in free text beside
            return {"ending": search, "ending_early": early, "ending_growth": growth,
                    "ending_literals": grammar_literals, "ending_first": first,
                    "ending_added": grammar_added if grammar_added is not None else frozenset(),
                    "closing_unfinished_only": grammar_added is not None}
        tagged = next((g for g in guards if isinstance(g, TaggedNumberGuard)), None)
        # room kept for a tag's end string and the section's: one token where a token spells it whole (Kimi-K2's
        # `<|tool_call_end|>`: its 17 bytes, and the section end's 26, cut every call short and had the search
        # write an ending before the model's own call was done), else a byte each at worst
        tag_end = max((self._end_room(end) for _, end in tags or xml_bounds), default=0)
        section_end = max((self._end_room(end) for _, end in wrappers), default=0)
        reserve = closing_reserve(p.max_new_tokens) + tag_end + section_end
        section = TagScope(wrappers) if wrappers else None
        # between two calls the answer ends unless a whole call (of its longest tool) still fits: one more call
        # begun without room for it ran into max_new_tokens
        if tagged is not None:
            inside: Callable[[bytes], bool] = lambda _answer: tagged.inside_tag()
            scope = _call_scope(inside, lambda _answer: tagged.calls_ended > 0, section, calls_only)
            steer = {"closing": self.parts.closing_rules, "closing_in_string": tagged.in_string}
        elif xml_bounds:  # tool calls with XML arguments: their grammar's ending only (no JSON to steer)
            ended = [end.encode() for _, end in xml_bounds]
            inside = TagScope(xml_bounds)
            scope = _call_scope(inside, lambda answer: any(end in answer for end in ended), section, calls_only)
            steer = {}
        else:
            return {}
        boundary = _call_boundary([end for _, end in tags or xml_bounds])
        # the ending may write the special tokens of the call format and of the tags' strings, as the model does
        # (Qwen's `<tool_call>` is an added token but no markup: spelled out in characters, an ending was ~3x as
        # long as the model's own, and the step check took calls that fitted for ones that did not)
        keep = self._spelled_by([s for pair in [*(tags or xml_bounds), *wrappers] for s in pair],
                                self.parts.vocab.added_ids) | self.parts.tool_markup_ids
        return {"ending": search, "closing_scope": scope, "closing_reserve_tokens": reserve, "ending_added": keep,
                "ending_literals": grammar_literals, "call_room": call, "ending_first": reserve + call,
                "between_calls": lambda answer: boundary(answer) and not inside(answer), **steer}

    def _end_room(self, end: str) -> int:
        """Tokens a tag's end string may take when sampled: 1 where one token spells it, else its bytes."""
        return 1 if len(self.parts.vocab.encode_text(end)) == 1 else len(end.encode())

    def _guards(self, c: Constraint | None, json_answer: bool, tags: list[tuple[str, str]],
                grammar_answer: bool = False, tag: dict[str, Any] | None = None) -> list[AnswerGuard]:
        """Every constrained answer stays well-formed UTF-8; JSON numbers stay bounded, and the family's
        markup tokens stay out, of a JSON answer, of the JSON of a structural tag's tags (tool-call
        arguments), and of a regex or EBNF answer (unless the grammar has nothing else to offer there); a
        structural tag's free text and own strings keep out the special tokens none of its strings spells
        (audit 29: a hidden `<|im_start|>` as the free text left an empty answer that EOS then ended)."""
        if c is None:
            return []
        guards: list[AnswerGuard] = [Utf8Guard(self.parts.utf8_rules)]
        tagged = None
        if json_answer:
            guards.append(NumberGuard(self.parts.number_rules))
        elif tags:
            tagged = TaggedNumberGuard(self.parts.number_rules, tags)  # tool-call arguments
            guards.append(tagged)
        markup, vocab = self.parts.markup_ids, self.parts.vocab
        if not markup or not (json_answer or grammar_answer or tag is not None):
            return guards
        if tag is None:  # a JSON, regex or EBNF answer: no markup token anywhere
            guards.append(FramingGuard(vocab.keep_mask(markup), self.parts.number_rules.keep_all))
            return guards
        # a structural tag: none inside its JSON values (tool-call arguments); elsewhere (free text, the tags' own
        # strings) none but the special tokens a tag string spells and the tool-call format's own
        spelled = self._spelled_by(tag_strings(tag)) | self.parts.tool_markup_ids
        outside = vocab.keep_mask(markup - spelled)
        xml = [(begin, end) for begin, end, _, _ in xml_tags(tag)]
        if tagged is None and xml:
            # inside an XML call's arguments (raw text the grammar takes whole) none of what only opens a call
            # (audit 37: qwen3_coder's `<tool_call>` written into a parameter's value, the call well-formed)
            opens = self._spelled_by([b for b, _ in xml]) - self._spelled_by([e for _, e in xml])
            guards.append(FramingGuard(vocab.keep_mask((markup - spelled) | opens), outside, tags=TagTracker(xml)))
            return guards
        inside = tagged.inside_value if tagged is not None else (lambda: False)
        guards.append(FramingGuard(vocab.keep_mask(markup), outside, inside))
        return guards

    def _spelled_by(self, strings: list[str], among: frozenset[int] | None = None) -> frozenset[int]:
        """The markup tokens (or those `among`) whose text is part of one of `strings` (a tag's begin, end or
        trigger)."""
        vocab = self.parts.vocab
        return frozenset(t for t in (self.parts.markup_ids if among is None else among)
                         if (text := vocab.token_bytes[t].decode("utf-8", "replace")) and any(text in s for s in strings))

    def _unseeded(self) -> int:
        if self._seeds is None:
            return int.from_bytes(uuid.uuid4().bytes[:8], "little")
        with self._seeds_lock:  # requests are built on their callers' threads
            return self._seeds.getrandbits(64)

    def _generator(self, p: SamplingParams, k: int) -> torch.Generator | None:
        if p.greedy:
            return None
        g = torch.Generator(device=self.parts.device)  # on a GPU: its noise never crosses the bus
        seed = (p.seed + k) % 2**64 if p.seed is not None else self._unseeded()
        g.manual_seed(seed)
        return g


def _prompt_rids(rid: Any, count: int, batched: bool) -> list[str]:
    """Each prompt's request id, as SGLang reads `rid`: one id for one prompt; for a batch a list of one per
    prompt, or a string whose items are rid_0, rid_1, ...; new ids where none is given."""
    if rid is None or rid == "" or rid == []:
        return [uuid.uuid4().hex for _ in range(count)]
    if isinstance(rid, list):
        if len(rid) != count or not all(isinstance(r, str) and r for r in rid):
            raise RequestFieldError(f"rid: a list needs one non-empty string per prompt ({count}), got {rid!r:.80}")
        if len(set(rid)) != count:
            raise RequestFieldError("rid: the ids of a batch's prompts must differ")
        return list(rid)
    if not isinstance(rid, str):
        raise RequestFieldError("rid: must be a string or a list of strings")
    return [f"{rid}_{i}" for i in range(count)] if batched else [rid]


def _bind_sink(sink: Callable[[Sequence, OutputEvent, bool], None], markers: Any) -> Callable:
    def deliver(seq: Sequence, finished: bool) -> None:
        try:
            output = output_event(seq, finished, markers)
        except Exception as e:  # noqa: BLE001 - a broken output must still answer its caller, once, at the end
            logger.error("request %s-%d: its output could not be built: %s: %s", seq.rid, seq.index,
                         type(e).__name__, e, exc_info=e)
            if not finished:
                return
            output = OutputEvent(seq, failed_output(seq, e))
        try:
            sink(seq, output, finished)
        except Exception as e:  # noqa: BLE001 - a caller that cannot take its output must not stop the loop
            logger.error("request %s-%d: its output could not be delivered: %s: %s", seq.rid, seq.index,
                         type(e).__name__, e)
    return deliver


def _call_boundary(ends: list[str]) -> Callable[[bytes], bool]:
    """Whether an answer stands right at a call's end: where it may end rather than begin one more call. Past
    it the model has chosen (a format's separator commits to one more call, as does its next begin string),
    and a call it chose is never written for it."""
    ends_b = tuple(end.encode() for end in ends if end)
    return lambda answer: answer.endswith(ends_b)


def _call_scope(inside_call: Callable[[bytes], bool], after_a_call: Callable[[bytes], bool],
                section: TagScope | None, calls_only: bool) -> Callable[[bytes], bool]:
    """Where budget closing may end a tool-call answer: inside a call's arguments, and after a complete call
    where the answer may end there (calls only: required, named) or its section close (Kimi-K2's). Never
    before the first call, whose tool is the model's to pick (closed there, the grammar's shortest call, of
    whichever tool, came out with empty arguments), nor in free text beside the calls."""
    def scope(answer: bytes) -> bool:
        if inside_call(answer):
            return True
        return after_a_call(answer) and (calls_only or (section is not None and section(answer)))

    return scope
