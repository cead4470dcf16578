"""SGLang / vLLM server compatibility: routes SGLang serves, request fields its clients send, response
fields they read. Routing and shapes run against the scripted engine (tests/fake_engine.py); the few
checks whose meaning needs a model run the real Engine on a tiny model (conftest's engine64,
reasoning_engine)."""
from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from fake_engine import FakeEngine
from server_fixtures import error_response as _error, running_server, sse_events

QUESTION = [{"role": "user", "content": "Give me the capital of France."}]


@pytest.fixture(scope="module")
def hybrid():
    """A hybrid family (qwen3): thinking is on unless the request turns it off."""
    engine = FakeEngine(reasoning_parser="qwen3")
    with running_server(engine) as base:
        yield engine, base


def _client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)


def _chat(base: str, **body) -> httpx.Response:
    return httpx.post(f"{base}/v1/chat/completions", json={"messages": QUESTION, **body})


# ---------------------------------------------------------------- routes SGLang serves

def test_flush_cache_get_and_post_answer_as_sglang(served):
    engine, base = served
    for method in ("GET", "POST"):
        r = httpx.request(method, f"{base}/flush_cache")
        assert r.status_code == 200 and r.text.startswith("Cache flushed.\n"), r.text
    assert engine.flushes >= 2
    engine.busy = True  # requests in flight: nothing is flushed
    r = httpx.post(f"{base}/flush_cache")
    assert r.status_code == 400 and "not flushed" in r.text


@pytest.mark.parametrize("prefix", ["", "/v1"])
def test_tokenize_and_detokenize(served, prefix):
    engine, base = served
    tok = engine.tokenizer
    r = httpx.post(f"{base}{prefix}/tokenize", json={"prompt": "Hello world"}).json()
    assert r == {"tokens": tok.encode("Hello world"), "count": len(tok.encode("Hello world")),
                 "max_model_len": engine.context_length}
    plain = httpx.post(f"{base}{prefix}/tokenize", json={"prompt": ["a b", "c"], "add_special_tokens": False}).json()
    assert plain["tokens"] == [tok.encode("a b", add_special_tokens=False), tok.encode("c", add_special_tokens=False)]
    assert plain["count"] == [len(t) for t in plain["tokens"]]
    text = httpx.post(f"{base}{prefix}/detokenize", json={"tokens": plain["tokens"][0]}).json()
    assert text == {"text": "a b", "prompt": "a b"}  # SGLang's key and vLLM's
    both = httpx.post(f"{base}{prefix}/detokenize", json={"tokens": plain["tokens"]}).json()
    assert both == {"text": ["a b", "c"], "prompt": ["a b", "c"]}


def test_tokenize_messages_gives_the_chat_prompt_ids(served):
    engine, base = served
    kwargs = {"chat_template_kwargs": {"enable_thinking": False}}
    r = httpx.post(f"{base}/tokenize", json={"messages": QUESTION, **kwargs}).json()
    assert _chat(base, **kwargs).status_code == 200
    assert r["tokens"] == engine.calls[-1]["input_ids"] and r["count"] == len(r["tokens"])


@pytest.mark.parametrize("path, body, param", [
    ("/tokenize", {}, "prompt"),
    ("/tokenize", {"prompt": "x", "messages": QUESTION}, "prompt"),
    ("/tokenize", {"messages": []}, "messages"),
    ("/detokenize", {"tokens": [1, -2]}, "tokens"),
    ("/detokenize", {"tokens": [1, 10**9]}, "tokens"),  # past the vocabulary
    ("/detokenize", {"tokens": "abc"}, "tokens"),
])
def test_bad_tokenize_bodies_are_400_naming_the_field(served, path, body, param):
    _, base = served
    _error(httpx.post(f"{base}{path}", json=body), 400, param)


def test_models_retrieve_by_id(served):
    _, base = served
    model = _client(base).models.retrieve("fake-model")
    assert model.id == "fake-model" and model.object == "model"
    with pytest.raises(openai.NotFoundError):
        _client(base).models.retrieve("other-model")
    err = _error(httpx.get(f"{base}/v1/models/org/other"), 404, "model", "does not exist")
    assert err["code"] == "model_not_found"


