"""Budget closing: a JSON answer near the end of max_new_tokens is steered to a valid end instead of cut."""
from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from thinkform.structured.closing import ClosingRules, closing_reserve

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "pattern": "^\\w+$"},
                                           "population": {"type": "integer"}},
          "required": ["name", "population"]}
TOKENS = [b"abc", b'"', b"}", b'"}', b" ", b",", b":", b"0", b"1", b"<eos>", b'", "']
EOS = 9


def _allowed(mask: torch.Tensor) -> set[bytes]:
    return {TOKENS[i] for i in range(len(TOKENS)) if (int(mask[0, i // 32]) >> (i % 32)) & 1}


def _after(rules: ClosingRules, allowed: set[bytes], may_end: bool) -> set[bytes]:
    mask = torch.zeros((1, 1), dtype=torch.int32)
    for i, t in enumerate(TOKENS):
        if t in allowed:
            mask[0, 0] |= 1 << i
    rules.restrict(mask, 0, may_end)
    return _allowed(mask)


def test_the_first_allowed_tier_wins() -> None:
    rules = ClosingRules(TOKENS, [EOS])
    everything = set(TOKENS)
    assert _after(rules, everything, may_end=True) == {b"<eos>"}
    assert _after(rules, everything, may_end=False) == {b'"', b"}", b'"}'}
    assert _after(rules, {b"abc", b"0", b"1", b",", b'", "'}, may_end=False) == {b"0", b",", b'", "'}
    assert _after(rules, {b"abc", b"1"}, may_end=False) == {b"abc", b"1"}  # nothing to close with: unchanged


def test_the_reserve_is_a_quarter_of_the_budget_up_to_32() -> None:
    assert [closing_reserve(n) for n in (8, 64, 128, 2048)] == [2, 16, 32, 32]


def test_a_gate_near_its_budget_lets_only_closing_tokens_through(tiny_tokenizer) -> None:
    from thinkform.structured.backends import BackendContext, create_backend
    from thinkform.structured.gate import Phase, ReasoningGate
    from thinkform.structured.spec import GrammarOptions, constraint_from_fields
    from thinkform.structured.vocab import TokenVocab

    vocab = TokenVocab.from_tokenizer(tiny_tokenizer, len(tiny_tokenizer))
    backend = create_backend("xgrammar", BackendContext(tiny_tokenizer, vocab.vocab_size, vocab.eos_token_ids,
                                                        GrammarOptions()))
    compiled = backend.compile(constraint_from_fields(json_schema=SCHEMA))
    rules = ClosingRules(vocab.token_bytes, vocab.eos_token_ids)
    prefix = vocab.encode_text('{"name": "abc')

    def allowed(written: int) -> set[bytes]:
        """Allowed next tokens after `written` tokens of a 64-token budget (closing reserve: 16)."""
        gate = ReasoningGate(vocab, None, Phase.ANSWER, compiled.new_matcher(), max_new_tokens=64, closing=rules)
        gate.accept_forced(prefix)
        for _ in range(written - len(prefix)):
            gate.accept_forced(vocab.encode_text("a"))
        mask = torch.zeros((1, (vocab.vocab_size + 31) // 32), dtype=torch.int32)
        gate.fill_bitmask(mask, 0)
        ids = [i for i in range(vocab.vocab_size) if (int(mask[0, i // 32]) >> (i % 32)) & 1]
        return {vocab.token_bytes[i] for i in ids}

    far = allowed(47)
    assert b"a" in far  # 17 tokens left: the string may go on
    near = allowed(48)
    assert near and all(t.strip(b'"}], :0') == b"" for t in near), near
    assert any(b'"' in t for t in near)


@pytest.mark.parametrize("jump_forward", [True, False])
def test_random_models_answer_in_valid_json_within_a_small_budget(tiny_model_dirs, jump_forward) -> None:
    """A random model never closes a free string by itself; every answer must still arrive whole."""
    from thinkform import Engine

    params = [{"temperature": 1.0, "seed": i, "max_new_tokens": 64, "json_schema": json.dumps(SCHEMA)}
              for i in range(12)]
    with Engine(model_path=str(tiny_model_dirs["qwen2"]), max_total_tokens=4096,
                disable_jump_forward=not jump_forward) as engine:
        outs = engine.generate(["Name and population?"] * len(params), params)
    for out in outs:
        assert out["meta_info"]["finish_reason"]["type"] == "stop", out
        assert out["meta_info"]["completion_tokens"] <= 64
        jsonschema.validate(json.loads(out["text"]), SCHEMA)
        if not out["meta_info"]["closed_by_budget"]:  # ended on its own, before the closing reserve
            assert out["meta_info"]["completion_tokens"] <= 64 - closing_reserve(64)
    assert sum(o["meta_info"]["closed_by_budget"] for o in outs) >= len(outs) // 2  # random models rarely end


def test_an_answer_that_ends_on_its_own_is_not_marked_closed(tiny_model_dirs) -> None:
    from thinkform import Engine

    with Engine(model_path=str(tiny_model_dirs["qwen2"]), max_total_tokens=4096) as engine:
        out = engine.generate("Yes or no?", {"temperature": 0, "max_new_tokens": 64,
                                             "json_schema": json.dumps({"enum": ["yes", "no"]})})
    assert json.loads(out["text"]) in ("yes", "no")
    assert out["meta_info"]["closed_by_budget"] is False
