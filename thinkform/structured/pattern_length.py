"""`pattern` with `minLength` / `maxLength`: one bounded pattern, for backends that would drop the lengths.

xgrammar 0.2.8 compiles a string schema that has both by ignoring the lengths (it logs a warning), so
`{"pattern": "^[a-z]+$", "maxLength": 8}` admits "abcdefghijk" and the answer breaks its schema. The common
shapes, single-character atoms with one of them repeated (`^[A-Za-z0-9_]+$`, which `^\\w+$` becomes, or
`^[a-z][a-z0-9_]+$`), are rewritten so the repetition carries the bounds (`^[a-z][a-z0-9_]{1,7}$`); any other
pattern next to a length is refused with a clear error (the `auto` backend then takes llguidance, which
intersects the two).
"""
from __future__ import annotations

import re
from typing import Any

from thinkform.structured.json_string_pattern import pattern_pieces
from thinkform.structured.spec import ConstraintError

_QUANTIFIER = re.compile(r"([*+?])|\{(\d+)(?:(,)(\d*))?\}")
_DATA_KEYS = frozenset({"enum", "const", "default", "examples"})


def bound_pattern_lengths(schema: Any, path: str = "#") -> Any:
    """A copy of `schema` in which no string schema has both a pattern and a length bound."""
    if isinstance(schema, list):
        return [bound_pattern_lengths(s, f"{path}/{i}") for i, s in enumerate(schema)]
    if not isinstance(schema, dict):
        return schema
    out = {k: (v if k in _DATA_KEYS else bound_pattern_lengths(v, f"{path}/{k}")) for k, v in schema.items()}
    pattern = out.get("pattern")
    low, high = out.get("minLength"), out.get("maxLength")
    if isinstance(pattern, str) and (_is_count(low) or _is_count(high)):
        out["pattern"] = _bounded(pattern, low if _is_count(low) else 0, high if _is_count(high) else None, path)
        out.pop("minLength", None)
        out.pop("maxLength", None)
    return out


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _bounded(pattern: str, low: int, high: int | None, path: str) -> str:
    """Atoms each matching one character, at most one of them repeated a variable number of times: the
    lengths then bound that one repetition."""
    items = _items(pattern)
    variable = [i for i, (_, lo, hi) in enumerate(items or []) if lo != hi]
    if items is None or len(variable) > 1:
        raise ConstraintError(
            f"json_schema: at {path}, the xgrammar backend cannot enforce minLength/maxLength together with "
            f"pattern {pattern!r} (it would ignore the lengths); use grammar_backend 'llguidance' or 'auto'",
            field="json_schema")
    fixed = sum(lo for i, (_, lo, _) in enumerate(items) if i not in variable)
    parts = [atom + (f"{{{lo}}}" if lo != 1 else "") for atom, lo, _ in items]
    if variable:
        i = variable[0]
        atom, lo, hi = items[i]
        lo = max(lo, low - fixed)
        hi = hi if high is None else (high - fixed if hi is None else min(hi, high - fixed))
        ok = hi is None or lo <= hi
        parts[i] = f"{atom}{{{lo},{'' if hi is None else hi}}}"
    else:
        ok = low <= fixed and (high is None or fixed <= high)
    if not ok:
        raise ConstraintError(f"json_schema: at {path}, pattern {pattern!r} with minLength {low} and maxLength "
                              f"{high} admits no string", field="json_schema")
    return "^" + "".join(parts) + "$"


def _items(pattern: str) -> list[tuple[str, int, int | None]] | None:
    """(atom, min, max) per item of an optionally anchored pattern of single-character atoms, else None
    (a group, an alternation, a lazy quantifier, an inner anchor, a pattern json_string_pattern cannot read)."""
    try:
        pieces = [(atom is not None, text) for atom, text in pattern_pieces(pattern)]
    except ValueError:
        return None
    if pieces[:1] == [(False, "^")]:
        pieces = pieces[1:]
    if pieces[-1:] == [(False, "$")]:
        pieces = pieces[:-1]
    items: list[tuple[str, int, int | None]] = []
    quantified = False
    for is_atom, text in pieces:
        if is_atom:
            items.append((text, 1, 1))
            quantified = False
            continue
        quantifier = _QUANTIFIER.fullmatch(text)
        if quantifier is None or not items or quantified:
            return None
        symbol, low, comma, high = quantifier.groups()
        items[-1] = (items[-1][0], *_quantifier_range(symbol or "{", low, comma, high))
        quantified = True
    return items or None


def _quantifier_range(quant: str | None, q_low: str | None, comma: str | None,
                      q_high: str | None) -> tuple[int, int | None]:
    if quant is None:
        return 1, 1
    if quant == "*":
        return 0, None
    if quant == "+":
        return 1, None
    if quant == "?":
        return 0, 1
    lo = int(q_low or 0)
    if comma is None:
        return lo, lo
    return lo, int(q_high) if q_high else None
