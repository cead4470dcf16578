"""thinkform.kernels.triton_ops against the torch reference, run on CPU through Triton's interpreter.

TRITON_INTERPRET is read when `@triton.jit` decorates, so the module is imported fresh under the variable and
taken out of sys.modules afterwards (no other test sees the interpreted kernels or the variable). Triton's own
jit'd library functions (tl.sum, tl.max, tl.zeros, ...) were decorated when triton was first imported, which in a
full test run may be long before this module, without the variable; the fixture therefore imports triton
normally first and swaps those functions for interpreted twins only while these tests run.

Tolerances: the interpreter computes float32 with numpy, so elementwise kernels (residual add, rotary, store,
bf16 rounding) are compared bit for bit; kernels with a float32 reduction or exp (rms_norm, silu, attention) can
land on the other side of a half-precision rounding when the last float32 bit differs from torch's. Half results
there may be off on at most 2% of elements: by 2 ulps for rms_norm and silu_and_mul (a 1-ulp flip of the first
rounding can move the second by 2), by 1 ulp or 1e-5 for attention (float32 accumulation error on outputs near
zero, where an ulp is tiny); float32 results within 1e-5. Measured in the interpreter: bfloat16 bit-identical for
all of them, float16 a few 1-2 ulp flips per 10^5 elements. The same helpers and bounds held for the compiled
kernels on an H100 (triton 3.6, torch 2.11) against these CPU references, CUDA-graph replay of the attention
included; no test here needs a GPU.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

HALF_DTYPES = (torch.bfloat16, torch.float16)


@pytest.fixture(scope="module")
def ops(triton_interpreter):
    return triton_interpreter


# ----------------------------------------------------------------------------------------------- helpers

def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed)).to(dtype)


def _ulps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance in units of last place between two 16-bit float tensors (sign-magnitude made monotone)."""
    def key(t: torch.Tensor) -> torch.Tensor:
        i = t.view(torch.int16).int()
        return torch.where(i < 0, -(i & 0x7FFF), i)
    return (key(a) - key(b)).abs()


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, exact: bool = False, max_ulp: int = 1,
                   atol: float = 0.0) -> None:
    """Bitwise when `exact`; else half dtypes off by at most max_ulp (or atol) on <= 2% of elements, float32
    within 1e-5."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    if exact:
        assert torch.equal(actual, expected), (actual - expected).abs().max()
    elif actual.dtype in HALF_DTYPES:
        ulps = torch.where((actual.float() - expected.float()).abs() <= atol, 0, _ulps(actual, expected))
        assert ulps.max() <= max_ulp and (ulps > 0).float().mean() <= 0.02, (ulps.max(), (ulps > 0).sum())
    else:
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def _qkv_views(n: int, hq: int, hk: int, dim: int, dtype: torch.dtype, seed: int):
    """q, k, v as the model makes them: strided views of one fused projection [n, (hq + 2 hk) * dim]."""
    qkv = _randn(n, (hq + 2 * hk) * dim, dtype=dtype, seed=seed)
    q, k, v = qkv.split([hq * dim, hk * dim, hk * dim], dim=-1)
    return qkv, q.view(n, hq, dim), k.view(n, hk, dim), v.view(n, hk, dim)


# ----------------------------------------------------------------------------------------------- references

def ref_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def ref_silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.split(gate_up.shape[-1] // 2, -1)
    return F.silu(gate) * up


def ref_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos[:, None, :], sin[:, None, :]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), -1)


def ref_paged_attention(q, k_cache, v_cache, block_tables, context_lens, page_size, scale):
    out = torch.zeros_like(q)
    group = q.shape[1] // k_cache.shape[1]
    for b, n in enumerate(context_lens.tolist()):
        pos = torch.arange(n)
        slots = block_tables[b, pos // page_size].long() * page_size + pos % page_size
        k = k_cache[slots].float().repeat_interleave(group, dim=1)  # [n, H, D]
        v = v_cache[slots].float().repeat_interleave(group, dim=1)
        probs = torch.softmax(torch.einsum("hd,nhd->hn", q[b].float(), k) * scale, dim=-1)
        out[b] = torch.einsum("hn,nhd->hd", probs, v).to(q.dtype)
    return out


# ----------------------------------------------------------------------------------------------- tests

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm(ops, dtype):
    x = _randn(5, 160, dtype=dtype, seed=0)[:, :96]  # strided rows, H not a power of two
    weight = (1 + 0.1 * _randn(96, dtype=torch.float32, seed=1)).to(dtype)
    assert_matches(ops.rms_norm(x, weight, 1e-6), ref_rms_norm(x, weight, 1e-6), max_ulp=2)


def test_rms_norm_float32_weight_promotes(ops):
    x = _randn(3, 64, dtype=torch.bfloat16, seed=2)
    weight = 1 + 0.1 * _randn(64, dtype=torch.float32, seed=3)
    out = torch.empty(3, 64)
    assert ops.rms_norm(x, weight, 1e-5, out=out) is out
    torch.testing.assert_close(out, ref_rms_norm(x, weight, 1e-5), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_add_rms_norm(ops, dtype):
    x = _randn(4, 96, dtype=dtype, seed=4)
    residual = _randn(4, 96, dtype=dtype, seed=5)
    weight = (1 + 0.1 * _randn(96, dtype=torch.float32, seed=6)).to(dtype)
    expected_residual = residual + x
    expected = ref_rms_norm(expected_residual, weight, 1e-6)
    out, new_residual = ops.fused_add_rms_norm(x, residual, weight, 1e-6)
    assert new_residual is residual
    assert_matches(new_residual, expected_residual, exact=True)
    assert_matches(out, expected, max_ulp=2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul(ops, dtype):
    gate_up = (2 * _randn(3, 2 * 1100, dtype=torch.float32, seed=7)).to(dtype)  # two column blocks, ragged
    # a 1-ulp flip of the rounded silu can move the rounded product by 2 ulps
    assert_matches(ops.silu_and_mul(gate_up), ref_silu_and_mul(gate_up), max_ulp=2)


@pytest.mark.parametrize("dim", [64, 80])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_inplace_on_fused_qkv_views(ops, dtype, dim):
    n, hq, hk = 3, 12, 2
    qkv, q, k, v = _qkv_views(n, hq, hk, dim, dtype, seed=8)
    angles = torch.rand(n, dim // 2, generator=_gen(9)) * 20
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    expected_q, expected_k, v_before = ref_rotary(q, cos, sin), ref_rotary(k, cos, sin), v.clone()
    ops.rotary_inplace(q, k, cos, sin)
    assert_matches(q, expected_q, exact=True)
    assert_matches(k, expected_k, exact=True)
    assert torch.equal(v, v_before)


def test_rotary_accepts_model_cos_layout(ops):
    _, q, k, _ = _qkv_views(2, 4, 4, 64, torch.bfloat16, seed=10)
    angles = torch.rand(2, 1, 32, generator=_gen(11)) * 5  # rope.py hands out [N, 1, D/2]
    cos, sin = angles.cos().bfloat16(), angles.sin().bfloat16()
    expected_q, expected_k = ref_rotary(q, cos[:, 0], sin[:, 0]), ref_rotary(k, cos[:, 0], sin[:, 0])
    ops.rotary_inplace(q, k, cos, sin)
    assert torch.equal(q, expected_q) and torch.equal(k, expected_k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_store_kv_into_shuffled_slots(ops, dtype):
    n, hq, hkv, dim, slots = 5, 12, 2, 80, 48
    _, _, k, v = _qkv_views(n, hq, hkv, dim, dtype, seed=12)
    k_cache = _randn(slots, hkv, dim, dtype=dtype, seed=13)
    v_cache = _randn(slots, hkv, dim, dtype=dtype, seed=14)
    slot_mapping = torch.randperm(slots, generator=_gen(15))[:n]
    slot_mapping[2] = -1  # a padding row: stores nothing
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    keep = slot_mapping >= 0
    expected_k[slot_mapping[keep]], expected_v[slot_mapping[keep]] = k[keep], v[keep]
    ops.store_kv(k, v, k_cache, v_cache, slot_mapping)
    assert torch.equal(k_cache, expected_k) and torch.equal(v_cache, expected_v)


@pytest.mark.parametrize("dim", [64, 80])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_store_kv_is_rotary_then_store(ops, dtype, dim):
    """One launch for both: q rotated in place, the rotated k and v in their slots (a padding row stores
    nothing), bit for bit what rotary_inplace then store_kv give."""
    n, hq, hk, slots = 5, 12, 2, 40
    _, q, k, v = _qkv_views(n, hq, hk, dim, dtype, seed=30)
    angles = torch.rand(n, 1, dim // 2, generator=_gen(31)) * 20  # the model's [N, 1, D/2] layout
    # as the CUDA engine hands them: strided views of one gathered [N, 2, D/2] table (RotaryEmbedding's)
    table = torch.cat((angles.cos(), angles.sin()), dim=1).to(dtype)
    cos, sin = table[:, :1], table[:, 1:]
    k_cache = _randn(slots, hk, dim, dtype=dtype, seed=32)
    v_cache = _randn(slots, hk, dim, dtype=dtype, seed=33)
    slot_mapping = torch.randperm(slots, generator=_gen(34))[:n]
    slot_mapping[3] = -1
    expected_q, expected_k, expected_v = ref_rotary(q, cos[:, 0], sin[:, 0]), k_cache.clone(), v_cache.clone()
    keep = slot_mapping >= 0
    expected_k[slot_mapping[keep]] = ref_rotary(k, cos[:, 0], sin[:, 0])[keep]
    expected_v[slot_mapping[keep]] = v[keep]
    ops.rotary_store_kv(q, k, v, cos, sin, k_cache, v_cache, slot_mapping)
    assert_matches(q, expected_q, exact=True)
    assert_matches(k_cache, expected_k, exact=True)
    assert_matches(v_cache, expected_v, exact=True)


def _paged_case(dtype, dim, table_dtype, lens, seed):
    """GQA 12/2 heads, page 16, a shuffled page pool; unused table entries hold garbage that must not be read."""
    batch, heads, kv_heads, page, num_pages, max_pages = len(lens), 12, 2, 16, 12, 4
    _, q, _, _ = _qkv_views(batch, heads, kv_heads, dim, dtype, seed=seed)
    k_cache = _randn(num_pages * page, kv_heads, dim, dtype=dtype, seed=seed + 1)
    v_cache = _randn(num_pages * page, kv_heads, dim, dtype=dtype, seed=seed + 2)
    block_tables = torch.full((batch, max_pages), 10**6, dtype=table_dtype)
    pool = torch.randperm(num_pages, generator=_gen(seed + 3)).tolist()
    for b, n in enumerate(lens):
        for i in range(-(-n // page)):
            block_tables[b, i] = pool.pop()
    return q, k_cache, v_cache, block_tables, page


@pytest.mark.parametrize("dtype, dim, table_dtype, block_n", [
    (torch.float32, 64, torch.int32, None),  # default chunk (128 positions): one chunk per sequence
    (torch.float32, 80, torch.int64, 16),  # 16-position chunks: the online softmax rescales across chunks
    (torch.bfloat16, 64, torch.int64, 16),
    (torch.bfloat16, 80, torch.int32, None),
])
def test_paged_decode_attention(ops, dtype, dim, table_dtype, block_n):
    lens = [1, 17, 40, 0]
    q, k_cache, v_cache, block_tables, page = _paged_case(dtype, dim, table_dtype, lens, seed=20)
    context_lens = torch.tensor(lens, dtype=table_dtype)
    scale = dim ** -0.5
    out = torch.full_like(q, float("nan"))  # contiguous, unlike the strided q
    result = ops.paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, page, scale, out=out,
                                        block_n=block_n)
    assert result is out
    expected = ref_paged_attention(q, k_cache, v_cache, block_tables, context_lens, page, scale)
    assert torch.equal(out[3], torch.zeros_like(out[3]))  # empty context: zeros, not NaN
    assert_matches(out, expected, atol=1e-5)


@pytest.mark.parametrize("dtype, splits, block_n", [
    (torch.float32, 2, 16),
    (torch.float32, 4, 16),  # 40 positions in 4 runs of 16: the last run is empty, 1 and 17 leave several empty
    (torch.bfloat16, 8, 16),
    (torch.float32, 4, None),  # runs of whole 128-position chunks: every context fits the first run
])
def test_paged_decode_attention_in_splits(ops, dtype, splits, block_n):
    """Flash-decoding: each context cut into `splits` runs, merged by a second kernel, gives the single
    pass's answer (empty runs and empty contexts included)."""
    lens = [1, 17, 40, 0, 64]
    q, k_cache, v_cache, block_tables, page = _paged_case(dtype, 64, torch.int32, lens, seed=40)
    context_lens = torch.tensor(lens, dtype=torch.int32)
    out = torch.full_like(q, float("nan"))
    ops.paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, page, 0.125, out=out,
                               block_n=block_n, splits=splits)
    assert torch.equal(out[3], torch.zeros_like(out[3]))
    assert_matches(out, ref_paged_attention(q, k_cache, v_cache, block_tables, context_lens, page, 0.125), atol=1e-5)


