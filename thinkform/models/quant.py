"""Weight-only int4 on the CPU: group-wise asymmetric 4-bit weights, bfloat16 activations.

A decode step at batch 1 reads every weight once, so on a CPU it runs at memory bandwidth: 4-bit weights
are read 4x faster than bfloat16 ones. torch ships the kernel (`_weight_int4pack_mm_for_cpu`: w = (q - 8)
* scale + zero per group of 32 along the input dimension, q in 0..15); this module packs the weights and
swaps the layers' Linear modules for it.

A GGUF in Q4_1 (the embedded SmolLM2 file) already stores its weights on exactly that grid (w = d * q + m
per block of 32, the block's min at q = 0 and max at q = 15), so re-quantizing its dequantized weights
recovers them up to the bfloat16 rounding of the scales: the model is the file, read as llama.cpp reads
it. For other checkpoints int4 is an ordinary lossy quantization, chosen with `--quantization int4`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

GROUP_SIZE = 32
# The int4 kernel unpacks the weight again for every row: at more rows than this, the dense bfloat16 matmul
# is faster (measured on AVX512-BF16: 3072x576 at 16 rows, int4 345 us vs bf16 240 us; at 8 rows 175 vs 197)
DENSE_FROM_ROWS = 9
QUANTIZATIONS = ("auto", "none", "int4")
_LAYER_LINEARS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


def int4_supported(device: torch.device | str, dtype: torch.dtype) -> bool:
    """The packed-int4 kernel runs on the CPU with bfloat16 activations (float32 has no fast path)."""
    return torch.device(device).type == "cpu" and dtype == torch.bfloat16 and \
        hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")


def quantize_groups(weight: Tensor, group_size: int = GROUP_SIZE) -> tuple[Tensor, Tensor, Tensor]:
    """weight [N, K] → (q int32 [N, K] in 0..15, scale [N, K/g], zero [N, K/g]) with
    w ≈ (q - 8) * scale + zero, the min of each group at q = 0 and its max at q = 15."""
    n, k = weight.shape
    groups = weight.float().reshape(n, k // group_size, group_size)
    low = groups.amin(dim=-1)
    high = groups.amax(dim=-1)
    scale = (high - low) / 15
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(torch.round((groups - low[..., None]) / scale[..., None]), 0, 15)
    return q.reshape(n, k).to(torch.int32), scale, low + 8 * scale


class Int4Linear(nn.Module):
    """A Linear whose weight is packed int4 for decode-sized inputs (CPU, bfloat16 activations); larger
    inputs (prefill, big batches) use the dense bfloat16 weight it keeps beside, where the int4 kernel is
    slower (it re-unpacks the weight per row)."""

    def __init__(self, linear: nn.Linear, group_size: int = GROUP_SIZE) -> None:
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().to(torch.bfloat16), requires_grad=False)
        self.in_features, self.out_features, self.group_size = linear.in_features, linear.out_features, group_size
        q, scale, zero = quantize_groups(linear.weight.detach(), group_size)
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1))
        # [K/g, N, 2] as the kernel wants it
        self.register_buffer("scales_and_zeros", torch.stack([scale.t(), zero.t()], dim=-1).to(torch.bfloat16)
                             .contiguous())
        self.bias = None if linear.bias is None else \
            nn.Parameter(linear.bias.detach().to(torch.bfloat16).clone(), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()
        if flat.shape[0] >= DENSE_FROM_ROWS:
            return F.linear(flat, self.weight, self.bias).reshape(*shape[:-1], self.out_features)
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, self.group_size, self.scales_and_zeros)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*shape[:-1], self.out_features)

    def dequantized(self) -> Tensor:
        """The int4 weight the decode path computes with, [N, K] float32 (for tests and inspection)."""
        eye = torch.eye(self.in_features, dtype=torch.bfloat16)
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.packed, self.group_size, self.scales_and_zeros)
        return out.float().t().contiguous()


def quantize_model_int4(model: nn.Module, group_size: int = GROUP_SIZE) -> int:
    """Swap the decoder layers' projections for Int4Linear; returns how many were swapped. Layers whose
    input width is not a multiple of the group size stay dense."""
    swapped = 0
    for module in list(model.modules()):
        for name in _LAYER_LINEARS:
            child = module._modules.get(name)
            if isinstance(child, nn.Linear) and child.in_features % group_size == 0:
                module._modules[name] = Int4Linear(child, group_size)
                swapped += 1
    return swapped

