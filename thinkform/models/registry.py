"""Which of our architectures serves an HF config; anything else goes to the transformers fallback."""
from __future__ import annotations

from typing import Any, Callable

from thinkform.models.config import ModelConfig
from thinkform.models.decoder import DecoderLM
from thinkform.models.llama import LlamaForCausalLM
from thinkform.models.qwen2 import Qwen2ForCausalLM
from thinkform.models.qwen3 import Qwen3ForCausalLM

ModelFactory = Callable[[ModelConfig], DecoderLM]

ARCHITECTURES: dict[str, ModelFactory] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
}

MODEL_TYPES: dict[str, ModelFactory] = {
    "llama": LlamaForCausalLM,
    "qwen2": Qwen2ForCausalLM,
    "qwen3": Qwen3ForCausalLM,
}


def native_model_class(raw_config: dict[str, Any]) -> ModelFactory | None:
    """Our implementation for this config.json, or None when the transformers fallback must run it."""
    for arch in raw_config.get("architectures") or []:
        if arch in ARCHITECTURES:
            return ARCHITECTURES[arch]
    if raw_config.get("architectures"):
        return None  # named an architecture we do not implement (e.g. LlamaForSequenceClassification)
    return MODEL_TYPES.get(str(raw_config.get("model_type", "")))