def test_paged_decode_attention_splits_must_be_a_power_of_two(ops):
    q, k_cache, v_cache, block_tables, page = _paged_case(torch.float32, 64, torch.int32, [3], seed=50)
    with pytest.raises(ValueError, match="splits must be a power of two, got 3"):
        ops.paged_decode_attention(q, k_cache, v_cache, block_tables, torch.tensor([3]), page, 0.125, splits=3)


def test_paged_decode_attention_replays_with_new_lengths(ops):
    """Same buffers, new lengths and tables (what a CUDA graph replay does): the launch must follow them."""
    q, k_cache, v_cache, block_tables, page = _paged_case(torch.float32, 64, torch.int32, [33, 5, 0, 48], seed=30)
    out = torch.empty_like(q)
    for lens in ([33, 5, 0, 48], [2, 0, 0, 31]):
        context_lens = torch.tensor(lens, dtype=torch.int32)
        ops.paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, page, 0.125, out=out,
                                   block_n=32)
        assert_matches(out, ref_paged_attention(q, k_cache, v_cache, block_tables, context_lens, page, 0.125),
                       atol=1e-5)


# ----------------------------------------------------------------------------------------------- one-token linear

_GEMV_TILINGS = [
    (37, 300, 8, 64, 1),  # ragged rows and columns, one slice: the kernel adds the bias and rounds
    (37, 300, 16, 64, 4),  # K in slices summed by the second kernel (the last one shorter)
    (64, 512, 8, 128, 8),  # more slices asked than column blocks allow: no empty slice
]
_GEMV_CASES = [(dtype, *t) for dtype in HALF_DTYPES + (torch.float32,) for t in _GEMV_TILINGS]


