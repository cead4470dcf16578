"""DenseAttention: a simple reference AttentionBackend (dense per-sequence K/V), for probes and tests."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


class DenseAttention:
    """A reference AttentionBackend keeping each sequence's K/V in growing dense tensors.

    Call `begin_step(seq_ids, num_tokens)` before a forward that concatenates several sequences' tokens
    (in that order); without it, every call belongs to sequence 0. Attention is causal within a step.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}
        self._step: list[tuple[int, int]] = []

    def begin_step(self, seq_ids: Sequence[int], num_tokens: Sequence[int]) -> None:
        if len(seq_ids) != len(num_tokens):
            raise ValueError("begin_step: seq_ids and num_tokens must have the same length")
        self._step = list(zip(seq_ids, num_tokens))

    def forget(self, seq_id: int) -> None:
        self._cache = {key: kv for key, kv in self._cache.items() if key[1] != seq_id}

    def __call__(self, layer_id: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        step = self._step or [(0, q.shape[0])]
        if sum(n for _, n in step) != q.shape[0]:
            raise ValueError(f"begin_step announced {sum(n for _, n in step)} tokens, the forward has {q.shape[0]}")
        outs, start = [], 0
        for seq_id, n in step:
            outs.append(self._attend(layer_id, seq_id, q[start : start + n], k[start : start + n], v[start : start + n]))
            start += n
        return torch.cat(outs, dim=0)

    def _attend(self, layer_id: int, seq_id: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        past = self._cache.get((layer_id, seq_id))
        if past is not None:
            k, v = torch.cat([past[0], k]), torch.cat([past[1], v])
        self._cache[(layer_id, seq_id)] = (k, v)
        n, total = q.shape[0], k.shape[0]
        groups = q.shape[1] // k.shape[1]
        kk = k.repeat_interleave(groups, dim=1).transpose(0, 1)
        vv = v.repeat_interleave(groups, dim=1).transpose(0, 1)
        qq = q.transpose(0, 1)
        if n == 1:  # one new token sees the whole history
            out = F.scaled_dot_product_attention(qq, kk, vv)
        elif n == total:  # no history: plain causal
            out = F.scaled_dot_product_attention(qq, kk, vv, is_causal=True)
        else:  # query i (absolute position total - n + i) sees keys 0 ..= total - n + i
            mask = torch.arange(total, device=q.device)[None, :] <= (torch.arange(n, device=q.device)[:, None] + total - n)
            out = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask)
        return out.transpose(0, 1)
