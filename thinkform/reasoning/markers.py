"""Each model family's reasoning markers. Pure data; imports nothing of ours.

Names and behaviour follow SGLang's `--reasoning-parser` choices (sglang/srt/parser/reasoning_parser.py):
who writes the start marker (the chat template or the model), whether the family always thinks, and
which `chat_template_kwargs` switch turns thinking on or off.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from types import MappingProxyType
from typing import Any, AnyStr


@dataclass(frozen=True)
class ReasoningMarkers:
    name: str
    start: str  # e.g. "<think>"
    end: str  # e.g. "</think>"
    always_thinks: bool = False  # the model always reasons (deepseek-r1, qwen3-thinking)
    template_writes_start: bool = False  # the chat template opens the reasoning itself
    thinking_switch: str | None = None  # chat_template_kwargs key that turns thinking on/off
    switch_default: bool = True  # value of that switch when the request does not set it
    # Text the engine appends to close reasoning (thinking budget, EOS guard); defaults to `end`.
    # gpt-oss needs the harmony framing around its final-channel header.
    close: str | None = None
    # Harmony framing that may appear inside reasoning and is not reasoning text (gpt-oss): literal
    # strings, and headers running from header[0] to the next header[1] (`<|channel|>…<|message|>`).
    framing: tuple[str, ...] = ()
    header: tuple[str, str] | None = None
    # the framing that ends one reasoning message (gpt-oss's `<|end|>`): two messages' texts are joined by a
    # newline where it was (as vLLM joins them), not glued together
    message_end: str | None = None
    # Other strings that end reasoning as `end` does (gpt-oss: the final channel's header with a content
    # type). `answer_ends` end it too and stay at the head of the answer, which they describe (gpt-oss: a
    # tool call's header, read by the tool-call parser); the grammar takes what follows them.
    alt_ends: tuple[str, ...] = ()
    answer_ends: tuple[str, ...] = ()
    # answer ends that count only inside a message's header, from `message_start` (or the output's start where
    # the template opened the message) to the header's closer (`header[1]`): gpt-oss's bare ` to=functions.`,
    # the recipient of the output's first header, whose `<|start|>assistant` the template wrote. In a message's
    # text it is a mention, reasoning (SGLang's and vLLM's harmony parsers read a recipient only in a header).
    # They never contain `message_start` or the closer, nor share text with them.
    header_ends: tuple[str, ...] = ()
    message_start: str | None = None
    # the tool calls' grammar begins with the answer end (Kimi-K2's call section), not after it (gpt-oss's
    # call headers, whose grammar under `auto` would read a header as free text)
    grammar_reads_answer_ends: bool = False
    # the reasoning is not separated: the whole output is content, with the start marker the template wrote
    # before it (SGLang's minimax-append-think); the grammar still begins after the end marker
    reasoning_in_content: bool = False

    def __post_init__(self) -> None:
        if self.header_ends and (not set(self.header_ends) <= set(self.answer_ends) or self.message_start is None
                                 or self.header is None):
            raise ValueError(f"{self.name}: header_ends must be answer ends, with message_start and header")

    @property
    def close_text(self) -> str:
        return self.close if self.close is not None else self.end

    @property
    def ends(self) -> tuple[str, ...]:
        """Every string that ends reasoning."""
        return (self.end, *self.alt_ends, *self.answer_ends)

    @property
    def spellings(self) -> tuple[str, ...]:
        """Every string of this family's markup: markers, closing text, framing, header delimiters."""
        return (self.start, *self.ends, self.close_text, *self.framing, *(self.header or ()))

    @cached_property
    def anywhere_ends(self) -> tuple[str, ...]:
        """The end markers that count wherever they appear (all but the header ends)."""
        return tuple(end for end in self.ends if end not in self.header_ends)

    @property
    def header_delimiters(self) -> tuple[str, str] | None:
        """(opener, closer) of the message headers that header ends count in; None without header ends."""
        if not self.header_ends:
            return None
        assert self.message_start is not None and self.header is not None
        return self.message_start, self.header[1]

    @cached_property
    def without_answer_ends(self) -> "ReasoningMarkers":
        """The markers where the answer cannot be a tool call (no tools): a call's header is reasoning text."""
        return replace(self, answer_ends=(), header_ends=())

    def for_answer(self, may_call: bool, tag_openings: Iterable[str] | None = None) -> "ReasoningMarkers":
        """The markers as one request reads them: its answer ends (gpt-oss's call headers) only where the
        answer may be a tool call (a structural tag, as tools make); elsewhere such a header, or a mention of
        it, is reasoning. Where the family's grammar begins with its answer end (Kimi-K2's call section), only
        a structural tag whose own strings (`tag_openings`: begins, triggers, constants) open with it may
        begin so: a user's tag for a JSON answer left the section's tag at the head of its content. The
        engine and the server both read a request this way, from the same parsed tag."""
        if not self.answer_ends:
            return self
        if not may_call:
            return self.without_answer_ends
        if self.grammar_reads_answer_ends and tag_openings is not None and not any(
                o.startswith(end) for o in tag_openings for end in self.answer_ends):
            return self.without_answer_ends
        return self

    def first_end(self, text: str, start: int = 0, in_header: bool = False) -> tuple[int, str] | None:
        """(where, which) of the first end marker in `text` from `start` (at one place, the longest); a header
        end only inside a message header (`in_header`: `start` is inside one, where the template opened it)."""
        if not self.header_ends:
            return first_of(text, self.ends, start)
        hit, _ = self.find_end(text[start:], in_header)
        return None if hit is None else (hit[0] + start, hit[1])

    def find_end(self, text: str, in_header: bool, seen: int = 0) -> tuple[tuple[int, str] | None, bool]:
        """`first_end_in_headers` over this family's markers: (first end marker, inside a header after `text`),
        for a search over a rolling buffer whose `text[:seen]` was searched before, `in_header` the state after
        it. Without header ends: (first_end, False)."""
        delimiters = self.header_delimiters
        if delimiters is None:
            return first_of(text, self.ends), False
        return first_end_in_headers(text, self.anywhere_ends, self.header_ends, *delimiters, in_header, seen)

    def answer_starts(self, end: str) -> int:
        """How much of an end marker the answer starts with: all of an answer end, none of the others."""
        return len(end) if end not in self.answer_ends else 0

    def thinking_enabled(self, chat_template_kwargs: Mapping[str, Any] | None = None) -> bool:
        """Whether this request reasons at all, from the family and the request's template switch."""
        if self.always_thinks or self.thinking_switch is None:
            return True
        value = (chat_template_kwargs or {}).get(self.thinking_switch)
        return self.switch_default if value is None else bool(value)

    def starts_in_reasoning(self, chat_template_kwargs: Mapping[str, Any] | None = None) -> bool:
        """The prompt already opened reasoning, so the output starts inside it (no start marker expected)."""
        return self.thinking_enabled(chat_template_kwargs) and self.template_writes_start


