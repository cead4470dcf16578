"""Tool-call parsing cases from SGLang's parser tests and the tool-parse audit: what a user gets, in the whole
response and streamed (content and calls alike), for pythonic lists among text, Llama-3's tag spelled in an
argument, Mistral's compact calls, calls the whole parse and the stream read differently, unfinished calls,
GLM-4.6's escaped JSON, Qwen3-Coder's `null`, parser aliases and calls of undeclared functions."""
from __future__ import annotations

import json

import httpx
import pytest

from fake_engine import FakeEngine
from server_fixtures import running_server, sse_events
from thinkform.server.tools import get_tool_call_parser


def _tool(name, **props):
    return {"type": "function", "function": {"name": name, "parameters": {
        "type": "object", "properties": {k: {"type": v} for k, v in props.items()}}}}


WEATHER = _tool("get_weather", location="string", unit="string", city="string")
SEARCH = _tool("search", query="string")
TOOLS = [WEATHER, SEARCH]


def _whole(name, text, tools=TOOLS):
    content, calls = get_tool_call_parser(name).for_tools(tools).parse(text)
    return content, [(c.name, json.loads(c.arguments)) for c in calls]


def _streamed(name, text, step, tools=TOOLS):
    """(content, [(name, arguments text)], made) as a client joins a stream fed `step` characters at a time."""
    stream = get_tool_call_parser(name).for_tools(tools).streaming()
    content, deltas = "", []
    for i in range(0, len(text), step):
        normal, calls = stream.feed(text[i:i + step])
        content, deltas = content + normal, deltas + calls
    rest, calls, made = stream.finish()
    calls_by_index: dict[int, list[str]] = {}
    for d in deltas + calls:
        call = calls_by_index.setdefault(d["index"], [None, ""])
        call[0] = d["function"].get("name") or call[0]
        call[1] += d["function"].get("arguments") or ""
    return content + rest, [tuple(calls_by_index[k]) for k in sorted(calls_by_index)], made


def _same_streamed(name, text, tools=TOOLS):
    """The whole parse, checked to be what every stream of `text` gives."""
    content, calls = _whole(name, text, tools)
    for step in (1, 2, 3, 7, len(text)):
        s_content, s_calls, made = _streamed(name, text, step, tools)
        assert s_content == content, (step, s_content)
        assert [(n, json.loads(a)) for n, a in s_calls] == calls, (step, s_calls)
        assert made == bool(calls)
    return content, calls


# ---------------------------------------------------------------- 1. pythonic


@pytest.mark.parametrize("text, content, calls", [
    # the list ends at its own bracket: a `]` of the text after it lost every call
    ("[get_weather(location='Rome')] See [1] for details.", " See [1] for details.",
     [("get_weather", {"location": "Rome"})]),
    # SGLang test_parse_streaming_multiple_tool_calls: two lists, the text between them content
    ("[get_weather(location='Berlin')] and [search(query='restaurants')]", " and ",
     [("get_weather", {"location": "Berlin"}), ("search", {"query": "restaurants"})]),
    # SGLang test_parse_streaming_text_after_tool_call: the text after was dropped
    ("[get_weather(location='Tokyo')] Here's the forecast:", " Here's the forecast:",
     [("get_weather", {"location": "Tokyo"})]),
    # SGLang test_detect_and_parse_with_python_start_and_end_token: Llama-4's markup is no content (SGLang
    # keeps the space before the call too: two spaces; thinkform drops the whitespace before a call)
    ("User wants to get the weather in Mars. <|python_start|>[get_weather(location='Mars', unit='celsius')]"
     "<|python_end|> In this way we will get the weather in Mars.",
     "User wants to get the weather in Mars. In this way we will get the weather in Mars.",
     [("get_weather", {"location": "Mars", "unit": "celsius"})]),
    # brackets inside strings and nested lists are the arguments' own (the list is read in one pass)
    ("[get_weather(location='a ] b [', data=[[0, 1], [2, 3]])] done", " done",
     [("get_weather", {"location": "a ] b [", "data": [[0, 1], [2, 3]]})]),
    ("Here's a call: <|python_start|>[get_weather(location='Tokyo', data=[1, 2, 3])]<|python_end|>",
     "Here's a call:", [("get_weather", {"location": "Tokyo", "data": [1, 2, 3]})]),
])
def test_pythonic_calls_end_at_their_own_bracket_and_the_text_around_them_is_content(text, content, calls):
    assert _same_streamed("pythonic", text) == (content, calls)


def test_a_pythonic_list_ends_where_python_reads_its_bracket():
    """Found in one pass over Python's tokens; a lone CR or a NUL after it (Python 3.12's tokenizer glues the one
    to the bracket and refuses a line holding the other) changes nothing."""
    from thinkform.server.tools import _list_end

    assert _list_end("[f(a=']')]", 0) == 10
    assert _list_end("x [f(a=1)\r] y", 2) == 11
    assert _list_end("[f(a=1)]\x00 tail", 0) == 8
    assert _list_end("[f(a=[1, 2]", 0) is None


