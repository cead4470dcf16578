"""Fuzzing the HTTP API: schemathesis drives every operation of the app's OpenAPI spec (valid and
invalid bodies), then hand-written hostile bodies (wrong types, huge and deep schemas, bad and
catastrophic regexes, NUL bytes, broken UTF-8, unknown fields, absurd numbers). Never a 5xx, and the
server answers correctly afterwards. A tiny model and a low max_new_tokens limit keep it fast."""
from __future__ import annotations

import json
import re

import httpx
import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation import GenerationMode

from server_fixtures import running_server

QUESTION = [{"role": "user", "content": "Capital of France?"}]
SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8}}, "required": ["name"]}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from thinkform import Engine
    from thinkform.testing.models import make_tiny_model_dir

    path = make_tiny_model_dir(tmp_path_factory.mktemp("tiny"), "qwen2")
    engine = Engine(model_path=str(path), reasoning_parser="deepseek-r1", max_reasoning_tokens=4,
                    max_new_tokens_limit=16, max_total_tokens=16384, max_request_body_bytes=2 * 2**20)
    try:
        with running_server(engine) as base:
            yield engine, base
    finally:
        engine.shutdown()


def still_serving(engine, base: str) -> None:
    """Health, a constrained answer that validates, and no KV page left held."""
    from test_reliability import pool_empty, _wait_for

    assert httpx.get(f"{base}/health").status_code == 200
    r = httpx.post(f"{base}/v1/chat/completions", timeout=60, json={
        "messages": QUESTION, "max_tokens": 16, "response_format": {
            "type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    if choice["finish_reason"] == "stop":
        jsonschema.validate(json.loads(choice["message"]["content"]), SCHEMA)
    assert _wait_for(lambda: pool_empty(engine))


def test_openapi_driven_fuzzing_finds_no_server_error(served):
    engine, base = served
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    cases = st.one_of([op.as_strategy(mode) for op in operations for mode in GenerationMode])
    seen: list[int] = []

    @settings(max_examples=100, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def call(case) -> None:
        response = case.call(base_url=base, timeout=60)
        seen.append(response.status_code)
        assert response.status_code < 500, (case.method, case.path, case.body, response.text[:500])

    call()
    assert len(seen) >= 50 and any(s == 200 for s in seen) and any(400 <= s < 500 for s in seen)
    still_serving(engine, base)


def _deep_list(n: int) -> bytes:
    return b"[" * n + b"]" * n


def _nested_schema(n: int) -> dict:
    schema: dict = {"type": "integer"}
    for _ in range(n):
        schema = {"type": "array", "items": schema}
    return schema


CHAT = "/v1/chat/completions"
GEN = "/generate"
CMPL = "/v1/completions"


def chat(**fields) -> dict:
    return {"messages": QUESTION, "max_tokens": 8, **fields}


def gen(**params) -> dict:
    return {"text": "x", "sampling_params": {"max_new_tokens": 8, **params}}


# (route, body: dict -> JSON, bytes -> sent as is, status class expected: 2 or 4 or None for either)
HOSTILE = [
    # wrong types
    (CHAT, {"messages": "hi"}, 4), (CHAT, {"messages": [{"role": "user", "content": 5}]}, 4),
    (CHAT, chat(temperature="hot"), 4), (CHAT, chat(stop={"a": 1}), 4), (CHAT, chat(n="two"), 4),
    (CHAT, chat(tools="all"), 4), (CHAT, chat(response_format="json"), 4), (CHAT, chat(stream="yes"), None),
    (GEN, {"text": 5}, 4), (GEN, {"text": ["a", 1]}, 4), (GEN, {"text": "x", "sampling_params": "hot"}, 4),
    (GEN, gen(temperature="hot"), 4), (GEN, gen(stop=[1, 2]), 4), (GEN, gen(n=1.5), 4),
    (GEN, {"input_ids": ["a"]}, 4), (GEN, {"input_ids": [-1]}, 4), (GEN, {"input_ids": [10**30]}, 4),
    (GEN, {"input_ids": [[]]}, 4), (GEN, {"text": [], "sampling_params": {}}, 4),
    (GEN, {"text": ["a", "b"], "sampling_params": [{}]}, 4), (GEN, {"text": ["a", "b"], "rid": "one"}, 2),  # a prefix: one_0, one_1 (SGLang)
    (CMPL, {"prompt": {"a": 1}}, 4), (CMPL, {"prompt": []}, 4), (CMPL, {"prompt": [[]]}, 4),
    (CMPL, {"prompt": [-5]}, 4), ("/abort_request", {"rid": 5}, 4),
    # absurd numbers
    (CHAT, chat(max_tokens=-1), 4), (CHAT, chat(max_tokens=0), 4), (CHAT, chat(max_tokens=10**30), 4),
    (CHAT, chat(n=10**12), 4), (CHAT, chat(n=-1), 4), (CHAT, chat(temperature=1e308), None),
    (CHAT, chat(seed=2**70), 4), (CHAT, chat(seed=-(2**70)), 4), (CHAT, chat(seed=-1), None),
    (CHAT, chat(top_k=10**20), None), (CHAT, chat(top_k=0), 4), (CHAT, chat(top_p=0), 4),
    (CHAT, chat(logit_bias={"-5": 3}), 4), (CHAT, chat(logit_bias={"99999999999": 100}), None),
    (CHAT, chat(logit_bias={"1": 1e308}), None), (CHAT, chat(stop_token_ids=[-1]), 4),
    (CHAT, chat(stop_token_ids=[10**20]), None), (CHAT, chat(top_logprobs=100, logprobs=True), 4),
    (CHAT, chat(max_reasoning_tokens=-3), 4), (CHAT, chat(presence_penalty=5), 4),
    (GEN, gen(max_new_tokens=-1), 4), (GEN, gen(max_new_tokens=10**30), 4), (GEN, gen(top_k=-7), 4),
    (GEN, gen(seed=2**64), 4), (GEN, gen(min_new_tokens=10**9), None), (GEN, gen(repetition_penalty=0), 4),
    (GEN, {"text": "x", "top_logprobs_num": 10**6, "return_logprob": True}, 4),
    (CMPL, {"prompt": "x", "max_tokens": 4, "logprobs": 10**9}, 4), (CMPL, {"prompt": "x", "echo": 3}, 4),
    # huge and deep constraints
    (CHAT, chat(response_format={"type": "json_schema", "json_schema": {"schema": {
        "type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(30000)}}}}), 4),
    (CHAT, chat(response_format={"type": "json_schema", "json_schema": {"schema": _nested_schema(40)}}), 2),
    (CHAT, chat(response_format={"type": "json_schema", "json_schema": {"schema": _nested_schema(150)}}), 4),
    (GEN, gen(json_schema='{"a":' * 100000 + "1" + "}" * 100000), 4),
    (GEN, gen(json_schema="[" * 500000), 4),
    (CHAT, b'{"messages": [{"role": "user", "content": "x"}], "json_schema": ' + _deep_list(100000) + b"}", 4),
    (GEN, _deep_list(400000), 4), (GEN, b'{"text": ' + b"[" * 400000, 4),
    (CHAT, chat(response_format={"type": "json_schema", "json_schema": {"schema": {"type": "nonsense"}}}), 4),
    (CHAT, chat(response_format={"type": "json_schema", "json_schema": {"schema": {"$ref": "#/nope"}}}), 4),
    (CHAT, chat(response_format={"type": "json_schema", "json_schema": {"schema": {"enum": []}}}), None),
    (CHAT, chat(json_schema={"type": "string", "pattern": "(a+)+$"}), None),
    (CHAT, chat(json_schema={"type": "array", "minItems": 10**9, "items": {"type": "integer"}}), 4),
    (CHAT, chat(json_schema={"type": "string", "minLength": 10**12}), 4),
    (CHAT, chat(json_schema={"type": "integer", "minimum": 10, "maximum": 1}), None),
    (CHAT, chat(json_schema="$$ANY$$"), 2), (CHAT, chat(json_schema=[]), 4), (CHAT, chat(json_schema=5), 4),
    (CHAT, chat(structural_tag={"type": "structural_tag", "structures": "x"}), 4),
    (CHAT, chat(structural_tag={"type": "structural_tag", "format": {"type": "nope"}}), 4),
    (CHAT, chat(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "bogus"}}}],
                tool_choice="required"), 4),
    # regexes and grammars
    (CHAT, chat(regex="(unclosed"), 4), (CHAT, chat(regex="[z-a]"), 4), (CHAT, chat(regex="\\"), 4),
    (CHAT, chat(regex="(a+)+$"), None), (CHAT, chat(regex="(a|a)*b"), None), (CHAT, chat(regex="(x+x+)+y"), None),
    (CHAT, chat(regex="a{1000000}"), 4), (CHAT, chat(regex="a{99999999999}"), 4),
    (CHAT, chat(regex="(a{1,100}){1,100}"), None), (CHAT, chat(regex="(?<=a)b"), None),
    (CHAT, chat(regex="(a)\\1"), None), (CHAT, chat(regex="\\p{L}+"), None), (CHAT, chat(regex=""), 4),
    (CHAT, chat(regex=".*" * 2000), None), (CHAT, chat(regex="[^\\x00-\\x{10FFFF}]"), None),
    (CHAT, chat(ebnf="root ::="), 4), (CHAT, chat(ebnf="root ::= foo"), 4),
    (CHAT, chat(ebnf='root ::= root "a" | "a"'), None), (CHAT, chat(ebnf="root ::= root"), None),
    (CHAT, chat(ebnf='root ::= [a]{0,100000000}'), None), (CHAT, chat(ebnf="%import os"), 4),
    (CHAT, chat(regex="a", ebnf='root ::= "a"'), 4),
    (CHAT, chat(ebnf="root ::= r0\n" + "\n".join(f"r{i} ::= r{i + 1} r{i + 1}" for i in range(40)) + '\nr40 ::= "ab"'), 4),
    (CHAT, chat(ebnf='root ::= "a"{1000000000}'), 4), (CHAT, chat(regex="(ab{1000}){1000}"), 4),
    (CHAT, chat(json_schema={"type": "array", "minItems": 10**9, "items": {"const": "a"}}), 4),
    # NUL bytes, broken unicode, broken UTF-8
    (CHAT, chat(messages=[{"role": "user", "content": "a\u0000b" * 50}]), 2), (GEN, {"text": "\u0000" * 100}, None),
    (CHAT, chat(regex="a\u0000"), None), (CHAT, chat(stop=["\u0000"]), 2), (CHAT, chat(rid="\u0000"), None),
    (CHAT, b'{"messages": [{"role": "user", "content": "\\ud800\\udfff\\ud800"}], "max_tokens": 4}', None),
    (GEN, b'{"text": "\\udc00", "sampling_params": {"max_new_tokens": 2}}', None),
    (GEN, b'{"text": "\xff\xfe\xc0\xaf", "sampling_params": {"max_new_tokens": 2}}', 4),
    (CHAT, b'\xff\xfe{\x00"\x00', 4), (GEN, b"\x00" * 1000, 4),
    # malformed envelopes and unknown fields
    (CHAT, b"", 4), (CHAT, b"null", 4), (CHAT, b"[]", 4), (CHAT, b"1e999", 4), (CHAT, b'"str"', 4),
    (CHAT, b'{"messages": NaN}', 4), (GEN, b'{"text": "x", "sampling_params": {"temperature": NaN}}', 4),
    (GEN, b'{"text": "x", "sampling_params": {"temperature": Infinity}}', None),
    (CHAT, chat(frobnicate=True, response_format={"type": "text", "extra": 1}, nested={"deep": [1, 2]}), 2),
    (GEN, {"text": "x", "sampling_params": {"max_new_tokens": 2, "frobnicate": 1}}, None),
    (GEN, {"text": "x", "sampling_params": {"max_new_tokens": 2}, "unknown": {"x": 1}}, 2),
    (CHAT, {**chat(), "messages": QUESTION * 3000}, 4),
]


@pytest.mark.parametrize("route, body, expected", HOSTILE, ids=[f"{i}-{r}" for i, (r, _, _) in enumerate(HOSTILE)])
def test_hostile_body_never_gets_a_5xx(served, route, body, expected):
    _, base = served
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(f"{base}{route}", content=content, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code < 500, r.text[:500]
    if expected is not None:
        assert r.status_code // 100 == expected, r.text[:500]
    if r.status_code >= 400:
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"]
    elif r.headers.get("content-type", "").startswith("text/event-stream"):
        assert "data: [DONE]" in r.text


def test_the_server_answers_correctly_after_the_hostile_bodies(served):
    engine, base = served
    still_serving(engine, base)
    out = httpx.post(f"{base}/generate", json=gen(regex="(Paris|Rome)")).json()
    assert re.fullmatch("(Paris|Rome)", out["text"])