@pytest.mark.parametrize(("dtype", "n", "k", "block_n", "block_k", "splits"), _GEMV_CASES)
@pytest.mark.parametrize("bias", [False, True])
def test_gemv_matches_linear(ops, dtype, n, k, block_n, block_k, splits, bias):
    import importlib

    gemv = importlib.import_module("thinkform.kernels.gemv")  # under the interpreter, like `ops`
    x, w = _randn(1, k, dtype=dtype, seed=60), _randn(n, k, dtype=dtype, seed=61)
    b = _randn(n, dtype=dtype, seed=62) if bias else None
    got = gemv.gemv(x, w, b, gemv.GemvTiling(block_n, block_k, splits))
    # float32 accumulation, one rounding at the end: what cuBLAS does (the sum's order may differ)
    expected = F.linear(x.double(), w.double(), None if b is None else b.double()).to(dtype)
    assert_matches(got, expected, max_ulp=1)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize(("inter", "k", "block_n", "block_k"), [(37, 300, 8, 64), (64, 512, 16, 128)])
@pytest.mark.parametrize("bias", [False, True])
def test_gemv_silu_is_projection_then_activation(ops, dtype, inter, k, block_n, block_k, bias):
    """The MLP's [gate | up] projection and silu_and_mul in one launch: rounded where the two kernels round
    (the projection's output, silu, the product), so at most the last bit apart where a sum's order flips it."""
    import importlib

    gemv = importlib.import_module("thinkform.kernels.gemv")
    x, w = _randn(1, k, dtype=dtype, seed=63), _randn(2 * inter, k, dtype=dtype, seed=64)
    b = _randn(2 * inter, dtype=dtype, seed=65) if bias else None
    projected = F.linear(x.double(), w.double(), None if b is None else b.double()).to(dtype)
    got = gemv.gemv_silu(x, w, b, gemv.GemvTiling(block_n, block_k, 1))
    assert got.shape == (1, inter)
    assert_matches(got, ref_silu_and_mul(projected), max_ulp=2)


