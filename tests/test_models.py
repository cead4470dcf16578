"""Our Llama / Qwen2 / Qwen3 modules and the transformers fallback against transformers' own models."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, BertConfig, BertForMaskedLM, GemmaConfig, GPTNeoXConfig, MambaConfig

from thinkform.models.config import ModelConfig
from thinkform.models.dense_attention import DenseAttention
from thinkform.models.llama import LlamaForCausalLM
from thinkform.models.loader import load_model
from thinkform.testing.models import make_tiny_model_dir
from thinkform.testing.tokenizers import build_tiny_tokenizer

LLAMA3_ROPE = {
    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}
YARN_ROPE = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}
PROMPT_LEN = 24


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def _reference(model_dir, dtype=torch.float64):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="eager").eval()


def _prompt(seed: int = 1, n: int = PROMPT_LEN, vocab: int = 500) -> torch.Tensor:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _full_logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model.compute_logits(model(ids, torch.arange(len(ids)), DenseAttention()))


@torch.no_grad()
def _stepwise_logits(model, ids: torch.Tensor) -> torch.Tensor:
    attn, rows = DenseAttention(), []
    for i in range(len(ids)):
        rows.append(model.compute_logits(model(ids[i : i + 1], torch.tensor([i]), attn)))
    return torch.cat(rows)


CASES = [
    ("llama", None), ("qwen2", None), ("qwen3", None), ("llama", LLAMA3_ROPE), ("qwen2", YARN_ROPE),
]


@pytest.mark.parametrize(("arch", "rope"), CASES, ids=["llama", "qwen2", "qwen3", "llama-llama3rope", "qwen2-yarn"])
def test_logits_equal_transformers_float64(tmp_path, tokenizer, arch, rope):
    model_dir = make_tiny_model_dir(tmp_path / arch, arch, tokenizer, rope_scaling=rope, dtype=torch.float64)
    ours = load_model(str(model_dir), torch.float64, "cpu").model
    ids = _prompt()
    with torch.no_grad():
        expected = _reference(model_dir)(ids[None]).logits[0]
    full, stepwise = _full_logits(ours, ids), _stepwise_logits(ours, ids)
    assert full.dtype == torch.float64
    # transformers normalises and rotates in float32 even for float64 models: ~1e-6 is its own noise
    torch.testing.assert_close(full, expected, atol=2e-5, rtol=0)
    torch.testing.assert_close(stepwise, expected, atol=2e-5, rtol=0)
    assert expected.argmax(-1).unique().numel() > 3, "random weights should not collapse onto one token"


def test_llama3_rope_scaling_changes_long_range_logits(tmp_path, tokenizer):
    """Guards against the scaling being silently ignored: positions past the original window differ."""
    plain = load_model(str(make_tiny_model_dir(tmp_path / "a", "llama", tokenizer)), torch.float64, "cpu").model
    scaled_dir = make_tiny_model_dir(tmp_path / "b", "llama", tokenizer, rope_scaling=LLAMA3_ROPE)
    scaled = load_model(str(scaled_dir), torch.float64, "cpu").model
    ids = _prompt()
    assert (_full_logits(plain, ids) - _full_logits(scaled, ids)).abs().max() > 1e-3


def test_batched_sequences_match_separate_runs(tmp_path, tokenizer):
    ours = load_model(str(make_tiny_model_dir(tmp_path / "m", "qwen3", tokenizer)), torch.float64, "cpu").model
    a, b = _prompt(2, 7), _prompt(3, 11)
    expected_a, expected_b = _full_logits(ours, a), _full_logits(ours, b)
    attn = DenseAttention()
    attn.begin_step([0, 1], [7, 11])
    with torch.no_grad():
        hidden = ours(torch.cat([a, b]), torch.cat([torch.arange(7), torch.arange(11)]), attn)
        logits = ours.compute_logits(hidden)
        torch.testing.assert_close(logits[:7], expected_a, atol=1e-10, rtol=0)
        torch.testing.assert_close(logits[7:], expected_b, atol=1e-10, rtol=0)
        # one decode step for both sequences together
        nxt = torch.tensor([5, 9])
        attn.begin_step([0, 1], [1, 1])
        step = ours.compute_logits(ours(nxt, torch.tensor([7, 11]), attn))
    torch.testing.assert_close(step[0], _full_logits(ours, torch.cat([a, nxt[:1]]))[-1], atol=1e-10, rtol=0)
    torch.testing.assert_close(step[1], _full_logits(ours, torch.cat([b, nxt[1:]]))[-1], atol=1e-10, rtol=0)


def test_chunked_prefill_matches_full_forward(tmp_path, tokenizer):
    ours = load_model(str(make_tiny_model_dir(tmp_path / "m", "llama", tokenizer)), torch.float64, "cpu").model
    ids = _prompt()
    attn = DenseAttention()
    with torch.no_grad():
        first = ours.compute_logits(ours(ids[:10], torch.arange(10), attn))
        rest = ours.compute_logits(ours(ids[10:], torch.arange(10, PROMPT_LEN), attn))
    torch.testing.assert_close(torch.cat([first, rest]), _full_logits(ours, ids), atol=1e-10, rtol=0)


def test_padded_vocab_rows_are_logit_columns(tmp_path, tokenizer):
    model_dir = make_tiny_model_dir(tmp_path / "m", "qwen2", tokenizer, vocab_size=len(tokenizer) + 75)
    loaded = load_model(str(model_dir), torch.float32, "cpu")
    assert loaded.config.vocab_size == len(tokenizer) + 75
    hidden = loaded.model(_prompt(n=3), torch.arange(3), DenseAttention())
    assert loaded.model.compute_logits(hidden).shape == (3, len(tokenizer) + 75)


def test_float32_and_tied_embeddings(tmp_path, tokenizer):
    model_dir = make_tiny_model_dir(tmp_path / "m", "llama", tokenizer, tie_word_embeddings=True)
    loaded = load_model(str(model_dir), torch.float32, "cpu")
    ids = _prompt()
    logits = _full_logits(loaded.model, ids)
    with torch.no_grad():
        expected = _reference(model_dir, torch.float32)(ids[None]).logits[0]
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


def test_bfloat16_logits_are_float32_and_near_float32_model(tmp_path, tokenizer):
    model_dir = make_tiny_model_dir(tmp_path / "m", "qwen3", tokenizer)
    ids = _prompt()
    low = _full_logits(load_model(str(model_dir), torch.bfloat16, "cpu").model, ids)
    high = _full_logits(load_model(str(model_dir), torch.float32, "cpu").model, ids)
    assert low.dtype == torch.float32
    assert (low - high).abs().max() < 0.1 * high.abs().max()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("scaling", [None, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}])
def test_cached_rotary_rows_are_the_computed_ones(dtype, scaling):
    """The CUDA engine gathers cos/sin from a table made once (cache_positions): bit for bit what each step
    computed before, the yarn scaling's cos/sin multiplier included."""
    from thinkform.models.rope import RotaryEmbedding

    rotary = RotaryEmbedding(64, 10000.0, scaling, 256)
    positions = torch.tensor([0, 7, 63, 64, 200, 255, 3])
    expected = rotary(positions, dtype)
    rotary.cache_positions(256, dtype, torch.device("cpu"))
    got = rotary(positions, dtype)
    assert all(torch.equal(g, e) for g, e in zip(got, expected))
    assert got[0].shape == expected[0].shape == (7, 1, 32)
    assert all(torch.equal(g, e) for g, e in zip(rotary(positions, torch.float16), rotary._compute(positions, torch.float16)))


