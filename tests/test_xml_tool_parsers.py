"""Tool-call formats of current reasoning / agent models: deepseekv31, kimi_k2, and the XML-argument formats
qwen3_coder and glm45 (arguments read into JSON by the tool's schema). Parsing (whole, streamed, cut),
guessing from a chat template, the constraints they build (xgrammar only for XML), the answer checks, and
a random tiny model under tool_choice "required" through the real engine and server."""
from __future__ import annotations

import json

import httpx
import jsonschema
import pytest
import xgrammar as xgr

from thinkform.server.tools import get_tool_call_parser, guess_tool_call_parser, tool_call_parser_names
from thinkform.structured.backends.xgrammar import structural_tag_format
from thinkform.structured.spec import ConstraintError, GrammarOptions, constraint_from_fields, json_tag_bounds
from tool_cases import (DATE, EXPECTED, TOOLS, WEATHER, WEATHER_PARAMS, accumulate, assert_open_calls_are_closed_valid,
                        stream_in_chunks)

FORMATS = ["deepseekv31", "kimi_k2", "qwen3_coder", "glm45"]
XML = ["qwen3_coder", "glm45"]


_DS = ("<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>", "<｜tool▁sep｜>", "<｜tool▁call▁end｜>", "<｜tool▁calls▁end｜>")
SAMPLES = {
    "deepseekv31": f'Sure.{_DS[0]}{_DS[1]}get_weather{_DS[2]}{{"city": "Paris", "days": 3, "unit": "celsius"}}{_DS[3]}'
                   f'{_DS[1]}get_date{_DS[2]}{{"tz": "CET"}}{_DS[3]}{_DS[4]}',
    "kimi_k2": "Sure.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>"
               '{"city": "Paris", "days": 3, "unit": "celsius"}<|tool_call_end|><|tool_call_begin|>functions.get_date:1'
               '<|tool_call_argument_begin|>{"tz": "CET"}<|tool_call_end|><|tool_calls_section_end|>',
    "qwen3_coder": "Sure.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
                   "<parameter=days>\n3\n</parameter>\n<parameter=unit>\ncelsius\n</parameter>\n</function>\n</tool_call>\n"
                   "<tool_call>\n<function=get_date>\n<parameter=tz>\nCET\n</parameter>\n</function>\n</tool_call>",
    "glm45": "Sure.\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n<arg_key>days</arg_key>\n"
             "<arg_value>3</arg_value>\n<arg_key>unit</arg_key>\n<arg_value>celsius</arg_value>\n</tool_call>\n"
             "<tool_call>get_date\n<arg_key>tz</arg_key>\n<arg_value>CET</arg_value>\n</tool_call>",
}


def _parser(name):
    return get_tool_call_parser(name).for_tools(TOOLS)


def _calls(calls):
    return [(c.name, json.loads(c.arguments)) for c in calls]


# ---------------------------------------------------------------- parsing

@pytest.mark.parametrize("name", FORMATS)
def test_parse_whole_text(name):
    normal, calls = _parser(name).parse(SAMPLES[name])
    assert normal == "Sure."
    assert _calls(calls) == EXPECTED  # days an integer, by the schema, in the XML formats too
    assert len({c.id for c in calls}) == 2
    for call, tool in zip(calls, TOOLS):
        jsonschema.validate(json.loads(call.arguments), tool["function"]["parameters"])


def test_kimi_ids_count_the_calls():
    calls = _parser("kimi_k2").parse(SAMPLES["kimi_k2"])[1]
    assert [c.id for c in calls] == ["functions.get_weather:0", "functions.get_date:1"]
    streamed = accumulate(stream_in_chunks(_parser("kimi_k2"), SAMPLES["kimi_k2"], 3)[1])
    assert [c["id"] for c in streamed] == ["functions.get_weather:0", "functions.get_date:1"]


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("step", [1, 2, 5])
def test_streaming_deltas_equal_the_whole_parse(name, step):
    normal, deltas, made = stream_in_chunks(_parser(name), SAMPLES[name], step)
    assert normal.strip() == "Sure." and made
    calls = accumulate(deltas)
    whole = _parser(name).parse(SAMPLES[name])[1]
    assert [(c["name"], c["arguments"]) for c in calls] == [(c.name, c.arguments) for c in whole]
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == EXPECTED


