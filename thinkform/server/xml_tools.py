"""Tool-call formats whose arguments are XML parameters, not JSON (SGLang's qwen3_coder and glm45 parsers):

- qwen3_coder (Qwen3-Coder): `<tool_call>\\n<function=NAME>\\n<parameter=KEY>\\nVALUE\\n</parameter>\\n...</function>\\n</tool_call>`
- glm45 (GLM-4.5 / 4.6): `<tool_call>NAME\\n<arg_key>KEY</arg_key>\\n<arg_value>VALUE</arg_value>\\n...</tool_call>`

Constrained with xgrammar's structural-tag `json_schema` content in the "qwen_xml" / "glm_xml" style; values
are read into JSON arguments by the tool's schema (thinkform.structured.xml_args), so a parser bound to a
request's tools (`for_tools`) gives each call's arguments as JSON of the schema's types. Streaming sends the
arguments as JSON too: each parameter once complete, a plain string value while it is written.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

from thinkform.server.tools import ToolCall, ToolCallParser, tool_name, tool_schema
from thinkform.structured.xml_args import STYLES, arguments_so_far, read_params


class XmlToolCallParser(ToolCallParser):
    """Base of the XML formats: `_head` matches a call's opening up to its name (the arguments follow it),
    `_closing` are the markers that close a call after its arguments (whitespace between them)."""

    style: str = ""
    _head: re.Pattern[str]
    _closing: tuple[str, ...] = ()
    schemas: Mapping[str, Any] = {}

    def for_tools(self, tools: list[Mapping[str, Any]], earlier_calls: int = 0) -> "XmlToolCallParser":
        bound = super().for_tools(tools, earlier_calls)
        assert isinstance(bound, XmlToolCallParser)
        bound.schemas = {tool_name(t): tool_schema(t) for t in tools}
        return bound

    def _tag(self, tool: Mapping[str, Any]) -> dict[str, Any]:
        tag = super()._tag(tool)
        return {**tag, "content": {**tag["content"], "style": self.style}}

    def partial_calls(self, section: str, final: bool = True, scans: Any = None) -> list[tuple[str, str, bool]]:
        out, pos = [], 0
        while (m := self._head.search(section, pos)) is not None:
            name = m.group("name")
            schema = self.schemas.get(name)
            params, end, over = read_params(section, m.end(), self.style, final)
            closed = self._closed(section, end, final) if over else None
            if closed is False:  # not a parameter, not the call's end (an unconstrained model): up to its end
                at = section.find(self._closing[-1], end)
                closed = at + len(self._closing[-1]) if at >= 0 else None
            if closed is None:
                out.append((name, arguments_so_far(params, schema, self.style, closed=False), False))
                break
            out.append((name, arguments_so_far(params, schema, self.style, closed=True), True))
            pos = closed
        return out

    def _closed(self, text: str, pos: int, final: bool) -> int | None | bool:
        """Where the call's closing markers end (None: the text ends inside them, False: something else). A
        `final` text that ends after the first of them closes the call there: Qwen3-Coder's answer may stop
        after `</function>` without `</tool_call>`, and SGLang reads that call."""
        gap = STYLES[self.style].gap
        for k, marker in enumerate(self._closing):
            pos = gap.match(text, pos).end()
            if text.startswith(marker, pos):
                pos += len(marker)
            elif marker.startswith(text[pos:]):
                return pos if final and k > 0 and pos == len(text) else None
            else:
                return False
        return pos

    def _parse_calls(self, section: str) -> list[ToolCall]:
        return [ToolCall(name, args) for name, args, complete in self.partial_calls(section) if complete]


class Qwen3CoderParser(XmlToolCallParser):
    """Qwen3-Coder: `<tool_call>\\n<function=NAME>\\n<parameter=KEY>\\nVALUE\\n</parameter>\\n</function>\\n</tool_call>`."""

    name = "qwen3_coder"
    style = "qwen_xml"
    call_begin = "<tool_call>\n<function={name}>\n"
    call_end = "\n</function>\n</tool_call>"
    separator = "\n"
    trigger = "<tool_call>"
    argument_markup = ("<parameter=", "</parameter>")
    _head = re.compile(r"<tool_call>\s*<function=(?P<name>[^>\s]+)>")
    _closing = ("</function>", "</tool_call>")


class Glm45Parser(XmlToolCallParser):
    """GLM-4.5 / 4.6: `<tool_call>NAME\\n<arg_key>KEY</arg_key>\\n<arg_value>VALUE</arg_value>\\n</tool_call>`."""

    name = "glm45"
    style = "glm_xml"
    call_begin = "<tool_call>{name}\n"
    call_end = "</tool_call>"
    separator = "\n"
    trigger = "<tool_call>"
    argument_markup = ("<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>")
    # GLM-4.6 may write the newlines between the markup as the two characters `\n`: not the name's (SGLang)
    _head = re.compile(r"<tool_call>\s*(?P<name>[^\s<\\]+)(?=\s|<|\\n)")
    _closing = ("</tool_call>",)
