"""Tiny GGUF files for tests and benchmarks: a one-layer qwen2 with random weights, written as llama.cpp's
converter writes them (token types, byte-alphabet spellings, norms and biases F32)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

# llama.cpp's token types
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


def write_qwen2_gguf(path: Path, tokens: list[str], types: list[int], merges: list[str], *, bos: int, eos: int,
                     pad: int, weights: str = "F32", hidden: int = 64, context_length: int = 512, seed: int = 0,
                     chat_template: str | None = None) -> None:
    """One qwen2 layer over the given vocabulary; its matrices of GGUF type `weights` (F32, F16, Q8_0, Q4_1...)."""
    import gguf

    heads, kv_heads, inter = 4, 2, 2 * hidden
    head_dim = hidden // heads
    kind = gguf.GGMLQuantizationType[weights.upper()]
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_context_length(context_length)
    w.add_embedding_length(hidden)
    w.add_block_count(1)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(1_000_000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type(0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    w.add_pad_token_id(pad)
    w.add_add_bos_token(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)

    def tensor(name: str, *shape: int) -> None:
        norm = name.endswith("norm.weight")
        data = ((1.0 if norm else 0.0) + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        if len(shape) == 1 or kind == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, data)
        elif kind == gguf.GGMLQuantizationType.F16:
            w.add_tensor(name, data.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(data, kind), raw_dtype=kind)

    tensor("token_embd.weight", len(tokens), hidden)
    tensor("blk.0.attn_norm.weight", hidden)
    for n, d in (("q", heads), ("k", kv_heads), ("v", kv_heads)):
        tensor(f"blk.0.attn_{n}.weight", d * head_dim, hidden)
        tensor(f"blk.0.attn_{n}.bias", d * head_dim)
    tensor("blk.0.attn_output.weight", hidden, hidden)
    tensor("blk.0.ffn_norm.weight", hidden)
    tensor("blk.0.ffn_gate.weight", inter, hidden)
    tensor("blk.0.ffn_up.weight", inter, hidden)
    tensor("blk.0.ffn_down.weight", hidden, inter)
    tensor("output_norm.weight", hidden)
    tensor("output.weight", len(tokens), hidden)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
