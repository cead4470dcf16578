"""Paged attention through SDPA: write the step's k/v into their slots, gather each sequence's history."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from thinkform.engine.kv_cache import KVCache


@dataclass
class StepLayout:
    """Where the N tokens of one forward step live: in the KV cache and in a padded [B, T] query grid."""

    slot_mapping: torch.Tensor  # [N] cache slot each new token's k/v goes to
    gather_slots: torch.Tensor  # [B, L] cache slots of each sequence's whole context (padded)
    mask: torch.Tensor  # [B, 1, T, L] bool, True = may attend
    pad_index: torch.Tensor | None  # [N] position of each token in the flattened [B*T] grid; None when B*T == N
    batch: int
    width: int  # T

    @staticmethod
    def build(starts: list[int], lengths: list[int], block_tables: list[list[int]], page_size: int,
              device: torch.device) -> "StepLayout":
        """starts[b]: tokens already in cache; lengths[b]: tokens computed this step."""
        batch, width = len(starts), max(lengths)
        ctx = [s + n for s, n in zip(starts, lengths)]
        max_ctx = max(ctx)
        positions = torch.zeros(batch, width, dtype=torch.long)
        gather = torch.zeros(batch, max_ctx, dtype=torch.long)
        slot_parts, pad_parts = [], []
        for b, (start, n, table) in enumerate(zip(starts, lengths, block_tables)):
            pages = torch.tensor(table, dtype=torch.long)
            offs = torch.arange(ctx[b])
            slots = pages[offs // page_size] * page_size + offs % page_size
            gather[b, :ctx[b]] = slots
            slot_parts.append(slots[start:])
            positions[b, :n] = torch.arange(start, start + n)
            pad_parts.append(torch.arange(b * width, b * width + n))
        mask = torch.arange(max_ctx)[None, None, :] <= positions[:, :, None]
        padded = batch * width != sum(lengths)
        return StepLayout(
            slot_mapping=torch.cat(slot_parts).to(device),
            gather_slots=gather.to(device),
            mask=mask.unsqueeze(1).to(device),
            pad_index=torch.cat(pad_parts).to(device) if padded else None,
            batch=batch,
            width=width,
        )


class PagedAttention:
    """The AttentionBackend the models call once per layer."""

    def __init__(self, kv: KVCache, layout: StepLayout) -> None:
        self.kv = kv
        self.layout = layout

    def __call__(self, layer_id: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        lay = self.layout
        k_cache, v_cache = self.kv.k[layer_id], self.kv.v[layer_id]
        k_cache.index_copy_(0, lay.slot_mapping, k.to(k_cache.dtype))
        v_cache.index_copy_(0, lay.slot_mapping, v.to(v_cache.dtype))
        keys = k_cache[lay.gather_slots].transpose(1, 2)  # [B, Hkv, L, D]
        values = v_cache[lay.gather_slots].transpose(1, 2)
        n, heads, dim = q.shape
        queries = self._to_grid(q).transpose(1, 2)  # [B, H, T, D]
        out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=lay.mask, enable_gqa=True)
        out = out.transpose(1, 2).reshape(lay.batch * lay.width, heads, dim)
        return out if lay.pad_index is None else out[lay.pad_index]

    def _to_grid(self, x: torch.Tensor) -> torch.Tensor:
        lay = self.layout
        if lay.pad_index is None:
            return x.view(lay.batch, lay.width, *x.shape[1:])
        grid = x.new_zeros(lay.batch * lay.width, *x.shape[1:])
        grid[lay.pad_index] = x
        return grid.view(lay.batch, lay.width, *x.shape[1:])
