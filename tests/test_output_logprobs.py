"""Logprobs of the tokens the engine appends itself (the end marker a thinking budget forces, EOS while thinking
turned into the marker, a budget's ending of the answer, jump-forward text): the model's own, as for sampled
tokens, and asking for logprobs does not change the answer."""
from __future__ import annotations

import json

import pytest
import torch

SCHEMA = json.dumps({"type": "object", "properties": {"name": {"type": "string"}, "population": {"type": "integer"}},
                     "required": ["name", "population"]})


@pytest.fixture(scope="module")
def qwen_engine(qwen_vocab_model):
    from thinkform import Engine

    eng = Engine(model_path=str(qwen_vocab_model[0]), dtype="float32", max_total_tokens=4096,
                 reasoning_parser="deepseek-r1")
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def reference(qwen_vocab_model):
    """log p(output token | everything before it), from transformers' forward of the same weights."""
    from transformers import AutoModelForCausalLM

    model_dir, tok = qwen_vocab_model
    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)

    def score(prompt_ids: list[int], output_ids: list[int]) -> list[float]:
        ids = prompt_ids + output_ids
        with torch.no_grad():
            logp = hf(torch.tensor([ids])).logits[0, :, :len(tok)].log_softmax(-1)
        return [logp[len(prompt_ids) + i - 1, t].item() for i, t in enumerate(output_ids)]

    return score


def _prompt(qwen_vocab_model) -> str:
    tok = qwen_vocab_model[1]
    return tok.apply_chat_template([{"role": "user", "content": "Capital of France as JSON"}], tokenize=False,
                                   add_generation_prompt=True)


@pytest.mark.parametrize("params", [
    {"max_reasoning_tokens": 3, "max_new_tokens": 24},  # the marker forced, then the budget's ending of the JSON
    {"max_new_tokens": 40, "logit_bias": {"151645": 40.0}},  # EOS while thinking becomes the marker
], ids=["budget-and-ending", "eos-becomes-marker"])
def test_every_output_token_has_the_models_logprob(qwen_engine, qwen_vocab_model, reference, params):
    out = qwen_engine.generate(_prompt(qwen_vocab_model), {"temperature": 0, "json_schema": SCHEMA, **params},
                               require_reasoning=True, return_logprob=True, top_logprobs_num=3, logprob_start_len=0)
    meta = out["meta_info"]
    assert meta["constraint_satisfied"] and "</think>" in out["text"]
    entries = meta["output_token_logprobs"]
    assert [t for _, t, _ in entries] == out["output_ids"]
    prompt_ids = [t for _, t, _ in meta["input_token_logprobs"]]
    assert [v for v, _, _ in entries] == pytest.approx(reference(prompt_ids, out["output_ids"]), abs=1e-3)
    assert all(len(top) == 3 and top[0][0] >= value for (value, _, _), top in zip(entries, meta["output_top_logprobs"]))


def test_asking_for_logprobs_does_not_change_a_jump_forward_answer(qwen_engine, qwen_vocab_model, reference):
    prompts = [_prompt(qwen_vocab_model), "Name a city:", "JSON please"]
    params = {"temperature": 0, "max_new_tokens": 40, "json_schema": SCHEMA}
    plain = qwen_engine.generate(prompts, params)
    scored = qwen_engine.generate(prompts, params, return_logprob=True, logprob_start_len=0)
    assert [o["output_ids"] for o in scored] == [o["output_ids"] for o in plain]
    for out in scored:  # the jumped `", "population": ` text too
        meta = out["meta_info"]
        prompt_ids = [t for _, t, _ in meta["input_token_logprobs"]]
        values = [v for v, _, _ in meta["output_token_logprobs"]]
        assert values == pytest.approx(reference(prompt_ids, out["output_ids"]), abs=1e-3)


FORCED = "[ab] hello world, this text is forced by the grammar"  # one sampled token, then forced text


@pytest.mark.parametrize("params", [
    *({"regex": FORCED, "max_new_tokens": n} for n in (4, 11, 12)),  # 11: the jump fills the output exactly
    {"regex": FORCED, "max_new_tokens": 20, "stop": ["grammar"]},  # a stop string the jump completes
    {"json_schema": SCHEMA, "max_new_tokens": 40, "temperature": 1.0, "seed": 7},  # forced steps draw no noise
], ids=["len4", "len11", "len12", "stop-in-jump", "seeded"])
def test_logprobs_leave_the_answer_and_its_finish_as_they_are(qwen_engine, params):
    params = {"temperature": 0, **params}
    plain = qwen_engine.generate("Say it:", params)
    scored = qwen_engine.generate("Say it:", params, return_logprob=True)
    assert scored["output_ids"] == plain["output_ids"] and scored["text"] == plain["text"]
    assert scored["meta_info"]["finish_reason"] == plain["meta_info"]["finish_reason"]
    assert len(scored["meta_info"]["output_token_logprobs"]) == len(plain["output_ids"])


def test_a_streams_reasoning_count_is_of_the_tokens_it_has_sent(qwen_engine, qwen_vocab_model):
    """A forced end marker waiting for its scored step is not counted yet: each chunk's reasoning_tokens is
    that of its completion_tokens, as without logprobs (it was one more than completion_tokens once)."""
    params = {"temperature": 0, "max_new_tokens": 12, "max_reasoning_tokens": 2}

    def counts(return_logprob: bool) -> dict[int, int]:
        chunks = qwen_engine.generate(_prompt(qwen_vocab_model), params, require_reasoning=True, stream=True,
                                      return_logprob=return_logprob)
        return {c["meta_info"]["completion_tokens"]: c["meta_info"]["reasoning_tokens"] for c in chunks}

    plain, scored = counts(False), counts(True)
    assert all(scored[n] == plain[n] for n in scored.keys() & plain.keys()) and max(plain.values()) == 3
    assert all(reasoning <= n for n, reasoning in scored.items())


# ---------------------------------------------------------------- OpenAI's shapes of them

def test_openai_logprob_shapes(qwen_engine):
    import httpx

    from server_fixtures import running_server

    with running_server(qwen_engine) as base:
        # a character split over tokens: each token's own bytes, which join to it (its text alone is U+FFFD)
        chat = httpx.post(f"{base}/v1/chat/completions", timeout=120, json={
            "messages": [{"role": "user", "content": "melt"}], "regex": "🫠🫠", "logprobs": True, "top_logprobs": 2,
            "temperature": 0, "max_tokens": 16}).json()["choices"][0]
        entries = chat["logprobs"]["content"]
        assert chat["message"]["content"] == "🫠🫠" and len(entries) > 2
        answer = entries[[e["token"] for e in entries].index("</think>") + 1:]  # the reasoning's come first
        assert bytes(b for e in answer for b in e["bytes"]).decode().removesuffix("<|im_end|>") == "🫠🫠"
        # legacy completions: the sampled token is always among top_logprobs (OpenAI: "up to logprobs+1
        # elements"), alone with logprobs 0
        for k in (0, 1):
            choice = httpx.post(f"{base}/v1/completions", timeout=120, json={
                "prompt": "Once upon", "max_tokens": 8, "temperature": 1.0, "seed": 3, "logprobs": k,
                "ignore_eos": True}).json()["choices"][0]
            lists = choice["logprobs"]
            for token, value, top in zip(lists["tokens"], lists["token_logprobs"], lists["top_logprobs"]):
                assert top[token] == value and k <= len(top) <= k + 1
