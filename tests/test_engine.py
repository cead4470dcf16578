"""The engine foundation: batching, chunking, sampling params, abort, API shapes."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

PROMPTS = ["Give me the capital of France.", "The answer is", "Hello world! How are you today?",
           "Okay, so I need to figure out the population of Paris. I recall it is about 2 million."]
GREEDY = {"temperature": 0, "max_new_tokens": 12, "ignore_eos": True}


def _alone(engine, prompt, params=GREEDY):
    return engine.generate(prompt, params)["output_ids"]


def test_single_prompt_returns_dict_with_sglang_fields(engine64):
    out = engine64.generate("The answer is", {"temperature": 0, "max_new_tokens": 5, "ignore_eos": True})
    assert isinstance(out, dict)
    assert set(out) == {"text", "output_ids", "meta_info"}
    meta = out["meta_info"]
    assert meta["finish_reason"] == {"type": "length", "length": 5}  # SGLang's shape: no `matched`
    assert meta["completion_tokens"] == len(out["output_ids"]) == 5
    assert meta["prompt_tokens"] == len(engine64.tokenizer.encode("The answer is"))
    assert meta["e2e_latency"] > 0 and "cached_tokens" in meta and "id" in meta
    assert out["text"] == engine64.tokenizer.decode(out["output_ids"], skip_special_tokens=True)


def test_batch_greedy_equals_each_alone(engine64):
    alone = [_alone(engine64, p) for p in PROMPTS]
    batch = engine64.generate(PROMPTS, GREEDY)
    assert isinstance(batch, list) and len(batch) == len(PROMPTS)
    assert [o["output_ids"] for o in batch] == alone


def test_requests_joining_mid_flight_match_alone(engine64):
    alone = [_alone(engine64, p, {**GREEDY, "max_new_tokens": 20}) for p in PROMPTS]
    results: dict[int, list[int]] = {}

    def run(i: int) -> None:
        time.sleep(0.05 * i)
        results[i] = engine64.generate(PROMPTS[i], {**GREEDY, "max_new_tokens": 20})["output_ids"]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(len(PROMPTS))] == alone


def test_chunked_prefill_equals_unchunked(tiny_model_dirs):
    from thinkform import Engine

    long_prompt = " ".join(PROMPTS * 6)
    outs = []
    for chunk in (8, 4096):
        with Engine(model_path=str(tiny_model_dirs["qwen2"]), dtype="float64", chunked_prefill_size=chunk,
                    max_total_tokens=4096, disable_radix_cache=True) as eng:
            outs.append(eng.generate(long_prompt, GREEDY)["output_ids"])
    assert outs[0] == outs[1]


def test_prefix_cache_reports_cached_tokens_and_keeps_output(engine64):
    prompt = " ".join(PROMPTS * 3)
    first = engine64.generate(prompt, GREEDY)
    second = engine64.generate(prompt, GREEDY)
    assert second["output_ids"] == first["output_ids"]
    assert second["meta_info"]["cached_tokens"] > 0


def test_stop_string_trimmed(engine64):
    free = engine64.generate("The answer is", {**GREEDY, "max_new_tokens": 20})
    text = free["text"]
    stop = text[3:5]
    assert stop.strip(), text
    out = engine64.generate("The answer is", {**GREEDY, "max_new_tokens": 20, "stop": [stop]})
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    assert out["text"] == text[: text.index(stop)]


def test_stop_token_ids(engine64):
    free = engine64.generate("The answer is", GREEDY)
    target = free["output_ids"][3]
    out = engine64.generate("The answer is", {**GREEDY, "stop_token_ids": [target]})
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": target}
    assert out["output_ids"] == free["output_ids"][: free["output_ids"].index(target) + 1]


def test_n_samples_and_seeds_reproducible(engine64):
    params = {"temperature": 1.0, "max_new_tokens": 10, "n": 3, "seed": 7, "ignore_eos": True}
    a = engine64.generate("Hello", params)
    b = engine64.generate("Hello", params)
    assert isinstance(a, list) and len(a) == 3
    assert [o["output_ids"] for o in a] == [o["output_ids"] for o in b]
    assert len({tuple(o["output_ids"]) for o in a}) > 1  # the n samples differ from each other


def test_batched_prompts_with_n_grouped_by_prompt(engine64):
    outs = engine64.generate(["Hello", "The answer is"], {**GREEDY, "n": 2})
    assert len(outs) == 4
    assert outs[0]["output_ids"] == outs[1]["output_ids"] == _alone(engine64, "Hello")
    assert outs[2]["output_ids"] == outs[3]["output_ids"] == _alone(engine64, "The answer is")


def test_an_offline_batch_larger_than_the_server_queue_limit_runs_whole(engine64, monkeypatch):
    monkeypatch.setattr(engine64.args, "max_queued_requests", 2)
    outs = engine64.generate(["Hello"] * 7, {**GREEDY, "max_new_tokens": 2})
    assert len(outs) == 7 and all(len(o["output_ids"]) == 2 for o in outs)


def test_padded_vocab_never_sampled(engine64):
    tok_len = len(engine64.tokenizer)
    bias = {str(tok_len + i): 100.0 for i in range(10)}
    out = engine64.generate(PROMPTS, {"temperature": 1.0, "max_new_tokens": 16, "logit_bias": bias, "seed": 1})
    assert all(t < tok_len for o in out for t in o["output_ids"])


def test_logit_bias_forces_token(engine64):
    target = engine64.tokenizer.encode(" Paris")[0]
    out = engine64.generate("Hello", {**GREEDY, "max_new_tokens": 4, "logit_bias": {str(target): 100.0}})
    assert out["output_ids"] == [target] * 4


def test_penalties_change_greedy_output(engine64):
    base = engine64.generate(PROMPTS[3], {**GREEDY, "max_new_tokens": 24})["output_ids"]
    rep = engine64.generate(PROMPTS[3], {**GREEDY, "max_new_tokens": 24, "repetition_penalty": 2.0})["output_ids"]
    freq = engine64.generate(PROMPTS[3], {**GREEDY, "max_new_tokens": 24, "frequency_penalty": 2.0})["output_ids"]
    assert rep != base or freq != base
    assert len(set(freq)) >= len(set(base))


def test_logprobs_returned(engine64):
    out = engine64.generate("Hello", {**GREEDY, "max_new_tokens": 4}, return_logprob=True, top_logprobs_num=3)
    lps = out["meta_info"]["output_token_logprobs"]
    tops = out["meta_info"]["output_top_logprobs"]
    assert [t for _, t, _ in lps] == out["output_ids"]
    assert all(lp <= 0 for lp, _, _ in lps)
    assert all(len(top) == 3 and top[0][1] == tid for top, tid in zip(tops, out["output_ids"]))  # greedy = top-1


def test_input_ids_instead_of_text(engine64):
    ids = engine64.tokenizer.encode("The answer is")
    assert engine64.generate(input_ids=ids, sampling_params=GREEDY)["output_ids"] == _alone(engine64, "The answer is")


@pytest.mark.parametrize("params, key", [
    ({"max_new_token": 3}, "max_new_token"),
    ({"temperature": -1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_k": 0}, "top_k"),
    ({"n": 0}, "n"),
    ({"stop": 5}, "stop"),
    ({"logit_bias": {"x": 1}}, "logit_bias"),
    ({"max_new_tokens": "ten"}, "max_new_tokens"),
    ({"logit_bias": {10**6: 5}}, "logit_bias"),  # past the vocabulary
    ({"seed": 2**70}, "seed"),
])
def test_bad_params_raise_value_error_naming_key(engine64, params, key):
    with pytest.raises(ValueError, match=key) as e:
        engine64.generate("Hello", params)
    assert getattr(e.value, "field", key) == key  # the servers' error `param`


def test_prompt_too_long_is_clear_error(engine64):
    with pytest.raises(ValueError, match="longer than the model.s context length|never fit"):
        engine64.generate(input_ids=[5] * 5000, sampling_params=GREEDY)


def test_max_new_tokens_none_runs_to_what_the_context_and_cache_leave(engine64):
    """SGLang's meaning of an explicit None (the OpenAI chat route's omitted max_tokens): no 128 cap."""
    pool = engine64.parts.pool
    room = min(engine64.context_length, pool.num_pages * pool.page_size)
    out = engine64.generate(input_ids=[5] * (room - 20), sampling_params={"max_new_tokens": None, "ignore_eos": True})
    assert out["meta_info"]["completion_tokens"] == 20 and out["meta_info"]["finish_reason"]["type"] == "length"


def test_a_rid_in_flight_cannot_be_taken_twice(engine64):
    """As SGLang: a second request with the id of one still running is refused (an abort by rid would hit
    both); once the first is done the id is free again."""
    first = engine64.generate("Hello", {"max_new_tokens": 200, "ignore_eos": True}, rid="same", stream=True)
    next(first)
    with pytest.raises(ValueError, match="rid") as e:
        engine64.generate("Hello", {"max_new_tokens": 2}, rid="same")
    assert e.value.field == "rid"
    assert engine64.abort("same") is True and engine64.abort("no-such-request") is False
    list(first)
    assert engine64.generate("Hello", {"max_new_tokens": 2}, rid="same")["meta_info"]["completion_tokens"] == 2


def test_an_output_that_cannot_be_built_still_answers_its_caller(engine64, monkeypatch):
    """A failure while building the final output (it once came from the answer check) is delivered as the
    request's error; the caller no longer waits forever, and the engine goes on."""
    import thinkform.engine.requests as requests_module

    build = requests_module.output_event

    def broken(seq, finished, markers):
        if finished:
            raise RuntimeError("injected output failure")
        return build(seq, finished, markers)

    monkeypatch.setattr(requests_module, "output_event", broken)
    out = engine64.generate("Hello", {"max_new_tokens": 3, "ignore_eos": True})
    reason = out["meta_info"]["finish_reason"]
    assert reason["type"] == "abort" and reason["status_code"] == 500 and "injected" in reason["message"]
    monkeypatch.undo()
    assert engine64.generate("Hello", {"max_new_tokens": 2})["meta_info"]["completion_tokens"] == 2