def first_of(text: AnyStr, needles: Iterable[AnyStr], start: int = 0) -> tuple[int, AnyStr] | None:
    """(where, which) of the first of `needles` in `text` from `start` (at one place, the longest): the
    parsers' search on text and the gate's on bytes."""
    best: tuple[int, AnyStr] | None = None
    for needle in needles:
        at = text.find(needle, start)
        if at >= 0 and (best is None or at < best[0] or (at == best[0] and len(needle) > len(best[1]))):
            best = (at, needle)
    return best


def first_end_in_headers(text: AnyStr, ends: Sequence[AnyStr], header_ends: Sequence[AnyStr], opener: AnyStr,
                         closer: AnyStr, in_header: bool, seen: int = 0) -> tuple[tuple[int, AnyStr] | None, bool]:
    """(first end, whether `text` ends inside a header): one of `ends` anywhere, one of `header_ends` only inside
    a message header, from an `opener` (or the text's start, where `in_header`) to the next `closer`. The text
    may be a rolling buffer: `text[:seen]` was searched before and `in_header` is the state after it, so only
    the header ends and delimiters that reach past it are new (the caller keeps a partial delimiter or end at
    its buffer's tail). Where an end is found, the state returned is the one where the search stopped. The
    parsers' search on text and the gate's on bytes."""
    best = first_of(text, ends)
    segment = 0  # the stretch between two delimiters searched now begins here
    while True:
        opens = text.find(opener, max(segment, seen - len(opener) + 1))
        closes = text.find(closer, max(segment, seen - len(closer) + 1))
        # the next delimiter: (where, its length, the state after it), or None
        if opens >= 0 and (closes < 0 or opens < closes):
            delimiter: tuple[int, int, bool] | None = (opens, len(opener), True)
        else:
            delimiter = (closes, len(closer), False) if closes >= 0 else None
        stop = len(text) if delimiter is None else delimiter[0]
        if in_header:
            for needle in header_ends:
                at = text.find(needle, max(segment, seen - len(needle) + 1), stop)
                if at >= 0 and (best is None or at < best[0] or (at == best[0] and len(needle) > len(best[1]))):
                    best = (at, needle)
        if delimiter is None or (best is not None and best[0] < stop):
            return best, in_header
        segment, in_header = delimiter[0] + delimiter[1], delimiter[2]


_THINK = ("<think>", "</think>")
# a tool call begun inside the reasoning ends it, and the calls' grammar reads it (only where the request's
# tool-call format opens with it: ReasoningMarkers.for_answer)
_TOOL_CALL_ENDS: dict[str, Any] = {"answer_ends": ("<tool_call>",), "grammar_reads_answer_ends": True}

