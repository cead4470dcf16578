"""Rules of a grammar that can never end: every expansion of them needs one of them again.

`root ::= "a" root` has no finite answer, and neither has a JSON schema whose object requires itself. Such a
rule, reachable from the root, is a state with no way out: xgrammar's jump-forward then follows its forced
text without end (`aaaa…`, `{"c": {"c": …`) until the process runs out of memory, and sampling can only run
to the token limit. Found here on the grammar's printed EBNF (xgrammar's `str(Grammar)`) by the classic
fixpoint: a rule is productive when one of its alternatives is made of productive parts only.

The reading is conservative: a construct it does not know makes the whole grammar pass unchecked, and the
built-in calls (`Regex(...)`, `TagDispatch(...)`) count as productive while the rules they name are checked.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<lit>"(?:[^"\\]|\\.)*")
  | (?P<cls>\[(?:[^\]\\]|\\.)*\])
  | (?P<rep>\{\s*-?\d+\s*(?:,\s*-?\d+\s*)?\})
  | (?P<define>::=)
  | (?P<name>[A-Za-z_][\w.\-]*)
  | (?P<op>[()|*+?=,])
""", re.VERBOSE | re.DOTALL)


class _Unreadable(Exception):
    """The text holds something this reading does not know: no verdict."""


@dataclass(frozen=True)
class _Node:
    kind: str  # "done" (always productive), "ref", "seq", "alt", "rep"
    parts: tuple["_Node", ...] = ()
    name: str = ""
    min_count: int = 0


_DONE = _Node("done")


def unending_rules(ebnf: str, root: str = "root") -> list[str]:
    """The rules reachable from `root` that have no finite expansion, in the order they are reached (empty
    where every one can end, or where the text cannot be read)."""
    try:
        rules, calls = _parse(_tokens(ebnf))
    except _Unreadable:
        return []
    if root not in rules:
        return []
    productive: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, body in rules.items():
            if name not in productive and _productive(body, productive):
                productive.add(name)
                changed = True
    return [name for name in _reachable(root, rules, calls) if name not in productive]


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    for m in _TOKEN.finditer(text):  # (one scan in C; a gap between two matches is text it cannot read)
        if m.start() != pos:
            raise _Unreadable(text[pos:pos + 20])
        pos = m.end()
        if m.lastgroup != "space":
            out.append((m.lastgroup, m.group()))
    if pos != len(text):
        raise _Unreadable(text[pos:pos + 20])
    return out


def _parse(tokens: list[tuple[str, str]]) -> tuple[dict[str, _Node], dict[str, set[str]]]:
    """Each rule's body, and the rule names each rule's calls mention (for reachability)."""
    starts = [i for i in range(len(tokens) - 1) if tokens[i][0] == "name" and tokens[i + 1][0] == "define"]
    if not starts or starts[0] != 0:
        raise _Unreadable("no rule")
    rules: dict[str, _Node] = {}
    calls: dict[str, set[str]] = {}
    for k, start in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else len(tokens)
        reader = _Reader(tokens[start + 2:end])
        rules[tokens[start][1]] = reader.alternatives()
        if reader.pos != len(reader.tokens):
            raise _Unreadable(tokens[start][1])
        calls[tokens[start][1]] = reader.called
    return rules, calls


class _Reader:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens, self.pos = tokens, 0
        self.called: set[str] = set()

    def peek(self, offset: int = 0) -> tuple[str, str] | None:
        i = self.pos + offset
        return self.tokens[i] if i < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise _Unreadable("unexpected end")
        self.pos += 1
        return token

    def alternatives(self) -> _Node:
        options = [self.sequence()]
        while self.peek() == ("op", "|"):
            self.take()
            options.append(self.sequence())
        return options[0] if len(options) == 1 else _Node("alt", tuple(options))

    def sequence(self) -> _Node:
        parts = []
        while (token := self.peek()) is not None and token not in (("op", "|"), ("op", ")")):
            parts.append(self.postfix(self.atom()))
        return _DONE if not parts else parts[0] if len(parts) == 1 else _Node("seq", tuple(parts))

    def atom(self) -> _Node:
        kind, text = self.take()
        if kind in ("lit", "cls"):
            return _DONE
        if kind == "name":
            if self.peek() == ("op", "("):  # a built-in call: Regex("..."), TagDispatch(("tag", rule), ...)
                self.called |= self.skip_group(names=True)
                return _DONE
            return _Node("ref", name=text)
        if (kind, text) == ("op", "("):
            if self.peek() == ("op", "="):  # a lookahead: it reads ahead, it writes nothing
                self.pos -= 1
                self.skip_group(names=False)
                return _DONE
            inner = self.alternatives()
            if self.take() != ("op", ")"):
                raise _Unreadable("unclosed group")
            return inner
        raise _Unreadable(text)

    def postfix(self, node: _Node) -> _Node:
        while (token := self.peek()) is not None:
            kind, text = token
            if (kind, text) in (("op", "*"), ("op", "?")):
                node = _Node("rep", (node,), min_count=0)
            elif (kind, text) == ("op", "+"):
                node = _Node("rep", (node,), min_count=1)
            elif kind == "rep":
                node = _Node("rep", (node,), min_count=int(text.strip("{} ").split(",")[0]))
            else:
                return node
            self.take()
        return node

    def skip_group(self, names: bool) -> set[str]:
        """Past a parenthesised group (strings and classes are single tokens, so their parentheses do not
        count); the names in it, but keyword names (`loop_after_dispatch=true`)."""
        if self.take() != ("op", "("):
            raise _Unreadable("expected (")
        depth, found = 1, set()
        while depth:
            kind, text = self.take()
            if (kind, text) == ("op", "("):
                depth += 1
            elif (kind, text) == ("op", ")"):
                depth -= 1
            elif names and kind == "name" and self.peek() != ("op", "="):
                found.add(text)
        return found


def _productive(node: _Node, productive: set[str]) -> bool:
    if node.kind == "done":
        return True
    if node.kind == "ref":
        return node.name in productive
    if node.kind == "seq":
        return all(_productive(p, productive) for p in node.parts)
    if node.kind == "alt":
        return any(_productive(p, productive) for p in node.parts)
    return node.min_count <= 0 or _productive(node.parts[0], productive)


def _refs(node: _Node) -> list[str]:
    if node.kind == "ref":
        return [node.name]
    return [name for part in node.parts for name in _refs(part)]


def _reachable(root: str, rules: dict[str, _Node], calls: dict[str, set[str]]) -> list[str]:
    seen, order, todo = {root}, [], [root]
    while todo:
        name = todo.pop(0)
        order.append(name)
        for ref in _refs(rules[name]) + sorted(calls.get(name, ())):
            if ref in rules and ref not in seen:
                seen.add(ref)
                todo.append(ref)
    return order
