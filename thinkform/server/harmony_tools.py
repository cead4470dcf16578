"""gpt-oss (harmony) tool calls: a call is a commentary message addressed to `functions.NAME`,

    <|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>
    <|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>

(the recipient in the channel or in the role header; ` <|constrain|>json`, `<|constrain|>json` or ` json` for
the content type), ended by `<|call|>`, a stop token: one call per answer. The gpt-oss reasoning markers end
reasoning at such a header and keep it at the head of the answer, so calls are never read out of the
reasoning and the grammar constrains the call's name, header and arguments. Under tool_choice required /
named a call may also follow the final channel's header, without `to=functions.`: the grammar puts it
there when the model wrote that header (or the budget did).
"""
from __future__ import annotations

import re
from functools import cached_property
from typing import Any, Mapping

import regex

from thinkform.reasoning import partial_suffix
from thinkform.server.tools import ToolCall, ToolCallParser, ToolMode, tool_name, tool_schema

_RECIPIENT = "to=functions."
# a call's header up to its tool's name, as the reasoning markers leave it at the head of the answer
_CALL_HEADS = ("<|channel|>commentary to=functions.", "<|start|>assistant to=functions.",
               "<|channel|>analysis to=functions.")
_CALL_START = re.compile(r"(?:<\|start\|>assistant ?|<\|channel\|>(?:commentary|analysis) ?)?to=functions\.")
# what may follow a tool's name up to its arguments: its content type (channel-recipient form), or the
# channel and content type (role-recipient form)
_HEADER_RESTS = (" <|constrain|>json<|message|>", "<|constrain|>json<|message|>", " json<|message|>", "<|message|>",
                 "<|channel|>commentary <|constrain|>json<|message|>", "<|channel|>commentary json<|message|>",
                 "<|channel|>commentary<|message|>")
_HEAD = (r"(?:to=functions\.)?(?P<name>[\w.\-]+?)\s*(?:<\|channel\|>\s*(?:commentary|analysis))?\s*"
         r"(?:<\|constrain\|>)?\s*(?:json)?\s*<\|message\|>\s*")


class GptOssParser(ToolCallParser):
    """Calls in harmony's commentary messages; ids `call_…` as SGLang's."""

    name = "gpt-oss"
    call_begin = "<|channel|>commentary to=functions.{name} <|constrain|>json<|message|>"
    call_end = ""  # `<|call|>` is a stop token: the call ends with the output
    trigger = _RECIPIENT

    @cached_property
    def _begin(self) -> re.Pattern[str]:
        return re.compile(_HEAD + r"(?=\{)")

    def _section_start(self, text: str) -> int:
        found = _CALL_START.search(text)
        if found is not None:
            return found.start()
        head = len(text) - len(text.lstrip())  # a call right after the final header: at the answer's start
        return head if self._begin.match(text, head) else -1

    def _maybe_start(self, text: str) -> int:
        """Hold back a call's header being written, and an answer whose start may still become a call."""
        lead = len(text) - len(text.lstrip())
        if regex.match(_HEAD, text[lead:], partial=True):
            return 0
        return len(text) - max(partial_suffix(text, head) for head in (*_CALL_HEADS, _RECIPIENT))

    def _parse_calls(self, section: str) -> list[ToolCall]:
        return [ToolCall(name, args) for name, args, complete in self.partial_calls(section) if complete][:1]

    def structural_tag(self, tools: list[Mapping[str, Any]], mode: ToolMode = "auto",
                       parallel: bool = True) -> dict[str, Any] | None:
        """The answer after a call's header (or after the final header): one call of `tools` — its name, the
        rest of its header, arguments of its schema; under auto also any text that is not a call (it cannot
        hold `<|message|>`, so a call's arguments are always constrained)."""
        tags = [{"type": "tag", "begin": prefix + tool_name(tool) + rest,
                 "content": {"type": "json_schema", "json_schema": tool_schema(tool)}, "end": ""}
                for tool in tools for rest in _HEADER_RESTS for prefix in ("", _RECIPIENT)]
        calls: dict[str, Any] = tags[0] if len(tags) == 1 else {"type": "or", "elements": tags}
        if mode == "auto":
            calls = {"type": "or", "elements": [calls, {"type": "any_text", "excludes": ["<|message|>"]}]}
        return {"type": "structural_tag", "format": calls}
