"""Byte/text helpers shared by backends whose matchers speak bytes."""
from __future__ import annotations


def without_cut_end(data: bytes) -> bytes:
    """`data` less a multi-byte character cut off at its end (its first bytes without the rest). Leading
    continuation bytes stay: forced text may finish the character the text so far ends inside."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return data
        if byte >= 0xC0:  # the last character's lead byte: is the character whole?
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return data if back >= need else data[:-back]
    return data
