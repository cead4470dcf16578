"""A JSON Schema `pattern` holds for a string's decoded value; a grammar writes the string's JSON text.

Between the two lie the characters JSON must escape: `"`, `\\` and the controls U+0000-U+001F. xgrammar
0.2.8 encodes a pattern for JSON only while it holds no quote, backslash or non-ASCII character; otherwise,
and outlines-core always, the pattern's text goes into the grammar raw: `^café-.*-fin$` admitted
`café-a"b-fin`, which ends the string early, and `^a"b$` admitted nothing valid at all.

`json_text_pattern` rewrites a pattern into one over the JSON text. Only character sets that hold one of
those characters change: a character or class that names one (`\\"`, `\\\\`, `[ -~]`, `\\s`) admits its JSON
escape (`\\"`, `\\\\`, `\\t`, `\\u000b`), and a set given by what it leaves out (`.`, `[^,]`, `\\S`) admits `\\"`
and `\\\\` but no control character (a pattern that wants a tab names it). Anchors, groups, alternation and
quantifiers are kept as they are, so a quantifier still counts decoded characters. `whole_text_regex`
then anchors the result as the backends match it against the string's whole text.
"""
from __future__ import annotations

import re
from typing import Iterator

Ranges = list[tuple[int, int]]

_UNIVERSE: Ranges = [(0, 0xD7FF), (0xE000, 0x10FFFF)]  # surrogates are no text
_ESCAPED: Ranges = [(0, 0x1F), (0x22, 0x22), (0x5C, 0x5C)]  # what JSON writes only as an escape
_QUOTE_AND_BACKSLASH: Ranges = [(0x22, 0x22), (0x5C, 0x5C)]
_SHORT = {0x08: "b", 0x09: "t", 0x0A: "n", 0x0C: "f", 0x0D: "r", 0x22: '"', 0x5C: "\\"}
_SPACE: Ranges = [(0x09, 0x0D), (0x20, 0x20), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A),
                  (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000), (0xFEFF, 0xFEFF)]
_DIGIT: Ranges = [(0x30, 0x39)]
_WORD: Ranges = [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]
_LINE_ENDS: Ranges = [(0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029)]  # what ECMA's `.` leaves out
_CLASS_ESCAPES = {"d": _DIGIT, "w": _WORD, "s": _SPACE}
_CHAR_ESCAPES = {"t": 0x09, "n": 0x0A, "v": 0x0B, "f": 0x0C, "r": 0x0D, "0": 0x00}
# UTF-8's byte-structure segments (lead bytes with their own continuation ranges: E0, ED, F0, F4 apart).
# xgrammar's regex automaton builds a class whose ranges cross them, or any negated class, as bytes that
# admit overlong forms and surrogates (`[^a]` took E0 80 80); one class per segment it builds right.
_UTF8_SEGMENTS: Ranges = [(0, 0x7F), (0x80, 0x7FF), (0x800, 0xFFF), (0x1000, 0xCFFF), (0xD000, 0xD7FF),
                          (0xE000, 0xFFFF), (0x10000, 0x3FFFF), (0x40000, 0xFFFFF), (0x100000, 0x10FFFF)]
_QUANTIFIER = re.compile(r"\{\d+(?:,\d*)?\}")
_GROUP_OPENING = re.compile(r"\(\?(?::|=|!|<=|<!|<[A-Za-z_][A-Za-z0-9_]*>)?")
_NAMED_REFERENCE = re.compile(r"\\k<[^>]*>")
_PROPERTY = re.compile(r"\\([pP])\{([^}]*)\}")
_HEX_ESCAPE = re.compile(r"x([0-9A-Fa-f]{2})|u([0-9A-Fa-f]{4})|u\{([0-9A-Fa-f]+)\}")
_ASCII_LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
# general categories without a quote, backslash or control character among their members
_SAFE_PROPERTIES = frozenset({"L", "Lu", "Ll", "Lt", "Lm", "Lo", "LC", "M", "Mn", "Mc", "Me", "N", "Nd", "Nl", "No",
                              "Z", "Zs", "Zl", "Zp", "Letter", "Separator", "Mark", "Number", "Lowercase_Letter",
                              "Uppercase_Letter", "Decimal_Number", "Space_Separator"})
