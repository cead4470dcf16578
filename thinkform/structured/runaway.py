"""NumberGuard: backend-agnostic bound on the length of JSON numbers.

A grammar says `[1-9][0-9]*` and a model that loves digits writes `"population": 3160000000000…`
until max_tokens. The guard follows the JSON text of the answer and, while a number is being written,
clears the mask bits of tokens that would give it more than `max_number_digits` significant digits
(every mantissa digit from the first non-zero one on: `0.30000000000000004`, Python's repr of 0.1 + 0.2, has
17), more than as many zeros before its first non-zero digit (`0.000…` ends too), or more than
`max_exponent_digits` exponent digits. With 17 mantissa digits every integer fits int64, and with two
exponent digits every number fits a double (three let `1289E343` through: infinity to `json.loads`).

It also keeps raw control characters (U+0000-U+001F) out of JSON strings, where they are invalid:
xgrammar 0.2.8 lets them into strings with a maxLength, and `json.loads` then rejects the answer.

The grammar has the last word: if the guard would leave no token allowed, it leaves the mask alone.

Per vocabulary (`NumberRules`, built once, shared by all requests) each token is scanned for how many
leading zeros / significant / exponent digits it would add to a number in progress, or to a number it starts
itself; a token that ends right after `.`, `-`, `e` or an exponent sign counts the one digit it obliges (a
significant one in the mantissa: it may be non-zero).
"""
from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from thinkform.structured.bitmask import pack_bits
from thinkform.structured.spec import GrammarOptions

_DIGITS = frozenset(b"0123456789")
_NUMBER_LEAD_IN = frozenset(b" \t\n\r:,[{")  # what may precede a number that starts inside a token


class Mode(enum.Enum):
    OUT = "out"  # between JSON tokens
    STRING = "string"
    ESCAPE = "escape"  # right after a backslash inside a string
    MANTISSA = "mantissa"  # inside a number, before any exponent
    EXP_START = "exp_start"  # after e/E (and maybe a sign), no exponent digit yet
    EXPONENT = "exponent"


@dataclass(frozen=True)
class LexState:
    mode: Mode = Mode.OUT
    mantissa_digits: int = 0  # significant digits written so far (a pending "." or "-" adds none)
    exponent_digits: int = 0
    leading_zeros: int = 0  # zeros before the first non-zero digit (while mantissa_digits is 0)


def _number(data: bytes, i: int, mode: str, need: bool = False,
            leading: bool = False) -> tuple[int, int, int, int]:
    """Scan a number from data[i] in `mode` (`leading`: no non-zero mantissa digit yet): (leading zeros,
    significant digits, exponent digits, index where it ended).

    A number still open at the token's end counts the one digit a trailing ".", "-", "e" or sign owes."""
    zeros = mant = exp = 0
    while i < len(data):
        b = data[i]
        if mode == "mantissa":
            if b == ord("0") and leading:
                zeros, need = zeros + 1, False
            elif b in _DIGITS:
                mant, need, leading = mant + 1, False, False
            elif b == ord("."):
                need = True
            elif b in b"eE":
                mode, need = "exp_start", True
            else:
                return zeros, mant, exp, i
        elif b in _DIGITS:
            mode, exp, need = "exponent", exp + 1, False
        elif mode == "exp_start" and b in b"+-":
            need = True
        else:
            return zeros, mant, exp, i
        i += 1
    if need:
        mant, exp = (mant + 1, exp) if mode == "mantissa" else (mant, exp + 1)
    return zeros, mant, exp, i


def _fresh(data: bytes, i: int) -> tuple[int, int, int]:
    """Largest (leading zeros, significant, exponent) digit counts of the numbers that start in data[i:]."""
    best = (0, 0, 0)
    while i < len(data):
        b = data[i]
        starts = (b in _DIGITS or b == ord("-")) and (i == 0 or not (chr(data[i - 1]).isalnum()
                                                                    or data[i - 1] in b".+-"))
        if not starts:
            i += 1
            continue
        minus = b == ord("-")
        zeros, mant, exp, end = _number(data, i + minus, "mantissa", need=minus, leading=True)
        best = (max(best[0], zeros), max(best[1], mant), max(best[2], exp))
        i = max(end, i + 1)
    return best


