"""LayerOps: the small element-wise pieces of a decoder layer, behind one seam.

TorchOps (the default, every device) computes them with plain torch ops. On CUDA the engine swaps in
thinkform.kernels' Triton versions: a decode step of a 1.5B model is ~300 kernels instead of ~1,400,
and in a CUDA graph each small kernel costs ~2 µs whatever it does. Both give the same numbers (the
kernels round where torch rounds).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from thinkform.models.rope import apply_rotary


class TorchOps:
    def linear(self, x: Tensor, layer: nn.Module) -> Tensor:
        return layer(x)

    def rms_norm(self, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        dtype = x.dtype
        h = x.to(norm_compute_dtype(dtype))
        h = h * (h.pow(2).mean(-1, keepdim=True) + eps).rsqrt()
        return weight * h.to(dtype)

    def add_rms_norm(self, x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        """(rms_norm(residual + x), residual + x)."""
        residual = residual + x
        return self.rms_norm(residual, weight, eps), residual

    def linear_add_rms_norm(self, x: Tensor, layer: nn.Module, residual: Tensor, weight: Tensor,
                            eps: float) -> tuple[Tensor, Tensor]:
        """add_rms_norm(linear(x, layer), residual, ...): a projection and the norm after it."""
        return self.add_rms_norm(self.linear(x, layer), residual, weight, eps)

    def silu_and_mul(self, gate_up: Tensor) -> Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up

    def linear_silu_and_mul(self, x: Tensor, layer: nn.Module) -> Tensor:
        """silu_and_mul of the fused [gate | up] projection of x."""
        return self.silu_and_mul(self.linear(x, layer))

    def rotary(self, q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        """q [N, Hq, D], k [N, Hk, D]; cos/sin [N, 1, D/2]."""
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)


def norm_compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # half precision is normalised in float32 (as transformers does); float64 stays float64
    return torch.float64 if dtype == torch.float64 else torch.float32
