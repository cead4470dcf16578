"""SGLang's documentation pages run against thinkform (the audit of its Reasoning Parser, Tool Parser, OpenAI
APIs, Sampling Parameters and Native APIs pages): what their cells read from a stream's deltas, the request fields
they send that thinkform cannot honour, their offline parsers, and the native routes thinkform does not serve.
Server checks run against the scripted engine (tests/fake_engine.py)."""
from __future__ import annotations

import json
import subprocess
import sys

import httpx
import openai
import pytest

from fake_engine import FakeEngine
from server_fixtures import error_response, running_server, sse_events

QUESTION = [{"role": "user", "content": "What is 1+3?"}]


def _stream_deltas(base: str, **body) -> list[dict]:
    with httpx.stream("POST", f"{base}/v1/chat/completions",
                      json={"messages": QUESTION, "stream": True, **body}) as r:
        assert r.status_code == 200, r.read()
        return [e["choices"][0]["delta"] for e in sse_events(r)[:-1] if e["choices"]]


# ---------------------------------------------------------------- 1. reasoning_content in every stream delta

@pytest.mark.parametrize("extra", [{}, {"stream_reasoning": False}, {"separate_reasoning": False},
                                   {"include_reasoning": False}])
def test_every_stream_delta_carries_reasoning_content(served, extra):
    """SGLang writes `"reasoning_content": null|str` in every delta (the role chunk, content chunks, the final
    chunk); the Reasoning Parser page reads `delta.reasoning_content`, an AttributeError where it is left out."""
    _, base = served
    deltas = _stream_deltas(base, **extra)
    assert len(deltas) >= 3
    assert all("reasoning_content" in d for d in deltas), deltas
    assert deltas[0] == {"role": "assistant", "content": "", "reasoning_content": None}
    assert deltas[-1] == {"reasoning_content": None}  # the finish chunk's
    # vLLM's alias stays as it was: beside a reasoning text only
    assert all(d.get("reasoning") == d["reasoning_content"] for d in deltas if "reasoning" in d)
    assert all("reasoning" not in d for d in deltas if d["reasoning_content"] is None)
    reasoning = "".join(d["reasoning_content"] or "" for d in deltas)
    content = "".join(d.get("content") or "" for d in deltas)
    if extra.get("separate_reasoning") is False:
        assert reasoning == "" and "Let me think." in content and content.endswith("Paris")
    elif extra.get("include_reasoning") is False:
        assert reasoning == "" and content == "Paris"
    else:
        assert reasoning == "Let me think." and content == "Paris"


def test_reasoning_parser_page_stream_loop_runs_unchanged(served):
    """The page's own loop, through the OpenAI client."""
    _, base = served
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="None", max_retries=0)
    stream = client.chat.completions.create(model="m", messages=QUESTION, temperature=0.6, top_p=0.95, stream=True,
                                            max_tokens=32, extra_body={"separate_reasoning": True})
    reasoning_content, content = "", ""
    for chunk in stream:
        if chunk.choices[0].delta.content:
            content += chunk.choices[0].delta.content
        if chunk.choices[0].delta.reasoning_content:
            reasoning_content += chunk.choices[0].delta.reasoning_content
    assert (reasoning_content, content) == ("Let me think.", "Paris")


# ---------------------------------------------------------------- 2. SGLang fields refused, not ignored

_ROUTES = [("/v1/chat/completions", {"messages": QUESTION}), ("/v1/completions", {"prompt": "The capital is"})]


@pytest.mark.parametrize("path, body", _ROUTES)
@pytest.mark.parametrize("field, value, extra", [
    ("lora_path", "adapter_a", {}),
    ("lora_path", [None, "adapter_a"], {}),
    ("custom_logit_processor", '{"callable": "x"}', {"custom_params": {"token_id": 5}}),
    ("custom_logit_processor", ['{"callable": "x"}'], {}),
])
def test_sglang_fields_for_what_is_missing_are_a_400_naming_them(served, path, body, field, value, extra):
    """The OpenAI APIs page's `extra_body={"lora_path": ...}` and the Sampling Parameters page's custom logit
    processor were answered 200 by the base model, with a log line only; /generate refused them already."""
    engine, base = served
    r = httpx.post(f"{base}{path}", json={"model": "m", "max_tokens": 4, **body, field: value, **extra})
    error_response(r, 400, field, f"{field}: .*not supported")
    assert not engine.calls


@pytest.mark.parametrize("path, body", _ROUTES)
def test_sglang_fields_that_ask_for_nothing_pass(served, path, body):
    engine, base = served
    for extra in ({"lora_path": None}, {"lora_path": [None]}, {"custom_logit_processor": None},
                  {"custom_logit_processor": None, "custom_params": {"thinking_budget": 4}},
                  {"model": "fake-model"}, {"model": "some-model:"}, {"model": "some-model:  "}):
        r = httpx.post(f"{base}{path}", json={"max_tokens": 4, **body, **extra})
        assert r.status_code == 200, (extra, r.text)


