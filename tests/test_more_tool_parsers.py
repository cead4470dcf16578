"""SGLang's further `--tool-call-parser` names: glm47 (GLM-4.7 / GLM-5), deepseekv32 (DeepSeek-V3.2's DSML) and
deepseekv4, minimax-m2, mimo, interns1. Parsing (SGLang's own detector cases, rewritten), streaming in random
chunkings equal to the whole parse, the constraints they build, guessing them from chat templates, and a random
tiny model under tool_choice "required" through the real engine, its budget ending included."""
from __future__ import annotations

import dataclasses
import json
import random

import jsonschema
import pytest
import xgrammar as xgr

from thinkform.server.tools import get_tool_call_parser, guess_tool_call_parser, tool_call_parser_names
from thinkform.structured.backends.xgrammar import structural_tag_format
from thinkform.structured.spec import ConstraintError, GrammarOptions, constraint_from_fields, json_tag_bounds
from tool_cases import (DATE, EXPECTED, TOOLS, WEATHER, WEATHER_PARAMS, accumulate, assert_open_calls_are_closed_valid,
                        special_tag_engines, stream_in_chunks)

FORMATS = ["glm47", "deepseekv32", "deepseekv4", "minimax-m2", "mimo", "interns1"]
XML = ["glm47", "deepseekv32", "deepseekv4", "minimax-m2", "mimo"]



def _call(name: str, tool: str, pairs: list[tuple[str, str]]) -> str:
    """One call as the model's chat template writes it (string values raw, others JSON)."""
    if name == "glm47":
        return f"<tool_call>{tool}" + "".join(f"<arg_key>{k}</arg_key><arg_value>{v}</arg_value>" for k, v in pairs) \
            + "</tool_call>"
    if name == "mimo":
        return f"<tool_call><function={tool}>" + "".join(f"<parameter={k}>{v}</parameter>" for k, v in pairs) \
            + "</function></tool_call>"
    if name == "minimax-m2":
        return f'<invoke name="{tool}">\n' + "".join(f'<parameter name="{k}">{v}</parameter>\n' for k, v in pairs) \
            + "</invoke>\n"
    if name in ("deepseekv32", "deepseekv4"):
        def flag(v: str) -> str:
            return "false" if v.lstrip("-").isdigit() or v[:1] in "[{" else "true"
        return f'<｜DSML｜invoke name="{tool}">\n' + "".join(
            f'<｜DSML｜parameter name="{k}" string="{flag(v)}">{v}</｜DSML｜parameter>\n' for k, v in pairs) \
            + "</｜DSML｜invoke>\n"
    assert name == "interns1"
    args = {k: json.loads(v) if v.lstrip("-").isdigit() or v[:1] in "[{" else v for k, v in pairs}
    return '<|action_start|><|plugin|>\n' + json.dumps({"name": tool, "parameters": args}) + "<|action_end|>"


def _section(name: str, calls: list[str]) -> str:
    if name == "minimax-m2":
        return "<minimax:tool_call>\n" + "".join(calls) + "</minimax:tool_call>"
    if name in ("deepseekv32", "deepseekv4"):
        wrap = "function_calls" if name == "deepseekv32" else "tool_calls"
        return f"<｜DSML｜{wrap}>\n" + "".join(calls) + f"</｜DSML｜{wrap}>"
    return "".join(calls)


WEATHER_ARGS = [("city", "Paris"), ("days", "3"), ("unit", "celsius")]


def _sample(name: str) -> str:
    return "Sure." + ("\n\n" if name != "glm47" else "") + _section(
        name, [_call(name, "get_weather", WEATHER_ARGS), _call(name, "get_date", [("tz", "CET")])])


def _parser(name, tools=TOOLS):
    return get_tool_call_parser(name).for_tools(tools)


def _calls(calls):
    return [(c.name, json.loads(c.arguments)) for c in calls]


# ---------------------------------------------------------------- names, help, guessing

def test_the_names_are_known_and_in_the_help():
    from thinkform.args import EngineArgs

    help_text = next(f.metadata["help"] for f in dataclasses.fields(EngineArgs) if f.name == "tool_call_parser")
    assert set(FORMATS) <= set(tool_call_parser_names())
    assert all(name in help_text for name in FORMATS)
    for name in FORMATS:
        assert get_tool_call_parser(name).name == name
    with pytest.raises(ValueError, match="unknown tool-call parser 'step3'"):  # left out: a clear startup error
        get_tool_call_parser("step3")


