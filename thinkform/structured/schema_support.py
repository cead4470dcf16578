"""JSON Schema keywords a grammar library compiles but does not enforce, and what thinkform does about each.

- xgrammar 0.2 drops every keyword that sits beside anyOf / oneOf / allOf (`{"type": "object", "required":
  ["name"], "oneOf": [...]}` accepts `{}` and `""`), accepts anything under an allOf of several schemas, and
  takes an enum's values whatever `type` says, and keeps a string's `format`, `enum` or `const` but drops
  the `pattern` beside it: refused up front (`check_xgrammar_enforces`), so `auto`
  takes llguidance, which enforces them. Likewise a keyword beside `$ref` (it keeps the target alone), from
  draft 2019-09 on, where it applies (drafts 3 to 7 ignore it, as xgrammar does). Only keywords that
  constrain instances count (`javaType` or `deprecationMessage` beside a combinator is no loss). And
  `patternProperties` in an object open to other properties, whose names xgrammar does not check at all.
- A schema with no `type` that constrains strings or arrays (`{"pattern": "^a+$"}`, `{"minLength": 3}`) is
  any JSON value to xgrammar, which then drops those keywords (`"zz"` admitted; 37 of JSONSchemaBench's
  1,000 schemas hold one): `name_every_type` names every JSON type there, and xgrammar keeps each keyword
  for its own type (llguidance reads them right as they stand).
- A `required` property that `properties` does not list is impossible in strict mode (no other properties):
  xgrammar drops the requirement, llguidance calls the schema unsatisfiable. It is what the schema says, a
  property of any value (or of its `patternProperties` / `additionalProperties` schema), so
  `complete_required` lists it; one the object can never hold goes to llguidance, which says so.
- Keywords no grammar here enforces (`not`, `uniqueItems`, `if` / `then` / `else`, `dependencies`,
  `contains`, ...; llguidance refuses them and is given the schema without them, xgrammar ignores them), and
  the exclusivity of a `oneOf` (both read it as `anyOf`): the grammar enforces the rest, and each finished
  answer is checked against the whole schema (`AnswerCheck`), so `constraint_satisfied` says whether it
  holds.
"""
from __future__ import annotations

import json
import logging
import re
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Iterator

from thinkform.structured.ecma_regex import map_patterns
from thinkform.structured.json_string_pattern import ecma_dots, has_assertions, without_assertions
from thinkform.structured.schema_walk import map_schemas, resolve, schema_nodes
from thinkform.structured.spec import Constraint, ConstraintError, is_json_format, json_tags, xml_tags
from thinkform.structured.xml_args import XML_STYLES, read_arguments

logger = logging.getLogger(__name__)

# keywords no grammar enforces: checked on the finished answer instead
UNENFORCEABLE = frozenset({"not", "uniqueItems", "if", "then", "else", "dependencies", "dependentRequired",
                           "dependentSchemas", "contains", "minContains", "maxContains", "unevaluatedProperties",
                           "unevaluatedItems"})

_COMBINATORS = ("anyOf", "oneOf", "allOf")
# keywords that constrain a schema's instances (every draft's); any other (title, $defs, javaType, x-order,
# ...) describes the schema only, and every library is right to pass it by
_ASSERTIONS = frozenset({
    "type", "enum", "const", "multipleOf", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum",
    "maxLength", "minLength", "pattern", "format", "maxItems", "minItems", "uniqueItems", "maxContains",
    "minContains", "maxProperties", "minProperties", "required", "dependentRequired", "properties",
    "patternProperties", "additionalProperties", "propertyNames", "items", "prefixItems", "additionalItems",
    "contains", "unevaluatedItems", "unevaluatedProperties", "allOf", "anyOf", "oneOf", "not", "if", "then",
    "else", "dependentSchemas", "dependencies", "$ref", "$dynamicRef", "$recursiveRef", "divisibleBy",
    "disallow", "extends"})
_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object",
               type(None): "null"}


