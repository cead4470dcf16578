"""Reliability and security: limits (each a 4xx naming it), faults (disconnects free the KV cache, a
failing request leaves the batch running, a crashed loop fails fast, SIGTERM drains), the API key,
the Jinja sandbox, no file access from requests, and /metrics.

Real engine on a tiny random qwen2 model with the deepseek-r1 reasoning parser; the routing-only
checks use the scripted engine of tests/fake_engine.py.
"""
from __future__ import annotations

import concurrent.futures
import json
import logging
import re
import signal
import socket
import threading
import time

import httpx
import pytest

from fake_engine import FakeEngine
from thinkform.args import EngineArgs
from server_fixtures import error_response as _error, running_server, sse_events

QUESTION = [{"role": "user", "content": "Give me the capital of France in the JSON format."}]
LIMITS = dict(max_request_body_bytes=64 * 1024, max_constraint_bytes=4096, max_constraint_depth=16,
              max_new_tokens_limit=3000)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from thinkform.testing.models import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny"), "qwen2")


@pytest.fixture(scope="module")
def real(model_dir):
    from thinkform import Engine

    engine = Engine(model_path=str(model_dir), reasoning_parser="deepseek-r1", max_reasoning_tokens=12,
                    max_total_tokens=16384, **LIMITS)
    try:
        with running_server(engine) as base:
            yield engine, base
    finally:
        engine.shutdown()




def _wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def pool_empty(engine) -> bool:
    """No request holds a KV page (cached prefix pages have refcount 0 and count as free)."""
    pool, stats = engine.parts.pool, engine.loop.stats()
    return pool.num_used == 0 and not any(pool.refcount) and stats["running"] == 0 and stats["waiting"] == 0


def _chat(base: str, timeout: float = 60, **fields) -> httpx.Response:
    return httpx.post(f"{base}/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 16, **fields},
                      timeout=timeout)


# ---------------------------------------------------------------- limits

def test_defaults_are_sane_and_the_bind_is_loopback():
    from thinkform.args import EngineArgs
    from thinkform.launch_server import make_parser

    args = EngineArgs.from_cli_args(make_parser().parse_args([]))
    assert args.host == "127.0.0.1"
    assert args.max_request_body_bytes == 8 * 2**20
    assert 1024 <= args.max_new_tokens_limit and 1 <= args.max_n <= 128 and 1 <= args.max_queued_requests
    assert 2**16 <= args.max_constraint_bytes <= args.max_request_body_bytes and 16 <= args.max_constraint_depth
    assert 0 < args.grammar_compile_timeout <= 120 and 0 < args.graceful_shutdown_timeout


def test_request_body_over_the_limit_is_413(real):
    _, base = real
    big = {"messages": [{"role": "user", "content": "x" * (70 * 1024)}]}
    _error(httpx.post(f"{base}/v1/chat/completions", json=big), 413, "body", "max-request-body-bytes")

    def chunks():  # no Content-Length: the running count must catch it
        for _ in range(20):
            yield b"x" * 4096

    _error(httpx.post(f"{base}/generate", content=chunks(), headers={"content-type": "application/json"}), 413)
    assert _chat(base).status_code == 200  # a body under the limit still goes through


def test_prompt_longer_than_the_context_is_400(real):
    _, base = real
    _error(_chat(base, messages=[{"role": "user", "content": "word " * 5000}]), 400, match="context length")
    _error(httpx.post(f"{base}/generate", json={"input_ids": [5] * 5000}), 400, match="context length")


