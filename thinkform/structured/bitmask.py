"""Helpers for xgrammar's packed token bitmask: int32 words, bit j of word i is token 32*i + j.

Bitmasks are filled on the CPU (the device only ever applies them), so the helpers work on numpy views of
the rows: a numpy scalar update costs a tenth of a microsecond where tensor indexing costs several, and a
constrained row pays these per token."""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch


def word_bit(j: int) -> int:
    """The int32 value with only bit j set (bit 31 is the sign bit)."""
    return -(1 << 31) if j == 31 else 1 << j


def set_word_bits(words: np.ndarray, token_ids: Iterable[int], value: bool = True) -> None:
    """Set (or clear) single token bits of one row's words; ids past the row are ignored."""
    for token_id in token_ids:
        word, bit = divmod(int(token_id), 32)
        if word >= words.shape[0]:
            continue
        if value:
            words[word] |= np.int32(word_bit(bit))
        else:
            words[word] &= ~np.int32(word_bit(bit))


def set_bits(bitmask: torch.Tensor, row: int, token_ids: Iterable[int], value: bool) -> None:
    """set_word_bits on bitmask[row]."""
    set_word_bits(bitmask.numpy()[row], token_ids, value)


def pack_bits(flags: torch.Tensor | np.ndarray, words: int) -> torch.Tensor:
    """bool[vocab] → int32[words] in the packed layout."""
    flags = flags.numpy() if isinstance(flags, torch.Tensor) else flags
    bits = np.zeros(words * 32, dtype=bool)
    bits[: flags.shape[0]] = flags
    packed = np.packbits(bits, bitorder="little").view("<i4")  # 4 little-endian bytes per word
    return torch.from_numpy(packed.astype(np.int32))


def only_mask(vocab_size: int, words: int, allowed: Iterable[int]) -> torch.Tensor:
    """Exactly `allowed` (ids below vocab_size), packed."""
    flags = np.zeros(vocab_size, dtype=bool)
    flags[[i for i in allowed if 0 <= i < vocab_size]] = True
    return pack_bits(flags, words)


def keep_mask(vocab_size: int, words: int, banned: Iterable[int]) -> torch.Tensor:
    """All of 0..vocab_size-1 but `banned`, packed (ids past vocab_size are never kept)."""
    flags = np.ones(vocab_size, dtype=bool)
    flags[[i for i in banned if 0 <= i < vocab_size]] = False
    return pack_bits(flags, words)


def narrow_unless_empty(words: np.ndarray, keep: np.ndarray) -> bool:
    """words &= keep (one row's packed int32 words), unless that would leave no token: the grammar wins.
    Returns whether the row was narrowed (False: it would have been left empty, and is unchanged)."""
    if keep.shape[0] != words.shape[0]:  # rare: the usual same-width case skips the slicing (~1 µs a row)
        width = min(words.shape[0], keep.shape[0])
        words, rest, keep = words[:width], words[width:], keep[:width]
    else:
        rest = None
    trimmed = np.bitwise_and(words, keep)
    # count_nonzero: a third of the cost of any() on int32 words
    if not np.count_nonzero(trimmed) and (rest is None or not np.count_nonzero(rest)):
        return False
    np.copyto(words, trimmed)
    return True