def test_gemv_planner_fuses_the_activation_only_when_clearly_faster(ops, monkeypatch):
    import importlib

    gemv = importlib.import_module("thinkform.kernels.gemv")
    fused = gemv.GemvTiling(8, 64, 1)
    layers = {n: torch.nn.Linear(96, n, bias=False).to(torch.bfloat16) for n in (24, 40)}
    timings = {24: {None: 10.0, fused: 9.9}, 40: {None: 10.0, fused: 8.0}}
    monkeypatch.setattr(gemv.GemvPlanner, "_time_silu_candidates", lambda self, x, layer: timings[layer.weight.shape[0]])
    monkeypatch.setattr(gemv.GemvPlanner, "_time_candidates", lambda self, x, layer: {None: 1.0})
    planner = gemv.GemvPlanner()
    x = _randn(1, 96, dtype=torch.bfloat16, seed=71)
    for n, layer in layers.items():
        expected = ref_silu_and_mul(F.linear(x, layer.weight))
        assert_matches(planner.linear_silu(x, layer), expected, max_ulp=2)
    assert {key[1][0]: plan for key, plan in planner.plans.items() if key[0] == "silu"} == {24: None, 40: fused}
    assert planner.linear_silu(torch.ones(2, 96, dtype=torch.bfloat16), layers[40]).shape == (2, 20)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("bias", [False, True])
