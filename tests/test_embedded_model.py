"""The real embedded default model (SmolLM2-135M-Instruct, GGUF): parity with transformers and the seed's cases."""
from __future__ import annotations

import json

import pytest
import torch

from constraint_cases import SEED_EBNF, SEED_EBNF_LANGUAGE, SEED_SCHEMA, SEED_TAG, CapitalInfo, _json, _regex, _tags

PROMPTS = [
    "Give me the information of the capital of China in the JSON format.",
    "Give me the information of the capital of France in the JSON format.",
    "Give me the information of the capital of France.",
    "Please provide information about Paris as a major global city:",
    "You are in New York. Please get the current date and time, and the weather.",
]
SEED_CASES = [
    ({"json_schema": json.dumps(CapitalInfo.model_json_schema())}, _json(CapitalInfo.model_json_schema())),
    ({"json_schema": json.dumps(SEED_SCHEMA)}, _json(SEED_SCHEMA)),
    ({"ebnf": SEED_EBNF}, _regex(SEED_EBNF_LANGUAGE)),
    ({"regex": "(France|England)"}, _regex("(France|England)")),
    ({"structural_tag": json.dumps(SEED_TAG)}, _tags),
]


@pytest.fixture(scope="module")
def default_engine():
    from thinkform import Engine

    # no model path: the embedded default model; float32 for token-exact parity with transformers
    eng = Engine(reasoning_parser="deepseek-r1", dtype="float32")
    yield eng
    eng.shutdown()


def test_greedy_equals_transformers_on_the_gguf(default_engine):
    from transformers import AutoModelForCausalLM

    from thinkform.models.loader import default_model_file

    gguf = default_model_file()
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    tok = default_engine.tokenizer
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    ref = hf.generate(ids, max_new_tokens=24, do_sample=False, min_new_tokens=24)[0, ids.shape[1]:].tolist()
    ours = default_engine.generate(input_ids=ids[0].tolist(),
                                   sampling_params={"temperature": 0, "max_new_tokens": 24, "min_new_tokens": 24})
    assert ours["output_ids"] == ref
    assert "Paris" in ours["text"]


@pytest.mark.parametrize("require_reasoning", [False, True])
def test_seed_offline_cases(default_engine, require_reasoning):
    """The seed's five offline cases: valid answers, no runaway, reasoning returned apart when asked."""
    params = [{"temperature": 0, "max_new_tokens": 96, **c} for c, _ in SEED_CASES]
    outs = default_engine.generate(PROMPTS, params, require_reasoning=require_reasoning)
    for (constraint, check), out in zip(SEED_CASES, outs):
        meta = out["meta_info"]
        kind = next(iter(constraint))
        if require_reasoning:
            assert "</think>" in out["text"]
            reasoning, answer = out["text"].split("</think>", 1)
            assert meta["reasoning_content"] is not None
            assert meta["content"] == answer.strip()
        else:
            answer = out["text"]
            assert "reasoning_content" not in meta
        if kind != "structural_tag":  # free text between tags may run to the limit; tags must still parse
            assert meta["finish_reason"]["type"] == "stop", (kind, out["text"])
            assert meta["constraint_satisfied"] is True
        check(answer if not require_reasoning else meta["content"])
