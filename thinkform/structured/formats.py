"""JSON Schema string `format`s as exact patterns, so that every value the grammar admits is one the usual
readers accept: Python's `date` / `datetime` / `time.fromisoformat`, pydantic and jsonschema's FormatChecker.

xgrammar, llguidance and outlines-core enforce "date", "date-time" and "time" with loose regexes: any day
01-31 in any month (`9900-04-31`, `0003-02-30`), year 0000, second 60, and llguidance a lowercase `z`, which
Python 3.11 refuses; xgrammar's "ipv4" takes leading zeros (`01.2.3.4`), which `ipaddress` refuses.
A `pydantic` model with a `date` field then failed to read the answer the grammar called valid.

The patterns here take what all three readers take:
- a date is `YYYY-MM-DD`, years 0001-9999, each month's own days, Feb 29 in leap years only;
- a time is RFC 3339's `HH:MM:SS`, seconds 00-59 (no reader takes a leap second), an optional fraction of
  1 to 9 digits (all take any number; Python and pydantic keep 6, and 9 is nanoseconds, the finest any common
  datetime type holds: bounded so a fraction cannot run on), and an offset that is `Z` or `±HH:MM` with hours
  00-23 (Python 3.11 takes no lowercase `z`; jsonschema requires an offset, and `:` in it);
- a date-time is a date, `T` and a time. All three take a lowercase `t` too, but JavaScript's `Date` format
  names `T` only (and the budget's ending wrote `t` where both were allowed).
"""
from __future__ import annotations

import json
from typing import Any

from thinkform.structured.schema_walk import map_schemas

_MULTIPLE_OF_4 = "(?:0[48]|[2468][048]|[13579][26])"  # 04 to 96: a two-digit multiple of 4 but 00
_YEAR = "(?:[0-9]{3}[1-9]|[0-9]{2}[1-9]0|[0-9][1-9]00|[1-9]000)"  # 0001-9999
# divisible by 4, and not by 100 unless by 400 (0000 is no year)
_LEAP_YEAR = f"(?:[0-9]{{2}}{_MULTIPLE_OF_4}|{_MULTIPLE_OF_4}00)"
_MONTH_DAY = ("(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
              "|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
              "|02-(?:0[1-9]|1[0-9]|2[0-8]))")
_DATE = f"(?:{_YEAR}-{_MONTH_DAY}|{_LEAP_YEAR}-02-29)"
_HOUR = "(?:[01][0-9]|2[0-3])"
_CLOCK = f"{_HOUR}:[0-5][0-9]:[0-5][0-9]"  # HH:MM:SS
_OFFSETS = (("Z", 1), (f"[+-]{_HOUR}:[0-5][0-9]", 6))  # (pattern, length)
_FRACTION_DIGITS = 9
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"  # no leading zero: `ipaddress` refuses `01`
_IPV4 = f"{_OCTET}(?:\\.{_OCTET}){{3}}"
_NO_BOUND = 1 << 62
_LENGTH_KEYWORDS = ("minLength", "maxLength")


def format_pattern(fmt: str, min_length: int = 0, max_length: int = _NO_BOUND) -> str | None:
    """The anchored pattern of the values of `fmt` that all three readers accept and whose length lies in
    [min_length, max_length]; None for a format not handled here, or where no value has such a length."""
    if fmt == "date":
        return f"^{_DATE}$" if min_length <= 10 <= max_length else None
    if fmt in ("time", "date-time"):
        prefix, size = (f"{_DATE}T", len("YYYY-MM-DDT")) if fmt == "date-time" else ("", 0)
        time = _time(min_length - size, max_length - size)
        return f"^{prefix}{time}$" if time is not None else None
    if fmt == "ipv4":  # (a bound inside 7-15 is not written into the pattern: the format is left as it is)
        return f"^{_IPV4}$" if min_length <= 7 and max_length >= 15 else None
    return None


def _time(low: int, high: int) -> str | None:
    """HH:MM:SS, a fraction and an offset, `low` to `high` characters long in all."""
    ways = []
    for offset, size in _OFFSETS:
        fraction = _fraction(low - 8 - size, high - 8 - size)
        if fraction is not None:
            ways.append((fraction, offset))
    if not ways:
        return None
    if len(ways) == 2 and ways[0][0] == ways[1][0]:
        return f"{_CLOCK}{ways[0][0]}(?:{ways[0][1]}|{ways[1][1]})"
    return f"{_CLOCK}(?:{'|'.join(fraction + offset for fraction, offset in ways)})"


def _fraction(low: int, high: int) -> str | None:
    """A fraction of seconds (`.` and 1 to 9 digits, or none) `low` to `high` characters long."""
    fewest, most = max(1, low - 1), min(_FRACTION_DIGITS, high - 1)
    digits = f"\\.[0-9]{{{fewest}}}" if fewest == most else f"\\.[0-9]{{{fewest},{most}}}"
    none_fits = low <= 0 <= high
    if fewest > most:
        return "" if none_fits else None
    return f"(?:{digits})?" if none_fits else digits


FORMATS = ("date", "date-time", "time", "ipv4")


def format_patterns(schema: Any) -> Any:
    """A copy of `schema` in which each string schema with one of FORMATS has that format's pattern instead,
    its `minLength` / `maxLength` written into the pattern (xgrammar dropped them beside a format), its other
    keywords kept. Left as it is: a schema with a `pattern` of its own (both must hold; xgrammar keeps one,
    so llguidance takes it under `auto`), one with `enum` or `const` (its values are its values), one whose
    `type` admits no string (there the format means nothing), and one whose lengths no value can have."""
    return map_schemas(schema, _with_format_pattern)


def _with_format_pattern(node: dict[str, Any]) -> dict[str, Any]:
    fmt = node.get("format")
    if (fmt not in FORMATS or any(k in node for k in ("pattern", "enum", "const")) or not _may_be_string(node)
            or not all(_is_count(node.get(k, 0)) for k in _LENGTH_KEYWORDS)):
        return node
    pattern = format_pattern(fmt, node.get("minLength", 0), node.get("maxLength", _NO_BOUND))
    if pattern is None:
        return node
    kept = {k: v for k, v in node.items() if k not in ("format", *_LENGTH_KEYWORDS)}
    return {**kept, "pattern": pattern}


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _may_be_string(node: dict[str, Any]) -> bool:
    kind = node.get("type")
    if kind is None:
        return True
    return kind == "string" or isinstance(kind, list) and "string" in kind


def tag_format_patterns(fmt: Any) -> Any:
    """A copy of a structural tag's `format` with format_patterns applied to each of its `json_schema`
    contents (a tool call's arguments), at any depth; a schema given as JSON text stays text."""
    if isinstance(fmt, list):
        return [tag_format_patterns(item) for item in fmt]
    if not isinstance(fmt, dict):
        return fmt
    if fmt.get("type") == "json_schema" and "json_schema" in fmt:
        return {**fmt, "json_schema": _text_or_schema(fmt["json_schema"])}
    return {key: tag_format_patterns(value) for key, value in fmt.items()}


def _text_or_schema(schema: Any) -> Any:
    if not isinstance(schema, str):
        return format_patterns(schema)
    try:
        parsed = json.loads(schema)
    except ValueError:
        return schema  # the compile reports it
    rewritten = format_patterns(parsed)
    return schema if rewritten == parsed else json.dumps(rewritten, ensure_ascii=False)
