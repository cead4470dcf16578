"""Tool-call formats: tools -> structural tag (constrained calls); model text -> tool calls.

Each format is a small data description (the text around one call, the optional wrapper around all
calls, the separator) plus a parser; the structural tags use xgrammar's `format` spelling. The formats whose
arguments are XML parameters (qwen3_coder, mimo, glm45, glm47, minimax-m2, deepseekv32, deepseekv4) live in
xml_tools.py and read them by the request's tool schemas (`for_tools`).
"""
from __future__ import annotations

import ast
import copy
import io
from abc import ABC, abstractmethod
import json
import re
import tokenize
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any, Callable, Literal, Mapping

import regex

from thinkform.reasoning import partial_suffix
from thinkform.server.json_prefix import JsonPrefixScan, json_prefix_length
from thinkform.server.pythonic import pythonic_calls_grammar

ToolMode = Literal["auto", "required", "named"]


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def to_openai(self, index: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "type": "function",
                               "function": {"name": self.name, "arguments": self.arguments}}
        if index is not None:
            out["index"] = index
        return out


# OpenAI: "omitting parameters defines a function with an empty parameter list" (any object was allowed: a random
# model's call to `now()` came with made-up keys, and `now(**args)` raised TypeError)
NO_PARAMETERS = {"type": "object", "properties": {}, "additionalProperties": False}


