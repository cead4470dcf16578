"""Qwen2 / Qwen2.5 (DeepSeek-R1-Distill-Qwen, QwQ): bias on q/k/v, none on o."""
from __future__ import annotations


from thinkform.models.config import ModelConfig
from thinkform.models.decoder import DecoderLM, LayerOptions


class Qwen2ForCausalLM(DecoderLM):
    def __init__(self, config: ModelConfig):
        super().__init__(config, LayerOptions(qkv_bias=True, o_bias=False, qk_norm=False))
