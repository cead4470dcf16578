"""Rotary position embeddings: inverse frequencies for each rope_scaling type, and their application.

Frequencies are computed in float32 exactly as transformers does, because that is what the checkpoints
were trained with; the angles are taken in float32 too, except for float64 models (tests).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor, nn


def _base_inv_freq(theta: float, dim: int) -> Tensor:
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float32) / dim))


def _default(theta: float, dim: int, scaling: dict[str, Any], max_pos: int) -> tuple[Tensor, float]:
    return _base_inv_freq(theta, dim), 1.0


def _linear(theta: float, dim: int, scaling: dict[str, Any], max_pos: int) -> tuple[Tensor, float]:
    return _base_inv_freq(theta, dim) / float(scaling["factor"]), 1.0


def _llama3(theta: float, dim: int, scaling: dict[str, Any], max_pos: int) -> tuple[Tensor, float]:
    inv_freq = _base_inv_freq(theta, dim)
    factor = float(scaling["factor"])
    low_ff = float(scaling["low_freq_factor"])
    high_ff = float(scaling["high_freq_factor"])
    old_len = float(scaling["original_max_position_embeddings"])
    low_wavelen = old_len / low_ff
    high_wavelen = old_len / high_ff
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low_ff) / (high_ff - low_ff)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(is_medium, smoothed, scaled), 1.0


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(theta: float, dim: int, scaling: dict[str, Any], max_pos: int) -> tuple[Tensor, float]:
    orig = float(scaling["original_max_position_embeddings"])
    factor = scaling.get("factor")
    factor = float(factor) if factor is not None else max_pos / orig
    attn_factor = scaling.get("attention_factor")
    mscale, mscale_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
    if attn_factor is None:
        if mscale and mscale_all:
            attn_factor = _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all)
        else:
            attn_factor = _yarn_mscale(factor)
    beta_fast = scaling.get("beta_fast") or 32
    beta_slow = scaling.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(orig / (rotations * 2 * math.pi))) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos_freqs = theta ** (torch.arange(0, dim, 2).to(torch.float32) / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    extra_factor = 1 - ramp
    inv_freq = interpolation * (1 - extra_factor) + extrapolation * extra_factor
    return inv_freq, float(attn_factor)


_ROPE_TYPES: dict[str, Callable[[float, int, dict[str, Any], int], tuple[Tensor, float]]] = {
    "default": _default,
    "linear": _linear,
    "llama3": _llama3,
    "yarn": _yarn,
}

SUPPORTED_ROPE_TYPES = tuple(_ROPE_TYPES)


def rope_inv_freq(
    theta: float, dim: int, scaling: dict[str, Any] | None, max_position_embeddings: int
) -> tuple[Tensor, float]:
    """(inverse frequencies [dim/2] float32, cos/sin multiplier) for a rope_scaling dict (None = plain)."""
    rope_type = "default" if not scaling else str(scaling.get("rope_type", "default"))
    compute = _ROPE_TYPES.get(rope_type)
    if compute is None:
        raise ValueError(
            f"rope_scaling.rope_type={rope_type!r} is not supported; supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
        )
    return compute(theta, dim, scaling or {}, max_position_embeddings)


MAX_CACHED_POSITIONS = 1 << 18


class RotaryEmbedding(nn.Module):
    """positions [N] -> (cos, sin) [N, 1, head_dim/2], shared by every layer of one forward."""

    def __init__(self, head_dim: int, theta: float, scaling: dict[str, Any] | None, max_position_embeddings: int):
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta
        self.scaling = scaling
        self.max_position_embeddings = max_position_embeddings
        with torch.device("cpu"):  # not on the meta device models are built on: its ops import torch._dynamo
            inv_freq, self.attention_scaling = rope_inv_freq(theta, head_dim, scaling, max_position_embeddings)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._table: Tensor | None = None  # cache_positions' cos/sin rows (a plain attribute: not in state_dict)

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        # .to(dtype) / .to_empty() would cast or blank inv_freq; it is always recomputed in float32 instead
        super()._apply(fn, recurse)
        if self.inv_freq.device.type != "meta":
            inv_freq, _ = rope_inv_freq(self.theta, self.head_dim, self.scaling, self.max_position_embeddings)
            self.inv_freq = inv_freq.to(self.inv_freq.device)
        return self

    def cache_positions(self, count: int, dtype: torch.dtype, device: torch.device) -> bool:
        """Compute cos/sin for positions 0..count-1 once: a step then gathers its rows (one kernel in a CUDA
        graph instead of eight). The caller promises positions below `count`: the engine's context length.
        Past MAX_CACHED_POSITIONS (64 MB at head_dim 128 in bf16) nothing is cached: False."""
        if count > MAX_CACHED_POSITIONS:
            return False
        cos, sin = self._compute(torch.arange(count, device=device), dtype)
        self._table = torch.cat((cos, sin), dim=1)  # [count, 2, D/2]: one gather serves both
        return True

    def forward(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        table = self._table
        if table is not None and table.dtype == dtype and table.device == positions.device:
            rows = table[positions]
            return rows[:, :1], rows[:, 1:]
        return self._compute(positions, dtype)

    def _compute(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        angle_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        freqs = positions.to(angle_dtype)[:, None] * self.inv_freq.to(angle_dtype)[None, :]
        cos = (freqs.cos() * self.attention_scaling).to(dtype)
        sin = (freqs.sin() * self.attention_scaling).to(dtype)
        return cos[:, None, :], sin[:, None, :]


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate-half (GPT-NeoX layout, as in HF checkpoints) rotary on x [N, heads, head_dim]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
