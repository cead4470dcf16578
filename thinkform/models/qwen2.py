"""Qwen2 / Qwen2.5 (DeepSeek-R1-Distill-Qwen, QwQ): bias on q/k/v, none on o."""
from __future__ import annotations

import warnings

from thinkform.models.config import ModelConfig
from thinkform.models.decoder import DecoderLM, LayerOptions


class Qwen2ForCausalLM(DecoderLM):
    def __init__(self, config: ModelConfig):
        if config.extra.get("use_sliding_window"):
            # identical to full attention for sequences shorter than the window
            warnings.warn(
                f"{config.arch}: use_sliding_window is set; thinkform attends over the full context "
                f"(exact up to sliding_window={config.extra.get('sliding_window')} tokens)",
                stacklevel=2,
            )
        super().__init__(config, LayerOptions(qkv_bias=True, o_bias=False, qk_norm=False))
