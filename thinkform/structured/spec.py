"""Constraint: what the answer must match. Built from request fields, validated up front.

The request fields are SGLang's sampling params: `json_schema` (a JSON string or a dict; the string
"$$ANY$$" means any JSON), `regex`, `ebnf` and `structural_tag` (legacy `structures`/`triggers` form or
xgrammar 0.2's `format` form), plus `json_object` for OpenAI's response_format json_object.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from thinkform.structured.ecma_regex import ecma_pattern, ecma_schema
from thinkform.structured.formats import format_patterns, tag_format_patterns

ConstraintKind = Literal["json_schema", "json_object", "regex", "ebnf", "structural_tag"]
CONSTRAINT_FIELDS: tuple[str, ...] = ("json_schema", "regex", "ebnf", "structural_tag")
ANY_JSON = "$$ANY$$"  # SGLang's json_schema value for "any JSON"


class ConstraintError(ValueError):
    """A bad constraint: names the request field and quotes the backend's message."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class GrammarOptions:
    """Anti-runaway defaults; flags loosen each."""

    any_whitespace: bool = False  # compact JSON with fixed separators (", ", ": ")
    max_whitespace: int = 4  # when any_whitespace: bound on consecutive whitespace
    max_number_digits: int = 17  # significant digits of a JSON number (integers then fit int64)
    # two: at most 17 digits and e±99 stay inside a double (a fuzzed answer's 1289E343 parsed as inf)
    max_exponent_digits: int = 2
    compile_timeout_s: float = 30.0
    strict_mode: bool = True  # JSON schema: no properties / items beyond those the schema names


@dataclass(frozen=True)
class Constraint:
    kind: ConstraintKind
    source: str  # canonical text: compact JSON (key order kept) for schema / structural tag

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.source)

    @property
    def dialect(self) -> str | None:
        """An ebnf's dialect: "lark" where no rule is defined with `::=` (lark_text), which each backend reads
        its own way (xgrammar through its Lark reader, llguidance as Lark); None: GBNF (or not a grammar)."""
        return "lark" if self.kind == "ebnf" and lark_text(self.source) else None

    @property
    def field(self) -> str:
        """The request field this constraint came from (json_object comes from json_schema "$$ANY$$")."""
        return "json_schema" if self.kind == "json_object" else self.kind

    def data(self) -> Any:
        """The parsed JSON of a json_schema / structural_tag constraint."""
        return json.loads(self.source)


def constraint_from_fields(
    json_schema: Any = None,
    regex: str | None = None,
    ebnf: str | None = None,
    structural_tag: Any = None,
    json_object: bool = False,
) -> Constraint | None:
    """Build a Constraint from SGLang request fields; more than one given is an error naming them."""
    given = {k: v for k, v in (("json_schema", json_schema), ("regex", regex), ("ebnf", ebnf),
                               ("structural_tag", structural_tag)) if v is not None}
    if json_object:
        given["json_object"] = ANY_JSON
    if len(given) > 1:
        names = sorted(given)
        raise ConstraintError(
            f"only one constraint per request, got {' and '.join(names)}", field=names[1])
    if not given:
        return None
    (field, value), = given.items()
    if field in ("json_schema", "json_object"):
        return _json_schema(value)
    if field == "structural_tag":
        return Constraint("structural_tag", _structural_tag(value))
    if not isinstance(value, str) or not value.strip():
        raise ConstraintError(f"{field} must be a non-empty string", field=field)
    if field == "regex":  # `\d` and `\w` mean ASCII (as xgrammar reads them) whichever library compiles it
        value = ecma_pattern(value)
    return Constraint(field, value)  # type: ignore[arg-type]


def lark_text(grammar: str) -> bool:
    """Whether a grammar is Lark: no line (comments aside) defines a rule with `::=` (vLLM's reading of its
    grammar fields; GBNF defines every rule so, and xgrammar reads SGLang's `ebnf` field as GBNF only). Lark
    in SGLang's `ebnf` field is read as Lark too, as llguidance reads it there."""
    if not grammar.strip():
        return False
    lines = (re.sub(r"(#|//).*$", "", line).strip() for line in grammar.splitlines())
    return not any("::=" in line for line in lines)


def is_lark(constraint: Constraint) -> bool:
    return constraint.dialect == "lark"


def rules_as_written(rules: list[str], lark: bool) -> list[str]:
    """Rule names of xgrammar's reading of a grammar as the user wrote them: its Lark reader (`lark`) renames
    `start`, Lark's start rule, to `root`."""
    return [("start" if rule == "root" and lark else rule) for rule in rules]


