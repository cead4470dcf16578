"""The HTTP servers, driven over real sockets with the official openai SDK and httpx.

Routing, field mapping, streaming framing, errors, the API key and disconnects run against a scripted
engine (tests/fake_engine.py); the end-to-end checks at the bottom run the real Engine on a tiny
random qwen2 model with the deepseek-r1 reasoning parser.
"""
from __future__ import annotations

import concurrent.futures
import json
import logging
import re
import socket
import time

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel

from fake_engine import FakeEngine
from server_fixtures import error_response as _error, running_server, sse_events

QUESTION = [{"role": "assistant", "content": "Give me the capital of France in the JSON format."}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
         {"type": "function", "function": {"name": "get_date", "parameters": {
             "type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}}]
HERMES_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def _client(base: str, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)


# ---------------------------------------------------------------- chat

def test_chat_splits_reasoning_and_reports_usage(served):
    engine, base = served
    resp = _client(base).chat.completions.create(model="anything", messages=QUESTION, max_tokens=32, temperature=0)
    msg = resp.choices[0].message
    assert msg.reasoning_content == "Let me think." and msg.content == "Paris"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.completion_tokens_details.reasoning_tokens == 3
    assert resp.usage.prompt_tokens_details.cached_tokens == 2
    call = engine.calls[-1]
    assert call["reasoning_start"] == "reasoning"  # deepseek-r1 always thinks
    prompt = engine.tokenizer.decode(call["input_ids"])
    assert prompt.endswith("JSON format.<|im_end|>\n<|im_start|>assistant\n")  # a new turn, not a continuation
    assert call["sampling_params"]["max_new_tokens"] == 32 and call["sampling_params"]["temperature"] == 0


@pytest.mark.parametrize("final, start", [
    ({"content": "<think>\nEasy.\n</think>\n\nThe answer is"}, "answer"),
    ({"content": "The answer is", "reasoning_content": "Easy."}, "answer"),
    ({"content": "<think>\nLet me see"}, "reasoning"),
    ({"content": "The answer is"}, "reasoning"),  # deepseek-r1 always thinks: nothing closed it yet
])
def test_continuing_a_message_whose_reasoning_closed_continues_its_answer(served, final, start):
    """Audit 32: continue_final_message after `</think>` started in reasoning (deepseek-r1 always thinks): the
    grammar waited for a second end marker, and the answer's rest came back as reasoning_content."""
    engine, base = served
    messages = [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", **final}]
    r = httpx.post(f"{base}/v1/chat/completions", json={"messages": messages, "continue_final_message": True,
                                                       "add_generation_prompt": False})
    assert r.status_code == 200, r.text
    assert engine.calls[-1]["reasoning_start"] == start


def test_separate_reasoning_false_keeps_everything_in_content(served):
    _, base = served
    r = httpx.post(f"{base}/v1/chat/completions", json={"messages": QUESTION, "separate_reasoning": False})
    msg = r.json()["choices"][0]["message"]
    assert msg["reasoning_content"] is None and msg["content"] == "Let me think.</think>\n\nParis"


def test_every_sampling_field_reaches_the_engine(served):
    engine, base = served
    body = {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 20, "temperature": 0.5,
            "top_p": 0.9, "top_k": 5, "min_p": 0.1, "seed": 7, "stop": "END", "presence_penalty": 0.5,
            "frequency_penalty": 0.25, "logit_bias": {"42": -100}, "skip_special_tokens": False,
            "max_reasoning_tokens": 8, "rid": "my-rid", "logprobs": True, "top_logprobs": 2,
            "chat_template_kwargs": {"enable_thinking": True}}
    r = httpx.post(f"{base}/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    call = engine.calls[-1]
    p = call["sampling_params"]
    assert p == {"max_new_tokens": 20, "temperature": 0.5, "top_p": 0.9, "top_k": 5, "min_p": 0.1, "seed": 7,
                 "stop": ["END"], "presence_penalty": 0.5, "frequency_penalty": 0.25, "logit_bias": {42: -100.0},
                 "skip_special_tokens": False, "max_reasoning_tokens": 8, "n": 1}
    assert call["rid"] == "my-rid" and call["return_logprob"] and call["top_logprobs_num"] == 2
    choice = r.json()["choices"][0]
    assert r.json()["id"] == "chatcmpl-my-rid"
    tokens = choice["logprobs"]["content"]
    assert "".join(t["token"] for t in tokens) == "Let me think.</think>\n\nParis"
    assert all(len(t["top_logprobs"]) == 2 for t in tokens)


@pytest.mark.parametrize("extra, expected", [
    ({"thinking_token_budget": 7}, {"max_reasoning_tokens": 7}),  # vLLM
    ({"custom_params": {"thinking_budget": 7}}, {"custom_params": {"thinking_budget": 7}}),  # SGLang strict thinking
    ({"thinking_token_budget": 7, "max_reasoning_tokens": 7}, {"max_reasoning_tokens": 7}),
    ({"min_tokens": 3, "no_stop_trim": True}, {"min_new_tokens": 3, "no_stop_trim": True}),
])
def test_sglang_and_vllm_spellings_reach_the_engine(served, extra, expected):
    engine, base = served
    r = httpx.post(f"{base}/v1/chat/completions", json={"messages": QUESTION, **extra})
    assert r.status_code == 200, r.text
    p = engine.calls[-1]["sampling_params"]
    assert {k: p.get(k) for k in expected} == expected


def test_chat_without_max_tokens_is_bounded_by_the_context_not_128(served):
    engine, base = served
    assert httpx.post(f"{base}/v1/chat/completions", json={"messages": QUESTION}).status_code == 200
    assert engine.calls[-1]["sampling_params"]["max_new_tokens"] is None  # the engine's "as many as fit"
    httpx.post(f"{base}/v1/completions", json={"prompt": "x"})
    assert engine.calls[-1]["sampling_params"]["max_new_tokens"] == 16  # completions keep OpenAI's default


def test_two_different_thinking_budgets_are_a_400(served):
    _, base = served
    r = httpx.post(f"{base}/v1/chat/completions",
                   json={"messages": QUESTION, "thinking_token_budget": 7, "max_reasoning_tokens": 9})
    assert r.status_code == 400 and r.json()["error"]["param"] == "thinking_token_budget"


@pytest.mark.parametrize("extra, key, expected", [
    ({"response_format": {"type": "json_object"}}, "json_schema", {"type": "object"}),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer"},
                                                                 "strict": True}}}, "json_schema", {"type": "integer"}),
    ({"regex": "(Paris|London)"}, "regex", "(Paris|London)"),
    ({"ebnf": 'root ::= "Paris"'}, "ebnf", 'root ::= "Paris"'),
    ({"response_format": {"type": "structural_tag", "max_new_tokens": 2048, "triggers": ["<f="],
                          "structures": [{"begin": "<f=a>", "schema": {"type": "object"}, "end": "</f>"}]}},
     "structural_tag", {"type": "structural_tag", "triggers": ["<f="],
                        "structures": [{"begin": "<f=a>", "schema": {"type": "object"}, "end": "</f>"}]}),
    ({"response_format": {"type": "structural_tag", "format": {"type": "const_string", "value": "Paris"}}},
     "structural_tag", {"type": "structural_tag", "format": {"type": "const_string", "value": "Paris"}}),
])
def test_each_constraint_kind_reaches_the_engine(served, extra, key, expected):
    engine, base = served
    r = httpx.post(f"{base}/v1/chat/completions", json={"messages": QUESTION, **extra})
    assert r.status_code == 200, r.text
    value = engine.calls[-1]["sampling_params"][key]
    assert (value if key in ("regex", "ebnf") else json.loads(value)) == expected


def test_unknown_fields_are_ignored_with_a_warning(served, caplog):
    _, base = served
    with caplog.at_level(logging.WARNING):
        r = httpx.post(f"{base}/v1/chat/completions", json={
            "messages": QUESTION, "frobnicate": 1,
            "response_format": {"type": "json_object", "max_new_tokens": 5}})
    assert r.status_code == 200, r.text
    assert "frobnicate" in caplog.text and "response_format.max_new_tokens" in caplog.text


def test_sdk_parse_with_a_pydantic_model(served):
    engine, base = served

    class Capital(BaseModel):
        name: str
        population: int

    engine.reply = lambda call: 'Hmm.</think>{"name": "Paris", "population": 2100000}'
    done = _client(base).chat.completions.parse(model="m", messages=QUESTION, response_format=Capital, max_tokens=64)
    assert done.choices[0].message.parsed == Capital(name="Paris", population=2100000)
    assert json.loads(engine.calls[-1]["sampling_params"]["json_schema"])["required"] == ["name", "population"]


def test_sdk_extra_body_ebnf_and_regex(served):
    engine, base = served
    client = _client(base)
    client.chat.completions.create(model="m", messages=QUESTION, extra_body={"ebnf": 'root ::= "Paris"'})
    assert engine.calls[-1]["sampling_params"]["ebnf"] == 'root ::= "Paris"'
    resp = client.chat.completions.create(model="m", messages=QUESTION, extra_body={"regex": "(Paris|London)"})
    assert resp.choices[0].message.content == "Paris"


def test_vllm_constraint_fields_are_taken_not_ignored(served):
    """A vLLM client's guided_* / structured_outputs fields constrain the answer as they do on vLLM."""
    engine, base = served
    client = _client(base)
    for extra, key, expected in [
            ({"guided_regex": "(Paris|London)"}, "regex", "(Paris|London)"),
            ({"guided_grammar": 'root ::= "Paris"'}, "ebnf", 'root ::= "Paris"'),
            ({"guided_json": {"type": "object"}}, "json_schema", '{"type": "object"}'),
            ({"guided_choice": ["Paris", 'Lon"don']}, "ebnf", 'root ::= "Paris" | "Lon\\"don"'),
            ({"structured_outputs": {"choice": ["Rome"]}}, "ebnf", 'root ::= "Rome"'),
            ({"structured_outputs": {"json": '{"type": "string"}', "backend": "xgrammar"}}, "json_schema",
             '{"type": "string"}'),
            ({"structured_outputs": {"json_object": True}}, "json_schema", '{"type": "object"}')]:
        client.chat.completions.create(model="m", messages=QUESTION, extra_body=extra)
        assert engine.calls[-1]["sampling_params"][key] == expected, extra
    for extra, param in [({"guided_regex": "a", "regex": "b"}, "guided_regex"),
                         ({"guided_choice": []}, "guided_choice"),
                         ({"structured_outputs": {"choices": ["a"]}}, "structured_outputs.choices"),
                         ({"guided_json": {"type": "object"}, "response_format": {"type": "json_object"}},
                          "guided_json")]:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="m", messages=QUESTION, extra_body=extra)
        assert e.value.body["param"] == param, e.value.body


def test_n_greater_than_one(served):
    _, base = served
    resp = _client(base).chat.completions.create(model="m", messages=QUESTION, n=3, max_tokens=8)
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert resp.usage.prompt_tokens == 7  # one prompt, counted once


# ---------------------------------------------------------------- tools

def test_tool_choice_auto_uses_a_triggered_tag_and_returns_tool_calls(served):
    engine, base = served
    engine.reply = lambda call: "I should call get_weather.</think>\n\nLet me check.\n" + HERMES_CALL
    resp = _client(base).chat.completions.create(model="m", messages=QUESTION, tools=TOOLS, max_tokens=64)
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    tag = json.loads(engine.calls[-1]["sampling_params"]["structural_tag"])
    assert tag["format"]["type"] == "triggered_tags" and tag["format"]["triggers"] == ["<tool_call>"]


def test_tool_calls_are_never_taken_from_the_reasoning(served):
    engine, base = served
    engine.reply = lambda call: "Maybe " + HERMES_CALL + "</think>\n\nIt is sunny."
    resp = _client(base).chat.completions.create(model="m", messages=QUESTION, tools=TOOLS)
    assert resp.choices[0].message.tool_calls is None
    assert resp.choices[0].message.content == "It is sunny." and resp.choices[0].finish_reason == "stop"


def _chat_message(url: str, body: dict, stream: bool) -> tuple[dict, str]:
    """(message, finish_reason) of one chat completion; streamed: its deltas put together."""
    if not stream:
        choice = httpx.post(url, json=body).json()["choices"][0]
        return choice["message"], choice["finish_reason"]
    with httpx.stream("POST", url, json={**body, "stream": True}) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    calls: dict[int, dict] = {}
    for d in deltas:
        for t in d.get("tool_calls") or []:
            fn = calls.setdefault(t["index"], {"function": {"name": "", "arguments": ""}})["function"]
            fn["name"] += t["function"].get("name") or ""
            fn["arguments"] += t["function"].get("arguments") or ""
    message = {"content": "".join(d.get("content") or "" for d in deltas),
               "tool_calls": [calls[k] for k in sorted(calls)] or None}
    return message, chunks[-1]["choices"][0]["finish_reason"]


@pytest.mark.parametrize("stream", [False, True])
def test_separate_reasoning_false_keeps_the_reasoning_but_takes_calls_from_the_answer_only(served, stream):
    engine, base = served
    body = {"messages": QUESTION, "tools": TOOLS, "separate_reasoning": False}
    engine.reply = lambda call: "Maybe " + HERMES_CALL + "</think>\n\nIt is sunny."
    msg, finish = _chat_message(f"{base}/v1/chat/completions", body, stream)
    assert msg.get("tool_calls") is None and finish == "stop"
    assert msg["content"] == "Maybe " + HERMES_CALL + "</think>\n\nIt is sunny."
    engine.reply = lambda call: "Hmm.</think>\n\nChecking.\n" + HERMES_CALL
    msg, finish = _chat_message(f"{base}/v1/chat/completions", body, stream)
    assert msg["content"].rstrip() == "Hmm.</think>\n\nChecking." and len(msg["tool_calls"]) == 1


@pytest.mark.parametrize("stream", [False, True])
def test_a_call_cut_by_max_tokens_is_a_length_finish_streamed_or_not(served, monkeypatch, stream):
    """Both ways: finish_reason "length" (not "tool_calls", which would hide the cut), the whole call plus
    the cut one with its arguments as far as they go, no raw call markup in content."""
    engine, base = served
    monkeypatch.setattr(engine, "finish_reason", {"type": "length", "matched": None, "length": 64})
    engine.reply = lambda call: ("ok</think>\n\nChecking.\n" + HERMES_CALL + "\n"
                                 + HERMES_CALL.split("Paris")[0] + "Ro")
    msg, finish = _chat_message(f"{base}/v1/chat/completions", {"messages": QUESTION, "tools": TOOLS}, stream)
    args = [t["function"]["arguments"] for t in msg["tool_calls"]]
    assert finish == "length" and msg["content"].strip() == "Checking."
    assert json.loads(args[0]) == {"city": "Paris"} and args[1] == '{"city": "Ro'


def test_parallel_tool_calls_false_gives_one_call_at_most(served):
    engine, base = served
    engine.reply = lambda call: "ok</think>" + HERMES_CALL + "\n" + HERMES_CALL.replace("Paris", "Rome")
    body = {"messages": QUESTION, "tools": TOOLS, "parallel_tool_calls": False}
    r = httpx.post(f"{base}/v1/chat/completions", json=body)
    assert [json.loads(c["function"]["arguments"])["city"] for c in r.json()["choices"][0]["message"]["tool_calls"]] \
        == ["Paris"]
    r = httpx.post(f"{base}/v1/chat/completions", json={**body, "tool_choice": "required"})
    assert json.loads(engine.calls[-1]["sampling_params"]["structural_tag"])["format"]["stop_after_first"] is True
    assert len(httpx.post(f"{base}/v1/chat/completions", json={**body, "parallel_tool_calls": True}
                          ).json()["choices"][0]["message"]["tool_calls"]) == 2


@pytest.mark.parametrize("choice, names", [
    ("required", {"get_weather", "get_date"}),
    ({"type": "function", "function": {"name": "get_date"}}, {"get_date"}),
])
def test_required_and_named_tool_choice_constrain_to_calls_only(served, choice, names):
    engine, base = served
    engine.reply = lambda call: "ok</think>" + HERMES_CALL
    r = httpx.post(f"{base}/v1/chat/completions", json={"messages": QUESTION, "tools": TOOLS, "tool_choice": choice})
    assert r.status_code == 200, r.text
    fmt = json.loads(engine.calls[-1]["sampling_params"]["structural_tag"])["format"]
    assert fmt["type"] == "tags_with_separator" and fmt["at_least_one"] is True
    assert {re.search(r'"name": "(\w+)"', t["begin"]).group(1) for t in fmt["tags"]} == names


def test_tool_choice_none_neither_constrains_nor_parses(served):
    engine, base = served
    engine.reply = lambda call: "ok</think>" + HERMES_CALL
    r = httpx.post(f"{base}/v1/chat/completions", json={"messages": QUESTION, "tools": TOOLS, "tool_choice": "none"})
    assert "structural_tag" not in engine.calls[-1]["sampling_params"]
    assert r.json()["choices"][0]["message"]["content"] == HERMES_CALL


# ---------------------------------------------------------------- streaming

def test_stream_sends_reasoning_content_and_usage_then_done(served):
    engine, base = served
    engine.reply = lambda call: "Think</think>\n\nParis is nice"
    with httpx.stream("POST", f"{base}/v1/chat/completions", json={
            "messages": QUESTION, "stream": True, "stream_options": {"include_usage": True}}) as r:
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    deltas = [e["choices"][0]["delta"] for e in events[:-2]]
    assert deltas[0] == {"role": "assistant", "content": "", "reasoning_content": None}
    reasoning = "".join(d.get("reasoning_content") or "" for d in deltas)
    content = "".join(d.get("content") or "" for d in deltas)
    assert reasoning == "Think" and content == "Paris is nice"
    assert not any("<" in (d.get("content") or "") + (d.get("reasoning_content") or "") for d in deltas)  # no marker leaks
    assert events[-3]["choices"][0]["finish_reason"] == "stop"
    assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] > 0