def test_split_sums_summed_by_the_norm(ops, dtype, bias):
    """A one-token projection cut along K, its slices summed (+ bias) inside the next fused_add_rms_norm:
    bit for bit gemv (slices summed by its own second kernel) followed by the norm, the residual included."""
    import importlib

    gemv = importlib.import_module("thinkform.kernels.gemv")
    hidden, k = 96, 512
    x, w = _randn(1, k, dtype=dtype, seed=66), _randn(hidden, k, dtype=dtype, seed=67)
    b = _randn(hidden, dtype=dtype, seed=68) if bias else None
    residual = _randn(1, hidden, dtype=dtype, seed=69)
    weight = (1 + 0.1 * _randn(hidden, dtype=torch.float32, seed=70)).to(dtype)
    tiling = gemv.GemvTiling(16, 64, 4)
    expected_residual = residual.clone()
    expected, _ = ops.fused_add_rms_norm(gemv.gemv(x, w, b, tiling), expected_residual, weight, 1e-6)
    parts = gemv.gemv_split_sums(x, w, None, tiling)
    assert parts.shape == (4, hidden) and parts.dtype == torch.float32
    out, new_residual = ops.split_sums_add_rms_norm(parts, b, residual, weight, 1e-6)
    assert new_residual is residual
    assert_matches(new_residual, expected_residual, exact=True)
    assert_matches(out, expected, exact=True)


