"""JSON Schema `pattern`s are ECMA-262 regexes: `\\w` and `\\d` mean ASCII only, and `\\s` ECMA's white space
and line terminators (not U+0085, which llguidance's Unicode `\\s` takes), whatever a backend's regex engine
thinks. Rewriting them to explicit classes gives every backend the same, standard meaning."""
from __future__ import annotations

from typing import Any, Callable

# ECMA-262 WhiteSpace and LineTerminator
_SPACE = "\\x09-\\x0d \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
_CLASS_BODY = {"w": "A-Za-z0-9_", "d": "0-9", "s": _SPACE}
_DATA_KEYS = frozenset({"enum", "const", "default", "examples"})
_STANDALONE = {"w": "[A-Za-z0-9_]", "d": "[0-9]", "W": "[^A-Za-z0-9_]", "D": "[^0-9]", "s": f"[{_SPACE}]",
               "S": f"[^{_SPACE}]"}


def ecma_pattern(pattern: str) -> str:
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            if in_class and nxt in _CLASS_BODY:
                # a hyphen beside a class escape is a character ([\\w-a] is \\w, '-', 'a'), not a range
                if out[-1] == "-":  # (escaping a hyphen in a class is always harmless)
                    out[-1] = "\\-"
                out.append(_CLASS_BODY[nxt])
                if pattern.startswith("-", i + 2) and not pattern.startswith("-]", i + 2):
                    out.append("\\-")
                    i += 1
            elif not in_class and nxt in _STANDALONE:
                out.append(_STANDALONE[nxt])
            else:
                out.append(pattern[i:i + 2])
            i += 2
            continue
        if ch == "[" and not in_class:
            in_class = True
        elif ch == "]" and in_class:
            in_class = False
        out.append(ch)
        i += 1
    return "".join(out)


def ecma_schema(schema: Any) -> Any:
    """A copy of the schema with every `pattern` (and patternProperties key) in ECMA meaning."""
    return map_patterns(schema, ecma_pattern)


def map_patterns(schema: Any, rewrite: Callable[[str], str]) -> Any:
    """A copy of the schema with every `pattern` and patternProperties key rewritten."""
    if isinstance(schema, list):
        return [map_patterns(s, rewrite) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "pattern" and isinstance(value, str):
            out[key] = rewrite(value)
        elif key == "patternProperties" and isinstance(value, dict):
            out[key] = {rewrite(k): map_patterns(v, rewrite) for k, v in value.items()}
        elif key in _DATA_KEYS:
            out[key] = value  # instance data, not schemas
        elif key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            out[key] = {k: map_patterns(v, rewrite) for k, v in value.items()}  # keys here are names
        else:
            out[key] = map_patterns(value, rewrite)
    return out