def test_abort_frees_cache(engine64):
    pool = engine64.parts.pool
    stream = engine64.generate(PROMPTS[0], {**GREEDY, "max_new_tokens": 2000}, stream=True, rid="abort-me")
    first = next(stream)
    assert first["meta_info"]["finish_reason"] is None
    engine64.abort("abort-me")
    chunks = list(stream)
    assert chunks[-1]["meta_info"]["finish_reason"]["type"] == "abort"
    deadline = time.time() + 5
    while pool.num_used and time.time() < deadline:
        time.sleep(0.01)
    assert all(c == 0 for c in pool.refcount)


def _wait(predicate, timeout: float = 30.0) -> bool:
    deadline = time.time() + timeout
    while not predicate() and time.time() < deadline:
        time.sleep(0.02)
    return predicate()


def test_a_stream_dropped_unread_ends_its_request(engine64):
    """A generator never started runs no `finally`: an unread stream ran on to max_new_tokens."""
    import gc

    aborted = engine64.loop.counters["aborted"]
    stream = engine64.generate(PROMPTS[0], {**GREEDY, "max_new_tokens": 3000}, stream=True)
    del stream
    gc.collect()
    assert _wait(lambda: engine64.loop.counters["aborted"] == aborted + 1)
    assert _wait(lambda: engine64.parts.pool.num_used == 0)


