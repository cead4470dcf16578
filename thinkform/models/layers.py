"""Building blocks shared by our architectures, and the two interfaces the engine sees.

Shapes are flat: the N tokens of one engine step (all sequences of the batch concatenated) are rows;
only the AttentionBackend knows which tokens belong to which sequence.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from abc import ABCMeta, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from thinkform.models.config import ModelConfig
from thinkform.models.ops import TorchOps


class AttentionBackend(Protocol):
    def __call__(self, layer_id: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q [N, num_heads, head_dim], k/v [N, num_kv_heads, head_dim] for this step's N tokens (rotary
        already applied); stores k/v and attends over each sequence's history; returns [N, num_heads, head_dim]."""
        ...


@runtime_checkable
class RotaryAttentionBackend(Protocol):
    """An AttentionBackend that also takes q/k before rotary and rotates them in the kernel that stores k/v
    (the CUDA step's: one launch a layer less)."""

    def rotate_and_attend(self, layer_id: int, q: Tensor, k: Tensor, v: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        ...


class CausalLM(nn.Module, metaclass=ABCMeta):
    """What the engine runs: hidden states from token ids + positions, then logits for chosen rows."""

    config: ModelConfig

    @abstractmethod
    def forward(self, input_ids: Tensor, positions: Tensor, attn: AttentionBackend) -> Tensor:  # [N],[N] -> [N, H]
        """Hidden states of the N tokens of one step."""

    @abstractmethod
    def compute_logits(self, hidden: Tensor) -> Tensor:  # [M, hidden] -> [M, vocab_size] float32/float64
        """Logits of the chosen rows."""

    def compute_logits_at(self, hidden: Tensor, rows: Tensor, token_ids: Tensor) -> Tensor:  # [M, H], [K], [K] -> [K]
        """logits[rows[k], token_ids[k]] for each k. Here: the named rows' full logits, then picked (models
        with a plain output matrix compute just the K dot products)."""
        named, index = rows.unique(return_inverse=True)
        return self.compute_logits(hidden[named])[index, token_ids]


def logits_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: Tensor, ops: TorchOps = TorchOps()) -> Tensor:
        if x.dim() > 2:  # per-head norms (Qwen3's q/k): the kernels take rows
            return ops.rms_norm(x.reshape(-1, x.shape[-1]), self.weight, self.eps).view(x.shape)
        return ops.rms_norm(x, self.weight, self.eps)

    def add_forward(self, x: Tensor, residual: Tensor, ops: TorchOps) -> tuple[Tensor, Tensor]:
        """(norm(residual + x), residual + x): the residual add fused into the norm."""
        return ops.add_rms_norm(x, residual, self.weight, self.eps)


def _silu(x: Tensor) -> Tensor:
    return F.silu(x)


def _gelu(x: Tensor) -> Tensor:
    return F.gelu(x)


def _gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


ACTIVATIONS = {"silu": _silu, "swish": _silu, "gelu": _gelu, "gelu_pytorch_tanh": _gelu_tanh}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"hidden_act={name!r} is not supported; supported: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class Attention(nn.Module):
    """Self-attention with q/k/v fused into one projection (filled at load time from q_proj/k_proj/v_proj)."""

    def __init__(self, config: ModelConfig, layer_id: int, *, qkv_bias: bool, o_bias: bool, qk_norm: bool):
        super().__init__()
        self.layer_id = layer_id
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.q_size = config.num_heads * config.head_dim
        self.kv_size = config.num_kv_heads * config.head_dim
        self.qkv_proj = nn.Linear(config.hidden_size, self.q_size + 2 * self.kv_size, bias=qkv_bias)
        self.o_proj = nn.Linear(self.q_size, config.hidden_size, bias=o_bias)
        # Qwen3: RMSNorm over each head's q and k before rotary
        self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps) if qk_norm else None

    def attend(self, x: Tensor, cos: Tensor, sin: Tensor, attn: AttentionBackend, ops: TorchOps,
               rotate_inside: bool = False) -> Tensor:
        """The heads' outputs [N, q_size], before o_proj (the layer applies it together with the norm after
        it, ops.linear_add_rms_norm). `rotate_inside`: attn is a RotaryAttentionBackend, which applies the
        rotary itself."""
        n = x.shape[0]
        q, k, v = ops.linear(x, self.qkv_proj).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(n, self.num_heads, self.head_dim)
        k = k.view(n, self.num_kv_heads, self.head_dim)
        v = v.view(n, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q, ops), self.k_norm(k, ops)
        if rotate_inside:
            out = attn.rotate_and_attend(self.layer_id, q, k, v, cos, sin)
        else:
            q, k = ops.rotary(q, k, cos, sin)
            out = attn(self.layer_id, q, k, v)
        return out.reshape(n, self.q_size)


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)) with gate and up fused into one projection."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.act = activation(config.hidden_act)
        self.silu = self.act is _silu

    def forward(self, x: Tensor, ops: TorchOps) -> Tensor:
        if self.silu:
            return ops.linear(ops.linear_silu_and_mul(x, self.gate_up_proj), self.down_proj)
        gate_up = ops.linear(x, self.gate_up_proj)
        gate, up = gate_up.split(self.intermediate_size, dim=-1)
        return ops.linear(self.act(gate) * up, self.down_proj)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int, *, qkv_bias: bool, o_bias: bool, qk_norm: bool):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_id, qkv_bias=qkv_bias, o_bias=o_bias, qk_norm=qk_norm)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = GatedMLP(config)

    def forward(self, x: Tensor, residual: Tensor | None, cos: Tensor, sin: Tensor, attn: AttentionBackend,
                ops: TorchOps, rotate_inside: bool = False) -> tuple[Tensor, Tensor]:
        """x: the previous layer's output, not yet added to `residual` (None at the first layer): each
        residual add is fused into the norm that follows it. Returns (output, residual)."""
        if residual is None:
            residual, h = x, self.input_layernorm(x, ops)
        else:
            h, residual = self.input_layernorm.add_forward(x, residual, ops)
        h = self.self_attn.attend(h, cos, sin, attn, ops, rotate_inside)
        norm = self.post_attention_layernorm
        h, residual = ops.linear_add_rms_norm(h, self.self_attn.o_proj, residual, norm.weight, norm.eps)
        return self.mlp(h, ops), residual
