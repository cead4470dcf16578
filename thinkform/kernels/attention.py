"""TokenAttention: the AttentionBackend of CUDA steps, one Triton launch per layer for each of rotary + store
and attend.

Every token of the step is its own query row: token t reads the pages of its sequence (`tables[t]`) up
to its own position (`lens[t]` = position + 1), so one kernel serves decodes, the small extends that ride
with them (jump-forward text, forced markers) and short prefills, and its launch shape depends only on
the step's token count: the same launch replays in a CUDA graph with new tables and lengths."""
from __future__ import annotations

import torch
from torch import Tensor

from thinkform.kernels import triton_ops
from thinkform.models.rope import apply_rotary


class TokenAttention:
    def __init__(self, k_cache: Tensor, v_cache: Tensor, slots: Tensor, tables: Tensor, lens: Tensor,
                 page_size: int, splits: int = 1) -> None:
        """k_cache/v_cache [layers, slots, Hkv, D]; slots [T] (where each token's k/v goes); tables [T, P]
        (each token's sequence's pages); lens [T] (keys each token attends to; 0 for padding); splits:
        programs per (token, head), each over its own run of the context (flash-decoding; 1 = one pass)."""
        self.k_cache, self.v_cache = k_cache, v_cache
        self.slots, self.tables, self.lens = slots, tables, lens
        self.page_size = page_size
        self.splits = splits

    def __call__(self, layer_id: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        k_cache, v_cache = self.k_cache[layer_id], self.v_cache[layer_id]
        triton_ops.store_kv(k, v, k_cache, v_cache, self.slots)
        return self._attend(layer_id, q)

    def rotate_and_attend(self, layer_id: int, q: Tensor, k: Tensor, v: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """q and k before rotary: it is applied in the kernel that stores k/v (RotaryAttentionBackend)."""
        if not (q.dtype == k.dtype == cos.dtype and q.dtype in _ROTARY_DTYPES):
            rotated_q, rotated_k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
            return self(layer_id, rotated_q, rotated_k, v)
        triton_ops.rotary_store_kv(q, k, v, cos, sin, self.k_cache[layer_id], self.v_cache[layer_id], self.slots)
        return self._attend(layer_id, q)

    def _attend(self, layer_id: int, q: Tensor) -> Tensor:
        return triton_ops.paged_decode_attention(q, self.k_cache[layer_id], self.v_cache[layer_id], self.tables,
                                                 self.lens, self.page_size, q.shape[-1] ** -0.5, splits=self.splits)


_ROTARY_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