def test_stream_reasoning_false_sends_reasoning_in_one_piece(served):
    engine, base = served
    engine.reply = lambda call: "A long thought</think>Paris"
    with httpx.stream("POST", f"{base}/v1/chat/completions",
                      json={"messages": QUESTION, "stream": True, "stream_reasoning": False}) as r:
        deltas = [e["choices"][0]["delta"] for e in sse_events(r)[:-1]]
    assert [d["reasoning_content"] for d in deltas if d.get("reasoning_content")] == ["A long thought"]


def test_stream_tool_calls_with_the_sdk(served):
    engine, base = served
    engine.reply = lambda call: "Hmm</think>Checking. " + HERMES_CALL
    stream = _client(base).chat.completions.create(model="m", messages=QUESTION, tools=TOOLS, stream=True)
    content, calls, finish, pieces = "", {}, None, 0
    for chunk in stream:
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for piece in delta.tool_calls or []:  # a call's id and name first, then its arguments in pieces
            pieces += 1
            call = calls.setdefault(piece.index, {"name": None, "arguments": ""})
            call["name"] = piece.function.name or call["name"]
            call["arguments"] += piece.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert content.strip() == "Checking." and "<tool_call>" not in content
    assert [c["name"] for c in calls.values()] == ["get_weather"] and finish == "tool_calls"
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"} and pieces > 3  # streamed, not sent whole