def _json_schema(value: Any) -> Constraint:
    if isinstance(value, str) and value.strip() == ANY_JSON:
        return Constraint("json_object", ANY_JSON)
    if isinstance(value, type) and hasattr(value, "model_json_schema"):
        value = value.model_json_schema()  # a pydantic model class from the offline API
    schema = _parse_json(value, "json_schema")
    if not isinstance(schema, dict):
        raise ConstraintError(
            f"json_schema must be a JSON object, got {type(schema).__name__}", field="json_schema")
    return Constraint("json_schema", _dump(ecma_schema(format_patterns(schema)), "json_schema"))


def _structural_tag(value: Any) -> str:
    """Validate either structural tag form and keep only the keys that mean something."""
    field = "structural_tag"
    tag = _parse_json(value, field)
    if not isinstance(tag, dict):
        raise ConstraintError("structural_tag must be a JSON object", field=field)
    if tag.get("type", "structural_tag") != "structural_tag":
        raise ConstraintError(
            f"structural_tag type must be 'structural_tag', got {tag.get('type')!r}", field=field)
    if "format" in tag:
        if not isinstance(tag["format"], dict) or "type" not in tag["format"]:
            raise ConstraintError("structural_tag format must be an object with a 'type'", field=field)
        return _dump({"type": "structural_tag", "format": tag_format_patterns(tag["format"])}, field)
    if "structures" not in tag:
        raise ConstraintError("structural_tag needs 'format' or 'structures' + 'triggers'", field=field)
    return _dump({"type": "structural_tag", "structures": _structures(tag["structures"]),
                  "triggers": _triggers(tag.get("triggers"))}, field)


def json_tag_bounds(tag: dict[str, Any]) -> list[tuple[str, str]]:
    """(begin, end) of every tag of a structural tag whose content is JSON (see json_tags): where the JSON
    number guard follows tool-call arguments. Tags with XML-style content (xml_tags) are left out: their
    string values are raw text, which a JSON lexer would misread (a `"` opening a string that never ends);
    their numbers are bounded in the grammar itself instead (the xgrammar backend's `_xml_policy`)."""
    return [(begin, end) for begin, end, _ in json_tags(tag)]


def tag_openings(tag: dict[str, Any]) -> list[str]:
    """The fixed strings a structural tag writes of its own: its tags' begin strings, its triggers and its
    constant strings (not the text of its schemas). The format's where it has one (xgrammar reads only that),
    else the legacy form's structures and triggers."""
    return _tag_texts(tag, ("begin", "value"))


def tag_strings(tag: dict[str, Any]) -> list[str]:
    """tag_openings and the tags' end strings: every fixed string the structural tag may write."""
    return _tag_texts(tag, ("begin", "value", "end"))