@pytest.mark.parametrize("path, body", _ROUTES)
def test_a_model_name_with_a_colon_is_served_as_any_other(served, path, body):
    """Any model name is taken, and an Ollama-style `qwen3:8b` is no LoRA request (SGLang's `base:adapter`
    reading would refuse names clients commonly send)."""
    _, base = served
    assert httpx.post(f"{base}{path}", json={"model": "qwen3:8b", "max_tokens": 4, **body}).status_code == 200


# ---------------------------------------------------------------- 3. SGLang's offline parsers

def test_parsers_import_from_thinkform_without_torch():
    """`from thinkform import ReasoningParser, FunctionCallParser`, and the reasoning parser loads no torch."""
    code = ("import sys; from thinkform import ReasoningParser, FunctionCallParser; "
            "assert ReasoningParser('deepseek-r1').parse_non_stream('a</think>b') == ('a', 'b'); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_reasoning_parser_non_stream_as_sglang():
    from thinkform import ReasoningParser

    # the page's cell: deepseek-r1's output without the start marker its template wrote
    assert ReasoningParser("deepseek-r1").parse_non_stream("I need to add.</think>\n\nThe answer is 4.") == \
        ("I need to add.", "The answer is 4.")
    assert ReasoningParser("deepseek-r1").parse_non_stream("<think>older R1</think>4") == ("older R1", "4")
    assert ReasoningParser("deepseek-r1").parse_non_stream("cut short") == ("cut short", "")
    assert ReasoningParser("qwen3").parse_non_stream("<think>hmm</think>\n\nAnswer") == ("hmm", "Answer")
    assert ReasoningParser("qwen3").parse_non_stream("no thinking") == ("", "no thinking")
    assert ReasoningParser("QwQ").parse_non_stream("a</think>b") == ("a", "b")  # case-insensitive, as SGLang
    assert ReasoningParser("qwen3", force_reasoning=True).parse_non_stream("a</think>b") == ("a", "b")
    assert ReasoningParser("deepseek-v3", request={"chat_template_kwargs": {"thinking": True}}) \
        .parse_non_stream("a</think>b") == ("a", "b")
    assert ReasoningParser("deepseek-v3").parse_non_stream("a</think>b") == ("", "a</think>b")
    assert ReasoningParser("kimi").parse_non_stream("◁think▷x◁/think▷y") == ("x", "y")
    assert ReasoningParser("minimax-append-think").parse_non_stream("x</think>y") == ("", "<think>x</think>y")
    with pytest.raises(ValueError, match="Unsupported model type"):
        ReasoningParser("no-such-family")
    with pytest.raises(ValueError, match="Model type must be specified"):
        ReasoningParser()


@pytest.mark.parametrize("family, text", [
    ("deepseek-r1", "Let me think about it.</think>\n\nThe answer is 4."),
    ("deepseek-r1", "<think>Older R1 writes the marker.</think>Four"),
    ("qwen3", "<think>\nhmm, 1+3</think>\n\n4"),
    ("qwen3", "Just the answer, no <think> section"),
    ("minimax-append-think", "x</think>y"),
])
@pytest.mark.parametrize("size", [1, 3, 7])
def test_reasoning_parser_stream_adds_up_to_the_whole(family, text, size):
    from thinkform import ReasoningParser

    whole = ReasoningParser(family).parse_non_stream(text)
    for stream_reasoning in (True, False):
        parser = ReasoningParser(family, stream_reasoning=stream_reasoning)
        pieces = [parser.parse_stream_chunk(text[i:i + size]) for i in range(0, len(text), size)]
        pieces.append(parser.parse_stream_end())
        assert ("".join(r for r, _ in pieces), "".join(c for _, c in pieces)) == whole
        assert not any("</think>" in r + c for r, c in pieces)
        if not stream_reasoning:  # the reasoning in one piece
            assert len([r for r, _ in pieces if r]) <= 1


_WEATHER = {"type": "function", "function": {
    "name": "get_current_weather", "description": "Get the current weather in a given location",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "state": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "state", "unit"]}}}
_TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
_ANSWER = ('Let me check.\n<tool_call>\n{"name": "get_current_weather", "arguments": {"city": "Boston", "state": "MA", '
           '"unit": "fahrenheit"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>')


def _pydantic_tools() -> list:
    """Tools as SGLang's pages build them (`Tool(type="function", function=Function(...))`: pydantic objects);
    thinkform's own request models stand in for sglang's."""
    from thinkform.server.protocol import FunctionDef, Tool

    return [Tool(type="function", function=FunctionDef(**t["function"])) for t in (_TIME, _WEATHER)]