def test_a_prompt_and_max_tokens_beyond_the_context_are_a_400_naming_each_route_s_field(real):
    """Audit 16: a max_tokens the context cannot hold was cut silently (200, fewer tokens); SGLang and vLLM
    answer 400, with a message clients read to shrink the request. Each route names its own field."""
    engine, base = real
    ctx = engine.context_length
    long = ctx - 2000  # with max_tokens at the server's limit (3000): past the context
    sglang = "exceeds the model's maximum context length"
    per_word = len(engine.tokenizer.encode("word " * 100)) / 100
    words = [{"role": "user", "content": "word " * int(long / per_word)}]
    _error(_chat(base, messages=words, max_tokens=3000), 400, "max_tokens", sglang)
    _error(_chat(base, messages=words, max_tokens=None, max_completion_tokens=3000), 400, "max_completion_tokens",
           sglang)
    _error(httpx.post(f"{base}/v1/completions", json={"prompt": [5] * long, "max_tokens": 3000}), 400, "max_tokens",
           sglang)
    _error(httpx.post(f"{base}/generate", json={"input_ids": [5] * long, "sampling_params": {"max_new_tokens": 3000}}),
           400, "sampling_params.max_new_tokens", sglang)
    _error(_chat(base, messages=[{"role": "user", "content": "word " * ctx}]), 400, "messages", "context length")
    _error(httpx.post(f"{base}/generate", json={"input_ids": [5] * ctx}), 400, "input_ids", "context length")
    with pytest.raises(ValueError, match=sglang) as e:
        engine.generate(input_ids=[5] * long, sampling_params={"max_new_tokens": 3000})
    assert e.value.field == "max_new_tokens"
    # what fits exactly still runs; an omitted max_tokens is what the context leaves
    ids = engine.tokenizer.encode("x")
    out = engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 4, "ignore_eos": True})
    assert out["meta_info"]["completion_tokens"] == 4
    assert _chat(base, max_tokens=None, stop=["e"]).status_code == 200


def test_max_tokens_over_the_limit_is_400_everywhere(real):
    engine, base = real
    _error(_chat(base, max_tokens=3001), 400, "max_tokens", "max-new-tokens-limit")
    _error(_chat(base, max_tokens=None, max_completion_tokens=10**9), 400, "max_completion_tokens")
    _error(httpx.post(f"{base}/v1/completions", json={"prompt": "x", "max_tokens": 5000}), 400, "max_tokens")
    _error(httpx.post(f"{base}/generate", json={"text": "x", "sampling_params": {"max_new_tokens": 5000}}),
           400, "sampling_params.max_new_tokens", "3000")
    with pytest.raises(ValueError, match="max-new-tokens-limit"):
        engine.generate("x", {"max_new_tokens": 5000})
    assert _chat(base, max_tokens=3000, stop=["e"]).status_code == 200  # at the limit is fine


def test_n_over_the_limit_is_400(real):
    _, base = real
    _error(_chat(base, n=17), 400, "n", "limit")


@pytest.mark.parametrize("fields, param, match", [
    ({"top_k": 0}, "top_k", "-1"), ({"seed": 2**70}, "seed", "64 bits"),
    ({"logit_bias": {"99999999": 5}}, "logit_bias", "vocabulary"),
    ({"custom_params": {"thinking_budget": "lots"}}, "custom_params.thinking_budget", "integer"),
])
def test_bad_sampling_values_the_engine_checks_are_400_naming_the_field(real, fields, param, match):
    _, base = real
    _error(_chat(base, **fields), 400, param, match)