def test_a_stream_read_late_keeps_a_bounded_backlog(engine64):
    """Each chunk holds the text so far: a stream read only after it finished queued every snapshot (1 GB
    for 16,000 tokens). It keeps the newest chunks and ends as the whole answer."""
    from thinkform.engine.engine import _Mailbox

    params = {**GREEDY, "max_new_tokens": 3 * _Mailbox.BACKLOG}
    finished = engine64.loop.counters["finished"]
    stream = engine64.generate(PROMPTS[1], params, stream=True)
    assert _wait(lambda: engine64.loop.counters["finished"] == finished + 1)
    chunks = list(stream)
    assert len(chunks) <= _Mailbox.BACKLOG + 1
    assert chunks[-1]["text"] == engine64.generate(PROMPTS[1], params)["text"]


def test_an_interrupt_of_the_waiting_thread_ends_the_request(engine64):
    """`_thread.interrupt_main` (an IDE's stop button) only sets a flag: a wait without a timeout never saw
    it, and the request ran to its end before the KeyboardInterrupt came."""
    import _thread

    aborted = engine64.loop.counters["aborted"]
    timer = threading.Timer(0.5, _thread.interrupt_main)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        engine64.generate(PROMPTS[2], {**GREEDY, "max_new_tokens": 3000})
    timer.join()
    assert _wait(lambda: engine64.loop.counters["aborted"] == aborted + 1)