# gpt-oss (harmony): `<|channel|>analysis<|message|>…<|end|><|start|>assistant<|channel|>final<|message|>…`.
# The answer begins after the final-channel header; everything before it is reasoning.
_GPT_OSS = ReasoningMarkers(
    name="gpt-oss",
    start="<|channel|>analysis<|message|>",
    end="<|channel|>final<|message|>",
    always_thinks=True,
    # The template ends with `<|start|>assistant`; treat the output as reasoning from its first byte so
    # any channel header the model writes first stays out of the answer.
    template_writes_start=True,
    close="<|end|><|start|>assistant<|channel|>final<|message|>",
    framing=("<|end|>", "<|start|>assistant"),
    header=("<|channel|>", "<|message|>"),
    message_end="<|end|>",
    # the final header as the model writes it under structured output (vLLM #23120: unmatched, the JSON
    # ran unconstrained), and a call's header in either place harmony allows its recipient
    alt_ends=tuple(f"<|channel|>final{kind}<|message|>" for kind in (" <|constrain|>json", "<|constrain|>json",
                                                                    " json")),
    # (the bare ` to=functions.`: the output's first header, whose `<|start|>assistant` the template wrote;
    # only in a header: written in an analysis message's text it is a mention, not a call)
    answer_ends=("<|channel|>commentary to=functions.", "<|start|>assistant to=functions.",
                 "<|channel|>analysis to=functions.", " to=functions."),
    header_ends=(" to=functions.",),
    message_start="<|start|>",
)

REASONING_PARSERS: Mapping[str, ReasoningMarkers] = MappingProxyType({
    # R1: the template (R1-0528+) opens `<think>`; older R1 checkpoints may still write it: both handled
    # by treating the output as reasoning and stripping a leading start marker.
    "deepseek-r1": ReasoningMarkers("deepseek-r1", *_THINK, always_thinks=True, template_writes_start=True),
    "qwq": ReasoningMarkers("qwq", *_THINK, always_thinks=True, template_writes_start=True),
    # V3.1/V3.2: hybrid; `thinking` (not enable_thinking) opts in, and the template then opens `<think>`.
    "deepseek-v3": ReasoningMarkers("deepseek-v3", *_THINK, template_writes_start=True,
                                    thinking_switch="thinking", switch_default=False),
    # Qwen3 (hybrid): the model writes `<think>` itself; enable_thinking=False makes the template write an
    # empty `<think></think>` block, so the output is all answer. Qwen3 and GLM-4.5 may open `<tool_call>`
    # without `</think>`: it ends the reasoning and is the answer's (SGLang's Qwen3 and GLM-4.5 detectors)
    "qwen3": ReasoningMarkers("qwen3", *_THINK, thinking_switch="enable_thinking", switch_default=True,
                              **_TOOL_CALL_ENDS),
    "qwen3-thinking": ReasoningMarkers("qwen3-thinking", *_THINK, always_thinks=True, template_writes_start=True,
                                       **_TOOL_CALL_ENDS),
    "glm45": ReasoningMarkers("glm45", *_THINK, thinking_switch="enable_thinking", switch_default=True,
                              **_TOOL_CALL_ENDS),
    "mimo": ReasoningMarkers("mimo", *_THINK, thinking_switch="enable_thinking", switch_default=True,
                             **_TOOL_CALL_ENDS),
    "kimi": ReasoningMarkers("kimi", "◁think▷", "◁/think▷"),
    # Kimi-K2-Thinking: `<think>`, thinking unless `thinking: false`; a tool-call section begun without
    # `</think>` ends the reasoning and is the answer's (as SGLang's and vLLM's kimi_k2 parsers read it)
    "kimi_k2": ReasoningMarkers("kimi_k2", *_THINK, thinking_switch="thinking", switch_default=True,
                                answer_ends=("<|tool_calls_section_begin|>",), grammar_reads_answer_ends=True),
    "interns1": ReasoningMarkers("interns1", *_THINK, thinking_switch="enable_thinking", switch_default=True,
                                 **_TOOL_CALL_ENDS),
    # Nemotron-3 / Nano-V3 and OLMo-3: `<think>` where the template or the model opens it
    "nemotron_3": ReasoningMarkers("nemotron_3", *_THINK),
    "nano_v3": ReasoningMarkers("nano_v3", *_THINK),
    "olmo3": ReasoningMarkers("olmo3", *_THINK),
    # Mistral reasons only when asked (reasoning_effort); the model writes `[THINK]` when it does.
    "mistral": ReasoningMarkers("mistral", "[THINK]", "[/THINK]"),
    "gpt-oss": _GPT_OSS,
    "minimax": ReasoningMarkers("minimax", *_THINK, always_thinks=True, template_writes_start=True),
    "step3": ReasoningMarkers("step3", *_THINK, always_thinks=True, template_writes_start=True),
    "step3p5": ReasoningMarkers("step3p5", *_THINK, always_thinks=True, template_writes_start=True),
    "minimax-append-think": ReasoningMarkers("minimax-append-think", *_THINK, always_thinks=True,
                                             template_writes_start=True, reasoning_in_content=True),
})


def get_markers(name: str) -> ReasoningMarkers:
    """The markers of a `--reasoning-parser` name (case-insensitive)."""
    markers = REASONING_PARSERS.get(name.lower()) if isinstance(name, str) else None
    if markers is None:
        raise ValueError(
            f"reasoning_parser: unknown parser {name!r}; known parsers: {', '.join(sorted(REASONING_PARSERS))}")
    return markers
