"""ModelConfig: the architecture facts our torch modules and the engine (KV cache sizing) need.

Built from a Hugging Face config.json dictionary; both the old spelling (`rope_theta` + `rope_scaling`) and
transformers 5's `rope_parameters` are understood.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class ModelConfig:
    arch: str  # HF architecture name, e.g. "LlamaForCausalLM"
    model_type: str  # HF model_type, e.g. "llama"
    vocab_size: int  # rows of the embedding / columns of the logits (may exceed len(tokenizer))
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # None or {"rope_type": ..., factor, ...}
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    dtype: torch.dtype = torch.float32
    hidden_act: str = "silu"
    attention_bias: bool = False  # bias on q/k/v/o (Llama's `attention_bias`)
    mlp_bias: bool = False
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # the raw HF config, for anything else

    @property
    def rope_type(self) -> str:
        return "default" if not self.rope_scaling else str(self.rope_scaling.get("rope_type", "default"))

    @property
    def sliding_window(self) -> int | None:
        """The attention window of the model's sliding layers, or None where every layer attends in full.
        thinkform attends over the full context, which is exact only up to the window (setup caps the
        context there)."""
        raw = self.extra
        window = raw.get("sliding_window")
        # Qwen's configs slide only where use_sliding_window says so (transformers' default: False)
        slides = raw.get("use_sliding_window", not self.model_type.startswith("qwen"))
        if not isinstance(window, int) or window <= 0 or slides is False:
            return None
        layer_types = raw.get("layer_types")
        if isinstance(layer_types, list):
            return window if "sliding_attention" in layer_types else None
        if "max_window_layers" in raw:  # Qwen2's older spelling: layers from max_window_layers on slide
            return window if int(raw["max_window_layers"]) < self.num_layers else None
        return window


def _as_id_tuple(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return (int(value),)


def rope_fields(raw: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling) from either config spelling; rope_scaling is None for plain RoPE."""
    params = raw.get("rope_parameters")
    scaling = raw.get("rope_scaling")
    theta = raw.get("rope_theta")
    merged: dict[str, Any] = {}
    if isinstance(params, dict):
        merged.update(params)
    if isinstance(scaling, dict):
        merged.update(scaling)
    if theta is None:
        theta = merged.get("rope_theta", 10000.0)
    merged.pop("rope_theta", None)
    rope_type = merged.get("rope_type", merged.get("type", "default"))
    merged.pop("type", None)
    if rope_type == "default" and not (set(merged) - {"rope_type"}):
        return float(theta), None
    merged["rope_type"] = rope_type
    return float(theta), merged


def _required(raw: dict[str, Any], key: str) -> Any:
    if raw.get(key) is None:
        raise ValueError(f"config.json: required field {key!r} is missing")
    return raw[key]


def config_from_hf_dict(raw: dict[str, Any], dtype: torch.dtype) -> ModelConfig:
    """Read the decoder-only transformer fields of an HF config.json (already parsed)."""
    archs = raw.get("architectures") or []
    hidden = int(_required(raw, "hidden_size"))
    heads = int(_required(raw, "num_attention_heads"))
    kv_heads = int(raw.get("num_key_value_heads") or heads)
    head_dim = int(raw.get("head_dim") or hidden // heads)
    theta, scaling = rope_fields(raw)
    return ModelConfig(
        arch=str(archs[0]) if archs else "",
        model_type=str(raw.get("model_type", "")),
        vocab_size=int(_required(raw, "vocab_size")),
        hidden_size=hidden,
        intermediate_size=int(raw.get("intermediate_size") or 4 * hidden),
        num_layers=int(_required(raw, "num_hidden_layers")),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        rope_theta=theta,
        rope_scaling=scaling,
        rms_norm_eps=float(raw.get("rms_norm_eps") or 1e-6),
        max_position_embeddings=int(raw.get("max_position_embeddings") or 2048),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        bos_token_id=raw.get("bos_token_id") if isinstance(raw.get("bos_token_id"), int) else None,
        eos_token_ids=_as_id_tuple(raw.get("eos_token_id")),
        dtype=dtype,
        hidden_act=str(raw.get("hidden_act") or "silu"),
        attention_bias=bool(raw.get("attention_bias", False)),
        mlp_bias=bool(raw.get("mlp_bias", False)),
        extra=dict(raw),
    )
