"""Llama (SmolLM2, DeepSeek-R1-Distill-Llama, Llama 3.x): the plain decoder; llama3 rope scaling via config."""
from __future__ import annotations

from thinkform.models.config import ModelConfig
from thinkform.models.decoder import DecoderLM, LayerOptions


class LlamaForCausalLM(DecoderLM):
    def __init__(self, config: ModelConfig):
        options = LayerOptions(qkv_bias=config.attention_bias, o_bias=config.attention_bias, qk_norm=False)
        super().__init__(config, options)
