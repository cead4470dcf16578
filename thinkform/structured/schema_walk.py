"""Every schema inside a JSON schema: the places keywords hold subschemas, definitions (also grouped a few
levels deep: `definitions/a/full`), and any other place a local `$ref` points to (`{"$ref": "#/file"}` with
the target under a key no keyword names: JSONSchemaBench has 5 such schemas; a check that skipped them let
xgrammar drop a `multipleOf` there). One walk serves the checks (`schema_nodes`) and the rewrites
(`map_schemas`), so both see the same schemas."""
from __future__ import annotations

from collections import deque
from typing import Any, Callable, Iterator
from urllib.parse import unquote

SchemaFn = Callable[[dict[str, Any]], dict[str, Any]]

_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMAS = ("items", "additionalProperties", "contains", "not", "if", "then", "else", "propertyNames",
            "unevaluatedProperties", "additionalItems")
_DEFINITIONS = ("$defs", "definitions")
# a dict with one of these is a schema, not a group of definitions
_KEYWORDS = frozenset({"type", "properties", "items", "$ref", "anyOf", "oneOf", "allOf", "enum", "const", "required",
                       "not", "if", "format", "pattern", "minimum", "maximum", "additionalProperties", "title",
                       "description", "default", "minLength", "maxLength", "minItems", "maxItems", "$id", "id",
                       "patternProperties", "prefixItems", "examples", "$schema", "$defs", "definitions"})


def schema_nodes(schema: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema in `schema` with its JSON pointer (`#/properties/a`), each once."""
    for pointer in [None, *_outside_targets(schema)]:
        yield from _walk(schema if pointer is None else resolve(schema, pointer), pointer or "#")


def map_schemas(schema: Any, fn: SchemaFn) -> Any:
    """A copy of `schema` with `fn` applied to every schema in it (each subschema, innermost first)."""
    out = _rebuild(schema, fn)
    for pointer in _outside_targets(schema):
        out = _replaced(out, _pointer_keys(pointer), lambda target: _rebuild(target, fn))
    return out


def resolve(schema: Any, pointer: str) -> Any:
    """What a local `$ref` (`#/a/b`) points to in `schema`, or None."""
    node = schema
    for key in _pointer_keys(pointer):
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return None
    return node


def _outside_targets(schema: Any) -> list[str]:
    """The local `$ref` targets no keyword place reaches (nor another such target holds), in walk order."""
    walked = list(_walk(schema, "#"))
    seen = {path for path, _ in walked}
    found: list[str] = []
    pending = deque(node for _, node in walked)
    while pending:
        ref = pending.popleft().get("$ref")
        if not (isinstance(ref, str) and ref.startswith("#/")) or ref in seen:
            continue
        target = resolve(schema, ref)
        if isinstance(target, dict):
            found.append(ref)
            for path, node in _walk(target, ref):
                seen.add(path)
                pending.append(node)
    return found


def _pointer_keys(pointer: str) -> list[str]:
    if pointer == "#":
        return []
    return [unquote(part).replace("~1", "/").replace("~0", "~") for part in pointer[2:].split("/")]


def _walk(schema: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if not isinstance(schema, dict):
        return
    yield path, schema
    for key, sub in _child_schemas(schema, path):
        yield from _walk(sub, key)


def _child_schemas(schema: dict[str, Any], path: str) -> Iterator[tuple[str, Any]]:
    for key in _SCHEMA_MAPS:
        if isinstance(schema.get(key), dict):
            for name, sub in schema[key].items():
                yield from _definition(sub, f"{path}/{key}/{name}") if key in _DEFINITIONS else \
                    [(f"{path}/{key}/{name}", sub)]
    for key in _SCHEMA_LISTS:
        if isinstance(schema.get(key), list):
            for i, sub in enumerate(schema[key]):
                yield f"{path}/{key}/{i}", sub
    for key in _SCHEMAS:
        sub = schema.get(key)
        if isinstance(sub, list):  # draft-4 tuple items
            for i, item in enumerate(sub):
                yield f"{path}/{key}/{i}", item
        elif sub is not None:
            yield f"{path}/{key}", sub


def _definition(value: Any, path: str, depth: int = 0) -> Iterator[tuple[str, Any]]:
    """A definition is a schema, or (a few levels deep) a group of them."""
    if not isinstance(value, dict) or not value or depth >= 3 or any(k in _KEYWORDS for k in value):
        yield path, value
        return
    for name, sub in value.items():
        yield from _definition(sub, f"{path}/{name}", depth + 1)


def _rebuild(schema: Any, fn: SchemaFn) -> Any:
    """A copy of `schema` with `fn` applied to every schema in it, innermost first (the places _walk takes)."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: (_rebuild_definition(sub, fn) if key in _DEFINITIONS else _rebuild(sub, fn))
                        for name, sub in out[key].items()}
    for key in _SCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [_rebuild(sub, fn) for sub in out[key]]
    for key in _SCHEMAS:
        sub = out.get(key)
        if isinstance(sub, list):
            out[key] = [_rebuild(item, fn) for item in sub]
        elif isinstance(sub, dict):
            out[key] = _rebuild(sub, fn)
    return fn(out)


def _rebuild_definition(value: Any, fn: SchemaFn, depth: int = 0) -> Any:
    if not isinstance(value, dict) or not value or depth >= 3 or any(k in _KEYWORDS for k in value):
        return _rebuild(value, fn)
    return {name: _rebuild_definition(sub, fn, depth + 1) for name, sub in value.items()}


def _replaced(container: Any, keys: list[str], change: Callable[[Any], Any]) -> Any:
    """A copy of `container` with the value at `keys` changed (copied along the way, shared elsewhere)."""
    if not keys:
        return change(container)
    key, rest = keys[0], keys[1:]
    if isinstance(container, dict) and key in container:
        return {**container, key: _replaced(container[key], rest, change)}
    if isinstance(container, list) and key.isdigit() and int(key) < len(container):
        index = int(key)
        return [*container[:index], _replaced(container[index], rest, change), *container[index + 1:]]
    return container
