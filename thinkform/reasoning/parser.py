"""Split model output into reasoning_content / content, whole or streamed.

Rules (one definition, shared by both forms, so streamed deltas always add up to the whole split):
- `in_reasoning`: the prompt already opened reasoning. A leading start marker the model writes anyway
  (older DeepSeek-R1) is dropped. Otherwise reasoning exists only when the text starts, after optional
  whitespace, with the start marker; if not, the whole text is content and reasoning is None.
- Reasoning runs to the first end marker (a family may have several); without one, everything is reasoning
  and content is "". An answer end marker (gpt-oss: a tool call's header) stays at the head of the content. A
  header end (gpt-oss: the bare ` to=functions.`) ends it only inside a message header: from `<|start|>`, or
  the output's start where the template opened the message (the start marker was not written), to the
  header's `<|message|>`; in a message's text it is reasoning.
- Markers and the whitespace right around them are stripped (as SGLang does); harmony framing
  (gpt-oss: `<|end|>`, `<|start|>assistant`, `<|channel|>…<|message|>`) is removed from reasoning, a newline
  left where one reasoning message ended and another began.
"""
from __future__ import annotations

import re

from thinkform.reasoning.markers import ReasoningMarkers


class _Framing:
    """Removes a family's framing from reasoning text and says how much of a tail must wait for more."""

    def __init__(self, markers: ReasoningMarkers) -> None:
        # a header end's delimiters are held back too: a header opened or closed across two pieces is seen whole
        self._ends = (*markers.ends, *(markers.header_delimiters or ()))
        self._literals = markers.framing
        self._header = markers.header
        literals = [re.escape(lit) for lit in self._literals]
        parts = list(literals)
        if self._header is not None:
            opener, closer = (re.escape(x) for x in self._header)
            parts.append(opener + ".*?" + closer)
            # a header cut off before its closer (a thinking budget closed the reasoning inside it): up to the
            # framing that follows, or the end
            stop = "|".join([closer, *literals])
            parts.append(f"{opener}(?:(?!{stop}).)*(?=(?:{'|'.join(literals) or '$^'})|$)")
        self._pattern = re.compile("|".join(parts), re.DOTALL) if parts else None
        self._message_end = markers.message_end

    def clean(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(lambda m: "\n" if m.group() == self._message_end else "", text)

    def safe_cut(self, text: str) -> int:
        """Length of the prefix of `text` that no later text can turn into a marker or framing."""
        cut = len(text)
        candidates = (*self._ends, *self._literals) + ((self._header[0],) if self._header else ())
        for literal in candidates:
            cut = min(cut, len(text) - partial_suffix(text, literal))
        if self._header is not None:
            opener, closer = self._header
            last_close = text.rfind(closer)
            unclosed = text.find(opener, last_close + len(closer) if last_close >= 0 else 0)
            if unclosed >= 0:
                cut = min(cut, unclosed)
        return cut


def partial_suffix(text: str, literal: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of literal."""
    for k in range(min(len(literal) - 1, len(text)), 0, -1):
        if text.endswith(literal[:k]):
            return k
    return 0


def split_reasoning(text: str, markers: ReasoningMarkers, in_reasoning: bool,
                    exact_answer: bool = False) -> tuple[str | None, str]:
    """Whole output → (reasoning_content, content); reasoning is None when there was no reasoning section.
    The content's leading whitespace goes (as SGLang strips it), unless `exact_answer`: a constrained answer is
    the grammar's text to the byte (`" yes"` of a choice, a regex's `\n`)."""
    stripped = text.lstrip()
    if stripped.startswith(markers.start):
        raw, in_header = stripped[len(markers.start):], False
    elif in_reasoning:
        raw, in_header = text, True  # without the start marker, the output began in the header the template opened
    else:
        return None, text
    framing = _Framing(markers)
    hit = markers.first_end(raw, in_header=in_header)
    if hit is None:
        return framing.clean(raw).lstrip(), ""
    idx, end = hit
    answer = raw[idx + markers.answer_starts(end):]
    return framing.clean(raw[:idx]).strip(), answer if exact_answer else answer.lstrip()


_LEAD, _REASON, _CONTENT_LEAD, _CONTENT = range(4)


class StreamingReasoningParser:
    """Incremental form of `split_reasoning`: text that might still become a marker is held back.

    The concatenation of all (reasoning, content) deltas from `feed` and `flush` equals
    `split_reasoning` of the concatenated text (with None reasoning read as "").
    """

    def __init__(self, markers: ReasoningMarkers, in_reasoning: bool, exact_answer: bool = False) -> None:
        self._markers = markers
        self._in_reasoning = in_reasoning
        self._exact_answer = exact_answer  # as split_reasoning's
        self._framing = _Framing(markers)
        self._state = _LEAD
        self._buf = ""  # raw text not yet decided
        self._ws = ""  # cleaned trailing reasoning whitespace: dropped if the end marker follows
        self._reasoning_started = False  # leading whitespace of reasoning already stripped
        self._in_header = False  # after `_buf` (and all before it): inside a message header (header ends count)
        self._seen = 0  # `_buf[:_seen]` was searched for end markers

    @property
    def in_reasoning(self) -> bool:
        """Inside the reasoning section right now (or still deciding whether one starts)."""
        return self._state == _REASON or (self._state == _LEAD and self._in_reasoning)

    def feed(self, delta: str) -> tuple[str, str]:
        """Add new output text; returns (reasoning_delta, content_delta)."""
        self._buf += delta
        reasoning: list[str] = []
        content: list[str] = []
        while self._step(reasoning, content):
            pass
        return "".join(reasoning), "".join(content)

    def flush(self) -> tuple[str, str]:
        """End of output: release whatever was held back."""
        buf, self._buf = self._buf, ""
        if self._state == _LEAD and not self._in_reasoning:
            self._state = _CONTENT
            return "", buf
        if self._state in (_LEAD, _REASON):
            text = self._emit_reasoning(buf, final=False) + self._ws
            self._ws = ""
            return text, ""
        return "", buf if self._state == _CONTENT else ""

    def _step(self, reasoning: list[str], content: list[str]) -> bool:
        """Advance the state machine once; False when it must wait for more text."""
        start = self._markers.start
        if self._state == _LEAD:
            head = self._buf.lstrip()
            if head.startswith(start):
                self._buf = head[len(start):]
                self._state = _REASON
            elif start.startswith(head):
                return False  # empty, or a partial start marker: cannot decide yet
            else:
                self._state = _REASON if self._in_reasoning else _CONTENT
                self._in_header = True  # the template opened the message: its header comes first
            self._seen = 0
            return True
        if self._state == _REASON:
            hit, in_header = self._markers.find_end(self._buf, self._in_header, self._seen)
            if hit is not None:
                idx, end = hit
                reasoning.append(self._emit_reasoning(self._buf[:idx], final=True))
                self._buf = self._buf[idx + self._markers.answer_starts(end):]
                self._state = _CONTENT_LEAD
                return True
            cut = self._framing.safe_cut(self._buf)
            reasoning.append(self._emit_reasoning(self._buf[:cut], final=False))
            self._buf = self._buf[cut:]
            self._in_header, self._seen = in_header, len(self._buf)
            return False
        if self._state == _CONTENT_LEAD:
            self._buf = self._buf if self._exact_answer else self._buf.lstrip()
            if not self._buf:
                return False
            self._state = _CONTENT
            return True
        content.append(self._buf)
        self._buf = ""
        return False

    def _emit_reasoning(self, raw: str, final: bool) -> str:
        text = self._framing.clean(raw)
        if not self._reasoning_started:
            text = text.lstrip()
            self._reasoning_started = bool(text)
        text = self._ws + text
        kept = text.rstrip()
        self._ws = "" if final else text[len(kept):]
        return kept


class RawAnswerSplitter:
    """Streamed text cut where the answer begins, by `split_reasoning`'s rules, with nothing removed: what
    comes before (the reasoning section, markers and all) and the answer's text. For separate_reasoning
    false, where the reasoning stays in `content` but tool calls may only come from the answer."""

    def __init__(self, markers: ReasoningMarkers, in_reasoning: bool) -> None:
        self._markers = markers
        self._reasoning: bool | None = True if in_reasoning else None  # None: not known yet
        self._buf = ""
        self._answering = False
        # after `_buf`: inside a message header (the output begins in the one the template opened, or in the
        # start marker, which closes its own); `_buf[:_seen]` was searched
        self._in_header = True
        self._seen = 0
        self._holds = (*markers.ends, *(markers.header_delimiters or ()))

    def feed(self, delta: str) -> tuple[str, str]:
        """(text before the answer, answer text) of this delta, as far as it can be told now."""
        if self._answering:
            return "", delta
        self._buf += delta
        start = self._markers.start
        if self._reasoning is None:
            head = self._buf.lstrip()[: len(start)]
            if head == start:
                self._reasoning = True
            elif not start.startswith(head) or len(head) == len(start):
                self._reasoning = False
            else:
                return "", ""  # could still become the start marker
        if not self._reasoning:
            return self._answer_from(0)
        hit, in_header = self._markers.find_end(self._buf, self._in_header, self._seen)
        if hit is not None:
            return self._answer_from(hit[0] + self._markers.answer_starts(hit[1]))
        keep = max(partial_suffix(self._buf, end) for end in self._holds)
        before, self._buf = self._buf[: len(self._buf) - keep], self._buf[len(self._buf) - keep:]
        self._in_header, self._seen = in_header, len(self._buf)
        return before, ""

    def flush(self) -> tuple[str, str]:
        """What was held back, at the end: the rest of a reasoning section that never ended, or text that
        only looked as if it might start one (then it is the answer)."""
        rest, self._buf = self._buf, ""
        return (rest, "") if self._reasoning else ("", rest)

    def _answer_from(self, cut: int) -> tuple[str, str]:
        self._answering = True
        before, answer, self._buf = self._buf[:cut], self._buf[cut:], ""
        return before, answer