@pytest.mark.parametrize("template, name", [
    # GLM-4.7's: the call's tags back to back; GLM-4.5's put a newline between them
    ("{{- '<tool_call>' + tc.name -}}{% for k, v in _args.items() %}<arg_key>{{ k }}</arg_key><arg_value>{{ v }}"
     "</arg_value>{% endfor %}</tool_call>", "glm47"),
    ("{{ '<tool_call>' + tc.name }}\n{% for k, v in _args.items() %}<arg_key>{{ k }}</arg_key>\n<arg_value>{{ v }}"
     "</arg_value>\n{% endfor %}</tool_call>", "glm45"),
    ("{{- '<minimax:tool_call>\\n' }}{{- '<invoke name=\"' + tc.name + '\">' }}", "minimax-m2"),
    ("{{ '<｜DSML｜function_calls>' }}{{ '<｜DSML｜invoke name=\"' + name + '\">' }}", "deepseekv32"),
    ("{{ '<｜DSML｜tool_calls>' }}{{ '<｜DSML｜invoke name=\"' + name + '\">' }}", "deepseekv4"),
    ("{{- '<tool_call><function=' + call['function']['name'] + '>' -}}{{- '<parameter=' + key + '>' -}}", "mimo"),
    ("{{- '<tool_call>\\n<function=' + tool_call.name + '>\\n' }}{{- '<parameter=' + k + '>\\n' }}", "qwen3_coder"),
    ("{{ '<|action_start|><|plugin|>\\n' + tool_call | tojson + '<|action_end|>' }}", "interns1"),
])
def test_the_format_is_guessed_from_the_chat_template(template, name):
    assert guess_tool_call_parser(template).name == name


# ---------------------------------------------------------------- parsing

@pytest.mark.parametrize("name", FORMATS)
def test_parse_whole_text(name):
    normal, calls = _parser(name).parse(_sample(name))
    assert normal == "Sure." and _calls(calls) == EXPECTED  # days an integer in every format
    assert len({c.id for c in calls}) == 2


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("seed", range(6))
def test_streaming_in_random_chunks_equals_the_whole_parse(name, seed):
    rng = random.Random(seed)
    text = _sample(name)
    sizes = [rng.randint(1, 9) for _ in range(50)]
    normal, deltas, made = stream_in_chunks(_parser(name), text, sizes)
    whole_normal, whole = _parser(name).parse(text)
    assert normal.strip() == whole_normal and made
    streamed = accumulate(deltas)
    assert [(c["name"], c["arguments"]) for c in streamed] == [(c.name, c.arguments) for c in whole]


@pytest.mark.parametrize("name", FORMATS)
def test_plain_text_is_not_a_call(name):
    text = 'The weather in Paris is [mild] today {or so} <b> <invoke name="x"> <parameter=y>.'
    assert _parser(name).parse(text) == (text, [])
    normal, deltas, made = stream_in_chunks(_parser(name), text, [3])
    assert normal == text and deltas == [] and not made