def _engine_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "thinkform-engine"}


def test_an_interrupted_start_leaves_no_engine_running(tiny_model_dirs, monkeypatch):
    """Ctrl-C while the model loads (minutes for a large one, in a notebook): the half-built engine ran its
    loop on, holding the model, with no handle to shut it down."""
    import _thread

    from thinkform import Engine
    from thinkform.engine import engine as engine_module

    build = engine_module.build_engine_parts

    def slow_build(*args, **kwargs):  # a load that outlasts the interrupt
        time.sleep(1.5)
        return build(*args, **kwargs)

    monkeypatch.setattr(engine_module, "build_engine_parts", slow_build)
    others = _engine_threads()  # other tests' engines
    timer = threading.Timer(0.5, _thread.interrupt_main)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        Engine(model_path=str(tiny_model_dirs["llama"]), max_total_tokens=2048)
    timer.join()
    assert _wait(lambda: not _engine_threads() - others, timeout=30)


def test_an_interrupt_after_the_loop_started_stops_it_too(tiny_model_dirs, monkeypatch):
    """Ctrl-C in the rest of the constructor (the heap freeze's collection): the loop ran on, unreferenced."""
    from thinkform import Engine
    from thinkform.engine import engine as engine_module

    def interrupted(engine):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine_module, "freeze_startup_heap", interrupted)
    others = _engine_threads()
    with pytest.raises(KeyboardInterrupt):
        Engine(model_path=str(tiny_model_dirs["llama"]), max_total_tokens=2048)
    assert _wait(lambda: not _engine_threads() - others, timeout=30)


def test_a_forked_copy_or_a_pickle_of_an_engine_says_what_to_do(engine64):
    """A worker pool forked after the engine exists got 'shut down'; pickling one an AttributeError."""
    import multiprocessing
    import pickle

    from thinkform.engine.errors import EngineDead

    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(engine64)
    context = multiprocessing.get_context("fork")
    parent, child = context.Pipe()

    def in_child() -> None:  # forked: the engine is the parent's copy, not pickled
        try:
            engine64.generate("x", {"max_new_tokens": 2})
            child.send("no error")
        except Exception as e:  # noqa: BLE001 - reported to the parent
            child.send(f"{type(e).__name__}: {e}")

    process = context.Process(target=in_child)
    process.start()
    assert parent.poll(60)
    message = parent.recv()
    process.join(30)
    assert "a fork of it" in message and EngineDead.__name__ in message


def test_after_shutdown_every_call_says_the_engine_is_not_running(tiny_model_dirs):
    from thinkform import Engine
    from thinkform.engine.errors import EngineDead

    eng = Engine(model_path=str(tiny_model_dirs["qwen2"]), max_total_tokens=2048)
    eng.shutdown()
    with pytest.raises(EngineDead, match="not running"):  # before the grammar compiles (its cache is closed)
        eng.generate("x", {"max_new_tokens": 4, "regex": "[ab]+"})
    with pytest.raises(EngineDead, match="not running"):
        asyncio.run(eng.async_generate("x", {"max_new_tokens": 4, "json_schema": '{"type": "object"}'}))
    started = time.monotonic()
    assert eng.flush_cache() is False and time.monotonic() - started < 5  # it waited 10 s for a stopped loop


def test_stream_text_is_cumulative(engine64):
    chunks = list(engine64.generate("Hello", {**GREEDY, "max_new_tokens": 8}, stream=True))
    texts = [c["text"] for c in chunks]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))
    assert texts[-1] == engine64.generate("Hello", {**GREEDY, "max_new_tokens": 8})["text"]