@pytest.mark.parametrize("chunk_chars", [1, 7, 1000])
def test_streamed_tool_calls_read_right_by_naive_clients(served, chunk_chars):
    """Each chunk carries one entry per call, and a call's header (id, name, empty arguments) comes alone, as
    OpenAI streams it: audits 16 and 17 found clients that keep one entry per call a chunk, and clients that
    set the arguments when the header comes, each losing a piece of the arguments of the other shape."""
    engine, base = served
    engine.reply = lambda call: "Hmm</think>" + HERMES_CALL + "\n" + HERMES_CALL.replace("Paris", "Rome")
    engine.chunk_chars = chunk_chars
    with httpx.stream("POST", f"{base}/v1/chat/completions",
                      json={"messages": QUESTION, "tools": TOOLS, "stream": True}) as r:
        entries = [e["choices"][0]["delta"].get("tool_calls") or [] for e in sse_events(r)[:-1]]
    last_per_chunk: dict[int, dict] = {}
    reset_at_header: dict[int, str] = {}
    for chunk in entries:
        assert len({c["index"] for c in chunk}) == len(chunk), chunk
        for c in chunk:
            last_per_chunk.setdefault(c["index"], {"arguments": ""})["arguments"] += c["function"].get("arguments", "")
            if "id" in c:
                assert c["function"]["arguments"] == "" and c["function"]["name"] == "get_weather"
                reset_at_header[c["index"]] = ""
            else:
                reset_at_header[c["index"]] += c["function"]["arguments"]
    for args in (last_per_chunk, {k: {"arguments": v} for k, v in reset_at_header.items()}):
        assert [json.loads(args[k]["arguments"]) for k in sorted(args)] == [{"city": "Paris"}, {"city": "Rome"}]


