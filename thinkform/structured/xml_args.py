"""Tool-call arguments written as XML (xgrammar's structural-tag `json_schema` styles) read back as JSON, by the
schema's types, as SGLang's qwen3_coder, glm45 / glm47, minimax-m2 and deepseekv32 detectors do.

- qwen_xml (Qwen3-Coder, MiMo): `<parameter=city>\\nParis\\n</parameter>\\n<parameter=days>\\n3\\n</parameter>`
- glm_xml (GLM-4.5/4.6/4.7): `<arg_key>city</arg_key>\\n<arg_value>Paris</arg_value>\\n<arg_key>days</arg_key>...`
- minimax_xml (MiniMax-M2): `<parameter name="city">Paris</parameter>\\n<parameter name="days">3</parameter>`
- deepseek_xml (DeepSeek-V3.2 DSML): `<｜DSML｜parameter name="city" string="true">Paris</｜DSML｜parameter>`; its
  `string` attribute says how the value is written (raw text, or JSON), so it is read by that, not the schema

The grammar (xgrammar) writes a top-level string raw (no quotes, anything but the value's closing tag) and
every other value as JSON with whitespace around it, so a value is read as:

- a property whose schema admits strings only (no enum / const): the raw text; Qwen's one newline after the
  opening and before the closing tag is dropped (its chat template writes them), as SGLang does; a string
  with a length, pattern or format without the whitespace around it (xgrammar writes that one apart);
- otherwise its stripped text as JSON where that parses to a type the schema admits (`42` for an integer),
  else the raw text as a string where the schema admits strings (an enum's `celsius`), else SGLang's
  fallbacks (a Python literal, then the text as a string);
- a property the schema does not describe (or no schema known): JSON where it parses, else the raw text.

A value stops at its closing tag only (the grammar allows `<parameter=` or `</function>` inside a string),
so whatever the grammar allowed reads back as the arguments it meant.
"""
from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import Any, Mapping

from thinkform.reasoning import partial_suffix
from thinkform.structured.spec import xml_tags

XML_ONLY_XGRAMMAR = (" (tool-call arguments written as XML, a json_schema style such as 'qwen_xml' / 'glm_xml', as the "
                     "qwen3_coder, glm45, glm47, minimax-m2 and deepseekv32 tool-call parsers ask: only xgrammar "
                     "compiles them)")
_WS = re.compile(r"[ \t\r\n]*")
_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object",
               type(None): "null"}


@dataclass(frozen=True)
class _Style:
    key_open: str  # before the key
    key_close: str  # after the key
    value_open: str  # after key_close and whitespace ("" where the key's tag holds the value)
    value_close: str
    trim_newline: bool  # drop one newline after the value's opening and before its closing tag
    gap: re.Pattern[str] = _WS  # what may stand between the tags
    null_any_type: bool = False  # `null` is None whatever the property's type (Qwen3-Coder's, SGLang and vLLM)
    # (raw-text opening, JSON opening) after the key where the value's own attribute says how it is written
    # (DeepSeek-V3.2's ` string="true">` / ` string="false">`); None: the schema tells
    string_flags: tuple[str, str] | None = None


STYLES: Mapping[str, _Style] = {
    "qwen_xml": _Style("<parameter=", ">", "", "</parameter>", True, null_any_type=True),
    # GLM-4.6 may write a newline between tags as the two characters `\n` (SGLang's detector skips them too)
    "glm_xml": _Style("<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>", False,
                      gap=re.compile(r"(?:[ \t\r\n]|\\n)*")),
    # MiniMax-M2: SGLang drops the newlines around a value and reads `null` as None for any type
    "minimax_xml": _Style('<parameter name="', '">', "", "</parameter>", True, null_any_type=True),
    "deepseek_xml": _Style('<｜DSML｜parameter name="', '"', "", "</｜DSML｜parameter>", False,
                           string_flags=('string="true">', 'string="false">')),
}
XML_STYLES = frozenset(STYLES)


def xml_value_closers(tag: dict[str, Any]) -> tuple[bytes, ...]:
    """The closing tags of the XML argument values in a structural tag (the ending search's way out of a raw
    string value, see GrammarMatcher.ending_hints); () where it has none."""
    styles = {style for _, _, _, style in xml_tags(tag) if style in STYLES}
    return tuple(sorted({STYLES[style].value_close.encode() for style in styles}))


@dataclass
class XmlParam:
    key: str
    raw: str  # the value's text so far (complete: up to its closing tag)
    complete: bool
    is_string: bool | None = None  # the value's own attribute: raw text (True) or JSON (False); None: not said