def test_stream_never_sends_text_that_a_stop_string_cuts(engine64):
    """A stop string that straddles a token boundary: the stream holds back its possible start, so the
    cumulative text only grows and ends as the non-streamed text; each event's logprobs are those of the
    tokens whose text it shows, all of them at the end."""
    params = {**GREEDY, "max_new_tokens": 16}
    texts = [c["text"] for c in engine64.generate(PROMPTS[1], params, stream=True)]
    whole = texts[-1]
    tried = 0
    for prev, cur in zip(texts, texts[1:]):
        b = len(prev)
        stop = whole[b - 1:b + 2]
        if b == 0 or len(cur) - b >= 2 or len(stop) < 3 or whole.find(stop) != b - 1:
            continue  # wanted: the stop begins in one event's text and ends in a later one
        tried += 1
        stopped = {**params, "stop": [stop]}
        chunks = list(engine64.generate(PROMPTS[1], stopped, stream=True, return_logprob=True, top_logprobs_num=2))
        final = engine64.generate(PROMPTS[1], stopped, return_logprob=True, top_logprobs_num=2)
        assert final["text"] == whole[:b - 1] and final["meta_info"]["finish_reason"]["matched"] == stop
        got = [c["text"] for c in chunks]
        assert all(later.startswith(earlier) for earlier, later in zip(got, got[1:])), (stop, got)
        assert got[-1] == final["text"]
        lps = [c["meta_info"]["output_token_logprobs"] for c in chunks]
        assert all(later[:len(earlier)] == earlier for earlier, later in zip(lps, lps[1:]))
        assert lps[-1] == final["meta_info"]["output_token_logprobs"]
        assert chunks[-1]["meta_info"]["output_top_logprobs"] == final["meta_info"]["output_top_logprobs"]
        for c, lp in zip(chunks[:-1], lps):  # a streamed event's tokens decode to at most the text it shows
            assert len(engine64.tokenizer.decode([t for _, t, _ in lp])) <= len(c["text"])
    assert tried, texts


def test_async_generate_and_running_loop(engine64):
    expected = _alone(engine64, "Hello")

    async def main():
        out = await engine64.async_generate("Hello", GREEDY)
        gen = await engine64.async_generate("Hello", GREEDY, stream=True)
        chunks = [c async for c in gen]
        sync_inside_loop = engine64.generate("Hello", GREEDY)  # as in a Jupyter cell
        return out, chunks, sync_inside_loop

    out, chunks, inside = asyncio.run(main())
    assert out["output_ids"] == chunks[-1]["output_ids"] == inside["output_ids"] == expected


def test_outputs_are_built_on_the_reading_thread(engine64, monkeypatch):
    """The loop takes each output's snapshot; copying the output ids and splitting the reasoning, which grow
    with the output, happen on the thread that reads it (on the loop, per streamed token, a long stream cost
    the square of its length). A chunk still shows the ids of its own text, not the sequence's later ones."""
    from thinkform.engine.output import OutputEvent

    threads = []
    build = OutputEvent.build

    def recorded(self):
        threads.append(threading.current_thread().name)
        return build(self)

    monkeypatch.setattr(OutputEvent, "build", recorded)
    chunks = list(engine64.generate("Hello", {**GREEDY, "max_new_tokens": 6}, stream=True))
    whole = engine64.generate("Hello", {**GREEDY, "max_new_tokens": 6})
    assert threads and "thinkform-engine" not in threads
    assert [len(c["output_ids"]) for c in chunks] == list(range(1, 7))
    assert all(c["output_ids"] == whole["output_ids"][:len(c["output_ids"])] for c in chunks)


def test_stream_interval_sends_every_nth_token(engine64):
    """SGLang's stream_interval: the first token's text at once, then every n tokens, and the end; the
    chunks stay cumulative and end as the whole output."""
    params = {**GREEDY, "max_new_tokens": 12}
    whole = engine64.generate("Hello", params)
    for interval, counts in ((1, list(range(1, 13))), (4, [1, 5, 9, 12]), (20, [1, 12])):
        chunks = list(engine64.generate("Hello", {**params, "stream_interval": interval}, stream=True))
        assert [len(c["output_ids"]) for c in chunks] == counts
        assert chunks[-1]["text"] == whole["text"] and chunks[-1]["output_ids"] == whole["output_ids"]
    with pytest.raises(ValueError, match="stream_interval"):
        engine64.generate("Hello", {**params, "stream_interval": 0}, stream=True)


