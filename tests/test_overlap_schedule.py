"""The overlap schedule (next decode step launched before the CPU appends the sampled tokens) changes
timing only: every output, finish reason and constraint result is the one the plain schedule gives.

It is on by default on accelerators only; here it is switched on for a CPU engine, where it runs the same
code (the device merely does not overlap)."""
from __future__ import annotations

import json

import pytest
from same_outputs import assert_same_outputs, run_with

SCHEMA = json.dumps({"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                                     "n": {"type": "integer"}}, "required": ["name", "n"]})
PROMPTS = ["Give me the capital of France.", "a b c", "One more prompt, a little longer than the others are."]
CASES = {
    "free": ({"temperature": 0, "max_new_tokens": 12, "ignore_eos": True}, {}),
    "json": ({"temperature": 0, "max_new_tokens": 40, "json_schema": SCHEMA}, {}),  # jump-forward extends
    "reasoning": ({"temperature": 0, "max_new_tokens": 48, "max_reasoning_tokens": 6, "regex": "(yes|no)"},
                  {"require_reasoning": True}),
    "sampled": ({"temperature": 0.9, "seed": 7, "n": 3, "max_new_tokens": 16, "stop": ["e"]}, {}),
    "logprobs": ({"temperature": 0, "max_new_tokens": 10}, {"return_logprob": True, "top_logprobs_num": 2}),
}


@pytest.fixture(scope="module")
def engine(tiny_model_dirs):
    from thinkform import Engine

    eng = Engine(model_path=str(tiny_model_dirs["qwen2"]), dtype="float64", reasoning_parser="deepseek-r1",
                 max_total_tokens=4096, page_size=4)
    yield eng
    eng.shutdown()


def _run(engine, overlap: bool, params: dict, kwargs: dict) -> tuple[list, int]:
    return run_with(engine, lambda: setattr(engine.loop, "overlap", overlap), PROMPTS, params, kwargs, "steps")


@pytest.mark.parametrize("case", sorted(CASES))
def test_overlap_gives_the_same_outputs(engine, case):
    params, kwargs = CASES[case]
    plain, _ = _run(engine, False, params, kwargs)
    overlapped, _ = _run(engine, True, params, kwargs)
    assert_same_outputs(plain, overlapped)


def test_overlap_launches_steps_ahead_and_drops_finished_rows(engine):
    """Decode steps run ahead (so a request that stops costs at most one dropped row, never a wrong token)."""
    params = {"temperature": 0, "max_new_tokens": 6, "ignore_eos": True}
    engine.loop.overlap = True
    ahead = []
    launch = engine.loop._launch_ahead

    fed = []

    def spy(sampling, tokens, ids=None):
        launch(sampling, tokens, ids)
        ahead.append(engine.loop._ahead is not None)
        fed.append(ids is not None)

    engine.loop._launch_ahead = spy
    try:
        outs = engine.generate(PROMPTS, params)
    finally:
        del engine.loop._launch_ahead
        engine.loop.overlap = False
    assert all(len(o["output_ids"]) == 6 for o in outs)
    assert sum(ahead) >= 4  # every decode step after the first was launched ahead
    # from the sampler's ids before the host read them: the device never waits for the host between steps
    assert all(fed)


def test_no_step_ahead_for_tokens_that_end_every_row_by_length(engine):
    """The token that reaches max_new_tokens in every row launches no step ahead: it would be computed for
    nobody (a whole forward pass a call, ~1 % of a 128-token call at batch 1)."""
    params = {"temperature": 0, "max_new_tokens": 6, "ignore_eos": True}
    loop = engine.loop
    steps = loop.counters["steps"]
    loop.overlap = True
    try:
        outs = engine.generate(PROMPTS, params)
    finally:
        loop.overlap = False
    assert all(len(o["output_ids"]) == 6 for o in outs)
    assert loop.counters["steps"] - steps == 6  # the prefill, then one step for each of tokens 2..6
    assert loop._ahead is None


def test_flush_cache_right_after_the_last_request_is_not_refused(engine64, monkeypatch):
    """Audit 19: the last step of a run launches a decode-ahead step before its tokens end the requests; a
    flush_cache (the server's /flush_cache) sent as generate() returned found it still held and was refused
    ("requests are running") 22 times in 30, with nothing in flight. Here the loop waits for the flush at
    that moment, so the race goes the losing way every time."""
    import time

    loop = engine64.loop
    drain = loop._drain

    def drain_once_the_flush_came():
        if loop._ahead is not None and all(s.finished for s in loop._ahead[0].seqs):
            deadline = time.monotonic() + 2.0
            while not loop._flushes and time.monotonic() < deadline:
                time.sleep(0.001)
        drain()

    monkeypatch.setattr(loop, "_drain", drain_once_the_flush_came)
    loop.overlap = True
    try:
        accepted = []
        for _ in range(3):
            engine64.generate(PROMPTS, {"temperature": 0, "max_new_tokens": 6, "ignore_eos": True})
            accepted.append(engine64.flush_cache())
    finally:
        loop.overlap = False
    assert accepted == [True] * 3
    assert loop.stats()["kv_pages_used"] == 0
