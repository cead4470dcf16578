"""The grammar of pythonic tool calls (`[get_weather(city="Paris"), get_date()]`, Llama 3.2/4 style) for a list
of tools: keyword arguments in each tool's property order, values as Python literals that match its JSON
schema, so `ast.literal_eval` reads every call the grammar allows.

Numbers are bounded in the grammar itself (17 digits before the point, 16 after, a 2-digit exponent: every
one a finite double, never `inf`) and strings use JSON's
escapes, which Python reads the same way. Enforced: types, enums, string lengths, properties / required,
items with minItems / maxItems, anyOf / oneOf, and integer ranges of up to 256 values (written out) or with
a lower bound of 0 or more only (no sign). Not enforced: patterns, other numeric ranges, $ref; such values
fall back to any literal of their type, or to any literal at all.
"""
from __future__ import annotations

import json
import math
from typing import Any, Mapping

_RULES = r'''
py_value ::= py_string | py_number | "True" | "False" | "None" | py_list | py_dict
py_list ::= "[" ( py_value ( ", " py_value )* )? "]"
py_dict ::= "{" ( py_string ": " py_value ( ", " py_string ": " py_value )* )? "}"
py_string ::= "\"" py_char* "\""
py_char ::= [^"\\\x00-\x1f] | "\\" ["\\bfnrt] | "\\u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F]
py_integer ::= "-"? ( "0" | [1-9] [0-9]{0,16} )
py_number ::= py_integer ( "." [0-9]{1,16} )? ( [eE] [+-]? [0-9]{1,2} )?
'''


class _Builder:
    """Rules are collected by name; each schema node becomes one rule."""

    def __init__(self) -> None:
        self.rules: dict[str, str] = {}

    def add(self, name: str, body: str) -> str:
        self.rules[name] = body
        return name

    def value(self, schema: Any, name: str) -> str:
        """The rule name of a value matching `schema` (a fresh rule under `name` where it needs one)."""
        if not isinstance(schema, Mapping):
            return "py_value"
        if "enum" in schema or "const" in schema:
            options = schema["enum"] if "enum" in schema else [schema["const"]]
            return self.add(name, " | ".join(_literal(v) for v in options) or '""')
        for key in ("anyOf", "oneOf"):
            if isinstance(schema.get(key), list) and schema[key]:
                parts = [self.value(s, f"{name}_{i}") for i, s in enumerate(schema[key])]
                return self.add(name, " | ".join(parts))
        kind = schema.get("type")
        if isinstance(kind, list):
            parts = [self.value({**schema, "type": k}, f"{name}_{i}") for i, k in enumerate(kind)]
            return self.add(name, " | ".join(parts))
        simple = {"string": "py_string", "integer": "py_integer", "number": "py_number",
                  "boolean": '"True" | "False"', "null": '"None"'}
        if kind in ("boolean", "null"):
            return self.add(name, simple[kind])
        if kind == "string" and ("minLength" in schema or "maxLength" in schema):
            low, high = int(schema.get("minLength", 0)), schema.get("maxLength")
            return self.add(name, f'"\\"" py_char{{{low},{"" if high is None else int(high)}}} "\\""')
        if kind == "integer" and (span := _small_range(schema)) is not None:
            return self.add(name, " | ".join(f'"{n}"' for n in range(span[0], span[1] + 1)))
        if kind == "integer" and _at_least_zero(schema):
            return self.add(name, '"0" | [1-9] [0-9]{0,16}')
        if kind in simple:
            return simple[kind]
        if kind == "array":
            return self.add(name, self.array(schema, name))
        if kind == "object" and isinstance(schema.get("properties"), Mapping) and schema["properties"]:
            return self.add(name, f'"{{" {self.fields(schema, name, dict_keys=True)} "}}"')
        if kind == "object":
            return "py_dict"
        return "py_value"

    def array(self, schema: Mapping[str, Any], name: str) -> str:
        """`[a, b, ...]` with minItems..maxItems items."""
        item = self.value(schema.get("items"), f"{name}_item")
        low, high = int(schema.get("minItems", 0)), schema.get("maxItems")
        if high is not None and int(high) <= 0:
            return '"[]"'
        more = f"{{{max(low - 1, 0)},{'' if high is None else int(high) - 1}}}"
        items = f'{item} ( ", " {item} ){more}'
        return f'"[" {items} "]"' if low >= 1 else f'"[" ( {items} )? "]"'

    def fields(self, schema: Mapping[str, Any], name: str, dict_keys: bool) -> str:
        """The properties in order, required ones always, optional ones maybe, separated by ", ": as
        keyword arguments (`city="Paris"`) or as dict entries (`"city": "Paris"`)."""
        props = list(schema.get("properties", {}).items())
        required = set(schema.get("required", []))
        # rule (i, first): properties i.. of the list, `first`: nothing written before them yet
        for first in (True, False):
            self.add(f"{name}_f{len(props)}_{int(first)}", '""')
        for i in range(len(props) - 1, -1, -1):
            key, sub = props[i]
            label = _python(key) + ": " if dict_keys else f"{key}="
            value = self.value(sub, f"{name}_p{i}")
            for first in (True, False):
                item = f"{json.dumps(('' if first else ', ') + label)} {value} {name}_f{i + 1}_0"
                self.add(f"{name}_f{i}_{int(first)}",
                         item if key in required else f"( {item} ) | {name}_f{i + 1}_{int(first)}")
        return f"{name}_f0_1"


