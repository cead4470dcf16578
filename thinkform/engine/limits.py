"""Per-request limits, checked before anything parses, compiles or runs a request.

Each limit is a flag of EngineArgs; a breach is a ValueError (ConstraintError for constraints) whose
message names the flag, so both the servers (400) and the offline API report it the same way.

Why each exists: a deep schema overflows a parser's stack, a huge one stalls the compiler, and a
repetition count (`a{99999999999}`, `minItems: 10**9` of a constant, a grammar whose rules double each
other) makes the grammar library build the text it forces — jump-forward asks for it whole — until
the process runs out of memory.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Mapping

from thinkform.structured.spec import CONSTRAINT_FIELDS, ConstraintError

_OPENERS, _CLOSERS = "([{", ")]}"
_QUANTIFIER = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")
_RULE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*::=", re.MULTILINE)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_FORCING_KEYS = ("minItems", "minLength", "minProperties", "minContains")
_HUGE = 10**18  # stands for any count too long to matter


@dataclass(frozen=True)
class RequestLimits:
    max_new_tokens: int = 32768
    max_constraint_bytes: int = 512 * 2**10
    max_constraint_depth: int = 64
    max_constraint_repeat: int = 100000

    @classmethod
    def from_args(cls, args: Any) -> "RequestLimits":
        return cls(args.max_new_tokens_limit, args.max_constraint_bytes, args.max_constraint_depth,
                   args.max_constraint_repeat)

    def check_max_new_tokens(self, value: int, name: str = "sampling_params.max_new_tokens") -> None:
        if value > self.max_new_tokens:
            raise ValueError(f"{name}: {value} is more than this server's limit of {self.max_new_tokens} "
                             "(--max-new-tokens-limit)")

    def check_constraints(self, fields: Mapping[str, Any]) -> None:
        """Nesting first (so nothing below can recurse too deep), then size, then repetition."""
        for name in CONSTRAINT_FIELDS:
            value = fields.get(name)
            if value is None or isinstance(value, type):  # a pydantic class: the offline caller's own code
                continue
            self._check_depth(name, value)
            self._check_size(name, value)
            self._check_repeat(name, value)

    def _check_depth(self, name: str, value: Any) -> None:
        depth = nesting_depth(value, json_text=name in ("json_schema", "structural_tag"),
                              stop_after=self.max_constraint_depth)
        if depth > self.max_constraint_depth:
            raise ConstraintError(f"{name}: nested deeper than this server's limit of {self.max_constraint_depth} "
                                  "levels (--max-constraint-depth)", field=name)

    def _check_size(self, name: str, value: Any) -> None:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        size = len(text.encode("utf-8", "replace"))
        if size > self.max_constraint_bytes:
            raise ConstraintError(f"{name}: {size} bytes is more than this server's limit of "
                                  f"{self.max_constraint_bytes} bytes (--max-constraint-bytes)", field=name)

    def _check_repeat(self, name: str, value: Any) -> None:
        if name == "regex" and isinstance(value, str):
            forced = pattern_repeat(value)
        elif name == "ebnf" and isinstance(value, str):
            forced = grammar_repeat(value)
        else:
            forced = schema_repeat(_as_json(value))
        if forced > self.max_constraint_repeat:
            raise ConstraintError(f"{name}: its repetition counts can force about {min(forced, _HUGE)} characters, "
                                  f"more than this server's limit of {self.max_constraint_repeat} "
                                  "(--max-constraint-repeat)", field=name)


def _as_json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)  # safe: depth was checked first
        except json.JSONDecodeError:
            return None  # the constraint parser reports it
    return value


# ---- nesting ------------------------------------------------------------------------------------------

def nesting_depth(value: Any, json_text: bool = False, stop_after: int | None = None) -> int:
    """How deeply `value` nests: containers of a parsed JSON value, brackets of a text (escapes and,
    for JSON text, string contents skipped). Iterative, so no input can exhaust the stack; stops
    counting once past `stop_after`."""
    if isinstance(value, str):
        return _text_depth(value, json_text)
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, (dict, list, tuple)):
            continue
        deepest = max(deepest, depth)
        if stop_after is not None and deepest > stop_after:
            break
        stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _text_depth(text: str, json_text: bool) -> int:
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif in_string:
            in_string = ch != '"'
        elif json_text and ch == '"':
            in_string = True
        elif ch in _OPENERS:
            depth += 1
            deepest = max(deepest, depth)
        elif ch in _CLOSERS:
            depth = max(0, depth - 1)
    return deepest


# ---- repetition ---------------------------------------------------------------------------------------

def _count(match: re.Match[str]) -> int:
    digits = match.group(1)
    return _HUGE if len(digits) > 18 else int(digits)  # the lower bound is what a pattern forces


def pattern_repeat(text: str, rule_size: Mapping[str, int] | None = None) -> int:
    """Upper estimate of the characters a regex (or EBNF rule body, with `rule_size` for references)
    can force: a quantifier multiplies the atom or group before it; siblings add; of alternatives, the
    longest counts (one is taken: a choice among 20,000 names forces no more than the longest name)."""
    totals, longest, last, i = [0], [0], 0, 0  # per open group: this alternative so far, the longest before
    while i < len(text):
        ch = text[i]
        size, step = 1, 1
        if ch == "\\":
            step = 2
        elif ch == "[":
            step = _class_end(text, i) - i
        elif ch == '"' and rule_size is not None:
            end = _string_end(text, i)
            size, step = max(1, end - i - 2), end - i
        elif ch == "(":
            totals.append(0)
            longest.append(0)
            i += 1
            continue
        elif ch == ")":
            inner = max(totals.pop(), longest.pop()) if len(totals) > 1 else 0
            totals[-1] = min(_HUGE, totals[-1] + inner)
            last, i = inner, i + 1
            continue
        elif ch == "|":
            longest[-1], totals[-1] = max(longest[-1], totals[-1]), 0
            i += 1
            continue
        elif ch == "{" and (m := _QUANTIFIER.match(text, i)):
            count = _count(m)
            totals[-1] = min(_HUGE, totals[-1] + last * max(0, count - 1))
            last, i = min(_HUGE, last * count), m.end()
            continue
        elif rule_size is not None and (m := _NAME.match(text, i)):
            size, step = rule_size.get(m.group(0), 1), m.end() - i
        elif ch in " \t\r\n*+?":
            i += 1
            continue
        totals[-1] = min(_HUGE, totals[-1] + size)
        last, i = size, i + step
    while len(totals) > 1:  # groups left open
        inner = max(totals.pop(), longest.pop())
        totals[-1] = min(_HUGE, totals[-1] + inner)
    return min(_HUGE, max(totals[0], longest[0]))


def _class_end(text: str, start: int) -> int:
    i = start + 1
    if i < len(text) and text[i] == "^":
        i += 1
    if i < len(text) and text[i] == "]":
        i += 1
    while i < len(text) and text[i] != "]":
        i += 2 if text[i] == "\\" else 1
    return min(len(text), i + 1)


def _string_end(text: str, start: int) -> int:
    i = start + 1
    while i < len(text) and text[i] != '"':
        i += 2 if text[i] == "\\" else 1
    return min(len(text), i + 1)


def grammar_repeat(text: str) -> int:
    """pattern_repeat over an EBNF grammar, a rule reference counting as its rule's size, so rules that
    double each other ("billion laughs") are caught; a reference back into a rule being sized (recursion)
    counts once. Depth-first with an explicit stack: no grammar can exhaust Python's."""
    starts = list(_RULE.finditer(text))
    bodies = {m.group(1): text[m.end(): starts[k + 1].start() if k + 1 < len(starts) else len(text)]
              for k, m in enumerate(starts)}
    refs = {name: [n for n in _NAME.findall(body) if n in bodies] for name, body in bodies.items()}
    sizes: dict[str, int] = {}
    for root in bodies:
        if root in sizes:
            continue
        on_path, stack = {root}, [(root, iter(refs[root]))]
        while stack:
            name, children = stack[-1]
            child = next((c for c in children if c not in sizes and c not in on_path), None)
            if child is not None:
                on_path.add(child)
                stack.append((child, iter(refs[child])))
                continue
            stack.pop()
            on_path.discard(name)
            sizes[name] = pattern_repeat(bodies[name], sizes)
    return max(sizes.values(), default=0)


def schema_repeat(schema: Any) -> int:
    """The largest product of min* counts along one path of a JSON schema (a `minItems` of an array of
    objects with `minItems` ...), patterns included."""
    worst, stack = 0, [(schema, 1)]
    while stack:
        node, factor = stack.pop()
        if isinstance(node, list):
            stack.extend((child, factor) for child in node)
            continue
        if not isinstance(node, dict):
            continue
        here = factor
        for key in _FORCING_KEYS:
            value = node.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 1:
                here = min(_HUGE, here * value)
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            worst = max(worst, min(_HUGE, here * pattern_repeat(pattern)))
        worst = max(worst, here)
        stack.extend((child, here) for child in node.values() if isinstance(child, (dict, list)))
    return worst
