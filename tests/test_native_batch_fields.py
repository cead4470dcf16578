"""SGLang's per-prompt logprob fields in a batch (return_logprob, top_logprobs_num, logprob_start_len,
token_ids_logprob: one value for all prompts, or a list of one per prompt; lists refused with n > 1), offline
and over /generate; and /abort_request's answer (200, empty body)."""
from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from server_fixtures import error_response, running_server, sse_events

GREEDY = {"temperature": 0, "max_new_tokens": 3, "ignore_eos": True}
PROMPTS = ["Hello world! How are you today?", "The capital of France is Paris"]
LOGPROB_KEYS = ("input_token_logprobs", "output_token_logprobs", "input_top_logprobs", "output_top_logprobs",
                "input_token_ids_logprobs", "output_token_ids_logprobs")


def _logprob_keys(out: dict[str, Any]) -> set[str]:
    return {k for k in out["meta_info"] if k in LOGPROB_KEYS}


def _values(entries: list) -> list[float | None]:
    return [v for v, _, _ in entries]


# ---------------------------------------------------------------- offline Engine


def test_each_prompt_gets_its_own_return_logprob_and_top_k(engine64):
    outs = engine64.generate(PROMPTS, GREEDY, return_logprob=[True, False], top_logprobs_num=[2, 0])
    first, second = outs
    assert _logprob_keys(second) == set()  # this prompt asked for none
    assert all(len(top) == 2 for top in first["meta_info"]["output_top_logprobs"])
    alone = engine64.generate(PROMPTS[0], GREEDY, return_logprob=True, top_logprobs_num=2)
    assert first["output_ids"] == alone["output_ids"]
    assert _values(first["meta_info"]["output_token_logprobs"]) == pytest.approx(
        _values(alone["meta_info"]["output_token_logprobs"]), abs=1e-6)
    assert second["output_ids"] == engine64.generate(PROMPTS[1], GREEDY)["output_ids"]


def test_a_scalar_still_serves_every_prompt(engine64):
    outs = engine64.generate(PROMPTS, GREEDY, return_logprob=True, top_logprobs_num=[1, 3])
    assert [len(o["meta_info"]["output_top_logprobs"][0]) for o in outs] == [1, 3]
    outs = engine64.generate(PROMPTS, GREEDY, return_logprob=[True, True], top_logprobs_num=2)
    assert [len(o["meta_info"]["output_top_logprobs"][0]) for o in outs] == [2, 2]


def test_all_four_fields_per_prompt_at_once(engine64):
    prompts = [*PROMPTS, "One more prompt"]
    outs = engine64.generate(prompts, GREEDY, return_logprob=[True, True, False], top_logprobs_num=[0, 1, 2],
                             logprob_start_len=[0, -1, 0], token_ids_logprob=[[10, 11], [12], [13]])
    for text, out, ids, start in zip(prompts, outs[:2], ([10, 11], [12]), (0, -1)):
        meta = out["meta_info"]
        assert [t for _, t, _ in meta["input_token_logprobs"]] == engine64.tokenizer.encode(text)[start:]
        assert all([t for _, t, _ in row] == ids for row in meta["output_token_ids_logprobs"])
    assert "output_top_logprobs" not in outs[0]["meta_info"]
    assert all(len(top) == 1 for top in outs[1]["meta_info"]["output_top_logprobs"])
    assert _logprob_keys(outs[2]) == set()


def test_async_generate_takes_the_lists_too(engine64):
    outs = asyncio.run(engine64.async_generate(PROMPTS, GREEDY, return_logprob=[False, True],
                                               top_logprobs_num=[0, 2]))
    assert _logprob_keys(outs[0]) == set()
    assert all(len(top) == 2 for top in outs[1]["meta_info"]["output_top_logprobs"])


def test_a_list_that_does_not_match_the_batch_is_refused_naming_the_field(engine64):
    for name, value in (("return_logprob", [True]), ("top_logprobs_num", [1, 2, 3]),
                        ("logprob_start_len", [0]), ("token_ids_logprob", [[1], [2], [3]])):
        with pytest.raises(ValueError, match=f"^{name}: a list.* per prompt \\(2\\), got"):
            engine64.generate(PROMPTS, GREEDY, **{"return_logprob": True, name: value})


