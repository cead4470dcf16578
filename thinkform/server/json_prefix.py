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
    return JsonPrefixScan().length(text)


class JsonPrefixScan:
    """json_prefix_length of a text that grows (a tool call's arguments as a stream writes them): each call goes
    on from the last token boundary the previous one reached, so a stream's scans cost its length once, not
    once a chunk (re-scanned whole, 28 KB of arguments took 7.7 s of the event loop)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._text = ""  # the text of the last call
        self._stack: list[str] = []  # the open containers, "{" or "[", at the boundary
        # value | first_value ("[" just opened) | key | first_key ("{" just opened) | colon | next | done
        self._expect = "value"
        self._at = 0  # the boundary: where the next token begins
        self._end: int | None = None  # where the text stopped being JSON, once it has
        self._body: tuple[int, int] = (-1, -1)  # a string the text ended inside: (its quote, its body's end so far)

    def length(self, text: str) -> int:
        if not text.startswith(self._text):
            self._reset()  # not a continuation: from the start
        self._text = text
        if self._end is None:
            try:
                return self._scan(text)
            except _Invalid as e:
                self._end = e.at
        return self._end

    def _scan(self, text: str) -> int:
        stack, expect, i, n = self._stack, self._expect, self._at, len(text)
        while i < n:
            self._expect, self._at = expect, i  # a token boundary: a later call resumes here
            c = text[i]
            if c in _WHITESPACE:
                i += 1
                continue
            if expect == "done":
                raise _Invalid(i)
            if expect == "colon":
                if c != ":":
                    raise _Invalid(i)
                expect, i = "value", i + 1
            elif expect == "next":  # after a value inside a container
                closer = "}" if stack[-1] == "{" else "]"
                if c == ",":
                    expect, i = ("key" if stack[-1] == "{" else "value"), i + 1
                elif c == closer:
                    stack.pop()
                    expect, i = ("next" if stack else "done"), i + 1
                else:
                    raise _Invalid(i)
            elif expect in ("key", "first_key"):
                if c == "}" and expect == "first_key":
                    stack.pop()
                    expect, i = ("next" if stack else "done"), i + 1
                elif c == '"':
                    end = self._string_end(text, i)
                    if end is None:
                        return n
                    expect, i = "colon", end
                else:
                    raise _Invalid(i)
            else:  # a value
                if c == "]" and expect == "first_value":
                    stack.pop()
                    expect, i = ("next" if stack else "done"), i + 1
                    continue
                if c in "{[":
                    stack.append(c)
                    expect, i = ("first_key" if c == "{" else "first_value"), i + 1
                    continue
                end = self._string_end(text, i) if c == '"' else _scalar_end(text, i)
                if end is None:
                    return n
                expect, i = ("next" if stack else "done"), end
        self._expect, self._at = expect, i
        return n

    def _string_end(self, text: str, i: int) -> int | None:
        """_string_end, going on inside a long string from where the last call's text ended in it."""
        quote, body = self._body
        end, body = _string_end(text, i, body if quote == i else i + 1)
        self._body = (i, body) if end is None else (-1, -1)
        return end


def _scalar_end(text: str, i: int) -> int | None:
    """Where the string, number or literal at `i` ends; None where the text ends inside it (a valid start);
    _Invalid where it is not one."""
    c = text[i]
    if c == '"':
        return _string_end(text, i, i + 1)[0]
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


_STRING_BODY = re.compile(r'(?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*')
_PARTIAL_ESCAPE = re.compile(r'\\(?:u[0-9a-fA-F]{0,3})?')


def _string_end(text: str, i: int, body_from: int) -> tuple[int | None, int]:
    """(past the closing quote of the string opening at `i`, or None where the text ends inside it; where its
    valid body ends), its body matched from `body_from` (a known-valid part skipped) by one regex (C speed);
    _Invalid where it turns invalid (a control character, a bad escape)."""
    j = _STRING_BODY.match(text, body_from).end()
    if j == len(text):
        return None, j
    if text[j] == '"':
        return j + 1, j
    partial = _PARTIAL_ESCAPE.match(text, j)
    if partial is not None and partial.end() == len(text):
        return None, j  # the text ends inside an escape
    raise _Invalid(j)
