"""Tool-call formats whose arguments are XML parameters, not JSON (SGLang's qwen3_coder, mimo, glm45, glm47,
minimax-m2, deepseekv32 and deepseekv4 parsers):

- qwen3_coder (Qwen3-Coder): `<tool_call>\\n<function=NAME>\\n<parameter=KEY>\\nVALUE\\n</parameter>\\n...</function>\\n</tool_call>`
- mimo (MiMo): the same without the newlines: `<tool_call><function=NAME><parameter=KEY>VALUE</parameter></function></tool_call>`
- glm45 (GLM-4.5 / 4.6): `<tool_call>NAME\\n<arg_key>KEY</arg_key>\\n<arg_value>VALUE</arg_value>\\n...</tool_call>`
- glm47 (GLM-4.7 / GLM-5): the same without the newlines: `<tool_call>NAME<arg_key>KEY</arg_key><arg_value>VALUE</arg_value></tool_call>`
- minimax-m2 (MiniMax-M2): `<minimax:tool_call>\\n<invoke name="NAME">\\n<parameter name="KEY">VALUE</parameter>\\n</invoke>\\n</minimax:tool_call>`
- deepseekv32 (DeepSeek-V3.2, DSML): `<｜DSML｜function_calls>\\n<｜DSML｜invoke name="NAME">\\n<｜DSML｜parameter name="KEY"
  string="true">VALUE</｜DSML｜parameter>\\n</｜DSML｜invoke>\\n</｜DSML｜function_calls>` (`string="false"`: a JSON value);
  deepseekv4 the same in `<｜DSML｜tool_calls>`

Constrained with xgrammar's structural-tag `json_schema` content in the format's XML style; values
are read into JSON arguments by the tool's schema (thinkform.structured.xml_args), so a parser bound to a
request's tools (`for_tools`) gives each call's arguments as JSON of the schema's types. Streaming sends the
arguments as JSON too: each parameter once complete, a plain string value while it is written. A call whose
body is neither parameters nor (DSML only, SGLang's "direct JSON") one JSON object is malformed: no call, as a
JSON format's call whose arguments are not JSON. Earlier calls are written back (for a chat template that
cannot render them) as the model's template writes them: parameters, strings raw and other values as JSON.
"""
from __future__ import annotations

import json
import re
from typing import Any, Mapping

from thinkform.server.tools import ToolCall, ToolCallParser, arguments_object, tool_name, tool_schema
from thinkform.structured.xml_args import STYLES, arguments_so_far, read_params

_DECODER = json.JSONDecoder()


