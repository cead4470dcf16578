"""Helpers for xgrammar's packed token bitmask: int32 words, bit j of word i is token 32*i + j."""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch


def word_bit(j: int) -> int:
    """The int32 value with only bit j set (bit 31 is the sign bit)."""
    return -(1 << 31) if j == 31 else 1 << j


def set_bits(bitmask: torch.Tensor, row: int, token_ids: Iterable[int], value: bool) -> None:
    """Set or clear single token bits of bitmask[row]; ids past the mask are ignored."""
    for token_id in token_ids:
        word, bit = divmod(int(token_id), 32)
        if word >= bitmask.shape[1]:
            continue
        current = int(bitmask[row, word]) & 0xFFFFFFFF
        current = current | (1 << bit) if value else current & ~(1 << bit)
        bitmask[row, word] = current - (1 << 32) if current >= 1 << 31 else current


def clear_range(bitmask: torch.Tensor, row: int, lo: int, hi: int) -> None:
    """Clear the bits of token ids lo..hi-1 (logits padding past the tokenizer)."""
    hi = min(hi, bitmask.shape[1] * 32)
    if lo >= hi:
        return
    first_full = -(-lo // 32)
    set_bits(bitmask, row, range(lo, min(hi, first_full * 32)), False)
    last_full = hi // 32
    if last_full > first_full:
        bitmask[row, first_full:last_full] = 0
    set_bits(bitmask, row, range(max(lo, last_full * 32), hi), False)


def pack_bits(flags: torch.Tensor, words: int) -> torch.Tensor:
    """bool[vocab] → int32[words] in the packed layout."""
    bits = np.zeros(words * 32, dtype=bool)
    bits[: flags.numel()] = flags.numpy()
    packed = np.packbits(bits, bitorder="little").view("<i4")  # 4 little-endian bytes per word
    return torch.from_numpy(packed.astype(np.int32))


def clear_unless_empty(bitmask: torch.Tensor, row: int, ban: torch.Tensor) -> None:
    """Clear the banned bits of bitmask[row], unless that would leave no token: the grammar wins."""
    current = bitmask[row]
    width = min(current.numel(), ban.numel())
    trimmed = current.clone()
    trimmed[:width] &= ~ban[:width].to(current.device)
    if bool(trimmed.any()):
        current.copy_(trimmed)