def test_rotary_table_is_not_made_for_a_huge_context(monkeypatch):
    from thinkform.models import rope

    monkeypatch.setattr(rope, "MAX_CACHED_POSITIONS", 100)
    rotary = rope.RotaryEmbedding(64, 10000.0, None, 256)
    assert not rotary.cache_positions(256, torch.float32, torch.device("cpu"))
    assert rotary._table is None and rotary(torch.tensor([200]), torch.float32)[0].shape == (1, 1, 32)


def test_unsupported_rope_type_is_a_clear_error():
    config = ModelConfig(
        arch="LlamaForCausalLM", model_type="llama", vocab_size=10, hidden_size=8, intermediate_size=16,
        num_layers=1, num_heads=2, num_kv_heads=1, head_dim=4, rope_scaling={"rope_type": "longrope", "factor": 2.0},
    )
    with pytest.raises(ValueError, match="rope_type='longrope'"):
        LlamaForCausalLM(config)


def test_checkpoint_missing_a_tensor_names_it(tmp_path, tokenizer):
    from safetensors.torch import load_file, save_file

    model_dir = make_tiny_model_dir(tmp_path / "m", "llama", tokenizer)
    weights = load_file(str(model_dir / "model.safetensors"))
    del weights["model.layers.1.self_attn.k_proj.weight"]
    save_file(weights, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"model\.layers\.1\.self_attn\.qkv_proj\.weight#1"):
        load_model(str(model_dir), torch.float32, "cpu")


# ---- transformers fallback ------------------------------------------------------------------------------


def _save_hf(model_dir, hf_model, tokenizer):
    with torch.no_grad():
        for param in hf_model.parameters():
            param.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(param.numel()))
    hf_model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir


FALLBACK_CONFIGS = {
    # partial rotary, parallel residual, fused qkv of its own
    "gpt_neox": lambda v: GPTNeoXConfig(vocab_size=v, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=128, rotary_pct=0.5),
    # scaled embeddings, GQA, (1 + weight) norms
    "gemma": lambda v: GemmaConfig(vocab_size=v, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, head_dim=16, intermediate_size=128),
}


@pytest.mark.parametrize("name", sorted(FALLBACK_CONFIGS))
def test_fallback_architecture_matches_transformers(tmp_path, tokenizer, name):
    hf = AutoModelForCausalLM.from_config(FALLBACK_CONFIGS[name](len(tokenizer)))
    model_dir = _save_hf(tmp_path / name, hf, tokenizer)
    loaded = load_model(str(model_dir), torch.float64, "cpu")
    assert type(loaded.model).__name__ == "HFFallbackLM"
    assert loaded.config.num_layers == 2 and loaded.config.head_dim == 16
    ids = _prompt()
    with torch.no_grad():
        expected = _reference(model_dir)(ids[None]).logits[0]
    torch.testing.assert_close(_full_logits(loaded.model, ids), expected, atol=2e-5, rtol=0)
    torch.testing.assert_close(_stepwise_logits(loaded.model, ids), expected, atol=2e-5, rtol=0)