@pytest.mark.parametrize("name", FORMATS)
def test_calls_stream_while_they_are_written(name):
    """Name first, then the arguments piece by piece (an XML string value too, while it is written)."""
    text = SAMPLES[name]
    stream = _parser(name).streaming()
    upto = text.index("Paris") + len("Pari")
    deltas = []
    for i in range(0, upto, 3):
        deltas += stream.feed(text[i:min(i + 3, upto)])[1]
    assert deltas[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert all("id" not in d for d in deltas[1:])
    assert "".join(d["function"]["arguments"] for d in deltas) == '{"city": "Pari'


@pytest.mark.parametrize("name", FORMATS)
def test_a_cut_call_comes_as_far_as_it_goes(name):
    text = SAMPLES[name]
    cut = text[: text.index("CET") + 2]  # inside the second call's arguments
    normal, calls = _parser(name).parse(cut)
    assert normal == "Sure." and _calls(calls) == EXPECTED[:1]
    normal, calls = _parser(name).parse(cut, with_cut_call=True)
    assert normal == "Sure." and [c.name for c in calls] == ["get_weather", "get_date"]
    assert calls[1].arguments == '{"tz": "CE'  # as streaming sent it
    _, deltas, made = stream_in_chunks(_parser(name), cut, 4, cut=True)
    assert made and [c["arguments"] for c in accumulate(deltas)] == [c.arguments for c in calls]


@pytest.mark.parametrize("name", FORMATS)
def test_plain_text_is_not_a_call(name):
    text = "The weather in Paris is [mild] today {or so} <b>."
    assert _parser(name).parse(text) == (text, [])
    normal, deltas, made = stream_in_chunks(_parser(name), text, 3)
    assert normal == text and deltas == [] and not made


QWEN_RICH = {"type": "object", "properties": {
    "zip": {"type": "string"}, "n": {"type": "integer"}, "x": {"type": "number"}, "ok": {"type": "boolean"},
    "tags": {"type": "array", "items": {"type": "string"}}, "opt": {"type": ["integer", "null"]},
    "note": {"anyOf": [{"type": "string"}, {"type": "null"}]}, "obj": {"type": "object"}}}


@pytest.mark.parametrize("name", XML)
def test_xml_values_are_read_by_the_schema_types(name):
    def call(pairs):
        if name == "qwen3_coder":
            body = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in pairs)
            return f"<tool_call>\n<function=f>\n{body}</function>\n</tool_call>"
        body = "".join(f"<arg_key>{k}</arg_key>\n<arg_value>{v}</arg_value>\n" for k, v in pairs)
        return f"<tool_call>f\n{body}</tool_call>"

    parser = get_tool_call_parser(name).for_tools([{"function": {"name": "f", "parameters": QWEN_RICH}}])
    pairs = [("zip", "02134"), ("n", "42"), ("x", "1.5"), ("ok", "true"), ("tags", '["a", "b"]'), ("opt", "null"),
             ("note", "null"), ("obj", '{"a": 1}'), ("extra", "7")]
    args = json.loads(parser.parse(call(pairs))[1][0].arguments)
    # a string-only value stays the text written ("02134"); others are JSON of a type the schema admits
    assert args == {"zip": "02134", "n": 42, "x": 1.5, "ok": True, "tags": ["a", "b"], "opt": None, "note": None,
                    "obj": {"a": 1}, "extra": 7}
    # a string value ends at its own closing tag only: the grammar lets it hold the format's other markers
    tricky = "a <parameter=n> </function> <arg_key>n</arg_key> </tool_call> b"
    args = json.loads(parser.parse(call([("zip", tricky), ("n", "1")]))[1][0].arguments)
    assert args == {"zip": tricky, "n": 1}
    # without the request's tools (no schema): JSON where the text is JSON, else the text
    args = json.loads(get_tool_call_parser(name).parse(call([("zip", "02134x"), ("n", "42")]))[1][0].arguments)
    assert args == {"zip": "02134x", "n": 42}