def _scan(data: bytes, start: str) -> tuple[int, ...]:
    """(leading zeros, significant, exponent) digits a token adds to the number in progress (start:
    "leading" | "mantissa" | "exp_start" | "exponent"), then the largest counts of any number the token
    starts afterwards. With start "out" there is no number in progress."""
    if start == "out":
        return (0, 0, 0, *_fresh(data, 0))
    leading = start == "leading"
    zeros, mant, exp, end = _number(data, 0, "mantissa" if leading else start, leading=leading)
    return (zeros, mant, exp, *_fresh(data, end))


class NumberRules:
    """Per-vocabulary digit tables and the ban masks derived from them (immutable, thread-safe)."""

    def __init__(self, token_bytes: Sequence[bytes], max_number_digits: int = 17,
                 max_exponent_digits: int = 3) -> None:
        if max_number_digits < 1 or max_exponent_digits < 1:
            raise ValueError("max_number_digits and max_exponent_digits must be at least 1")
        self.max_number_digits = max_number_digits
        self.max_exponent_digits = max_exponent_digits
        # zeros before a number's first non-zero digit are no significant digits, bounded on their own (as many)
        self.max_leading_zeros = max_number_digits
        self.vocab_size = len(token_bytes)
        words = (self.vocab_size + 31) // 32
        relevant = [i for i, t in enumerate(token_bytes) if _may_matter(t)]
        index = torch.tensor(relevant, dtype=torch.long)
        tables: dict[str, torch.Tensor] = {}
        for start in ("leading", "mantissa", "exp_start", "exponent", "out"):
            table = torch.zeros((self.vocab_size, 6), dtype=torch.int32)
            if relevant:
                table[index] = torch.tensor([_scan(token_bytes[i], start) for i in relevant], dtype=torch.int32)
            tables[start] = table
        m, x, z = max_number_digits, max_exponent_digits, self.max_leading_zeros

        def later(table: torch.Tensor) -> torch.Tensor:  # a number the token starts after this one
            return (table[:, 3] > z) | (table[:, 4] > m) | (table[:, 5] > x)

        lead, mant, exp0, exp = tables["leading"], tables["mantissa"], tables["exp_start"], tables["exponent"]
        # One packed mask per reachable state: Z + M + X + 3 small tensors.
        mant_always = (mant[:, 2] > x) | later(mant)
        lead_always = (lead[:, 1] > m) | (lead[:, 2] > x) | later(lead)

        def keep(ban: torch.Tensor) -> np.ndarray:
            return ~pack_bits(ban, words).numpy()

        self._leading = [keep((zeros + lead[:, 0] > z) | lead_always) for zeros in range(z + 1)]
        self._mantissa = [keep((used + mant[:, 1] > m) | mant_always) for used in range(m + 1)]
        self._exp_start = keep((exp0[:, 2] > x) | later(exp0))
        exp_always = later(exp)
        self._exponent = [keep((used + exp[:, 2] > x) | exp_always) for used in range(x + 1)]
        self._out = keep(later(tables["out"]))
        self._in_string = keep(torch.tensor([_control_in_string(t) for t in token_bytes], dtype=torch.bool))
        self.keep_all = keep(torch.zeros(self.vocab_size, dtype=torch.bool))  # outside any JSON: no rule
        # (mode, token bytes) → state, from the modes without digit counts (see after); shared by every
        # request of the engine (answers are observed on the engine loop's thread only)
        self._after: dict[tuple[Mode, bytes], LexState] = {}

    def after(self, state: LexState, data: bytes) -> LexState:
        """The state after `data`. From outside numbers (no digit counts) it depends on the bytes alone and
        is remembered per token (a per-character walk costs microseconds a token)."""
        countless = state.mode not in _COUNTING
        if countless:
            hit = self._after.get((state.mode, data))
            if hit is not None:
                return hit
        result = state
        for ch in data.decode("latin-1"):
            result = _step(result, ch)
        if countless and len(self._after) < _AFTER_CACHE_SIZE:
            self._after[(state.mode, data)] = result
        return result

    @classmethod
    def from_options(cls, token_bytes: Sequence[bytes], options: GrammarOptions) -> NumberRules:
        return cls(token_bytes, options.max_number_digits, options.max_exponent_digits)

    def keep_mask(self, state: LexState) -> np.ndarray:
        """Packed int32 words of the tokens allowed in `state`."""
        if state.mode == Mode.MANTISSA and state.mantissa_digits == 0:  # no non-zero digit yet
            return self._leading[min(state.leading_zeros, self.max_leading_zeros)]
        if state.mode == Mode.MANTISSA:
            return self._mantissa[min(state.mantissa_digits, self.max_number_digits)]
        if state.mode == Mode.EXP_START:
            return self._exp_start
        if state.mode == Mode.EXPONENT:
            return self._exponent[min(state.exponent_digits, self.max_exponent_digits)]
        if state.mode == Mode.OUT:
            return self._out
        return self._in_string


