"""One-token linear layers (a batch-1 decode step) as a Triton GEMV, where it beats cuBLAS on this card.

At one token a linear layer reads its whole weight to make one row: it is bound by memory bandwidth, and
cuBLAS's kernels for such shapes leave much of it unused (an H200 profile of Qwen2.5-1.5B at batch 1:
the 1536x1536 o_proj took 6.4 µs for 4.7 MB, ~0.7 TB/s of the card's 4.8). `gemv` streams the weight in
row blocks, each program over one slice of K (split-K, so a short N still fills the card), and a second
small kernel sums the slices in a fixed order (deterministic, unlike atomics), adds the bias and rounds;
where the next op is the add + RMSNorm (o_proj), that norm's kernel sums them instead (`split_sums`).

`GemvPlanner` times the kernel's candidate tilings against cuBLAS once per weight shape, at the first
one-token call (the CUDA graph runner's warm-up, before capture), and keeps the fastest: on a card or shape
where cuBLAS wins, cuBLAS runs (on an H200 with Qwen2.5-1.5B: o_proj 5.8 µs against cuBLAS's 6.1, the
MLP's projection with its activation 17.1 against 18.3; qkv and down stay on cuBLAS; BENCHMARKS.md).
Numerics: float32 accumulation, one rounding at the end, as cuBLAS; the sum order differs, so results may
differ in the last bit.

`gemv_silu` is the MLP's [gate | up] projection and its activation in one launch (no split-K: silu needs
whole sums); the planner times it against cuBLAS followed by the activation kernel.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from thinkform.kernels.triton_ops import _cast, _round, silu_and_mul

logger = logging.getLogger("thinkform")

_MARGIN = 0.97  # a tiling replaces cuBLAS only when at least 3 % faster: not on timing noise
_ROW_BLOCKS = (8, 16, 32)
_COL_BLOCKS = (256, 512)


@dataclass(frozen=True)
class GemvTiling:
    block_n: int  # weight rows a program makes
    block_k: int  # columns a program reads per iteration
    splits: int  # slices of K, each its own program; summed by the second kernel when > 1

    def __str__(self) -> str:
        return f"n{self.block_n}k{self.block_k}s{self.splits}"


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, b_ptr, out_ptr, N, K, w_row, k_per_split, HAS_BIAS: tl.constexpr,
                 DIRECT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[s, n] = sum over this split's k of w[n, k] * x[k] (float32), or the finished row when DIRECT."""
    split = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    start = split * k_per_split
    for k in range(start, start + k_per_split, BLOCK_K):
        cols = k + tl.arange(0, BLOCK_K)
        col_ok = cols < K
        x = tl.load(x_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + rows[:, None] * w_row + cols[None, :], mask=row_ok[:, None] & col_ok[None, :],
                    other=0.0, eviction_policy="evict_first").to(tl.float32)  # read once: keep x in cache
        acc += w * x[None, :]
    total = tl.sum(acc, 1)
    if DIRECT:
        if HAS_BIAS:
            total += tl.load(b_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        tl.store(out_ptr + rows, _cast(total, out_ptr.dtype.element_ty), mask=row_ok)
    else:
        tl.store(out_ptr + split * N + rows, total, mask=row_ok)


@triton.jit
def _sum_splits_kernel(part_ptr, b_ptr, out_ptr, N, splits, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < N
    total = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(splits):
        total += tl.load(part_ptr + s * N + cols, mask=ok, other=0.0)
    if HAS_BIAS:
        total += tl.load(b_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + cols, _cast(total, out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _gemv_silu_kernel(x_ptr, w_ptr, b_ptr, out_ptr, inter, K, w_row, HAS_BIAS: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[n] = silu(gate[n]) * up[n] of the fused [gate | up] projection, gate row n and up row inter + n read
    by the same program: the MLP's projection and its activation in one launch."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < inter
    acc_gate = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        cols = k + tl.arange(0, BLOCK_K)
        col_ok = cols < K
        x = tl.load(x_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        ok = row_ok[:, None] & col_ok[None, :]
        at = rows[:, None] * w_row + cols[None, :]
        acc_gate += tl.load(w_ptr + at, mask=ok, other=0.0, eviction_policy="evict_first").to(tl.float32) * x
        acc_up += tl.load(w_ptr + inter * w_row + at, mask=ok, other=0.0,
                          eviction_policy="evict_first").to(tl.float32) * x
    gate = tl.sum(acc_gate, 1)
    up = tl.sum(acc_up, 1)
    if HAS_BIAS:
        gate += tl.load(b_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        up += tl.load(b_ptr + inter + rows, mask=row_ok, other=0.0).to(tl.float32)
    dt = out_ptr.dtype.element_ty
    # rounded where the two-kernel path rounds: the projection's outputs, then silu, then the product
    gate, up = _round(gate, dt), _round(up, dt)
    act = _round(tl.div_rn(gate, 1.0 + tl.exp(-gate)), dt)
    tl.store(out_ptr + rows, _cast(act * up, dt), mask=row_ok)


def gemv_silu(x: Tensor, weight: Tensor, bias: Tensor | None, tiling: GemvTiling) -> Tensor:
    """silu_and_mul(x [1, K] @ weight[2I, K].T (+ bias)) -> [1, I], in one launch (tiling.splits is ignored:
    the activation needs whole sums)."""
    n, k = weight.shape
    assert x.shape == (1, k) and x.stride(-1) == 1 and weight.stride(-1) == 1 and n % 2 == 0, (x.shape, weight.shape)
    inter = n // 2
    out = torch.empty(1, inter, dtype=x.dtype, device=x.device)
    _gemv_silu_kernel[(triton.cdiv(inter, tiling.block_n),)](
        x, weight, bias if bias is not None else weight, out, inter, k, weight.stride(0),
        HAS_BIAS=bias is not None, BLOCK_N=tiling.block_n, BLOCK_K=tiling.block_k, num_warps=4)
    return out


def gemv(x: Tensor, weight: Tensor, bias: Tensor | None, tiling: GemvTiling) -> Tensor:
    """x [1, K] @ weight[N, K].T (+ bias) -> [1, N], in x's dtype."""
    n = weight.shape[0]
    out = torch.empty(1, n, dtype=x.dtype, device=x.device)
    part = gemv_split_sums(x, weight, bias, tiling, out)
    if part is not out:
        block = 1024
        _sum_splits_kernel[(triton.cdiv(n, block),)](part, bias if bias is not None else part, out, n,
                                                     part.shape[0], HAS_BIAS=bias is not None, BLOCK=block,
                                                     num_warps=4)
    return out


def gemv_split_sums(x: Tensor, weight: Tensor, bias: Tensor | None, tiling: GemvTiling,
                    out: Tensor | None = None) -> Tensor:
    """gemv's first kernel: float32 sums [S, N] of the tiling's S slices of K, for the caller to add up (the
    next norm does, split_sums_add_rms_norm); with one slice, the finished row written into `out`."""
    n, k = weight.shape
    assert x.shape == (1, k) and x.stride(-1) == 1 and weight.stride(-1) == 1, (x.shape, weight.shape)
    per_split, splits = _slices(k, tiling)
    direct = splits == 1
    if direct:
        out = torch.empty(1, n, dtype=x.dtype, device=x.device) if out is None else out
    part = out if direct else torch.empty(splits, n, dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(n, tiling.block_n), splits)
    _gemv_kernel[grid](x, weight, bias if bias is not None else weight, part, n, k, weight.stride(0), per_split,
                       HAS_BIAS=bias is not None, DIRECT=direct, BLOCK_N=tiling.block_n,
                       BLOCK_K=tiling.block_k, num_warps=4)
    return part


def _slices(k: int, tiling: GemvTiling) -> tuple[int, int]:
    """(columns a slice, slices): whole column blocks, no empty slice."""
    per_split = triton.cdiv(triton.cdiv(k, tiling.block_k), tiling.splits) * tiling.block_k
    return per_split, triton.cdiv(k, per_split)


def candidate_tilings(n: int, k: int, programs_wanted: int) -> list[GemvTiling]:
    """Tilings that give the card enough programs (many loads in flight hide the memory latency that a
    one-token layer is all about): row blocks of 8 to 32, and K cut in as many slices (powers of two, each
    at least one column block) as it takes to reach `programs_wanted`. (Tensor-core dot tilings, x padded to
    16 rows with pipelined loads, lost to these and to cuBLAS on every Qwen2.5-1.5B shape on an H200, and
    cost ~20 s of compiles at start: not among them.)"""
    out = []
    for block_n in _ROW_BLOCKS:
        for block_k in _COL_BLOCKS:
            chunks = triton.cdiv(k, block_k)
            splits = 1
            while triton.cdiv(n, block_n) * splits < programs_wanted and splits * 2 <= chunks:
                splits *= 2
            out.append(GemvTiling(block_n, block_k, splits))
    return out


class GemvPlanner:
    """Per weight shape: the fastest of cuBLAS and the GEMV tilings, timed on first use (None = cuBLAS)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.plans: dict[tuple, GemvTiling | None] = {}
        self.timings: dict[tuple, dict[GemvTiling | None, float]] = {}  # µs per call, what the plans chose from

    def linear(self, x: Tensor, layer: torch.nn.Linear) -> Tensor:
        weight, bias = layer.weight, layer.bias
        tiling = self._tiling(x, layer)
        return F.linear(x, weight, bias) if tiling is None else gemv(x, weight, bias, tiling)

    def split_sums(self, x: Tensor, layer: torch.nn.Linear) -> Tensor | None:
        """The layer's float32 split sums [S, N] where its plan cuts K (the caller adds them up: one launch
        less), else None: compute it with `linear`."""
        tiling = self._tiling(x, layer)
        if tiling is None or _slices(layer.weight.shape[1], tiling)[1] == 1:
            return None
        return gemv_split_sums(x, layer.weight, None, tiling)

    def linear_silu(self, x: Tensor, layer: torch.nn.Linear) -> Tensor:
        """silu_and_mul(linear(x)) for the MLP's fused [gate | up] projection: one launch (gemv_silu) where
        that beats the projection and the activation kernel timed together, else the two."""
        tiling = self._tiling(x, layer, silu=True)
        if tiling is None:
            return silu_and_mul(self.linear(x, layer))
        return gemv_silu(x, layer.weight, layer.bias, tiling)

    def _tiling(self, x: Tensor, layer: torch.nn.Linear, silu: bool = False) -> GemvTiling | None:
        """This one-token layer's plan (timed on first use), or None: cuBLAS (`silu`: the plan of the layer
        with the activation after it, keyed apart)."""
        weight = layer.weight
        if not self._one_token(x, weight) or (silu and weight.shape[0] % 2):
            return None
        key = (tuple(weight.shape), x.dtype, layer.bias is not None)
        key = ("silu", *key) if silu else key
        if key not in self.plans:
            if x.is_cuda and torch.cuda.is_current_stream_capturing():
                return None  # never timed outside a capture: cuBLAS, as before
            time_candidates = self._time_silu_candidates if silu else self._time_candidates
            self.timings[key], self.plans[key] = self._plan(lambda: time_candidates(x, layer), weight)
        return self.plans[key]

    def _one_token(self, x: Tensor, weight: Tensor) -> bool:
        return self.enabled and x.shape[0] == 1 and x.stride(-1) == 1 and weight.stride(-1) == 1 \
            and x.dtype in (torch.bfloat16, torch.float16) and weight.dtype == x.dtype

    def _plan(self, time_candidates: Callable[[], dict[GemvTiling | None, float]],
              weight: Tensor) -> tuple[dict[GemvTiling | None, float], GemvTiling | None]:
        """(the timings, the choice): a tiling only where it beats cuBLAS by more than timing noise."""
        shape = "x".join(map(str, weight.shape))
        try:
            times = time_candidates()
        except Exception as e:  # noqa: BLE001 - timing is an optimisation: cuBLAS stays correct
            logger.warning("one-token linear %s not timed (%s: %s): cuBLAS", shape, type(e).__name__, e)
            return {}, None
        best = min((t for t in times if t is not None), key=times.__getitem__, default=None)
        choice = best if best is not None and times[best] < _MARGIN * times[None] else None
        logger.info("one-token linear %s: %s (µs: %s)", shape, choice or "cuBLAS",
                    {str(t or "cuBLAS"): round(v, 2) for t, v in times.items()})
        return times, choice

    def _time_candidates(self, x: Tensor, layer: torch.nn.Linear) -> dict[GemvTiling | None, float]:
        weight, bias = layer.weight, layer.bias
        programs = 4 * torch.cuda.get_device_properties(x.device).multi_processor_count
        return _time_tilings(weight, lambda w: F.linear(x, w, bias), lambda w, t: gemv(x, w, bias, t),
                             candidate_tilings(*weight.shape, programs))

    def _time_silu_candidates(self, x: Tensor, layer: torch.nn.Linear) -> dict[GemvTiling | None, float]:
        weight, bias = layer.weight, layer.bias
        tilings = [GemvTiling(block_n, block_k, 1) for block_n in _ROW_BLOCKS for block_k in _COL_BLOCKS]
        return _time_tilings(weight, lambda w: silu_and_mul(F.linear(x, w, bias)),
                             lambda w, t: gemv_silu(x, w, bias, t), tilings)


def _time_tilings(weight: Tensor, reference: Callable[[Tensor], Tensor], kernel: Callable[[Tensor, GemvTiling], Tensor],
                  tilings: list[GemvTiling]) -> dict[GemvTiling | None, float]:
    """µs per call of `reference` (None) and of `kernel` at each tiling that agrees with it, each timed in a
    CUDA graph (no launch cost, as in the engine's graphs) over copies of the weight that together overflow
    L2: a decode step reads every layer's weight from memory once."""
    from triton.testing import do_bench_cudagraph

    l2_bytes = torch.cuda.get_device_properties(weight.device).L2_cache_size
    copies = [weight] + [weight.clone() for _ in range(_copies_past_l2(weight, l2_bytes) - 1)]
    expected = reference(weight).float()

    def timed(run: Callable[[Tensor], Tensor]) -> float:
        return do_bench_cudagraph(lambda: [run(w) for w in copies], rep=10, return_mode="median") * 1e3 / len(copies)

    times: dict[GemvTiling | None, float] = {None: timed(reference)}
    for tiling in tilings:
        try:
            if torch.allclose(kernel(weight, tiling).float(), expected, rtol=2e-2, atol=2e-2):
                times[tiling] = timed(lambda w, t=tiling: kernel(w, t))
        except Exception as e:  # noqa: BLE001 - a tiling that does not build here is simply not used
            logger.debug("GEMV tiling %s for %s failed: %s", tiling, tuple(weight.shape), e)
    return times


def _copies_past_l2(weight: Tensor, l2_bytes: int) -> int:
    return max(2, -(-2 * l2_bytes // (weight.numel() * weight.element_size())))