def test_function_call_parser_non_stream_as_sglang():
    from thinkform import FunctionCallParser

    for tools in ([_TIME, _WEATHER], _pydantic_tools()):
        parser = FunctionCallParser(tools=tools, tool_call_parser="qwen25")
        assert parser.has_tool_call(_ANSWER) and not parser.has_tool_call("Let me check.")
        normal_text, calls = parser.parse_non_stream(_ANSWER)
        assert normal_text == "Let me check."
        assert [(c.tool_index, c.name) for c in calls] == [(1, "get_current_weather"), (0, "get_time")]
        assert json.loads(calls[0].parameters) == {"city": "Boston", "state": "MA", "unit": "fahrenheit"}
        assert calls[1].parameters == "{}"
        assert calls[0].model_dump() == {"tool_index": 1, "name": "get_current_weather",
                                         "parameters": calls[0].parameters}
    only_weather = FunctionCallParser(tools=[_WEATHER], tool_call_parser="qwen25")
    assert [c.name for c in only_weather.parse_non_stream(_ANSWER)[1]] == ["get_current_weather"]  # undeclared: out
    assert FunctionCallParser(tools=[_WEATHER], tool_call_parser="qwen25").parse_non_stream("No call.") == \
        ("No call.", [])
    no_tools = FunctionCallParser(tools=[], tool_call_parser="qwen25")
    assert no_tools.parse_non_stream(_ANSWER) == (_ANSWER, []) and not no_tools.has_tool_call(_ANSWER)
    llama = FunctionCallParser(tools=[_WEATHER], tool_call_parser="llama3")
    normal_text, calls = llama.parse_non_stream('{"name": "get_current_weather", "parameters": {"city": "Paris"}}')
    assert normal_text == "" and [(c.tool_index, c.name, json.loads(c.parameters)) for c in calls] == \
        [(0, "get_current_weather", {"city": "Paris"})]
    with pytest.raises(ValueError, match="Unsupported tool_call_parser"):
        FunctionCallParser(tools=[_WEATHER], tool_call_parser="no-such-format")


@pytest.mark.parametrize("size", [1, 4, 11])
def test_function_call_parser_stream_as_sglang(size):
    """Streamed: the text before the calls, then each call's name (empty parameters) and its arguments in pieces,
    `tool_index` counting the calls, as SGLang's detectors stream them."""
    from thinkform import FunctionCallParser

    parser = FunctionCallParser(tools=[_TIME, _WEATHER], tool_call_parser="qwen25")
    normal, items = "", []
    for i in range(0, len(_ANSWER), size):
        text, calls = parser.parse_stream_chunk(_ANSWER[i:i + size])
        normal, items = normal + text, items + calls
    text, calls = parser.parse_stream_end()
    normal, items = normal + text, items + calls
    assert normal == "Let me check."
    assert [(c.tool_index, c.name, c.parameters) for c in items if c.name] == \
        [(0, "get_current_weather", ""), (1, "get_time", "")]
    args = ["".join(c.parameters for c in items if c.tool_index == k and c.name is None) for k in (0, 1)]
    assert json.loads(args[0]) == {"city": "Boston", "state": "MA", "unit": "fahrenheit"} and args[1] == "{}"
    plain = FunctionCallParser(tools=[_WEATHER], tool_call_parser="qwen25")
    assert "".join(plain.parse_stream_chunk(p)[0] for p in ("No ", "call ", "here.")) + \
        plain.parse_stream_end()[0] == "No call here."


# ---------------------------------------------------------------- 4. native routes thinkform does not serve

@pytest.mark.parametrize("path, method", [
    ("/update_weights_from_disk", "POST"), ("/update_weights_from_tensor", "POST"),
    ("/update_weights_from_distributed", "POST"), ("/init_weights_update_group", "POST"),
    ("/release_memory_occupation", "POST"), ("/release_memory_occupation", "GET"),
    ("/resume_memory_occupation", "POST"), ("/resume_memory_occupation", "GET"),
])
def test_weight_update_and_memory_routes_say_not_supported(served, path, method):
    """The Native APIs page's /update_weights_from_disk got a bare 404 "Not Found". Now SGLang's answer to a
    failed update (400, success false, a message), naming the endpoint, with the usual error object beside it."""
    engine, base = served
    r = httpx.request(method, f"{base}{path}", json={"model_path": "/some/new/weights"} if method == "POST" else None)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["success"] is False and f"{path} is not supported by thinkform" in body["message"]
    assert body["error"]["message"] == body["message"] and body["error"]["code"] == 400
    if path.startswith("/update_weights"):
        assert body["num_paused_requests"] == 0
    assert not engine.calls


def test_held_reasoning_comes_with_the_chunk_that_ends_it():
    """Review: with stream_reasoning false the reasoning waited for the first answer text; SGLang gives it in
    the chunk that holds the end marker."""
    from thinkform import ReasoningParser

    parser = ReasoningParser("qwen3", stream_reasoning=False)
    got = [parser.parse_stream_chunk(c) for c in ("<think>abc", " def", "</think>", "\n\n", "answer")]
    assert got == [("", ""), ("", ""), ("abc def", ""), ("", ""), ("", "answer")]
