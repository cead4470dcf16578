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
# its characters with the first, which lets raw tabs and other control characters in: controls out (escapes:
# see _bounded_strings). An email's quoted local part writes its quoted pair as `\` and the character
# (`"\q"@x.y`: `\q` is no JSON escape): the backslash now as `\\`, a quote or backslash after it escaped as well.
_RAW_COUNTED_CHARACTER = r' ::= (([^\"\\\r\n]))'
_MENDED_RULES = {
    _RAW_COUNTED_CHARACTER: r' ::= (([^\0-\x1f\"\\]))',
    r'(("\\" [ -~]) | ([ !#-[\]-~]))': r'(("\\" "\\" (([ !#-[\]-~]) | ("\\" [\"\\]))) | ([ !#-[\]-~]))',
    _ANY_ESCAPED_UNIT: _ESCAPED_CHARACTER,
}

# A length-bounded string's characters, a JSON escape counting as the one character it decodes to (JSON Schema
# counts the decoded string's code points; a surrogate pair's escape is one). xgrammar 0.2.8 counts
# `characters{lo, hi}` fast only where `characters` is one character class: it writes the count as a chain of
# rules (`r_k ::= "" | [c] r_k+1`) whose cached masks see a token through to the chain's end. Given an
# alternation with the escapes it refers to that rule at each step, and a token crossing it is checked at fill
# time: 75-125 ms a mask for maxLength 80, 400-870 ms for 1000. So the chain is written here with the escapes
# inline in each link (maxLength 80 on the Qwen vocabulary: 0.41 ms a mask, compile 4.8 s, as the escape-free
# chain's 0.42 ms and 5.0 s). Above _CHAINED_LENGTH xgrammar counts with a repetition instead, which no
# formulation with escapes kept fast (a hand-written one 70-500 ms, blocks of 64 linked chains up to 82 ms near
# each block's end), and a chain's compile grows ~60 ms a link: those strings keep xgrammar's escape-free count
# (llguidance admits escapes there).
_CHAINED_LENGTH = 128
_COUNTED_PLAIN = r'[^\0-\x1f\"\\]'
_COUNTED_ESCAPES = (r'"\\" [\"\\/bfnrt]', f'"\\\\" "u" [0-9A-Ca-cEFef] {_HEX} {_HEX} {_HEX}',
                    f'"\\\\" "u" [Dd] [0-7] {_HEX} {_HEX}',
                    f'"\\\\" "u" [Dd] [89ABab] {_HEX} {_HEX} "\\\\" "u" [Dd] [C-Fc-f] {_HEX} {_HEX}')
_COUNTED_REF = re.compile(r"\b(\w+)\{(\d+), (-?\d+)\}")
# the forms xgrammar writes a string of at most one character in, without the count: (low, high) of each
_ONE_CHARACTER_FORMS = {r' ::= ("" | ([^\"\\\r\n]))': (0, 1), r'"\"" [^\"\\\r\n] "\""': (1, 1)}
_UNCOUNTED_REST = "tf_string_rest"  # the characters after a minLength's, as many as come
_UNCOUNTED_REST_RULE = (f"{_UNCOUNTED_REST} ::= (\"\" | ({_COUNTED_PLAIN} {_UNCOUNTED_REST}) | "
                        + " | ".join(f"({e} {_UNCOUNTED_REST})" for e in _COUNTED_ESCAPES) + ")")


# An object's other property names are strings that are none of its listed names, which xgrammar checks on
# the written text, one character of a listed name at a time: an escape there (`"\u0069d"`, or `"\/a"` for `/a`)
# spelled a listed name past it with any value (`{"\u0069d": "zz"}` for an integer `id`). An escape where the
# name may still be a listed one takes no `\u` or `\/` here (the others write no letter); once a character no
# listed name has there is written, the name is none of them whatever follows, and any escape is taken
# (`"caf\u00e9"` beside `id`).
_NODE_ESCAPE = r'("\\" basic_escape basic_string_sub)'  # an escape at a trie node, then any string
_NAME_RULES = r"""
tf_name_escape ::= [\"\\bfnrt]
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
    if not regexes and not any(raw in text for raw in (*_MENDED_RULES, *_ONE_CHARACTER_FORMS)):
        return unambiguous_hex_escapes(text)
    text = _bounded_strings(text)
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


def _bounded_strings(text: str) -> str:
    """The grammar with each length-bounded string's `characters{lo, hi}` (hi -1: unbounded) written as a chain
    of rules that take JSON escapes (see _CHAINED_LENGTH), where its bounds are at most _CHAINED_LENGTH."""
    counted = {line.split(" ::= ", 1)[0] for line in text.split("\n") if line.endswith(_RAW_COUNTED_CHARACTER)}
    chains: dict[tuple[int, int], str] = {}

    def chained(m: re.Match[str]) -> str:
        name, low, high = m.group(1), int(m.group(2)), int(m.group(3))
        if name not in counted or max(low, high) > _CHAINED_LENGTH or (high != -1 and high < low):
            return m.group(0)
        if (low, high) not in chains:
            chains[(low, high)] = f"tf_counted_{low}_{'n' if high == -1 else high}"
        return f"{chains[(low, high)]}_0"

    lines = text.split("\n")
    for i, line in enumerate(lines):
        if "{" in line:
            lines[i] = _COUNTED_REF.sub(chained, line)
        for form, (low, high) in _ONE_CHARACTER_FORMS.items():
            if form in lines[i]:
                chains[(low, high)] = name = f"tf_counted_{low}_{high}"
                chained_form = f" ::= (({name}_0))" if form.startswith(" ::= ") else f'"\\"" {name}_0 "\\""'
                lines[i] = lines[i].replace(form, chained_form)
    if not chains:
        return text
    rules = [rule for (low, high), prefix in chains.items() for rule in _chain_rules(prefix, low, high)]
    if any(high == -1 for _, high in chains):
        rules.append(_UNCOUNTED_REST_RULE)
    return "\n".join(lines).rstrip("\n") + "\n" + "\n".join(rules) + "\n"


def _chain_rules(prefix: str, low: int, high: int) -> list[str]:
    """Rules `prefix_k` (k characters written) for `low` to `high` characters (high -1: no upper bound), each
    character plain or one JSON escape."""
    links = low if high == -1 else high
    rules = []
    for k in range(links):
        rest = f" {prefix}_{k + 1}" if k + 1 < links else (f" {_UNCOUNTED_REST}" if high == -1 else "")
        alternatives = [f"({_COUNTED_PLAIN}{rest})"] + [f"({e}{rest})" for e in _COUNTED_ESCAPES]
        if k >= low:
            alternatives.insert(0, '""')
        rules.append(f"{prefix}_{k} ::= ({' | '.join(alternatives)})")
    if links == 0:
        rules.append(f'{prefix}_0 ::= ("")' if high != -1 else f"{prefix}_0 ::= ({_UNCOUNTED_REST})")
    return rules


def _other_names_unescaped(text: str) -> str:
    """The grammar with the escapes an object's other property names (`*_addl_key*`) write where they may still
    spell a listed name on _NAME_RULES (the rest of such a name, once it differs, is any string)."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if "_addl_key" in line.split(" ::= ", 1)[0]:
            lines[i] = line.replace(_NODE_ESCAPE, _NODE_ESCAPE.replace("basic_escape", "tf_name_escape"))
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
