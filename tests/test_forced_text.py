"""Text the engine writes for the model (jump-forward, the budget's ending) and what xgrammar reads: with
Qwen's real vocabulary, whose special tokens spell text a constraint may hold."""
from __future__ import annotations

import json
import re

import pytest

SPECIAL = "<|im_start|>"


@pytest.fixture(scope="module", params=["auto", "llguidance"])
def engine(request, qwen_vocab_model):
    from thinkform import Engine

    model, tok = qwen_vocab_model
    eng = Engine(model_path=str(model), grammar_backend=request.param, max_total_tokens=2048,
                 reasoning_parser="deepseek-r1")
    yield eng, tok
    eng.shutdown()


def _answer(eng, params: dict, jump: bool) -> dict:
    eng.loop.jump_enabled = jump
    try:
        out = eng.generate("hello", {"temperature": 0, "max_new_tokens": 40, "max_reasoning_tokens": 0, **params},
                           require_reasoning=True)
    finally:
        eng.loop.jump_enabled = True
    return out


@pytest.mark.parametrize("jump", [True, False])
@pytest.mark.parametrize("value", ["x<|im_start|>y", "x</think>y", f"{SPECIAL}user"])
def test_a_special_tokens_text_in_a_json_value_is_written_as_text(engine, value, jump):
    """Audit 32: jump-forward (and the ending near the budget) spelled forced text through the tokenizer,
    which split the special token out of it: `x<|im_start|>y` came back `xy` (the text hides the token),
    with constraint_satisfied true; `</think>` went in as the reasoning marker. llguidance with jump-forward
    off failed the request with a 500 (its ending search met a path its mask allowed and its matcher
    refused)."""
    eng, tok = engine
    schema = {"type": "object", "properties": {"tag": {"const": value}}, "required": ["tag"]}
    out = _answer(eng, {"json_schema": json.dumps(schema)}, jump)
    meta = out["meta_info"]
    assert meta["finish_reason"]["type"] == "stop" and meta["constraint_satisfied"], meta
    assert json.loads(meta["content"]) == {"tag": value}
    answer = out["output_ids"][out["output_ids"].index(tok.convert_tokens_to_ids("</think>")) + 1:]
    assert not {tok.convert_tokens_to_ids(SPECIAL), tok.convert_tokens_to_ids("</think>")} & set(answer), answer


@pytest.mark.parametrize("jump", [True, False])
def test_a_regex_holding_a_special_tokens_text(engine, jump):
    eng, _ = engine
    out = _answer(eng, {"regex": r"a<\|im_start\|>b(c|d)"}, jump)
    assert re.fullmatch(r"a<\|im_start\|>b(c|d)", out["meta_info"]["content"]), out["meta_info"]


@pytest.mark.parametrize("regex, valid, tempting", [
    (r"\x41b", "Ab", "Л"),        # xgrammar read \x41b as U+041B
    (r"[\x41b]", "A", "Л"),
    (r"[α-ωa\t]", "\t", "\x9a"),  # thinkform's own rewrite wrote \x09 before `a`: U+009A
])
def test_hex_escapes_mean_two_digits(engine, regex, valid, tempting):
    """Audit 32: xgrammar takes every hex digit after `\\x`; ECMA-262 takes two."""
    eng, tok = engine
    bias = {str(t): 30.0 for t in tok.encode(tempting, add_special_tokens=False)}
    bias.update({str(t): 20.0 for t in tok.encode(valid, add_special_tokens=False)})
    out = _answer(eng, {"regex": regex, "logit_bias": bias}, True)
    assert re.fullmatch(regex, out["meta_info"]["content"]), out["meta_info"]


@pytest.mark.parametrize("city", ["Zurück", "Zürich", "São Paulo"])
def test_a_non_ascii_enum_value_is_kept_exactly(engine, city):
    """Audit 32: xgrammar compiles a Grammar object through its own printing, `ü` as `\\xfc`, and read
    `Zurück` back as `Zur\\u0fcck`: the enum's value came back changed with constraint_satisfied true."""
    eng, _ = engine
    schema = {"type": "object", "properties": {"city": {"enum": [city]}}, "required": ["city"]}
    out = _answer(eng, {"json_schema": json.dumps(schema)}, True)
    assert json.loads(out["meta_info"]["content"]) == {"city": city}, out["meta_info"]