def test_the_engines_stream_interval_is_the_default(tiny_model_dirs):
    from thinkform import Engine

    with pytest.raises(ValueError, match="stream_interval"):
        Engine(model_path=str(tiny_model_dirs["qwen2"]), stream_interval=0)
    with Engine(model_path=str(tiny_model_dirs["qwen2"]), max_total_tokens=2048, stream_interval=3) as eng:
        chunks = list(eng.generate("Hello", {**GREEDY, "max_new_tokens": 8}, stream=True))
        assert [len(c["output_ids"]) for c in chunks] == [1, 4, 7, 8]
        chunks = list(eng.generate("Hello", {**GREEDY, "max_new_tokens": 8, "stream_interval": 1}, stream=True))
        assert len(chunks) == 8


def test_concurrent_streams_get_each_step_in_one_hand_over(engine64):
    """Several streamed requests of one event loop: every step's outputs reach it in one call (a wake-up per
    token and request cost the engine loop a GIL hand-off each), each stream's chunks are cumulative, one per
    token, and end as the request alone would."""
    expected = [_alone(engine64, p) for p in PROMPTS]
    calls = []

    async def main():
        aloop = asyncio.get_running_loop()
        call_soon = aloop.call_soon_threadsafe

        def counted(callback, *args):
            if getattr(callback, "__name__", "") == "_put_all":  # the engine's hand-overs (not a worker's result)
                calls.append(len(args[0]))
            return call_soon(callback, *args)

        aloop.call_soon_threadsafe = counted
        steps = engine64.loop.counters["steps"]

        async def one(prompt):
            return [c async for c in await engine64.async_generate(prompt, GREEDY, stream=True)]

        chunks = await asyncio.gather(*(one(p) for p in PROMPTS))
        return chunks, engine64.loop.counters["steps"] - steps

    streams, steps = asyncio.run(main())
    for chunks, ids in zip(streams, expected):
        assert len(chunks) == len(ids) and chunks[-1]["output_ids"] == ids
        assert all(len(b["output_ids"]) == len(a["output_ids"]) + 1 for a, b in zip(chunks, chunks[1:]))
    assert sum(calls) == sum(len(ids) for ids in expected)  # every output, once
    assert len(calls) <= steps + 1 and max(calls) > 1  # one call a step, holding the step's outputs


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_other_architectures_batch_equals_alone(tiny_model_dirs, arch):
    from thinkform import Engine

    with Engine(model_path=str(tiny_model_dirs[arch]), dtype="float64", max_total_tokens=2048) as eng:
        alone = [eng.generate(p, GREEDY)["output_ids"] for p in PROMPTS[:3]]
        assert [o["output_ids"] for o in eng.generate(PROMPTS[:3], GREEDY)] == alone


def test_n_samples_prefill_the_prompt_once(engine64):
    prompt = "A prompt no other test sends: " + " ".join(PROMPTS * 2)
    steps = engine64.loop.counters["forward_tokens"]
    outs = engine64.generate(prompt, {**GREEDY, "n": 4, "max_new_tokens": 4})
    prompt_len = outs[0]["meta_info"]["prompt_tokens"]
    assert [o["meta_info"]["cached_tokens"] > 0 for o in outs] == [False, True, True, True]
    computed = engine64.loop.counters["forward_tokens"] - steps
    assert computed < 2 * prompt_len + 4 * 4  # not 4 prompt prefills
    assert len({tuple(o["output_ids"]) for o in outs}) == 1  # greedy samples agree, cache or not


def test_a_failed_mask_kernel_warm_up_only_warns(caplog, monkeypatch):
    """The CUDA warm-up of the grammar's mask kernel never stops an engine from starting (here it fails:
    no CUDA device, or a kernel that raises); constrained requests would then compile it on first use."""
    import logging

    import torch

    from thinkform.engine import sampler
    from thinkform.engine.sampler import warm_up_mask_kernel

    def broken(*args):
        raise RuntimeError("no kernel")

    monkeypatch.setattr(sampler, "apply_bitmask", broken)
    with caplog.at_level(logging.WARNING, logger="thinkform"):
        warm_up_mask_kernel(torch.device("cuda"), 1000)
        warm_up_mask_kernel(torch.device("cpu"), 1000)  # a CPU engine has nothing to warm up
    assert [r.message for r in caplog.records if "warm-up failed" in r.message] and len(caplog.records) == 1