def test_stream_with_n_two(served):
    _, base = served
    with httpx.stream("POST", f"{base}/v1/chat/completions", json={"messages": QUESTION, "stream": True, "n": 2}) as r:
        events = sse_events(r)[:-1]
    for i in (0, 1):
        content = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"][0]["index"] == i)
        assert content == "Paris"
    assert sum(e["choices"][0]["finish_reason"] == "stop" for e in events) == 2


# ---------------------------------------------------------------- completions, models, native

def test_completions_string_list_n_echo_and_stream(served):
    engine, base = served
    client = _client(base)
    one = client.completions.create(model="m", prompt="The capital of France is", max_tokens=8)
    assert one.choices[0].text == "Paris" and engine.calls[-1]["reasoning_start"] is None
    many = client.completions.create(model="m", prompt=["a", "b"], n=2, max_tokens=8, extra_body={"regex": "P.*"})
    assert len(many.choices) == 4 and engine.calls[-1]["sampling_params"]["regex"] == "P.*"
    assert engine.calls[-1]["rid"] == [f"{many.id[5:]}-0", f"{many.id[5:]}-1"]
    echo = client.completions.create(model="m", prompt="Q:", echo=True, max_tokens=8)
    assert echo.choices[0].text == "Q:Paris"
    text = "".join(c.choices[0].text for c in client.completions.create(model="m", prompt="x", stream=True)
                   if c.choices)
    assert text == "Paris"


def _joined_completion_logprobs(events: list) -> dict:
    joined: dict = {"tokens": [], "token_logprobs": [], "text_offset": [], "top_logprobs": []}
    for e in events:
        for key in joined:
            joined[key] += (e["choices"][0]["logprobs"] or {}).get(key, [])
    return joined


def test_streamed_logprobs_add_up_to_the_non_streamed_ones(served):
    """Each chunk carries the logprobs of the tokens whose text it delivers; over the stream they are the
    non-streamed entries, in chat (reasoning included) and in /v1/completions."""
    engine, base = served
    engine.reply = lambda call: "Let me think about it.</think>\n\nParis is the capital"
    body = {"messages": QUESTION, "logprobs": True, "top_logprobs": 2}
    whole = httpx.post(f"{base}/v1/chat/completions", json=body).json()["choices"][0]["logprobs"]["content"]
    with httpx.stream("POST", f"{base}/v1/chat/completions", json={**body, "stream": True}) as r:
        events = [e for e in sse_events(r)[:-1] if e["choices"]]
    per_chunk = [e["choices"][0]["logprobs"]["content"] for e in events if e["choices"][0]["logprobs"]]
    assert len(per_chunk) > 1 and [t for c in per_chunk for t in c] == whole
    assert events[0]["choices"][0]["logprobs"] is None  # the role chunk delivers no token
    body = {"prompt": "x", "logprobs": 2, "max_tokens": 16}
    whole = httpx.post(f"{base}/v1/completions", json=body).json()["choices"][0]
    with httpx.stream("POST", f"{base}/v1/completions", json={**body, "stream": True}) as r:
        events = [e for e in sse_events(r)[:-1] if e["choices"]]
    assert sum(e["choices"][0]["logprobs"] is not None for e in events) > 1
    assert _joined_completion_logprobs(events) == whole["logprobs"]
    assert "".join(e["choices"][0]["text"] for e in events) == whole["text"]