def check_xgrammar_enforces(schema: Any, strict: bool = True, field: str = "json_schema") -> None:
    """Raise ConstraintError naming the first place of `schema` that xgrammar would not enforce. Dropping
    some siblings loses nothing: `type` where every branch is of that type already, and (in strict mode,
    where no branch admits other properties) `additionalProperties`."""
    siblings_of_ref = not _draft_ignores_ref_siblings(schema)
    for path, node in schema_nodes(schema):
        problem = (_combinator_problem(node, strict) or _keyword_problem(node) or _open_pattern_problem(node, strict)
                   or siblings_of_ref and _ref_problem(node, schema, strict))
        if problem:
            raise ConstraintError(f"{field}: grammar backend 'xgrammar' would not enforce {problem} at {path} "
                                  "(it drops it)" + OTHER_BACKENDS_HINT, field=field)


def _combinator_problem(node: dict[str, Any], strict: bool) -> str | None:
    combos = [k for k in _COMBINATORS if k in node]
    if not combos:
        return None
    branches = node[combos[0]] if isinstance(node[combos[0]], list) else []
    siblings = _dropped_siblings(node, {*_COMBINATORS}, branches, strict)
    if siblings:
        return f"'{siblings[0]}' beside '{combos[0]}'"
    if len(combos) > 1:
        return f"'{combos[0]}' beside '{combos[1]}'"
    if isinstance(node.get("allOf"), list) and len(node["allOf"]) > 1:
        return f"'allOf' of {len(node['allOf'])} schemas"
    return None


def _ref_problem(node: dict[str, Any], root: Any, strict: bool) -> str | None:
    """A keyword beside `$ref` (since draft 2019-09 it applies with the target; xgrammar keeps the target
    alone: `{"$ref": ..., "maxLength": 3}` admitted "abcdef")."""
    ref = node.get("$ref")
    if not isinstance(ref, str):
        return None
    target = [resolve(root, ref)] if ref.startswith("#/") or ref == "#" else []
    siblings = _dropped_siblings(node, {"$ref", *_COMBINATORS}, target, strict)
    return f"'{siblings[0]}' beside '$ref'" if siblings else None


def _open_pattern_problem(node: dict[str, Any], strict: bool) -> str | None:
    """patternProperties in an object open to other properties: xgrammar takes any name there with the other
    properties' schema, a listed one or a pattern's too (`{"id": "zz"}` for an integer `id`)."""
    patterns = node.get("patternProperties")
    if isinstance(patterns, dict) and patterns and node.get("additionalProperties", not strict) is not False:
        return "'patternProperties' beside other properties ('additionalProperties')"
    return None


def _draft_ignores_ref_siblings(schema: Any) -> bool:
    """Drafts 3 to 7 ignore every keyword beside `$ref`; 2019-09 and 2020-12 (and a schema naming none, read
    as 2020-12 here as by the answer check) apply them."""
    declared = schema.get("$schema") if isinstance(schema, dict) else None
    return isinstance(declared, str) and "draft-0" in declared


def _keyword_problem(node: dict[str, Any]) -> str | None:
    declared, values = _declared_types(node), _value_types(node)
    if declared is not None and values is not None and not values <= declared:
        return "'type' beside 'enum' / 'const'"
    unlisted = _unlisted_required(node, every_object=True)  # (after complete_required: names it cannot hold)
    if unlisted:
        return f"'required' {unlisted[0]!r}, which the object cannot hold,"
    beside = next((k for k in ("format", "enum", "const") if k in node), None)
    if isinstance(node.get("pattern"), str) and beside:
        return f"'pattern' beside '{beside}'"  # it keeps the format or the values and drops the pattern
    if node.get("multipleOf") is not None:  # (llguidance writes it inside the number's bounds: bounded_multiple)
        return "'multipleOf'"  # of a number: dropped; of an integer: unbounded digits, and dropped beside a range
    return None


def bounded_number(node: dict[str, Any], max_digits: int) -> dict[str, Any]:
    """An integer or number schema held inside the range of `max_digits` digits (and its own bounds): where
    the grammar must end a number itself, as the digit guard cannot end it for it."""
    kind = node.get("type")
    kinds = set(kind) if isinstance(kind, list) else {kind}
    if not kinds & {"integer", "number"} or "enum" in node or "const" in node:
        return node
    top = 10 ** max_digits - 1
    low, high = node.get("minimum"), node.get("maximum")
    out = dict(node)
    if "exclusiveMinimum" not in node or not isinstance(node["exclusiveMinimum"], (int, float)):
        out["minimum"] = max(low, -top) if isinstance(low, (int, float)) else -top
    if "exclusiveMaximum" not in node or not isinstance(node["exclusiveMaximum"], (int, float)):
        out["maximum"] = min(high, top) if isinstance(high, (int, float)) else top
    return out