@pytest.mark.parametrize("how", ["rid", "abort_all"])
def test_an_abort_while_the_grammar_compiles_ends_the_request(engine64, monkeypatch, how):
    """Audit 15: aborts only reached requests the loop already had, so one sent while the request's grammar
    compiled (a big schema: a second or more) was lost and the request ran to its max_new_tokens."""
    import concurrent.futures
    import threading
    import time

    cache = engine64.parts.grammar_cache
    compile_now = cache.submit

    def slow_submit(constraint):
        slow: concurrent.futures.Future = concurrent.futures.Future()
        done = compile_now(constraint)
        threading.Timer(0.5, lambda: slow.set_result(done.result())).start()
        return slow

    monkeypatch.setattr(cache, "submit", slow_submit)
    results: list = []
    params = {"max_new_tokens": 300, "ignore_eos": True, "regex": "[a-z ]+"}
    worker = threading.Thread(target=lambda: results.append(engine64.generate("Hello", params, rid=f"slow-{how}")))
    worker.start()
    time.sleep(0.15)
    assert engine64.abort_request(f"slow-{how}", abort_all=how == "abort_all") is True
    worker.join(30)
    out = results[0]
    assert out["meta_info"]["finish_reason"]["type"] == "abort" and out["meta_info"]["completion_tokens"] < 300
    assert f"slow-{how}" not in engine64._live_rids  # and the id is free again
    again = engine64.generate("Hello", {"max_new_tokens": 2, "ignore_eos": True}, rid=f"slow-{how}")["meta_info"]
    assert again["completion_tokens"] == 2 and again["finish_reason"]["type"] == "length"


def test_random_seed_seeds_the_requests_without_one(engine64):
    """Audit 15: `--random-seed` was documented and read by nothing. Two servers started with the same one
    draw the same seeds for their unseeded requests, in order; without one each draws fresh seeds."""
    import dataclasses

    from thinkform.engine.requests import LogprobOptions, RequestBuilder

    def seeds(random_seed):
        builder = RequestBuilder(engine64.parts, dataclasses.replace(engine64.args, random_seed=random_seed))
        req = builder.build("Hello", {"temperature": 1.0, "n": 3}, None, False, None, None, LogprobOptions(), False)
        return [s.generator.initial_seed() for s in builder.sequences(req, lambda *a: None)]

    assert seeds(7) == seeds(7) and seeds(7) != seeds(8) and len(set(seeds(7))) == 3
    assert seeds(None) != seeds(None)


def test_a_stop_regex_that_backtracks_without_end_ends_its_request_not_the_engine(engine64):
    """Audit 15: stop regexes are searched on the engine loop after every token; `(a|aa)+b` over a run of
    a's backtracks exponentially, and one such request stalled every other. Its search now has a time limit:
    the request ends ("abort", naming stop_regex) and the others go on."""
    import time

    a = engine64.tokenizer.encode("a", add_special_tokens=False)
    assert len(a) == 1
    started = time.perf_counter()
    out = engine64.generate("Hello", {"max_new_tokens": 120, "allowed_token_ids": a, "stop_regex": ["(a|aa)+b"],
                                      "temperature": 0})
    reason = out["meta_info"]["finish_reason"]
    assert reason["type"] == "abort" and "stop_regex" in reason["message"], reason
    assert time.perf_counter() - started < 30
    assert engine64.generate("Hello", {"max_new_tokens": 3, "stop_regex": ["x+y"]})["meta_info"]["completion_tokens"] <= 3
    # audit 17: where the request may not stop yet (min_new_tokens) only a stream's hold-back searched, and
    # paid the limit at every token without ending anything
    params = {"max_new_tokens": 120, "min_new_tokens": 120, "allowed_token_ids": a, "stop_regex": ["(a|aa)+b"],
              "temperature": 0}
    chunks = list(engine64.generate("Hello", params, stream=True))
    reason = chunks[-1]["meta_info"]["finish_reason"]
    assert reason["type"] == "abort" and "stop_regex" in reason["message"], reason
    assert chunks[-1]["meta_info"]["completion_tokens"] < 100


