"""A JSON schema's xgrammar grammar, with its string `pattern`s written the way xgrammar reads them right.

xgrammar 0.2.8 gets a schema's strings wrong in several ways. It writes the pattern's text raw where the pattern
holds a quote, backslash or non-ASCII letter (`^café-.*-fin$` admitted `café-a"b-fin`, which no parser
reads). And its regex automaton misreads an optional group: `^[a-z]([a-z0-9-]*[a-z])?$` (a DNS label)
admitted `go-`, `^a(b*c)?$` admitted `ab` (78 of 750 random regexes over a, b, c with groups answered
wrong; none once each `(A)?` was written `(A|)`, which means the same). So each pattern goes into xgrammar's
schema converter as a plain marker, and its marker comes back out of the printed grammar as a regex over the
string's whole JSON text (json_string_pattern: a pattern anchored at one end only is a prefix or suffix
test, as in ECMA-262) with no optional group. (xgrammar's regex-to-grammar converter
is right on both, but its rules for `.{1,255}` took 150 ms a mask.) Third, a string with minLength or
maxLength admitted raw control characters (a tab: invalid JSON), and an email's quoted local part invalid
escapes (`\\q`), and any string a lone surrogate's escape (`\\udfee`, no character); those rules are
mended in the printed grammar.
"""
from __future__ import annotations

import json
import re
from typing import Any

import xgrammar as xgr

from thinkform.structured.ecma_regex import map_patterns
from thinkform.structured.json_string_pattern import json_text_pattern, pattern_pieces, whole_text_regex

_HEX = "[A-Fa-f0-9]"
# A string's `\u` escape: xgrammar takes any four hex digits, a lone surrogate (`"\udfee"`) too, which decodes to
# no character (Python's json gives a str that cannot be encoded; stricter parsers refuse it). Ours: a
# code point outside D800-DFFF, or a high surrogate followed by the low one it pairs with.
_ANY_ESCAPED_UNIT = f'("u" {_HEX} {_HEX} {_HEX} {_HEX})'
_ESCAPED_CHARACTER = (f'("u" [0-9A-Ca-cEFef] {_HEX} {_HEX} {_HEX}) | ("u" [Dd] [0-7] {_HEX} {_HEX}) | '
                      f'("u" [Dd] [89ABab] {_HEX} {_HEX} "\\\\" "u" [Dd] [C-Fc-f] {_HEX} {_HEX})')
# Rule bodies of xgrammar's that write invalid JSON text, and ours. A string with minLength / maxLength counts
# its characters with the first, which lets raw tabs and other control characters in: controls out (escapes
# stay out too: an alternation with them under `{50, 32767}` took 800 ms a mask). An email's quoted local
# part writes its quoted pair as `\` and the character (`"\q"@x.y`: `\q` is no JSON escape): the
# backslash now as `\\`, a quote or backslash after it escaped as well.
_MENDED_RULES = {
    r' ::= (([^\"\\\r\n]))': r' ::= (([^\0-\x1f\"\\]))',
    r'(("\\" [ -~]) | ([ !#-[\]-~]))': r'(("\\" "\\" (([ !#-[\]-~]) | ("\\" [\"\\]))) | ([ !#-[\]-~]))',
    _ANY_ESCAPED_UNIT: _ESCAPED_CHARACTER,
}


# An object's other property names are strings that are none of its listed names, which xgrammar checks on
# the written text: `"\u0069d"` (or `"\/a"` for `/a`) spelled a listed name past it with any value (`{"\u0069d":
# "zz"}` for an integer `id`). Those names take no `\u` or `\/` escape here (the others write no letter).
_NAME_RULES = r"""
tf_name_escape ::= [\"\\bfnrt]
tf_name_string_sub ::= (("\"") | ([^\0-\x1f\"\\\r\n] tf_name_string_sub) | ("\\" tf_name_escape tf_name_string_sub)) (=([ \n\r\t]* [,}\]:]))
"""


# a `\xHH` escape (not an escaped backslash before `x`)
_HEX_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\x([0-9a-fA-F]{2})")


def unambiguous_hex_escapes(text: str) -> str:
    r"""`\xHH` escapes written `\u00HH`: xgrammar reads every hex digit after `\x` (`\x41b` as U+041B, and
    prints `ü` as `\xfc`, so `Zurück` read back as `Zur\u0fcck`), where ECMA-262 and EBNF writers mean two."""
    return _HEX_ESCAPE.sub(r"\1\\u00\2", text)


def json_schema_grammar(schema: dict[str, Any], **kwargs: Any) -> str:
    r"""`xgr.Grammar.from_json_schema(schema, **kwargs)` as EBNF text, every pattern written as above and its
    `\xHH` escapes unambiguous. Text, not the Grammar: xgrammar compiles a Grammar object through its own
    printing, which spells `ü` as `\xfc` and reads `Zurück` back as `Zur\u0fcck` (an enum's value changed,
    constraint_satisfied true)."""
    marked, regexes = _marked_patterns(schema)
    grammar = xgr.Grammar.from_json_schema(json.dumps(marked), **kwargs)
    text = str(grammar)
    if not regexes and not any(raw in text for raw in _MENDED_RULES):
        return unambiguous_hex_escapes(text)
    for raw, mended in _MENDED_RULES.items():
        text = text.replace(raw, mended)
    text = _other_names_unescaped(text)
    for marker, regex in regexes.items():
        quoted = regex.replace("\\", "\\\\").replace('"', '\\"')
        text = text.replace(f'Regex("{marker}", json_string=true)', f'Regex("{quoted}")')
    if any(f'"{marker}"' in text for marker in regexes):
        raise RuntimeError("xgrammar wrote a pattern in a form thinkform does not know; "
                           "use --grammar-backend llguidance for this schema")
    return unambiguous_hex_escapes(text)


def _other_names_unescaped(text: str) -> str:
    """The grammar with the rules of an object's other property names (`*_addl_key*`) on _NAME_RULES."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if "_addl_key" in line.split(" ::= ", 1)[0]:
            lines[i] = line.replace("basic_escape basic_string_sub", "tf_name_escape tf_name_string_sub").replace(
                "basic_string_sub", "tf_name_string_sub")
    mended = "\n".join(lines)
    return mended + _NAME_RULES if mended != text else text


def without_optional_groups(pattern: str) -> str:
    """The same pattern with each optional group `(A)?` (or lazy `(A)??`) written `(A|)`."""
    out: list[str] = []
    group_closed = made_optional = False
    for atom, text in pattern_pieces(pattern):
        if text == "?" and (group_closed or made_optional):
            if group_closed:
                out[-1] = "|)"
            group_closed, made_optional = False, not made_optional  # a second `?` is laziness: dropped
            continue
        out.append(text)
        group_closed, made_optional = atom is None and text == ")", False
    return "".join(out)


def _marked_patterns(schema: Any) -> tuple[Any, dict[str, str]]:
    """The schema with a marker for each pattern, and each marker's regex over the JSON text."""
    regexes: dict[str, str] = {}
    written = json.dumps(schema)
    prefix = next(f"tfpattern{k}n" for k in range(len(written) + 1) if f"tfpattern{k}n" not in written)

    def mark(pattern: str) -> str:
        marker = f"{prefix}{len(regexes)}"
        regexes[marker] = whole_text_regex(json_text_pattern(without_optional_groups(pattern)))
        return marker

    return map_patterns(schema, mark), regexes
