"""Incremental detokenization: correct for multi-byte UTF-8 split across tokens; stop strings."""
from __future__ import annotations

import time
from typing import Any

import regex

from tokenizers.decoders import DecodeStream

_CONTEXT_TOKENS = 6  # prompt tokens decoded with the output so leading spaces come out right
LAZY_PUSHES = 64  # a lazy detokenizer's pushes decoded at once (~0.1 ms here)


class IncrementalDetokenizer:
    """vLLM's prefix/read offsets: the text of the ids after `read_offset` is what decoding from
    `prefix_offset` adds to decoding up to `read_offset`, held back while a UTF-8 character is unfinished.
    The `tokenizers` library's DecodeStream does that in Rust (a tenth of the cost of decoding the window
    twice in Python); where it refuses (a byte-fallback tokenizer whose stray bytes turn text it already
    gave into replacement characters), this request goes on with the Python window.

    `lazy`: nothing reads the text before the end (no stream, no stop strings), so pushes wait and are
    decoded, push by push as they came (the same text), when the text is first read or LAZY_PUSHES have
    waited: in warm bursts instead of a Rust call a token between the grammar's and the model's work, whose
    data each evicts (the bound keeps a long answer's end from stalling the loop for its whole text).
    `lazy_phase` shortens the first burst by that many pushes (modulo LAZY_PUSHES): a batch's requests, started
    together, get consecutive phases and catch up on different steps, not all on one (32 rows' bursts on one
    step took 5-7 ms of host work here, against a median step of 0.1 ms: on a GPU the device waits through
    what passes the forward's length; bench/step_times.py)."""

    def __init__(self, tokenizer: Any, prompt_ids: list[int], hidden_ids: frozenset[int], lazy: bool = False,
                 lazy_phase: int = 0) -> None:
        self.tokenizer = tokenizer
        self.hidden_ids = hidden_ids
        context = [t for t in prompt_ids[-_CONTEXT_TOKENS:] if t not in hidden_ids]
        # a prompt that ends inside a character (token ids cut mid-emoji) leaves it unfinished: the output
        # starts after it (DecodeStream would hand the whole context's text out with the first token)
        while context and self._decode(context).endswith("\ufffd"):
            context.pop()
        self.ids: list[int] = context
        self.prefix_offset = 0
        self.read_offset = len(context)
        self._text = ""
        self._stream: DecodeStream | None = DecodeStream(context, skip_special_tokens=False)
        self._lazy = lazy
        self._waiting: list[list[int]] = []  # lazy: the pushes not decoded yet
        self._burst = LAZY_PUSHES - lazy_phase % LAZY_PUSHES  # pushes that wait before the next catch-up

    @property
    def text(self) -> str:
        if self._waiting:
            self._catch_up()
        return self._text

    @text.setter
    def text(self, value: str) -> None:
        if self._waiting:
            self._catch_up()
        self._text = value

    def push(self, token_ids: list[int]) -> str:
        """Add generated ids; return the newly complete text (held back while a UTF-8 char is unfinished;
        lazy: always "", see the class)."""
        if self._lazy:
            self._waiting.append(token_ids)
            if len(self._waiting) >= self._burst:
                self._catch_up()
            return ""
        return self._push(token_ids)

    def _catch_up(self) -> None:
        waiting, self._waiting = self._waiting, []
        self._burst = LAZY_PUSHES
        for token_ids in waiting:
            self._push(token_ids)

    def _push(self, token_ids: list[int]) -> str:
        visible = [t for t in token_ids if t not in self.hidden_ids]
        if not visible:
            return ""
        self.ids.extend(visible)
        new = self._step(visible)
        if not new:
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        self._extend(new)
        return new

    def _extend(self, new: str) -> None:
        # the attribute let go first: where nothing else holds the text (no event snapshot), `+=` on its only
        # reference grows it in place; `self._text += new` copied a long output's whole text every token
        text, self._text = self._text, ""
        text += new
        self._text = text

    def flush(self) -> str:
        """At the end: whatever is held back, replacement characters included."""
        if self._waiting:
            self._catch_up()
        new = ""
        if self.read_offset < len(self.ids):  # else nothing is held back (and two decodes cost ~30 µs)
            prefix_text, full = self._window()
            new = full[len(prefix_text):] if len(full) > len(prefix_text) else ""
        self.prefix_offset = self.read_offset = len(self.ids)
        self._stream = None
        self._extend(new)
        return new

    def _step(self, visible: list[int]) -> str | None:
        if self._stream is not None:
            try:
                return self._stream.step(self.tokenizer.backend_tokenizer, visible)
            except Exception:  # noqa: BLE001 - "Invalid prefix encountered": the window below copes
                self._stream = None
        prefix_text, full = self._window()
        if len(full) <= len(prefix_text) or full.endswith("\ufffd"):
            return None
        return full[len(prefix_text):]

    def _window(self) -> tuple[str, str]:
        return (self._decode(self.ids[self.prefix_offset:self.read_offset]),
                self._decode(self.ids[self.prefix_offset:]))

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def find_stop(text: str, new_len: int, stops: list[str]) -> tuple[int, str] | None:
    """Earliest stop string that ends inside the last new_len chars of text: (start index, stop)."""
    best: tuple[int, str] | None = None
    for stop in stops:
        start = max(0, len(text) - new_len - len(stop) + 1)
        pos = text.find(stop, start)
        if pos >= 0 and (best is None or pos < best[0]):
            best = (pos, stop)
    return best