def bounded_multiple(node: dict[str, Any], max_digits: int) -> dict[str, Any]:
    """A `multipleOf` integer held inside `max_digits` digits by its schema (bounded_number). The digit guard
    cannot bound it: at the last digit a number that is no multiple yet must go on, and the grammar wins
    where the guard would leave nothing (audit 29: `{"type": "integer", "multipleOf": 7}` ran to 38 digits)."""
    return bounded_number(node, max_digits) if isinstance(node.get("multipleOf"), int) else node


def unenforced_keywords(schema: Any, names_as_written: bool = False) -> list[str]:
    """The keywords of `schema` that the grammar does not enforce in full, each once: UNENFORCEABLE, `oneOf`,
    which both libraries read as `anyOf` where its branches may overlap, and a `pattern` (or
    `patternProperties`) with a lookaround or word boundary, which the grammar enforces without them. With
    `names_as_written` (llguidance matches a property name's written text: `"\\u0069d"` passes for another
    name than `id`), `properties` of an object open to other properties."""
    nodes = [node for _, node in schema_nodes(schema)]
    found = {k for node in nodes for k in node if k in UNENFORCEABLE | {"oneOf"}
             and not (k == "uniqueItems" and node[k] is not True)}
    if any(has_assertions(pattern) for pattern in _patterns(schema)):
        found.add("pattern")
    if names_as_written and any(_open_with_names(node) for node in nodes):
        found.add("properties")
    return sorted(found)


def _open_with_names(node: dict[str, Any]) -> bool:
    names = [node.get(k) for k in ("properties", "patternProperties")]
    return any(isinstance(n, dict) and n for n in names) and node.get("additionalProperties", False) is not False


def _patterns(schema: Any) -> list[str]:
    """Every `pattern` of `schema`, and every patternProperties key."""
    found: list[str] = []

    def keep(pattern: str) -> str:
        found.append(pattern)
        return pattern

    map_patterns(schema, keep)
    return found


def complete_required(schema: Any, every_object: bool = False) -> Any:
    """A copy of `schema` in which every object schema that lists `properties` and requires one it does not
    list lists that one too, with the schema JSON Schema gives it there: the first `patternProperties` entry
    its name matches, else `additionalProperties`' schema, else any value. (Strict mode closes an object to
    what it lists; a name it can never hold, under `additionalProperties: false` or a `propertyNames`
    pattern, stays unlisted. A `required`-only schema, an anyOf branch say, is left open as it is, unless
    `every_object`: xgrammar closes an object that lists no properties to `{}` and drops its `required`, so
    there `{"type": "object", "required": ["a"]}` and a bare `{"required": ["a"]}` list `a` too.)"""
    return map_schemas(schema, lambda node: _complete_node(node, every_object))


def _complete_node(node: dict[str, Any], every_object: bool) -> dict[str, Any]:
    added = {name: value for name in _unlisted_required(node, every_object)
             if (value := _unlisted_property(node, name)) is not None}
    return {**node, "properties": {**node.get("properties", {}), **added}} if added else node


# keywords that constrain one JSON type, which xgrammar drops from a schema that names no type
_TYPED_KEYWORDS = frozenset({"pattern", "minLength", "maxLength", "format", "minItems", "maxItems", "minProperties",
                             "maxProperties"})
_EVERY_TYPE = ["null", "boolean", "number", "string", "array", "object"]  # (integer is a number)
# a schema with one of these says what its values are some other way
_TYPED_OTHERWISE = frozenset({"type", "enum", "const", "$ref", *_COMBINATORS})


def name_every_type(schema: Any) -> Any:
    """A copy of `schema` in which a schema with no `type` (nor enum, const, $ref or combinator) that holds a
    string or array keyword names every JSON type, as JSON Schema means it: the keyword binds strings (or
    arrays) and every other value passes."""
    return map_schemas(schema, _name_every_type)


def _name_every_type(node: dict[str, Any]) -> dict[str, Any]:
    if _TYPED_OTHERWISE & set(node) or not _TYPED_KEYWORDS & set(node):
        return node
    return {**node, "type": list(_EVERY_TYPE)}