class PackedKeep:
    """A packed keep mask that narrows rows where it bans anything only. The gates' keeps ban few tokens
    (markers, digits past a number's bound, stray UTF-8 bytes: ~130 of Qwen's 4,748 words), so a row is
    narrowed by gathering those words, not by a pass over the whole row (1.1 against 2.5 µs warm here,
    and a row the forward pass left out of cache loads 130 lines, not 600)."""

    __slots__ = ("words", "_holes", "_values", "_probe")

    def __init__(self, words: np.ndarray) -> None:
        self.words = words
        holes = np.flatnonzero(words != -1)
        sparse = holes.shape[0] * 4 < words.shape[0]  # past a quarter of the row one dense pass is cheaper
        self._holes = holes if sparse else None
        self._values = words[holes] if sparse else None
        # dense: 16 words the keep leaves whole, spread over the row. A row with a token in one of them keeps
        # it, so it cannot be left empty and is narrowed in place, in one pass (inside a CapitalInfo name,
        # Qwen's vocabulary: 1.7 µs a row where the checked pass took 2.8)
        whole = np.flatnonzero(words == -1)
        self._probe = None if sparse or not whole.shape[0] else whole[:: max(1, whole.shape[0] // 16)][:16]

    def narrow(self, row: np.ndarray) -> bool:
        """row &= words unless that leaves no token (narrow_unless_empty): whether it was narrowed."""
        holes = self._holes
        if row.shape[0] != self.words.shape[0]:
            return narrow_unless_empty(row, self.words)
        if holes is None:
            if self._probe is not None and np.count_nonzero(row[self._probe]):
                np.bitwise_and(row, self.words, out=row)
                return True
            return narrow_unless_empty(row, self.words)
        kept = row[holes]
        trimmed = kept & self._values
        # outside the holes nothing changes: the row is left empty only if it holds nothing else either
        if not np.count_nonzero(trimmed) and np.count_nonzero(row) == np.count_nonzero(kept):
            return False
        row[holes] = trimmed
        return True


class CombinedKeeps:
    """ANDs of packed keep masks (as PackedKeep), cached by which arrays they are. The guards' rules hand
    out one array per state, shared by every request, so an engine meets few combinations: one cache
    serves all its requests (a cache per request recomputed each combination for every new answer)."""

    def __init__(self) -> None:
        # the value keeps the combined arrays alive: their ids cannot be reused while they are a key
        self._cache: dict[tuple[int, ...], tuple[PackedKeep, tuple[np.ndarray, ...]]] = {}

    def __call__(self, keeps: tuple[np.ndarray, ...]) -> PackedKeep:
        key = tuple(map(id, keeps))
        hit = self._cache.get(key)
        if hit is None:
            words = keeps[0] if len(keeps) == 1 else np.bitwise_and.reduce(np.stack(keeps))
            hit = self._cache[key] = (PackedKeep(words), keeps)
        return hit[0]

    def __len__(self) -> int:
        return len(self._cache)


# byte value → the 8 additive logit masks of its bits: 0 where the token is allowed, -inf where banned
_ADDITIVE = np.where(np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little") == 1,
                     np.float32(0), np.float32(-np.inf)).astype(np.float32)


def token_allowed(bitmask: torch.Tensor, row: int, token_id: int) -> bool:
    word, bit = divmod(token_id, 32)
    words = bitmask.numpy()[row]
    return word < words.shape[0] and bool((int(words[word]) >> bit) & 1)


def tokens_allowed(words: np.ndarray, token_ids: np.ndarray) -> np.ndarray:
    """bool per id of `token_ids` (int64, all inside the row): whether the row of `words` allows it."""
    return ((words[token_ids >> 5] >> (token_ids & 31)) & 1).astype(bool)


def first_allowed(words: np.ndarray, skip: frozenset[int] = frozenset()) -> int | None:
    """The lowest token id the row of `words` allows, other than those in `skip`; None if there is none."""
    for word in np.flatnonzero(words).tolist():
        bits = int(words[word]) & 0xFFFFFFFF
        while bits:
            low = bits & -bits
            token = word * 32 + low.bit_length() - 1
            if token not in skip:
                return token
            bits ^= low
    return None


def apply_bitmask_cpu(logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int]) -> None:
    """logits[r] = -inf where bitmask[r] bans the token, for r in rows (CPU tensors, float logits).

    xgrammar's CPU kernel tests bit by bit (~0.5 ms a row at a 152k vocabulary). Here a row that allows
    few tokens (the usual case under a grammar) is rebuilt from its allowed logits; any other row gets a
    branch-free additive mask gathered from a byte table (a data-dependent branch per token costs 4× more
    when half the vocabulary is allowed): 30-60 µs a row either way."""
    packed = bitmask.numpy()
    for r in rows:
        row = logits[r]
        index = _sparse_allowed(packed[r], row.shape[0])
        if index is not None:
            idx = torch.from_numpy(index)
            keep = row[idx]
            row.fill_(float("-inf"))
            row[idx] = keep
            continue
        additive = np.take(_ADDITIVE, packed[r].view(np.uint8), axis=0).reshape(-1)[: row.shape[0]]
        row[: additive.shape[0]].add_(torch.from_numpy(additive).to(row.dtype))
        row[additive.shape[0]:] = float("-inf")  # a mask narrower than the logits bans the rest


def argmax_rows(logits: torch.Tensor) -> torch.Tensor:
    """Each row's argmax (first on ties), int64 on the logits' device. numpy's is vectorised: 14 µs a 152k
    row where torch's CPU argmax takes 65-130 µs."""
    if logits.device.type == "cpu":
        return torch.from_numpy(logits.numpy().argmax(axis=1).astype("int64", copy=False))
    return logits.argmax(dim=-1)


def argmax_allowed_cpu(row: torch.Tensor, bitmask: torch.Tensor, r: int, retries: int = 4) -> int:
    """The best token of `row` that bitmask[r] allows. A sparse mask is read at its allowed ids; under a
    dense one the row's next-best tokens are tried a few times (banning each refused one) before the whole
    mask is applied. The row may be changed (only at banned tokens)."""
    index = _sparse_allowed(bitmask.numpy()[r], row.shape[0])
    values = row.numpy()
    if index is not None and index.shape[0]:
        return int(index[values[index].argmax()])
    if index is None:
        for _ in range(retries):
            token = int(values.argmax())
            if token_allowed(bitmask, r, token):
                return token
            values[token] = -np.inf
    apply_bitmask_cpu(row[None], bitmask[r:r + 1], [0])
    return int(values.argmax())


def sparse_allowed_ids(bitmask: torch.Tensor, row: int, vocab: int) -> np.ndarray | None:
    """The token ids (below `vocab`) that bitmask[row] allows when they are few (at most 1/64 of the
    vocabulary, or 64), else None."""
    return _sparse_allowed(bitmask.numpy()[row], vocab)


_BIT_SHIFTS = np.arange(32, dtype=np.uint32)


def _sparse_allowed(words: np.ndarray, vocab: int) -> np.ndarray | None:
    # only the non-zero words are expanded: ~10 µs a 152k-token row where unpacking it all costs 20 µs
    words = words.view(np.uint32)
    nonzero = np.flatnonzero(words != 0)  # on a bool array: 3x faster than on the ints
    limit = max(64, vocab // 64)
    if nonzero.shape[0] > limit:
        return None
    selected = words[nonzero]
    if int(np.bitwise_count(selected).sum()) > limit:
        return None
    word, bit = np.nonzero((selected[:, None] >> _BIT_SHIFTS) & 1)
    ids = nonzero[word] * 32 + bit
    return ids[ids < vocab]
