"""Weight-only int4 on the CPU: exact on weights already on a 4-bit grid (the embedded Q4_1 GGUF), chosen
automatically only there, and an error naming `quantization` where it cannot run."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from thinkform.models.loader import load_model
from thinkform.models.quant import Int4Linear, quantize_groups



def _grid_weights(n: int, k: int, seed: int) -> torch.Tensor:
    """Q4_1-style weights: per 32 inputs w = d * q + m, with q spanning 0..15 in every group."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (n, k // 32, 32), generator=g)
    q[..., 0], q[..., 1] = 0, 15
    d = torch.rand(n, k // 32, 1, generator=g) * 0.05 + 0.001
    m = torch.randn(n, k // 32, 1, generator=g) * 0.1
    return (d * q + m).reshape(n, k)


def test_weights_on_a_4bit_grid_are_recovered_exactly() -> None:
    w = _grid_weights(64, 128, 0)
    q, scale, zero = quantize_groups(w)
    rebuilt = (q.float() - 8) * scale.repeat_interleave(32, 1) + zero.repeat_interleave(32, 1)
    torch.testing.assert_close(rebuilt, w, atol=1e-6, rtol=0)
    assert int(q.min()) == 0 and int(q.max()) == 15


@pytest.mark.parametrize("bias", [False, True])
def test_int4_linear_computes_with_the_grid_weights(bias: bool) -> None:
    dense = nn.Linear(128, 96, bias=bias)
    with torch.no_grad():
        dense.weight.copy_(_grid_weights(96, 128, 1))
    layer = Int4Linear(dense)
    x = torch.randn(5, 128, dtype=torch.bfloat16)
    with torch.no_grad():
        expected = F.linear(x.float(), dense.weight, dense.bias)
    got = layer(x)
    assert got.dtype == torch.bfloat16 and got.shape == (5, 96)
    # prefill-sized inputs take the dense bfloat16 weight: exactly F.linear in bfloat16
    many = torch.randn(3, 16, 128, dtype=torch.bfloat16)
    with torch.no_grad():
        dense_bf16 = F.linear(many, dense.weight.to(torch.bfloat16),
                              None if dense.bias is None else dense.bias.to(torch.bfloat16))
    assert torch.equal(layer(many), dense_bf16)
    # bfloat16 activations and scales: a few parts in a thousand of the output's scale
    torch.testing.assert_close(got.float(), expected, atol=0.02 * float(expected.abs().max()), rtol=0)
    torch.testing.assert_close(layer.dequantized(), dense.weight.detach(), atol=4e-3, rtol=0)


TEACHER_TEXT = [
    ("What is the capital of France?", "The capital of France is Paris, a city known for the Eiffel Tower."),
    ("Write a haiku about the sea.", "Waves fold into foam,\nsalt wind carries gull voices,\nthe tide keeps its time."),
    ("Give me a JSON object with a name and an age.", '{"name": "Alice", "age": 30}'),
]


@torch.no_grad()
def _answer_logits(loaded, question: str, answer: str) -> torch.Tensor:
    from thinkform.models.dense_attention import DenseAttention

    tok = loaded.tokenizer
    prompt = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                     return_dict=False)
    ids = prompt + tok.encode(answer, add_special_tokens=False)
    hidden = loaded.model(torch.tensor(ids), torch.arange(len(ids)), DenseAttention())
    return loaded.model.compute_logits(hidden).float()[len(prompt) - 1:-1]


def test_the_embedded_q4_1_model_runs_in_int4_by_default_and_as_faithfully_as_dense_bfloat16(monkeypatch) -> None:
    from thinkform.models import quant

    monkeypatch.setattr(quant, "DENSE_FROM_ROWS", 10**9)  # whole sequences through the int4 (decode) kernel
    int4 = load_model(None, torch.bfloat16, "cpu")
    layer = int4.model.model.layers[0]
    assert isinstance(layer.mlp.down_proj, Int4Linear) and isinstance(layer.self_attn.qkv_proj, Int4Linear)
    dense = load_model(None, torch.bfloat16, "cpu", quantization="none")
    assert isinstance(dense.model.model.layers[0].mlp.down_proj, nn.Linear)
    # the GGUF's own Q4_1 blocks: int4 computes with them up to bfloat16 rounding of the scales
    torch.testing.assert_close(layer.mlp.down_proj.dequantized(),
                               dense.model.model.layers[0].mlp.down_proj.weight.detach().float(), atol=2e-2, rtol=0)
    reference = load_model(None, torch.float32, "cpu")  # the GGUF dequantized to float32
    agree = {"int4": 0, "bf16": 0}
    kl = {"int4": 0.0, "bf16": 0.0}
    total = 0
    for question, answer in TEACHER_TEXT:
        ref = _answer_logits(reference, question, answer)
        total += ref.shape[0]
        for name, loaded in (("int4", int4), ("bf16", dense)):
            got = _answer_logits(loaded, question, answer)
            agree[name] += int((got.argmax(-1) == ref.argmax(-1)).sum())
            kl[name] += float(F.kl_div(got.log_softmax(-1), ref.log_softmax(-1), log_target=True, reduction="sum"))
    # measured: both agree with float32 on ~98 % of next tokens, mean KL ~0.001
    assert agree["int4"] >= 0.9 * total and agree["int4"] >= agree["bf16"] - 2, (agree, total)
    assert kl["int4"] / total < 0.01 and kl["int4"] <= 2 * kl["bf16"] + 1e-3, (kl, total)


def test_float32_and_safetensors_models_stay_dense_unless_asked(tiny_model_dirs) -> None:
    assert isinstance(load_model(None, torch.float32, "cpu").model.model.layers[0].mlp.down_proj, nn.Linear)
    tiny = str(tiny_model_dirs["qwen2"])
    assert isinstance(load_model(tiny, torch.bfloat16, "cpu").model.model.layers[0].mlp.down_proj, nn.Linear)
    asked = load_model(tiny, torch.bfloat16, "cpu", quantization="int4").model
    assert isinstance(asked.model.layers[0].self_attn.qkv_proj, Int4Linear)  # Qwen2's qkv bias carried over


def test_int4_where_it_cannot_run_names_the_field(tiny_model_dirs) -> None:
    with pytest.raises(ValueError, match="quantization: int4 runs on a CPU with dtype bfloat16"):
        load_model(str(tiny_model_dirs["qwen2"]), torch.float32, "cpu", quantization="int4")
    with pytest.raises(ValueError, match="quantization: unknown value 'int3'"):
        load_model(str(tiny_model_dirs["qwen2"]), torch.float32, "cpu", quantization="int3")


def test_an_int4_engine_generates_greedily_and_reproducibly(tiny_model_dirs) -> None:
    from thinkform import Engine

    with Engine(model_path=str(tiny_model_dirs["qwen2"]), dtype="bfloat16", quantization="int4") as engine:
        params = {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True}
        first = engine.generate(["Hello", "The answer is"], params)
        again = engine.generate("Hello", params)
    assert [len(o["output_ids"]) for o in first] == [8, 8]
    assert again["output_ids"] == first[0]["output_ids"]


@pytest.mark.parametrize("top, exact", [(15, True), (14, False)])
def test_int4_is_chosen_only_where_every_q4_1_block_spans_its_range(top, exact) -> None:
    """Audit 32: llama.cpp's importance-matrix quantizer need not put a block's max at q = 15; such blocks,
    re-quantized to int4 groups by their own min and max, moved by up to 0.74 of a step (a second, lossy
    quantization, chosen by default). Blocks of the plain quantizer span 0..15 and stay exact."""
    import numpy as np

    from thinkform.models.loader import _q4_1_blocks_span
    rng = np.random.default_rng(0)
    rows, blocks = 8, 4
    q = rng.integers(0, top + 1, (rows, blocks, 32), dtype=np.uint8)
    q[..., 0], q[..., 1] = 0, top
    scale = np.full((rows, blocks, 2), 0.01, dtype=np.float16).view(np.uint8)[..., :2]
    packed = np.concatenate([np.zeros((rows, blocks, 4), np.uint8), q[..., :16] | (q[..., 16:] << 4)], axis=-1)
    packed[..., :2] = scale
    assert _q4_1_blocks_span(packed.reshape(rows, blocks * 20)) is exact
    constant = np.zeros((1, 20), np.uint8)  # scale 0: 32 equal weights, exact in int4 too
    assert _q4_1_blocks_span(np.concatenate([packed.reshape(-1, 20), constant]).reshape(-1)) is exact