def test_generate_takes_put_as_well_as_post(served):
    _, base = served
    r = httpx.put(f"{base}/generate", json={"text": "hi", "sampling_params": {"max_new_tokens": 4}})
    assert r.status_code == 200 and r.json()["text"] == "Paris"


def test_ping_and_get_load(served):
    engine, base = served
    assert httpx.get(f"{base}/ping").status_code == 200
    engine.busy = True
    load = httpx.get(f"{base}/get_load").json()
    assert isinstance(load, list) and len(load) == 1
    assert load[0]["num_reqs"] == 3 and load[0]["num_waiting_reqs"] == 1 and load[0]["num_tokens"] == 48


# ---------------------------------------------------------------- abort_all, model info

def test_abort_all_needs_no_rid(served):
    engine, base = served
    r = httpx.post(f"{base}/abort_request", json={"abort_all": True})
    assert (r.status_code, r.content) == (200, b"")  # SGLang answers an empty 200
    assert engine.aborted == ["*"]
    assert httpx.post(f"{base}/abort_request", json={"rid": "r-2"}).status_code == 200
    assert engine.aborted == ["*", "r-2"]
    _error(httpx.post(f"{base}/abort_request", json={"abort_all": False}), 400, "rid")


def test_get_model_info_comes_from_the_engine_and_server_info_adds_the_tool_parser(served):
    _, base = served
    info = httpx.get(f"{base}/get_model_info").json()
    assert info == {"model_path": "fake/model-path", "tokenizer_path": "fake/model-path", "is_generation": True}
    server = httpx.get(f"{base}/get_server_info").json()
    assert server["served_model_name"] == "fake-model" and server["context_length"] == 512
    assert server["reasoning_parser"] == "deepseek-r1" and server["tool_call_parser"] == "hermes"


def test_null_means_the_default(served):
    """Audit 29: clients that send unset options as null got 400s (`n: Input should be a valid integer`); the
    OpenAI API documents them nullable and vLLM takes them. A required field is still required."""
    engine, base = served
    for field in ("n", "logprobs", "stream", "parallel_tool_calls", "tool_choice", "stream_options", "top_logprobs"):
        r = _chat(base, **{field: None})
        assert r.status_code == 200 and r.json()["object"] == "chat.completion", (field, r.text)
    r = httpx.post(f"{base}/v1/completions", json={"prompt": "x", "echo": None, "n": None, "logprobs": None})
    assert r.status_code == 200 and len(r.json()["choices"]) == 1
    assert engine.calls[-1]["sampling_params"]["max_new_tokens"] == 16  # completions' default when left out
    r = httpx.post(f"{base}/v1/completions", json={"prompt": "x", "max_tokens": None})
    assert r.status_code == 200 and "max_new_tokens" not in engine.calls[-1]["sampling_params"]  # null: no limit
    with httpx.stream("POST", f"{base}/v1/chat/completions", json={
            "messages": QUESTION, "stream": True, "stream_options": {"include_usage": None}}) as r:
        events = sse_events(r)
    assert events[-1] == "[DONE]" and not any(e.get("usage") for e in events[:-1])  # null: no usage chunk
    _error(httpx.post(f"{base}/v1/chat/completions", json={"messages": None}), 400, "messages")


def test_sglangs_newer_info_routes_and_keys(served):
    """Audit 29: /model_info, /server_info and /get_weight_version were 404; SGLang's docs read the first two,
    its benchmarks index server_info["internal_states"][0]."""
    _, base = served
    assert httpx.get(f"{base}/model_info").json() == httpx.get(f"{base}/get_model_info").json()
    assert httpx.get(f"{base}/server_info").json()["model_name"] == "fake-model"
    assert httpx.get(f"{base}/get_weight_version").json() == {"weight_version": "default"}


