"""Qwen3: per-head RMSNorm on q and k before rotary; optional attention bias."""
from __future__ import annotations

from thinkform.models.config import ModelConfig
from thinkform.models.decoder import DecoderLM, LayerOptions


class Qwen3ForCausalLM(DecoderLM):
    def __init__(self, config: ModelConfig):
        options = LayerOptions(qkv_bias=config.attention_bias, o_bias=config.attention_bias, qk_norm=True)
        super().__init__(config, options)
