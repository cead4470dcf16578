"""JSON Schema shapes xgrammar compiles but does not enforce: refused up front (so `auto` takes llguidance).

xgrammar 0.2 drops every keyword that sits beside anyOf / oneOf / allOf (`{"type": "object", "required":
["name"], "oneOf": [...]}` accepts `{}` and `""`), and an allOf of several schemas accepts anything. A finished
answer must satisfy its schema, so such a schema is a clear error rather than a grammar that lets invalid
answers through."""
from __future__ import annotations

from typing import Any, Iterator

from thinkform.structured.spec import ConstraintError

_COMBINATORS = ("anyOf", "oneOf", "allOf")
# keywords that describe a schema without constraining its instances
_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$schema", "$id", "id", "$comment",
                          "$defs", "definitions", "deprecated", "readOnly", "writeOnly", "$anchor", "nullable"})
_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object",
               type(None): "null"}
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMAS = ("items", "additionalProperties", "contains", "not", "if", "then", "else", "propertyNames",
            "unevaluatedProperties", "additionalItems")


def check_xgrammar_enforces(schema: Any, strict: bool = True, field: str = "json_schema") -> None:
    """Raise ConstraintError naming the first place of `schema` that xgrammar would not enforce. Dropping
    some siblings loses nothing: `type` where every branch is of that type already, and (in strict mode,
    where no branch admits other properties) `additionalProperties`."""
    for path, node in _nodes(schema, "#"):
        combos = [k for k in _COMBINATORS if k in node]
        if not combos:
            continue
        siblings = sorted(set(node) - _ANNOTATIONS - set(_COMBINATORS) - _harmless(node, combos[0], strict))
        if siblings:
            _refuse(field, f"'{siblings[0]}' beside '{combos[0]}' at {path}")
        if len(combos) > 1:
            _refuse(field, f"'{combos[0]}' beside '{combos[1]}' at {path}")
        if "allOf" in node and isinstance(node["allOf"], list) and len(node["allOf"]) > 1:
            _refuse(field, f"'allOf' of {len(node['allOf'])} schemas at {path}")


def _harmless(node: dict[str, Any], combo: str, strict: bool) -> set[str]:
    out = {"additionalProperties"} if strict else set()
    own = _types(node)
    branches = node.get(combo) if isinstance(node.get(combo), list) else []
    if own is not None and branches and all((t := _types(b)) is not None and t <= own for b in branches):
        out.add("type")
    return out


def _types(schema: Any) -> set[str] | None:
    """The JSON types a schema admits, where it says so itself (type, or the values of enum / const)."""
    if not isinstance(schema, dict):
        return None
    declared = schema.get("type")
    if isinstance(declared, str):
        return {declared, "integer"} if declared == "number" else {declared}
    if isinstance(declared, list) and all(isinstance(t, str) for t in declared):
        return set(declared) | ({"integer"} if "number" in declared else set())
    values = schema["enum"] if isinstance(schema.get("enum"), list) else [schema["const"]] if "const" in schema else None
    if values is None:
        return None
    return {_JSON_TYPES.get(type(v), "?") for v in values}


def _refuse(field: str, what: str) -> None:
    raise ConstraintError(f"{field}: grammar backend 'xgrammar' would not enforce {what} (it drops it); "
                          "use --grammar-backend auto or llguidance", field=field)


def _nodes(schema: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if not isinstance(schema, dict):
        return
    yield path, schema
    for key in _SCHEMA_MAPS:
        if isinstance(schema.get(key), dict):
            for name, sub in schema[key].items():
                yield from _nodes(sub, f"{path}/{key}/{name}")
    for key in _SCHEMA_LISTS:
        if isinstance(schema.get(key), list):
            for i, sub in enumerate(schema[key]):
                yield from _nodes(sub, f"{path}/{key}/{i}")
    for key in _SCHEMAS:
        sub = schema.get(key)
        if isinstance(sub, list):  # draft-4 tuple items
            for i, item in enumerate(sub):
                yield from _nodes(item, f"{path}/{key}/{i}")
        else:
            yield from _nodes(sub, f"{path}/{key}")
