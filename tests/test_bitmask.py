"""Packed-bitmask helpers: our CPU mask application equals xgrammar's kernel; bit setting and keep masks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import xgrammar as xgr

from thinkform.structured.bitmask import apply_bitmask_cpu, keep_mask, narrow_unless_empty, set_bits


def _random_mask(rows: int, vocab: int, density: float, rng: np.random.Generator) -> torch.Tensor:
    mask = xgr.allocate_token_bitmask(rows, vocab)
    flags = rng.random((rows, mask.shape[1] * 32)) < density
    packed = np.packbits(flags, axis=1, bitorder="little").view("<i4")
    mask.copy_(torch.from_numpy(packed.astype(np.int32)))
    return mask


@pytest.mark.parametrize("density", [0.0, 0.0005, 0.05, 0.5, 1.0])
@pytest.mark.parametrize("vocab", [1000, 1007])
def test_cpu_application_equals_xgrammars_kernel(density: float, vocab: int) -> None:
    rng = np.random.default_rng(int(density * 1e4) + vocab)
    logits = torch.randn(5, vocab)
    mask = _random_mask(5, vocab, density, rng)
    rows = [0, 2, 3]
    ours, theirs = logits.clone(), logits.clone()
    apply_bitmask_cpu(ours, mask, rows)
    xgr.apply_token_bitmask_inplace(theirs, mask, indices=rows)
    assert torch.equal(ours, theirs)
    assert torch.equal(ours[[1, 4]], logits[[1, 4]])  # rows not named are untouched


def test_set_bits_handles_the_sign_bit_and_ignores_ids_past_the_mask() -> None:
    mask = torch.zeros((2, 2), dtype=torch.int32)
    set_bits(mask, 1, [0, 31, 32, 63, 64, 10_000], True)
    assert mask[0].tolist() == [0, 0]
    assert mask[1].tolist() == [1 - 2**31, 1 - 2**31]
    set_bits(mask, 1, [31, 32], False)
    assert mask[1].tolist() == [1, -(2**31)]


def test_keep_mask_bans_the_named_ids_and_everything_past_the_vocabulary() -> None:
    words = keep_mask(40, 2, [3, 39])
    allowed = {i for i in range(64) if (int(words[i // 32]) >> (i % 32)) & 1}
    assert allowed == set(range(40)) - {3, 39}


def test_narrow_unless_empty_leaves_the_grammar_the_last_word() -> None:
    mask = torch.tensor([[0b0110]], dtype=torch.int32)
    narrow_unless_empty(mask.numpy()[0], np.array([~0b0100], dtype=np.int32))
    assert int(mask[0, 0]) == 0b0010
    narrow_unless_empty(mask.numpy()[0], np.array([~0b0010], dtype=np.int32))
    assert int(mask[0, 0]) == 0b0010


@pytest.mark.parametrize("density", [0.0005, 0.01, 0.3, 0.9])
def test_greedy_under_a_mask_picks_the_best_allowed_token(density: float) -> None:
    from thinkform.engine.sampler import best_allowed

    rng = np.random.default_rng(int(density * 1e4))
    vocab = 5000
    logits = torch.randn(6, vocab)
    mask = _random_mask(6, vocab, density, rng)
    mask[0, 0] = -1  # row 0 allows its first 32 tokens at least
    masked = logits.clone()
    xgr.apply_token_bitmask_inplace(masked, mask)
    expected = masked.argmax(dim=-1).tolist()
    tokens = logits.argmax(dim=-1).tolist()
    best_allowed(logits.clone(), mask, list(range(6)), tokens)
    for r in range(6):
        if bool(torch.isfinite(masked[r]).any()):  # a row that allows nothing has no best token
            assert tokens[r] == expected[r]


def test_combined_keeps_and_the_masks_once_per_combination() -> None:
    from thinkform.structured.bitmask import CombinedKeeps

    a = np.array([0b0111, -1], dtype=np.int32)
    b = np.array([0b1101, 0b1], dtype=np.int32)
    combine = CombinedKeeps()
    first = combine((a, b))
    assert first.words.tolist() == [0b0101, 0b1]
    assert combine((a, b)) is first and len(combine) == 1  # the same arrays: the cached result
    assert combine((b, a)).words.tolist() == [0b0101, 0b1] and len(combine) == 2


def test_requests_share_the_engines_combined_keep_masks(engine64) -> None:
    """Guard-mask combinations are computed once per engine, not once per request."""
    import json

    schema = json.dumps({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]})
    params = {"temperature": 0, "max_new_tokens": 24, "json_schema": schema}
    engine64.generate("first", params)
    seen = len(engine64.parts.combined_keeps)
    assert seen >= 2
    engine64.generate(["first", "first"], params)
    assert len(engine64.parts.combined_keeps) == seen


@pytest.mark.parametrize("density", [0.0, 0.0005, 0.003, 0.5])
def test_sparse_allowed_ids_lists_exactly_the_allowed_tokens_when_few(density) -> None:
    from thinkform.structured.bitmask import sparse_allowed_ids

    vocab = 151_669
    mask = _random_mask(3, vocab, density, np.random.default_rng(3))
    for row in range(3):
        flags = np.unpackbits(mask.numpy()[row].view(np.uint8), bitorder="little")[:vocab]
        expected = np.flatnonzero(flags)
        got = sparse_allowed_ids(mask, row, vocab)
        if expected.shape[0] > vocab // 64:
            assert got is None
        else:
            assert got is not None and got.tolist() == expected.tolist()


def test_tokens_allowed_and_first_allowed_read_the_packed_layout():
    import numpy as np
    import torch

    from thinkform.structured.bitmask import first_allowed, set_bits, token_allowed, tokens_allowed

    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = torch.zeros((1, 8), dtype=torch.int32)
        chosen = sorted(set(rng.integers(0, 256, size=int(rng.integers(1, 12))).tolist()) | {31})  # 31: sign bit
        set_bits(mask, 0, chosen, True)
        words = mask.numpy()[0]
        ids = np.arange(256, dtype=np.int64)
        assert tokens_allowed(words, ids).tolist() == [token_allowed(mask, 0, i) for i in range(256)]
        assert first_allowed(words) == chosen[0]
        assert first_allowed(words, frozenset(chosen[:1])) == (chosen[1] if len(chosen) > 1 else None)
    assert first_allowed(np.zeros(8, dtype=np.int32)) is None


def test_packed_keep_narrows_as_the_dense_pass_does() -> None:
    """The sparse narrowing (only the words a keep bans anything in), and a dense keep's in-place pass where
    a word it leaves whole holds a token, give the checked pass's row and verdict: rows it trims, rows it
    would leave empty (unchanged), rows allowing nothing else."""
    from thinkform.structured.bitmask import PackedKeep

    rng = np.random.default_rng(7)
    width = 64
    for trial in range(300):
        keep = np.full(width, -1, dtype=np.int32)
        holes = rng.choice(width, int(rng.integers(0, 40)), replace=False)  # sparse and dense keeps alike
        keep[holes] = rng.integers(-2**31, 2**31 - 1, holes.shape[0], dtype=np.int32)
        row = np.zeros(width, dtype=np.int32)
        # few words: empty results happen; many (a third of the trials): a dense keep narrows in place
        live = rng.choice(width, int(rng.integers(0, 4) if trial % 3 else rng.integers(0, width)), replace=False)
        row[live] = rng.integers(-2**31, 2**31 - 1, live.shape[0], dtype=np.int32) & ~(keep[live] if trial % 2 else 0)
        dense, sparse = row.copy(), row.copy()
        assert PackedKeep(keep).narrow(sparse) == narrow_unless_empty(dense, keep)
        assert sparse.tolist() == dense.tolist()
    short = np.array([~0b10], dtype=np.int32)  # a keep narrower than the row: its words only
    row = np.array([0b11, 0b1], dtype=np.int32)
    assert PackedKeep(short).narrow(row) and row.tolist() == [0b01, 0b1]