def tool_schema(tool: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON schema of a tool's arguments (OpenAI `function.parameters`; none or `{}`: no arguments)."""
    params = tool.get("function", tool).get("parameters")
    return params if isinstance(params, dict) and params else dict(NO_PARAMETERS)


def tool_name(tool: Mapping[str, Any]) -> str:
    return str(tool.get("function", tool).get("name", ""))


_DECODER = json.JSONDecoder()


def _json_args(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def arguments_object(arguments: Any) -> dict[str, Any] | None:
    """A call's arguments (OpenAI's JSON text, or an object) as an object; None where they are not one."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except (json.JSONDecodeError, RecursionError):
            return None
    return arguments if isinstance(arguments, dict) else None


class ToolCallParser(ABC):
    """Base: one format. Subclasses set the class attributes and `_parse_calls`."""

    name: str = ""
    call_begin: str = ""  # text before the arguments of one call; `{name}` is replaced
    call_end: str = ""
    wrapper: tuple[str, str] | None = None  # text around all the calls, if the format has it
    separator: str = ""
    trigger: str = ""  # text that starts the tool-call section
    argument_markup: tuple[str, ...] = ()  # the fixed text around arguments not written as JSON (GLM's XML tags)
    bare_json: bool = False  # a JSON object as the whole answer is a call too
    # the whitespace the chat template writes before the call section (DeepSeek-V3.2's `\n\n`): a required or
    # named call's grammar admits up to that many newlines before the section's wrapper
    section_lead: str = ""
    declared: frozenset[str] | None = None  # the request's tools (for_tools); None: any name is a call

    @property
    def markup(self) -> tuple[str, ...]:
        """The format's own text (trigger, wrapper, what surrounds a call's name and arguments): a special token
        that spells part of it is the model's markup (Engine.set_tool_markup)."""
        pieces = (self.trigger, *(self.wrapper or ()), *self.call_begin.split("{name}"), self.call_end, self.separator,
                  *self.argument_markup)
        return tuple(p for p in pieces if p.strip())

    # ---- parsing -------------------------------------------------------------------------
    def parse(self, text: str, with_cut_call: bool = False) -> tuple[str, list[ToolCall]]:
        """Split `text` into the normal text and the tool calls found after the trigger. `with_cut_call`
        (the answer ran out of tokens): a last call still being written comes too, its arguments as far as
        they go (what streaming sent of it)."""
        read = self.read(text, with_cut_call)
        return read if read is not None else (text, [])

    def read(self, text: str, with_cut_call: bool = False) -> tuple[str, list[ToolCall]] | None:
        """`parse`, or None where no call section is read at all (the text is all content).

        A call begun in the format's template that never completes (arguments that are not JSON, an answer
        that stops inside it) is no call, and its text is not content either: a stream has sent its header,
        which it cannot take back, and must not send the same markup again as content; the whole response
        gives what the stream gives (audit 7). A call of a function the request does not declare is dropped,
        its text too, as SGLang's detectors and /parse_function_call drop it."""
        start = self._section_start(text)
        if start < 0:
            return None
        section = text[start:]
        calls, after = self._parse_section(section)
        begun = self.partial_calls(section)
        if with_cut_call:  # the call being written when the tokens ran out, its arguments done or not (its end
            # tag missing, the format's parse does not see it: streaming had sent it, audit 29)
            calls = calls + [ToolCall(name, args) for name, args, _ in begun[len(calls):]][:1]
        if not calls and not any(self.declares(name) for name, _, _ in begun):
            return None
        if any(not complete for _, _, complete in begun):  # the text after the calls holds a begun one: no content
            after = ""
        calls = [call for call in self._raw_arguments(calls, begun) if self.declares(call.name)]
        for k, call in enumerate(calls):
            call.id = self.call_id(call.name, k) or call.id
        return text[:start].rstrip() + (after if after.strip() else ""), calls

    def declares(self, name: str) -> bool:
        """Whether a call of `name` is one (the request declares that function, or declared none)."""
        return self.declared is None or name in self.declared

    def for_tools(self, tools: list[Mapping[str, Any]], earlier_calls: int = 0) -> "ToolCallParser":
        """The parser for one request's tools and conversation (`earlier_calls`: the calls its assistant
        messages made): calls of other functions are dropped; formats whose arguments are not JSON (XML
        parameters) read them by the tools' schemas, formats that number calls across the conversation go on
        from the earlier ones."""
        bound = copy.copy(self)
        bound.declared = frozenset(tool_name(t) for t in tools) or None
        return bound

    def call_id(self, name: str, index: int) -> str | None:
        """The id of the request's `index`-th call (None: a random `call_...` id)."""
        return None

    @staticmethod
    def _raw_arguments(calls: list[ToolCall], raw: list[tuple[str, str, bool]]) -> list[ToolCall]:
        """Calls written in the format's own template (`raw`: partial_calls) keep their arguments as the model
        wrote them (what streaming sends); re-serialised JSON stays for the others."""
        for call, (name, args, complete) in zip(calls, raw):
            if complete and name == call.name and _normal_json(args) == _normal_json(call.arguments):
                call.arguments = args
        return calls

    def partial_calls(self, section: str, final: bool = True,
                      scans: dict[int, JsonPrefixScan] | None = None) -> list[tuple[str, str, bool]]:
        """(name, arguments text so far, complete) of each call written in the format's template
        (`call_begin`, then a JSON object), as far as `section` goes: what streaming sends as it grows.
        `final`: no more text will come (a stream's growing text is not: XML values hold back a closing tag
        until what follows tells whether it ends them). `scans`: a stream's scans of unfinished arguments, by
        where they begin, so each goes on where it stopped."""
        if self._begin is None:
            return []
        out, pos = [], 0
        while (m := self._begin.search(section, pos)) is not None:
            try:
                _, end = _DECODER.raw_decode(section, m.end())
            except (json.JSONDecodeError, RecursionError):
                scan = scans.setdefault(m.end(), JsonPrefixScan()) if scans is not None else JsonPrefixScan()
                out.append((m.group("name"), self._unfinished_arguments(section[m.end():], scan), False))
                break
            out.append((m.group("name"), section[m.end():end], True))
            pos = end
        return out

    @cached_property
    def _begin(self) -> re.Pattern[str] | None:
        """`call_begin` as a pattern that captures the name, followed by the arguments' opening brace."""
        if "{name}" not in self.call_begin:
            return None
        begin = self.call_begin.removeprefix(self.trigger)  # later calls of a section may not repeat it
        head, tail = (re.escape(part) for part in begin.split("{name}"))
        return re.compile(head + r"(?P<name>[\w.\-]+)" + tail + r"(?=\{)")

    def _unfinished_arguments(self, text: str, scan: JsonPrefixScan) -> str:
        """Arguments still being written: as far as they are the start of a JSON object (never text that is
        not JSON, as SGLang streams them), and never past the call's closing marker."""
        text = text[:scan.length(text)]
        closing = self.call_end.strip("}\n ")
        if not closing:
            return text
        at = text.find(closing)
        return text[:at] if at >= 0 else text[: len(text) - partial_suffix(text, closing)]

    def _section_start(self, text: str) -> int:
        return text.find(self.trigger)

    def _maybe_start(self, text: str) -> int:
        """Where a tool-call section may be starting at the end of `text` (len(text): nowhere)."""
        return len(text) - partial_suffix(text, self.trigger)

    @abstractmethod
    def _parse_calls(self, section: str) -> list[ToolCall]:
        """The calls written in a tool-call section of the answer."""

    def _parse_section(self, section: str) -> tuple[list[ToolCall], str]:
        """The calls of a tool-call section, and its text that is content (where the format ends its calls and
        text may follow them: pythonic, a bare JSON call)."""
        return self._parse_calls(section), ""

    def written(self, calls: list[Mapping[str, Any]]) -> str:
        """Earlier calls (OpenAI's `tool_calls`) as the model writes them in this format, in its wrapper: for
        chat templates that cannot render calls, which left the model no trace of what it had called. The
        format's own parse reads them back as these calls."""
        texts = [self._written_call(str(fn.get("name", "")), fn.get("arguments") or {})
                 for fn in (c.get("function") or {} for c in calls)]
        return self._wrapped(self.separator.join(texts))

    def _written_call(self, name: str, arguments: Any) -> str:
        """One earlier call: its JSON arguments in the call's template."""
        return self.call_begin.replace("{name}", name) + _json_args(arguments) + self.call_end

    def example(self) -> str:
        """A call as the system text shows the format to a model whose chat template cannot list tools, in the
        format's wrapper: `NAME`, and `{ARGUMENTS}` where its JSON arguments go."""
        return self._wrapped(self.call_begin.replace("{name}", "NAME") + "{ARGUMENTS}" + self.call_end)

    def _wrapped(self, calls: str) -> str:
        return f"{self.wrapper[0]}{calls}{self.wrapper[1]}" if self.wrapper else calls

    def streaming(self, max_calls: int | None = None) -> "StreamingToolParser":
        return StreamingToolParser(self, max_calls)

    # ---- constraints ---------------------------------------------------------------------
    def _tag(self, tool: Mapping[str, Any]) -> dict[str, Any]:
        name = tool_name(tool)
        return {"type": "tag", "begin": self.call_begin.replace("{name}", name),
                "content": {"type": "json_schema", "json_schema": tool_schema(tool)},
                "end": self.call_end}

    def structural_tag(self, tools: list[Mapping[str, Any]], mode: ToolMode = "auto",
                       parallel: bool = True) -> dict[str, Any] | None:
        """The constraint for `tools`: auto = free text until the trigger, then well-formed calls;
        required / named = only calls (at least one; named: exactly one of that tool). Not `parallel`: one
        call at most where the format allows saying so (auto without a wrapper: the parser keeps the first)."""
        tags = [self._tag(t) for t in tools]
        calls = {"type": "tags_with_separator", "tags": tags, "separator": self.separator,
                 "at_least_one": True, "stop_after_first": mode == "named" or not parallel}
        if mode == "auto":
            if self.wrapper is None:
                fmt: dict[str, Any] = {"type": "triggered_tags", "triggers": [self.trigger], "tags": tags}
            else:
                outer = {"type": "tag", "begin": self.wrapper[0], "content": calls, "end": self.wrapper[1]}
                fmt = {"type": "triggered_tags", "triggers": [self.wrapper[0]], "tags": [outer],
                       "stop_after_first": True}
        elif self.wrapper is None:
            fmt = calls
        else:
            fmt = {"type": "tag", "begin": self.wrapper[0], "content": calls, "end": self.wrapper[1]}
            if self.section_lead:  # what the model was trained to write before the section (bounded)
                lead = {"type": "regex", "pattern": f"\\n{{0,{len(self.section_lead)}}}"}
                fmt = {"type": "sequence", "elements": [lead, fmt]}
        return {"type": "structural_tag", "format": fmt}


def _json_objects(text: str) -> list[Any]:
    """Every top-level JSON value found in `text`, in order (skipping what is not JSON)."""
    return [value for value, _ in _json_spans(text)]


def _json_spans(text: str) -> list[tuple[Any, int]]:
    """(value, where it ends) of every top-level JSON object or array in `text`, in order."""
    out, i = [], 0
    while i < len(text):
        j = min((k for k in (text.find("{", i), text.find("[", i)) if k >= 0), default=-1)
        if j < 0:
            break
        try:
            value, end = _DECODER.raw_decode(text, j)
        except (json.JSONDecodeError, RecursionError):  # nested past Python's stack: not a call we can read
            i = j + 1
            continue
        out.append((value, end))
        i = end
    return out


def _calls_from_dicts(values: list[Any], args_keys: tuple[str, ...]) -> list[ToolCall]:
    calls = []
    for value in values:
        items = value if isinstance(value, list) else [value]
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                continue
            args = next((item[k] for k in args_keys if k in item), {})
            calls.append(ToolCall(item["name"], _json_args(args)))
    return calls


class HermesParser(ToolCallParser):
    """Qwen2.5 / Hermes: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`."""

    name = "hermes"
    call_begin = '<tool_call>\n{"name": "{name}", "arguments": '
    call_end = "}\n</tool_call>"
    separator = "\n"
    trigger = "<tool_call>"
    _close = "</tool_call>"

    @cached_property
    def _begin(self) -> re.Pattern[str]:
        # every call opens its own tag: a `{"name": ...}` elsewhere (an example after the calls) is no call, as
        # the whole parse reads only the tags' JSON (audit 5: a stream sent such an example as a call)
        return re.compile(r'<tool_call>\s*\{"name": "(?P<name>[\w.\-]+)", "arguments": (?=\{)')

    def _parse_calls(self, section: str) -> list[ToolCall]:
        """Each `<tool_call>`'s JSON object, read as JSON: a `</tool_call>` inside one of its strings is text
        (cut at the first end tag, a call whose argument spelled it was lost while a stream sent it)."""
        values, at, decoder = [], 0, json.JSONDecoder()
        while (begin := section.find(self.trigger, at)) >= 0:
            body = begin + len(self.trigger)
            start = len(section) - len(section[body:].lstrip())
            try:
                value, end = decoder.raw_decode(section, start)
            except (json.JSONDecodeError, RecursionError):
                # not JSON right there: the first object before the end tag, if any
                stop = section.find(self._close, body)
                end = len(section) if stop < 0 else stop
                values.extend(_json_objects(section[body:end])[:1])
            else:
                values.append(value)
            at = max(end, body)
        return _calls_from_dicts(values, ("arguments", "parameters"))


class Llama3Parser(ToolCallParser):
    """Llama 3.x JSON tool calls: `<|python_tag|>{"name": ..., "parameters": {...}}` or bare JSON."""

    name = "llama3"
    call_begin = '<|python_tag|>{"name": "{name}", "parameters": '
    call_end = "}"
    separator = ""
    trigger = "<|python_tag|>"
    bare_json = True

    _args_keys = ("parameters", "arguments")

    def _section_start(self, text: str) -> int:
        tag = self._tag_outside_json(text)
        lead = len(text) - len(text.lstrip())
        head = text[lead:tag] if tag >= 0 else text[lead:]
        # a bare JSON call: the answer starts with it, before any tag (its arguments may spell the tag)
        if head.startswith("{") and _calls_from_dicts(_json_objects(head), self._args_keys):
            return lead
        return tag

    def _tag_outside_json(self, text: str) -> int:
        """Where the first tag outside JSON values is: one inside a string of a (bare) call's arguments is
        text, also in a value still being written to the end of `text` (a stream's)."""
        pos = 0
        while (tag := text.find(self.trigger, pos)) >= 0:
            brace = text.find("{", pos, tag)
            if brace < 0:
                return tag
            pos = _json_end(text, brace)
        return -1

    def _parse_calls(self, section: str) -> list[ToolCall]:
        return self._parse_section(section)[0]

    def _parse_section(self, section: str) -> tuple[list[ToolCall], str]:
        """The JSON calls (the tags and `;` between them are not JSON: skipped, never replaced, so a tag an
        argument spells stays in it), and the text after the last one, content (SGLang's trailing text)."""
        calls: list[ToolCall] = []
        end = 0
        for value, stop in _json_spans(section):
            found = _calls_from_dicts([value], self._args_keys)
            if found:
                calls, end = calls + found, stop
        if not calls:
            return [], ""
        after = section[end:]
        return calls, after.lstrip()[1:] if after.lstrip().startswith(";") else after


def _json_end(text: str, at: int) -> int:
    """Where the JSON value at `at` ends: len(text) for one still being written to the end of `text`, at + 1
    where no JSON value begins there."""
    try:
        return _DECODER.raw_decode(text, at)[1]
    except (json.JSONDecodeError, RecursionError):
        return len(text) if at + json_prefix_length(text[at:]) == len(text) else at + 1


class DeepSeekV3Parser(ToolCallParser):
    """DeepSeek V3: `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\\n```json\\n{...}\\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>`."""

    name = "deepseekv3"
    call_begin = "<｜tool▁call▁begin｜>function<｜tool▁sep｜>{name}\n```json\n"
    call_end = "\n```<｜tool▁call▁end｜>"
    wrapper = ("<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>")
    separator = ""
    trigger = "<｜tool▁calls▁begin｜>"
    _call = re.compile(r"<｜tool▁call▁begin｜>(?:function)?<｜tool▁sep｜>(.*?)\n```(?:json)?\n(.*?)\n?```"
                       r"(?:<｜tool▁call▁end｜>|$)", re.S)

    def _parse_calls(self, section: str) -> list[ToolCall]:
        calls = []
        for name, body in self._call.findall(section):
            values = _json_objects(body)
            if values and isinstance(values[0], dict):
                calls.append(ToolCall(name.strip(), _json_args(values[0])))
        return calls


class DeepSeekV31Parser(ToolCallParser):
    """DeepSeek-V3.1 / V3.2 chat: `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{...}<｜tool▁call▁end｜>
    <｜tool▁calls▁end｜>` (no `function` type and no ```json fence, unlike V3)."""

    name = "deepseekv31"
    call_begin = "<｜tool▁call▁begin｜>{name}<｜tool▁sep｜>"
    call_end = "<｜tool▁call▁end｜>"
    wrapper = ("<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>")
    separator = ""
    trigger = "<｜tool▁calls▁begin｜>"

    @cached_property
    def _begin(self) -> re.Pattern[str]:
        # whitespace may follow the separator (SGLang's detector reads whatever comes up to the call's end)
        return re.compile(r"<｜tool▁call▁begin｜>\s*(?P<name>[\w.\-]+)\s*<｜tool▁sep｜>\s*(?=\{)")

    def _parse_calls(self, section: str) -> list[ToolCall]:
        return _template_calls(self, section)


class KimiK2Parser(ToolCallParser):
    """Kimi-K2: `<|tool_calls_section_begin|><|tool_call_begin|>functions.NAME:IDX<|tool_call_argument_begin|>{...}
    <|tool_call_end|>...<|tool_calls_section_end|>`, IDX counting the calls of the whole conversation 0, 1, 2, ...
    (the template writes earlier calls back by their ids). Constrained, the count is exact for up to
    `max_indexed_calls` calls in one answer (a grammar cannot count without end); each call's id is
    `functions.NAME:IDX`, as SGLang's."""

    name = "kimi_k2"
    call_begin = "<|tool_call_begin|>functions.{name}:0<|tool_call_argument_begin|>"  # the first call's
    call_end = "<|tool_call_end|>"
    wrapper = ("<|tool_calls_section_begin|>", "<|tool_calls_section_end|>")
    separator = ""
    trigger = "<|tool_calls_section_begin|>"
    max_indexed_calls = 8  # calls of one answer under a constraint (each index has its own tags)
    earlier_calls = 0  # the conversation's calls before this answer: its first call's index

    def for_tools(self, tools: list[Mapping[str, Any]], earlier_calls: int = 0) -> "KimiK2Parser":
        bound = super().for_tools(tools, earlier_calls)
        assert isinstance(bound, KimiK2Parser)
        bound.earlier_calls = earlier_calls
        return bound

    @cached_property
    def _begin(self) -> re.Pattern[str]:
        return re.compile(r"<\|tool_call_begin\|>\s*(?:functions\.)?(?P<name>[\w.\-]+):(?P<index>\d+)\s*"
                          r"<\|tool_call_argument_begin\|>\s*(?=\{)")

    def _parse_calls(self, section: str) -> list[ToolCall]:
        return _template_calls(self, section)

    def call_id(self, name: str, index: int) -> str | None:
        return f"functions.{name}:{self.earlier_calls + index}"

    def structural_tag(self, tools: list[Mapping[str, Any]], mode: ToolMode = "auto",
                       parallel: bool = True) -> dict[str, Any] | None:
        count = 1 if mode == "named" or not parallel else self.max_indexed_calls

        def call(k: int) -> dict[str, Any]:
            index = self.earlier_calls + k
            tags = [{**self._tag(t), "begin": self.call_begin.replace("{name}", tool_name(t)).replace(":0<", f":{index}<")}
                    for t in tools]
            return tags[0] if len(tags) == 1 else {"type": "or", "elements": tags}

        calls = call(count - 1)
        for k in range(count - 2, -1, -1):  # call k, then maybe call k + 1, ...
            calls = {"type": "sequence", "elements": [call(k), {"type": "optional", "content": calls}]}
        section = {"type": "tag", "begin": self.wrapper[0], "content": calls, "end": self.wrapper[1]}
        if mode == "auto":
            section = {"type": "triggered_tags", "triggers": [self.trigger], "tags": [section], "stop_after_first": True}
        return {"type": "structural_tag", "format": section}


def _template_calls(parser: ToolCallParser, section: str) -> list[ToolCall]:
    """The complete calls written in the format's template, their arguments a JSON object."""
    return [ToolCall(name, args) for name, args, complete in parser.partial_calls(section)
            if complete and isinstance(json.loads(args), dict)]


class MistralParser(ToolCallParser):
    """Mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`, or from tokenizer v11 on (Mistral-Small-3.2,
    Magistral, Devstral) the compact `[TOOL_CALLS]NAME[ARGS]{...}`, one such per call. Constrained calls take the
    array spelling (the structural tag's trigger is `[TOOL_CALLS][`); both are read, whole and streamed."""

    name = "mistral"
    call_begin = '{"name": "{name}", "arguments": '
    call_end = "}"
    wrapper = ("[TOOL_CALLS][", "]")
    separator = ", "
    trigger = "[TOOL_CALLS]"
    _compact = re.compile(r"\[TOOL_CALLS\]\s*(?P<name>[\w.\-]+)\s*\[ARGS\]\s*(?=\{)")

    @cached_property
    def _begin(self) -> regex.Pattern[str]:  # type: ignore[override]
        # an array's call, or a compact one (the same group name in both: `regex` allows it)
        return regex.compile(r'\{"name": "(?P<name>[\w.\-]+)", "arguments": (?=\{)|' + self._compact.pattern)

    def _parse_calls(self, section: str) -> list[ToolCall]:
        if self._compact.match(section):
            return _template_calls(self, section)
        return _calls_from_dicts(_json_objects(section[len(self.trigger):]), ("arguments", "parameters"))


class InternLMParser(ToolCallParser):
    """InternLM2 / Intern-S1 (SGLang's interns1): `<|action_start|><|plugin|>\\n{"name": ..., "parameters": {...}}
    <|action_end|>`, one such per call (SGLang's detector spells a space between the two tags, as a decode with
    spaces between special tokens writes them: both are read)."""

    name = "interns1"
    call_begin = '<|action_start|><|plugin|>\n{"name": "{name}", "parameters": '
    call_end = "}<|action_end|>"
    separator = ""
    trigger = "<|action_start|>"
    _plugin = re.compile(r"<\|action_start\|>\s*<\|plugin\|>\s*")

    @cached_property
    def _begin(self) -> re.Pattern[str]:
        return re.compile(self._plugin.pattern + r'\{"name": "(?P<name>[\w.\-]+)", "(?:parameters|arguments)": (?=\{)')

    def _parse_calls(self, section: str) -> list[ToolCall]:
        """The JSON object after each `<|action_start|><|plugin|>` (its keys in any order)."""
        values: list[Any] = []
        for m in self._plugin.finditer(section):
            try:
                values.append(_DECODER.raw_decode(section, m.end())[0])
            except (json.JSONDecodeError, RecursionError):
                continue
        return _calls_from_dicts(values, ("parameters", "arguments"))


class PythonicParser(ToolCallParser):
    """Pythonic: `[get_weather(city="Paris"), get_time()]`, Llama-4 may wrap the list in `<|python_start|>` /
    `<|python_end|>` (its markup, never content). Constrained for tool_choice required / named (a grammar of
    the calls, see pythonic.py); with auto the text stays free (a `[` opens plain lists too) and the calls are
    parsed from it: each list of calls ends at its own closing bracket, and the text around the lists is
    content (SGLang's TestPythonicDetector: `[f(a=1)] and [g(b=2)]` is two calls and ` and `)."""

    name = "pythonic"
    trigger = "["
    argument_markup = ("<|python_start|>", "<|python_end|>")  # Llama-4's, around the list
    _start = re.compile(r"(?:<\|python_start\|>\s*)?\[\s*[A-Za-z_][\w.]*\s*\(")
    _partial = re.compile(r"(?:<\|python_start\|>\s*)?(?:\[\s*(?:[A-Za-z_][\w.]*\s*)?)?$")
    _list_end = re.compile(r"\s*<\|python_end\|>")

    def structural_tag(self, tools: list[Mapping[str, Any]], mode: ToolMode = "auto",
                       parallel: bool = True) -> dict[str, Any] | None:
        if mode == "auto":
            return None
        grammar = pythonic_calls_grammar([(tool_name(t), tool_schema(t)) for t in tools],
                                         at_most_one=mode == "named" or not parallel)
        return {"type": "structural_tag", "format": {"type": "grammar", "grammar": grammar}}

    def written(self, calls: list[Mapping[str, Any]]) -> str:
        """Earlier calls as one list of Python calls, their arguments keywords of Python literals; a call whose
        arguments cannot be keywords (not an object, a key no identifier) as its JSON, as before."""
        texts = []
        for fn in (c.get("function") or {} for c in calls):
            name, args = str(fn.get("name", "")), arguments_object(fn.get("arguments") or {})
            if args is None or not all(isinstance(k, str) and k.isidentifier() for k in args):
                return super().written(calls)
            texts.append(f"{name}({', '.join(f'{key}={value!r}' for key, value in args.items())})")
        return f"[{', '.join(texts)}]"

    def example(self) -> str:
        return "[NAME(KEY=VALUE, ...)]"

    def _maybe_start(self, text: str) -> int:
        """A list's opening (or Llama-4's `<|python_start|>` before it) still being written is held back."""
        m = self._partial.search(text)
        held = m.start() if m and m.end() > m.start() else len(text)
        return min(held, len(text) - partial_suffix(text, self.argument_markup[0]))

    def _section_start(self, text: str) -> int:
        m = self._start.search(text)
        return m.start() if m else -1

    def _parse_calls(self, section: str) -> list[ToolCall]:
        return self._parse_section(section)[0]

    def _parse_section(self, section: str) -> tuple[list[ToolCall], str]:
        """The lists of calls in order, each up to its own `]` (a `]` of the text after it is text), and the
        text around them; a list that is not calls ends the reading, it and what follows are text."""
        calls: list[ToolCall] = []
        content, pos = "", 0
        while (m := self._start.search(section, pos)) is not None:
            listed = _call_list(section, section.index("[", m.start()))
            if listed is None:
                break
            content += section[pos:m.start()]
            calls += listed[0]
            end = self._list_end.match(section, listed[1])
            pos = end.end() if end else listed[1]
        return calls, content + section[pos:]


def _call_list(text: str, at: int) -> tuple[list[ToolCall], int] | None:
    """The calls of the Python list opening at `at` and where it ends, None where it is not a list of calls
    with literal keyword arguments or does not close."""
    end = _list_end(text, at)
    if end is None:
        return None
    try:
        tree = ast.parse(text[at:end], mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    calls = _literal_calls(tree.body)
    return (calls, end) if calls is not None else None


def _list_end(text: str, at: int) -> int | None:
    """Where the bracket opening at `at` closes, in one pass over Python's tokens (a `]` in a string is text;
    parsing at every `]` until one parsed cost 20 s for one 54 KB call), None where it does not close."""
    # a lone CR or a NUL: Python 3.12's tokenizer glues the one to the next operator and refuses a line with
    # the other; spaces of the same length keep every offset
    source = io.StringIO(text[at:].replace("\r", " ").replace("\0", " "))
    starts: list[int] = []  # where each line read so far begins, from `at`
    read = 0

    def readline() -> str:
        nonlocal read
        line = source.readline()
        starts.append(read)
        read += len(line)
        return line

    depth = 0
    try:
        for token in tokenize.generate_tokens(readline):
            if token.type != tokenize.OP or token.string not in "()[]{}":
                continue
            depth += 1 if token.string in "([{" else -1
            if depth == 0:
                row, col = token.end
                return at + starts[row - 1] + col
    except (tokenize.TokenError, SyntaxError):  # unclosed, or not Python
        return None
    return None


def _literal_calls(node: ast.expr) -> list[ToolCall] | None:
    """`[f(a=1), g()]` as calls; None for anything else."""
    if not isinstance(node, ast.List) or not node.elts:
        return None
    calls = []
    for call in node.elts:
        if not isinstance(call, ast.Call) or call.args:
            return None
        try:  # a literal JSON has no spelling for (a set, bytes) is no argument
            args = json.dumps({kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg},
                              ensure_ascii=False)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return None
        calls.append(ToolCall(ast.unparse(call.func), args))
    return calls


from thinkform.server.harmony_tools import GptOssParser  # noqa: E402  (they build on the classes above)
from thinkform.server.xml_tools import (  # noqa: E402
    DeepSeekV32Parser, DeepSeekV4Parser, Glm45Parser, Glm47Parser, MiMoParser, MiniMaxM2Parser, Qwen3CoderParser)

_PARSERS: Mapping[str, Callable[[], ToolCallParser]] = MappingProxyType({
    "qwen25": HermesParser, "qwen": HermesParser, "hermes": HermesParser,
    "llama3": Llama3Parser, "deepseekv3": DeepSeekV3Parser, "mistral": MistralParser,
    "pythonic": PythonicParser, "deepseekv31": DeepSeekV31Parser, "kimi_k2": KimiK2Parser,
    "qwen3_coder": Qwen3CoderParser, "glm45": Glm45Parser, "gpt-oss": GptOssParser,
    "glm47": Glm47Parser, "deepseekv32": DeepSeekV32Parser, "deepseekv4": DeepSeekV4Parser,
    "minimax-m2": MiniMaxM2Parser, "mimo": MiMoParser, "interns1": InternLMParser,
    # SGLang's other names of the same formats (its ToolCallParserEnum: glm -> Glm4MoeDetector, step3p5 ->
    # Qwen3CoderDetector)
    "glm": Glm45Parser, "step3p5": Qwen3CoderParser,
})


def tool_call_parser_names() -> list[str]:
    return sorted(_PARSERS)


def get_tool_call_parser(name: str) -> ToolCallParser:
    try:
        return _PARSERS[name]()
    except KeyError:
        raise ValueError(f"tool_call_parser: unknown tool-call parser {name!r}; choose one of "
                         f"{', '.join(tool_call_parser_names())}") from None


def guess_tool_call_parser(chat_template: str | None) -> ToolCallParser:
    """The format a chat template teaches its model (hermes when nothing tells)."""
    text = chat_template or ""
    if "｜DSML｜" in text:  # DeepSeek's DSML calls: V4 in a `tool_calls` section, V3.2 in `function_calls`
        return get_tool_call_parser("deepseekv4" if "｜DSML｜tool_calls" in text else "deepseekv32")
    if "<｜tool▁calls▁begin｜>" in text:  # V3 writes `function<｜tool▁sep｜>NAME` and a ```json fence, V3.1 neither
        return get_tool_call_parser("deepseekv3" if "```json" in text else "deepseekv31")
    if "to=functions." in text and "<|channel|>" in text:  # harmony: gpt-oss
        return get_tool_call_parser("gpt-oss")
    # GLM-4.7 writes `</arg_key><arg_value>` back to back (4.5 a newline between); MiMo `<tool_call><function=`
    for needle, name in (("<|tool_calls_section_begin|>", "kimi_k2"), ("[TOOL_CALLS]", "mistral"),
                         ("<|python_tag|>", "llama3"), ("<minimax:tool_call>", "minimax-m2"),
                         ("<|action_start|>", "interns1"), ("</arg_key><arg_value>", "glm47"), ("<arg_key>", "glm45"),
                         ("<tool_call><function=", "mimo"), ("<function=", "qwen3_coder"),
                         ("<parameter=", "qwen3_coder"), ("<tool_call>", "hermes")):
        if needle in text:
            return get_tool_call_parser(name)
    return get_tool_call_parser("hermes")


class StreamingToolParser:
    """Streams normal text as it comes; from the trigger on, holds the text back and streams the calls as
    OpenAI does: a call's first delta carries its id and name, the next ones pieces of its arguments. Calls
    not written in the format's template (or parse-only formats) are sent whole at the end."""

    def __init__(self, parser: ToolCallParser, max_calls: int | None = None) -> None:
        self.parser = parser
        self.max_calls = max_calls  # parallel_tool_calls false: 1; later calls are dropped
        self._held = ""
        self._in_calls = False
        self._sent_text = False  # normal text already sent (a bare JSON call must be the whole answer)
        self._before_trigger = ""  # whitespace before the trigger, held: given back if no call comes of it
        self._calls: list[tuple[ToolCall, int]] = []  # streamed calls and how much of their arguments went
        self._scans: dict[int, JsonPrefixScan] = {}  # unfinished arguments' JSON scans, by where they begin

    def feed(self, delta: str) -> tuple[str, list[dict[str, Any]]]:
        """Returns the normal text that is safe to send now, and the tool-call deltas."""
        self._held += delta
        if self._in_calls:
            return "", self._call_deltas()
        start = self.parser._section_start(self._held)
        if start < 0 and self.parser.bare_json and not self._sent_text and self._held.lstrip().startswith("{"):
            start = len(self._held) - len(self._held.lstrip())  # may become a bare JSON call
        if start >= 0:
            self._in_calls = True
            out, self._held = self._held[:start], self._held[start:]
            kept = out.rstrip()  # as the whole parse gives the text before a call
            self._before_trigger = out[len(kept):]
            return kept, self._call_deltas()
        out = self._held[: self.parser._maybe_start(self._held)]
        # trailing whitespace waits for what follows it: dropped before a call (as the whole parse drops it),
        # sent with the next text or at the end
        out = out[: len(out.rstrip())]
        self._held = self._held[len(out):]
        self._sent_text = self._sent_text or bool(out.strip())
        return out, []

    def finish(self, cut: bool = False) -> tuple[str, list[dict[str, Any]], bool]:
        """The text still held back that is not a call, the last tool-call deltas, and whether the answer
        made any call (`cut`: the answer ran out of tokens, a call being written counts, as streamed)."""
        deltas = self._call_deltas(final=True) if self._in_calls else []
        read = self.parser.read(self._held, with_cut_call=cut)
        # the trigger began no call: its text is text, as the whole parse gives it
        normal, calls = read if read is not None else (self._before_trigger + self._held, [])
        self._held = self._before_trigger = ""
        return normal, deltas + self._settle(calls), bool(calls)

    def _settle(self, calls: list[ToolCall]) -> list[dict[str, Any]]:
        """The deltas that make the streamed calls the whole parse's `calls` (it has the last word): each
        streamed call is one of them once; one streamed as far as its arguments went gets the rest of them
        where the whole parse's are longer (SGLang's test_invalid_then_valid_json: `{` then `}`), and calls
        it found that were not streamed go whole. A call is never sent twice: a streamed one whose arguments
        differ from the whole parse's keeps what it sent (it cannot be taken back)."""
        unmatched = list(range(len(self._calls)))
        rest = []
        for call in calls:  # first the calls streamed exactly, wherever they are
            key = (call.name, _normal_json(call.arguments))
            k = next((k for k in unmatched if self._key(k) == key), None)
            if k is None:
                rest.append(call)
            else:
                unmatched.remove(k)
        deltas: list[dict[str, Any]] = []
        for call in rest:  # then a streamed call of the same function, or a new one
            k = next((k for k in unmatched if self._calls[k][0].name == call.name), None)
            if k is not None:
                unmatched.remove(k)
                deltas += self._extend(k, call.arguments)
            elif self.max_calls is None or len(self._calls) < self.max_calls:
                call.id = self.parser.call_id(call.name, len(self._calls)) or call.id
                deltas.append(call.to_openai(len(self._calls)))
                self._calls.append((call, len(call.arguments)))
        return deltas

    def _key(self, k: int) -> tuple[str, str | None]:
        call = self._calls[k][0]
        return call.name, _normal_json(call.arguments)

    def _extend(self, k: int, arguments: str) -> list[dict[str, Any]]:
        """Streamed call `k`'s arguments grown to `arguments` where what it sent begins them."""
        call, sent = self._calls[k]
        if len(arguments) <= sent or not arguments.startswith(call.arguments):
            return []
        call.arguments = arguments
        self._calls[k] = (call, len(arguments))
        return [{"index": k, "function": {"arguments": arguments[sent:]}}]

    def _call_deltas(self, final: bool = False) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        calls = [c for c in self.parser.partial_calls(self._held, final, self._scans) if self.parser.declares(c[0])]
        for k, (name, args, _) in enumerate(calls[: self.max_calls]):
            if k == len(self._calls):  # its header first, with empty arguments, as OpenAI streams a call
                call = ToolCall(name, "")
                call.id = self.parser.call_id(name, k) or call.id
                self._calls.append((call, 0))
                out.append({**call.to_openai(k), "function": {"name": name, "arguments": ""}})
            call, sent = self._calls[k]
            if len(args) > sent:
                out.append({"index": k, "function": {"arguments": args[sent:]}})
                call.arguments = args
                self._calls[k] = (call, len(args))
        return out


def _normal_json(text: str) -> str | None:
    try:
        return json.dumps(json.loads(text), sort_keys=True)
    except (json.JSONDecodeError, RecursionError):
        return None

