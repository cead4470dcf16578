"""How much of a text is the start of some JSON value: what a stream may send of tool-call arguments still being
written (SGLang's streaming detectors send only JSON that parses, in part or whole, never raw text)."""
from __future__ import annotations

import re

_WHITESPACE = " \t\n\r"
_LITERALS = ("true", "false", "null")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)?(?:\.[0-9]*)?(?:[eE][+-]?[0-9]*)?")
_WHOLE_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_ESCAPES = frozenset('"\\/bfnrtu')


class _Invalid(Exception):
    """The text stops being the start of a JSON value at `at`."""

    def __init__(self, at: int) -> None:
        super().__init__(at)
        self.at = at


def json_prefix_length(text: str) -> int:
    """The length of the longest start of `text` that some valid JSON value begins with (0: none)."""
    try:
        return _scan(text)
    except _Invalid as e:
        return e.at


def _scan(text: str) -> int:
    stack: list[str] = []  # the open containers, "{" or "["
    expect = "value"  # value | first_value ("[" just opened) | key | first_key ("{" just opened) | colon | next | done
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in _WHITESPACE:
            i += 1
            continue
        if expect == "done":
            return i
        if expect == "colon":
            if c != ":":
                return i
            expect, i = "value", i + 1
        elif expect == "next":  # after a value inside a container
            closer = "}" if stack[-1] == "{" else "]"
            if c == ",":
                expect, i = ("key" if stack[-1] == "{" else "value"), i + 1
            elif c == closer:
                stack.pop()
                expect, i = ("next" if stack else "done"), i + 1
            else:
                return i
        elif expect in ("key", "first_key"):
            if c == "}" and expect == "first_key":
                stack.pop()
                expect, i = ("next" if stack else "done"), i + 1
            elif c == '"':
                end = _string_end(text, i)
                if end is None:
                    return n
                expect, i = "colon", end
            else:
                return i
        else:  # a value
            if c == "]" and expect == "first_value":
                stack.pop()
                expect, i = ("next" if stack else "done"), i + 1
                continue
            if c in "{[":
                stack.append(c)
                expect, i = ("first_key" if c == "{" else "first_value"), i + 1
                continue
            end = _scalar_end(text, i)
            if end is None:
                return n
            expect, i = ("next" if stack else "done"), end
    return n


def _scalar_end(text: str, i: int) -> int | None:
    """Where the string, number or literal at `i` ends; None where the text ends inside it (a valid start);
    _Invalid where it is not one."""
    c = text[i]
    if c == '"':
        return _string_end(text, i)
    if c == "-" or c.isdigit():
        end = _NUMBER.match(text, i).end()
        whole = _WHOLE_NUMBER.match(text, i)
        if end == len(text) and any(_WHOLE_NUMBER.fullmatch(text[i:end] + more) for more in ("", "0", "1")):
            return None  # a number that may go on (`-`, `1.`, `1e+`)
        if whole is None or whole.end() != end:
            raise _Invalid(whole.end() if whole is not None else i)
        return end
    for literal in _LITERALS:
        piece = text[i:i + len(literal)]
        if piece == literal:
            return i + len(literal)
        if literal.startswith(piece) and i + len(piece) == len(text):
            return None
    raise _Invalid(i)


def _string_end(text: str, i: int) -> int | None:
    """Past the closing quote of the string opening at `i`; None where the text ends inside it; _Invalid
    where it turns invalid (a control character, a bad escape)."""
    j, n = i + 1, len(text)
    while j < n:
        c = text[j]
        if c == '"':
            return j + 1
        if c == "\\":
            escape = text[j + 1:j + 2]
            if escape and escape not in _ESCAPES:
                raise _Invalid(j)
            digits = text[j + 2:j + 6] if escape == "u" else ""
            if not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise _Invalid(j)
            if not escape or (escape == "u" and len(digits) < 4):
                return None  # the text ends inside the escape
            j += 6 if escape == "u" else 2
            continue
        if ord(c) < 0x20:
            raise _Invalid(j)
        j += 1
    return None