def without_unenforceable(schema: Any) -> Any:
    """A copy of `schema` without the keywords no grammar enforces, and its patterns without their assertions
    (llguidance refuses them; the answer check covers them instead) and with ECMA's `.` (llguidance's took
    `\\r`)."""
    kept = map_schemas(schema, lambda node: {k: v for k, v in node.items() if k not in UNENFORCEABLE})
    return map_patterns(kept, lambda pattern: ecma_dots(without_assertions(pattern)))


def _lists_properties(node: dict[str, Any]) -> bool:
    return isinstance(node.get("properties"), dict) or isinstance(node.get("patternProperties"), dict)


def _unlisted_required(node: dict[str, Any], every_object: bool = False) -> list[str]:
    props, required = node.get("properties", {}), node.get("required")
    listed = _lists_properties(node) or every_object and _may_be_object(node)
    if not (listed and isinstance(props, dict) and isinstance(required, list)):
        return []
    return [name for name in required if isinstance(name, str) and name not in props]


def _may_be_object(node: dict[str, Any]) -> bool:
    declared = _declared_types(node)
    return "object" in declared if declared is not None else not _TYPED_OTHERWISE & set(node)


def _unlisted_property(node: dict[str, Any], name: str) -> Any:
    """The schema of a property `node` does not list (None: it can never hold one of that name)."""
    names = node.get("propertyNames")
    pattern = names.get("pattern") if isinstance(names, dict) else None
    if isinstance(pattern, str) and _search(pattern, name) is False:
        return None
    for key, sub in (node.get("patternProperties") or {}).items():
        if _search(key, name):
            return sub
    extra = node.get("additionalProperties", {})
    return None if extra is False else extra if isinstance(extra, dict) else {}


def _search(pattern: str, text: str) -> bool | None:
    """Whether an ECMA pattern matches somewhere in `text` (None where Python's re cannot read it)."""
    try:
        return re.search(pattern, text) is not None
    except re.error:
        return None


class AnswerCheck:
    """Validates a finished JSON answer against the whole schema (keywords the grammar did not enforce)."""

    def __init__(self, schema: Any, keywords: list[str]) -> None:
        import jsonschema  # only for the rare schema that needs it
        import referencing

        self.keywords = keywords
        # without a $schema: draft 7 where the schema speaks it (`dependencies`, which 2020-12 dropped)
        default = jsonschema.Draft7Validator if "dependencies" in keywords else jsonschema.Draft202012Validator
        # an empty registry: a remote $ref is never fetched (no network from the engine; the check of a
        # schema that needs one cannot run, and the grammar's verdict stands)
        draft = jsonschema.validators.validator_for(schema, default=default)
        exact = jsonschema.validators.extend(draft, {"multipleOf": _exact_multiple_of})
        self._validator = exact(schema, registry=referencing.Registry())
        self._broken = False

    def __call__(self, answer: bytes) -> bool:
        try:
            instance = load_answer(answer)
        except ValueError:
            return False
        if self._broken:
            return True
        try:
            return self._validator.is_valid(instance)
        except Exception as e:  # noqa: BLE001 - e.g. an ECMA pattern Python's re cannot read (`(?<name>…)`)
            self._broken = True  # the grammar's verdict stands, as it did before there was a check
            logger.warning("json_schema: the answer check cannot run (%s: %s); %s stay unchecked",
                           type(e).__name__, e, ", ".join(self.keywords))
            return True

    @classmethod
    def for_schema(cls, schema: Any, names_as_written: bool = False) -> "AnswerCheck | None":
        keywords = unenforced_keywords(schema, names_as_written)
        if not keywords:
            return None
        logger.info("json_schema: %s not enforced by the grammar; each answer is checked against the schema",
                    ", ".join(keywords))
        return cls(schema, keywords)


def _exact_multiple_of(validator: Any, step: Any, instance: Any, schema: Any) -> Iterator[Any]:
    """`multipleOf` in decimal, as the numbers are written: jsonschema divides floats, and 274.9 / 0.01 is
    27489.999999999996 (a valid answer reported as breaking its schema)."""
    import jsonschema

    if not validator.is_type(instance, "number") or not isinstance(step, (int, float)) or step <= 0:
        return
    try:
        remainder = Decimal(repr(instance)) % Decimal(repr(step))
    except (InvalidOperation, ValueError):  # infinite or too many digits for the context: no verdict
        return
    if remainder != 0:
        yield jsonschema.ValidationError(f"{instance!r} is not a multiple of {step!r}")