def _deep_schema(levels: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def test_constraint_size_and_depth_limits(real):
    engine, base = real
    huge = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(400)}}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": huge}}
    _error(_chat(base, response_format=fmt), 400, "response_format.json_schema.schema", "max-constraint-bytes")
    _error(_chat(base, regex="a" * 5000), 400, "regex", "max-constraint-bytes")
    deep = {"type": "json_schema", "json_schema": {"name": "x", "schema": _deep_schema(12)}}
    _error(_chat(base, response_format=deep), 400, "response_format.json_schema.schema", "max-constraint-depth")
    # deeper than any parser's stack, as text: refused by counting, never parsed
    text = '{"a":' * 3000 + "1" + "}" * 3000
    _error(httpx.post(f"{base}/generate", json={"text": "x", "sampling_params": {"json_schema": text}}),
           400, "sampling_params.json_schema", "max-constraint-depth")
    _error(_chat(base, regex="(" * 3000 + "a" + ")" * 3000), 400, "regex", "max-constraint-depth")
    _error(_chat(base, ebnf="root ::= " + "(" * 200 + '"a"' + ")" * 200), 400, "ebnf", "max-constraint-depth")
    _error(_chat(base, regex="a{99999999999}"), 400, "regex", "max-constraint-repeat")
    laughs = "root ::= r0\n" + "\n".join(f"r{i} ::= r{i + 1} r{i + 1}" for i in range(40)) + '\nr40 ::= "ab"'
    _error(_chat(base, ebnf=laughs), 400, "ebnf", "max-constraint-repeat")
    _error(_chat(base, json_schema={"type": "array", "minItems": 10**9, "items": {"const": 1}}), 400, "json_schema",
           "max-constraint-repeat")
    with pytest.raises(ValueError, match="max-constraint-depth"):
        engine.generate("x", {"max_new_tokens": 4, "json_schema": json.dumps(_deep_schema(12))})
    ok = {"type": "json_schema", "json_schema": {"name": "x", "schema": _deep_schema(3)}}
    assert _chat(base, response_format=ok, max_tokens=64).status_code == 200


def test_a_choice_among_many_forces_only_its_longest_option():
    """Audit 12: alternatives were added up, so a regex (or guided_choice) of 20,000 six-letter names was
    refused as "repetition counts can force about 108890 characters"; one option is taken."""
    from thinkform.engine.limits import pattern_repeat

    names = "|".join(f"n{i:05d}" for i in range(20000))
    assert pattern_repeat(names) == 6 and pattern_repeat(f"({names})") == 6
    assert pattern_repeat("(ab|c){10}") == 20 and pattern_repeat("x(a|b{50})y") == 52
    assert pattern_repeat("a{1000}|b") == 1000


def test_grammar_compile_timeout_is_a_400(real, monkeypatch):
    engine, base = real
    cache = engine.parts.grammar_cache
    original = cache.backend.compile

    def slow_compile(constraint):
        if "slowpoke" in constraint.source:
            time.sleep(1.0)
        return original(constraint)

    monkeypatch.setattr(cache.backend, "compile", slow_compile)
    monkeypatch.setattr(cache, "timeout_s", 0.2)
    failures = cache.stats().timeouts
    _error(_chat(base, regex="slowpoke[0-9]"), 400, "regex", "timed out")
    _error(_chat(base, regex="slowpoke[a-z]", stream=True), 400, "regex", "timed out")
    assert cache.stats().timeouts == failures + 2
    assert _wait_for(lambda: cache.stats().abandoned == 0, 5)  # the slow compiles ended on their own
    assert _chat(base, regex="(yes|no)").json()["choices"][0]["message"]["content"] in ("yes", "no")


def test_a_full_queue_answers_503_with_retry_after(real, monkeypatch):
    engine, base = real
    monkeypatch.setattr(engine.args, "max_queued_requests", 3)
    body = {"messages": QUESTION, "max_tokens": 400, "ignore_eos": True}
    with httpx.Client(timeout=120) as http, concurrent.futures.ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda _: http.post(f"{base}/v1/chat/completions", json=body), range(12)))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) == {200, 503} and statuses.count(200) >= 3, statuses
    for r in responses:
        if r.status_code == 503:
            _error(r, 503, None, "max_queued_requests")
            assert int(r.headers["retry-after"]) >= 1
    assert _wait_for(lambda: pool_empty(engine))


# ---------------------------------------------------------------- faults

LONG = {"max_tokens": 2500, "ignore_eos": True}