class XmlToolCallParser(ToolCallParser):
    """Base of the XML formats: `_head` matches a call's opening up to its name (the arguments follow it),
    `_closing` are the markers that close a call after its arguments (whitespace between them)."""

    style: str = ""
    _head: re.Pattern[str]
    _closing: tuple[str, ...] = ()
    schemas: Mapping[str, Any] = {}
    # one call and one of its parameters as the model's chat template writes them ({name} {params}; {key}
    # {value}, and DSML's {string}: "true" for a string value): earlier calls written back, the example call
    call_template: str = ""
    param_template: str = ""
    json_body = False  # a call's body may be one JSON object instead of parameters (DSML: SGLang's "Format 2")

    def for_tools(self, tools: list[Mapping[str, Any]], earlier_calls: int = 0) -> "XmlToolCallParser":
        bound = super().for_tools(tools, earlier_calls)
        assert isinstance(bound, XmlToolCallParser)
        bound.schemas = {tool_name(t): tool_schema(t) for t in tools}
        return bound

    def _tag(self, tool: Mapping[str, Any]) -> dict[str, Any]:
        tag = super()._tag(tool)
        return {**tag, "content": {**tag["content"], "style": self.style}}

    def partial_calls(self, section: str, final: bool = True, scans: Any = None) -> list[tuple[str, str, bool]]:
        return self._read_calls(section, final)[0]

    def _parse_section(self, section: str) -> tuple[list[ToolCall], str]:
        """The calls, and where the format wraps them in a section (MiniMax-M2, DSML), the text after its end:
        content, as SGLang's detectors give it."""
        calls, end = self._read_calls(section, True)
        after = section[end:] if end is not None else ""
        return [ToolCall(name, args) for name, args, complete in calls if complete], after

    def _read_calls(self, section: str, final: bool) -> tuple[list[tuple[str, str, bool]], int | None]:
        """(name, arguments so far, complete) of each call, and where the section's wrapper closes (None: no
        wrapper, or not closed): a call is read only inside the section."""
        out: list[tuple[str, str, bool]] = []
        pos = 0
        while (m := self._head.search(section, pos)) is not None:
            name = m.group("name")
            schema = self.schemas.get(name)
            params, end, over = read_params(section, m.end(), self.style, final)
            closed, arguments = self._call_end(section, end, final, bool(params)) if over else (None, None)
            if closed is None:
                out.append((name, arguments_so_far(params, schema, self.style, closed=False), False))
                break
            if arguments is None:
                arguments = arguments_so_far(params, schema, self.style, closed=True)
            out.append((name, arguments, True))
            pos = closed
            if self.wrapper is not None:
                at = STYLES[self.style].gap.match(section, pos).end()
                if section.startswith(self.wrapper[1], at):
                    return out, at + len(self.wrapper[1])
        return out, None

    def _call_end(self, text: str, pos: int, final: bool, has_params: bool) -> tuple[int | None, str | None]:
        """(where the call whose parameters are over at `pos` ends, its arguments where its body is not
        parameters: DSML's JSON object). The end is None where it is not told yet (a stream still writing, a
        cut answer), and for a malformed call: text in its body that is neither a parameter nor its end (an
        unconstrained model's) makes it no call, as a JSON format's call whose arguments are not JSON, never
        one with the parameters before that text, or with `{}` for a body of no parameters."""
        closed = self._closed(text, pos, final)
        if closed is not False:
            return closed, None
        if text.startswith(self._closing[0], STYLES[self.style].gap.match(text, pos).end()):
            # the body is over; text before the call's last closing marker (Qwen3-Coder's `</function>` text
            # `</tool_call>`) is passed over
            at = text.find(self._closing[-1], pos)
            return (at + len(self._closing[-1]) if at >= 0 else None), None
        if self.json_body and not has_params:
            body = self._json_body(text, pos, final)
            if body is not None:
                return body
        return None, None

    def _json_body(self, text: str, pos: int, final: bool) -> tuple[int, str] | None:
        """(where the call ends, its arguments) for a call body from `pos` that is one JSON object followed by
        the call's end; None for any other body, or one whose end is not written yet."""
        start = STYLES[self.style].gap.match(text, pos).end()
        if not text.startswith("{", start) or text.find(self._closing[0], start) < 0:  # not decoded before its end
            return None
        try:
            value, stop = _DECODER.raw_decode(text, start)
        except (json.JSONDecodeError, RecursionError):
            return None
        closed = self._closed(text, stop, final)
        if not isinstance(value, dict) or closed is None or closed is False:
            return None
        return closed, json.dumps(value, ensure_ascii=False)

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
        return self._parse_section(section)[0]

    # ---- writing -------------------------------------------------------------------------
    def _written_call(self, name: str, arguments: Any) -> str:
        """One earlier call in the format's parameters, as the model's template writes it (a string value raw,
        any other as JSON); arguments that are no JSON object (nothing to write as parameters) as given."""
        args = arguments_object(arguments)
        if args is None:
            return super()._written_call(name, arguments)
        params = "".join(self._written_param(key, value if isinstance(value, str) else
                                             json.dumps(value, ensure_ascii=False), isinstance(value, str))
                         for key, value in args.items())
        return self.call_template.format(name=name, params=params)

    def _written_param(self, key: str, value: str, is_string: bool) -> str:
        return self.param_template.format(key=key, value=value, string="true" if is_string else "false")

    def example(self) -> str:
        return self._wrapped(self.call_template.format(name="NAME", params=self._written_param("KEY", "VALUE", True)))


class Qwen3CoderParser(XmlToolCallParser):
    """Qwen3-Coder: `<tool_call>\\n<function=NAME>\\n<parameter=KEY>\\nVALUE\\n</parameter>\\n</function>\\n</tool_call>`."""

    name = "qwen3_coder"
    style = "qwen_xml"
    call_begin = "<tool_call>\n<function={name}>\n"
    call_end = "\n</function>\n</tool_call>"
    separator = "\n"
    trigger = "<tool_call>"
    argument_markup = ("<parameter=", "</parameter>")
    call_template = "<tool_call>\n<function={name}>\n{params}</function>\n</tool_call>"
    param_template = "<parameter={key}>\n{value}\n</parameter>\n"
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
    call_template = "<tool_call>{name}\n{params}</tool_call>"
    param_template = "<arg_key>{key}</arg_key>\n<arg_value>{value}</arg_value>\n"
    # GLM-4.6 may write the newlines between the markup as the two characters `\n`: not the name's (SGLang)
    _head = re.compile(r"<tool_call>\s*(?P<name>[^\s<\\]+)(?=\s|<|\\n)")
    _closing = ("</tool_call>",)


