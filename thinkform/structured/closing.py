"""Budget closing, the fallback: a JSON answer about to run out of `max_new_tokens` is steered to its end.

A grammar bounds what may be written, not how long: under the seed's `"name": {"pattern": "^\\w+$"}` the
embedded model wrote `"Nova_Larsen_Kvart_2023_2024_2025_…` until `max_new_tokens` cut it, and the user got
no JSON at all. The gate first looks for a whole ending and appends it (ending.py). Where that search
finds none within its limits, and once the tokens left fall to the closing reserve, the gate narrows each
step's mask (never beyond what the grammar allows) to the first non-empty tier of:

1. EOS, where the grammar may end;
2. inside a string, tokens made only of `"`, `}`, `]` (and whitespace) that begin with its closing quote
   (the string's own `}` and `]` are text: they would be written into it, audit 29's `"b": "]`);
3. tokens made only of `"`, `}`, `]` (and whitespace): closing strings, objects, arrays;
4. tokens made only of those, `,`, `:` and `0`: the shortest way through a required key's colon or a
   required number.

Where no tier is allowed (the middle of a required key's name, say) the grammar's mask stands, and jump-
forward writes forced keys without sampling. The answer then arrives with `finish_reason` "stop" and its
values as far as the model got, instead of being cut off invalid.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from thinkform.structured.bitmask import narrow_unless_empty, only_mask

_WHITESPACE = b" \t\n\r"
_CLOSERS = b'"}]'
_SHORTEST = b'"}],:0'


def closing_reserve(max_new_tokens: int) -> int:
    """Tokens before the end of the budget at which closing starts: min(32, max_new_tokens // 4)."""
    return min(32, max_new_tokens // 4)


def _made_of(data: bytes, allowed: bytes) -> bool:
    """Only `allowed` bytes and whitespace, and not only whitespace."""
    return bool(data.strip(_WHITESPACE)) and not data.translate(None, allowed + _WHITESPACE)


class ClosingRules:
    """Per vocabulary: the keep masks of the tiers (immutable, shared by all requests)."""

    def __init__(self, token_bytes: Sequence[bytes], eos_token_ids: Sequence[int]) -> None:
        vocab = len(token_bytes)
        words = (vocab + 31) // 32
        self._eos = only_mask(vocab, words, eos_token_ids).numpy()
        self._quote_first = only_mask(vocab, words, [i for i, t in enumerate(token_bytes) if _made_of(t, _CLOSERS)
                                                     and t.lstrip(_WHITESPACE).startswith(b'"')]).numpy()
        self._tiers = [only_mask(vocab, words, [i for i, t in enumerate(token_bytes) if _made_of(t, chars)]).numpy()
                       for chars in (_CLOSERS, _SHORTEST)]

    def restrict(self, words: np.ndarray, may_end: bool, in_string: bool = False) -> None:
        """Narrow a row's packed words to the first tier it allows anything of; leave it as it is otherwise.
        `in_string`: the answer is inside a JSON string (not just after a backslash)."""
        for keep in ([self._eos] if may_end else []) + ([self._quote_first] if in_string else []) + self._tiers:
            if narrow_unless_empty(words, keep):
                return


class TagScope:
    """Whether an answer is inside one of a structural tag's tags (between a begin string and its end
    string): where budget closing may end a tool call whose arguments are not JSON (XML parameters), so
    that free text beside the calls is never ended early."""

    def __init__(self, tags: Sequence[tuple[str, str]]) -> None:
        self._tags = [(begin.encode(), end.encode()) for begin, end in tags]

    def __call__(self, answer: bytes) -> bool:
        for begin, end in self._tags:
            at = answer.rfind(begin)
            if at >= 0 and answer.find(end, at + len(begin)) < 0:
                return True
        return False


class TagTracker:
    """TagScope followed as an answer grows (fed its bytes token by token): whether it is inside a tag now, at
    a cost per token of the token's bytes, not of the answer's length (a guard asks at every token)."""

    def __init__(self, tags: Sequence[tuple[str, str]]) -> None:
        self._tags = [(begin.encode(), end.encode()) for begin, end in tags if begin]
        self._longest = max((max(len(b), len(e)) for b, e in self._tags), default=1)
        self.reset()

    def reset(self) -> None:
        self._open: bytes | None = None  # the end string the open tag waits for
        self._tail = b""  # the last bytes, where a begin or end string may be under way

    @property
    def inside(self) -> bool:
        return self._open is not None

    def feed(self, data: bytes) -> None:
        text, pos = self._tail + data, 0
        while True:
            if self._open is not None:
                at = text.find(self._open, pos)
                if at < 0:
                    break
                pos, self._open = at + len(self._open), None
                continue
            hits = [(at, -len(b), e) for b, e in self._tags if (at := text.find(b, pos)) >= 0]
            if not hits:
                break
            at, neg_len, end = min(hits)
            pos, self._open = at - neg_len, end
        self._tail = text[max(pos, len(text) - self._longest + 1):]
