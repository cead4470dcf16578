"""Decode attention, the engine's kernel against a GQA-grouped candidate: same inputs, outputs compared, timed.

    python bench/attention_variants.py [--batch-sizes 1 32] [--contexts 256 1024 4096] [--json-out rows.jsonl]

The engine's `paged_decode_attention` runs one program per (query head, sequence), so each kv head's keys and
values are read once per query head of its group (6 times for Qwen2.5-1.5B's 12 / 2 heads, mostly from L2).
The candidate here runs one program per (kv head, sequence) for all the query heads of the group: the group's
queries as the rows of one tensor-core dot with each key tile, the probabilities (rounded to the cache's
dtype, as flash attention does) dotted with the value tile. Qwen2.5-1.5B's shapes, bf16, page size 16,
random contexts of the given length. Rows: variant, batch, context, milliseconds (triton's do_bench), and the
largest difference from the engine kernel's output.

On a CPU (no GPU) Triton's interpreter runs both kernels on small shapes for the comparison only: that is
how this script is tried before a device call. `bench/gpu_bench.py --parts attention` runs it on a card.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

if __name__ == "__main__" and "--interpret" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from thinkform.engine.graph_runner import LONG_SPLITS  # noqa: E402
from thinkform.kernels import triton_ops  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM, PAGE = 12, 2, 128, 16


@triton.jit
def _grouped_decode_kernel(q_ptr, k_ptr, v_ptr, out_ptr, bt_ptr, lens_ptr, scale, q_b, q_h, k_slot, k_head, v_slot,
                           v_head, o_b, o_h, bt_row, group, HEAD_DIM: tl.constexpr, PAGE: tl.constexpr,
                           BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_G: tl.constexpr):
    kvh = tl.program_id(0)
    b = tl.program_id(1)
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    qmask = (g < group)[:, None] & (d < HEAD_DIM)[None, :]
    heads = kvh * group + g
    q = tl.load(q_ptr + b * q_b + heads[:, None] * q_h + d[None, :], mask=qmask, other=0.0)
    ctx = tl.load(lens_ptr + b).to(tl.int32)
    m_i = tl.full([BLOCK_G], -float("inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    for start in range(0, ctx, BLOCK_N):
        pos = start + tl.arange(0, BLOCK_N)
        pmask = pos < ctx
        page = tl.load(bt_ptr + b * bt_row + pos // PAGE, mask=pmask, other=0).to(tl.int64)
        slot = page * PAGE + pos % PAGE
        kv_mask = pmask[:, None] & (d < HEAD_DIM)[None, :]
        k = tl.load(k_ptr + slot[:, None] * k_slot + kvh * k_head + d[None, :], mask=kv_mask, other=0.0)
        s = tl.where(pmask[None, :], tl.dot(q, tl.trans(k)) * scale, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        v = tl.load(v_ptr + slot[:, None] * v_slot + kvh * v_head + d[None, :], mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(out_ptr + b * o_b + heads[:, None] * o_h + d[None, :], out.to(out_ptr.dtype.element_ty), mask=qmask)


def grouped_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, tables: torch.Tensor,
                             lens: torch.Tensor, page: int, scale: float, block_n: int = 64) -> torch.Tensor:
    batch, heads, dim = q.shape
    kv_heads = k_cache.shape[1]
    group = heads // kv_heads
    out = torch.empty_like(q)
    _grouped_decode_kernel[(kv_heads, batch)](
        q, k_cache, v_cache, out, tables, lens, scale, q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1),
        v_cache.stride(0), v_cache.stride(1), out.stride(0), out.stride(1), tables.stride(0), group, HEAD_DIM=dim,
        PAGE=page, BLOCK_N=block_n, BLOCK_D=triton.next_power_of_2(dim), BLOCK_G=max(16, triton.next_power_of_2(group)),
        num_warps=4)
    return out


def _inputs(batch: int, ctx: int, device: str, dtype: torch.dtype, seed: int = 0) -> tuple[Any, ...]:
    gen = torch.Generator().manual_seed(seed)
    pages_per_seq = -(-ctx // PAGE)
    slots = batch * pages_per_seq * PAGE
    k_cache = torch.randn(slots, KV_HEADS, HEAD_DIM, generator=gen).to(dtype).to(device)
    v_cache = torch.randn(slots, KV_HEADS, HEAD_DIM, generator=gen).to(dtype).to(device)
    tables = torch.randperm(batch * pages_per_seq, generator=gen).view(batch, pages_per_seq).to(torch.int32).to(device)
    lens = torch.randint(max(1, ctx // 2), ctx + 1, (batch,), generator=gen).to(device)
    q = torch.randn(batch, HEADS, HEAD_DIM, generator=gen).to(dtype).to(device)
    return q, k_cache, v_cache, tables, lens


def run(batch_sizes: list[int], contexts: list[int], timed: bool) -> list[dict[str, Any]]:
    device = "cuda" if timed else "cpu"
    # the interpreter multiplies bfloat16 tiles as their raw bits in tl.dot: float16 there, bfloat16 on a card
    dtype = torch.bfloat16 if timed else torch.float16
    rows = []
    for batch in batch_sizes:
        for ctx in contexts:
            q, k, v, tables, lens = _inputs(batch, ctx, device, dtype)
            scale = HEAD_DIM ** -0.5
            splits = LONG_SPLITS
            variants = {
                "engine": lambda: triton_ops.paged_decode_attention(q, k, v, tables, lens, PAGE, scale),
                f"engine_splits{splits}": lambda: triton_ops.paged_decode_attention(q, k, v, tables, lens, PAGE, scale,
                                                                                   splits=splits),
                "grouped_n64": lambda: grouped_decode_attention(q, k, v, tables, lens, PAGE, scale, 64),
                "grouped_n128": lambda: grouped_decode_attention(q, k, v, tables, lens, PAGE, scale, 128),
            }
            reference = variants["engine"]().float()
            for name, fn in variants.items():
                diff = (fn().float() - reference).abs().max().item()
                row = {"attention": name, "batch": batch, "context": ctx, "dtype": str(dtype).removeprefix("torch."),
                       "max_abs_diff": diff}
                if timed:
                    row["ms"] = triton.testing.do_bench(fn, warmup=20, rep=80)
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--contexts", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--interpret", action="store_true", help="Triton's interpreter on the CPU (small shapes, no timing)")
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args()
    rows = run(args.batch_sizes, args.contexts, timed=not args.interpret)
    if args.json_out:
        with open(args.json_out, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