@pytest.mark.parametrize("name", XML)
def test_a_string_value_streams_while_it_is_written(name):
    text = _sample(name)
    upto = text.index("Paris") + len("Pari")
    stream = _parser(name).streaming()
    deltas = []
    for i in range(0, upto, 3):
        deltas += stream.feed(text[i:min(i + 3, upto)])[1]
    assert deltas[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert "".join(d["function"]["arguments"] for d in deltas) == '{"city": "Pari'


@pytest.mark.parametrize("name", FORMATS)
def test_a_cut_call_comes_as_far_as_it_goes(name):
    text = _sample(name)
    cut = text[: text.index("CET") + 2]
    normal, calls = _parser(name).parse(cut)
    assert normal == "Sure." and _calls(calls) == EXPECTED[:1]
    normal, calls = _parser(name).parse(cut, with_cut_call=True)
    assert [c.name for c in calls] == ["get_weather", "get_date"]
    _, deltas, made = stream_in_chunks(_parser(name), cut, [4], cut=True)
    assert made and [c["arguments"] for c in accumulate(deltas)] == [c.arguments for c in calls]


# SGLang's own detector cases (test_glm47_moe_detector, test_minimax_m2_detector, test_deepseekv32_detector,
# test_function_call_parser), rewritten

GLM_TOOLS = [{"function": {"name": "get_weather", "parameters": {"type": "object", "properties": {
    "city": {"type": "string"}, "date": {"type": "string"}}, "required": ["city", "date"]}}},
    {"function": {"name": "list_filenames", "parameters": {"type": "object", "properties": {}}}},
    {"function": {"name": "todo_write", "parameters": {"type": "object", "properties": {
        "todos": {"type": "array"}}, "required": ["todos"]}}}]


def test_glm47_sglang_cases():
    parser = _parser("glm47", GLM_TOOLS)
    two = ("<tool_call>get_weather<arg_key>city</arg_key><arg_value>Beijing</arg_value><arg_key>date</arg_key>"
           "<arg_value>2024-06-27</arg_value></tool_call><tool_call>get_weather<arg_key>city</arg_key>"
           "<arg_value>Shanghai</arg_value><arg_key>date</arg_key><arg_value>2024-06-28</arg_value></tool_call>")
    normal, calls = parser.parse(two)
    assert normal == "" and [c.arguments for c in calls] == ['{"city": "Beijing", "date": "2024-06-27"}',
                                                              '{"city": "Shanghai", "date": "2024-06-28"}']
    assert _calls(parser.parse("<tool_call>list_filenames</tool_call>")[1]) == [("list_filenames", {})]
    assert parser.parse("<tool_call>invalid_func<arg_key>city</arg_key><arg_value>Beijing</arg_value>"
                        "</tool_call>")[1] == []
    # an array written as escaped JSON (backslash before each quote): unescaped and read
    escaped = '[{\\"id\\": \\"1\\", \\"task\\": \\"Check C:\\\\\\\\Users\\", \\"status\\": \\"pending\\"}]'
    args = json.loads(parser.parse(f"<tool_call>todo_write<arg_key>todos</arg_key><arg_value>{escaped}</arg_value>"
                                   "\n</tool_call>")[1][0].arguments)
    assert args == {"todos": [{"id": "1", "task": "Check C:\\Users", "status": "pending"}]}
    # MTP-style chunks: the name and the values split mid-word
    tools = [{"function": {"name": "create_task", "parameters": {"type": "object", "properties": {
        "title": {"type": "string"}, "location": {"type": "string"}}}}}]
    chunks = ["I'll create a task.", "<tool_call>create_ta", "sk<arg_key>title</arg_key><arg_value>Go to Bei",
              "jing</arg_value>", "<arg_key>location</arg_key><arg_value>San Fran", "cisco</arg_value></tool_call>"]
    stream = get_tool_call_parser("glm47").for_tools(tools).streaming()
    normal, deltas = "", []
    for chunk in chunks:
        text, more = stream.feed(chunk)
        normal, deltas = normal + text, deltas + more
    rest, more, made = stream.finish()
    calls = accumulate(deltas + more)
    assert normal + rest == "I'll create a task." and made
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == \
        [("create_task", {"title": "Go to Beijing", "location": "San Francisco"})]


def test_minimax_sglang_cases():
    union = [{"function": {"name": "the_tool", "parameters": {"type": "object", "required": ["args"], "properties": {
        "args": {"anyOf": [{"type": "string"}, {"type": "null"}]}}}}}]
    call = '<minimax:tool_call><invoke name="the_tool"><parameter name="args">{}</parameter></invoke></minimax:tool_call>'
    assert _calls(_parser("minimax-m2", union).parse(call.format("hi"))[1]) == [("the_tool", {"args": "hi"})]
    assert _calls(_parser("minimax-m2", union).parse(call.format("null"))[1]) == [("the_tool", {"args": None})]
    info = [{"function": {"name": "context_info", "parameters": {"type": "object", "properties": {
        "metadata_only": {"type": "boolean"}}}}}]
    body = '<minimax:tool_call><invoke name="context_info"><parameter name="metadata_only">{}</parameter></invoke>'
    # the section left open: the call is read, no markup leaks into the content
    normal, calls = _parser("minimax-m2", info).parse("[Pasted ~4 lines]" + body.format("false"))
    assert normal == "[Pasted ~4 lines]" and _calls(calls) == [("context_info", {"metadata_only": False})]
    # text after the section is content, whole and streamed
    text = "Here is some text." + body.format("true") + "</minimax:tool_call>More text after."
    normal, calls = _parser("minimax-m2", info).parse(text)
    assert normal == "Here is some text.More text after." and _calls(calls) == [("context_info", {"metadata_only": True})]
    streamed, deltas, _ = stream_in_chunks(_parser("minimax-m2", info), text, [1])
    assert streamed == normal and len(accumulate(deltas)) == 1
    content = [{"function": {"name": "f", "parameters": {"type": "object", "properties": {
        "content": {"type": "string"}, "items": {"type": "array"}, "data": {"anyOf": [
            {"type": "object", "properties": {"key": {"type": "string"}}}, {"type": "null"}]}}}}}]
    text = ('<minimax:tool_call><invoke name="f"><parameter name="content">This text contains </parameter> in it'
            '</parameter><parameter name="items">[1, 2, 3, "four"]</parameter><parameter name="data">{"key": "value"}'
            '</parameter></invoke></minimax:tool_call>')
    assert _calls(_parser("minimax-m2", content).parse(text)[1]) == [("f", {
        "content": "This text contains </parameter> in it", "items": [1, 2, 3, "four"], "data": {"key": "value"}})]


def test_deepseekv32_sglang_cases():
    note = [{"function": {"name": "write_note", "parameters": {"type": "object", "properties": {
        "payload": {"type": "object"}}}}}]
    # a string="false" value that is not JSON comes as its text; one that is JSON as its value; streamed too
    for value, expected in (("Здравствуйте, мир! Это тест", "Здравствуйте, мир! Это тест"),
                            ('{"city": "San Francisco"}', {"city": "San Francisco"})):
        text = ('<｜DSML｜function_calls>\n<｜DSML｜invoke name="write_note">\n<｜DSML｜parameter name="payload" '
                f'string="false">{value}</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜function_calls>')
        normal, calls = _parser("deepseekv32", note).parse(text)
        assert normal == "" and _calls(calls) == [("write_note", {"payload": expected})]
        streamed, deltas, _ = stream_in_chunks(_parser("deepseekv32", note), text, [5, 2, 11])
        assert "｜DSML｜" not in streamed and json.loads(accumulate(deltas)[0]["arguments"]) == {"payload": expected}
    # the attribute, not the schema, says how a value is written: a string of digits stays a string
    zip_tool = [{"function": {"name": "f", "parameters": {"type": "object", "properties": {"zip": {"type": "string"}}}}}]
    text = ('<｜DSML｜function_calls>\n<｜DSML｜invoke name="f">\n<｜DSML｜parameter name="zip" string="true">02134'
            '</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜function_calls>')
    assert _calls(get_tool_call_parser("deepseekv32").parse(text)[1]) == [("f", {"zip": "02134"})]
    assert _calls(_parser("deepseekv32", zip_tool).parse(text)[1]) == [("f", {"zip": "02134"})]


def test_interns1_sglang_cases():
    # SGLang's detector spells a space between the two tags (a decode with spaces between special tokens)
    text = ('What is the weather?<|action_start|> <|plugin|>\n{"name": "get_weather", "parameters": {"city": "Paris",'
            ' "days": 3, "unit": "celsius"}}<|action_end|><|action_start|><|plugin|>\n{"arguments": {"tz": "CET"},'
            ' "name": "get_date"}<|action_end|>')
    normal, calls = _parser("interns1").parse(text)
    assert normal == "What is the weather?" and _calls(calls) == EXPECTED
    streamed, deltas, _ = stream_in_chunks(_parser("interns1"), text, [3, 7])
    assert streamed == normal
    assert [(c["name"], json.loads(c["arguments"])) for c in accumulate(deltas)] == EXPECTED
    assert _parser("interns1").parse(text.replace("get_date", "unknown"))[1][1:] == []


# ---------------------------------------------------------------- constraints

def _grammar(tag):
    return xgr.Grammar.from_structural_tag(json.dumps(structural_tag_format(tag, GrammarOptions())))


def _accepts(grammar, text):
    return xgr.testing._is_grammar_accept_string(grammar, text)


@pytest.mark.parametrize("name", FORMATS)
def test_constraints_accept_what_the_parser_reads_and_nothing_else(name):
    parser = get_tool_call_parser(name)
    one = _section(name, [_call(name, "get_weather", WEATHER_ARGS)])
    two = _section(name, [_call(name, "get_weather", WEATHER_ARGS), _call(name, "get_date", [("tz", "UTC")])])
    required = _grammar(parser.structural_tag(TOOLS, "required"))
    assert _accepts(required, one) and _accepts(required, two)
    assert _calls(parser.for_tools(TOOLS).parse(two)[1]) == [EXPECTED[0], ("get_date", {"tz": "UTC"})]
    assert not _accepts(required, "No tool needed.")
    for wrong in ([("city", "Paris"), ("days", "three"), ("unit", "celsius")],
                  [("city", "Paris"), ("days", "3"), ("unit", "kelvin")], [("city", "Paris")]):
        assert not _accepts(required, _section(name, [_call(name, "get_weather", wrong)])), wrong
    auto = _grammar(parser.structural_tag(TOOLS, "auto"))
    assert _accepts(auto, "Let me check. " + one) and _accepts(auto, "No tool needed.")
    named = _grammar(parser.structural_tag([DATE], "named"))
    assert not _accepts(named, one)
    assert _accepts(named, _section(name, [_call(name, "get_date", [("tz", "UTC")])]))
    single = _grammar(parser.structural_tag(TOOLS, "required", parallel=False))
    assert _accepts(single, one) and not _accepts(single, two)


@pytest.mark.parametrize("name", XML)
def test_xml_numbers_are_bounded_and_only_xgrammar_compiles_them(name):
    from thinkform.structured.backends import BackendContext, create_backend
    from thinkform.testing.tokenizers import build_tiny_tokenizer

    tag = get_tool_call_parser(name).structural_tag(TOOLS, "required")
    assert json_tag_bounds(tag) == []
    required = _grammar(tag)
    long_days = [("city", "P"), ("days", "1" * 18), ("unit", "celsius")]
    assert not _accepts(required, _section(name, [_call(name, "get_weather", long_days)]))
    assert _accepts(required, _section(name, [_call(name, "get_weather", [long_days[0], ("days", "9" * 17),
                                                                           long_days[2]])]))
    tok = build_tiny_tokenizer()
    ctx = BackendContext(tok, len(tok), (tok.eos_token_id,), GrammarOptions())
    c = constraint_from_fields(structural_tag=tag)
    create_backend("auto", ctx).compile(c)
    with pytest.raises(ConstraintError, match="XML"):
        create_backend("llguidance", ctx).compile(c)


@pytest.mark.parametrize("name", XML)
def test_the_answer_check_reads_the_new_xml_styles(name):
    """A keyword no grammar enforces (uniqueItems) is checked on each finished call, its XML arguments read into
    JSON first (the check knew only qwen_xml and glm_xml: these calls went unchecked)."""
    from thinkform.structured.schema_support import answer_check_for

    tools = [{"function": {"name": "f", "parameters": {"type": "object", "properties": {
        "name": {"type": "string"}, "ids": {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}},
        "required": ["name", "ids"]}}}]
    check = answer_check_for(constraint_from_fields(
        structural_tag=get_tool_call_parser(name).structural_tag(tools, "required")))
    assert check is not None
    ok = _section(name, [_call(name, "f", [("name", 'say "hi"'), ("ids", "[1, 2]")])])
    dup = _section(name, [_call(name, "f", [("name", "x"), ("ids", "[1, 1]")])])
    assert check(ok.encode()) and not check(dup.encode())


# ---------------------------------------------------------------- what a template-less prompt teaches

# formats whose arguments are XML parameters, and some whose arguments are JSON (the same gap had them all)
WRITTEN = [*XML, "qwen3_coder", "glm45", "hermes", "interns1", "deepseekv31", "kimi_k2", "mistral", "pythonic"]
RICH_TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
    "city": {"type": "string"}, "days": {"type": "integer"}, "temp": {"type": "number"}, "flag": {"type": "boolean"},
    "opt": {"type": ["string", "null"]}, "tags": {"type": "array", "items": {"type": "string"}},
    "obj": {"type": "object"}, "unit": {"enum": ["celsius", "fahrenheit"]}}}}}