def test_names_guess_and_help():
    assert set(FORMATS) <= set(tool_call_parser_names())
    ds = "{{'<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['function']['name'] + '<｜tool▁sep｜>'}}"
    assert guess_tool_call_parser(ds).name == "deepseekv31"
    assert guess_tool_call_parser(ds + "'```json'").name == "deepseekv3"
    assert guess_tool_call_parser("<|tool_calls_section_begin|><|tool_call_begin|>").name == "kimi_k2"
    assert guess_tool_call_parser("<tool_call>\n<function=' + name + '>\n<parameter=").name == "qwen3_coder"
    assert guess_tool_call_parser("<tool_call>{{ name }}<arg_key>{{ k }}</arg_key>").name == "glm45"
    assert guess_tool_call_parser("<tool_call>\n{\"name\": ").name == "hermes"
    import pathlib

    from thinkform.args import EngineArgs
    import dataclasses

    help_text = next(f.metadata["help"] for f in dataclasses.fields(EngineArgs) if f.name == "tool_call_parser")
    readme = pathlib.Path(__file__).parents[1].joinpath("README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `--tool-call-parser`"))
    assert all(n in help_text and f"`{n}`" in row for n in FORMATS)


# ---------------------------------------------------------------- constraints

def _grammar(tag):
    """The grammar the xgrammar backend compiles (our number and whitespace policy applied)."""
    return xgr.Grammar.from_structural_tag(json.dumps(structural_tag_format(tag, GrammarOptions())))


def _accepts(grammar, text):
    return xgr.testing._is_grammar_accept_string(grammar, text)


def _one_call(name, args_text_or_pairs, tool="get_weather", index=0):
    parser = get_tool_call_parser(name)
    if name == "qwen3_coder":
        body = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in args_text_or_pairs)
        return f"<tool_call>\n<function={tool}>\n{body}</function>\n</tool_call>"
    if name == "glm45":
        body = "".join(f"<arg_key>{k}</arg_key>\n<arg_value>{v}</arg_value>\n" for k, v in args_text_or_pairs)
        return f"<tool_call>{tool}\n{body}</tool_call>"
    begin = parser.call_begin.replace("{name}", tool).replace(":0<", f":{index}<")
    return begin + args_text_or_pairs + parser.call_end


def _wrap(name, calls):
    parser = get_tool_call_parser(name)
    text = parser.separator.join(calls)
    return parser.wrapper[0] + text + parser.wrapper[1] if parser.wrapper else text


GOOD = {"json": '{"city": "Paris", "days": 3, "unit": "celsius"}',
        "xml": [("city", "Paris"), ("days", "3"), ("unit", "celsius")]}


def _args(name, which="good"):
    if name in XML:
        return {"good": GOOD["xml"], "date": [("tz", "UTC")],
                "string_days": [("city", "Paris"), ("days", "three"), ("unit", "celsius")],
                "long_days": [("city", "Paris"), ("days", "1" * 18), ("unit", "celsius")],
                "bad_enum": [("city", "Paris"), ("days", "3"), ("unit", "kelvin")]}[which]
    return {"good": GOOD["json"], "date": '{"tz": "UTC"}',
            "string_days": '{"city": "Paris", "days": "three", "unit": "celsius"}',
            "long_days": '{"city": "Paris", "days": ' + "1" * 18 + ', "unit": "celsius"}',
            "bad_enum": '{"city": "Paris", "days": 3, "unit": "kelvin"}'}[which]


