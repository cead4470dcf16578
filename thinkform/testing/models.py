"""Tiny random-weight HF model directories and a dense reference AttentionBackend, for tests and benchmarks."""
from __future__ import annotations

from pathlib import Path

import torch

from thinkform.models.dense_attention import DenseAttention

__all__ = ["DenseAttention", "TINY_ARCHS", "make_tiny_model_dir"]

TINY_ARCHS = ("llama", "qwen2", "qwen3")


def _default_tokenizer():
    from thinkform.testing.tokenizers import build_tiny_tokenizer

    return build_tiny_tokenizer()


def _hf_config(arch: str, **fields):
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    classes = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}
    if arch not in classes:
        raise ValueError(f"make_tiny_model_dir: arch={arch!r} is not one of {', '.join(TINY_ARCHS)}")
    return classes[arch](**fields)


def _randomize(model: torch.nn.Module, seed: int, device: str = "cpu") -> None:
    """Weights large enough that greedy decoding does not collapse onto one token. On a GPU (benchmark
    models of real size) in float32: seconds instead of a minute."""
    gen = torch.Generator(device=device).manual_seed(seed)
    dtype = torch.float64 if device == "cpu" else torch.float32

    def randn(shape: torch.Size) -> torch.Tensor:
        return torch.randn(shape, generator=gen, dtype=dtype, device=device)

    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.1 * randn(param.shape))
            elif name.endswith("bias"):
                param.copy_(0.1 * randn(param.shape))
            else:
                fan_in = param.shape[-1]
                std = 1.0 if "embed_tokens" in name else 1.5 / fan_in**0.5
                param.copy_(std * randn(param.shape))


def make_tiny_model_dir(
    path: str | Path,
    arch: str = "llama",
    tokenizer=None,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    seed: int = 0,
    vocab_size: int | None = None,
    dtype: torch.dtype = torch.float32,
    rope_scaling: dict | None = None,
    tie_word_embeddings: bool = False,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 4096,
    device: str = "cpu",
) -> Path:
    """Write a random-weight HF model directory (config.json, model.safetensors, tokenizer, generation_config).

    `vocab_size` may exceed len(tokenizer): the extra embedding rows are padding the tokenizer never emits.
    """
    from transformers import AutoModelForCausalLM, GenerationConfig

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer if tokenizer is not None else _default_tokenizer()
    vocab = vocab_size if vocab_size is not None else len(tokenizer)
    if vocab < len(tokenizer):
        raise ValueError(f"make_tiny_model_dir: vocab_size={vocab} is smaller than the tokenizer ({len(tokenizer)})")
    eos_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    bos_id = tokenizer.bos_token_id
    fields = dict(
        vocab_size=vocab,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if rope_scaling is not None:
        fields["rope_scaling"] = {"rope_theta": 10000.0, **rope_scaling}
    config = _hf_config(arch, **fields)
    config.architectures = [type(config).__name__.replace("Config", "ForCausalLM")]
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32 if device == "cpu" else dtype)
    _randomize(model, seed, device)
    model.to(dtype).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=tokenizer.pad_token_id).save_pretrained(path)
    return path