def test_planner_hands_out_split_sums_only_for_a_cut_plan(ops, monkeypatch):
    import importlib

    gemv = importlib.import_module("thinkform.kernels.gemv")
    plans = {24: gemv.GemvTiling(8, 32, 2), 40: gemv.GemvTiling(8, 32, 1), 56: None}
    monkeypatch.setattr(gemv.GemvPlanner, "_time_candidates",
                        lambda self, x, layer: {None: 1.0} | ({plans[layer.weight.shape[0]]: 0.5}
                                                               if plans[layer.weight.shape[0]] else {}))
    planner = gemv.GemvPlanner()
    x = _randn(1, 96, dtype=torch.bfloat16, seed=72)
    layers = {n: torch.nn.Linear(96, n, bias=False).to(torch.bfloat16) for n in plans}
    assert planner.split_sums(x, layers[24]).shape == (2, 24)
    assert planner.split_sums(x, layers[40]) is None and planner.split_sums(x, layers[56]) is None
    assert planner.split_sums(torch.ones(2, 96, dtype=torch.bfloat16), layers[24]) is None  # two rows: cuBLAS


def test_gemv_tilings_fill_the_card(ops):
    """A short N is cut along K until there are programs enough (within K's column blocks)."""
    import importlib

    gemv = importlib.import_module("thinkform.kernels.gemv")
    for n, k in ((1536, 1536), (1536, 8960), (17920, 1536), (64, 256)):
        tilings = gemv.candidate_tilings(n, k, 528)
        assert len(set(tilings)) == len(tilings) == 6
        for t in tilings:
            programs = -(-n // t.block_n) * t.splits
            chunks = -(-k // t.block_k)
            assert programs >= 528 or t.splits * 2 > chunks, (n, k, t)  # enough programs, or K cut finely
            assert t.splits <= chunks  # no empty slice
    assert gemv.GemvTiling(8, 512, 2) in gemv.candidate_tilings(1536, 1536, 528)  # 192 row blocks x 3 chunks


def test_gemv_planner_takes_a_tiling_only_when_clearly_faster(ops, monkeypatch):
    """Per weight shape the planner keeps cuBLAS unless a tiling beats it by more than timing noise, and
    keeps cuBLAS where timing fails; a chosen tiling then computes the layer (here through the interpreter)."""
    import importlib

    gemv = importlib.import_module("thinkform.kernels.gemv")
    fast = gemv.GemvTiling(8, 64, 2)
    layers = {n: torch.nn.Linear(96, n, bias=True).to(torch.bfloat16) for n in (24, 40, 56)}
    timings = {24: {None: 10.0, fast: 9.9}, 40: {None: 10.0, fast: 8.0}}

    def timed(self, x, layer):
        if layer.weight.shape[0] not in timings:
            raise RuntimeError("no CUDA graphs here")
        return timings[layer.weight.shape[0]]

    monkeypatch.setattr(gemv.GemvPlanner, "_time_candidates", timed)
    planner = gemv.GemvPlanner()
    x = _randn(1, 96, dtype=torch.bfloat16, seed=70)
    for n, layer in layers.items():
        assert_matches(planner.linear(x, layer), F.linear(x, layer.weight, layer.bias), max_ulp=1)
    assert {key[0][0]: plan for key, plan in planner.plans.items()} == {24: None, 40: fast, 56: None}
    assert planner.linear(torch.ones(2, 96, dtype=torch.bfloat16), layers[40]).shape == (2, 40)  # two rows: cuBLAS
    assert len(planner.plans) == 3