_CLASS_SYNTAX = frozenset("\\]^-[")
_SYNTAX = frozenset("\\^$.|?*+()[]{}/")


class CharSet:
    """One pattern atom as code-point ranges, and the escaped characters whose JSON escapes it admits: all
    it names, but only `"` and `\\` where the pattern wrote what it leaves out (`.`, `[^,]`, `\\S`)."""

    def __init__(self, ranges: Ranges, escapable: Ranges | None = None, opaque: bool = False) -> None:
        self.ranges = _normalized(ranges)
        self.escapable = _intersect(self.ranges, _ESCAPED) if escapable is None else _normalized(escapable)
        self.opaque = opaque  # holds a Unicode property (`\\p{L}`) besides its ranges

    @classmethod
    def excluding(cls, ranges: Ranges) -> CharSet:
        kept = _minus(_UNIVERSE, ranges)
        return cls(kept, escapable=_intersect(kept, _QUOTE_AND_BACKSLASH))

    @classmethod
    def union(cls, items: list[CharSet]) -> CharSet:
        return cls([r for item in items for r in item.ranges], [r for item in items for r in item.escapable],
                   opaque=any(item.opaque for item in items))

    def needs_rewrite(self) -> bool:
        """Holds a character JSON escapes, or spans several UTF-8 segments (see _UTF8_SEGMENTS)."""
        return bool(_intersect(self.ranges, _ESCAPED)) or len(_segments(self.ranges)) > 1

    def json_text(self) -> str:
        """A regex over JSON text for one character of this set."""
        if self.opaque:
            raise ValueError("a character class that holds a Unicode property (\\p{...}) and a quote, backslash "
                             "or control character cannot be written as JSON text")
        plain = _minus(self.ranges, _ESCAPED)
        escaped = [c for lo, hi in self.escapable for c in range(lo, hi + 1)]
        options = (_class_texts(plain) + [_escape_text(c) for c in escaped if c in _SHORT]
                   + _unicode_escapes([c for c in escaped if c not in _SHORT]))
        if not options:
            raise ValueError("a character set of the pattern holds only control characters it does not name")
        return options[0] if len(options) == 1 and escaped == [] else "(?:" + "|".join(options) + ")"


def json_text_pattern(pattern: str) -> str:
    """`pattern` (ECMA-262, on the decoded value) as a regex over the string's JSON text, quotes excluded.

    Raises ValueError for what cannot be written so (a Unicode property that may hold a quote, a lone
    surrogate, a reversed range, a trailing backslash)."""
    return "".join(atom.json_text() if atom is not None and atom.needs_rewrite() else text
                   for atom, text in pattern_pieces(pattern))


def segmented_regex(regex: str) -> str:
    """A top-level `regex` (not a JSON string's) for xgrammar's regex automaton: each character set that spans
    several UTF-8 segments (`.`, `[^…]`, `\\s`, `\\S`) written as positive classes, one per segment, in ECMA's
    meaning (audit 31: xgrammar's `.` took a newline, `a.c` admitted `a\\nc`; its `\\s` lacked U+2000-U+200A
    and U+3000; its negated classes took surrogate bytes). Raises ValueError for a Unicode property, which
    xgrammar reads inside a class as the letters `p{L}` (`[\\p{L}]+` admitted `{`), and for a `^` or `$` it
    would ignore (has_inner_anchor)."""
    if has_inner_anchor(regex):
        raise ValueError("xgrammar ignores a `^` or `$` inside the regex (`a$b?` admitted `ab`)")
    out = []
    for atom, text in pattern_pieces(regex):
        if atom is not None and atom.opaque:
            raise ValueError(f"the regex's Unicode property in {text!r} is read by xgrammar as its letters")
        parts = _class_texts(atom.ranges) if atom is not None else []
        out.append("(?:" + "|".join(parts) + ")" if len(parts) > 1 else text)
    return "".join(out)


