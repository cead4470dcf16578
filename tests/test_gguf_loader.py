"""GGUF copies: the tokenizer a byte-level GGUF converts to (DeepSeek-R1-Distill's `<｜User｜>`), its stop set, and the
copy cache (named by the whole content, pruned by source path). Tiny GGUFs with a ~300-token vocabulary."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from thinkform.models import loader
from thinkform.models.loader import gguf_to_hf_dir, load_model
from thinkform.testing.gguf_files import CONTROL, NORMAL, UNUSED, USER_DEFINED, write_qwen2_gguf


R1_SPECIALS = [  # DeepSeek-R1-Distill-Qwen's, as llama.cpp's converter types them
    ("<｜end▁of▁sentence｜>", CONTROL), ("<｜User｜>", CONTROL), ("<｜Assistant｜>", CONTROL),
    ("<｜begin▁of▁sentence｜>", CONTROL), ("<|EOT|>", CONTROL), ("<think>", USER_DEFINED), ("</think>", USER_DEFINED),
]
QWEN3_SPECIALS = [
    ("<|endoftext|>", CONTROL), ("<|im_start|>", CONTROL), ("<|im_end|>", CONTROL),
    ("<think>", USER_DEFINED), ("</think>", USER_DEFINED),
]
MERGES = ["h i", "Ġ t", "Ġt h", "o k"]


def _write_gguf(path: Path, specials: list[tuple[str, int]], bos: str, eos: str, pad: str, padded: int = 300,
                seed: int = 0, weights: str = "F32") -> dict[str, int]:
    """A one-layer qwen2 GGUF with a byte-level vocabulary: the 256 bytes, a few merges, the special tokens, then
    UNUSED padding up to `padded` ids. Its matrices are of GGUF type `weights` (F32, F16, Q8_0, Q4_1; norms and
    biases F32, as llama.cpp writes them). Returns each token's id."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = list(bytes_to_unicode().values())
    tokens += ["".join(m.split(" ")) for m in MERGES]
    types = [NORMAL] * len(tokens)
    for text, kind in specials:
        tokens.append(text)
        types.append(kind)
    tokens += [f"[PAD{i}]" for i in range(len(tokens), padded)]
    types += [UNUSED] * (padded - len(types))
    ids = {t: i for i, t in enumerate(tokens)}
    write_qwen2_gguf(path, tokens, types, MERGES, bos=ids[bos], eos=ids[eos], pad=ids[pad], weights=weights, seed=seed)
    return ids


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("THINKFORM_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "gguf"


# ---- the tokenizer ---------------------------------------------------------------------------------------


def test_a_deepseek_gguf_keeps_its_special_tokens_ids_and_text(tmp_path, cache):
    """transformers respells `<｜User｜>` & co. in the byte alphabet, skips them as added tokens (so the text was
    cut into byte pieces) and appended bos / eos as new ids past the model's vocabulary: the engine refused the
    model (logits narrower than the tokenizer). llama.cpp matches them whole, under the file's ids."""
    path = tmp_path / "R1-Distill-tiny.gguf"
    ids = _write_gguf(path, R1_SPECIALS, bos="<｜begin▁of▁sentence｜>", eos="<｜end▁of▁sentence｜>",
                      pad="<｜end▁of▁sentence｜>")
    loaded = load_model(str(path), torch.float32, "cpu", quantization="none")
    tok = loaded.tokenizer
    assert len(tok) == loaded.config.vocab_size == 300
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (
        ids["<｜begin▁of▁sentence｜>"], ids["<｜end▁of▁sentence｜>"], ids["<｜end▁of▁sentence｜>"])
    text = "<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜><think>\nok</think>ok<｜end▁of▁sentence｜>"
    expected = [ids["<｜begin▁of▁sentence｜>"], ids["<｜User｜>"], ids["hi"], ids["<｜Assistant｜>"], ids["<think>"],
                ids["Ċ"], ids["ok"], ids["</think>"], ids["ok"], ids["<｜end▁of▁sentence｜>"]]
    assert tok.encode(text, add_special_tokens=False) == expected
    assert tok.decode(expected) == text
    assert tok.decode(expected, skip_special_tokens=True) == "hi<think>\nok</think>ok"  # USER_DEFINED: not special
    assert loaded.eos_token_ids == (ids["<｜end▁of▁sentence｜>"],)
    generation = json.loads((Path(loaded.model_path) / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["pad_token_id"]) == (tok.bos_token_id, tok.pad_token_id)
    added = json.loads((Path(loaded.model_path) / "tokenizer.json").read_text())["added_tokens"]
    assert max(a["id"] for a in added) < 300


def test_an_in_alphabet_gguf_tokenizer_converts_as_transformers_builds_it(tmp_path, cache):
    """Qwen3-style and SmolLM2 vocabularies (every special token in the byte alphabet) keep transformers' tokenizer
    byte for byte; their stop set gains `<|endoftext|>` beside `<|im_end|>` (Qwen3's generation_config, llama.cpp)."""
    from transformers import AutoTokenizer

    path = tmp_path / "Qwen3-tiny.gguf"
    ids = _write_gguf(path, QWEN3_SPECIALS, bos="<|endoftext|>", eos="<|im_end|>", pad="<|endoftext|>")
    copy = gguf_to_hf_dir(path)
    plain = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    plain.save_pretrained(str(tmp_path / "plain"))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (copy / name).read_text() == (tmp_path / "plain" / name).read_text()
    loaded = load_model(str(path), torch.float32, "cpu", quantization="none")
    assert loaded.eos_token_ids == (ids["<|im_end|>"], ids["<|endoftext|>"])
    assert loaded.tokenizer.encode("<|im_start|>hi<think>ok<|im_end|>", add_special_tokens=False) == [
        ids["<|im_start|>"], ids["hi"], ids["<think>"], ids["ok"], ids["<|im_end|>"]]


# ---- the copy cache --------------------------------------------------------------------------------------


def _fake_convert(source: Path, out: Path) -> None:
    (out / "model.safetensors").write_bytes(source.read_bytes()[:64])
    (out / loader._COMPLETE_MARKER).write_text(json.dumps({"source": str(source.resolve())}))


def test_a_gguf_changed_in_the_middle_gets_a_new_copy(tmp_path, cache, monkeypatch):
    """The copy's name hashed only the file's first and last MiB: a file changed between them (same size) was
    served its stale copy."""
    monkeypatch.setattr(loader, "_write_converted", _fake_convert)
    gguf = tmp_path / "model.gguf"
    content = bytearray(b"GGUF" + bytes(3 << 20))
    gguf.write_bytes(content)
    first = gguf_to_hf_dir(gguf)
    content[len(content) // 2] = 1
    gguf.write_bytes(content)
    second = gguf_to_hf_dir(gguf)
    assert second != first and (second / loader._COMPLETE_MARKER).is_file()


def test_the_content_digest_is_read_once_per_file_version(tmp_path, cache, monkeypatch):
    """A warm start with an unchanged file costs a stat; a new mtime (a fresh install of the same file) one full
    read, which finds the existing copy by its content."""
    monkeypatch.setattr(loader, "_write_converted", _fake_convert)
    reads: list[Path] = []
    digest = loader._gguf_digest
    monkeypatch.setattr(loader, "_gguf_digest", lambda path: reads.append(path) or digest(path))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(1000))
    first = gguf_to_hf_dir(gguf)
    assert gguf_to_hf_dir(gguf) == first and len(reads) == 1
    link = tmp_path / "link.gguf"
    link.symlink_to(gguf)
    assert gguf_to_hf_dir(link).name.split("-", 1)[1] == first.name.split("-", 1)[1] and len(reads) == 1
    os.utime(gguf, ns=(10**18, 10**18))
    assert gguf_to_hf_dir(gguf) == first and len(reads) == 2
    assert gguf_to_hf_dir(gguf) == first and len(reads) == 2


def test_a_same_named_gguf_elsewhere_keeps_its_copy(tmp_path, cache, monkeypatch):
    """Copies were pruned by the file's stem: two different files of the same name deleted each other's copies at
    each start (a 30-minute reconversion of a 7B model, each time)."""
    monkeypatch.setattr(loader, "_write_converted", _fake_convert)
    a, b = tmp_path / "a" / "model.gguf", tmp_path / "b" / "model.gguf"
    for path, payload in ((a, b"GGUF aaaa"), (b, b"GGUF bbbb")):
        path.parent.mkdir()
        path.write_bytes(payload)
    copy_a = gguf_to_hf_dir(a)
    os.utime(copy_a, (1, 1))  # old enough to prune
    copy_b = gguf_to_hf_dir(b)
    assert copy_a != copy_b and (copy_a / loader._COMPLETE_MARKER).is_file()
    os.utime(copy_b, (1, 1))
    b.write_bytes(b"GGUF BBBB")  # b changes: b's earlier copy goes, a's stays
    copy_b2 = gguf_to_hf_dir(b)
    assert sorted(p.name for p in cache.iterdir() if p.is_dir()) == sorted([copy_a.name, copy_b2.name])


# ---- what the first start costs ----------------------------------------------------------------------------


def _stored(copy: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(copy / "model.safetensors"))


def _gguf_values(path: Path, name: str) -> torch.Tensor:
    """A tensor's values as llama.cpp reads them (float32), in torch order."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    tensor = next(t for t in GGUFReader(str(path)).tensors if t.name == name)
    return torch.from_numpy(dequantize(tensor.data, tensor.tensor_type).copy()).reshape(
        tuple(reversed([int(d) for d in tensor.shape])))


def test_a_quantized_gguf_copy_for_a_bfloat16_load_is_half_the_float32_one(tmp_path, cache):
    """The copy was float32 whatever the file's type and the load's dtype: 5.3x a Q4 file on disk (a 7B Q4_K_M
    needed ~30 GB on its first start), though a bfloat16 load rounds every weight to bfloat16 anyway. Stored
    rounded, the model in memory is the same to the bit, and so are its greedy tokens; a float32 load still gets
    the file's exact values."""
    path = tmp_path / "Qwen3-q4.gguf"
    _write_gguf(path, QWEN3_SPECIALS, bos="<|endoftext|>", eos="<|im_end|>", pad="<|endoftext|>", weights="Q4_1")
    wide = load_model(str(path), torch.float32, "cpu", quantization="none")
    narrow = load_model(str(path), torch.bfloat16, "cpu", quantization="none")
    wide_size = (Path(wide.model_path) / "model.safetensors").stat().st_size
    narrow_size = (Path(narrow.model_path) / "model.safetensors").stat().st_size
    assert narrow.model_path != wide.model_path and narrow_size < 0.52 * wide_size
    stored = _stored(Path(narrow.model_path))
    assert stored["model.embed_tokens.weight"].dtype == torch.bfloat16
    assert stored["model.norm.weight"].dtype == torch.float32  # an F32 tensor keeps its type
    exact = _stored(Path(wide.model_path))["model.embed_tokens.weight"]
    assert torch.equal(exact, _gguf_values(path, "token_embd.weight"))
    as_before = {k: v.to(torch.bfloat16) for k, v in wide.model.state_dict().items()}
    assert all(torch.equal(v, as_before[k]) for k, v in narrow.model.state_dict().items())
    prompt = narrow.tokenizer.encode("<|im_start|>hi<think>ok", add_special_tokens=False)
    reference = load_model(str(path), torch.float32, "cpu", quantization="none").model.to(torch.bfloat16)
    assert _greedy(narrow.model, prompt, 32) == _greedy(reference, prompt, 32)


def test_an_f16_gguf_copy_keeps_float16(tmp_path, cache):
    """An F16 file's weights were written widened to float32 (2x the file for nothing): float16 holds them exactly."""
    path = tmp_path / "Qwen3-f16.gguf"
    _write_gguf(path, QWEN3_SPECIALS, bos="<|endoftext|>", eos="<|im_end|>", pad="<|endoftext|>", weights="F16")
    copy = gguf_to_hf_dir(path)
    stored = _stored(copy)
    assert stored["model.layers.0.mlp.up_proj.weight"].dtype == torch.float16
    assert torch.equal(stored["model.layers.0.mlp.up_proj.weight"].float(), _gguf_values(path, "blk.0.ffn_up.weight"))
    assert (copy / "model.safetensors").stat().st_size < 1.1 * path.stat().st_size


def test_a_first_start_parses_the_vocabulary_once(tmp_path, cache, monkeypatch):
    """AutoTokenizer, AutoConfig, AutoModel and the loader each built a gguf.GGUFReader, which parses every
    token and merge: four parses, ~45 of the ~60 s a first start with Qwen's 152k-token vocabulary took."""
    import gguf

    readers: list[str] = []
    init = gguf.GGUFReader.__init__

    def counted(self, path, *args, **kwargs):
        readers.append(str(path))
        init(self, path, *args, **kwargs)

    monkeypatch.setattr(gguf.GGUFReader, "__init__", counted)
    path = tmp_path / "Qwen3-tiny.gguf"
    ids = _write_gguf(path, QWEN3_SPECIALS, bos="<|endoftext|>", eos="<|im_end|>", pad="<|endoftext|>")
    loaded = load_model(str(path), torch.float32, "cpu", quantization="none")
    assert readers == [str(path)]
    assert loaded.eos_token_ids == (ids["<|im_end|>"], ids["<|endoftext|>"])
    load_model(str(path), torch.float32, "cpu", quantization="none")  # a warm start parses nothing
    assert readers == [str(path)]


def test_copies_of_two_widths_live_side_by_side_and_old_versions_go(tmp_path, cache):
    """A float32 load and a bfloat16 one each keep their copy (pruning one for the other would convert again at
    every switch); a copy from an earlier conversion version of the same file is converted again once, then gone."""
    path = tmp_path / "Qwen3-q8.gguf"
    _write_gguf(path, QWEN3_SPECIALS, bos="<|endoftext|>", eos="<|im_end|>", pad="<|endoftext|>", weights="Q8_0")
    wide = gguf_to_hf_dir(path)
    stale = wide.with_name(wide.name.replace(f"-v{loader._CONVERSION_VERSION}", "-v4"))
    stale.mkdir()
    (stale / loader._COMPLETE_MARKER).write_text(json.dumps({"source": str(path.resolve())}))
    for copy in (wide, stale):
        os.utime(copy, (1, 1))  # old enough to prune
    narrow = gguf_to_hf_dir(path, torch.bfloat16)
    assert narrow != wide and sorted(p.name for p in cache.iterdir() if p.is_dir()) == sorted([wide.name, narrow.name])
    assert gguf_to_hf_dir(path, torch.float32) == wide and gguf_to_hf_dir(path, torch.bfloat16) == narrow


@torch.no_grad()
def _greedy(model, ids: list[int], steps: int) -> list[int]:
    from thinkform.models.dense_attention import DenseAttention

    attn, out = DenseAttention(), []
    current, positions = torch.tensor(ids), torch.arange(len(ids))
    for _ in range(steps):
        token = int(model.compute_logits(model(current, positions, attn)[-1:]).argmax(-1))
        out.append(token)
        current, positions = torch.tensor([token]), positions[-1:] + 1
    return out


@pytest.mark.parametrize("weights", ["Q5_0", "Q5_1"])
def test_a_gguf_with_q5_tensors_converts_exactly(tmp_path, cache, weights):
    """Review: transformers' header reader knows no Q5_0 / Q5_1 (llama.cpp's K-quant files use them for every
    matrix whose rows are not a multiple of 256: most of Qwen2.5-0.5B's in a Q4_K_M file), and such files were
    refused at their first start; gguf's own reader sizes them."""
    path = tmp_path / f"Qwen3-{weights.lower()}.gguf"
    _write_gguf(path, QWEN3_SPECIALS, bos="<|endoftext|>", eos="<|im_end|>", pad="<|endoftext|>", weights=weights)
    stored = _stored(gguf_to_hf_dir(path))
    assert torch.equal(stored["model.layers.0.mlp.up_proj.weight"], _gguf_values(path, "blk.0.ffn_up.weight"))


def test_the_staging_folder_of_a_killed_conversion_is_pruned(tmp_path, cache):
    """Review: a conversion killed mid-way left its staging folder (a half-written copy, ~2x the file) forever."""
    path = tmp_path / "Qwen3-q8.gguf"
    _write_gguf(path, QWEN3_SPECIALS, bos="<|endoftext|>", eos="<|im_end|>", pad="<|endoftext|>", weights="Q8_0")
    copy = gguf_to_hf_dir(path)
    killed = cache / f".{copy.name}.k1ll3d"
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(b"half")
    os.utime(killed, (1, 1))  # old enough: no conversion is writing it now
    shutil.rmtree(copy)
    assert gguf_to_hf_dir(path) == copy and not killed.exists()
