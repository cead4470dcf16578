"""Torch implementations of the served architectures and their loading; knows nothing of grammars."""
from __future__ import annotations

from thinkform.models.config import ModelConfig
from thinkform.models.dense_attention import DenseAttention
from thinkform.models.layers import AttentionBackend, CausalLM
from thinkform.models.loader import LoadedModel, cache_dir, default_dtype, load_model

__all__ = [
    "AttentionBackend",
    "CausalLM",
    "DenseAttention",
    "LoadedModel",
    "ModelConfig",
    "cache_dir",
    "default_dtype",
    "load_model",
]