def read_params(text: str, pos: int, style: str, final: bool = True) -> tuple[list[XmlParam], int, bool]:
    """The parameters written from `pos` on, as far as `text` goes: (params, where reading stopped, whether
    it stopped at something that is not a parameter, i.e. the parameters are over). The last param may be
    incomplete (cut text); reading stops before the whitespace that follows the last complete one. `final`:
    no more text will come (a whole or cut answer, not a stream still growing)."""
    st = STYLES[style]
    params: list[XmlParam] = []
    while True:
        at = st.gap.match(text, pos).end()
        rest = text[at:]
        if not rest.startswith(st.key_open):
            # the parameters are over unless the text ends inside whitespace or a key's opening tag
            over = bool(rest) and not st.key_open.startswith(rest)
            return params, pos, over
        key_at = at + len(st.key_open)
        key_end = text.find(st.key_close, key_at)
        if key_end < 0:
            return params, pos, False  # the key is still being written
        key = text[key_at:key_end]
        value_at = key_end + len(st.key_close)
        is_string = None
        for k, opening in enumerate(_value_openings(st)):
            v = st.gap.match(text, value_at).end()
            if text.startswith(opening, v):
                value_at, is_string = v + len(opening), k == 0 if st.string_flags else None
                break
        else:
            if st.value_open or st.string_flags:
                v = st.gap.match(text, value_at).end()
                if any(o.startswith(text[v:]) for o in _value_openings(st)):  # cut before the value: nothing to tell
                    return params, pos, False
                return params, pos, True  # malformed: not a parameter
        close, decided = _value_end(text, value_at, st, final)
        if close < 0 or not decided:  # still being written (or its closing tag's meaning not yet told)
            so_far = text[value_at:close] if close >= 0 else text[value_at:]
            params.append(XmlParam(key, so_far[: len(so_far) - partial_suffix(so_far, st.value_close)], False,
                                   is_string))
            return params, len(text), False
        params.append(XmlParam(key, text[value_at:close], True, is_string))
        pos = close + len(st.value_close)


def _value_openings(st: _Style) -> tuple[str, ...]:
    """What may open a value after its key (and whitespace): the string flags' openings, the value's tag, or
    nothing (the key's tag holds the value)."""
    if st.string_flags:
        return st.string_flags
    return (st.value_open,) if st.value_open else ()


def _value_end(text: str, start: int, st: Any, final: bool) -> tuple[int, bool]:
    """(where the value from `start` ends, whether that is told yet): at the first of its closing tags that
    the next key or another closing tag (the call's end) follows, past whitespace. A bounded string
    (maxLength, pattern) may hold its own closing tag under xgrammar's XML styles, and the grammar reads on
    past it: so does this (audit 29: `<parameter=q></parameter></parameter>` was read as q "" and the next
    parameter dropped). Where the text stops before what follows a closing tag tells, the value ends there,
    told only where the text is `final` (a stream holds it back); -1 where no closing tag ends it (yet)."""
    close = text.find(st.value_close, start)
    while close >= 0:
        rest = text[st.gap.match(text, close + len(st.value_close)).end():]
        if not rest or st.key_open.startswith(rest) or st.value_close.startswith(rest):
            return close, final
        if rest.startswith(st.key_open) or rest.startswith("</") and not rest.startswith(st.value_close):
            return close, True
        close = text.find(st.value_close, close + 1)
    return -1, False


def property_schema(schema: Any, key: str) -> Any:
    """The schema of property `key` of an object schema (None: not described)."""
    if not isinstance(schema, Mapping):
        return None
    props = schema.get("properties")
    if isinstance(props, Mapping) and key in props:
        return props[key]
    for pattern, sub in (schema.get("patternProperties") or {}).items():
        try:
            if re.search(pattern, key):
                return sub
        except re.error:
            continue
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, Mapping) and extra else None


def schema_types(schema: Any) -> set[str] | None:
    """The JSON types `schema` admits where it says so (type, enum / const values, anyOf / oneOf branches);
    None: any type, or not said."""
    if not isinstance(schema, Mapping):
        return None
    if "const" in schema or isinstance(schema.get("enum"), list):
        values = [schema["const"]] if "const" in schema else schema["enum"]
        return {_JSON_TYPES.get(type(v), "?") for v in values}
    kind = schema.get("type")
    if isinstance(kind, str):
        return {kind} | ({"integer"} if kind == "number" else set())
    if isinstance(kind, list) and all(isinstance(k, str) for k in kind):
        return set(kind) | ({"integer"} if "number" in kind else set())
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            out: set[str] = set()
            for branch in schema[key]:
                sub = schema_types(branch)
                if sub is None:
                    return None
                out |= sub
            return out
    return None


_STRING_RULES = ("minLength", "maxLength", "pattern", "format")


def streams_raw(schema: Any) -> bool:
    """Whether a value of `schema` is a plain raw string, final as soon as it is written (so it can be
    streamed while it is written). Not a string with a length, pattern or format: xgrammar lets whitespace
    surround those, outside the value."""
    return (isinstance(schema, Mapping) and schema_types(schema) == {"string"}
            and not any(k in schema for k in ("enum", "const", *_STRING_RULES)))