RICH_ARGS = [{"city": "Paris", "days": 3, "unit": "celsius"},
             {"city": "a < b && c > d\nline 2", "temp": 21.5, "flag": True, "opt": None},
             {"city": "Zürich 東京 \"q\"", "tags": ["x", "y"], "obj": {"a": 1, "b": "q"}, "days": -2},
             {"city": "02134"}, {"city": "true"}, {}]


@pytest.mark.parametrize("name", WRITTEN)
def test_earlier_calls_are_written_as_the_format_reads_them(name):
    """A chat template that cannot render calls gets each earlier call written in the format: the XML formats
    wrote JSON inside their call tags (no parameters), which their own parser read back as `{}` or nothing,
    teaching the model a spelling no parser reads."""
    parser = get_tool_call_parser(name)
    for args in RICH_ARGS:
        calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": json.dumps(args)}},
                 {"id": "c2", "type": "function", "function": {"name": "get_date", "arguments": '{"tz": "CET"}'}}]
        text = parser.written(calls)
        assert text.startswith(parser.wrapper[0] if parser.wrapper else parser.trigger), text
        normal, back = parser.for_tools([RICH_TOOL, DATE]).parse(text)
        assert normal == "" and _calls(back) == [("f", args), ("get_date", {"tz": "CET"})], text


