"""For tests of engine modes that change the cost of a step, never its result: run one batch with a
switch set, and compare everything a user gets back."""
from __future__ import annotations

from typing import Any, Callable

COMPARED_META = ("finish_reason", "completion_tokens", "constraint_satisfied", "reasoning_content", "content",
                 "output_token_logprobs", "output_top_logprobs")


def run_with(engine: Any, switch: Callable[[], None], prompts: list[str], params: dict, kwargs: dict,
             counter: str) -> tuple[list[dict], int]:
    """switch() sets the mode (the loop is idle between generate calls); returns (outputs without their
    timings, how much `counter` of the loop grew)."""
    switch()
    engine.parts.pool.reset_prefix_cache()
    before = engine.loop.counters[counter]
    outs = engine.generate(prompts, params, **kwargs)
    for out in outs:
        out["meta_info"].pop("e2e_latency", None)
    return outs, engine.loop.counters[counter] - before


def assert_same_outputs(expected: list[dict], got: list[dict]) -> None:
    assert len(expected) == len(got)
    for a, b in zip(expected, got):
        assert a["output_ids"] == b["output_ids"]
        assert a["text"] == b["text"]
        for key in COMPARED_META:
            assert a["meta_info"].get(key) == b["meta_info"].get(key), key