def test_fallback_refuses_models_without_routable_attention(tmp_path, tokenizer):
    hf = AutoModelForCausalLM.from_config(MambaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1))
    model_dir = _save_hf(tmp_path / "mamba", hf, tokenizer)
    with pytest.raises(ValueError, match="MambaForCausalLM.*cannot run on thinkform's attention"):
        load_model(str(model_dir), torch.float32, "cpu")


def test_fallback_refuses_non_causal_models(tmp_path, tokenizer):
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64)
    model_dir = _save_hf(tmp_path / "bert", BertForMaskedLM(config), tokenizer)
    assert json.loads((model_dir / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    with pytest.raises(ValueError, match="BertForMaskedLM.*not a causal language model"):
        load_model(str(model_dir), torch.float32, "cpu")


@pytest.mark.parametrize("raw, window", [
    ({"model_type": "qwen3", "sliding_window": 8, "use_sliding_window": True, "max_window_layers": 0}, 8),
    ({"model_type": "qwen2", "sliding_window": 8, "use_sliding_window": True, "max_window_layers": 2}, None),
    ({"model_type": "qwen2", "sliding_window": 131072, "use_sliding_window": False}, None),  # Qwen2.5's configs
    ({"model_type": "qwen3", "sliding_window": 4096, "max_window_layers": 0}, None),  # Qwen's default: no sliding
    ({"model_type": "mistral", "sliding_window": 4096}, 4096),  # Mistral-7B-v0.1
    ({"model_type": "mistral", "sliding_window": None}, None),
    ({"model_type": "gemma3_text", "sliding_window": 512,
      "layer_types": ["sliding_attention", "full_attention"]}, 512),
    ({"model_type": "x", "sliding_window": 512, "layer_types": ["full_attention"] * 2}, None),
])
def test_a_sliding_window_caps_the_served_context(raw, window):
    """Audit 32: a sliding attention window (Qwen3 with use_sliding_window, Mistral-v0.1, Gemma-3) was run as
    full attention over any length: past the window the output differed from the model's (Qwen3's first
    token on a 40-token prompt, window 8) with a warning at most. The context is served up to the window,
    and a longer --context-length is refused."""
    from thinkform.engine.setup import served_context
    cfg = ModelConfig(arch="X", model_type=raw["model_type"], vocab_size=8, hidden_size=8, intermediate_size=8,
                      num_layers=2, num_heads=1, num_kv_heads=1, head_dim=8, max_position_embeddings=32768,
                      extra=raw)
    assert cfg.sliding_window == window
    assert served_context(None, cfg) == (window or 32768)
    assert served_context(4, cfg) == 4
    if window is not None:
        with pytest.raises(ValueError, match=f"context_length: .*sliding attention window \\({window} tokens\\)"):
            served_context(window + 1, cfg)


def test_a_step_attends_each_group_of_like_contexts_apart_and_the_same(engine64):
    """Audit 32: one padded grid for a step's rows made every row cost the longest's: a 16k-token context
    beside 31 short ones took a CPU decode step from 53 ms to 10 s (8k: 4.5 s; 96 ms now), and a long prompt
    prefilled beside a short one built a mask quadratic in its length. Rows of like work and context go
    together; the outputs are the ones each gets alone."""
    from thinkform.engine.attention import step_groups
    groups = step_groups([10, 3000, 12, 0], [1, 1, 1, 40], [[0] * 800] * 4, 4, torch.device("cpu"))
    assert [g.tokens.tolist() for g in groups] == [[0, 2], [1], list(range(3, 43))]
    assert step_groups([10, 12], [1, 1], [[0] * 8] * 2, 4, torch.device("cpu"))[0].tokens is None
    short, long = "Hello there", "The answer is " * 220  # ~1,300 tokens: its own group
    params = {"temperature": 0, "max_new_tokens": 12, "ignore_eos": True}
    alone = [engine64.generate(p, params)["output_ids"] for p in (short, long)]
    engine64.flush_cache()
    assert [o["output_ids"] for o in engine64.generate([short, long], params)] == alone


def test_the_cpu_kv_cache_holds_a_whole_context_where_memory_allows():
    """Audit 32: on a CPU the cache was capped at 16,384 tokens whatever the context and the memory: a 40k
    model refused a 20k-token prompt plus thinking by default, with the full context advertised."""
    from thinkform.args import EngineArgs
    from thinkform.engine.setup import _auto_kv_tokens
    cpu, args = torch.device("cpu"), EngineArgs()
    assert _auto_kv_tokens(args, cpu, 1024, 40960) == 40960
    assert _auto_kv_tokens(args, cpu, 1024, 4096) == 16384
    assert _auto_kv_tokens(args, cpu, 2**40, 40960) == 8192  # memory for less: at least the first 8k