class TagArgumentsCheck:
    """The AnswerCheck of each JSON tag of a structural tag (a tool call's arguments), over every call of
    that tag in the answer. Arguments written in an XML style (xgrammar's "qwen_xml" / "glm_xml": Qwen3-Coder,
    GLM-4.5) are checked too, after reading them into JSON by the schema's types exactly as the tool-call
    parser does (xml_args), so the check judges the arguments the client gets."""

    def __init__(self, checks: list[tuple[str, str, AnswerCheck]],
                 xml_checks: list[tuple[str, str, AnswerCheck, Any, str]] | None = None) -> None:
        self._checks = checks
        self._xml_checks = xml_checks or []

    def __call__(self, answer: bytes) -> bool:
        text = answer.decode("utf-8", "replace")
        for begin, end, check in self._checks:
            at = text.find(begin)
            while at >= 0:
                stop = text.find(end, at + len(begin)) if end else _json_value_end(text, at + len(begin))
                if stop < 0:
                    break  # a call still open: the grammar's verdict covers it
                if not check(text[at + len(begin):stop].encode()):
                    return False
                at = text.find(begin, stop + len(end))
        for begin, end, check, schema, style in self._xml_checks:
            at = text.find(begin)
            while at >= 0:
                read = read_arguments(text, at + len(begin), style, schema)
                if read is None:
                    break  # a call still open: the grammar's verdict covers it
                args, stop = read
                if not check(json.dumps(args, ensure_ascii=False).encode()):
                    return False
                at = text.find(begin, stop)
        return True

    @classmethod
    def for_tags(cls, tags: list[tuple[str, str, Any]], xml: list[tuple[str, str, Any, str]] = (),  # type: ignore[assignment]
                 names_as_written: bool = False) -> "TagArgumentsCheck | None":
        checks = [(begin, end, check) for begin, end, schema in tags
                  if (check := AnswerCheck.for_schema(_load(schema), names_as_written))]
        xml_checks = [(begin, end, check, _load(schema), style) for begin, end, schema, style in xml
                      if style in XML_STYLES and (check := AnswerCheck.for_schema(_load(schema)))]
        return cls(checks, xml_checks) if checks or xml_checks else None


def _json_value_end(text: str, at: int) -> int:
    """Where the JSON value from `at` ends (a tag with an empty end string ends with it); -1: not complete."""
    start = len(text) - len(text[at:].lstrip())
    try:
        return json.JSONDecoder().raw_decode(text, start)[1]
    except json.JSONDecodeError:
        return -1


def _load(schema: Any) -> Any:
    return json.loads(schema) if isinstance(schema, str) else schema


def answer_check_for(constraint: Constraint, names_as_written: bool = False,
                     ) -> AnswerCheck | TagArgumentsCheck | RegexCheck | Callable[[bytes], bool] | None:
    """What a grammar compiled from `constraint` leaves to be checked on the finished answer, if anything
    (a regex with a lookaround: the whole answer against it, as Python's `re` reads it; `names_as_written`:
    see unenforced_keywords).
    A JSON answer is at least parsed: xgrammar writes a string's `pattern` text raw, so a pattern whose `.`
    takes a `"` let `{"x": "a"b"}` through (constraint_satisfied stayed true for an answer no parser reads)."""
    if constraint.kind == "json_schema":
        return AnswerCheck.for_schema(constraint.data(), names_as_written) or parses_as_json
    if constraint.kind == "json_object":
        return parses_as_json
    if constraint.kind == "regex" and has_assertions(constraint.source):
        return RegexCheck(constraint.source)
    if constraint.kind == "structural_tag":
        data = constraint.data()
        if is_json_format(data):  # the whole answer is one JSON schema's
            return AnswerCheck.for_schema(_load(data["format"].get("json_schema")), names_as_written) or parses_as_json
        return TagArgumentsCheck.for_tags(json_tags(data), xml_tags(data), names_as_written)
    return None


