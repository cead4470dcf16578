"""Sparse logits (CPU): a constrained row whose grammar allows few tokens gets its logits at those tokens
only. That changes the cost of the step, never its result: every output, finish reason, logprob and
constraint result is the one full logits + the grammar mask give, greedy or sampled."""
from __future__ import annotations

import json

import pytest
import torch
from same_outputs import assert_same_outputs, run_with

SCHEMA = json.dumps({"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                                     "n": {"type": "integer"}, "ok": {"type": "boolean"}},
                     "required": ["name", "n", "ok"]})
PROMPTS = ["Give me the capital of France.", "a b c", "One more prompt, a little longer than the others are."]
CASES = {
    "json": ({"temperature": 0, "max_new_tokens": 40, "json_schema": SCHEMA}, {}),
    "regex": ({"temperature": 0, "max_new_tokens": 24, "regex": r"(yes|no|maybe)-[0-9]{2,6}"}, {}),
    "reasoning": ({"temperature": 0, "max_new_tokens": 48, "max_reasoning_tokens": 6, "regex": "(yes|no)"},
                  {"require_reasoning": True}),
    "sampled": ({"temperature": 0.9, "top_p": 0.9, "seed": 7, "n": 2, "max_new_tokens": 40, "json_schema": SCHEMA},
                {}),
    "penalties": ({"temperature": 0, "max_new_tokens": 40, "json_schema": SCHEMA, "frequency_penalty": 1.5,
                   "repetition_penalty": 1.3, "logit_bias": {"5": 4.0}}, {}),
    # logprobs need the whole distribution: those rows keep full logits
    "logprobs": ({"temperature": 0, "max_new_tokens": 40, "json_schema": SCHEMA},
                 {"return_logprob": True, "top_logprobs_num": 2}),
}


@pytest.fixture(scope="module")
def engine(tiny_model_dirs):
    from thinkform import Engine

    eng = Engine(model_path=str(tiny_model_dirs["qwen2"]), dtype="float64", reasoning_parser="deepseek-r1",
                 max_total_tokens=4096, page_size=4, disable_jump_forward=True)
    yield eng
    eng.shutdown()


def _run(engine, sparse: bool, params: dict, kwargs: dict) -> tuple[list, int]:
    return run_with(engine, lambda: setattr(engine.loop, "sparse_logits", sparse), PROMPTS, params, kwargs,
                    "sparse_logit_rows")


@pytest.mark.parametrize("case", sorted(CASES))
def test_sparse_logits_give_the_same_outputs(engine, case):
    params, kwargs = CASES[case]
    full, none_used = _run(engine, False, params, kwargs)
    sparse, used = _run(engine, True, params, kwargs)
    assert none_used == 0
    if case == "logprobs":
        assert used == 0
    else:
        assert used >= len(full)  # every answer had steps with few allowed tokens
    assert_same_outputs(full, sparse)
    if "json_schema" in params:
        for out in sparse:
            assert set(json.loads(out["text"])) == {"name", "n", "ok"}


def test_runner_computes_only_the_allowed_logits(engine):
    """Rows in `allowed` hold the full logits at their ids and -inf elsewhere; the other rows are untouched."""
    model = engine.parts.model
    hidden = torch.randn(3, model.config.hidden_size, dtype=torch.float64)
    full = model.compute_logits(hidden)
    allowed = {0: torch.tensor([3, 17, 200]), 2: torch.tensor([model.config.vocab_size - 1])}
    with torch.inference_mode():  # as the engine's forward runs (the idle engine lends its runner)
        got = engine.loop.runner._logits_at_allowed(hidden, allowed)
    torch.testing.assert_close(got[1], full[1])
    for row, ids in allowed.items():
        torch.testing.assert_close(got[row, ids], full[row, ids])
        rest = torch.ones(full.shape[1], dtype=torch.bool)
        rest[ids] = False
        assert torch.isneginf(got[row, rest]).all()


def test_the_generic_allowed_logits_pick_from_the_full_ones(engine):
    """Models without their own compute_logits_at (the transformers fallback) get the picked full logits."""
    from thinkform.models.layers import CausalLM

    model = engine.parts.model
    hidden = torch.randn(4, model.config.hidden_size, dtype=torch.float64)
    rows, ids = torch.tensor([3, 1, 3, 1]), torch.tensor([0, 9, 17, 42])
    with torch.inference_mode():
        got = CausalLM.compute_logits_at(model, hidden, rows, ids)
        want = model.compute_logits_at(hidden, rows, ids)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got, model.compute_logits(hidden)[rows, ids])


@pytest.mark.parametrize("backend", ["llguidance", "outlines"])
def test_sparse_logits_under_every_grammar_backend(tiny_model_dirs, backend):
    from thinkform import Engine

    with Engine(model_path=str(tiny_model_dirs["qwen2"]), dtype="float64", grammar_backend=backend,
                max_total_tokens=4096, disable_jump_forward=True) as engine:
        params = {"temperature": 0, "max_new_tokens": 40, "json_schema": SCHEMA}
        full, _ = _run(engine, False, params, {})
        sparse, used = _run(engine, True, params, {})
    assert used >= len(full)
    assert_same_outputs(full, sparse)