def test_earlier_calls_are_spelled_as_the_models_templates_write_them():
    """The spelling of each model's chat template (encoding_dsv32.py for DeepSeek-V3.2): strings raw, other
    values as JSON, in the format's parameter tags and section."""
    calls = [{"function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 3}'}},
             {"function": {"name": "get_date", "arguments": {"tz": "CET"}}}]
    assert get_tool_call_parser("deepseekv32").written(calls) == (
        '<｜DSML｜function_calls>\n<｜DSML｜invoke name="get_weather">\n'
        '<｜DSML｜parameter name="city" string="true">Paris</｜DSML｜parameter>\n'
        '<｜DSML｜parameter name="days" string="false">3</｜DSML｜parameter>\n</｜DSML｜invoke>\n'
        '<｜DSML｜invoke name="get_date">\n<｜DSML｜parameter name="tz" string="true">CET</｜DSML｜parameter>\n'
        '</｜DSML｜invoke>\n</｜DSML｜function_calls>')
    assert get_tool_call_parser("minimax-m2").written(calls[:1]) == (
        '<minimax:tool_call>\n<invoke name="get_weather">\n<parameter name="city">Paris</parameter>\n'
        '<parameter name="days">3</parameter>\n</invoke>\n</minimax:tool_call>')
    assert get_tool_call_parser("glm47").written(calls) == (
        "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Paris</arg_value><arg_key>days</arg_key>"
        "<arg_value>3</arg_value></tool_call><tool_call>get_date<arg_key>tz</arg_key><arg_value>CET</arg_value>"
        "</tool_call>")
    assert get_tool_call_parser("qwen3_coder").written(calls[:1]) == (
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n"
        "</parameter>\n</function>\n</tool_call>")


@pytest.mark.parametrize("name", [*XML, "qwen3_coder", "glm45"])
def test_a_template_less_prompt_shows_the_formats_own_spelling(name):
    """The system text's example call and the earlier call, as the server renders a conversation with a
    template that lists no tools (DeepSeek-V3.2 ships none): both in the format's wrapper and parameter tags,
    read back by the server's own parser (the example had no section and asked for `{ARGUMENTS}` as JSON)."""
    from fake_engine import FakeEngine

    from thinkform.server.openai_api import render_chat
    from thinkform.server.protocol import ChatCompletionRequest
    from thinkform.server.state import ServerState

    state = ServerState.from_engine(FakeEngine(reasoning_parser=None, tool_call_parser=name))
    body = ChatCompletionRequest(tools=TOOLS, messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris", "days": 3, "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}])
    prompt, _ = render_chat(state, body, TOOLS, None)
    system, _, history = prompt.partition("Weather in Paris?")
    example = system[system.index("answer exactly in this format: ") + len("answer exactly in this format: "):]
    parser = get_tool_call_parser(name)
    assert "{ARGUMENTS}" not in example and (parser.wrapper is None or parser.wrapper[0] in example)
    _, calls = parser.parse(example)
    assert [c.name for c in calls] == ["NAME"] and json.loads(calls[0].arguments)["KEY"] == "VALUE", example
    _, calls = parser.for_tools(TOOLS).parse(history)
    assert _calls(calls) == EXPECTED[:1], history


