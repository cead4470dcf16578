"""Prompt logprobs (SGLang's input_token_logprobs from logprob_start_len, OpenAI's echo with logprobs): each
prompt token scored by the model given the tokens before it, whatever the prefix cache and chunking do."""
from __future__ import annotations

import httpx
import pytest
import torch

from server_fixtures import running_server

GREEDY = {"temperature": 0, "max_new_tokens": 6, "ignore_eos": True}
PROMPT = " ".join(f"word{i} and then" for i in range(30))  # > 64 tokens: more than one prefill chunk


def _reference(model_dir, ids: list[int]) -> list[float]:
    """log p(ids[i] | ids[:i]) for i >= 1, from transformers' own forward of the same weights, over the
    tokenizer's ids (the embedding's padding rows are never sampled)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float64)
    with torch.no_grad():
        logp = hf(torch.tensor([ids])).logits[0, :, :len(AutoTokenizer.from_pretrained(str(model_dir)))].log_softmax(-1)
    return [logp[i - 1, ids[i]].item() for i in range(1, len(ids))]


def _values(entries) -> list[float | None]:
    return [v for v, _, _ in entries]


def test_prompt_logprobs_match_a_full_forward_across_chunks(engine64, tiny_model_dirs):
    ids = engine64.tokenizer.encode(PROMPT)
    assert len(ids) > 64
    out = engine64.generate(PROMPT, GREEDY, return_logprob=True, logprob_start_len=0, top_logprobs_num=3)
    meta = out["meta_info"]
    entries = meta["input_token_logprobs"]
    assert [t for _, t, _ in entries] == ids and entries[0][0] is None
    assert _values(entries[1:]) == pytest.approx(_reference(tiny_model_dirs["qwen2"], ids), abs=1e-5)
    tops = meta["input_top_logprobs"]
    assert tops[0] is None and len(tops) == len(ids)
    for (value, _, _), top in zip(entries[1:], tops[1:]):
        assert len(top) == 3 and top[0][0] >= value and top[0][0] >= top[1][0] >= top[2][0]


def test_output_tokens_scored_as_a_prompt_give_their_sampled_logprobs(engine64):
    """The same model, two roads: an output token's logprob when it was sampled, and when it is scored as
    part of a longer prompt (default logprob_start_len: the last prompt token only, unscored)."""
    first = engine64.generate(PROMPT, GREEDY, return_logprob=True)
    assert first["meta_info"]["input_token_logprobs"] == [(None, engine64.tokenizer.encode(PROMPT)[-1], None)]
    ids = engine64.tokenizer.encode(PROMPT)
    again = engine64.generate(input_ids=ids + first["output_ids"], sampling_params={**GREEDY, "max_new_tokens": 0},
                              return_logprob=True, logprob_start_len=len(ids) - 1)
    scored = again["meta_info"]["input_token_logprobs"]
    assert again["output_ids"] == [] and again["meta_info"]["finish_reason"]["type"] == "length"
    assert _values(scored[1:]) == pytest.approx(_values(first["meta_info"]["output_token_logprobs"]), abs=1e-5)


def test_the_prefix_cache_never_hides_scored_positions(engine64):
    """A prompt already cached is computed again from the first position it scores; what lies before it is
    still taken from the cache."""
    engine64.generate(PROMPT, GREEDY)  # the prompt's pages are cached now
    whole = engine64.generate(PROMPT, GREEDY, return_logprob=True, logprob_start_len=0)
    assert whole["meta_info"]["cached_tokens"] == 0
    start = 41
    tail = engine64.generate(PROMPT, GREEDY, return_logprob=True, logprob_start_len=start)
    assert 0 < tail["meta_info"]["cached_tokens"] <= start
    assert _values(tail["meta_info"]["input_token_logprobs"][1:]) == pytest.approx(
        _values(whole["meta_info"]["input_token_logprobs"][start + 1:]), abs=1e-5)
    assert tail["output_ids"] == whole["output_ids"]
    plain = engine64.generate(PROMPT, GREEDY)  # and a request that scores nothing uses the whole cache
    assert plain["meta_info"]["cached_tokens"] >= len(engine64.tokenizer.encode(PROMPT)) - 4


def test_batched_prompts_each_get_their_own_start_and_text(engine64):
    prompts = ["Hello world! How are you today?", PROMPT]
    outs = engine64.generate(prompts, GREEDY, return_logprob=True, logprob_start_len=[2, 5],
                             return_text_in_logprobs=True)
    for prompt, start, out in zip(prompts, [2, 5], outs):
        ids = engine64.tokenizer.encode(prompt)
        entries = out["meta_info"]["input_token_logprobs"]
        assert [t for _, t, _ in entries] == ids[start:]
        assert [text for _, _, text in entries] == [engine64.tokenizer.decode([t]) for t in ids[start:]]
        assert all(text == engine64.tokenizer.decode([t]) for _, t, text in out["meta_info"]["output_token_logprobs"])


@pytest.mark.parametrize("start", [10_000, -2, "3", [0, 1]])
def test_a_bad_logprob_start_len_is_refused_naming_the_field(engine64, start):
    with pytest.raises(ValueError, match="logprob_start_len"):
        engine64.generate("Hello there", GREEDY, return_logprob=True, logprob_start_len=start)


def test_http_prompt_scoring_native_and_openai_echo(engine64):
    """lm-eval style scoring over HTTP: /v1/completions with echo, logprobs and max_tokens 0 returns the
    prompt's own logprobs; /generate speaks SGLang's fields."""
    text = "The capital of France is Paris"
    ids = engine64.tokenizer.encode(text)
    with running_server(engine64) as base:
        r = httpx.post(f"{base}/v1/completions", json={"prompt": text, "echo": True, "logprobs": 1, "max_tokens": 0})
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        native = httpx.post(f"{base}/generate", json={"text": text, "sampling_params": {"max_new_tokens": 0},
                                                      "return_logprob": True, "logprob_start_len": 0}).json()
        bad = httpx.post(f"{base}/generate", json={"text": text, "return_logprob": True, "logprob_start_len": 99})
    assert choice["text"] == text and choice["finish_reason"] == "length"
    scored = native["meta_info"]["input_token_logprobs"]
    assert [t for _, t, _ in scored] == ids
    echoed = choice["logprobs"]["token_logprobs"]
    assert echoed[0] is None and echoed[1:] == pytest.approx(_values(scored[1:]), abs=1e-5)
    assert len(echoed) == len(ids)  # max_tokens 0: the prompt's tokens only
    tops = choice["logprobs"]["top_logprobs"][1:]  # the likeliest token, and the prompt's own where it is another
    assert all(isinstance(top, dict) and len(top) in (1, 2) and token in top
               for top, token in zip(tops, choice["logprobs"]["tokens"][1:]))
    assert bad.status_code == 400 and "logprob_start_len" in bad.text