def test_client_disconnects_abort_and_free_the_kv_cache(real):
    engine, base = real
    aborted = engine.loop.counters["aborted"]
    with httpx.stream("POST", f"{base}/v1/chat/completions",
                      json={"messages": QUESTION, "stream": True, **LONG}, timeout=30) as r:
        assert r.status_code == 200, r.read()
        events = (line for line in r.iter_lines() if line.startswith("data: "))
        first = [next(events) for _ in range(4)]
        used = engine.parts.pool.num_used
        assert used > 0, (first, engine.loop.stats())  # it really was holding pages
    # the clients give up while their requests decode (2 s: enough for the server to have taken them even
    # on a busy machine, far less than 2500 tokens take)
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{base}/generate", json={"text": "x", "sampling_params": {"max_new_tokens": 2500,
                                                                              "ignore_eos": True}}, timeout=2.0)
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{base}/v1/completions", json={"prompt": "x", "n": 3, **LONG}, timeout=2.0)
    assert _wait_for(lambda: pool_empty(engine))
    assert engine.loop.counters["aborted"] >= aborted + 5
    assert _chat(base).status_code == 200


class BrokenGate:
    """A gate that fails at `where` (finish_bitmask or accept)."""

    def __init__(self, gate, where: str) -> None:
        self._gate, self._where = gate, where

    def __getattr__(self, name):
        if name == self._where:
            def fail(*args, **kwargs):
                raise RuntimeError(f"injected {name} failure")
            return fail
        return getattr(self._gate, name)


class BrokenMatcher:
    def fill_bitmask(self, bitmask, row) -> None:
        raise RuntimeError("injected matcher fill failure")


class BrokenMatcherGate(BrokenGate):
    """A gate whose matcher fails inside the step's batched fill."""

    def __init__(self, gate) -> None:
        super().__init__(gate, "")

    def matcher_to_fill(self):
        return BrokenMatcher() if self._gate.matcher_to_fill() is not None else None


class BrokenDetokenizer:
    def __init__(self, detok) -> None:
        self._detok = detok

    @property
    def text(self) -> str:
        return self._detok.text

    def push(self, ids):
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "injected")

    def flush(self):
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "injected")


def _sabotage(engine, monkeypatch, rid: str, index: int, breaker) -> None:
    original = engine.builder.sequences

    def sequences(req, sink):
        seqs = original(req, sink)
        if any(r == rid or r.startswith(f"{rid}_") for r in req.rids):  # a batch's: rid_0, rid_1, ...
            breaker(seqs[index])
        return seqs

    monkeypatch.setattr(engine.builder, "sequences", sequences)


@pytest.mark.parametrize("breaker", [
    lambda seq: setattr(seq, "gate", BrokenMatcherGate(seq.gate)),
    lambda seq: setattr(seq, "gate", BrokenGate(seq.gate, "finish_bitmask")),
    lambda seq: setattr(seq, "gate", BrokenGate(seq.gate, "accept")),
    lambda seq: setattr(seq, "detok", BrokenDetokenizer(seq.detok)),
], ids=["matcher-batched-fill", "gate-mask", "matcher-accept", "detokenizer"])
def test_one_failing_request_finishes_with_an_error_and_the_batch_goes_on(real, monkeypatch, breaker):
    engine, base = real
    _sabotage(engine, monkeypatch, "sabotaged", 1, breaker)
    outs = engine.generate(["alpha", "beta", "gamma"], {"max_new_tokens": 24, "regex": "[a-z]{1,20}"},
                           rid="sabotaged")
    broken = outs[1]["meta_info"]["finish_reason"]
    assert broken["type"] == "abort" and "internal error" in broken["message"] and "injected" in broken["message"]
    assert broken["status_code"] == 500
    for out in (outs[0], outs[2]):
        assert out["meta_info"]["finish_reason"]["type"] in ("stop", "length")
        assert re.fullmatch("[a-z]{1,20}", out["text"])
    assert engine.is_healthy() and _wait_for(lambda: pool_empty(engine))
    assert _chat(base, regex="(yes|no)").json()["choices"][0]["message"]["content"] in ("yes", "no")