def test_health_generate_serves_a_token_and_fails_a_loop_that_makes_no_progress():
    """Audit 29: /health_generate only asked whether the loop thread lived; SGLang's generates a token, so a
    probe on it catches an engine that is alive but stuck."""
    engine = FakeEngine()
    engine.args.health_generate_timeout = 0.3
    with running_server(engine) as base:
        assert httpx.get(f"{base}/health_generate").status_code == 200
        probe = engine.calls[-1]
        assert probe["input_ids"] == [0] and probe["sampling_params"]["max_new_tokens"] == 1
        engine.chunk_delay_s = 1.0  # its answer takes 20 s: stuck, as far as a 0.3 s probe can tell
        r = httpx.get(f"{base}/health_generate", timeout=10)
        assert r.status_code == 503 and "no token" in r.json()["error"]["message"]
        assert engine.aborted[-1].startswith("HEALTH_CHECK_")  # the probe's request does not linger
        engine.chunk_delay_s, engine.overloaded = 0.0, True  # a full queue, and no step seen: not healthy
        assert httpx.get(f"{base}/health_generate", timeout=10).status_code == 503
        engine.overloaded, engine.healthy = False, False
        assert httpx.get(f"{base}/health_generate", timeout=10).status_code == 503


def test_generate_refuses_sglang_fields_it_would_have_ignored(served):
    """Audit 29: lora_path, image_data and custom_logit_processor were logged and dropped: the answer came
    from the base model without the adapter or the image. The values that ask for nothing still pass."""
    engine, base = served
    for field, value in (("lora_path", "my-adapter"), ("image_data", "https://x/cat.png"),
                         ("custom_logit_processor", "{}"), ("input_embeds", [[0.1, 0.2]]),
                         ("lora_path", [None, "a"])):
        _error(httpx.post(f"{base}/generate", json={"text": ["a", "b"], field: value}), 400, field, field)
    calls = len(engine.calls)
    r = httpx.post(f"{base}/generate", json={"text": "a", "lora_path": None, "image_data": None, "session_params": None})
    assert r.status_code == 200 and len(engine.calls) == calls + 1


def test_separate_reasoning_splits_as_sglang_names_it(served):
    _, base = served
    r = httpx.post(f"{base}/separate_reasoning", json={"text": "<think>2+2=4</think>The answer is 4.",
                                                      "reasoning_parser": "deepseek-r1"})
    assert r.json() == {"reasoning_text": "2+2=4", "text": "The answer is 4."}
    # deepseek-r1's prompt opens the thinking: text without the start marker is reasoning up to the end marker
    r = httpx.post(f"{base}/separate_reasoning", json={"text": "hmm</think>Paris"})  # the server's parser
    assert r.json() == {"reasoning_text": "hmm", "text": "Paris"}
    r = httpx.post(f"{base}/separate_reasoning", json={"text": "Paris", "reasoning_parser": "qwen3"})
    assert r.json() == {"reasoning_text": "", "text": "Paris"}  # qwen3 thinks only where it opens <think>
    _error(httpx.post(f"{base}/separate_reasoning", json={"text": "x", "reasoning_parser": "nope"}), 400,
           "reasoning_parser", "unknown parser")
    _error(httpx.post(f"{base}/separate_reasoning", json={}), 400, "text")


