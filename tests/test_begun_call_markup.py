"""A tool call cut (by max_tokens) before its arguments begin: its markup is never content, whole or streamed.

Audit (combo) 1: with tool_choice required and max_tokens 10, qwen25 answered content
'<tool_call>\\n{"name": "get_weather", "' with no tool_calls, streamed the same: the parsers counted a call only
once the `{` of its arguments followed its header.
"""
from __future__ import annotations

import httpx
import pytest

from fake_engine import FakeEngine
from server_fixtures import running_server, sse_events
from tool_cases import accumulate, stream_in_chunks

from thinkform.server.tools import get_tool_call_parser, tool_call_parser_names

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CALL = [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]


def _parser(name: str, mode: str = "auto"):
    parser = get_tool_call_parser(name).for_tools([WEATHER])
    return parser if mode == "auto" else parser.for_mode(mode)


def _call_text(name: str) -> str:
    """'Sure.' and one call of get_weather in the format's own template (its wrapper too)."""
    return "Sure." + _parser(name).written(CALL)


def _first_cut(name: str, text: str) -> int:
    """Where the text first holds a call begun for sure: the trigger written (pythonic: `[get_weather(`)."""
    if name == "pythonic":
        return text.index("(") + 1
    trigger = get_tool_call_parser(name).trigger
    return text.index(trigger) + len(trigger)


def _name_is_whole(cut: str) -> bool:
    """The call's name is written, and something of the header after it (`get_weather"`, `get_weather>`)."""
    return "get_weather" in cut and not cut.endswith("get_weather")


@pytest.mark.parametrize("name", tool_call_parser_names())
def test_a_call_cut_anywhere_leaves_the_text_before_it_as_the_content(name):
    """Every cut from the trigger on: the content is the text before the call, whole and streamed alike; the
    call comes (as far as it goes, as a call cut inside its arguments) once its name is whole, else none."""
    text = _call_text(name)
    for end in range(_first_cut(name, text), len(text)):
        cut = text[:end]
        normal, calls = _parser(name).parse(cut, with_cut_call=True)
        assert normal == "Sure.", (cut, normal)
        assert [c.name for c in calls] == (["get_weather"] if _name_is_whole(cut) else []), (cut, calls)
        for step in (1, 3, len(cut)):
            streamed, deltas, made = stream_in_chunks(_parser(name), cut, step, cut=True)
            assert streamed == "Sure.", (cut, step, streamed)
            assert [(c["name"], c["arguments"]) for c in accumulate(deltas)] == \
                [(c.name, c.arguments) for c in calls], (cut, step)
            assert made == bool(calls)
        # an answer that ended there (a stop, not max_tokens): no call of it and no markup either
        assert _parser(name).parse(cut)[0] == "Sure.", cut


@pytest.mark.parametrize("cut, called", [("[TOOL_CALLS]get_wea", False), ("[TOOL_CALLS]get_weather[AR", True),
                                         ("[TOOL_CALLS]get_weather[ARGS]", True)])
def test_a_compact_mistral_call_cut_in_its_header(cut, called):
    normal, calls = _parser("mistral").parse("Sure." + cut, with_cut_call=True)
    assert normal == "Sure." and [(c.name, c.arguments) for c in calls] == ([("get_weather", "")] if called else [])


@pytest.mark.parametrize("name, cut", [
    ("hermes", "<tool_ca"),  # the trigger itself cut (a tokenizer without its special token)
    ("pythonic", "[get_wea"),  # `[` opens plain lists too: under auto that is text
    ("gpt-oss", "get_wea"),  # a call right after the final channel's header, its name not whole
    ("deepseekv32", "\n\n"),  # the whitespace the template writes before the section
])
def test_a_required_answer_is_calls_only(name, cut):
    """tool_choice required / named: the grammar allows nothing but calls, so a start a format cannot tell
    from text is markup too; under auto it stays text, as it may be."""
    for mode, content in (("required", ""), ("named", ""), ("auto", cut)):
        assert _parser(name, mode).parse(cut, with_cut_call=True) == (content, []), mode
        streamed, deltas, made = stream_in_chunks(_parser(name, mode), cut, 2, cut=True)
        assert (streamed, deltas, made) == (content, [], False), mode