def pythonic_calls_grammar(tools: list[tuple[str, Mapping[str, Any]]], at_most_one: bool) -> str:
    """EBNF for `[call, call, ...]` (at least one call; exactly one with `at_most_one`) over the (name,
    parameters schema) of each tool."""
    builder = _Builder()
    calls = []
    for i, (tool, schema) in enumerate(tools):
        rule = f"call{i}"
        if isinstance(schema.get("properties"), Mapping) and schema["properties"]:
            args = builder.fields(schema, f"{rule}_args", dict_keys=False)
        else:
            args = '""'  # no declared parameters: a call with no arguments
        calls.append(builder.add(rule, f"{json.dumps(tool + '(')} {args} \")\""))
    builder.add("call", " | ".join(calls))
    root = 'root ::= "[" call "]"' if at_most_one else 'root ::= "[" call ( ", " call )* "]"'
    return "\n".join([root, *(f"{k} ::= {v}" for k, v in builder.rules.items())]) + _RULES


def _bound(schema: Mapping[str, Any], lower: bool) -> int | None:
    """The schema's lowest (or highest) allowed integer from `minimum` / `exclusiveMinimum` (or the
    maximums); None when unbounded that way."""
    inclusive, exclusive = ("minimum", "exclusiveMinimum") if lower else ("maximum", "exclusiveMaximum")
    if isinstance(schema.get(inclusive), (int, float)) and not isinstance(schema.get(inclusive), bool):
        return math.ceil(schema[inclusive]) if lower else math.floor(schema[inclusive])
    if isinstance(schema.get(exclusive), (int, float)) and not isinstance(schema.get(exclusive), bool):
        return math.floor(schema[exclusive]) + 1 if lower else math.ceil(schema[exclusive]) - 1
    return None


def _small_range(schema: Mapping[str, Any]) -> tuple[int, int] | None:
    """(low, high) of an integer schema bounded on both sides by at most 256 values: written out."""
    low, high = _bound(schema, lower=True), _bound(schema, lower=False)
    return (low, high) if low is not None and high is not None and 0 <= high - low < 256 else None


def _at_least_zero(schema: Mapping[str, Any]) -> bool:
    low = _bound(schema, lower=True)
    return low is not None and low >= 0 and _bound(schema, lower=False) is None


def _literal(value: Any) -> str:
    """An EBNF string for `value` written as a Python literal."""
    return json.dumps(_python(value), ensure_ascii=False)


def _python(value: Any) -> str:
    """`value` as Python source: JSON's spelling, with Python's True / False / None."""
    if value is True or value is False or value is None:
        return {True: "True", False: "False", None: "None"}[value]
    if isinstance(value, list):
        return "[" + ", ".join(_python(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k), ensure_ascii=False)}: {_python(v)}" for k, v in value.items()) + "}"
    return json.dumps(value, ensure_ascii=False)
