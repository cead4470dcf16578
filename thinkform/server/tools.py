"""Tool-call formats: tools -> structural tag (constrained calls); model text -> tool calls.

Each format is a small data description (the text around one call, the optional wrapper around all
calls, the separator) plus a parser; the structural tags use xgrammar's `format` spelling. The formats whose
arguments are XML parameters (qwen3_coder, glm45) live in xml_tools.py and read them by the request's tool
schemas (`for_tools`).
"""
from __future__ import annotations

import ast
import copy
from abc import ABC, abstractmethod
import json
import re
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any, Callable, Literal, Mapping

from thinkform.reasoning import partial_suffix
from thinkform.server.json_prefix import JsonPrefixScan
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


def tool_schema(tool: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON schema of a tool's arguments (OpenAI `function.parameters`, default: any object)."""
    params = tool.get("function", tool).get("parameters")
    return params if isinstance(params, dict) and params else {"type": "object"}


def tool_name(tool: Mapping[str, Any]) -> str:
    return str(tool.get("function", tool).get("name", ""))


_DECODER = json.JSONDecoder()


def _json_args(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


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
        start = self._section_start(text)
        if start < 0:
            return text, []
        calls = self._parse_calls(text[start:])
        if with_cut_call:  # the call being written when the tokens ran out, its arguments done or not (its end
            # tag missing, the format's parse does not see it: streaming had sent it, audit 29)
            calls = calls + [ToolCall(name, args) for name, args, _ in self.partial_calls(text[start:])[len(calls):]][:1]
        if not calls:
            return text, []
        for k, call in enumerate(calls):
            call.id = self.call_id(call.name, k) or call.id
        return text[:start].rstrip(), self._raw_arguments(text[start:], calls)

    def for_tools(self, tools: list[Mapping[str, Any]], earlier_calls: int = 0) -> "ToolCallParser":
        """The parser for one request's tools and conversation (`earlier_calls`: the calls its assistant
        messages made): formats whose arguments are not JSON (XML parameters) read them by the tools'
        schemas, formats that number calls across the conversation go on from the earlier ones; the others
        need nothing and are shared."""
        return self

    def call_id(self, name: str, index: int) -> str | None:
        """The id of the request's `index`-th call (None: a random `call_...` id)."""
        return None

    def _raw_arguments(self, section: str, calls: list[ToolCall]) -> list[ToolCall]:
        """Calls written in the format's own template keep their arguments as the model wrote them (what
        streaming sends); re-serialised JSON stays for the others."""
        raw = self.partial_calls(section)
        for call, (name, args, complete) in zip(calls, raw):
            if complete and name == call.name and json.loads(args) == json.loads(call.arguments):
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

    def written(self, calls: list[Mapping[str, Any]]) -> str:
        """Earlier calls (OpenAI's `tool_calls`) as the model writes them in this format: for chat templates
        that cannot render calls, which left the model no trace of what it had called."""
        texts = [self.call_begin.replace("{name}", str(fn.get("name", ""))) + _json_args(fn.get("arguments") or {})
                 + self.call_end for fn in (c.get("function") or {} for c in calls)]
        text = self.separator.join(texts)
        return f"{self.wrapper[0]}{text}{self.wrapper[1]}" if self.wrapper else text

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
        return {"type": "structural_tag", "format": fmt}


def _json_objects(text: str) -> list[Any]:
    """Every top-level JSON value found in `text`, in order (skipping what is not JSON)."""
    decoder = json.JSONDecoder()
    out, i = [], 0
    while i < len(text):
        j = min((k for k in (text.find("{", i), text.find("[", i)) if k >= 0), default=-1)
        if j < 0:
            break
        try:
            value, end = decoder.raw_decode(text, j)
        except (json.JSONDecodeError, RecursionError):  # nested past Python's stack: not a call we can read
            i = j + 1
            continue
        out.append(value)
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

    def _section_start(self, text: str) -> int:
        at = text.find(self.trigger)
        if at >= 0:
            return at
        stripped = text.lstrip()  # a bare JSON call must be the whole answer
        if stripped.startswith("{") and _calls_from_dicts(_json_objects(stripped), ("parameters", "arguments")):
            return len(text) - len(stripped)
        return -1

    def _parse_calls(self, section: str) -> list[ToolCall]:
        body = section.replace(self.trigger, " ")
        return _calls_from_dicts(_json_objects(body), ("parameters", "arguments"))


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
        bound = copy.copy(self)
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
    """Mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`."""

    name = "mistral"
    call_begin = '{"name": "{name}", "arguments": '
    call_end = "}"
    wrapper = ("[TOOL_CALLS][", "]")
    separator = ", "
    trigger = "[TOOL_CALLS]"

    def _parse_calls(self, section: str) -> list[ToolCall]:
        return _calls_from_dicts(_json_objects(section[len(self.trigger):]), ("arguments", "parameters"))


class PythonicParser(ToolCallParser):
    """Pythonic: `[get_weather(city="Paris"), get_time()]`. Constrained for tool_choice required / named
    (a grammar of the calls, see pythonic.py); with auto the text stays free (a `[` opens plain lists too)
    and the calls are parsed from it."""

    name = "pythonic"
    trigger = "["
    _start = re.compile(r"\[\s*[A-Za-z_][\w.]*\s*\(")
    _partial = re.compile(r"\[\s*(?:[A-Za-z_][\w.]*\s*)?$")

    def structural_tag(self, tools: list[Mapping[str, Any]], mode: ToolMode = "auto",
                       parallel: bool = True) -> dict[str, Any] | None:
        if mode == "auto":
            return None
        grammar = pythonic_calls_grammar([(tool_name(t), tool_schema(t)) for t in tools],
                                         at_most_one=mode == "named" or not parallel)
        return {"type": "structural_tag", "format": {"type": "grammar", "grammar": grammar}}

    def _maybe_start(self, text: str) -> int:
        m = self._partial.search(text)
        return m.start() if m else len(text)

    def _section_start(self, text: str) -> int:
        m = self._start.search(text)
        return m.start() if m else -1

    def _parse_calls(self, section: str) -> list[ToolCall]:
        end = section.rfind("]")
        try:
            tree = ast.parse(section[: end + 1].strip(), mode="eval")
        except SyntaxError:
            return []
        if not isinstance(tree.body, ast.List):
            return []
        calls = []
        for node in tree.body.elts:
            if not isinstance(node, ast.Call) or node.args:
                return []
            try:
                args = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg}
            except ValueError:
                return []
            calls.append(ToolCall(ast.unparse(node.func), json.dumps(args, ensure_ascii=False)))
        return calls


from thinkform.server.harmony_tools import GptOssParser  # noqa: E402  (they build on the classes above)
from thinkform.server.xml_tools import Glm45Parser, Qwen3CoderParser  # noqa: E402

_PARSERS: Mapping[str, Callable[[], ToolCallParser]] = MappingProxyType({
    "qwen25": HermesParser, "qwen": HermesParser, "hermes": HermesParser,
    "llama3": Llama3Parser, "deepseekv3": DeepSeekV3Parser, "mistral": MistralParser,
    "pythonic": PythonicParser, "deepseekv31": DeepSeekV31Parser, "kimi_k2": KimiK2Parser,
    "qwen3_coder": Qwen3CoderParser, "glm45": Glm45Parser, "gpt-oss": GptOssParser,
})


def tool_call_parser_names() -> list[str]:
    return sorted(_PARSERS)


def get_tool_call_parser(name: str) -> ToolCallParser:
    try:
        return _PARSERS[name]()
    except KeyError:
        raise ValueError(f"unknown tool-call parser {name!r}; choose one of {', '.join(tool_call_parser_names())}") from None


def guess_tool_call_parser(chat_template: str | None) -> ToolCallParser:
    """The format a chat template teaches its model (hermes when nothing tells)."""
    text = chat_template or ""
    if "<｜tool▁calls▁begin｜>" in text:  # V3 writes `function<｜tool▁sep｜>NAME` and a ```json fence, V3.1 neither
        return get_tool_call_parser("deepseekv3" if "```json" in text else "deepseekv31")
    if "to=functions." in text and "<|channel|>" in text:  # harmony: gpt-oss
        return get_tool_call_parser("gpt-oss")
    for needle, name in (("<|tool_calls_section_begin|>", "kimi_k2"), ("[TOOL_CALLS]", "mistral"),
                         ("<|python_tag|>", "llama3"), ("<arg_key>", "glm45"), ("<function=", "qwen3_coder"),
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
        normal, calls = self.parser.parse(self._held, with_cut_call=cut)
        self._held = ""
        if not calls:  # the trigger began no call: its text is text, as the whole parse gives it
            normal = self._before_trigger + normal
        self._before_trigger = ""
        streamed = [(c.name, _normal_json(c.arguments)) for c, _ in self._calls]
        for call in calls:  # the whole parse has the last word: calls it found that were not streamed go whole
            key = (call.name, _normal_json(call.arguments))
            if key in streamed:
                streamed.remove(key)
            elif self.max_calls is None or len(self._calls) < self.max_calls:
                call.id = self.parser.call_id(call.name, len(self._calls)) or call.id
                deltas.append(call.to_openai(len(self._calls)))
                self._calls.append((call, len(call.arguments)))
        return normal, deltas, bool(calls)

    def _call_deltas(self, final: bool = False) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        calls = self.parser.partial_calls(self._held, final, self._scans)
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