class MiMoParser(Qwen3CoderParser):
    """MiMo: Qwen3-Coder's parameters without its newlines between the tags (its chat template's spelling, and
    xgrammar's "mimo" structural tag): `<tool_call><function=NAME><parameter=KEY>VALUE</parameter></function></tool_call>`."""

    name = "mimo"
    call_begin = "<tool_call><function={name}>"
    call_end = "</function></tool_call>"
    separator = ""
    call_template = "<tool_call><function={name}>{params}</function></tool_call>"
    param_template = "<parameter={key}>{value}</parameter>"


class Glm47Parser(Glm45Parser):
    """GLM-4.7 / GLM-5: GLM-4.5's tags without the newlines (its chat template writes
    `<tool_call>NAME<arg_key>KEY</arg_key><arg_value>VALUE</arg_value></tool_call>`, calls back to back)."""

    name = "glm47"
    call_begin = "<tool_call>{name}"
    separator = ""
    call_template = "<tool_call>{name}{params}</tool_call>"
    param_template = "<arg_key>{key}</arg_key><arg_value>{value}</arg_value>"


class MiniMaxM2Parser(XmlToolCallParser):
    """MiniMax-M2: `<minimax:tool_call>\\n<invoke name="NAME">\\n<parameter name="KEY">VALUE</parameter>\\n</invoke>\\n
    </minimax:tool_call>`, the calls of one answer in one section."""

    name = "minimax-m2"
    style = "minimax_xml"
    call_begin = '<invoke name="{name}">\n'
    call_end = "</invoke>\n"
    wrapper = ("<minimax:tool_call>\n", "</minimax:tool_call>")
    separator = ""
    trigger = "<minimax:tool_call>"
    argument_markup = ('<parameter name="', "</parameter>")
    call_template = '<invoke name="{name}">\n{params}</invoke>\n'
    param_template = '<parameter name="{key}">{value}</parameter>\n'
    section_lead = "\n\n\n"  # `</think>\n\n` then `\n` before the section (its template; xgrammar's "minimax")
    _head = re.compile(r'<invoke\s+name="(?P<name>[^"<>]+)"\s*>')
    _closing = ("</invoke>",)


class DeepSeekV32Parser(XmlToolCallParser):
    """DeepSeek-V3.2 (DSML): `<｜DSML｜function_calls>\\n<｜DSML｜invoke name="NAME">\\n<｜DSML｜parameter name="KEY"
    string="true">VALUE</｜DSML｜parameter>\\n</｜DSML｜invoke>\\n</｜DSML｜function_calls>`; each value says whether it
    is raw text (`string="true"`) or JSON (`string="false"`)."""

    name = "deepseekv32"
    style = "deepseek_xml"
    call_begin = '<｜DSML｜invoke name="{name}">\n'
    call_end = "</｜DSML｜invoke>\n"
    wrapper = ("<｜DSML｜function_calls>\n", "</｜DSML｜function_calls>")
    separator = ""
    trigger = "<｜DSML｜function_calls>"
    argument_markup = ('<｜DSML｜parameter name="', 'string="true">', 'string="false">', "</｜DSML｜parameter>")
    call_template = '<｜DSML｜invoke name="{name}">\n{params}</｜DSML｜invoke>\n'
    param_template = '<｜DSML｜parameter name="{key}" string="{string}">{value}</｜DSML｜parameter>\n'
    section_lead = "\n\n"  # before the section (encoding_dsv32, xgrammar's "deepseek_v3_2" tag)
    json_body = True
    _head = re.compile(r'<｜DSML｜invoke\s+name="(?P<name>[^"<>]+)"\s*>')
    _closing = ("</｜DSML｜invoke>",)

    def example(self) -> str:
        """Both spellings of a value: raw text (`string="true"`), and JSON (`string="false"`)."""
        params = self._written_param("KEY", "VALUE", True) + self._written_param("KEY2", "JSON_VALUE", False)
        return self._wrapped(self.call_template.format(name="NAME", params=params))


class DeepSeekV4Parser(DeepSeekV32Parser):
    """DeepSeek-V4: V3.2's DSML calls in a `<｜DSML｜tool_calls>` section."""

    name = "deepseekv4"
    wrapper = ("<｜DSML｜tool_calls>\n", "</｜DSML｜tool_calls>")
    trigger = "<｜DSML｜tool_calls>"
