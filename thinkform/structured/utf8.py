"""Utf8Guard: a constrained answer is well-formed UTF-8, whatever the grammar backend lets through.

Grammars run on bytes, and byte-level vocabularies have tokens that carry part of a character. xgrammar
0.2.8 admits UTF-8-encoded surrogates (ED A0..BF ..) inside JSON strings: the model writes
`"name": "oning\\xed\\xb4\\xb7"`, the grammar counts one character against `maxLength: 8`, and the text
the user gets has three U+FFFD instead, so the answer breaks its own schema. The guard follows the
answer's bytes and clears the mask bits of tokens that would make them ill-formed (RFC 3629: no
surrogates, no overlong forms, nothing past U+10FFFF, no stray continuation bytes).

Per vocabulary (`Utf8Rules`, built once, shared by all requests): one packed ban mask per state of the
UTF-8 decoder. A token that is complete UTF-8 on its own is fine at a character boundary and nowhere
else, so only the few tokens holding partial characters are scanned byte by byte.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from thinkform.structured.bitmask import pack_bits


class Pending(NamedTuple):
    """What an unfinished character needs: its next byte in lo..hi, then `more` bytes in 80..BF."""

    lo: int
    hi: int
    more: int


BOUNDARY: Pending | None = None  # between characters
_STATES: tuple[Pending | None, ...] = (
    BOUNDARY,
    Pending(0x80, 0xBF, 0), Pending(0xA0, 0xBF, 1), Pending(0x80, 0xBF, 1), Pending(0x80, 0x9F, 1),
    Pending(0x90, 0xBF, 2), Pending(0x80, 0xBF, 2), Pending(0x80, 0x8F, 2),
)


def _after_lead(b: int) -> Pending | None:
    """The state after a lead byte; raises ValueError for a byte that cannot start a character."""
    if 0xC2 <= b <= 0xDF:
        return Pending(0x80, 0xBF, 0)
    if b == 0xE0:
        return Pending(0xA0, 0xBF, 1)
    if b == 0xED:  # U+D800..U+DFFF are surrogates, not characters
        return Pending(0x80, 0x9F, 1)
    if 0xE1 <= b <= 0xEF:
        return Pending(0x80, 0xBF, 1)
    if b == 0xF0:
        return Pending(0x90, 0xBF, 2)
    if 0xF1 <= b <= 0xF3:
        return Pending(0x80, 0xBF, 2)
    if b == 0xF4:  # nothing past U+10FFFF
        return Pending(0x80, 0x8F, 2)
    raise ValueError(f"byte {b:#04x} cannot start a UTF-8 character")


def advance(state: Pending | None, data: bytes) -> Pending | None:
    """The decoder state after `data`; raises ValueError where the bytes are ill-formed."""
    if state is None and data.isascii():  # most tokens: no byte walk
        return None
    for b in data:
        if state is None:
            state = None if b < 0x80 else _after_lead(b)
        elif state.lo <= b <= state.hi:
            state = Pending(0x80, 0xBF, state.more - 1) if state.more else None
        else:
            raise ValueError(f"byte {b:#04x} where a continuation byte in {state.lo:#04x}..{state.hi:#04x} "
                             "is due")
    return state


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _allowed(state: Pending | None, data: bytes) -> bool:
    try:
        advance(state, data)
    except ValueError:
        return False
    return True


class Utf8Rules:
    """Per-vocabulary keep masks, one per decoder state (immutable, thread-safe)."""

    def __init__(self, token_bytes: Sequence[bytes]) -> None:
        words = (len(token_bytes) + 31) // 32
        # whole characters (almost every token): fine at a boundary, wrong inside a character
        banned = {state: np.full(len(token_bytes), state is not BOUNDARY) for state in _STATES}
        for token_id, data in enumerate(token_bytes):
            if not data:  # padding rows (the gate clears them) and empty specials
                for ban in banned.values():
                    ban[token_id] = False
            elif not _is_utf8(data):
                for state, ban in banned.items():
                    ban[token_id] = not _allowed(state, data)
        self._keep = {state: ~pack_bits(ban, words).numpy() for state, ban in banned.items()}

    def keep_mask(self, state: Pending | None) -> np.ndarray:
        """Packed int32 words of the tokens allowed in `state`."""
        return self._keep[state]


class Utf8Guard:
    """Per-request: follows the answer's bytes and keeps the next token from breaking UTF-8."""

    def __init__(self, rules: Utf8Rules) -> None:
        self.rules = rules
        self.state: Pending | None = BOUNDARY

    def reset(self) -> None:
        self.state = BOUNDARY

    def observe(self, data: bytes) -> None:
        try:
            self.state = advance(self.state, data)
        except ValueError:  # only where the grammar left nothing well-formed: start over at a boundary
            self.state = BOUNDARY

    def keep(self) -> np.ndarray:
        """Packed words of the tokens this guard allows next."""
        return self.rules.keep_mask(self.state)

