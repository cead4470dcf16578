"""A token the grammar's mask allows and its matcher then refuses (xgrammar, Qwen's byte-level vocabulary)."""
from __future__ import annotations

import re

import pytest


@pytest.fixture(scope="module")
def qwen_engine(qwen_vocab_model):
    from thinkform import Engine

    model, tok = qwen_vocab_model
    eng = Engine(model_path=str(model), grammar_backend="xgrammar", max_total_tokens=2048)
    yield eng, tok
    eng.shutdown()


def test_a_token_the_mask_allowed_and_the_matcher_refused_does_not_fail_the_request(qwen_engine) -> None:
    """Audit 31: under `a *[bc]` xgrammar's mask allows `Ġà` (the bytes ` \\xe0`, a space and the start of a
    character) but its matcher refuses it; a model that sampled it failed its request (500, GateError). The
    answer now goes on with what of the token the grammar takes (the space)."""
    eng, tok = qwen_engine
    slip = tok.convert_tokens_to_ids("Ġà")
    out = eng.generate("Hello", {"temperature": 0, "max_new_tokens": 12, "regex": "a *[bc]",
                                 "logit_bias": {str(slip): 100.0}})
    meta = out["meta_info"]
    assert meta["finish_reason"]["type"] == "stop" and meta["constraint_satisfied"], meta
    assert re.fullmatch("a *[bc]", out["text"]) and slip not in out["output_ids"], out