@pytest.mark.parametrize("name", FORMATS)
def test_constraints_accept_what_the_parser_reads_and_nothing_else(name):
    parser = get_tool_call_parser(name)
    one = _wrap(name, [_one_call(name, _args(name))])
    two = _wrap(name, [_one_call(name, _args(name)), _one_call(name, _args(name, "date"), "get_date", 1)])
    required = _grammar(parser.structural_tag(TOOLS, "required"))
    assert _accepts(required, one) and _accepts(required, two)
    assert _calls(parser.for_tools(TOOLS).parse(two)[1]) == [EXPECTED[0], ("get_date", {"tz": "UTC"})]
    assert not _accepts(required, "No tool needed.")
    for wrong in ("string_days", "bad_enum"):
        assert not _accepts(required, _wrap(name, [_one_call(name, _args(name, wrong))])), wrong
    auto = _grammar(parser.structural_tag(TOOLS, "auto"))
    assert _accepts(auto, "Let me check. " + one) and _accepts(auto, "No tool needed.")
    named = _grammar(parser.structural_tag([DATE], "named"))
    assert not _accepts(named, one)
    single = _grammar(parser.structural_tag(TOOLS, "required", parallel=False))
    assert _accepts(single, one) and not _accepts(single, two)


@pytest.mark.parametrize("name", XML)
def test_xml_numbers_are_bounded_in_the_grammar(name):
    """The JSON number guard cannot follow XML arguments (json_tag_bounds leaves them out): their integers
    are bounded by the grammar itself, to max_number_digits digits."""
    tag = get_tool_call_parser(name).structural_tag(TOOLS, "required")
    assert json_tag_bounds(tag) == []
    required = _grammar(tag)
    assert not _accepts(required, _one_call(name, _args(name, "long_days")))
    assert _accepts(required, _one_call(name, [("city", "P"), ("days", "9" * 17), ("unit", "celsius")]))


def test_kimi_indices_count_the_calls_in_the_grammar():
    parser = get_tool_call_parser("kimi_k2")
    required = _grammar(parser.structural_tag(TOOLS, "required"))
    call = lambda k, tool="get_date", args='{"tz": "UTC"}': _one_call("kimi_k2", args, tool, k)  # noqa: E731
    assert _accepts(required, _wrap("kimi_k2", [call(0), call(1), call(2)]))
    assert not _accepts(required, _wrap("kimi_k2", [call(1)]))
    assert not _accepts(required, _wrap("kimi_k2", [call(0), call(0)]))
    assert not _accepts(required, _wrap("kimi_k2", [call(0), call(2)]))


def test_kimi_indices_go_on_from_the_conversations_earlier_calls():
    """Kimi-K2 numbers calls across the conversation (its template writes earlier calls back by id): after two
    calls, the grammar wants index 2 and the ids say so, as SGLang's; index 0 again is refused."""
    parser = get_tool_call_parser("kimi_k2").for_tools(TOOLS, earlier_calls=2)
    required = _grammar(parser.structural_tag(TOOLS, "required"))
    call = lambda k: _one_call("kimi_k2", '{"tz": "UTC"}', "get_date", k)  # noqa: E731
    assert _accepts(required, _wrap("kimi_k2", [call(2), call(3)]))
    assert not _accepts(required, _wrap("kimi_k2", [call(0)]))
    later = SAMPLES["kimi_k2"].replace("get_weather:0", "get_weather:2").replace("get_date:1", "get_date:3")
    assert [c.id for c in parser.parse(later)[1]] == ["functions.get_weather:2", "functions.get_date:3"]
    streamed = accumulate(stream_in_chunks(parser, later, 4)[1])
    assert [c["id"] for c in streamed] == ["functions.get_weather:2", "functions.get_date:3"]