class RegexCheck:
    """The whole answer against a regex the grammar enforced without its lookarounds, as Python's re reads
    it; where re cannot read the regex (`\\p{L}`, `(?<y>…)`), the grammar's verdict stands (audit 31: the
    check raised once the answer was done, and the request failed)."""

    def __init__(self, regex: str) -> None:
        try:
            self._compiled: re.Pattern[str] | None = re.compile(regex)
        except re.error as e:
            logger.warning("regex: the answer check cannot read %r (%s); its lookarounds stay unchecked", regex, e)
            self._compiled = None

    def __call__(self, answer: bytes) -> bool:
        return self._compiled is None or self._compiled.fullmatch(answer.decode("utf-8", "replace")) is not None


def parses_as_json(answer: bytes) -> bool:
    """Whether the finished answer is one JSON value, each object's names unique."""
    try:
        load_answer(answer)
    except ValueError:
        return False
    return True


def load_answer(answer: bytes) -> Any:
    """The answer's JSON value; ValueError where it is none, or where an object names a property twice
    (`{"b": 1, "b": 2}`: both libraries admit it in an object open to other properties; a parser keeps one,
    so `minProperties` counted two and data is lost)."""
    return json.loads(answer, object_pairs_hook=_unique_names)


def _unique_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        names = [name for name, _ in pairs]
        raise ValueError(f"property {next(n for n in names if names.count(n) > 1)!r} named twice in one object")
    return value


def _declared_types(node: dict[str, Any]) -> set[str] | None:
    declared = node.get("type")
    if isinstance(declared, str):
        declared = [declared]
    if not isinstance(declared, list) or not all(isinstance(t, str) for t in declared):
        return None
    return set(declared) | ({"integer"} if "number" in declared else set())


def _value_types(node: dict[str, Any]) -> set[str] | None:
    values = node["enum"] if isinstance(node.get("enum"), list) else [node["const"]] if "const" in node else None
    if values is None:
        return None
    return {_JSON_TYPES.get(type(v), "?") if not (type(v) is float and v.is_integer()) else "integer"
            for v in values}


def _dropped_siblings(node: dict[str, Any], keeping: set[str], branches: list[Any], strict: bool) -> list[str]:
    """The keywords beside `keeping` (a combinator, `$ref`) that xgrammar drops, sorted: those that constrain
    instances, but the ones no grammar enforces (checked on the answer wherever they stand) and those whose
    loss changes nothing: `type` where every branch (the combinator's, the `$ref`'s target) is of that type
    already, and (in strict mode, where no branch admits other properties) `additionalProperties`."""
    harmless = {"additionalProperties"} if strict else set()
    own = _types(node)
    if own is not None and branches and all((t := _types(b)) is not None and t <= own for b in branches):
        harmless.add("type")
    return sorted(set(node) & _ASSERTIONS - keeping - UNENFORCEABLE - harmless)


def _types(schema: Any) -> set[str] | None:
    """The JSON types a schema admits, where it says so itself (type, or the values of enum / const)."""
    if not isinstance(schema, dict):
        return None
    declared = _declared_types(schema)
    return declared if declared is not None else _value_types(schema)


OTHER_BACKENDS_HINT = "; use --grammar-backend auto or llguidance"  # `auto` drops it from its own message


def schema_problem(schema: Any) -> str | None:
    """Why `schema` is not a JSON Schema, or None: against its `$schema`'s metaschema, or without one
    against every draft's (a draft-4 `exclusiveMaximum: true`, a draft-7 tuple `items` are JSON Schemas).
    Patterns are not judged (ECMA's syntax is no Python library's). For naming the part of a request that a
    grammar library's compile error cannot point at, so only what no reading of the schema allows."""
    import jsonschema

    declared = jsonschema.validators.validator_for(schema, default=None)  # None: no (known) $schema
    drafts = [declared] if declared is not None else [
        jsonschema.Draft202012Validator, jsonschema.Draft201909Validator, jsonschema.Draft7Validator,
        jsonschema.Draft6Validator, jsonschema.Draft4Validator]
    first: jsonschema.SchemaError | None = None
    for draft in drafts:
        try:
            draft.check_schema(schema, format_checker=None)
            return None
        except jsonschema.SchemaError as e:
            first = first or e
        except RecursionError:  # nested past Python's stack: not judged here (its own error stands)
            return None
    assert first is not None
    where = ".".join(map(str, first.path))
    return first.message + (f" (at {where})" if where else "")