def ecma_dots(regex: str) -> str:
    """The regex with each `.` written as ECMA's `[^\\n\\r\\u2028\\u2029]`, for a library whose `.` leaves out `\\n`
    alone (llguidance: `a.c` admitted `a\\rc`). A regex the pieces cannot read is left as written."""
    try:
        return "".join(_ECMA_DOT if atom is not None and text == "." else text for atom, text in pattern_pieces(regex))
    except ValueError:
        return regex


_ECMA_DOT = "[^\\n\\r\\u2028\\u2029]"


def has_inner_anchor(regex: str) -> bool:
    """Whether a `^` or `$` stands anywhere but at the start or end of a top-level alternative (`a$b?`,
    `a(^b)?c`): xgrammar ignores those (audit 31: `a$b?` admitted `ab`)."""
    return any(text in ("^", "$") and not (text == "^" and i == 0 or text == "$" and i == len(pieces) - 1)
               for pieces in _alternatives(regex) for i, text in enumerate(pieces))


def whole_text_regex(regex: str) -> str:
    """A JSON-text regex (json_text_pattern's) as one anchored group matched against the string's whole
    text, as the grammar backends match it: `a|^b$` as `^(?:a|b)$`. An alternative anchored at one end only
    is a prefix or suffix test in ECMA-262 and stays one: `^https?://` may run on (`https://a.b/c`), where a
    whole match would force the value to be `https://` itself. One anchored at neither end is matched whole
    (`[0-9]+(\\.[0-9]+){3}` is a version number, not any text holding one)."""
    return "^(?:" + "|".join(_whole(pieces) for pieces in _alternatives(regex)) + ")$"


def _alternatives(regex: str) -> list[list[str]]:
    """The regex's top-level alternatives, each as its pieces' texts (an anchor's is `^` or `$`)."""
    alternatives: list[list[str]] = [[]]
    depth = 0
    for atom, text in pattern_pieces(regex):
        if atom is None and depth == 0 and text == "|":
            alternatives.append([])
            continue
        depth += (text.startswith("(") - (text == ")")) if atom is None else 0
        alternatives[-1].append(text)
    return alternatives


def _whole(pieces: list[str]) -> str:
    starts, ends = bool(pieces) and pieces[0] == "^", bool(pieces) and pieces[-1] == "$"
    body = "".join(pieces[starts:len(pieces) - ends])
    if starts and not ends:
        return body + _ANY_TEXT
    if ends and not starts:
        return _ANY_TEXT + body
    return body


def pattern_pieces(pattern: str) -> Iterator[tuple[CharSet | None, str]]:
    """The pattern's atoms in order, each with its text: a character set, or None for syntax (anchors,
    group openings and closings, `|`, quantifiers, assertions)."""
    i = 0
    while i < len(pattern):
        atom, text, i = _next_atom(pattern, i)
        yield atom, text


_LOOKAROUNDS = ("(?=", "(?!", "(?<=", "(?<!")
_WORD_BOUNDARIES = ("\\b", "\\B")


def without_assertions(pattern: str) -> str:
    """The pattern without its lookarounds (`(?=…)`, `(?!…)`, `(?<=…)`, `(?<!…)`) and word boundaries (`\\b`,
    `\\B`), which no grammar library here enforces (xgrammar ignored `(?!x)`, the others refuse them): a
    pattern that admits more, whose answers are checked against the pattern itself. A pattern the pieces
    cannot read is left as written (its backend says why)."""
    try:
        pieces = [text for _, text in pattern_pieces(pattern)]
    except ValueError:
        return pattern
    out: list[str] = []
    depth = 0  # the groups open inside a lookaround being dropped
    dropped = False  # the last piece was an assertion: a quantifier on it goes too
    for text in pieces:
        if depth:
            depth += text.startswith("(") - (text == ")")
            dropped = depth == 0
        elif text in _LOOKAROUNDS:
            depth = 1
        elif text in _WORD_BOUNDARIES or dropped and _is_quantifier(text):
            dropped = True
        else:
            out.append(text)
            dropped = False
    return "".join(out)


def has_assertions(pattern: str) -> bool:
    """Whether the pattern holds a lookaround or word boundary (see without_assertions)."""
    return without_assertions(pattern) != pattern


def _is_quantifier(text: str) -> bool:
    return text in ("?", "*", "+") or text.startswith("{")