def test_a_pythonic_list_that_is_not_calls_stays_text():
    text = "[get_weather(location='Rome')] and [search('positional')] then"
    assert _same_streamed("pythonic", text) == (" and [search('positional')] then", [("get_weather", {"location": "Rome"})])
    assert _same_streamed("pythonic", "See [a(1)] and [b].") == ("See [a(1)] and [b].", [])


# ---------------------------------------------------------------- 3. mistral compact


@pytest.mark.parametrize("text, content, calls", [
    ('[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}', "", [("get_weather", {"city": "Paris"})]),
    ('Let me check.[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_weather[ARGS]{"city": "Tokyo"}',
     "Let me check.", [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Tokyo"})]),
])
def test_mistral_compact_calls_are_read_whole_and_streamed(text, content, calls):
    """Mistral-Small-3.2 / Magistral / Devstral (tokenizer v11+) write `[TOOL_CALLS]NAME[ARGS]{...}`: it was text."""
    assert _same_streamed("mistral", text) == (content, calls)
    stream = get_tool_call_parser("mistral").streaming()
    deltas = stream.feed(text[: text.index("Pari")])[1]  # the call streams while its arguments are written
    assert deltas[0]["function"] == {"name": "get_weather", "arguments": ""}


# ---------------------------------------------------------------- 4. llama3


def test_a_llama3_tag_spelled_in_an_argument_stays_in_it():
    """Audit: every `<|python_tag|>` was replaced by a space (`x   y`), and the stream sent the call twice."""
    args = {"city": "x <|python_tag|> y"}
    text = '<|python_tag|>{"name": "get_weather", "parameters": ' + json.dumps(args) + "}"
    assert _same_streamed("llama3", text) == ("", [("get_weather", args)])
    # bare JSON whose argument spells the tag: a call whichever way it is chunked (it was text whole)
    assert _same_streamed("llama3", text.removeprefix("<|python_tag|>")) == ("", [("get_weather", args)])


def test_text_after_a_bare_llama3_call_is_content():
    """SGLang TestLlama32Detector.test_json_with_trailing_text: the text was dropped."""
    text = '{"name": "get_weather", "parameters": {}} Some follow-up text'
    assert _same_streamed("llama3", text) == (" Some follow-up text", [("get_weather", {})])


def test_invalid_then_valid_llama3_json_is_one_call_streamed_and_whole():
    """SGLang test_invalid_then_valid_json: the stream sent a call with arguments `{` and then the whole
    parse's call again (StreamingToolParser.finish sends a streamed call the rest of its arguments now, never
    a second time)."""
    text = '{"name": "get_weather", "parameters": {{"name": "get_weather", "parameters": {}}'
    assert _same_streamed("llama3", text) == ("", [("get_weather", {})])


# ---------------------------------------------------------------- 5. one call once


def test_a_hermes_stream_reads_calls_only_in_their_tags():
    """Audit: a `{"name": ..., "arguments": ...}` example after `</tool_call>` streamed as a second call."""
    text = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
            'For reference the format is:\n{"name": "get_weather", "arguments": {"city": "X"}}')
    assert _same_streamed("hermes", text) == ("", [("get_weather", {"city": "Paris"})])


# ---------------------------------------------------------------- 7. unfinished calls

UNFINISHED = {  # a call begun in the format's template that never completes, the answer stopped ("stop")
    "hermes": 'Let me see.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": Paris}}\n</tool_call>',
    "deepseekv3": "Let me see.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n"
                  '{"city": Paris}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
    "deepseekv31": "Let me see.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": Paris}"
                   "<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
    "kimi_k2": "Let me see.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
               '<|tool_call_argument_begin|>{"city": Paris}<|tool_call_end|><|tool_calls_section_end|>',
    "mistral": 'Let me see.[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Par',
    "glm45": "Let me see.<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Par",
}


@pytest.mark.parametrize("name", sorted(UNFINISHED))
def test_an_unfinished_call_is_no_content_streamed_or_whole(name):
    """Audit 7: the stream sent the call's header, then its markup again as content; the whole response gave
    the markup as content. The stream cannot take the header back: neither gives the markup as content now,
    and neither makes a call (finish "stop")."""
    content, calls = _whole(name, UNFINISHED[name])
    assert (content, calls) == ("Let me see.", [])
    for step in (1, 3, 7):
        s_content, s_calls, made = _streamed(name, UNFINISHED[name], step)
        assert s_content == content and not made
        assert [n for n, _ in s_calls] in ([], ["get_weather"])