def test_kimi_chat_ids_count_the_history(tiny_tokenizer):
    from fake_engine import FakeEngine
    from server_fixtures import running_server

    engine = FakeEngine(tool_call_parser="kimi_k2", reasoning_parser=None)
    engine.reply = lambda call: SAMPLES["kimi_k2"].replace("get_weather:0", "get_weather:1").replace(":1<", ":2<")
    history = [{"role": "user", "content": "Weather?"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "functions.get_weather:0", "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "days": 1, "unit": "celsius"}'}}]},
               {"role": "tool", "tool_call_id": "functions.get_weather:0", "content": "rain"},
               {"role": "user", "content": "And Paris, and the date?"}]
    with running_server(engine) as base:
        r = httpx.post(f"{base}/v1/chat/completions", json={"messages": history, "tools": TOOLS}).json()
    assert [c["id"] for c in r["choices"][0]["message"]["tool_calls"]] == \
        ["functions.get_weather:1", "functions.get_date:2"]
    tag = engine.calls[-1]["sampling_params"]["structural_tag"]
    assert "functions.get_weather:1<" in tag and "functions.get_weather:0<" not in tag


@pytest.fixture(scope="module")
def backend_ctx():
    from thinkform.structured.backends import BackendContext
    from thinkform.testing.tokenizers import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    return BackendContext(tok, len(tok), (tok.eos_token_id,), GrammarOptions())


@pytest.mark.parametrize("name", XML)
def test_xml_arguments_compile_with_xgrammar_only(backend_ctx, name):
    from thinkform.structured.backends import create_backend

    c = constraint_from_fields(structural_tag=get_tool_call_parser(name).structural_tag(TOOLS, "auto"))
    create_backend("auto", backend_ctx).compile(c)
    create_backend("xgrammar", backend_ctx).compile(c)
    for backend in ("llguidance", "outlines"):
        with pytest.raises(ConstraintError, match="xgrammar|structural_tag"):
            create_backend(backend, backend_ctx).compile(c)
    with pytest.raises(ConstraintError, match="XML"):
        create_backend("llguidance", backend_ctx).compile(c)
    # a keyword xgrammar would drop: refused clearly, with no other library to send it to
    bad = [{"function": {"name": "f", "parameters": {"type": "object", "required": ["a"], "oneOf": [
        {"properties": {"a": {"type": "string"}}}, {"properties": {"a": {"type": "integer"}}}]}}}]
    c = constraint_from_fields(structural_tag=get_tool_call_parser(name).structural_tag(bad, "required"))
    with pytest.raises(ConstraintError, match="only xgrammar") as info:
        create_backend("auto", backend_ctx).compile(c)
    assert "llguidance" not in str(info.value).split("(tool-call")[0]


@pytest.mark.parametrize("name", XML)
def test_the_answer_check_reads_xml_arguments_as_json(name):
    """A keyword no grammar enforces (uniqueItems) is checked on each finished call, its XML arguments read
    into JSON first (read as JSON text they would all fail)."""
    from thinkform.structured.schema_support import answer_check_for

    tools = [{"function": {"name": "f", "parameters": {"type": "object", "properties": {
        "name": {"type": "string"}, "ids": {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}},
        "required": ["name", "ids"]}}}]
    c = constraint_from_fields(structural_tag=get_tool_call_parser(name).structural_tag(tools, "required"))
    check = answer_check_for(c)
    assert check is not None
    ok = _one_call(name, [("name", 'say "hi"'), ("ids", "[1, 2]")], "f")
    dup = _one_call(name, [("name", "x"), ("ids", "[1, 1]")], "f")
    assert check(ok.encode()) and not check(dup.encode()) and not check((ok + "\n" + dup).encode())


# ---------------------------------------------------------------- a random model, end to end

# Strings of a few characters: a random model almost never writes a free string's closing tag (nor its
# closing quote), so unbounded strings run until budget closing ends them (the last test); bounded ones let
# these tests see calls the model finished itself. The grammar enforces maxLength on an XML string as on JSON.
BOUNDED_TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    **WEATHER_PARAMS, "properties": {**WEATHER_PARAMS["properties"], "city": {"type": "string", "maxLength": 10}}}}},
    {"type": "function", "function": {"name": "get_date", "parameters": {
        "type": "object", "properties": {"tz": {"type": "string", "maxLength": 6}}, "required": ["tz"]}}}]