# ---------------------------------------------------------------- a DSML call whose body is JSON

@pytest.mark.parametrize("name", ["deepseekv32", "deepseekv4"])
@pytest.mark.parametrize("seed", range(3))
def test_a_dsml_call_whose_body_is_a_json_object_is_read(name, seed):
    """SGLang's DeepSeekV32Detector reads an invoke whose body is one JSON object ("Format 2 - Direct JSON"):
    it came back with arguments `{}`, whole and streamed."""
    wrap = "function_calls" if name == "deepseekv32" else "tool_calls"
    text = (f'Let me look.\n\n<｜DSML｜{wrap}>\n<｜DSML｜invoke name="get_weather">\n'
            '{"city": "San Francisco", "days": 3, "unit": "celsius"}\n</｜DSML｜invoke>\n'
            + _call(name, "get_date", [("tz", "CET")]) + f"</｜DSML｜{wrap}>")
    expected = [("get_weather", {"city": "San Francisco", "days": 3, "unit": "celsius"}), ("get_date", {"tz": "CET"})]
    normal, calls = _parser(name).parse(text)
    assert normal == "Let me look." and _calls(calls) == expected
    rng = random.Random(seed)
    streamed_normal, deltas, made = stream_in_chunks(_parser(name), text, [rng.randint(1, 9) for _ in range(40)])
    assert streamed_normal == normal and made
    assert [(c["name"], c["arguments"]) for c in accumulate(deltas)] == [(c.name, c.arguments) for c in calls]


@pytest.mark.parametrize("name, body", [
    ("deepseekv32", "hello"), ("deepseekv32", "[1, 2]"), ("deepseekv32", '{"city": "SF"} and more'),
    ("minimax-m2", '{"city": "SF"}'), ("qwen3_coder", "some text"), ("mimo", '{"city": "SF"}'),
    ("glm47", ' {"city": "SF"}'), ("glm45", "\nplain words\n")])
def test_a_call_body_that_is_not_parameters_is_never_read_as_empty_arguments(name, body):
    """A body that is neither the format's parameters nor (DSML) one JSON object is a malformed call: no call,
    as a JSON format's call whose arguments are not JSON, never a call with arguments `{}`."""
    heads = {"deepseekv32": ('<｜DSML｜function_calls>\n<｜DSML｜invoke name="get_date">\n',
                             "\n</｜DSML｜invoke>\n</｜DSML｜function_calls>"),
             "minimax-m2": ('<minimax:tool_call>\n<invoke name="get_date">\n', "\n</invoke>\n</minimax:tool_call>"),
             "qwen3_coder": ("<tool_call>\n<function=get_date>\n", "\n</function>\n</tool_call>"),
             "mimo": ("<tool_call><function=get_date>", "</function></tool_call>"),
             "glm47": ("<tool_call>get_date", "</tool_call>"), "glm45": ("<tool_call>get_date", "</tool_call>")}
    head, tail = heads[name]
    text = "Checking." + head + body + tail
    normal, calls = _parser(name).parse(text)
    assert calls == [] and normal == "Checking.", (normal, calls)
    streamed, deltas, _ = stream_in_chunks(_parser(name), text, [3])
    assert streamed == "Checking." and all(d["function"].get("arguments") != "{}" for d in deltas)
    assert "".join(d["function"].get("arguments") or "" for d in deltas) in ("", "{")