def test_a_qwen3_coder_call_without_its_closing_tool_call_tag_is_read():
    """SGLang's detector falls back to the `<function=...>` body: the call was dropped."""
    text = ("<tool_call>\n<function=get_weather>\n<parameter=city>\nDallas\n</parameter>\n"
            "<parameter=unit>\nF\n</parameter>\n</function>")
    assert _same_streamed("qwen3_coder", text) == ("", [("get_weather", {"city": "Dallas", "unit": "F"})])


# ---------------------------------------------------------------- 8. glm45

TODO = {"type": "function", "function": {"name": "todo_write", "parameters": {
    "type": "object", "properties": {"todos": {"type": "array"}}, "required": ["todos"]}}}
TODOS = [{"id": "1", "task": "Check", "status": "pending"}]


@pytest.mark.parametrize("newline", ["\n", "\\n"])
def test_glm46_escaped_json_arguments_are_read_as_json(newline):
    """SGLang test_array_argument_with_escaped_json: GLM-4.6 writes an array argument with escaped quotes; it
    came back a string. Its literal `\\n` between tags was read into the call's name."""
    value = json.dumps(TODOS).replace('"', '\\"')
    text = (f"<tool_call>todo_write{newline}<arg_key>todos</arg_key>{newline}<arg_value>{value}</arg_value>\n"
            "</tool_call>")
    assert _same_streamed("glm45", text, [TODO]) == ("", [("todo_write", {"todos": TODOS})])


def test_an_escaped_string_value_stays_the_string_it_is():
    text = '<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>[\\"a\\"]</arg_value>\n</tool_call>'
    assert _whole("glm45", text) == ("", [("get_weather", {"city": '[\\"a\\"]'})])


# ---------------------------------------------------------------- 9. aliases


@pytest.mark.parametrize("alias, name", [("glm", "glm45"), ("step3p5", "qwen3_coder")])
def test_sglangs_other_names_of_a_format_are_accepted(alias, name):
    """SGLang's ToolCallParserEnum maps these to the same detectors (Glm4MoeDetector, Qwen3CoderDetector)."""
    assert type(get_tool_call_parser(alias)) is type(get_tool_call_parser(name))


# ---------------------------------------------------------------- 10. qwen3_coder null, undeclared functions


@pytest.mark.parametrize("kind", ["string", "integer", "array"])
def test_qwen3_coder_null_is_none_for_any_type(kind):
    """SGLang / vLLM `_convert_param_value`: `null` is None whatever the parameter's type (a string got "null")."""
    tools = [_tool("f", v=kind)]
    text = "<tool_call>\n<function=f>\n<parameter=v>\nnull\n</parameter>\n</function>\n</tool_call>"
    assert _same_streamed("qwen3_coder", text, tools) == ("", [("f", {"v": None})])
    text = "<tool_call>\n<function=f>\n<parameter=v>\nnullable\n</parameter>\n</function>\n</tool_call>"
    assert _same_streamed("qwen3_coder", text, [_tool("f", v="string")]) == ("", [("f", {"v": "nullable"})])


UNDECLARED = '<tool_call>\n{"name": "invalid_func", "arguments": {}}\n</tool_call>'


@pytest.mark.parametrize("name, text", [
    ("hermes", UNDECLARED),
    ("glm45", "<tool_call>invalid_func\n<arg_key>city</arg_key>\n<arg_value>Beijing</arg_value>\n</tool_call>"),
])
def test_a_call_of_an_undeclared_function_is_dropped(name, text):
    """SGLang's detectors skip a function the request does not declare (Glm4Moe test_invalid_tool_call)."""
    assert _same_streamed(name, "Sure." + text) == ("Sure.", [])


def _chat(base, stream):
    body = {"model": "m", "messages": [{"role": "user", "content": "Weather?"}], "tools": [WEATHER], "stream": stream}
    if not stream:
        choice = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60).json()["choices"][0]
        return choice["message"]["content"], choice["message"].get("tool_calls") or [], choice["finish_reason"]
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as r:
        events = [e["choices"][0] for e in sse_events(r) if e != "[DONE]" and e.get("choices")]
    content = "".join(e["delta"].get("content") or "" for e in events)
    calls = [c for e in events for c in e["delta"].get("tool_calls") or []]
    return content, calls, next(e["finish_reason"] for e in events if e["finish_reason"])


def test_the_chat_route_drops_calls_of_undeclared_functions():
    """As /parse_function_call: the chat response (whole and streamed) returned `invalid_func` calls."""
    engine = FakeEngine(reasoning_parser=None, tool_call_parser="hermes")
    engine.reply = lambda call: "Sure." + UNDECLARED
    with running_server(engine) as base:
        assert _chat(base, stream=False) == ("Sure.", [], "stop")
        assert _chat(base, stream=True) == ("Sure.", [], "stop")