@pytest.mark.parametrize("prompt", ["The capital of France is", [5, 17, 42]])
def test_completions_echo_puts_the_prompt_tokens_first_in_the_logprobs(served, prompt):
    engine, base = served
    tokenizer = engine.tokenizer
    body = {"prompt": prompt, "echo": True, "logprobs": 1, "max_tokens": 8}
    choice = httpx.post(f"{base}/v1/completions", json=body).json()["choices"][0]
    text, lp = choice["text"], choice["logprobs"]
    prompt_ids = tokenizer.encode(prompt) if isinstance(prompt, str) else prompt
    prompt_text = prompt if isinstance(prompt, str) else tokenizer.decode(prompt)
    assert text == prompt_text + "Paris"
    n = len(prompt_ids)
    assert engine.calls[-1]["logprob_start_len"] == 0  # the engine scores the whole prompt
    assert lp["tokens"][:n] == [tokenizer.decode([t]) for t in prompt_ids]
    # the prompt's logprobs as the engine scored them; the first token has none (nothing before it)
    assert lp["token_logprobs"][:n] == [None] + [-2.0 - k / 64 for k in range(n - 1)]
    # each with the prompt token itself too (OpenAI: "up to logprobs+1 elements")
    assert lp["top_logprobs"][:n] == [None] + [{tokenizer.decode([7]): -1.0, token: value} for token, value
                                               in zip(lp["tokens"][1:n], lp["token_logprobs"][1:n])]
    assert len(lp["tokens"]) == n + len(tokenizer.encode("Paris"))
    assert all(v is not None for v in lp["token_logprobs"][n:])
    assert lp["text_offset"] == sorted(lp["text_offset"]) and lp["text_offset"][n] == len(prompt_text)
    for token, offset in zip(lp["tokens"], lp["text_offset"]):  # every offset points at its token's text
        assert text[offset:].startswith(token), (token, offset, text)
    with httpx.stream("POST", f"{base}/v1/completions", json={**body, "stream": True}) as r:
        events = [e for e in sse_events(r)[:-1] if e["choices"]]
    assert _joined_completion_logprobs(events) == lp
    assert "".join(e["choices"][0]["text"] for e in events) == text


def test_models_and_info_routes(served):
    _, base = served
    assert [m.id for m in _client(base).models.list()] == ["fake-model"]
    assert httpx.get(f"{base}/health").status_code == 200
    assert httpx.get(f"{base}/get_model_info").json()["is_generation"] is True
    server = httpx.get(f"{base}/get_server_info").json()
    assert server["model_name"] == "fake-model" and server["reasoning_parser"] == "deepseek-r1"


def test_native_generate_single_batch_and_stream(served):
    engine, base = served
    body = {"text": "hi", "require_reasoning": True, "sampling_params": {"max_new_tokens": 16, "json_schema": "{}"}}
    out = httpx.post(f"{base}/generate", json=body).json()
    assert out["text"] == "Let me think.</think>\n\nParis"
    assert out["meta_info"]["reasoning_content"] == "Let me think." and out["meta_info"]["content"] == "Paris"
    assert engine.calls[-1]["require_reasoning"] is True
    batch = httpx.post(f"{base}/generate", json={"text": ["a", "b"], "sampling_params": {"n": 2}}).json()
    assert isinstance(batch, list) and len(batch) == 4
    with httpx.stream("POST", f"{base}/generate", json={"input_ids": [1, 2, 3], "stream": True}) as r:
        events = sse_events(r)
    assert events[-1] == "[DONE]" and events[-2]["text"] == "Paris"
    assert events[-2]["meta_info"]["finish_reason"]["type"] == "stop"