def test_a_request_the_engine_fails_is_a_500_on_the_openai_routes(real, monkeypatch):
    """Not a 200 whose answer stops short with finish_reason "abort" and no word of why."""
    engine, base = real
    _sabotage(engine, monkeypatch, "sabotaged-chat", 0, lambda seq: setattr(seq, "gate", BrokenGate(seq.gate, "accept")))
    r = httpx.post(f"{base}/v1/chat/completions", timeout=60,
                   json={"messages": QUESTION, "max_tokens": 16, "regex": "[a-z]{1,20}", "rid": "sabotaged-chat"})
    assert r.status_code == 500 and "injected" in r.json()["error"]["message"], r.text
    assert r.json()["error"]["type"] == "internal_error"
    with httpx.stream("POST", f"{base}/v1/chat/completions", timeout=60, json={
            "messages": QUESTION, "max_tokens": 16, "regex": "[a-z]{1,20}", "rid": "sabotaged-chat", "stream": True}) as r:
        events = sse_events(r)
    assert any("injected" in str(e.get("error", {}).get("message")) for e in events if isinstance(e, dict)), events
    assert not any(c.get("finish_reason") == "abort" for e in events if isinstance(e, dict)
                   for c in e.get("choices", []))
    assert _chat(base, regex="(yes|no)").json()["choices"][0]["message"]["content"] in ("yes", "no")


def test_a_crashed_engine_loop_fails_health_and_requests_instead_of_hanging(model_dir, monkeypatch):
    from thinkform import Engine

    engine = Engine(model_path=str(model_dir), max_total_tokens=8192)
    try:
        with running_server(engine) as base:
            results: dict = {}

            def stream():
                with httpx.stream("POST", f"{base}/v1/chat/completions",
                                  json={"messages": QUESTION, "stream": True, **LONG}, timeout=30) as r:
                    results["events"] = sse_events(r)

            thread = threading.Thread(target=stream)
            thread.start()
            assert _wait_for(lambda: engine.loop.counters["generated_tokens"] > 5)
            assert httpx.get(f"{base}/health_generate", timeout=30).status_code == 200  # served beside the stream

            def explode(batch, allowed=None):
                raise RuntimeError("injected loop fault")

            monkeypatch.setattr(engine.loop.runner, "forward", explode)
            thread.join(20)
            assert not thread.is_alive(), "the in-flight request hung"
            events = results["events"]
            assert events[-1] == "[DONE]"
            assert [e["choices"][0]["finish_reason"] for e in events[:-1] if e["choices"]][-1] == "abort"
            assert httpx.get(f"{base}/health").status_code == 503
            assert httpx.get(f"{base}/health_generate", timeout=30).status_code == 503
            _error(_chat(base, timeout=10), 503, None, "injected loop fault")
            _error(httpx.post(f"{base}/generate", json={"text": "x", "stream": True}, timeout=10), 503)
            assert "thinkform_engine_healthy 0" in httpx.get(f"{base}/metrics").text
    finally:
        engine.shutdown()


def test_sigterm_drains_in_flight_requests_then_exits(model_dir, monkeypatch):
    from thinkform.utils import launch_server_cmd, wait_for_server

    monkeypatch.setenv("SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN", "1")  # the tiny model has 4,096 positions

    process, port = launch_server_cmd(
        f"python -m thinkform.launch_server --model-path {model_dir} --log-level warning --context-length 32768 "
        "--max-total-tokens 36000 --graceful-shutdown-timeout 20")  # room for the short one on a busy machine
    # (10 s was not: a CI run beside two other test runs on 2 cores cut the short one off too)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(base, timeout=120, process=process)
        endless = {"prompt": "x", "max_tokens": 30000, "ignore_eos": True}
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            short = pool.submit(httpx.post, f"{base}/v1/completions",
                                json={"prompt": "x", "max_tokens": 100, "ignore_eos": True}, timeout=90)
            cut = pool.submit(httpx.post, f"{base}/v1/completions", json=endless, timeout=90)
            streamed = pool.submit(_stream_lines, f"{base}/v1/completions", {**endless, "stream": True})
            time.sleep(0.3)
            process.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            process.wait(timeout=60)
            elapsed = time.monotonic() - sent
            done = short.result()
            assert done.status_code == 200 and done.json()["usage"]["completion_tokens"] == 100
            # past the drain's deadline the engine aborts what still runs: each client gets its answer's end
            # (not a cut connection or a bare 500)
            cut = cut.result()
            assert cut.status_code == 200 and cut.json()["choices"][0]["finish_reason"] == "abort"
            lines = streamed.result()
            assert lines[-1] == "data: [DONE]" and '"finish_reason": "abort"' in lines[-2]
        assert process.returncode == 0
        assert elapsed < 20 + 20
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base}/health", timeout=2)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _stream_lines(url: str, body: dict) -> list[str]:
    with httpx.stream("POST", url, json=body, timeout=90) as r:
        return [line for line in r.iter_lines() if line]