def _tag_texts(tag: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    fmt = tag.get("format")
    if fmt is None:
        return [s[key] for s in tag.get("structures") or [] for key in keys
                if isinstance(s, dict) and isinstance(s.get(key), str)] \
            + [t for t in tag.get("triggers") or [] if isinstance(t, str)]
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            if node.get("type") == "json_schema":
                return  # a schema's descriptions and patterns are not the tag's own text
            for key in keys:
                if isinstance(node.get(key), str):
                    found.append(node[key])
            found.extend(t for t in node.get("triggers") or [] if isinstance(t, str))
            for value in node.values():
                walk(value)

    walk(fmt)
    return found


def only_tags(tag: dict[str, Any]) -> bool:
    """Whether a structural tag's answer is its tags and nothing else (tool_choice required or named: the
    format is the calls, or a section of them), no free text beside them (a `triggered_tags` format)."""
    fmt = tag.get("format")
    return isinstance(fmt, dict) and fmt.get("type") in ("tag", "tags_with_separator")


def call_openings(tag: dict[str, Any]) -> list[list[str]]:
    """The text that opens a tool call's arguments from an answer's start, grouped by what follows it (the
    call's schema and end: calls of one length), the longest first: a call tag's begin string, and each
    section's begin before it (Kimi-K2's `<|tool_calls_section_begin|>`). Some the grammar does not take first
    (a second call's begin, gpt-oss's other header spellings); the ending search measures, of each group, the
    first it takes."""
    if "structures" in tag:
        calls = [(s["begin"], json.dumps([s.get("schema"), s.get("end")], sort_keys=True)) for s in tag["structures"]]
    else:
        calls = [(b, json.dumps([schema, end, style], sort_keys=True)) for b, end, schema, style in _schema_tags(tag)]
    sections = [""] + [begin for begin, _ in wrapper_tags(tag)]
    groups: dict[str, list[str]] = {}
    for begin, follows in calls:
        groups.setdefault(follows, []).extend(section + begin for section in sections)
    return [sorted(dict.fromkeys(group), key=len, reverse=True) for group in groups.values()]


def wrapper_tags(tag: dict[str, Any]) -> list[tuple[str, str]]:
    """(begin, end) of every tag of a structural tag whose content is other tags, not a schema: a tool-call
    format's section around its calls (Kimi-K2's `<|tool_calls_section_begin|>` … `<|tool_calls_section_end|>`,
    DeepSeek's `<｜tool▁calls▁begin｜>` … `<｜tool▁calls▁end｜>`). Between two calls the answer is inside one."""
    return [(begin, end) for begin, end, content in _tag_nodes(tag)
            if content.get("type") != "json_schema" and isinstance(begin, str) and begin and isinstance(end, str) and end]


def json_tags(tag: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(begin, end, schema) of every tag of a structural tag whose content is JSON: the legacy form's
    structures, and the format form's `tag` nodes with `json_schema` content in the plain JSON style,
    wherever they are nested."""
    if "structures" in tag:
        return [(s["begin"], s["end"], s["schema"]) for s in tag["structures"]]
    return [(b, e, s) for b, e, s, style in _schema_tags(tag) if style == "json"]


def is_json_format(tag: dict[str, Any]) -> bool:
    """A structural tag whose whole format is one JSON schema (in the plain JSON style): a JSON answer."""
    fmt = tag.get("format")
    return isinstance(fmt, dict) and fmt.get("type") == "json_schema" and fmt.get("style", "json") == "json"


def tag_grammar(tag: dict[str, Any]) -> tuple[str, str] | None:
    """("ebnf", grammar) or ("regex", pattern) of a structural tag whose whole format is one grammar or one
    regex (pythonic tool calls under tool_choice required), or is text in tags only (text_tag: `<a>` + any_text +
    `</a>`, xgrammar's EBNF of it), closed as that grammar; None for any other tag."""
    fmt = tag.get("format")
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "grammar" and isinstance(fmt.get("grammar"), str):
        return "ebnf", fmt["grammar"]
    if fmt.get("type") == "regex" and isinstance(fmt.get("pattern"), str):
        return "regex", fmt["pattern"]
    if text_tag(tag):
        ebnf = _text_format_ebnf(json.dumps(fmt, ensure_ascii=False))
        return ("ebnf", ebnf) if ebnf is not None else None
    return None


def text_tag(tag: dict[str, Any]) -> bool:
    """A structural tag of text only (no JSON schema: no tool call), closed as one grammar where its text is
    unfinished (inside a tag); free text beside its tags, where the answer may end, is never cut short."""
    fmt = tag.get("format")
    return isinstance(fmt, dict) and fmt.get("type") not in ("grammar", "regex") and not _schema_nodes(fmt)


@lru_cache(maxsize=256)
def _text_format_ebnf(fmt: str) -> str | None:
    """xgrammar's EBNF of a structural tag format made of text only: its fixed strings (a tag's `end`, each
    `const_string`) are the grammar's literals, which the budget's ending search tries whole (literals.py: no
    byte of `any_text` leads out of it, only the whole `</a>`). None where xgrammar does not read it."""
    import xgrammar as xgr

    try:
        return str(xgr.Grammar.from_structural_tag(json.dumps({"type": "structural_tag", "format": json.loads(fmt)})))
    except Exception:  # noqa: BLE001 - the compile reports a bad format; no grammar to close it by here
        return None


def xml_tags(tag: dict[str, Any]) -> list[tuple[str, str, Any, str]]:
    """(begin, end, schema, style) of every tag of a structural tag whose `json_schema` content is written
    in one of xgrammar's XML styles ("qwen_xml", "glm_xml", ...: tool-call arguments as XML parameters)."""
    if "structures" in tag:
        return []
    return [(b, e, s, style) for b, e, s, style in _schema_tags(tag) if style != "json"]


def has_xml_content(tag: dict[str, Any]) -> bool:
    """Whether some `json_schema` content of a structural tag (at any depth, in a tag or not) is written in an
    XML style, which only xgrammar compiles."""
    return any(node.get("style", "json") != "json" for node in _schema_nodes(tag.get("format")))


def _schema_nodes(node: Any) -> list[dict[str, Any]]:
    """Every `json_schema` node of a structural tag's format, at any depth."""
    if isinstance(node, list):
        return [found for item in node for found in _schema_nodes(item)]
    if not isinstance(node, dict):
        return []
    own = [node] if node.get("type") == "json_schema" else []
    return own + [found for value in node.values() for found in _schema_nodes(value)]


def _schema_tags(tag: dict[str, Any]) -> list[tuple[str, str, Any, str]]:
    found = [(begin, end, content.get("json_schema"), str(content.get("style", "json")))
             for begin, end, content in _tag_nodes(tag) if content.get("type") == "json_schema"]
    # an empty end: the tag ends with its content (gpt-oss: a call runs to the stop token)
    return [(b, e, s, st) for b, e, s, st in found if isinstance(b, str) and isinstance(e, str) and b]


def _tag_nodes(tag: dict[str, Any]) -> list[tuple[Any, Any, dict[str, Any]]]:
    """(begin, end, content) of every tag node of a structural tag's format, at any depth, once per end
    string (xgrammar's TagFormat: "type" may be left out in triggered_tags, `end` may list strings)."""
    found: list[tuple[Any, Any, dict[str, Any]]] = []

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            content = node.get("content")
            kind = node.get("type", "tag" if "begin" in node and "content" in node else None)
            if kind == "tag" and isinstance(content, dict):
                ends = node.get("end", "")
                for end in [ends] if isinstance(ends, str) else ends if isinstance(ends, list) else []:
                    found.append((node.get("begin", ""), end, content))
            for value in node.values():
                walk(value)

    walk(tag.get("format"))
    return found


def _structures(structures: Any) -> list[dict[str, Any]]:
    field = "structural_tag"
    if not isinstance(structures, list) or not structures:
        raise ConstraintError("structural_tag structures must be a non-empty list", field=field)
    out = []
    for i, item in enumerate(structures):
        if not isinstance(item, dict):
            raise ConstraintError(f"structural_tag structures[{i}] must be an object", field=field)
        for key in ("begin", "end"):
            if not isinstance(item.get(key), str):
                raise ConstraintError(f"structural_tag structures[{i}].{key} must be a string", field=field)
        if "schema" not in item:
            raise ConstraintError(f"structural_tag structures[{i}] has no schema", field=field)
        schema = _parse_json(item["schema"], f"structural_tag structures[{i}].schema", field)
        if not isinstance(schema, dict):
            raise ConstraintError(f"structural_tag structures[{i}].schema must be a JSON object", field=field)
        out.append({"begin": item["begin"], "schema": ecma_schema(format_patterns(schema)), "end": item["end"]})
    return out


def _triggers(triggers: Any) -> list[str]:
    if (not isinstance(triggers, list) or not triggers
            or not all(isinstance(t, str) and t for t in triggers)):
        raise ConstraintError("structural_tag triggers must be a non-empty list of non-empty strings",
                              field="structural_tag")
    return triggers


def _parse_json(value: Any, what: str, field: str | None = None) -> Any:
    if isinstance(value, (str, bytes)):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise ConstraintError(f"{what} is not valid JSON: {e}", field=field or what) from e
    return value


def _dump(value: Any, field: str) -> str:
    # Key order is kept on purpose: a schema's property order is the order the answer is written in.
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ConstraintError(f"{field} is not JSON-serialisable: {e}", field=field) from e


def ending_may_grow(constraint: Constraint) -> bool:
    """Whether an answer's shortest ending can grow by more than a token at once: the grammar repeats or
    chooses (a list item, an optional field, an alternative begun). A JSON object of required fields only
    (closed, as strict mode closes it) cannot: its ending only shrinks as the model writes."""
    if constraint.kind == "regex":
        return any(ch in constraint.source for ch in "*+?{|")
    if constraint.kind != "json_schema":
        return True
    return _schema_may_grow(constraint.data())


# (an enum or const is a choice of fixed strings: its ending never grows past the longest one)
_GROWING_KEYS = ("anyOf", "oneOf", "allOf", "items", "prefixItems", "additionalItems", "patternProperties", "$ref")


def _schema_may_grow(node: Any) -> bool:
    if not isinstance(node, dict):
        return node is not False
    if any(key in node for key in _GROWING_KEYS) or node.get("type") == "array":
        return True
    if node.get("type") is None and not ({"properties", "enum", "const"} & set(node)):
        return True  # any value at all
    if node.get("additionalProperties") not in (None, False):
        return True
    props = node.get("properties") or {}
    if set(props) - set(node.get("required") or []):
        return True  # an optional field may be begun
    return any(_schema_may_grow(sub) for sub in props.values()) or any(
        _schema_may_grow(sub) for sub in (node.get("$defs") or node.get("definitions") or {}).values())