# how far before the newest text a stop regex's match may begin (a match only ever grows from the end)
STOP_REGEX_LOOKBACK = 1024
# what one token's stop regex searches may take: they run on the engine loop, where a pattern that
# backtracks without end (`(a|aa)+b` over a run of a's) would stall every request. Wall-clock (the regex
# module's timeout): a search that runs out is tried once more with STOP_REGEX_RETRY_SECONDS, so a busy
# machine (other threads holding the GIL) does not end a healthy request; a pattern that needs more ends its
# request, once
STOP_REGEX_SECONDS = 0.05
STOP_REGEX_RETRY_SECONDS = 1.0


class StopRegexTimeout(TimeoutError):
    """A stop regex took longer than STOP_REGEX_SECONDS to search one token's text."""

    def __init__(self, pattern: str) -> None:
        super().__init__(f"stop_regex: {pattern!r} took longer than {STOP_REGEX_RETRY_SECONDS:g} s to search "
                         "the output (it backtracks too much); the request was ended")


class _Clock:
    """The time left to a token's searches, as each regex search's timeout (one retry with more)."""

    def __init__(self) -> None:
        self.deadline = time.perf_counter() + STOP_REGEX_SECONDS
        self.retried = False

    def search(self, rx: regex.Pattern, text: str, pos: int, partial: bool = False) -> regex.Match | None:
        while True:
            try:
                return rx.search(text, pos, partial=partial, timeout=max(1e-4, self.deadline - time.perf_counter()))
            except TimeoutError:
                if self.retried:
                    raise StopRegexTimeout(rx.pattern) from None
                self.retried = True
                self.deadline = time.perf_counter() + STOP_REGEX_RETRY_SECONDS


def find_stop_regex(text: str, new_len: int, patterns: list[regex.Pattern]) -> tuple[int, int, str] | None:
    """Earliest match of a stop regex that ends inside the last new_len chars of text: (start, end, pattern).
    Raises StopRegexTimeout past STOP_REGEX_SECONDS."""
    best: tuple[int, int, str] | None = None
    tail = len(text) - new_len
    clock = _Clock()
    for rx in patterns:
        m = clock.search(rx, text, max(0, tail - STOP_REGEX_LOOKBACK))
        while m is not None and m.end() <= tail:  # ended before the new text: seen (or passed over) already
            m = clock.search(rx, text, m.start() + 1)
        if m is not None and (best is None or m.start() < best[0]):
            best = (m.start(), m.end(), rx.pattern)
    return best


def partial_stop_regex_len(text: str, patterns: list[regex.Pattern]) -> int:
    """Length of the longest end of text where a stop regex's match has begun but not ended (a partial
    match reaching the end): a stream holds it back, since the next tokens may complete the match. Raises
    StopRegexTimeout as find_stop_regex does."""
    best = 0
    start = max(0, len(text) - STOP_REGEX_LOOKBACK)
    clock = _Clock()
    for rx in patterns:
        m = clock.search(rx, text, start, partial=True)
        while m is not None and not m.partial:  # a whole match already took its stop; look past it
            m = clock.search(rx, text, max(m.end(), m.start() + 1), partial=True)
        if m is not None:
            best = max(best, len(text) - m.start())
    return best


def partial_stop_len(text: str, stops: list[str]) -> int:
    """Length of the longest end of text that is the start of a stop string (a proper prefix of it): a
    stream holds it back, since the next tokens may complete the stop and cut it off."""
    best = 0
    for stop in stops:
        if len(stop) <= 1 + best:
            continue
        # candidates begin with the stop's first char, within its last len(stop) - 1 chars; the earliest is longest
        pos = text.find(stop[0], max(0, len(text) - len(stop) + 1))
        while 0 <= pos < len(text) - best:
            if stop.startswith(text[pos:]):
                best = len(text) - pos
                break
            pos = text.find(stop[0], pos + 1)
    return best