# ---------------------------------------------------------------- the whitespace before a section

@pytest.mark.parametrize("name, lead", [("deepseekv32", "\n\n"), ("deepseekv4", "\n\n"), ("minimax-m2", "\n\n\n")])
def test_required_and_named_calls_admit_the_templates_newlines_before_the_section(name, lead):
    """DeepSeek-V3.2's encoding writes `\n\n` before its DSML section, MiniMax-M2's template `</think>\n\n` then
    `\n` (xgrammar's own deepseek_v3_2 / minimax tags put them in the required grammar): required and named
    grammars took the section only at the answer's first character, so a constrained model could not write
    what it was trained to write. Up to that many newlines, no more and nothing else."""
    parser = get_tool_call_parser(name)
    one = _section(name, [_call(name, "get_date", [("tz", "UTC")])])
    for mode, tools in (("required", TOOLS), ("named", [DATE])):
        grammar = _grammar(parser.structural_tag(tools, mode))
        for k in range(len(lead) + 1):
            assert _accepts(grammar, "\n" * k + one), (mode, k)
        assert not _accepts(grammar, lead + "\n" + one) and not _accepts(grammar, " " + one)
        assert not _accepts(grammar, lead)
    single = _grammar(parser.structural_tag(TOOLS, "required", parallel=False))
    two = _section(name, [_call(name, "get_weather", WEATHER_ARGS), _call(name, "get_date", [("tz", "UTC")])])
    assert _accepts(single, lead + one) and not _accepts(single, lead + two)
    normal, calls = parser.for_tools(TOOLS).parse(lead + one)
    assert normal == "" and _calls(calls) == [("get_date", {"tz": "UTC"})]


UNLED_CALLS = {  # one get_date call in formats whose templates write nothing before their calls
    "hermes": '<tool_call>\n{"name": "get_date", "arguments": {"tz": "UTC"}}\n</tool_call>',
    "qwen3_coder": "<tool_call>\n<function=get_date>\n<parameter=tz>\nUTC\n</parameter>\n</function>\n</tool_call>",
    "glm45": "<tool_call>get_date\n<arg_key>tz</arg_key>\n<arg_value>UTC</arg_value>\n</tool_call>",
    "glm47": "<tool_call>get_date<arg_key>tz</arg_key><arg_value>UTC</arg_value></tool_call>",
    "mimo": "<tool_call><function=get_date><parameter=tz>UTC</parameter></function></tool_call>",
    "kimi_k2": '<|tool_calls_section_begin|><|tool_call_begin|>functions.get_date:0<|tool_call_argument_begin|>'
               '{"tz": "UTC"}<|tool_call_end|><|tool_calls_section_end|>',
    "deepseekv31": '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_date<｜tool▁sep｜>{"tz": "UTC"}<｜tool▁call▁end｜>'
                   '<｜tool▁calls▁end｜>'}


@pytest.mark.parametrize("name", sorted(UNLED_CALLS))
def test_formats_without_a_lead_keep_their_calls_at_the_answers_start(name):
    """Only the formats whose templates write newlines before the section admit them: the others' required
    grammars are as before (the calls, or their section, first)."""
    tag = get_tool_call_parser(name).structural_tag([DATE], "required")
    assert tag["format"]["type"] in ("tag", "tags_with_separator")
    grammar = _grammar(tag)
    assert _accepts(grammar, UNLED_CALLS[name]) and not _accepts(grammar, "\n" + UNLED_CALLS[name])


# ---------------------------------------------------------------- a random model, end to end

BOUNDED_TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    **WEATHER_PARAMS, "properties": {**WEATHER_PARAMS["properties"], "city": {"type": "string", "maxLength": 10}}}}},
    {"type": "function", "function": {"name": "get_date", "parameters": {
        "type": "object", "properties": {"tz": {"type": "string", "maxLength": 6}}, "required": ["tz"]}}}]


# the test tokenizer spends a token on about each character (three on each `｜`): a DSML call of three parameters
# takes some 300 tokens, where DeepSeek's own tokenizer spends a few dozen
BUDGET = {"deepseekv32": 640, "deepseekv4": 640}