_NUMBER_PUNCT = frozenset(b".eE+-")
_COUNTING = frozenset({Mode.MANTISSA, Mode.EXP_START, Mode.EXPONENT})  # the modes whose state holds counts
_AFTER_CACHE_SIZE = 1 << 16  # (mode, token) pairs remembered: a few MB at most


def _control_in_string(token: bytes) -> bool:
    """A raw control byte before the token's first quote: inside a string, that is invalid JSON."""
    head = token.split(b'"', 1)[0]
    return any(b < 0x20 for b in head)


def _may_matter(token: bytes) -> bool:
    """Only tokens with a digit, or made of nothing but number punctuation (".", "e+", ": -"),
    can add digits or owe one; skipping the rest keeps building the tables fast."""
    if any(b in _DIGITS for b in token):
        return True
    rest = token.lstrip(bytes(_NUMBER_LEAD_IN))
    return bool(rest) and all(b in _NUMBER_PUNCT for b in rest)


class NumberGuard:
    """Per-request: follows the answer's JSON lexical state and trims the mask of digit runaways."""

    def __init__(self, rules: NumberRules) -> None:
        self.rules = rules
        self.state = LexState()

    def reset(self) -> None:
        self.state = LexState()

    def observe(self, data: bytes) -> None:
        """Advance the lexical state over the bytes the answer just gained (JSON's syntax is ASCII: the
        bytes of other characters only ever mean 'not a digit, quote or backslash')."""
        mode = self.state.mode
        if mode is Mode.STRING and b'"' not in data and b"\\" not in data:
            return  # the usual token inside a string: it stays there (a per-character walk costs 3 µs)
        if mode is Mode.MANTISSA and self.state.mantissa_digits and data.isdigit():  # a number's next digits
            self.state = LexState(mode, self.state.mantissa_digits + len(data))
            return
        self.state = self.rules.after(self.state, data)

    def keep(self) -> np.ndarray:
        """Packed words of the tokens that do not overrun the current number."""
        return self.rules.keep_mask(self.state)

    def in_string(self) -> bool:
        """Inside a JSON string (not just after a backslash): where budget closing ends it with its quote."""
        return self.state.mode is Mode.STRING