def _next_atom(pattern: str, i: int) -> tuple[CharSet | None, str, int]:
    """The atom at `i`: its character set (None for syntax: anchors, groups, quantifiers), its text, and
    where the next begins."""
    ch = pattern[i]
    if ch == "\\":
        return _escape(pattern, i)
    if ch == "[":
        return _class(pattern, i)
    if ch == ".":
        return CharSet.excluding(_LINE_ENDS), ch, i + 1
    if ch == "(":
        opening = _GROUP_OPENING.match(pattern, i)
        end = opening.end() if opening else i + 1
        return None, pattern[i:end], end
    if ch == "{" and (quantifier := _QUANTIFIER.match(pattern, i)):
        return None, quantifier.group(), quantifier.end()
    if ch in "^$|?*+)":
        return None, ch, i + 1
    return _char(ord(ch)), ch, i + 1


def _escape(pattern: str, i: int, in_class: bool = False) -> tuple[CharSet | None, str, int]:
    if i + 1 >= len(pattern):
        raise ValueError(f"pattern {pattern!r} ends with a lone backslash")
    letter = pattern[i + 1]
    text = pattern[i:i + 2]
    if letter.lower() in _CLASS_ESCAPES:
        ranges = _CLASS_ESCAPES[letter.lower()]
        return (CharSet.excluding(ranges) if letter.isupper() else CharSet(ranges)), text, i + 2
    if letter == "b" and in_class:
        return _char(0x08), text, i + 2
    if letter in "pP":
        return _property(pattern, i)
    if letter in "bB123456789k":  # assertions and back-references: kept as written
        named = _NAMED_REFERENCE.match(pattern, i)
        return None, (named.group() if named else text), (named.end() if named else i + 2)
    if letter in _CHAR_ESCAPES:
        return _char(_CHAR_ESCAPES[letter]), text, i + 2
    if hex_code := _HEX_ESCAPE.match(pattern, i + 1):
        return _code_point(pattern, i, hex_code)
    if letter == "c" and i + 2 < len(pattern) and pattern[i + 2] in _ASCII_LETTERS:
        return _char(ord(pattern[i + 2]) % 32), pattern[i:i + 3], i + 3
    return _char(ord(letter)), text, i + 2


def _property(pattern: str, i: int) -> tuple[CharSet, str, int]:
    """`\\p{L}`: kept as written where it can hold no quote, backslash or control character (letters, marks,
    numbers, separators); anything else (`\\P{..}`, `\\p{P}`, a script, which may be Common) is refused."""
    found = _PROPERTY.match(pattern, i)
    if not found:
        raise ValueError(f"malformed Unicode property at {i} in pattern {pattern!r}")
    name = found.group(2).split("=")[-1]
    if found.group(1) == "P" or name not in _SAFE_PROPERTIES:
        raise ValueError(f"Unicode property {found.group()} in pattern {pattern!r} may hold a quote, backslash or "
                         "control character and cannot be written as JSON text by this backend")
    return CharSet([], opaque=True), found.group(), found.end()


def _code_point(pattern: str, i: int, hex_code: re.Match[str]) -> tuple[CharSet, str, int]:
    code = int(next(g for g in hex_code.groups() if g), 16)
    end = hex_code.end()
    low = _HEX_ESCAPE.match(pattern, end + 1) if pattern.startswith("\\u", end) else None
    if 0xD800 <= code <= 0xDBFF and low and low.group(2) and 0xDC00 <= int(low.group(2), 16) <= 0xDFFF:
        code = 0x10000 + ((code - 0xD800) << 10) + (int(low.group(2), 16) - 0xDC00)  # a surrogate pair
        end = low.end()
    if 0xD800 <= code <= 0xDFFF:
        raise ValueError(f"lone surrogate {pattern[i:end]} in pattern {pattern!r}")
    return _char(code), pattern[i:end], end