@pytest.fixture(scope="module")
def tool_engine(tiny_model_dirs):
    from thinkform import Engine

    engine = Engine(model_path=str(tiny_model_dirs["qwen2"]), tool_call_parser="qwen3_coder", max_total_tokens=16384)
    yield engine
    engine.shutdown()


@pytest.mark.parametrize("name", FORMATS)
def test_a_random_model_under_required_makes_calls_that_parse_and_validate(tool_engine, name):
    """Whatever the random model samples under tool_choice "required", every finished answer is calls the
    parser reads, each with arguments valid for its tool's schema (string, integer, enum)."""
    parser = get_tool_call_parser(name)
    tag = json.dumps(parser.structural_tag(BOUNDED_TOOLS, "required"))
    outs = tool_engine.generate(["Weather?"] * 6, [{"temperature": 1.0, "seed": i, "max_new_tokens": 160,
                                                    "structural_tag": tag} for i in range(6)])
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in BOUNDED_TOOLS}
    finished = [o for o in outs if o["meta_info"]["finish_reason"]["type"] == "stop"]
    assert len(finished) >= 3, [o["text"] for o in outs]
    for out in finished:
        normal, calls = parser.for_tools(BOUNDED_TOOLS).parse(out["text"])
        assert normal == "" and calls, out["text"]
        for call in calls:
            jsonschema.validate(json.loads(call.arguments), schemas[call.name])
        streamed = accumulate(stream_in_chunks(parser.for_tools(BOUNDED_TOOLS), out["text"], 7)[1])
        assert [c["arguments"] for c in streamed] == [c.arguments for c in calls]


def test_the_server_binds_the_request_tools_to_an_xml_parser(tool_engine):
    """Through the OpenAI server (--tool-call-parser qwen3_coder): calls read by the request's schemas,
    streamed and not."""
    from server_fixtures import running_server, sse_events

    body = {"messages": [{"role": "user", "content": "Weather?"}], "tools": BOUNDED_TOOLS, "tool_choice": "required",
            "max_tokens": 160, "temperature": 1.0}
    with running_server(tool_engine) as base:
        seen = 0
        for seed in range(4):
            choice = httpx.post(f"{base}/v1/chat/completions", json={**body, "seed": seed}, timeout=120).json()
            choice = choice["choices"][0]
            with httpx.stream("POST", f"{base}/v1/chat/completions", json={**body, "seed": seed, "stream": True},
                              timeout=120) as r:
                events = [e for e in sse_events(r)[:-1] if e["choices"]]
            if choice["finish_reason"] != "tool_calls":
                continue
            seen += 1
            calls = choice["message"]["tool_calls"]
            for call in calls:
                schema = next(t["function"]["parameters"] for t in BOUNDED_TOOLS
                              if t["function"]["name"] == call["function"]["name"])
                jsonschema.validate(json.loads(call["function"]["arguments"]), schema)
            deltas = [d for e in events for d in e["choices"][0]["delta"].get("tool_calls") or []]
            assert [c["arguments"] for c in accumulate(deltas)] == [c["function"]["arguments"] for c in calls]
        assert seen >= 2


@pytest.mark.parametrize("name", ["qwen3_coder", "glm45"])
def test_an_xml_call_still_open_near_max_new_tokens_is_closed_valid(tool_engine, name):
    """Free strings (no maxLength): a random model never closes one, so the call is open when the budget
    runs out; budget closing appends the grammar's ending inside the call (its end tag included), and the
    call parses and validates instead of finishing "length" cut."""
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_PARAMS}}]
    assert_open_calls_are_closed_valid(tool_engine, name, tools, WEATHER_PARAMS, 200)