def test_a_missing_model_or_a_busy_port_is_one_line_before_anything_loads(tmp_path, capsys):
    from thinkform.launch_server import main

    with pytest.raises(SystemExit) as gone:
        main(["--model-path", str(tmp_path / "nope"), "--port", "0"])
    assert gone.value.code == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"python -m thinkform.launch_server: error: model_path '{tmp_path / 'nope'}' does not exist"]
    with socket.create_server(("127.0.0.1", 0)) as busy:
        with pytest.raises(SystemExit) as gone:
            main(["--model-path", str(tmp_path / "nope"), "--port", str(busy.getsockname()[1])])
    assert gone.value.code == 2 and "--host/--port: cannot listen" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model-path", str(tmp_path / "nope"), "--port", "70000"])
    assert "--port: 70000 is not a port number" in capsys.readouterr().err



# ---------------------------------------------------------------- security

def test_api_key_guards_every_route_but_the_probes_sglang_leaves_open():
    from thinkform.server import create_app

    engine = FakeEngine(api_key="sekret")
    app = create_app(engine)
    paths = sorted(p for p in set(app.openapi()["paths"]) | {app.openapi_url, app.docs_url}
                   if not p.startswith(("/health", "/ready", "/metrics")))
    assert {"/generate", "/v1/chat/completions", "/get_server_info", "/openapi.json"} <= set(paths)
    with running_server(engine) as base:
        assert httpx.get(f"{base}/health").status_code == 200
        for path in paths:
            for method in ("GET", "POST"):
                for headers in ({}, {"Authorization": "Bearer sekre"}, {"Authorization": "Basic sekret"},
                                {"Authorization": "Bearer sekret-and-more"}, {"x-api-key": "sekre"}):
                    _error(httpx.request(method, f"{base}{path}", headers=headers), 401)
        scrape = httpx.get(f"{base}/metrics")  # Prometheus scrapes without the key, as SGLang lets it
        assert scrape.status_code == 200 and re.search(r'route="/generate",status="401"', scrape.text)


