"""Triton kernels for the decode step, with their launch wrappers (CUDA only; tests run them in TRITON_INTERPRET).

Numerics: every kernel loads in the storage dtype, computes in float32 and rounds to the storage dtype exactly
where the torch reference (thinkform.models.layers / rope) rounds. Elementwise results (residual add, rotary,
KV store) are bit-identical to torch; rms_norm, silu_and_mul and attention differ only where the last float32
bit of a reduction / exp differs from torch's and flips a half-precision rounding (~1e-4 of elements on an H100).
Rounding float32 -> bfloat16 is done by hand (nearest-even on the bits, `_round`): the GPU's conversion does
exactly that, but Triton's interpreter truncates. Kernels that mimic torch's per-op rounding are compiled
without fp fusion (`_EXACT`), and rms_norm/silu use IEEE sqrt/division (tl.sqrt_rn, tl.div_rn), not the fast ones.

Performance (bf16, H100 + triton 3.6; memory bound, and at decode sizes launch latency (~5 us) dominates):
- rms_norm / fused_add_rms_norm: grid (N,), one program holds a whole row (BLOCK = next_pow2(H)); one read of x
  (and residual), one write of out (and residual). 256x4096: ~7-8 us, about a torch copy of the same rows.
- silu_and_mul: grid (N, cdiv(I, 1024)); reads 2I, writes I a row. 256x14336: ~14 us (~1.6 TB/s).
- rotary_inplace: grid (N, Hq), q and k in one launch (programs with h >= Hk skip k by mask); one head each.
  256 tokens x (32+8) heads x 128: ~10 us.
- store_kv: grid (N, Hkv), k and v in one launch; a scattered row copy of D elements each. ~5-6 us (launch).
- rotary_store_kv: rotary_inplace's grid, and programs h < Hk also write their rotated k head and v head to the
  cache: the CUDA step's one kernel between the qkv projection and attention (one launch a layer less).
- paged_decode_attention: grid (H, B), one program per (query head, sequence), heads fastest so the query heads
  of one kv head run together and share its K/V in L2; a single pass over the context in chunks of BLOCK_N
  positions (128 for D <= 128) with an online float32 softmax. The grid never depends on context lengths, so it
  can be captured in a CUDA graph. H=32/8, D=128: B=64 x 1024 ctx ~420 us, B=256 x 512 ~740 us (~0.65-0.7 TB/s
  of unique KV: GQA re-reads K/V per query head); B=1 x 4096 ~250 us (only 32 programs, one pass). With
  `splits` > 1 (flash-decoding, added after these measurements and not yet timed on a GPU) each context is cut
  into that many runs of whole chunks, each its own program, merged by `_combine_splits_kernel`. Grouping the
  query heads of a kv head in one program is the next step.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["rms_norm", "fused_add_rms_norm", "silu_and_mul", "rotary_inplace", "store_kv", "rotary_store_kv",
           "paged_decode_attention"]

_SILU_BLOCK = 1024
_ATTN_WARPS = 8
# Kernels that mimic torch's per-op rounding must not let the compiler fuse a multiply and an add into one fma
# (after LLVM narrows float16 math to half precision it would, skipping a rounding torch does).
_EXACT = {"enable_fp_fusion": False}


# ----------------------------------------------------------------------------------------------- device helpers

@triton.jit
def _round(x, dtype: tl.constexpr):
    """float32 x rounded (nearest-even) to dtype, returned as float32: what torch does after each half op."""
    if dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        y = tl.where(x != x, x, bits.to(tl.float32, bitcast=True))  # keep NaN a NaN
    else:
        y = x.to(dtype).to(tl.float32)
    return y


@triton.jit
def _cast(x, dtype: tl.constexpr):
    """float32 x rounded to nearest-even and converted to dtype, ready to store."""
    return _round(x, dtype).to(dtype)


# ----------------------------------------------------------------------------------------------- kernels

@triton.jit
def _rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, x_row, res_row, out_row, H, eps,
                     HAS_RES: tl.constexpr, BLOCK: tl.constexpr, SPLITS: tl.constexpr, bias_ptr,
                     HAS_BIAS: tl.constexpr):
    """SPLITS > 0: x is a one-token linear layer's float32 partial sums [SPLITS, H] (gemv's split-K), summed
    in order, biased and rounded here as gemv's second kernel would have (one launch a layer less)."""
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < H
    if SPLITS > 0:
        dt = res_ptr.dtype.element_ty
        x = tl.zeros((BLOCK,), dtype=tl.float32)
        for s in range(SPLITS):
            x += tl.load(x_ptr + s * H + cols, mask=mask, other=0.0)
        if HAS_BIAS:
            x += tl.load(bias_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        x = _round(x, dt)
    else:
        dt = x_ptr.dtype.element_ty
        x = tl.load(x_ptr + row * x_row + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        x = _round(x + tl.load(res_ptr + row * res_row + cols, mask=mask, other=0.0).to(tl.float32), dt)
        tl.store(res_ptr + row * res_row + cols, x.to(dt), mask=mask)
    inv_rms = tl.div_rn(1.0, tl.sqrt_rn(tl.sum(x * x, 0) / H + eps))  # IEEE, not the fast approximations
    h = _round(x * inv_rms, dt)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * out_row + cols, _cast(w * h, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, x_row, out_row, inter, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    dt = out_ptr.dtype.element_ty
    gate = tl.load(x_ptr + row * x_row + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * x_row + inter + cols, mask=mask, other=0.0).to(tl.float32)
    act = _round(tl.div_rn(gate, 1.0 + tl.exp(-gate)), dt)
    tl.store(out_ptr + row * out_row + cols, _cast(act * up, dt), mask=mask)


@triton.jit
def _rotated(ptr, cos, sin, d, mask, HALF: tl.constexpr):
    """Rotate-half of the head at ptr: (x1*cos - x2*sin, x2*cos + x1*sin) in its dtype, each product rounded
    like torch."""
    dt = ptr.dtype.element_ty
    x1 = tl.load(ptr + d, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(ptr + HALF + d, mask=mask, other=0.0).to(tl.float32)
    o1 = _round(x1 * cos, dt) - _round(x2 * sin, dt)
    o2 = _round(x2 * cos, dt) + _round(x1 * sin, dt)
    return _cast(o1, dt), _cast(o2, dt)


@triton.jit
def _rotate_head(ptr, cos, sin, d, mask, HALF: tl.constexpr):
    """In-place rotate-half of one head."""
    o1, o2 = _rotated(ptr, cos, sin, d, mask, HALF)
    tl.store(ptr + d, o1, mask=mask)
    tl.store(ptr + HALF + d, o2, mask=mask)


@triton.jit
def _rotary_kernel(q_ptr, k_ptr, cos_ptr, sin_ptr, q_row, q_head, k_row, k_head, cs_row, num_q_heads, num_k_heads,
                   HALF: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(0)
    h = tl.program_id(1)
    d = tl.arange(0, BLOCK)
    cos = tl.load(cos_ptr + n * cs_row + d, mask=d < HALF, other=0.0).to(tl.float32)
    sin = tl.load(sin_ptr + n * cs_row + d, mask=d < HALF, other=0.0).to(tl.float32)
    # a head past Hq / Hk masks everything (as `d < 0`: the interpreter mangles `block_mask & scalar_mask`)
    _rotate_head(q_ptr + n * q_row + h * q_head, cos, sin, d, d < tl.where(h < num_q_heads, HALF, 0), HALF)
    _rotate_head(k_ptr + n * k_row + h * k_head, cos, sin, d, d < tl.where(h < num_k_heads, HALF, 0), HALF)


@triton.jit
def _store_kv_kernel(k_ptr, v_ptr, kc_ptr, vc_ptr, slot_ptr, k_row, k_head, v_row, v_head,
                     kc_slot, kc_head, vc_slot, vc_head, HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(0)
    h = tl.program_id(1)
    slot = tl.load(slot_ptr + n).to(tl.int64)
    d = tl.arange(0, BLOCK)
    mask = d < tl.where(slot >= 0, HEAD_DIM, 0)  # a negative slot (padding row) stores nothing
    k = tl.load(k_ptr + n * k_row + h * k_head + d, mask=mask)
    v = tl.load(v_ptr + n * v_row + h * v_head + d, mask=mask)
    tl.store(kc_ptr + slot * kc_slot + h * kc_head + d, k.to(kc_ptr.dtype.element_ty), mask=mask)
    tl.store(vc_ptr + slot * vc_slot + h * vc_head + d, v.to(vc_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_store_kv_kernel(q_ptr, k_ptr, v_ptr, kc_ptr, vc_ptr, slot_ptr, cos_ptr, sin_ptr, q_row, q_head,
                            k_row, k_head, v_row, v_head, kc_slot, kc_head, vc_slot, vc_head, cs_row, num_k_heads,
                            HALF: tl.constexpr, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr,
                            BLOCK_D: tl.constexpr):
    """Program (n, h): query head h rotated in place; for h < Hk also key head h rotated straight into its
    cache slot and value head h copied there (what _rotary_kernel then _store_kv_kernel do, in one launch)."""
    n = tl.program_id(0)
    h = tl.program_id(1)
    d = tl.arange(0, BLOCK)
    cos = tl.load(cos_ptr + n * cs_row + d, mask=d < HALF, other=0.0).to(tl.float32)
    sin = tl.load(sin_ptr + n * cs_row + d, mask=d < HALF, other=0.0).to(tl.float32)
    _rotate_head(q_ptr + n * q_row + h * q_head, cos, sin, d, d < HALF, HALF)
    slot = tl.load(slot_ptr + n).to(tl.int64)
    # scalar conditions folded into the bound (the interpreter mangles `block_mask & scalar_mask`): a head past
    # Hk or a padding row (negative slot) stores nothing
    kv_limit = tl.where(h < num_k_heads, tl.where(slot >= 0, 1, 0), 0)
    kmask = d < HALF * kv_limit
    o1, o2 = _rotated(k_ptr + n * k_row + h * k_head, cos, sin, d, kmask, HALF)
    dst = kc_ptr + slot * kc_slot + h * kc_head
    tl.store(dst + d, o1.to(kc_ptr.dtype.element_ty), mask=kmask)
    tl.store(dst + HALF + d, o2.to(kc_ptr.dtype.element_ty), mask=kmask)
    dv = tl.arange(0, BLOCK_D)
    vmask = dv < HEAD_DIM * kv_limit
    v = tl.load(v_ptr + n * v_row + h * v_head + dv, mask=vmask)
    tl.store(vc_ptr + slot * vc_slot + h * vc_head + dv, v.to(vc_ptr.dtype.element_ty), mask=vmask)


@triton.jit
def _paged_decode_kernel(q_ptr, k_ptr, v_ptr, out_ptr, part_ptr, stat_ptr, bt_ptr, lens_ptr, scale,
                         q_b, q_h, k_slot, k_head, v_slot, v_head, o_b, o_h, bt_row, group,
                         HEAD_DIM: tl.constexpr, PAGE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                         SPLITS: tl.constexpr):
    h = tl.program_id(0)  # heads fastest: the query heads of one kv head run together and share K/V in L2
    b = tl.program_id(1)
    split = tl.program_id(2)
    kvh = h // group
    d = tl.arange(0, BLOCK_D)
    dmask = d < HEAD_DIM
    q = tl.load(q_ptr + b * q_b + h * q_h + d, mask=dmask, other=0.0).to(tl.float32)
    ctx = tl.load(lens_ptr + b).to(tl.int32)
    # split `split` of SPLITS takes an equal run of whole chunks; SPLITS == 1 takes the whole context
    span = tl.cdiv(tl.cdiv(ctx, SPLITS), BLOCK_N) * BLOCK_N
    lo = split * span
    hi = tl.minimum(ctx, lo + span)
    m_i = -float("inf")
    l_i = 0.0
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for start in range(lo, hi, BLOCK_N):
        pos = start + tl.arange(0, BLOCK_N)
        pmask = pos < hi
        page = tl.load(bt_ptr + b * bt_row + pos // PAGE, mask=pmask, other=0).to(tl.int64)
        slot = page * PAGE + pos % PAGE
        kv_mask = pmask[:, None] & dmask[None, :]
        k = tl.load(k_ptr + slot[:, None] * k_slot + kvh * k_head + d[None, :], mask=kv_mask, other=0.0)
        s = tl.where(pmask, tl.sum(k.to(tl.float32) * q[None, :], 1) * scale, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(s, 0))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new)
        v = tl.load(v_ptr + slot[:, None] * v_slot + kvh * v_head + d[None, :], mask=kv_mask, other=0.0)
        acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), 0)
        l_i = l_i * alpha + tl.sum(p, 0)
        m_i = m_new
    if SPLITS == 1:
        out = acc / tl.where(l_i > 0, l_i, 1.0)  # empty context: acc is 0, so the output is 0, not NaN
        tl.store(out_ptr + b * o_b + h * o_h + d, _cast(out, out_ptr.dtype.element_ty), mask=dmask)
    else:  # unnormalised partial sums and their (max, sum) for _combine_splits_kernel
        row = (b * tl.num_programs(0) + h) * SPLITS + split
        tl.store(part_ptr + row * BLOCK_D + d, acc)
        tl.store(stat_ptr + row * 2, m_i)
        tl.store(stat_ptr + row * 2 + 1, l_i)


@triton.jit
def _combine_splits_kernel(out_ptr, part_ptr, stat_ptr, o_b, o_h, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                           SPLITS: tl.constexpr):
    """Flash-decoding's second pass: the splits' partial softmaxes rescaled to their common max and summed."""
    h = tl.program_id(0)
    b = tl.program_id(1)
    d = tl.arange(0, BLOCK_D)
    sp = tl.arange(0, SPLITS)
    rows = (b * tl.num_programs(0) + h) * SPLITS + sp
    m = tl.load(stat_ptr + rows * 2)
    l = tl.load(stat_ptr + rows * 2 + 1)
    top = tl.max(m, 0)
    weight = tl.where(m > -float("inf"), tl.exp(m - tl.where(top > -float("inf"), top, 0.0)), 0.0)
    total = tl.sum(weight * l, 0)
    parts = tl.load(part_ptr + rows[:, None] * BLOCK_D + d[None, :])
    acc = tl.sum(parts * weight[:, None], 0)
    out = acc / tl.where(total > 0, total, 1.0)  # no keys at all: zeros, as the single pass gives
    tl.store(out_ptr + b * o_b + h * o_h + d, _cast(out, out_ptr.dtype.element_ty), mask=d < HEAD_DIM)


# ----------------------------------------------------------------------------------------------- launchers

def _check_last_contiguous(*tensors: Tensor) -> None:
    """Kernels index rows/heads by stride but assume the last dim is dense."""
    for t in tensors:
        if t.stride(-1) != 1:
            raise ValueError(f"last dimension must be contiguous, got strides {tuple(t.stride())}")


def _warps(block: int) -> int:
    """Enough warps that each thread holds a few (<= ~16) elements of a block."""
    return max(1, min(16, block // 512))


def _norm(x: Tensor, residual: Tensor | None, weight: Tensor, eps: float, out: Tensor | None) -> Tensor:
    _check_last_contiguous(x, weight, *(() if residual is None else (residual,)))
    n, hidden = x.shape
    if out is None:
        out = torch.empty((n, hidden), dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    if n == 0:
        return out
    block = triton.next_power_of_2(hidden)
    res = x if residual is None else residual
    _rms_norm_kernel[(n,)](x, res, weight, out, x.stride(0), res.stride(0), out.stride(0), hidden, eps,
                           HAS_RES=residual is not None, BLOCK=block, SPLITS=0, bias_ptr=x, HAS_BIAS=False,
                           num_warps=_warps(block), **_EXACT)
    return out


def rms_norm(x: Tensor, weight: Tensor, eps: float, out: Tensor | None = None) -> Tensor:
    """RMSNorm of rows x [N, H]: weight * (x * rsqrt(mean(x^2) + eps)).to(x.dtype), like layers.RMSNorm."""
    return _norm(x, None, weight, eps, out)


def fused_add_rms_norm(x: Tensor, residual: Tensor, weight: Tensor, eps: float,
                       out: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(rms_norm(residual + x), residual + x) in one pass; the new residual is written into `residual`."""
    if residual.dtype != x.dtype or residual.shape != x.shape:
        raise ValueError("residual must match x in shape and dtype")
    return _norm(x, residual, weight, eps, out), residual


def split_sums_add_rms_norm(parts: Tensor, bias: Tensor | None, residual: Tensor, weight: Tensor,
                            eps: float) -> tuple[Tensor, Tensor]:
    """fused_add_rms_norm(x, residual, ...) where x [1, H] is still a one-token linear layer's float32 split
    sums `parts` [S, H] (+ bias): summed, rounded, added and normalised in one launch."""
    _check_last_contiguous(parts, residual, weight)
    splits, hidden = parts.shape
    if residual.shape != (1, hidden) or not parts.is_contiguous():
        raise ValueError("split sums need one contiguous [S, H] float32 block and a [1, H] residual")
    out = torch.empty((1, hidden), dtype=torch.promote_types(residual.dtype, weight.dtype), device=residual.device)
    block = triton.next_power_of_2(hidden)
    _rms_norm_kernel[(1,)](parts, residual, weight, out, hidden, residual.stride(0), out.stride(0), hidden, eps,
                           HAS_RES=True, BLOCK=block, SPLITS=splits, bias_ptr=bias if bias is not None else parts,
                           HAS_BIAS=bias is not None, num_warps=_warps(block), **_EXACT)
    return out, residual


def silu_and_mul(gate_up: Tensor, out: Tensor | None = None) -> Tensor:
    """silu(gate) * up for gate_up = [gate | up] of shape [N, 2I] (the fused MLP projection) -> [N, I]."""
    _check_last_contiguous(gate_up)
    n, inter = gate_up.shape[0], gate_up.shape[1] // 2
    out = torch.empty((n, inter), dtype=gate_up.dtype, device=gate_up.device) if out is None else out
    if n == 0:
        return out
    grid = (n, triton.cdiv(inter, _SILU_BLOCK))
    _silu_and_mul_kernel[grid](gate_up, out, gate_up.stride(0), out.stride(0), inter, BLOCK=_SILU_BLOCK,
                               num_warps=4, **_EXACT)
    return out


def _rotary_inputs(name: str, q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """Checks q [N, Hq, D], k [N, Hk<=Hq, D] and cos/sin; returns cos/sin as [N, D/2] (views)."""
    _check_last_contiguous(q, k, cos, sin)
    n, hq, dim = q.shape
    cos, sin = cos.reshape(n, dim // 2), sin.reshape(n, dim // 2)
    if not (k.shape[0] == n and k.shape[2] == dim and k.shape[1] <= hq and cos.dtype == q.dtype == k.dtype):
        raise ValueError(f"{name}: need k [N, Hk<=Hq, D] and cos/sin in q's dtype")
    if cos.stride() != sin.stride():
        raise ValueError("cos and sin must share a layout")
    return cos, sin


def rotary_inplace(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> None:
    """Rotate-half (NeoX) rotary on q [N, Hq, D] and k [N, Hk, D] in place, one launch; cos/sin [N, D/2]
    (or [N, 1, D/2]) in q's dtype. q and k may be strided views of a fused qkv tensor."""
    cos, sin = _rotary_inputs("rotary_inplace", q, k, cos, sin)
    n, hq, dim = q.shape
    if n == 0:
        return
    block = triton.next_power_of_2(dim // 2)
    _rotary_kernel[(n, hq)](q, k, cos, sin, q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos.stride(0),
                            hq, k.shape[1], HALF=dim // 2, BLOCK=block, num_warps=_warps(block), **_EXACT)


def store_kv(k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor) -> None:
    """k_cache[slot_mapping[i]] = k[i] and likewise for v, one launch; negative slots are skipped."""
    _check_last_contiguous(k, v, k_cache, v_cache)
    n, heads, dim = k.shape
    if n == 0:
        return
    block = triton.next_power_of_2(dim)
    _store_kv_kernel[(n, heads)](k, v, k_cache, v_cache, slot_mapping, k.stride(0), k.stride(1), v.stride(0),
                                 v.stride(1), k_cache.stride(0), k_cache.stride(1), v_cache.stride(0),
                                 v_cache.stride(1), HEAD_DIM=dim, BLOCK=block, num_warps=_warps(block))


def rotary_store_kv(q: Tensor, k: Tensor, v: Tensor, cos: Tensor, sin: Tensor, k_cache: Tensor, v_cache: Tensor,
                    slot_mapping: Tensor) -> None:
    """rotary_inplace on q, then store_kv of the rotated k and of v, in one launch (k itself is left as it was:
    attention reads keys from the cache). Same numbers as the two calls."""
    cos, sin = _rotary_inputs("rotary_store_kv", q, k, cos, sin)
    _check_last_contiguous(v, k_cache, v_cache)
    if v.shape != k.shape:
        raise ValueError("rotary_store_kv: need v shaped as k")
    n, hq, dim = q.shape
    if n == 0:
        return
    block, block_d = triton.next_power_of_2(dim // 2), triton.next_power_of_2(dim)
    _rotary_store_kv_kernel[(n, hq)](
        q, k, v, k_cache, v_cache, slot_mapping, cos, sin, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        v.stride(0), v.stride(1), k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        cos.stride(0), k.shape[1], HALF=dim // 2, BLOCK=block, HEAD_DIM=dim, BLOCK_D=block_d,
        num_warps=_warps(block_d), **_EXACT)


def _attn_block_n(block_d: int) -> int:
    """Positions per chunk: K and V tiles of ~16k elements (64 a thread at 8 warps); 128 measured best at D=128."""
    return max(16, min(128, 16384 // block_d))


def paged_decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor, context_lens: Tensor,
                           page_size: int, scale: float, out: Tensor | None = None,
                           block_n: int | None = None, splits: int = 1) -> Tensor:
    """One query token per sequence q [B, H, D] attending over its paged KV history (GQA aware).

    Position p of sequence b lives in slot block_tables[b, p // page_size] * page_size + p % page_size; the
    number of positions is read from context_lens inside the kernel, so one launch serves any lengths (CUDA
    graph replay). Float32 online softmax; the output is rounded to q.dtype; empty contexts give zeros.
    `splits` > 1 (a power of two) cuts each context into that many runs handled by their own programs and
    merged by a second kernel (flash-decoding): a long context is then read by `splits` times more programs
    at once, for a second launch. block_n (positions per chunk, a power of two) is a tuning/testing knob;
    None picks by head size."""
    _check_last_contiguous(q, k_cache, v_cache, block_tables)
    batch, heads, dim = q.shape
    kv_heads = k_cache.shape[1]
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads are not a multiple of {kv_heads} kv heads")
    if splits < 1 or splits & (splits - 1):
        raise ValueError(f"splits must be a power of two, got {splits}")
    out = torch.empty((batch, heads, dim), dtype=q.dtype, device=q.device) if out is None else out
    if batch == 0:
        return out
    block_d = triton.next_power_of_2(dim)
    parts = stats = out  # unused by a single pass
    if splits > 1:
        parts = torch.empty((batch * heads * splits, block_d), dtype=torch.float32, device=q.device)
        stats = torch.empty((batch * heads * splits, 2), dtype=torch.float32, device=q.device)
    _paged_decode_kernel[(heads, batch, splits)](
        q, k_cache, v_cache, out, parts, stats, block_tables, context_lens, scale, q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1), out.stride(0), out.stride(1),
        block_tables.stride(0), heads // kv_heads, HEAD_DIM=dim, PAGE=page_size,
        BLOCK_N=block_n or _attn_block_n(block_d), BLOCK_D=block_d, SPLITS=splits, num_warps=_ATTN_WARPS)
    if splits > 1:
        _combine_splits_kernel[(heads, batch)](out, parts, stats, out.stride(0), out.stride(1), HEAD_DIM=dim,
                                               BLOCK_D=block_d, SPLITS=splits, num_warps=4)
    return out