def test_abort_request_route(served):
    engine, base = served
    assert httpx.post(f"{base}/abort_request", json={"rid": "r-1"}).status_code == 200
    assert engine.aborted == ["r-1"]


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("body, param, match", [
    ({"messages": []}, "messages", "at least 1"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role", ""),
    ({"messages": QUESTION, "temperature": "hot"}, "temperature", ""),
    ({"messages": QUESTION, "max_tokens": 0}, "max_tokens", ""),
    ({"messages": QUESTION, "n": 100}, "n", "limit"),
    ({"messages": QUESTION, "regex": "a", "ebnf": "root ::= \"a\""}, "regex", "one constraint"),
    ({"messages": QUESTION, "response_format": {"type": "json_schema"}}, "response_format.json_schema.schema", ""),
    ({"messages": QUESTION, "response_format": {"type": "xml"}}, "response_format.type", ""),
    ({"messages": QUESTION, "json_schema": "{not json"}, "json_schema", "not valid JSON"),
    ({"messages": QUESTION, "tool_choice": "required"}, "tool_choice", "tools"),
    ({"messages": QUESTION, "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice", "nope"),
    ({"messages": QUESTION, "logit_bias": {"abc": 1}}, "logit_bias", "token ids"),
    ({"messages": QUESTION, "top_logprobs": 2}, "top_logprobs", "logprobs"),
    ({"messages": QUESTION, "continue_final_message": True, "add_generation_prompt": False,
      "chat_template_kwargs": {}, "stop": 5}, "stop", ""),
])
def test_bad_chat_bodies_are_400_naming_the_field(served, body, param, match):
    _, base = served
    _error(httpx.post(f"{base}/v1/chat/completions", json=body), 400, param, match)


def test_malformed_json_and_unknown_route(served):
    _, base = served
    _error(httpx.post(f"{base}/v1/chat/completions", content=b"{oops",
                      headers={"content-type": "application/json"}), 400, None, "not valid JSON")
    _error(httpx.post(f"{base}/v1/chat/completions", content=b"[1, 2]",
                      headers={"content-type": "application/json"}), 400)
    _error(httpx.get(f"{base}/v2/nothing"), 404)
    # curl -d sends a form: the 400 says what to send
    _error(httpx.post(f"{base}/v1/chat/completions", content=b'{"messages": []}',
                      headers={"content-type": "application/x-www-form-urlencoded"}), 400, "body",
           "Content-Type: application/json")


def test_native_errors(served):
    _, base = served
    _error(httpx.post(f"{base}/generate", json={"sampling_params": {}}), 400, "text", "exactly one")
    _error(httpx.post(f"{base}/generate", json={"text": "x", "sampling_params": {"regex": ""}}),
           400, "sampling_params.regex", "non-empty")
    _error(httpx.post(f"{base}/generate", json={"text": "x", "sampling_params": {"n": 99}}), 400, "sampling_params.n")
    _error(httpx.post(f"{base}/abort_request", json={}), 400, "rid")


def test_engine_value_errors_become_400_and_overload_503(served):
    engine, base = served

    def too_long(call):
        raise ValueError("prompt is longer than the context length (512)")

    engine.reply = too_long
    _error(httpx.post(f"{base}/v1/chat/completions", json={"messages": QUESTION}), 400, None, "context length")
    _error(httpx.post(f"{base}/v1/chat/completions", json={"messages": QUESTION, "stream": True}), 400)
    engine.overloaded = True
    r = httpx.post(f"{base}/generate", json={"text": "x"})
    _error(r, 503, None, "pending")
    assert r.headers["retry-after"] == "2"
    engine.healthy = False
    assert httpx.get(f"{base}/health").status_code == 503


# ---------------------------------------------------------------- api key, disconnects, load

def test_api_key_on_every_route_but_those_sglang_leaves_open():
    """SGLang leaves health and readiness probes, Prometheus' scrape and CORS preflights open (an audit: a
    deployment's /health_generate probe and its scrape got 401 here)."""
    engine = FakeEngine(api_key="sekret")
    with running_server(engine) as base:
        for path in ("/health", "/health_generate", "/metrics"):
            assert httpx.get(f"{base}{path}").status_code != 401, path
        assert httpx.options(f"{base}/v1/chat/completions").status_code != 401
        assert httpx.post(f"{base}/generate", json={"text": "x"}, headers={"x-api-key": "sekret"}).status_code == 200
        for method, path in (("GET", "/v1/models"), ("POST", "/generate"), ("GET", "/get_model_info"),
                             ("POST", "/v1/chat/completions"), ("GET", "/nope")):
            _error(httpx.request(method, f"{base}{path}"), 401)
            _error(httpx.request(method, f"{base}{path}", headers={"Authorization": "Bearer wrong"}), 401)
        with pytest.raises(openai.AuthenticationError):
            _client(base, "wrong").models.list()
        assert [m.id for m in _client(base, "sekret").models.list()] == ["fake-model"]
        assert httpx.post(f"{base}/generate", json={"text": "x"},
                          headers={"Authorization": "Bearer sekret"}).status_code == 200


def _wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_client_disconnect_aborts_streaming_and_plain_requests(served):
    engine, base = served
    engine.chunk_delay_s = 0.1
    engine.reply = lambda call: "x" * 300
    with httpx.stream("POST", f"{base}/v1/chat/completions",
                      json={"messages": QUESTION, "stream": True, "rid": "gone-stream"}) as r:
        for _ in zip(range(3), r.iter_lines()):
            pass
    assert _wait_for(lambda: "gone-stream" in engine.aborted)
    engine.chunk_delay_s = 0.5  # a plain reply now takes 10 s; the client leaves after 2 (the server has it)
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{base}/generate", json={"text": "x", "rid": "gone-plain"}, timeout=2.0)
    assert _wait_for(lambda: "gone-plain" in engine.aborted)


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"messages": QUESTION}), ("/v1/completions", {"prompt": "x"}),
    ("/generate", {"text": "x"}), ("/v1/responses", {"input": "x"})])
def test_a_stream_whose_client_leaves_before_its_first_chunk_is_aborted_at_once(served, path, body):
    """Queued (or compiling its grammar) when the client gives up: aborted then, not once it is scheduled."""
    engine, base = served
    engine.chunk_delay_s = 5.0  # the first chunk comes after 5 s; the client leaves after 1
    with pytest.raises(httpx.TimeoutException):
        httpx.post(base + path, json={**body, "stream": True, "rid": f"early{len(path)}"}, timeout=1.0)
    started = time.monotonic()
    assert _wait_for(lambda: any(rid.startswith("early") for rid in engine.aborted), timeout=2.0)
    assert time.monotonic() - started < 2.0


def test_forty_concurrent_mixed_requests(served):
    engine, base = served
    engine.chunk_delay_s = 0.002
    kinds = [
        ("/v1/chat/completions", {"messages": QUESTION, "max_tokens": 16}),
        ("/v1/chat/completions", {"messages": QUESTION, "regex": "(Paris|London)", "stream": True}),
        ("/v1/completions", {"prompt": "x", "response_format": {"type": "json_object"}}),
        ("/generate", {"text": "x", "sampling_params": {"ebnf": 'root ::= "Paris"'}, "stream": True}),
    ]
    with httpx.Client(timeout=30) as http, concurrent.futures.ThreadPoolExecutor(40) as pool:
        futures = [pool.submit(http.post, base + kinds[i % 4][0], json=kinds[i % 4][1]) for i in range(40)]
        statuses = [f.result().status_code for f in futures]
    assert statuses == [200] * 40
    assert len(engine.calls) == 40


# ---------------------------------------------------------------- the real engine, end to end