@pytest.mark.parametrize("name", ["hermes", "pythonic", "gpt-oss", "kimi_k2", "qwen3_coder", "minimax-m2"])
def test_a_whole_required_call_is_read_as_before(name):
    text = _parser(name).written(CALL)
    for mode in ("auto", "required"):
        normal, calls = _parser(name, mode).parse(text)
        assert normal == "" and [(c.name, c.arguments.replace(" ", "")) for c in calls] == [
            ("get_weather", '{"city":"Paris"}')], mode


# ---------------------------------------------------------------- the chat and Responses routes

def _chat(base: str, choice, stream: bool):
    body = {"model": "m", "messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [WEATHER],
            "tool_choice": choice, "max_tokens": 10, "stream": stream}
    if not stream:
        ch = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60).json()["choices"][0]
        calls = [(c["function"]["name"], c["function"]["arguments"]) for c in ch["message"].get("tool_calls") or []]
        return ch["message"]["content"] or "", calls, ch["finish_reason"]
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as r:
        events = [e["choices"][0] for e in sse_events(r) if e != "[DONE]" and e.get("choices")]
    content = "".join(e["delta"].get("content") or "" for e in events)
    deltas = [c for e in events for c in e["delta"].get("tool_calls") or []]
    calls = [(c["name"], c["arguments"]) for c in accumulate(deltas)]
    return content, calls, next(e["finish_reason"] for e in events if e["finish_reason"])


NAMED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.mark.parametrize("reply, choice, expected", [
    ('<tool_call>\n{"name": "get_weather", "', "required", ("", [("get_weather", "")], "length")),
    ('<tool_call>\n{"name": "get_weather", "', NAMED, ("", [("get_weather", "")], "length")),
    ('<tool_call>\n{"name": "get_wea', "required", ("", [], "length")),
    ('Let me check.<tool_call>\n{"name": "get_weather", "arg', "auto", ("Let me check.", [("get_weather", "")], "length")),
])
def test_the_chat_route_sends_no_call_markup_as_content(reply, choice, expected):
    """The auditor's case, whole and streamed: the raw markup came back as content with no tool_calls."""
    engine = FakeEngine(reasoning_parser=None, tool_call_parser="qwen25")
    engine.reply = lambda call: reply
    engine.finish_reason = {"type": "length", "matched": None}
    with running_server(engine) as base:
        assert _chat(base, choice, stream=False) == expected
        assert _chat(base, choice, stream=True) == expected


def test_the_responses_route_sends_no_call_markup_as_text():
    engine = FakeEngine(reasoning_parser=None, tool_call_parser="qwen25")
    engine.reply = lambda call: '<tool_call>\n{"name": "get_weather", "'
    engine.finish_reason = {"type": "length", "matched": None}
    body = {"model": "m", "input": "Weather in Paris?", "tool_choice": "required", "max_output_tokens": 10,
            "tools": [{"type": "function", "name": "get_weather", "parameters": WEATHER["function"]["parameters"]}]}
    with running_server(engine) as base:
        whole = httpx.post(f"{base}/v1/responses", json=body, timeout=60).json()
        events = sse_events(httpx.post(f"{base}/v1/responses", json={**body, "stream": True}, timeout=60))
    for response in (whole, events[-1]["response"]):
        assert response["status"] == "incomplete"
        assert [(o["type"], o.get("name"), o.get("arguments")) for o in response["output"]] == [
            ("function_call", "get_weather", "")], response["output"]
    assert not any("<tool_call>" in str(e.get("delta", "")) for e in events)