def raw_string(raw: str, style: str) -> str:
    """A raw string value as the argument: Qwen's newline after the opening and before the closing tag
    dropped (its chat template writes them)."""
    if STYLES[style].trim_newline:
        raw = raw[1:] if raw.startswith("\n") else raw
        raw = raw[:-1] if raw.endswith("\n") else raw
    return raw


def xml_value(raw: str, schema: Any, style: str, is_string: bool | None = None) -> Any:
    """The JSON value of a complete parameter value `raw` under its property `schema` (None: unknown);
    `is_string`: the value's own attribute says it is raw text (True) or JSON (False)."""
    if is_string is not None:
        return _flagged_value(raw, is_string)
    if STYLES[style].null_any_type and raw_string(raw, style).lower() == "null":
        return None
    if streams_raw(schema):
        return raw_string(raw, style)
    types = schema_types(schema)
    text = raw.strip()
    value = _json_value(text, escaped=types is not None and "string" not in types)
    # a JSON string is not read as one: the grammar writes strings raw, so its quotes are part of the text
    if value is not _NOT_JSON and not isinstance(value, str) and (types is None or _json_type(value) in types):
        return value
    if types is None or "string" in types:
        if isinstance(schema, Mapping) and (text in (schema.get("enum") or ()) or schema.get("const") == text
                                            or any(k in schema for k in _STRING_RULES)):
            return text  # an enum's value, or a string with a length or pattern, without the whitespace around it
        return raw_string(raw, style)
    lowered = text.lower()  # SGLang's fallbacks for a value that is not JSON
    if lowered in ("true", "false") and "boolean" in types:
        return lowered == "true"
    if lowered in ("none", "null") and "null" in types:
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


_NOT_JSON = object()


def _flagged_value(raw: str, is_string: bool) -> Any:
    """A value whose attribute tells how it is written (DeepSeek-V3.2's `string="true"`): raw text as it
    stands (the grammar writes it right between the tags), or JSON, else its text (SGLang's fallback)."""
    if is_string:
        return raw
    value = _json_value(raw.strip(), escaped=False)
    return raw.strip() if value is _NOT_JSON else value


def _json_value(text: str, escaped: bool) -> Any:
    """`text` read as JSON (_NOT_JSON where it is not). `escaped`: where the schema admits no string, also JSON
    written with its quotes escaped, as inside a JSON string (GLM-4.6's `[{\\"id\\": \\"1\\"}]`: SGLang's
    glm4_moe detector unescapes and parses it)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        if not escaped:
            return _NOT_JSON
    try:
        return json.loads(json.loads(f'"{text}"'))
    except (ValueError, RecursionError):
        return _NOT_JSON


def _json_type(value: Any) -> str:
    kind = _JSON_TYPES.get(type(value), "?")
    return "integer" if kind == "number" and float(value).is_integer() else kind


def arguments_json(pairs: list[tuple[str, Any]]) -> str:
    """The arguments' JSON text, written the way streaming sends it piece by piece."""
    return "{" + ", ".join(_member(k, v) for k, v in pairs) + "}"


def _member(key: str, value: Any) -> str:
    return f"{json.dumps(key, ensure_ascii=False)}: {json.dumps(value, ensure_ascii=False)}"


def arguments_so_far(params: list[XmlParam], schema: Any, style: str, closed: bool) -> str:
    """The arguments' JSON text as far as `params` go: complete parameters, then a raw string still being
    written (as far as it is final), then `}` once `closed`. Each text is a prefix of the next one's."""
    members = [_member(p.key, xml_value(p.raw, property_schema(schema, p.key), style, p.is_string))
               for p in params if p.complete]
    text = "{" + ", ".join(members)
    if closed:
        return text + "}"
    last = params[-1] if params else None
    if last is not None and last.is_string is not None:  # the value's attribute tells: raw text streams as is
        if last.is_string and not last.complete:
            text += (", " if members else "") + json.dumps(last.key, ensure_ascii=False) + ": " \
                + json.dumps(last.raw, ensure_ascii=False)[:-1]
        return text
    value = raw_string(last.raw, style) if last is not None else ""
    # a value that may still be `null` (Qwen3-Coder: None for any type) is held back until it is told
    maybe_null = STYLES[style].null_any_type and "null".startswith(value.lower())
    if last is not None and not last.complete and streams_raw(property_schema(schema, last.key)) and not maybe_null:
        # a trailing newline may be the one Qwen's closing drops: held back until the value is complete
        text += (", " if members else "") + json.dumps(last.key, ensure_ascii=False) + ": " \
            + json.dumps(value, ensure_ascii=False)[:-1]
    return text


def read_arguments(text: str, pos: int, style: str, schema: Any) -> tuple[dict[str, Any], int] | None:
    """The arguments object written from `pos` on and where it ends (None: cut before its end)."""
    params, end, over = read_params(text, pos, style)
    if not over:
        return None
    return {p.key: xml_value(p.raw, property_schema(schema, p.key), style, p.is_string) for p in params}, end