@pytest.fixture(scope="module")
def tool_engine(tiny_model_dirs):
    from thinkform import Engine

    engine = Engine(model_path=str(tiny_model_dirs["qwen2"]), max_total_tokens=16384)
    yield engine
    engine.shutdown()


@pytest.mark.parametrize("name", FORMATS)
def test_a_random_model_under_required_makes_calls_that_parse_and_validate(tool_engine, name):
    parser = get_tool_call_parser(name)
    tag = json.dumps(parser.structural_tag(BOUNDED_TOOLS, "required"))
    outs = tool_engine.generate(["Weather?"] * 6, [{"temperature": 1.0, "seed": i, "max_new_tokens": BUDGET.get(name, 200),
                                                    "structural_tag": tag} for i in range(6)])
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in BOUNDED_TOOLS}
    for out in outs:
        assert out["meta_info"]["finish_reason"]["type"] == "stop", out["text"]
        normal, calls = parser.for_tools(BOUNDED_TOOLS).parse(out["text"])
        assert normal == "" and calls, out["text"]
        for call in calls:
            jsonschema.validate(json.loads(call.arguments), schemas[call.name])
        streamed = accumulate(stream_in_chunks(parser.for_tools(BOUNDED_TOOLS), out["text"], [7, 2, 5])[1])
        assert [c["arguments"] for c in streamed] == [c.arguments for c in calls]


@pytest.mark.parametrize("name", XML)
def test_an_xml_call_still_open_near_max_new_tokens_is_closed_valid(tool_engine, name):
    """Free strings: a random model never closes one, so the call is open when the budget runs out; the budget
    ending closes it (value, call and section end tags) and the call parses and validates."""
    assert_open_calls_are_closed_valid(tool_engine, name, [WEATHER], WEATHER_PARAMS, BUDGET.get(name, 200))


INC = {"type": "function", "function": {"name": "inc", "parameters": {
    "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}}
TRIP = {"type": "function", "function": {"name": "book_trip", "parameters": {
    "type": "object", "required": ["origin", "destination", "cabin", "passengers", "travelers", "flexible"],
    "properties": {"origin": {"type": "string"}, "destination": {"type": "string"},
                   "cabin": {"enum": ["economy", "business"]}, "passengers": {"type": "integer"},
                   "travelers": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                   "flexible": {"type": "boolean"}}}}}
# the format's tags that are special tokens in the model's tokenizer
SPECIALS = {"glm47": ["<tool_call>", "</tool_call>", "<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>"],
            "minimax-m2": ["<minimax:tool_call>", "</minimax:tool_call>"], "mimo": ["<tool_call>", "</tool_call>"],
            "interns1": ["<|action_start|>", "<|plugin|>", "<|action_end|>"]}


@pytest.fixture(scope="module")
def special_engines(tmp_path_factory):
    """One tiny engine per format whose tags are special tokens, built when a test first asks for it."""
    with special_tag_engines(tmp_path_factory, SPECIALS) as get:
        yield get


@pytest.mark.parametrize("name", sorted(SPECIALS))
def test_parallel_calls_near_the_budget_end_whole(special_engines, name):
    """Calls of a small and a large tool under required, parallel, the tags special tokens: near max_new_tokens
    the answer ends after a whole call or closes the one being written, never cut ("length")."""
    from thinkform.structured.spec import constraint_from_fields as fields

    engine, tok = special_engines(name)
    parser = get_tool_call_parser(name).for_tools([INC, TRIP])
    tag = json.dumps(parser.structural_tag([INC, TRIP], "required", True))
    compiled = engine.parts.grammar_cache.get(fields(structural_tag=tag))
    assert engine.parts.ending_search.wait_measured(compiled, 60)
    need = engine.parts.ending_search.longest_call(compiled) or engine.parts.ending_search.shortest_answer(compiled)
    bias = {str(tok.convert_tokens_to_ids(SPECIALS[name][0])): 12}
    prompt = "<|im_start|>user\nPlan it.<|im_end|>\n<|im_start|>assistant\n"
    for seed in (1, 7):
        for extra in (8, 64, 160):
            out = engine.generate(prompt, {"structural_tag": tag, "max_new_tokens": need + extra, "temperature": 1.0,
                                           "seed": seed, "logit_bias": bias, "skip_special_tokens": False})
            meta = out["meta_info"]
            assert meta["finish_reason"]["type"] == "stop" and meta["constraint_satisfied"], (seed, extra, out["text"])
            _, calls = parser.parse(out["text"])
            assert calls, out["text"]
            for call in calls:
                schema = (INC if call.name == "inc" else TRIP)["function"]["parameters"]
                jsonschema.validate(json.loads(call.arguments), schema)