def test_browsers_may_call_from_the_allowed_origins_only():
    """Audit 29: no CORS at all, so a web UI on another origin could not call the server (SGLang and vLLM allow
    every origin by default). The preflight carries no API key: it is answered before the key check."""
    origin = {"Origin": "http://localhost:3000"}
    preflight = {**origin, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    engine = FakeEngine(api_key="sekret")
    with running_server(engine) as base:
        r = httpx.options(f"{base}/v1/chat/completions", headers=preflight)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"
        assert "authorization" in r.headers["access-control-allow-headers"]
        r = httpx.get(f"{base}/v1/models", headers={**origin, "Authorization": "Bearer sekret"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"
        assert httpx.get(f"{base}/v1/models", headers=origin).status_code == 401  # the key is still asked
    engine = FakeEngine()
    engine.args.allowed_origins = '["https://ui.example.com"]'
    with running_server(engine) as base:
        assert httpx.options(f"{base}/v1/chat/completions", headers=preflight).status_code == 400
        r = httpx.get(f"{base}/v1/models", headers={"Origin": "https://ui.example.com"})
        assert r.headers["access-control-allow-origin"] == "https://ui.example.com"
    engine.args.allowed_origins = "[]"
    with running_server(engine) as base:
        assert "access-control-allow-origin" not in httpx.get(f"{base}/v1/models", headers=origin).headers
    with pytest.raises(ValueError, match="allowed_origins"):
        EngineArgs(allowed_origins="*")


HOSTILE_TEMPLATES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('touch {marker}').read() }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{{ c('{marker}', 'w') }}{% endfor %}",
    "{{ messages.__class__.__init__.__globals__ }}",
    "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.system('touch {marker}') }}",
    "{{ (messages|first).update({'role': 'x'}) }}",
]


@pytest.mark.parametrize("template", HOSTILE_TEMPLATES)
def test_chat_templates_run_sandboxed(tmp_path, template):
    marker = tmp_path / "pwned"
    engine = FakeEngine()
    engine.chat_template = template.replace("{marker}", str(marker))
    with running_server(engine) as base:
        r = _chat(base)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "messages"
        assert httpx.get(f"{base}/health").status_code == 200
    assert not marker.exists()
    assert engine.calls == []  # nothing reached the engine


def test_no_request_field_reads_or_writes_a_file(real, tmp_path):
    engine, base = real
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET-1234")
    target = tmp_path / "written.txt"
    refused = _chat(base, chat_template=str(secret))  # a per-request template is refused, never read
    assert refused.status_code == 400 and "TOPSECRET" not in refused.text
    odd = {"model": str(secret), "tokenizer_path": str(secret),
           "model_path": str(secret), "template": str(secret), "file": str(secret), "output_file": str(target),
           "log_file": str(target), "save_path": str(target), "user": str(secret),
           "chat_template_kwargs": {"template": str(secret), "path": str(secret)}}
    r = _chat(base, **odd)
    assert r.status_code == 200
    assert "TOPSECRET" not in r.text
    prompt_bodies = [
        ("/generate", {"text": "x", "sampling_params": {"max_new_tokens": 4}, "model_path": str(secret),
                       "tokenizer": str(secret), "output_path": str(target)}),
        ("/v1/completions", {"prompt": str(secret), "max_tokens": 4, "model": f"file://{secret}"}),
    ]
    for path, body in prompt_bodies:
        r = httpx.post(f"{base}{path}", json=body, timeout=30)
        assert r.status_code == 200 and "TOPSECRET" not in r.text
    r = httpx.post(f"{base}/v1/completions", json={"prompt": "x", "suffix": str(secret)}, timeout=30)
    assert r.status_code == 400 and "TOPSECRET" not in r.text  # suffix is refused (no fill-in-the-middle)
    # a schema that points at a file is refused or ignored, never read
    ref = {"type": "object", "properties": {"a": {"$ref": f"file://{secret}"}}}
    r = _chat(base, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": ref}})
    assert r.status_code in (200, 400) and "TOPSECRET" not in r.text
    assert not target.exists()
    assert engine.served_model_name != str(secret)


# ---------------------------------------------------------------- observability

_SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"]*"(,[a-zA-Z_][a-zA-Z0-9_]*="[^"]*")*\})?'
                     r' (-?[0-9.e+-]+|NaN|[+-]Inf)$')


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format, strictly: every line a HELP/TYPE comment or a sample."""
    values: dict[str, float] = {}
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram"), line
            types[name] = kind
            continue
        assert _SAMPLE.match(line), f"not a Prometheus sample: {line!r}"
        key, value = line.rsplit(" ", 1)
        base = key.split("{")[0]
        family = next((base.removesuffix(s) for s in ("_bucket", "_sum", "_count")
                       if types.get(base.removesuffix(s)) == "histogram"), base)
        assert family in types, f"sample without TYPE: {line!r}"
        values[key] = float(value)
    return values


def test_metrics_in_prometheus_format_track_requests(real):
    engine, base = real
    before = parse_metrics(httpx.get(f"{base}/metrics").text)
    assert _chat(base, max_tokens=48, regex="(Paris|Rome)").status_code == 200
    assert _chat(base, max_tokens=48, regex="(Paris|Rome)").status_code == 200  # the grammar cache hits
    _error(_chat(base, regex="(unclosed"), 400, "regex")
    _error(_chat(base, regex="a" * 5000), 400, "regex")
    response = httpx.get(f"{base}/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    after = parse_metrics(response.text)

    def grew(key: str, by: float = 1) -> bool:
        return after[key] - before.get(key, 0) >= by

    assert grew('thinkform_http_responses_total{route="/v1/chat/completions",status="200"}', 2)
    assert grew('thinkform_http_responses_total{route="/v1/chat/completions",status="400"}', 2)
    assert grew("thinkform_invalid_constraints_total", 2)
    assert grew("thinkform_prompt_tokens_total", 2) and grew("thinkform_generation_tokens_total", 2)
    assert grew("thinkform_reasoning_tokens_total")  # deepseek-r1 thinks before its answer
    assert grew("thinkform_sparse_logit_rows_total")  # "(Paris|Rome)" allows a handful of tokens at a time
    assert grew('thinkform_requests_finished_total{reason="stop"}', 2)
    assert grew("thinkform_grammar_cache_hits_total") and grew("thinkform_grammar_compile_failures_total")
    assert after["thinkform_grammar_compile_seconds_total"] > 0
    assert after["thinkform_grammar_cache_bytes"] > 0  # the "(Paris|Rome)" grammar's token masks
    assert after["thinkform_kv_pages_total"] == engine.parts.pool.num_pages
    assert after["thinkform_kv_pages_used"] == 0 and after["thinkform_kv_usage_ratio"] == 0
    assert after["thinkform_num_requests_waiting"] == 0 and after["thinkform_num_requests_running"] == 0
    assert after["thinkform_engine_healthy"] == 1
    # the same under SGLang's names, so its dashboards read them
    model = f'{{model_name="{engine.served_model_name}"}}'
    assert grew(f"sglang:prompt_tokens_total{model}", 2) and grew(f"sglang:num_requests_total{model}", 2)
    assert grew(f"sglang:num_so_requests_total{model}", 2) and after[f"sglang:num_running_reqs{model}"] == 0
    assert after[f"sglang:token_usage{model}"] == 0 and 0 <= after[f"sglang:cache_hit_rate{model}"] <= 1
    for name in ("time_to_first_token_seconds", "e2e_request_latency_seconds", "inter_token_latency_seconds"):
        count = after[f"sglang:{name}_count{model}"]
        assert grew(f"sglang:{name}_count{model}", 2) and after[f"sglang:{name}_sum{model}"] > 0
        assert after[f'sglang:{name}_bucket{{le="+Inf",model_name="{engine.served_model_name}"}}'] == count


def test_queue_and_batch_gauges_move_under_load(real):
    engine, base = real
    seen = {"running": 0.0, "used": 0.0}
    with httpx.Client(timeout=60) as http, concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(http.post, f"{base}/v1/completions",
                               json={"prompt": "x", "max_tokens": 1500, "ignore_eos": True}) for _ in range(6)]
        while not all(f.done() for f in futures):
            values = parse_metrics(http.get(f"{base}/metrics").text)
            seen["running"] = max(seen["running"], values["thinkform_num_requests_running"])
            seen["used"] = max(seen["used"], values["thinkform_kv_pages_used"])
            time.sleep(0.05)
        assert all(f.result().status_code == 200 for f in futures)
    assert seen["running"] >= 2 and seen["used"] > 0


def test_one_info_log_line_per_request(real, caplog):
    engine, base = real
    with caplog.at_level(logging.INFO, logger="thinkform"):
        r = httpx.post(f"{base}/generate", json={"text": "x", "rid": "logged-req", "sampling_params": {
            "max_new_tokens": 7, "ignore_eos": True}})
        assert r.status_code == 200
        assert _wait_for(lambda: any("logged-req" in m for m in caplog.messages), 5)
    lines = [rec for rec in caplog.records if "logged-req" in rec.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert re.search(r"logged-req.*length.*prompt \d+.*completion 7", lines[0].getMessage())