class TaggedNumberGuard:
    """NumberGuard for the JSON inside a structural tag's tags (tool-call arguments): it follows the
    answer's text, and from a tag's begin string to its end string (found outside JSON strings only) it
    bounds numbers as NumberGuard does; elsewhere (free text, tags with other content) it keeps every token."""

    def __init__(self, rules: NumberRules, tags: Sequence[tuple[str, str]]) -> None:
        if not tags:
            raise ValueError("TaggedNumberGuard needs at least one (begin, end) pair")
        self.rules = rules
        self._ends: dict[bytes, tuple[bytes, ...]] = {}  # a tag may end in one of several strings
        for begin, end in tags:
            self._ends[begin.encode()] = (*self._ends.get(begin.encode(), ()), end.encode())
        # one search for every begin string: free text costs one regex call a token, however many tools
        self._begins = re.compile(b"|".join(re.escape(b) for b in sorted(self._ends, key=len, reverse=True)))
        self._longest = max(max(len(begin), *map(len, ends)) for begin, ends in self._ends.items())
        self._json = NumberGuard(rules)
        self.reset()

    def reset(self) -> None:
        self._recent = b""  # the last bytes seen, as long as the longest begin or end string
        self._end: tuple[bytes, ...] | None = None  # inside a tag: the end strings that close it
        self._depth = 0  # open objects and arrays of the tag's JSON
        self._opened = False  # the tag's JSON value has begun
        self.calls_ended = 0  # tags begun and ended so far (complete tool calls)
        self._json.reset()

    def observe(self, data: bytes) -> None:
        while data:
            data = self._outside(data) if self._end is None else self._through_tag(data)

    def _outside(self, data: bytes) -> bytes:
        """Free text: look for a begin string (it may have started in earlier tokens); the bytes after it
        are the tag's."""
        joined = self._recent + data
        m = self._begins.search(joined)
        if m is None or m.end() <= len(self._recent):
            self._recent = joined[-self._longest:]
            return b""
        self._recent = joined[:m.end()][-self._longest:]
        self._end, self._depth, self._opened = self._ends[m.group()], 0, False
        self._json.reset()
        return joined[m.end():]

    def _through_tag(self, data: bytes) -> bytes:
        """A tag's content, byte by byte up to its end string; returns what follows the tag."""
        for i in range(len(data)):
            byte = data[i:i + 1]
            self._recent = (self._recent + byte)[-self._longest:]
            self._inside(byte)
            if self._end is None:
                self._recent = b""  # the next begin string starts after this end string
                return data[i + 1:]
        return b""

    def _inside(self, byte: bytes) -> None:
        """One byte of a tag's content. Its end string counts only outside strings once the JSON value
        is closed: an end of `}` must not end the tag at a nested object's brace."""
        structural = self._json.state.mode not in (Mode.STRING, Mode.ESCAPE)
        self._json.observe(byte)
        if structural and byte in b"{[":
            self._depth += 1
        elif structural and byte in b"}]":
            self._depth -= 1
        self._opened = self._opened or self._depth > 0
        # an empty end string (the tag ends with its content) counts once the JSON value has been written
        if self._depth <= 0 and self._json.state.mode is Mode.OUT and self._end is not None and any(
                (end or self._opened) and self._recent.endswith(end) for end in self._end):
            self._end = None
            self.calls_ended += 1

    def inside_tag(self) -> bool:
        """Whether the answer is inside a tag's JSON now (between its begin and its end string)."""
        return self._end is not None

    def in_string(self) -> bool:
        """Inside a JSON string of a tag's arguments (NumberGuard.in_string)."""
        return self._end is not None and self._json.state.mode is Mode.STRING

    def inside_value(self) -> bool:
        """Whether the answer is inside a tag's JSON value now (its object open, or a string): not before it
        or after it, where the tag's own begin and end strings are written (Kimi-K2's `<|tool_call_end|>`,
        a special token that is also markup the value must not hold)."""
        return self._end is not None and (self._depth > 0 or self._json.state.mode in (Mode.STRING, Mode.ESCAPE))

    def keep(self) -> np.ndarray:
        return self._json.keep() if self._end is not None else self.rules.keep_all


def _step(state: LexState, ch: str) -> LexState:
    mode, mant, exp, zeros = state.mode, state.mantissa_digits, state.exponent_digits, state.leading_zeros
    digit = "0" <= ch <= "9"
    if mode == Mode.STRING:
        return _STATES[Mode.OUT if ch == '"' else Mode.ESCAPE if ch == "\\" else Mode.STRING]
    if mode == Mode.ESCAPE:
        return _STATES[Mode.STRING]
    if mode == Mode.MANTISSA:
        if ch == "0" and not mant:  # a leading zero: no significant digit
            return LexState(Mode.MANTISSA, 0, 0, zeros + 1)
        if digit:
            return LexState(Mode.MANTISSA, mant + 1)
        if ch == ".":
            return state
        if ch in "eE":
            return LexState(Mode.EXP_START, mant)
    elif mode == Mode.EXP_START:
        if ch in "+-":
            return state
        if digit:
            return LexState(Mode.EXPONENT, mant, 1)
    elif mode == Mode.EXPONENT and digit:
        return LexState(Mode.EXPONENT, mant, exp + 1)
    # OUT, or the number just ended on this character
    if ch == '"':
        return _STATES[Mode.STRING]
    if ch == "0":
        return LexState(Mode.MANTISSA, 0, 0, 1)
    if ch == "-" or digit:
        return LexState(Mode.MANTISSA, int(digit))
    return _STATES[Mode.OUT]


_STATES = {mode: LexState(mode) for mode in Mode}  # the states without counts
