"""A KV cache too small for everything at once: requests wait, are preempted and recomputed, and still all
finish with what they would have written alone; callers that go away never take the engine with them."""
from __future__ import annotations

import asyncio
import json
import signal
import threading
import time

import jsonschema
import pytest

from thinkform import Engine

LONG = "b" + "_this_is_a_very_long_property_name_that_the_grammar_forces" * 2
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}, LONG: {"type": "integer"}},
          "required": ["a", LONG], "additionalProperties": False}


def _in_time(work, seconds: float):
    box: dict = {}
    thread = threading.Thread(target=lambda: box.setdefault("out", work()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the engine stopped making progress"
    return box["out"]


@pytest.mark.parametrize("total", [168, 240])
def test_grammar_forced_text_longer_than_a_decode_finishes_in_a_full_cache(tiny_model_dirs, total):
    """Jump-forward appends a long forced key (38 tokens) that is computed as an extend; when every running
    request waited for pages that way, no step ran again and the engine hung."""
    with Engine(model_path=str(tiny_model_dirs["llama"]), dtype="float32", max_total_tokens=total, page_size=4,
                chunked_prefill_size=64) as engine:
        outs = _in_time(lambda: engine.generate(["The capital of France"] * 6, {
            "max_new_tokens": 150, "temperature": 0, "json_schema": json.dumps(SCHEMA)}), 120)
        assert all(o["meta_info"]["finish_reason"]["type"] == "stop" for o in outs)
        for out in outs:
            jsonschema.validate(json.loads(out["text"]), SCHEMA)
        alone = engine.generate("The capital of France", {"max_new_tokens": 150, "temperature": 0,
                                                          "json_schema": json.dumps(SCHEMA)})
        assert all(o["output_ids"] == alone["output_ids"] for o in outs)


def test_cached_tokens_count_the_prompt_only_across_preemptions(tiny_model_dirs):
    with Engine(model_path=str(tiny_model_dirs["llama"]), dtype="float32", max_total_tokens=160, page_size=8,
                chunked_prefill_size=32) as engine:
        prompts = [f"Question {k}: what is the capital of France and its population" for k in range(8)]
        outs = engine.generate(prompts, {"max_new_tokens": 40, "temperature": 0, "ignore_eos": True})
        assert any(o["meta_info"]["total_retractions"] > 0 for o in outs)  # the cache was too small for all
        assert all(o["meta_info"]["cached_tokens"] <= o["meta_info"]["prompt_tokens"] for o in outs)


def test_a_request_aborted_while_it_waits_after_a_preemption_counts_it(tiny_model_dirs):
    """total_retractions counts each preemption when it happens (SGLang's count): a request aborted before it
    was admitted again said 0, and the requests' counts fell short of the engine's."""
    with Engine(model_path=str(tiny_model_dirs["llama"]), dtype="float32", max_total_tokens=128, page_size=4,
                chunked_prefill_size=16) as engine:
        scheduler, aborted = engine.loop.scheduler, []

        def abort_the_first_preempted() -> None:
            deadline = time.monotonic() + 60
            while not aborted and time.monotonic() < deadline:
                for seq in list(scheduler.waiting):
                    if seq.admissions > 0:  # was running: preempted, waiting to be admitted again
                        aborted.append(seq.rid)
                        engine.abort(seq.rid)
                        return
                time.sleep(0.0005)

        threading.Thread(target=abort_the_first_preempted, daemon=True).start()

        async def run() -> list[dict]:
            return await asyncio.gather(*[engine.async_generate(
                "word " * 20 + str(k), {"max_new_tokens": 60, "ignore_eos": True, "temperature": 0}, rid=f"r{k}")
                for k in range(4)])

        outs = {o["meta_info"]["id"]: o["meta_info"] for o in _in_time(lambda: asyncio.run(run()), 120)}
        assert aborted and outs[aborted[0]]["finish_reason"]["type"] == "abort"
        assert outs[aborted[0]]["total_retractions"] >= 1
        assert sum(m["total_retractions"] for m in outs.values()) == engine.loop.stats()["preemptions"]


def test_a_callers_closed_event_loop_leaves_the_engine_serving(engine64):
    """asyncio.run(wait_for(async_generate(...), t)) gives up and closes its loop while the request runs:
    the request ends, the engine does not."""
    async def give_up():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(engine64.async_generate("Hello", {"max_new_tokens": 2000, "ignore_eos": True}), 0.2)

    asyncio.run(give_up())
    time.sleep(0.5)
    assert engine64.is_healthy()
    assert engine64.generate("Hello", {"max_new_tokens": 3})["meta_info"]["completion_tokens"] == 3
    deadline = time.time() + 10
    while engine64.loop.stats()["running"] and time.time() < deadline:
        time.sleep(0.05)
    assert engine64.loop.stats()["running"] == 0


def test_an_interrupted_generate_aborts_its_request(engine64):
    class Interrupted(Exception):
        pass

    def interrupt(*_):
        raise Interrupted

    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(Interrupted):
            engine64.generate("Hello", {"max_new_tokens": 4000, "ignore_eos": True}, rid="interrupted")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    deadline = time.time() + 10
    while engine64.loop.stats()["running"] and time.time() < deadline:
        time.sleep(0.05)
    assert engine64.loop.stats()["running"] == 0
    assert engine64.generate("Hello", {"max_new_tokens": 2}, rid="interrupted")["meta_info"]["completion_tokens"] == 2


def test_requests_the_cache_cannot_hold_are_refused_or_cut_never_left_waiting(tiny_model_dirs):
    """Audit 33: a prompt as long as the KV cache with max_new_tokens 0 passed the length check and was never
    admitted (it needs room for one token after it), and every request behind it waited too; the default
    max_new_tokens was cut to the context but not to the cache (a prompt that fits was refused)."""
    with Engine(model_path=str(tiny_model_dirs["llama"]), dtype="float32", max_total_tokens=64, page_size=8,
                chunked_prefill_size=-1) as engine:
        assert engine.get_server_info()["max_req_input_len"] == 63
        with pytest.raises(ValueError, match="can never fit in the KV cache"):
            engine.generate(input_ids=[5] * 64, sampling_params={"max_new_tokens": 0})
        out = engine.generate(input_ids=[5] * 20, sampling_params={"ignore_eos": True})  # default 128, cut
        assert out["meta_info"]["completion_tokens"] == 44
        assert engine.generate("Hi", {"max_new_tokens": 2})["meta_info"]["completion_tokens"] >= 1


@pytest.mark.parametrize("field, value", [("chunked_prefill_size", 0), ("chunked_prefill_size", -2),
                                          ("max_running_requests", 0)])
def test_settings_that_would_never_run_a_request_are_refused(field, value):
    from thinkform.args import EngineArgs

    with pytest.raises(ValueError, match=field):
        EngineArgs(model_path="unused", **{field: value})