def test_lists_cannot_be_combined_with_parallel_sampling(engine64):
    """SGLang: "Cannot use list <field> with parallel_sample_num > 1"; one value still serves every sample."""
    sampled = {**GREEDY, "n": 2}
    for name, value in (("return_logprob", [True, False]), ("top_logprobs_num", [1, 2]),
                        ("logprob_start_len", [0, 1]), ("token_ids_logprob", [[1], [2]])):
        with pytest.raises(ValueError, match=f"^{name}: .*n > 1"):
            engine64.generate(PROMPTS, sampled, **{"return_logprob": True, name: value})
    with pytest.raises(ValueError, match="^return_logprob: .*n > 1"):  # one prompt with n > 1 is a batch too
        engine64.generate(PROMPTS[0], sampled, return_logprob=[True])
    outs = engine64.generate(PROMPTS, sampled, return_logprob=True, top_logprobs_num=2, token_ids_logprob=[7])
    assert len(outs) == 4 and all(len(o["meta_info"]["output_top_logprobs"][0]) == 2 for o in outs)
    assert all([t for _, t, _ in o["meta_info"]["output_token_ids_logprobs"][0]] == [7] for o in outs)


# ---------------------------------------------------------------- /generate


def test_generate_route_takes_per_prompt_lists(engine64):
    body = {"text": PROMPTS, "sampling_params": GREEDY, "return_logprob": [True, False],
            "top_logprobs_num": [2, 0], "logprob_start_len": [1, -1], "token_ids_logprob": [[10], [11]]}
    with running_server(engine64) as base:
        r = httpx.post(f"{base}/generate", json=body)
        with httpx.stream("POST", f"{base}/generate", json={**body, "stream": True}) as s:
            events = sse_events(s)
    assert r.status_code == 200, r.text
    first, second = r.json()
    assert _logprob_keys(second) == set()
    meta = first["meta_info"]
    assert [t for _, t, _ in meta["input_token_logprobs"]] == engine64.tokenizer.encode(PROMPTS[0])[1:]
    assert all(len(top) == 2 for top in meta["output_top_logprobs"])
    assert all([t for _, t, _ in row] == [10] for row in meta["output_token_ids_logprobs"])
    finals = {e["index"]: e for e in events[:-1] if e["meta_info"]["finish_reason"] is not None}
    assert len(finals[0]["meta_info"]["output_token_logprobs"]) == 3 and _logprob_keys(finals[1]) == set()


def test_generate_route_refuses_bad_lists_with_a_400_naming_the_field(engine64):
    with running_server(engine64) as base:
        short = httpx.post(f"{base}/generate", json={"text": PROMPTS, "sampling_params": GREEDY,
                                                     "return_logprob": [True]})
        parallel = httpx.post(f"{base}/generate", json={"text": PROMPTS, "sampling_params": {**GREEDY, "n": 2},
                                                        "return_logprob": True, "top_logprobs_num": [1, 2]})
        too_big = httpx.post(f"{base}/generate", json={"text": PROMPTS, "return_logprob": True,
                                                       "top_logprobs_num": [1, 10**7]})  # past the vocabulary
    error_response(short, 400, "return_logprob", "per prompt")
    error_response(parallel, 400, "top_logprobs_num", "n > 1")
    assert too_big.status_code == 400 and too_big.json()["error"]["param"].startswith("top_logprobs_num")


# ---------------------------------------------------------------- /abort_request


def test_abort_request_answers_as_sglang_an_empty_200(served):
    engine, base = served
    by_rid = httpx.post(f"{base}/abort_request", json={"rid": "r-1"})
    everything = httpx.post(f"{base}/abort_request", json={"rid": None, "abort_all": True})
    assert (by_rid.status_code, by_rid.content) == (200, b"")
    assert (everything.status_code, everything.content) == (200, b"")
    assert engine.aborted == ["r-1", "*"]
    error_response(httpx.post(f"{base}/abort_request", json={"rid": None}), 400, "rid")