def test_parse_function_call_reads_calls_as_sglang_returns_them(served):
    _, base = served
    tools = [{"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}},
             {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    text = 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' \
           '\n<tool_call>\n{"name": "undeclared", "arguments": {}}\n</tool_call>'
    r = httpx.post(f"{base}/parse_function_call", json={"text": text, "tools": tools, "tool_call_parser": "qwen25"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["normal_text"] == "Let me look."
    assert body["calls"] == [{"tool_index": 1, "name": "get_weather", "parameters": '{"city": "Paris"}'}]
    r = httpx.post(f"{base}/parse_function_call", json={"text": "no call here", "tools": tools})
    assert r.json() == {"normal_text": "no call here", "calls": []}
    _error(httpx.post(f"{base}/parse_function_call", json={"text": text, "tools": tools, "tool_call_parser": "x"}),
           400, "tool_call_parser", "unknown tool-call parser")


# ---------------------------------------------------------------- usage

def test_usage_has_reasoning_tokens_at_the_top_and_in_the_details(served):
    _, base = served
    usage = _chat(base).json()["usage"]
    assert usage["reasoning_tokens"] == 3 == usage["completion_tokens_details"]["reasoning_tokens"]
    resp = _client(base).chat.completions.create(model="m", messages=QUESTION)
    assert resp.usage.completion_tokens_details.reasoning_tokens == 3


def test_continuous_usage_stats_put_each_choices_usage_so_far_on_its_chunks(served):
    engine, base = served
    engine.reply = lambda call: "Let me think about it.</think>\n\nParis, of course"
    with httpx.stream("POST", f"{base}/v1/chat/completions", json={
            "messages": QUESTION, "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}) as r:
        events = sse_events(r)[:-1]
    assert all("usage" in e for e in events)
    counts = [e["usage"]["completion_tokens"] for e in events]
    assert counts == sorted(counts) and counts[0] == 0 and counts[-1] > 0
    assert all(e["usage"]["prompt_tokens"] == 7 for e in events[1:])
    assert events[-2]["usage"] == events[-1]["usage"]  # the last chunk's usage is the final one
    with httpx.stream("POST", f"{base}/v1/completions", json={
            "prompt": ["a", "b"], "n": 2, "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}) as r:
        *events, total = sse_events(r)[:-1]
    # each chunk's usage is its own choice's (SGLang, vLLM): its own prompt, the tokens it has written
    assert all(e["usage"]["prompt_tokens"] == 7 for e in events)
    last = {e["choices"][0]["index"]: e["usage"]["completion_tokens"] for e in events}
    assert sorted(last) == [0, 1, 2, 3] and sum(last.values()) == total["usage"]["completion_tokens"]
    assert total["usage"]["prompt_tokens"] == 14  # the whole request: two prompts, counted once each


def test_plain_streams_carry_no_usage_on_their_chunks(served):
    _, base = served
    with httpx.stream("POST", f"{base}/v1/chat/completions", json={"messages": QUESTION, "stream": True}) as r:
        events = sse_events(r)[:-1]
    assert not any("usage" in e for e in events)


# ---------------------------------------------------------------- thinking controls

@pytest.mark.parametrize("extra", [
    {"reasoning_effort": "none"},
    {"reasoning": {"enabled": False}},
    {"reasoning": {"effort": "none"}},
    {"chat_template_kwargs": {"enable_thinking": False}},
])
def test_thinking_off_switches_all_act_as_enable_thinking_false(hybrid, extra):
    engine, base = hybrid
    assert _chat(base, **extra).status_code == 200
    call = engine.calls[-1]
    assert call["reasoning_start"] == "answer"
    assert engine.tokenizer.decode(call["input_ids"]).endswith("<think>\n\n</think>\n\n")  # the template's empty block


@pytest.mark.parametrize("extra", [
    {},
    {"reasoning_effort": "high"},
    {"reasoning": {"enabled": True}},
    {"reasoning_effort": "none", "chat_template_kwargs": {"enable_thinking": True}},  # the explicit switch wins
])
def test_thinking_stays_on_otherwise(hybrid, extra):
    engine, base = hybrid
    assert _chat(base, **extra).status_code == 200
    assert engine.calls[-1]["reasoning_start"] == "open"


@pytest.mark.parametrize("extra, param", [
    ({"reasoning_effort": "turbo"}, "reasoning_effort"),
    ({"reasoning_effort": True}, "reasoning_effort"),
    ({"reasoning": "off"}, "reasoning"),
    ({"reasoning": {"effort": 5}}, "reasoning.effort"),
    ({"reasoning": {"enabled": 3}}, "reasoning.enabled"),
])
def test_bad_thinking_switches_are_400_naming_the_field(hybrid, extra, param):
    _, base = hybrid
    _error(_chat(base, **extra), 400, param)


@pytest.mark.parametrize("extra, name", [({"max_thinking_tokens": 5}, None), ({"thinking_budget": 5}, None),
                                         ({"max_thinking_tokens": 5, "max_reasoning_tokens": 6}, "max_thinking_tokens"),
                                         ({"thinking_budget": 5, "max_reasoning_tokens": 6}, "thinking_budget")])
def test_chat_thinking_budget_spellings(served, extra, name):
    engine, base = served
    r = _chat(base, **extra)
    if name is None:
        assert r.status_code == 200 and engine.calls[-1]["sampling_params"]["max_reasoning_tokens"] == 5
    else:
        _error(r, 400, name, "conflicts")


def test_generate_max_thinking_tokens_caps_every_prompt(served):
    engine, base = served
    assert httpx.post(f"{base}/generate", json={"text": "x", "max_thinking_tokens": 4}).status_code == 200
    assert engine.calls[-1]["sampling_params"] == {"max_reasoning_tokens": 4}
    body = {"text": ["a", "b"], "max_thinking_tokens": 4,
            "sampling_params": [{"max_new_tokens": 8}, {"max_new_tokens": 9}]}
    assert httpx.post(f"{base}/generate", json=body).status_code == 200
    assert engine.calls[-1]["sampling_params"] == [{"max_new_tokens": 8, "max_reasoning_tokens": 4},
                                                   {"max_new_tokens": 9, "max_reasoning_tokens": 4}]
    assert body["sampling_params"][0] == {"max_new_tokens": 8}
    _error(httpx.post(f"{base}/generate", json={"text": "x", "max_thinking_tokens": 4,
                                                "sampling_params": {"max_reasoning_tokens": 2}}),
           400, "max_thinking_tokens", "conflicts")
    _error(httpx.post(f"{base}/generate", json={"text": "x", "max_thinking_tokens": -1}), 400, "max_thinking_tokens")


# ---------------------------------------------------------------- chat extras

def test_chat_input_ids_are_the_prompt(served):
    engine, base = served
    ids = engine.tokenizer.encode("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    r = _chat(base, input_ids=ids, return_prompt_token_ids=True)
    assert r.status_code == 200, r.text
    assert engine.calls[-1]["input_ids"] == ids
    choice = r.json()["choices"][0]
    assert choice["prompt_token_ids"] == ids and "token_ids" not in choice
    _error(_chat(base, input_ids=[]), 400, "input_ids")
    _error(_chat(base, input_ids=[1, -5]), 400, "input_ids")


def test_return_token_ids(served):
    engine, base = served
    plain = _chat(base).json()["choices"][0]
    assert "token_ids" not in plain and "prompt_token_ids" not in plain
    choice = _chat(base, return_token_ids=True).json()["choices"][0]
    assert choice["token_ids"] == engine.tokenizer.encode("Let me think.</think>\n\nParis", add_special_tokens=False)
    assert choice["prompt_token_ids"] == engine.calls[-1]["input_ids"]  # SGLang: with return_token_ids too
    for name in ("return_token_ids", "return_prompt_token_ids"):
        _error(_chat(base, stream=True, **{name: True}), 400, name, "stream")


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"messages": QUESTION, "return_hidden_states": True}),
    ("/v1/chat/completions", {"messages": QUESTION, "return_hidden_states": "last"}),
    ("/v1/completions", {"prompt": "x", "return_hidden_states": True}),
    ("/generate", {"text": "x", "return_hidden_states": True}),
])
def test_return_hidden_states_is_refused_not_ignored(served, path, body):
    engine, base = served
    _error(httpx.post(f"{base}{path}", json=body), 400, "return_hidden_states", "not supported")
    assert not engine.calls
    assert httpx.post(f"{base}{path}", json={**body, "return_hidden_states": False}).status_code == 200


def test_include_stop_str_in_output_reaches_the_engine_as_itself(served):
    """vLLM's keeps the stop string (not the rest of its token): not SGLang's no_stop_trim, which trims nothing."""
    engine, base = served
    assert _chat(base, stop=["x"], include_stop_str_in_output=True).status_code == 200
    assert engine.calls[-1]["sampling_params"]["include_stop_str_in_output"] is True
    assert "no_stop_trim" not in engine.calls[-1]["sampling_params"]
    assert _chat(base, stop=["x"], include_stop_str_in_output=False).status_code == 200
    assert "include_stop_str_in_output" not in engine.calls[-1]["sampling_params"]


def test_stop_regex_reaches_the_engine_from_both_openai_routes(served):
    engine, base = served
    assert _chat(base, stop_regex="[0-9]{3}").status_code == 200
    assert engine.calls[-1]["sampling_params"]["stop_regex"] == "[0-9]{3}"
    r = httpx.post(f"{base}/v1/completions", json={"prompt": "hi", "stop_regex": ["a+b", "c"]})
    assert r.status_code == 200 and engine.calls[-1]["sampling_params"]["stop_regex"] == ["a+b", "c"]


# ---------------------------------------------------------------- /generate rids

def test_generate_batch_with_a_string_rid_passes_it_to_the_engine(served):
    engine, base = served
    r = httpx.post(f"{base}/generate", json={"text": ["a", "b"], "rid": "batch-rid"})
    assert r.status_code == 200 and len(r.json()) == 2
    assert engine.calls[-1]["rid"] == "batch-rid"
    assert httpx.post(f"{base}/generate", json={"text": ["a", "b"], "rid": ["r1", "r2"]}).status_code == 200
    assert engine.calls[-1]["rid"] == ["r1", "r2"]
    _error(httpx.post(f"{base}/generate", json={"text": ["a", "b"], "rid": ["r1"]}), 400, "rid", "one id per prompt")


def test_a_client_leaving_a_batch_stream_aborts_each_item_id(served):
    """The engine names a string rid's batch items rid_0, rid_1, ... (SGLang's expansion): those are aborted."""
    engine, base = served
    engine.chunk_delay_s, engine.reply = 0.1, (lambda call: "x" * 300)
    try:
        with httpx.stream("POST", f"{base}/generate", json={"text": ["a", "b"], "rid": "gone", "stream": True}) as r:
            for _ in zip(range(3), r.iter_lines()):
                pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not {"gone_0", "gone_1"} <= set(engine.aborted):
            time.sleep(0.05)
        assert {"gone_0", "gone_1"} <= set(engine.aborted), engine.aborted
    finally:
        engine.chunk_delay_s = 0.0


# ---------------------------------------------------------------- the real engine

@pytest.fixture(scope="module")
def real64(engine64):
    with running_server(engine64) as base:
        yield engine64, base


def _tool(name: str, prop: dict) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": {
        "type": "object", "properties": {"x": prop}, "required": ["x"]}}}


@pytest.mark.parametrize(("prop", "reason"), [
    ({"type": "strin"}, "'strin' is not valid.*at properties.x.type"),
    ({"type": "string", "minLength": -1}, "-1 is less than the minimum of 0.*at properties.x.minLength"),
])
def test_a_tool_whose_schema_is_not_one_is_named(real64, prop, reason):
    """The tools' schemas make one structural tag; its compile error named `tools` and quoted the grammar
    libraries on the combined tag. It names the tool (OpenAI's `tools[i].function.parameters`, in this
    server's dotted spelling) and says what in its schema is wrong, in every tool_choice mode."""
    _, base = real64
    tools = [_tool("fine", {"type": "string"}), _tool("broken", prop)]
    named = {"type": "function", "function": {"name": "broken"}}
    for choice in ("auto", "required", named):
        r = _chat(base, tools=tools, tool_choice=choice, max_tokens=4)
        _error(r, 400, "tools.1.function.parameters",
               f"^tools.1.function.parameters: not a valid JSON schema for function 'broken': {reason}")
    # the same tool list without it is served; a pattern in ECMA's own syntax is not blamed
    ok = _tool("dated", {"type": "string", "pattern": "^(?<year>[0-9]{4})$"})
    assert _chat(base, tools=[tools[0], ok], tool_choice="required", max_tokens=4).status_code == 200


def test_a_tool_is_blamed_only_where_no_draft_reads_its_schema(real64):
    """Audit 21: a draft-4 `exclusiveMaximum: true` (or a draft-7 tuple `items`) is a JSON Schema; when
    another tool's pattern (a back-reference the grammar libraries refuse) failed the compile, that tool was
    blamed ("True is not of type 'number'"). The library's message stands, naming the tools."""
    _, base = real64
    old = _tool("old", {"type": "integer", "maximum": 5, "exclusiveMaximum": True})
    tuple_items = _tool("pair", {"type": "array", "items": [{"type": "string"}, {"type": "integer"}]})
    look = _tool("look", {"type": "string", "pattern": "(a)\\1"})
    for tools in ([old, look], [tuple_items, look]):
        _error(_chat(base, tools=tools, tool_choice="required", max_tokens=4), 400, "tools", "^tools: ")


def test_real_engine_flush_cache_and_tokenize_match_the_chat_prompt(real64):
    engine, base = real64
    r = httpx.get(f"{base}/flush_cache", timeout=30)
    assert r.status_code == 200 and r.text.startswith("Cache flushed.")
    counted = httpx.post(f"{base}/v1/tokenize", json={"messages": QUESTION}).json()
    usage = _chat(base, max_tokens=2, temperature=0).json()["usage"]
    assert counted["count"] == usage["prompt_tokens"] and counted["max_model_len"] == engine.context_length
    info = httpx.get(f"{base}/get_model_info").json()
    assert info["model_path"] == engine.args.model_path and "tool_call_parser" in httpx.get(f"{base}/server_info").json()


def test_real_engine_max_thinking_tokens_caps_the_thinking(reasoning_engine):
    with running_server(reasoning_engine) as base:
        out = httpx.post(f"{base}/generate", timeout=60, json={
            "text": "Question:", "require_reasoning": True, "max_thinking_tokens": 5,
            "sampling_params": {"temperature": 0, "max_new_tokens": 48, "regex": "(Paris|London)"}}).json()
    meta = out["meta_info"]
    assert 5 <= meta["reasoning_tokens"] <= 5 + 4 and meta["content"] in ("Paris", "London")


# ---------------------------------------------------------------- request shapes SGLang accepts (audit 16)

def test_a_json_schema_response_format_without_its_wrapper_is_taken_as_sglang_takes_it(served):
    engine, base = served
    schema = {"title": "City", "type": "object", "properties": {"name": {"type": "string"}}}
    r = _chat(base, response_format={"type": "json_schema", "schema": schema, "strict": True})
    assert r.status_code == 200, r.text
    import json as _json

    assert _json.loads(engine.calls[-1]["sampling_params"]["json_schema"]) == schema


def test_a_bare_json_schema_may_be_json_text(served):
    engine, base = served
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    r = _chat(base, response_format={"type": "json_schema", "schema": json.dumps(schema)})
    assert r.status_code == 200, r.text
    assert json.loads(engine.calls[-1]["sampling_params"]["json_schema"]) == schema


def test_roles_in_another_case_are_read_as_sglang_reads_them(served):
    engine, base = served
    r = _chat(base, messages=[{"role": "System", "content": "Be brief."}, {"role": "User", "content": "Hi"}])
    assert r.status_code == 200, r.text
    assert "Be brief." in engine.tokenizer.decode(engine.calls[-1]["input_ids"])
    r = httpx.post(f"{base}/v1/responses", json={"input": [{"role": "User", "content": "Hi"}], "max_output_tokens": 5})
    assert r.status_code == 200, r.text


def test_a_completions_rid_list_names_each_prompt(served):
    engine, base = served
    r = httpx.post(f"{base}/v1/completions", json={"prompt": ["a", "b"], "max_tokens": 3, "rid": ["r-a", "r-b"]})
    assert r.status_code == 200, r.text
    assert engine.calls[-1]["rid"] == ["r-a", "r-b"]
    _error(httpx.post(f"{base}/v1/completions", json={"prompt": ["a", "b"], "max_tokens": 3, "rid": ["r-a"]}),
           400, "rid", "one id per prompt")
    r = httpx.post(f"{base}/v1/completions", json={"prompt": "a", "max_tokens": 3, "rid": ["only"]})
    assert r.status_code == 200 and engine.calls[-1]["rid"] == "only"


def test_a_rid_list_with_a_duplicate_or_empty_id_is_a_400_naming_rid(engine64):
    with running_server(engine64) as base:
        for rids in (["x", "x"], ["", "y"]):
            r = httpx.post(f"{base}/v1/completions", json={"prompt": ["a", "b"], "max_tokens": 2, "rid": rids})
            _error(r, 400, "rid")


def test_meta_info_carries_sglang_s_keys_and_a_native_param_error_its_full_name(engine64):
    """The seed page's outputs show `weight_version` and `total_retractions` (we had `num_retractions`); a
    bad sampling param on /generate is named under `sampling_params.`, as its message and constraint errors
    on that route are."""
    out = engine64.generate("Hello", {"max_new_tokens": 2})
    assert out["meta_info"]["weight_version"] == "default" and out["meta_info"]["total_retractions"] == 0
    with running_server(engine64) as base:
        r = httpx.post(f"{base}/generate", json={"text": "Hi", "sampling_params": {"temperature": "hot"}})
        _error(r, 400, "sampling_params.temperature")


def test_an_image_part_is_refused_by_name_not_dropped(served):
    """Audit 16: image_url parts were dropped silently and the answer made up without them (vLLM refuses
    images for a text-only model)."""
    _, base = served
    parts = [{"type": "text", "text": "What is in this picture?"},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    err = _error(_chat(base, messages=[{"role": "user", "content": parts}]), 400, match="image_url")
    assert err["param"].startswith("messages")


def test_model_info_carries_sglang_s_keys_and_no_others(engine64):
    """Audit 32: SGLang's native-API docs check the key set; served_model_name, context_length and the
    parsers made it fail (they are in get_server_info)."""
    info = engine64.get_model_info()
    assert info["weight_version"] == "default" and info["model_type"] == "qwen2"
    assert info["architectures"] == ["Qwen2ForCausalLM"] and "preferred_sampling_params" in info
    assert set(info) == {"model_path", "tokenizer_path", "is_generation", "preferred_sampling_params",
                         "weight_version", "has_image_understanding", "has_audio_understanding", "model_type",
                         "architectures"}
    server = engine64.get_server_info()
    assert server["tp_size"] == 1 and server["context_length"] == engine64.context_length


def test_errors_name_the_field_as_the_request_spelled_it(real64):
    """Audit 29: `min_tokens` past `max_tokens` named `min_new_tokens`, and a bad or empty /v1/completions
    prompt named nothing (param null): a client could not map the error to its input."""
    _, base = real64
    _error(_chat(base, max_tokens=2, min_tokens=5), 400, "min_tokens", "min_tokens: must be")
    for prompt in ([999999999], ""):
        _error(httpx.post(f"{base}/v1/completions", json={"prompt": prompt, "max_tokens": 2}), 400, "prompt")
    _error(httpx.post(f"{base}/generate", json={"input_ids": [10**9]}), 400, "input_ids")
    _error(httpx.post(f"{base}/generate", json={"text": ""}), 400, "text")


def test_minimax_append_think_keeps_the_reasoning_in_content_after_the_templates_think():
    """SGLang's minimax-append-think: no reasoning_content; the content is the whole output with the `<think>`
    the template wrote before it, streamed and whole alike (the grammar still begins after `</think>`)."""
    engine = FakeEngine(reasoning_parser="minimax-append-think")
    with running_server(engine) as base:
        whole = _chat(base).json()["choices"][0]["message"]
        assert whole["reasoning_content"] is None and whole["content"] == "<think>Let me think.</think>\n\nParis"
        assert engine.calls[-1]["reasoning_start"] == "reasoning"
        with httpx.stream("POST", f"{base}/v1/chat/completions", json={"messages": QUESTION, "stream": True}) as r:
            deltas = [e["choices"][0]["delta"] for e in sse_events(r)[:-1] if e["choices"]]
        assert "".join(d.get("content") or "" for d in deltas) == whole["content"]
        assert not any(d.get("reasoning_content") for d in deltas)
        r = httpx.post(f"{base}/separate_reasoning", json={"text": "Hm.</think>Paris"})
        assert r.json() == {"reasoning_text": "", "text": "<think>Hm.</think>Paris"}


def test_an_assistant_refusal_part_is_read_as_its_text(served):
    """Audit (client libraries): the OpenAI SDK's assistant messages may carry a `refusal` content part; a
    conversation replayed with one was a 400."""
    engine, base = served
    history = [{"role": "user", "content": "Say something rude."},
               {"role": "assistant", "content": [{"type": "refusal", "refusal": "I will not do that."}]},
               {"role": "user", "content": "Then say hello."}]
    assert _chat(base, messages=history).status_code == 200
    assert "I will not do that." in engine.tokenizer.decode(engine.calls[-1]["input_ids"])
