"""DecoderLM: the Llama-shaped decoder shared by Llama, Qwen2 and Qwen3, plus HF-checkpoint weight loading.

Parameter names follow the HF checkpoints, except the fused projections: q/k/v_proj load into qkv_proj
and gate/up_proj into gate_up_proj (one matmul each instead of three / two).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from thinkform.models.config import ModelConfig
from thinkform.models.layers import (AttentionBackend, CausalLM, DecoderLayer, RMSNorm, RotaryAttentionBackend,
                                     logits_dtype)
from thinkform.models.ops import TorchOps
from thinkform.models.rope import RotaryEmbedding


@dataclass(frozen=True)
class LayerOptions:
    qkv_bias: bool
    o_bias: bool
    qk_norm: bool


# checkpoint tensor names that are parts of a fused parameter: suffix -> (fused module, shard index)
_FUSED = {
    "self_attn.q_proj": ("self_attn.qkv_proj", 0),
    "self_attn.k_proj": ("self_attn.qkv_proj", 1),
    "self_attn.v_proj": ("self_attn.qkv_proj", 2),
    "mlp.gate_proj": ("mlp.gate_up_proj", 0),
    "mlp.up_proj": ("mlp.gate_up_proj", 1),
}
_LAYER_NAME = re.compile(r"^(model\.layers\.\d+)\.(self_attn\.[qkv]_proj|mlp\.(?:gate|up)_proj)\.(weight|bias)$")
_IGNORED = re.compile(r"(rotary_emb\.inv_freq|\.masked_bias|\.attn\.bias)$")


class DecoderLM(CausalLM):
    def __init__(self, config: ModelConfig, options: LayerOptions):
        super().__init__()
        self.config = config
        self.model = nn.Module()
        # an uninitialised weight (it is loaded): a random init on the meta device goes through torch._refs,
        # which imports torch._dynamo and triton, 0.9 CPU-s of a CPU start
        self.model.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size,
                                               _weight=torch.empty(config.vocab_size, config.hidden_size))
        self.model.layers = nn.ModuleList(
            DecoderLayer(config, i, qkv_bias=options.qkv_bias, o_bias=options.o_bias, qk_norm=options.qk_norm)
            for i in range(config.num_layers)
        )
        self.model.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(
            config.head_dim, config.rope_theta, config.rope_scaling, config.max_position_embeddings
        )
        # tied: no separate parameter (sharing one Parameter would not survive to_empty/_apply)
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size, False)
        self.ops = TorchOps()  # the engine swaps in Triton kernels on CUDA (thinkform.kernels)

    def forward(self, input_ids: Tensor, positions: Tensor, attn: AttentionBackend) -> Tensor:
        h = self.model.embed_tokens(input_ids)
        cos, sin = self.rotary(positions, h.dtype)
        residual = None
        rotate_inside = isinstance(attn, RotaryAttentionBackend)
        for layer in self.model.layers:
            h, residual = layer(h, residual, cos, sin, attn, self.ops, rotate_inside)
        if residual is None:
            return self.model.norm(h, self.ops)
        return self.model.norm.add_forward(h, residual, self.ops)[0]

    def output_weight(self) -> Tensor:
        return self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def compute_logits(self, hidden: Tensor) -> Tensor:
        return F.linear(hidden, self.output_weight()).to(logits_dtype(hidden.dtype))

    def compute_logits_at(self, hidden: Tensor, rows: Tensor, token_ids: Tensor) -> Tensor:
        # K dot products instead of M x vocab_size, in chunks of about 4M gathered weights. Products of
        # bfloat16 values are exact in float32 and summed there, then rounded as the matmul rounds its output.
        weight = self.output_weight()
        chunk = max(1, (1 << 22) // weight.shape[1])
        wide = logits_dtype(hidden.dtype)
        out = torch.empty(token_ids.shape[0], dtype=wide, device=hidden.device)
        for start in range(0, token_ids.shape[0], chunk):
            ids, at = token_ids[start:start + chunk], rows[start:start + chunk]
            dots = (hidden.index_select(0, at).to(wide) * weight.index_select(0, ids).to(wide)).sum(-1)
            out[start:start + chunk] = dots.to(hidden.dtype)
        return out

    # ---- weights ---------------------------------------------------------------------------------------

    def _shard_slice(self, fused_name: str, shard: int) -> slice:
        cfg = self.config
        if ".qkv_proj." in fused_name:
            q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
            bounds = [0, q, q + kv, q + 2 * kv]
        else:
            bounds = [0, cfg.intermediate_size, 2 * cfg.intermediate_size]
        return slice(bounds[shard], bounds[shard + 1])

    def _expected_parts(self) -> set[str]:
        parts: set[str] = set()
        for name, _ in self.named_parameters():
            match = re.match(r"^(.*)\.(qkv_proj|gate_up_proj)\.(weight|bias)$", name)
            if match is None:
                parts.add(name)
                continue
            count = 3 if match.group(2) == "qkv_proj" else 2
            parts.update(f"{name}#{i}" for i in range(count))
        return parts

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, Tensor]]) -> None:
        """Copy HF-named checkpoint tensors into our (fused) parameters; every parameter must be filled."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            if _IGNORED.search(name) or (name == "lm_head.weight" and self.lm_head is None):
                continue
            fused = _LAYER_NAME.match(name)
            if fused is not None:
                target_module, shard = _FUSED[fused.group(2)]
                target = f"{fused.group(1)}.{target_module}.{fused.group(3)}"
                if target not in params:
                    raise ValueError(f"checkpoint tensor {name!r} has no place in {self.config.arch} (no bias here?)")
                dest = params[target].data[self._shard_slice(target, shard)]
                key = f"{target}#{shard}"
            else:
                if name not in params:
                    raise ValueError(f"checkpoint tensor {name!r} is not a parameter of {self.config.arch}")
                dest, key = params[name].data, name
            if tuple(dest.shape) != tuple(tensor.shape):
                raise ValueError(
                    f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}, expected {tuple(dest.shape)}"
                )
            dest.copy_(tensor)
            loaded.add(key)
        missing = sorted(self._expected_parts() - loaded)
        if missing:
            shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
            raise ValueError(f"checkpoint is missing {len(missing)} tensor(s) for {self.config.arch}: {shown}")
