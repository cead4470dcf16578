"""The fixed strings of a regex or EBNF grammar, or of a JSON schema's string patterns, for the ending search.

Inside a loop whose class holds the letters of what ends it (`<answer>.*</answer>`, `(\\w+ )+done`), every
byte leaves the mask as it was: no single byte tells the search that `</answer>` leads out, and spelling it
byte by byte from the byte classes' representatives is hopeless. The grammar's own text says it: its
literal runs are tried whole (ending.py), first where one ends the answer. A JSON string whose `pattern` is
such a loop (`^.*END$`) is the same inside the JSON: its runs are tried as the JSON text spells them.
"""
from __future__ import annotations

import json
import re
from typing import Any

from thinkform.structured.spec import Constraint, json_tags, tag_grammar

MAX_LITERALS = 16  # tried whole at each step of the search's greedy way: a few accepts each
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


def grammar_literals(constraint: Constraint) -> tuple[bytes, ...]:
    """The literal runs of two or more bytes in a regex or EBNF constraint's source, in source order (the
    last MAX_LITERALS: a grammar's closing text comes late in it); () for other kinds."""
    kind, source = constraint.kind, constraint.source
    if kind == "structural_tag":  # one whose whole format is a grammar or a regex (pythonic tool calls)
        kind, source = tag_grammar(constraint.data()) or (kind, source)
    if kind == "regex":
        runs = _regex_runs(source)
    elif kind == "ebnf":
        runs = [text for text in map(_unquoted, _QUOTED.findall(source)) if text]
    elif kind in ("json_schema", "structural_tag"):  # a string's pattern, written inside JSON text
        schemas = [constraint.data()] if kind == "json_schema" else [s for _, _, s in json_tags(constraint.data())]
        runs = [json.dumps(run, ensure_ascii=False)[1:-1] for schema in schemas for pattern in _patterns(schema)
                for run in _regex_runs(pattern)]
    else:
        return ()
    data = [text.encode("utf-8") for text in runs]
    return tuple(d for d in data if len(d) >= 2)[-MAX_LITERALS:]


def closing_candidates(literals: tuple[bytes, ...]) -> list[bytes]:
    """What may end an answer at once, shortest first: the grammar's remaining fixed text (each suffix of its
    literals in order: `</a><b></b>` out of the `.*` of `<a>.*</a><b>.*</b>`), then each literal alone."""
    suffixes = [b"".join(literals[k:]) for k in reversed(range(len(literals)))]
    out: list[bytes] = []
    for text in sorted(suffixes, key=len) + sorted(literals, key=len):
        if text not in out:
            out.append(text)
    return out


_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_DATA = ("pattern", "enum", "const", "default", "examples")  # not schemas: values, whose text is data


def _patterns(schema: Any) -> list[str]:
    """Every `pattern` of a JSON schema, nested ones included, in document order (a property may be named
    `pattern` or `enum`: the maps of schemas are walked by value)."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str):
                found.append(node["pattern"])
            for key, value in node.items():
                if key in _SCHEMA_MAPS and isinstance(value, dict):
                    for sub in value.values():
                        walk(sub)
                elif key not in _DATA:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(schema)
    return found


def _unquoted(body: str) -> str | None:
    try:
        return json.loads(f'"{body}"')
    except json.JSONDecodeError:
        return None


def _regex_runs(pattern: str) -> list[str]:
    """Runs of consecutive literal characters in the parsed pattern, in source order; [] where Python's
    parser does not read the pattern (another dialect's syntax: the search goes on without them)."""
    import re._parser as sre_parse  # the stdlib's regex parser: the tree `re` compiles from

    try:
        tree = sre_parse.parse(pattern)
    except (re.error, RecursionError, OverflowError):
        return []
    runs: list[str] = []
    _walk(tree, runs, sre_parse)
    return runs


def _walk(items: Any, runs: list[str], sre: Any) -> None:
    """Literal runs of `items` into `runs`; a group of literal alternatives continues the run before it in each
    of its ways (`\\.(com|org)`: `.com` and `.org`, the text that leaves `[a-z.]+` behind)."""
    current = [""]  # the run being read, in each way the alternatives so far allow
    for op, arg in items:
        if op is sre.LITERAL:
            current = [run + chr(arg) for run in current]
            continue
        ways = _alternatives(op, arg, sre)
        if ways is not None and len(current) * len(ways) <= MAX_LITERALS:
            current = [run + way for run in current for way in ways]
            continue
        runs.extend(run for run in current if run)
        current = [""]
        if op is sre.SUBPATTERN:
            _walk(arg[-1], runs, sre)
        elif op is sre.BRANCH:
            for branch in arg[1]:
                _walk(branch, runs, sre)
        elif op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
            _walk(arg[2], runs, sre)
        elif op in (sre.ASSERT, sre.ASSERT_NOT):
            _walk(arg[1], runs, sre)
    runs.extend(run for run in current if run)


def _alternatives(op: Any, arg: Any, sre: Any) -> list[str] | None:
    """The strings a group of literals, or of literal alternatives, stands for (`(com|org)`); None for any
    other item."""
    if op is sre.SUBPATTERN:
        inner = list(arg[-1])
        if len(inner) == 1 and inner[0][0] is sre.BRANCH:
            op, arg = inner[0]
        else:
            text = _literal_text(inner, sre)
            return None if text is None else [text]
    if op is not sre.BRANCH:
        return None
    ways = [_literal_text(list(branch), sre) for branch in arg[1]]
    return None if any(w is None for w in ways) else ways  # type: ignore[return-value]


def _literal_text(items: list[Any], sre: Any) -> str | None:
    if not all(op is sre.LITERAL for op, _ in items):
        return None
    return "".join(chr(arg) for _, arg in items)