def test_a_bad_item_of_a_batch_is_named_by_its_index(engine64):
    """Audit 15: one bad prompt or sampling param fails the whole batch (as in SGLang), and the error did not
    say which: a large batch had to be bisected."""
    with pytest.raises(ValueError, match=r"prompt 1 of the batch") as e:
        engine64.generate(["Hello", ""], {"max_new_tokens": 2})
    with pytest.raises(ValueError, match=r"sampling_params\.temperature.*prompt 2 of the batch") as e:
        engine64.generate(["a", "b", "c"], [{}, {}, {"temperature": "hot"}])
    assert e.value.field == "temperature"
    with pytest.raises(ValueError, match=r"(?s)regex.*prompt 1 of the batch"):
        engine64.generate(["a", "b"], [{"regex": "a"}, {"regex": "("}])
    with pytest.raises(ValueError, match=r"prompt 1 of the batch"):
        engine64.generate(input_ids=[[5, 6], [5, 10**9]])
    with pytest.raises(ValueError) as e:  # a single prompt's error stays as it was
        engine64.generate("a", {"temperature": "hot"})
    assert "batch" not in str(e.value)


def test_a_default_max_new_tokens_is_cut_to_what_the_context_leaves(engine64):
    """Audit 17: a long prompt without max_new_tokens was refused (the default 128 did not fit); SGLang cuts a
    default to what the context leaves and refuses only a number the request gave."""
    room = 10
    ids = [5] * (engine64.context_length - room)
    out = engine64.generate(input_ids=ids, sampling_params={"ignore_eos": True})
    assert out["meta_info"]["completion_tokens"] == room and out["meta_info"]["finish_reason"]["type"] == "length"
    with pytest.raises(ValueError, match="exceeds the model's maximum context length") as e:
        engine64.generate(input_ids=ids, sampling_params={"max_new_tokens": room + 1})
    assert e.value.field == "max_new_tokens"


def test_an_abort_while_the_request_is_prepared_is_kept(engine64):
    """Review: requests are prepared on a worker thread; an abort_request(rid) in that window found no request
    in flight and was lost (the request ran to max_new_tokens). It is kept for the id's claim."""
    async def main():
        results = []
        for i in range(3):
            task = asyncio.ensure_future(engine64.async_generate("Hello " * 50, {"max_new_tokens": 200,
                                                                                 "ignore_eos": True}, rid=f"early-{i}"))
            await asyncio.sleep(0)  # the task has begun preparing its request
            engine64.abort_request(f"early-{i}")
            out = await task
            results.append(out["meta_info"]["finish_reason"]["type"])
        return results

    assert asyncio.run(main()) == ["abort"] * 3


def test_abort_all_reaches_a_request_being_prepared_and_a_finished_id_stays_free(engine64, monkeypatch):
    """Review: abort_all aborted only the ids in flight, missing a request still being prepared on its worker
    thread; and an abort of a finished id must not poison that id for a later request (SGLang: a no-op)."""
    engine64.generate("Hello", {"max_new_tokens": 2}, rid="reuse-1")
    assert engine64.abort_request("reuse-1") is False
    again = engine64.generate("Hello", {"max_new_tokens": 3, "ignore_eos": True}, rid="reuse-1")
    assert again["meta_info"]["finish_reason"]["type"] == "length"

    prepare = engine64._prepare

    def slow_prepare(*args, **kwargs):
        time.sleep(0.3)
        return prepare(*args, **kwargs)

    monkeypatch.setattr(engine64, "_prepare", slow_prepare)

    async def main():
        task = asyncio.ensure_future(engine64.async_generate("Hello", {"max_new_tokens": 64, "ignore_eos": True}))
        await asyncio.sleep(0.05)
        engine64.abort_request(abort_all=True)
        return (await task)["meta_info"]["finish_reason"]["type"]

    assert asyncio.run(main()) == "abort"
