"""TritonOps: LayerOps on thinkform's Triton kernels (CUDA only; imported only when the engine runs there)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from thinkform.kernels import triton_ops
from thinkform.kernels.gemv import GemvPlanner
from thinkform.models.ops import TorchOps


class TritonOps(TorchOps):
    """Each piece one kernel launch. Anything the kernels do not cover (float64) falls back to torch."""

    def __init__(self, gemv: bool = True) -> None:
        self.gemv = GemvPlanner(enabled=gemv)

    def linear(self, x: Tensor, layer: nn.Module) -> Tensor:
        if type(layer) is not nn.Linear or not x.is_cuda:  # a quantized layer has its own kernel
            return layer(x)
        return self.gemv.linear(x, layer)

    def rms_norm(self, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        if not _fits(x):
            return super().rms_norm(x, weight, eps)
        return triton_ops.rms_norm(x, weight, eps)

    def add_rms_norm(self, x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        if not _fits(x):
            return super().add_rms_norm(x, residual, weight, eps)
        # the kernel writes the sum over `residual`: this layer's residual is ours alone to overwrite
        return triton_ops.fused_add_rms_norm(x, residual, weight, eps)

    def linear_add_rms_norm(self, x: Tensor, layer: nn.Module, residual: Tensor, weight: Tensor,
                            eps: float) -> tuple[Tensor, Tensor]:
        # a one-token projection cut along K (gemv's plan): its slices are summed by the norm's kernel
        parts = self.gemv.split_sums(x, layer) if type(layer) is nn.Linear and _fits(x) and _fits(residual) else None
        if parts is None:
            return super().linear_add_rms_norm(x, layer, residual, weight, eps)
        return triton_ops.split_sums_add_rms_norm(parts, layer.bias, residual, weight, eps)

    def silu_and_mul(self, gate_up: Tensor) -> Tensor:
        if not _fits(gate_up):
            return super().silu_and_mul(gate_up)
        return triton_ops.silu_and_mul(gate_up)

    def linear_silu_and_mul(self, x: Tensor, layer: nn.Module) -> Tensor:
        if type(layer) is not nn.Linear or not _fits(x):
            return super().linear_silu_and_mul(x, layer)
        return self.gemv.linear_silu(x, layer)

    def rotary(self, q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        if not (q.is_cuda and q.dtype in _KERNEL_DTYPES):
            return super().rotary(q, k, cos, sin)
        triton_ops.rotary_inplace(q, k, cos.reshape(cos.shape[0], -1), sin.reshape(sin.shape[0], -1))
        return q, k


_KERNEL_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _fits(x: Tensor) -> bool:
    return x.is_cuda and x.dim() == 2 and x.dtype in _KERNEL_DTYPES and x.stride(-1) == 1