@pytest.fixture(scope="module")
def real(tmp_path_factory):
    from thinkform import Engine
    from thinkform.testing.models import make_tiny_model_dir

    path = make_tiny_model_dir(tmp_path_factory.mktemp("tiny"), "qwen2")
    engine = Engine(model_path=str(path), reasoning_parser="deepseek-r1", max_reasoning_tokens=12)
    try:
        with running_server(engine) as base:
            yield engine, base
    finally:
        engine.shutdown()


SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "pattern": "^[A-Za-z]{1,8}$"},
                                           "population": {"type": "integer"}}, "required": ["name", "population"]}


def test_real_engine_constraints_validate_after_reasoning(real):
    _, base = real
    client = _client(base)
    resp = client.chat.completions.create(model="m", messages=QUESTION, max_tokens=64, temperature=0, response_format={
        "type": "json_schema", "json_schema": {"name": "capital", "schema": SCHEMA}})
    assert resp.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(resp.choices[0].message.content), SCHEMA)
    assert resp.usage.completion_tokens <= 64
    resp = client.chat.completions.create(model="m", messages=QUESTION, max_tokens=64,
                                          extra_body={"regex": "(Paris|London)"})
    assert resp.choices[0].message.content in ("Paris", "London")
    resp = client.chat.completions.create(model="m", messages=QUESTION, max_tokens=64,
                                          extra_body={"ebnf": 'root ::= "Paris" | "Rome"'})
    assert resp.choices[0].message.content in ("Paris", "Rome")


def test_real_engine_stream_and_native(real):
    _, base = real
    with httpx.stream("POST", f"{base}/v1/chat/completions", json={
            "messages": QUESTION, "max_tokens": 48, "stream": True, "regex": "(Paris|London)",
            "stream_options": {"include_usage": True}}) as r:
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    content = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e["choices"])
    assert content in ("Paris", "London")
    out = httpx.post(f"{base}/generate", json={"text": "Capital?", "require_reasoning": True, "sampling_params": {
        "max_new_tokens": 48, "temperature": 0, "json_schema": json.dumps(SCHEMA)}}).json()
    jsonschema.validate(json.loads(out["meta_info"]["content"]), SCHEMA)


def test_real_engine_streams_equal_the_whole_with_a_stop_and_logprobs(real):
    """A stop string straddling a token boundary: streamed completions join to the non-streamed text, the
    native cumulative text only grows; streamed chat logprobs (reasoning included) are the non-streamed ones."""
    _, base = real
    native = {"text": "Hello", "sampling_params": {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True}}
    with httpx.stream("POST", f"{base}/generate", json={**native, "stream": True}) as r:
        texts = [e["text"] for e in sse_events(r)[:-1]]
    whole = texts[-1]
    cuts = [len(a) for a, b in zip(texts, texts[1:]) if 0 < len(a) and len(b) - len(a) < 2
            and whole.find(whole[len(a) - 1:len(a) + 2]) == len(a) - 1 and len(whole) >= len(a) + 2]
    assert cuts, texts
    stop = whole[cuts[0] - 1:cuts[0] + 2]
    with httpx.stream("POST", f"{base}/generate", json={
            "text": "Hello", "stream": True, "sampling_params": {**native["sampling_params"], "stop": [stop]}}) as r:
        got = [e["text"] for e in sse_events(r)[:-1]]
    assert all(b.startswith(a) for a, b in zip(got, got[1:])) and got[-1] == whole[:cuts[0] - 1], (stop, got)
    body = {"prompt": "Hello", "max_tokens": 12, "temperature": 0, "stop": [stop], "logprobs": 1,
            "ignore_eos": True}
    plain = httpx.post(f"{base}/v1/completions", json=body).json()["choices"][0]
    with httpx.stream("POST", f"{base}/v1/completions", json={**body, "stream": True}) as r:
        events = [e for e in sse_events(r)[:-1] if e["choices"]]
    assert "".join(e["choices"][0]["text"] for e in events) == plain["text"] == whole[:cuts[0] - 1]
    assert _joined_completion_logprobs(events) == plain["logprobs"]
    chat = {"messages": QUESTION, "max_tokens": 24, "temperature": 0, "logprobs": True, "top_logprobs": 2}
    resp = httpx.post(f"{base}/v1/chat/completions", json=chat).json()
    with httpx.stream("POST", f"{base}/v1/chat/completions", json={**chat, "stream": True}) as r:
        events = [e for e in sse_events(r)[:-1] if e["choices"]]
    streamed = [t for e in events for t in (e["choices"][0]["logprobs"] or {}).get("content", [])]
    assert streamed == resp["choices"][0]["logprobs"]["content"]
    assert len(streamed) == resp["usage"]["completion_tokens"]