@pytest.mark.parametrize("name, prefix, closer", [
    ("qwen3_coder", "<tool_call>\n<function=get_weather>\n<parameter=city>\nLyo", "</parameter>"),
    ("glm45", "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Lyo", "</arg_value>"),
])
def test_the_ending_search_leaves_an_xml_value_by_its_closing_tag_and_adds_no_padding(tiny_tokenizer, name, prefix,
                                                                                      closer):
    """Inside a raw string value every letter is allowed, so no byte class spells the closing tag: the
    matcher's ending hint does. The rest follows the grammar without the spaces it merely allows."""
    from thinkform.structured.backends import BackendContext, create_backend
    from thinkform.structured.ending import EndingSearch
    from thinkform.structured.spec import GrammarOptions, constraint_from_fields
    from thinkform.structured.vocab import TokenVocab

    vocab = TokenVocab.from_tokenizer(tiny_tokenizer, len(tiny_tokenizer))
    tag = get_tool_call_parser(name).structural_tag([WEATHER], "required")
    compiled = create_backend("xgrammar", BackendContext(tiny_tokenizer, vocab.vocab_size, vocab.eos_token_ids,
                                                         GrammarOptions())).compile(
        constraint_from_fields(structural_tag=json.dumps(tag)))
    matcher = compiled.new_matcher()
    assert matcher.ending_hints == (closer.encode(),)
    assert matcher.accept_string(prefix)
    ids = EndingSearch(vocab).ending_tokens(matcher, empty_ok=True)
    assert ids is not None
    ending = vocab.bytes_of([t for t in ids if t not in vocab.eos_token_ids]).decode()
    assert ending.startswith(closer) and f"{closer} " not in ending and f"{closer}\n\n" not in ending, ending
    _, calls = _parser(name).parse(prefix + ending)
    assert len(calls) == 1 and json.loads(calls[0].arguments)["city"].startswith("Lyo")
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER_PARAMS)


BOUNDED = {"type": "function", "function": {"name": "s", "parameters": {"type": "object", "properties": {
    "q": {"type": "string", "maxLength": 20}, "n": {"type": "integer"}}, "required": ["q", "n"]}}}


@pytest.mark.parametrize("value", ["</parameter>", "a</parameter>b", "</parameter>z"])
def test_a_bounded_string_holding_its_closing_tag_is_read_as_the_grammar_read_it(value):
    """Audit 29: under xgrammar's XML styles a bounded string (maxLength, pattern) may hold its own closing
    tag. The parser stopped at the first one: `q` came back cut and the required `n` dropped (finish
    "tool_calls" with arguments that broke the schema). It reads on to the closing tag the grammar ended the
    value at: the one the next parameter or the call's end follows."""
    parser = get_tool_call_parser("qwen3_coder")
    text = f"<tool_call>\n<function=s>\n<parameter=q>{value}</parameter><parameter=n>1</parameter>\n</function>\n</tool_call>"
    assert _accepts(_grammar(parser.structural_tag([BOUNDED], "required")), text)
    assert _calls(parser.for_tools([BOUNDED]).parse(text)[1]) == [("s", {"q": value, "n": 1})]
    normal, deltas, made = stream_in_chunks(parser.for_tools([BOUNDED]), text, 5)
    assert made and json.loads("".join(d["function"].get("arguments") or "" for d in deltas)) == {"q": value, "n": 1}


@pytest.mark.parametrize("name", XML)
def test_a_call_cut_right_after_a_parameter_keeps_it(name):
    """A closing tag at the very end of the text is held back while a stream grows (what follows tells
    whether it ends the value), but a cut answer is final: its last parameter counts, whole and streamed."""
    parser = _parser(name)
    text = {"qwen3_coder": "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
                           "<parameter=days>\n3\n</parameter>\n",
            "glm45": "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n"
                     "<arg_key>days</arg_key>\n<arg_value>3</arg_value>"}[name]
    _, calls = parser.parse(text, with_cut_call=True)
    assert calls[0].arguments.startswith('{"city": "Paris", "days": 3')
    _, deltas, made = stream_in_chunks(parser, text, 4, cut=True)
    assert made and "".join(d["function"].get("arguments") or "" for d in deltas) == calls[0].arguments