def _class(pattern: str, i: int) -> tuple[CharSet, str, int]:
    start = i
    i += 1
    negated = i < len(pattern) and pattern[i] == "^"
    i += negated
    items: list[CharSet] = []
    while i < len(pattern) and pattern[i] != "]":
        low, i = _class_item(pattern, i)
        if i + 1 < len(pattern) and pattern[i] == "-" and pattern[i + 1] != "]" and _single(low):
            high, after = _class_item(pattern, i + 1)
            if _single(high):
                lo, hi = low.ranges[0][0], high.ranges[0][0]
                if lo > hi:
                    raise ValueError(f"reversed range {pattern[start:after]!r} in pattern {pattern!r}")
                items.append(CharSet([(lo, hi)]))
                i = after
                continue
        items.append(low)
    if i >= len(pattern):
        raise ValueError(f"unterminated character class at {start} in pattern {pattern!r}")
    found = CharSet.union(items)
    if negated and found.opaque:
        raise ValueError(f"a negated class with a Unicode property in pattern {pattern!r} cannot be written as "
                         "JSON text by this backend")
    return (CharSet.excluding(found.ranges) if negated else found), pattern[start:i + 1], i + 1


def _class_item(pattern: str, i: int) -> tuple[CharSet, int]:
    if pattern[i] == "\\":
        item, _, after = _escape(pattern, i, in_class=True)
        return (item if item is not None else CharSet([])), after
    return _char(ord(pattern[i])), i + 1


def _single(item: CharSet) -> bool:
    return not item.opaque and len(item.ranges) == 1 and item.ranges[0][0] == item.ranges[0][1]


def _char(code: int) -> CharSet:
    return CharSet([(code, code)])


def _segments(ranges: Ranges) -> list[Ranges]:
    return [part for segment in _UTF8_SEGMENTS if (part := _intersect(ranges, [segment]))]


def _class_texts(ranges: Ranges) -> list[str]:
    """One positive class per UTF-8 segment the ranges touch (a lone character bare)."""
    return [_class_text(part) for part in _segments(ranges)]


def _class_text(ranges: Ranges) -> str:
    if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
        code = ranges[0][0]
        if code < 0x20 or 0x7F <= code < 0xA0:
            return _class_char(code)  # a control character as `\\x..`, never raw
        ch = chr(code)
        return "\\" + ch if ch in _SYNTAX else ch
    return "[" + "".join(_range_text(r) for r in ranges) + "]"


def _range_text(r: tuple[int, int]) -> str:
    lo, hi = r
    return _class_char(lo) if lo == hi else f"{_class_char(lo)}-{_class_char(hi)}"


def _class_char(code: int) -> str:
    if code < 0x20 or 0x7F <= code < 0xA0:
        return f"\\x{code:02x}"
    ch = chr(code)
    return "\\" + ch if ch in _CLASS_SYNTAX else ch


def _escape_text(code: int) -> str:
    """The regex for the JSON text of a character with a short escape: `\\"` for a quote, `\\t` for a tab."""
    letter = _SHORT[code]
    return "\\\\" + ("\\\\" if letter == "\\" else letter)


def _unicode_escapes(codes: list[int]) -> list[str]:
    """The regexes for the `\\u00XX` escapes of these control characters, one per high digit."""
    out = []
    for high in (0, 1):
        digits = "".join(f"{c & 15:x}" for c in codes if c >> 4 == high)
        if digits:
            out.append(f"\\\\u00{high}" + (digits if len(digits) == 1 else f"[{digits}]"))
    return out


def _normalized(ranges: Ranges) -> Ranges:
    out: Ranges = []
    for lo, hi in sorted(r for r in ranges if r[0] <= r[1]):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _intersect(a: Ranges, b: Ranges) -> Ranges:
    return _normalized([(max(x[0], y[0]), min(x[1], y[1])) for x in a for y in b])


def _minus(a: Ranges, b: Ranges) -> Ranges:
    out = _normalized(a)
    for lo, hi in _normalized(b):
        out = [piece for x in out for piece in ((x[0], min(x[1], lo - 1)), (max(x[0], hi + 1), x[1]))
               if piece[0] <= piece[1]]
    return out


# any run of JSON string text: a character JSON writes as it is, or a short escape
_ANY_TEXT = "(?:" + "|".join(_class_texts(_minus(_UNIVERSE, _ESCAPED)) + [r'\\["\\/bfnrt]']) + ")*"