def test_real_engine_tools_and_errors(real):
    _, base = real
    r = httpx.post(f"{base}/v1/chat/completions", json={"messages": QUESTION, "tools": TOOLS, "max_tokens": 64,
                                                        "tool_choice": "required"})
    choice = r.json()["choices"][0]
    if choice["finish_reason"] == "tool_calls":
        for call in choice["message"]["tool_calls"]:
            assert call["function"]["name"] in ("get_weather", "get_date")
            json.loads(call["function"]["arguments"])
    else:
        assert choice["finish_reason"] == "length"
    _error(httpx.post(f"{base}/v1/chat/completions", json={"messages": QUESTION, "regex": "(unclosed"}), 400)
    _error(httpx.post(f"{base}/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "word " * 5000}], "max_tokens": 8}), 400)


def test_real_engine_forty_concurrent_mixed_requests(real):
    _, base = real
    bodies = [
        ("/v1/chat/completions", {"messages": QUESTION, "max_tokens": 16}),
        ("/v1/chat/completions", {"messages": QUESTION, "max_tokens": 32, "regex": "(Paris|London)", "stream": True}),
        ("/v1/chat/completions", {"messages": QUESTION, "max_tokens": 48, "n": 2, "temperature": 0,
                                  "response_format": {"type": "json_schema", "json_schema": {"schema": SCHEMA}}}),
        ("/generate", {"text": "x", "sampling_params": {"max_new_tokens": 16, "ebnf": 'root ::= "Paris"'}}),
    ]
    with httpx.Client(timeout=120) as http, concurrent.futures.ThreadPoolExecutor(40) as pool:
        futures = [pool.submit(http.post, base + bodies[i % 4][0], json=bodies[i % 4][1]) for i in range(40)]
        responses = [f.result() for f in futures]
    assert [r.status_code for r in responses] == [200] * 40
    for r in responses[2::4]:
        for choice in r.json()["choices"]:
            if choice["finish_reason"] == "stop":
                jsonschema.validate(json.loads(choice["message"]["content"]), SCHEMA)
    assert all(r.json()["text"] == "Paris" for r in responses[3::4])


def test_launch_server_helpers_start_serve_and_stop(tmp_path):
    from thinkform.testing.models import make_tiny_model_dir
    from thinkform.utils import launch_server_cmd, terminate_process, wait_for_server

    path = make_tiny_model_dir(tmp_path, "qwen2")
    process, port = launch_server_cmd(f"python -m thinkform.launch_server --model-path {path} "
                                      "--reasoning-parser deepseek-r1 --log-level warning")
    try:
        wait_for_server(f"http://localhost:{port}", timeout=120, process=process)
        resp = _client(f"http://127.0.0.1:{port}").chat.completions.create(
            model="m", messages=QUESTION, max_tokens=32, extra_body={"regex": "(Paris|London)"})
        assert resp.choices[0].message.content in ("Paris", "London")
    finally:
        terminate_process(process)
    assert process.returncode == 0
    with socket.socket() as s:  # the port was released: a new server could listen on it (as uvicorn binds)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()


def test_a_script_that_dies_takes_its_launched_server_with_it(tmp_path):
    """A notebook that fails before its terminate_process left the server running (and holding its port)."""
    import os
    import subprocess
    import sys
    import time

    from thinkform.testing.models import make_tiny_model_dir

    path = make_tiny_model_dir(tmp_path, "qwen2")
    script = ("import sys\nfrom thinkform.utils import launch_server_cmd, wait_for_server\n"
              f"p, port = launch_server_cmd('python -m thinkform.launch_server --model-path {path} --log-level warning')\n"
              "wait_for_server(f'http://localhost:{port}', timeout=120, process=p)\n"
              "print(p.pid, flush=True)\nraise RuntimeError('the notebook failed')\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode != 0 and "the notebook failed" in proc.stderr
    pid = int(proc.stdout.split()[-1])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}") and \
            open(f"/proc/{pid}/stat").read().split()[2] != "Z":
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


@pytest.mark.parametrize("backend", ["xgrammar", "llguidance"])
def test_a_vllm_choice_compiles_to_exactly_its_strings(tiny_tokenizer, backend):
    from thinkform.server.params import constraint_fields
    from thinkform.server.protocol import ChatCompletionRequest
    from thinkform.structured.backends import BackendContext, create_backend
    from thinkform.structured.spec import GrammarOptions, constraint_from_fields

    choices = ["Paris", 'Lon"don', "São Paulo", "a\\b", "new\nline"]
    body = ChatCompletionRequest(messages=QUESTION, guided_choice=choices)
    fields = constraint_fields(body, None).fields
    compiled = create_backend(backend, BackendContext(tiny_tokenizer, len(tiny_tokenizer), (0,), GrammarOptions())
                              ).compile(constraint_from_fields(**fields))
    for text in choices + ["Pari", "Parisx", "London"]:
        matcher = compiled.new_matcher()
        whole = matcher.accept_string(text) and matcher.can_terminate()
        assert whole == (text in choices), (text, fields)


# ---------------------------------------------------------------- hostile input (audit 35)

def _responses_counted(base: str, status: str) -> float:
    text = httpx.get(f"{base}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("thinkform_http_responses_total{") and f'status="{status}"' in line)


def test_an_unexpected_error_is_a_counted_500_and_the_connection_stays_open(served):
    """An exception no handler took was answered outermost: uncounted, and the keep-alive connection closed."""
    engine, base = served

    def broken(_call):
        raise RuntimeError("boom")

    engine.reply = broken
    before = _responses_counted(base, "500")
    with httpx.Client() as http:
        r = http.post(f"{base}/v1/chat/completions", json={"messages": QUESTION})
        assert r.status_code == 500 and "RuntimeError: boom" in r.json()["error"]["message"]
        engine.reply = lambda _call: "Paris"
        assert http.post(f"{base}/v1/chat/completions", json={"messages": QUESTION}).status_code == 200
    assert _responses_counted(base, "500") == before + 1


@pytest.mark.parametrize("route, body, param", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a\ud800b"}]}, "messages.0.content"),
    ("/v1/chat/completions", {"messages": QUESTION, "model": "m\ud800", "stream": True}, "model"),
    ("/generate", {"text": "hi", "rid": "r\udc00", "stream": True}, "rid"),
    ("/v1/completions", {"prompt": "x", "stop": ["\ud800"]}, "stop.0"),
])
def test_a_lone_surrogate_is_a_400_naming_its_field(served, route, body, param):
    """A lone UTF-16 surrogate is no Unicode text: the tokenizer failed with a message naming nothing, and a
    stream's first chunk cut the connection after its 200."""
    _, base = served
    raw = json.dumps(body)  # keeps the escape: `\ud800` alone
    r = httpx.post(f"{base}{route}", content=raw, headers={"content-type": "application/json"})
    _error(r, 400, param=param, match="unpaired UTF-16 surrogate")


def test_a_tool_schema_nested_past_the_depth_limit_is_a_400_at_any_depth(served):
    _, base = served
    schema: dict = {"type": "object"}
    for _ in range(400):  # past the limit (64) and past what jsonschema's metaschema check can recurse through
        schema = {"type": "object", "properties": {"a": schema}}
    tools = [{"type": "function", "function": {"name": "f", "parameters": schema}}]
    r = httpx.post(f"{base}/v1/chat/completions", json={"messages": QUESTION, "tools": tools, "tool_choice": "required"})
    _error(r, 400, param="tools", match="depth")
