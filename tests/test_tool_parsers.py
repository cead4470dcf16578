"""Tool-call parsers: parse whole text, parse a stream, build structural tags that xgrammar accepts."""
from __future__ import annotations

import json

import pytest
import xgrammar as xgr

from thinkform.server.tools import get_tool_call_parser, guess_tool_call_parser, tool_call_parser_names

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
DATE = {"type": "function", "function": {"name": "get_date", "parameters": {
    "type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}}

# One sample per format: text the model writes with two calls after some normal text.
SAMPLES = {
    "hermes": 'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
              '<tool_call>\n{"name": "get_date", "arguments": {"tz": "CET"}}\n</tool_call>',
    "llama3": 'Sure.<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; '
              '{"name": "get_date", "parameters": {"tz": "CET"}}',
    "deepseekv3": "Sure.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n"
                  '{"city": "Paris"}\n```<｜tool▁call▁end｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_date\n'
                  '```json\n{"tz": "CET"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
    "mistral": 'Sure.[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, '
               '{"name": "get_date", "arguments": {"tz": "CET"}}]',
    "pythonic": 'Sure.[get_weather(city="Paris"), get_date(tz="CET")]',
}
EXPECTED = [("get_weather", {"city": "Paris"}), ("get_date", {"tz": "CET"})]


def _calls(calls):
    return [(c.name, json.loads(c.arguments)) for c in calls]


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_parse_whole_text(name):
    normal, calls = get_tool_call_parser(name).parse(SAMPLES[name])
    assert normal == "Sure."
    assert _calls(calls) == EXPECTED
    assert len({c.id for c in calls}) == 2


def _accumulate(deltas):
    """What an OpenAI client does with streamed tool-call deltas: join them by index."""
    calls = {}
    for d in deltas:
        call = calls.setdefault(d["index"], {"id": None, "name": None, "arguments": ""})
        if "id" in d:
            assert call["id"] is None and d["type"] == "function"  # the id comes once, first
            call["id"] = d["id"]
        call["name"] = d.get("function", {}).get("name") or call["name"]
        call["arguments"] += d.get("function", {}).get("arguments") or ""
    return [calls[k] for k in sorted(calls)]


def _stream(name, text, step, cut=False):
    stream = get_tool_call_parser(name).streaming()
    sent, deltas, during = "", [], 0
    for i in range(0, len(text), step):
        normal, calls = stream.feed(text[i:i + step])
        sent, deltas = sent + normal, deltas + calls
        during += len(calls)
    rest, calls, made = stream.finish(cut=cut)
    return sent + rest, deltas + calls, during, made


@pytest.mark.parametrize("name", sorted(SAMPLES))
@pytest.mark.parametrize("step", [1, 2, 5])
def test_streaming_parse_matches_whole_and_never_leaks_the_call_text(name, step):
    text = SAMPLES[name]
    normal, deltas, during, made = _stream(name, text, step)
    assert normal.strip() == "Sure." and made
    calls = _accumulate(deltas)
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == EXPECTED
    assert len({c["id"] for c in calls}) == 2
    whole = get_tool_call_parser(name).parse(text)[1]
    assert [c["arguments"] for c in calls] == [c.arguments for c in whole]  # the same text either way


@pytest.mark.parametrize("name", sorted(SAMPLES))
@pytest.mark.parametrize("step", [1, 2, 5])
def test_streamed_text_before_a_call_is_the_whole_parses(name, step):
    """Audit 23: the whole response drops the whitespace before a call, streaming had sent it already
    (`Sure.\n\n  ` against `Sure.`); trailing whitespace now waits for what follows it. Text without a call
    keeps it, both ways."""
    parser = get_tool_call_parser(name)
    text = SAMPLES[name].replace("Sure.", "Sure. Fine.\n\n  ", 1)
    assert _stream(name, text, step)[0] == parser.parse(text)[0] == "Sure. Fine."
    plain = "Sure. Fine.\n\n  "
    assert _stream(name, plain, step)[0] == parser.parse(plain)[0] == plain
    # audit 25: a trigger that begins no call is text, its whitespace before it kept (the stream dropped it)
    mention = f"Sure. Fine.\n\n  {parser.trigger}not a call"
    assert _stream(name, mention, step)[0] == parser.parse(mention)[0] == mention


@pytest.mark.parametrize("name", sorted(set(SAMPLES) - {"pythonic"}))
def test_calls_stream_while_they_are_written(name):
    """Name first, then the arguments piece by piece, as OpenAI streams them (pythonic calls come whole)."""
    text = SAMPLES[name]
    stream = get_tool_call_parser(name).streaming()
    first_args_end = text.index("Paris") + len("Paris")
    deltas = []
    for i in range(0, first_args_end, 3):
        deltas += stream.feed(text[i:min(i + 3, first_args_end)])[1]
    assert deltas[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert len(deltas) >= 3 and all("id" not in d for d in deltas[1:])
    assert "".join(d["function"]["arguments"] for d in deltas).startswith('{"city": "Pari')


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_plain_text_is_not_a_call(name):
    text = "The weather in Paris is [mild] today {or so}."
    assert get_tool_call_parser(name).parse(text) == (text, [])
    normal, deltas, _, made = _stream(name, text, 3)
    assert normal == text and deltas == [] and not made


def test_qwen25_is_hermes_and_llama3_accepts_a_bare_json_call():
    assert get_tool_call_parser("qwen25").parse(SAMPLES["hermes"])[1][0].name == "get_weather"
    normal, calls = get_tool_call_parser("llama3").parse('{"name": "get_weather", "parameters": {"city": "Rome"}}')
    assert normal == "" and _calls(calls) == [("get_weather", {"city": "Rome"})]


def test_unknown_parser_names_the_choices():
    with pytest.raises(ValueError, match="hermes"):
        get_tool_call_parser("nope")
    assert {"qwen25", "hermes", "llama3", "deepseekv3", "mistral", "pythonic", "deepseekv31", "kimi_k2", "qwen3_coder",
            "glm45"} <= set(tool_call_parser_names())


def test_guess_from_chat_template():
    assert guess_tool_call_parser("{{ '<tool_call>' }}").name == "hermes"
    assert guess_tool_call_parser("<|python_tag|>").name == "llama3"
    assert guess_tool_call_parser(None).name == "hermes"


def _grammar_accepts(tag: dict, text: str) -> bool:
    grammar = xgr.Grammar.from_structural_tag(json.dumps(tag))
    return xgr.testing._is_grammar_accept_string(grammar, text)


@pytest.mark.parametrize("name", ["hermes", "llama3", "deepseekv3", "mistral"])
def test_constrained_formats_accept_what_the_parser_reads(name):
    parser = get_tool_call_parser(name)
    one = parser.call_begin.replace("{name}", "get_weather") + '{"city": "Paris"}' + parser.call_end
    calls_text = parser.wrapper[0] + one + parser.wrapper[1] if parser.wrapper else one
    auto = parser.structural_tag([WEATHER, DATE], "auto")
    assert _grammar_accepts(auto, "Let me check. " + calls_text)
    assert _grammar_accepts(auto, "No tool needed.")
    required = parser.structural_tag([WEATHER, DATE], "required")
    assert _grammar_accepts(required, calls_text)
    assert not _grammar_accepts(required, "No tool needed.")
    named = parser.structural_tag([DATE], "named")
    assert not _grammar_accepts(named, calls_text)  # get_weather is not the named tool
    assert _calls(parser.parse(calls_text)[1]) == [("get_weather", {"city": "Paris"})]
    two = one + parser.separator + parser.call_begin.replace("{name}", "get_date") + '{"tz": "UTC"}' + parser.call_end
    two = parser.wrapper[0] + two + parser.wrapper[1] if parser.wrapper else two
    assert _grammar_accepts(required, two)
    assert not _grammar_accepts(parser.structural_tag([WEATHER, DATE], "required", parallel=False), two)
    assert _grammar_accepts(parser.structural_tag([WEATHER, DATE], "required", parallel=False), calls_text)


RICH = {"type": "function", "function": {"name": "plan_trip", "parameters": {"type": "object", "properties": {
    "city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}, "days": {"type": "integer"},
    "budget": {"type": ["number", "null"]}, "flags": {"type": "array", "items": {"type": "boolean"}},
    "hotel": {"type": "object", "properties": {"stars": {"type": "integer"}, "name": {"type": "string"}},
              "required": ["stars"]}, "extra": {},
    "legs": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 5}, "minItems": 1, "maxItems": 2},
    "nights": {"type": "integer", "minimum": 0}}, "required": ["city", "days"]}}}


def test_pythonic_calls_are_constrained_for_required_and_named():
    parser = get_tool_call_parser("pythonic")
    assert parser.structural_tag([WEATHER], "auto") is None  # "[" opens plain lists too: auto stays free
    required = parser.structural_tag([WEATHER, DATE, RICH], "required")
    two = '[get_weather(city="Paris"), plan_trip(city="Rome", days=3, hotel={"stars": 4}, extra=[1, None])]'
    assert _grammar_accepts(required, two)
    assert _calls(parser.parse(two)[1])[1] == ("plan_trip", {"city": "Rome", "days": 3, "hotel": {"stars": 4},
                                                             "extra": [1, None]})
    for wrong in ("No tool needed.", "[]", '[get_weather(town="Paris")]', '[plan_trip(days=3, city="Rome")]',
                  '[plan_trip(city="Rome")]', '[plan_trip(city="Rome", days=3.5)]',
                  '[plan_trip(city="Rome", days=12345678901234567890)]'):
        assert not _grammar_accepts(required, wrong), wrong  # no call, unknown or misplaced or missing arguments
    for args, ok in [("legs=[5, 1]", True), ("legs=[3]", True), ("legs=[]", False), ("legs=[1, 2, 3]", False),
                     ("legs=[7]", False), ("legs=[0]", False), ("nights=12", True), ("nights=-1", False)]:
        assert _grammar_accepts(required, f'[plan_trip(city="Rome", days=3, {args})]') == ok, args
    # a number's exponent has two digits: 1e999 was Python's inf, and the arguments' JSON read `Infinity`
    number = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}}}
    any_number = parser.structural_tag([number], "required")
    assert _grammar_accepts(any_number, "[f(x=-1.5e99)]") and not _grammar_accepts(any_number, "[f(x=1e999)]")
    named = parser.structural_tag([DATE], "named")
    assert _grammar_accepts(named, '[get_date(tz="CET")]')
    assert not _grammar_accepts(named, '[get_date(tz="CET"), get_date(tz="UTC")]')


def test_every_pythonic_call_the_grammar_allows_parses_and_fits_its_schema():
    """Random walks through the grammar (a random allowed token each step, ending where it may): every
    text it allows is read back by the parser as calls whose arguments match the tools' schemas."""
    import random

    import jsonschema
    import torch

    from thinkform.testing.tokenizers import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    info = xgr.TokenizerInfo.from_huggingface(tokenizer)
    parser = get_tool_call_parser("pythonic")
    tools = [WEATHER, RICH]
    tag = parser.structural_tag(tools, "required")
    compiled = xgr.GrammarCompiler(info).compile_structural_tag(json.dumps(tag))
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    eos = tokenizer.eos_token_id
    read = 0
    for seed in range(25):
        rng = random.Random(seed)
        matcher, out = xgr.GrammarMatcher(compiled), []
        mask = xgr.allocate_token_bitmask(1, info.vocab_size)
        while not matcher.is_terminated() and len(out) < 300:
            matcher.fill_next_token_bitmask(mask)
            bits = ((mask[0].unsqueeze(-1) >> torch.arange(32, dtype=mask.dtype)) & 1).flatten()
            allowed = bits[: info.vocab_size].nonzero().flatten().tolist()
            token = eos if eos in allowed and rng.random() < 0.5 else rng.choice(allowed)
            assert matcher.accept_token(token)
            out.append(token)
        if not matcher.is_terminated():
            continue  # a walk that never closed its list: nothing to read
        text = tokenizer.decode([t for t in out if t != eos])
        normal, calls = parser.parse(text)
        assert normal == "" and calls, text
        for call in calls:
            jsonschema.validate(json.loads(call.arguments), schemas[call.name])
        read += 1
    assert read >= 10  # most walks close their list well within 300 tokens


def test_a_malformed_call_never_streams_past_its_closing_marker():
    """Arguments that are not JSON (an unconstrained model) stream no further than the call's end marker.
    Audit 7: the stream then sent the call's markup again as content (after its header as a call); the
    begun call's text is no content now, streamed or whole, and no call is made."""
    text = 'Sure.<tool_call>\n{"name": "get_weather", "arguments": {"city": Paris}}\n</tool_call> Done.'
    normal, deltas, _, made = _stream("hermes", text, 2)
    args = "".join(d["function"].get("arguments") or "" for d in deltas)
    assert "</tool_call>" not in args and "Done" not in args and not made
    assert normal == "Sure." and get_tool_call_parser("hermes").parse(text) == ("Sure.", [])


CUT_AFTER_ARGUMENTS = {  # a call cut by max_tokens after its arguments, before its end tag
    "hermes": '<tool_call>\n{"name": "noargs", "arguments": {}}\n</tool_call>\n<tool_call>\n{"name": "f", '
              '"arguments": {"a": 1}',
    "deepseekv3": '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{"a": 1}\n```<｜tool▁call▁end',
    "mistral": '[TOOL_CALLS][{"name": "f", "arguments": {"a": 1}',
    "llama3": '<|python_tag|>{"name": "f", "parameters": {"a": 1}',
    "kimi_k2": '<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0<|tool_call_argument_begin|>{"a": 1}',
}


@pytest.mark.parametrize("name", sorted(CUT_AFTER_ARGUMENTS))
def test_a_call_cut_after_its_arguments_is_the_same_whole_and_streamed(name):
    """Audit 29: cut before its end tag, such a call was streamed, while the whole parse (no end tag: no call)
    dropped it and returned its markup as content; the stream then sent the call and the markup too."""
    text = CUT_AFTER_ARGUMENTS[name]
    normal, calls = get_tool_call_parser(name).parse(text, with_cut_call=True)
    streamed_text, deltas, _, made = _stream(name, text, 3, cut=True)
    streamed = _accumulate(deltas)
    assert [(c.name, json.loads(c.arguments)) for c in calls][-1] == ("f", {"a": 1})
    assert [(c["name"], json.loads(c["arguments"])) for c in streamed] == [(c.name, json.loads(c.arguments))
                                                                           for c in calls]
    assert normal == streamed_text == "" and made


@pytest.mark.parametrize("step", [1, 7])
def test_a_hermes_call_whose_argument_spells_its_end_tag_is_read_whole_and_streamed(step):
    """Audit 34: the whole parse cut the call at the first `</tool_call>`, inside the argument's string, and
    lost it (its markup returned as content) while the stream sent it."""
    text = '<tool_call>\n{"name": "write", "arguments": {"text": "end with </tool_call> tag"}}\n</tool_call>'
    content, calls = get_tool_call_parser("hermes").parse(text)
    assert content == "" and [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("write", {"text": "end with </tool_call> tag"})]
    normal, deltas, _, made = _stream("hermes", text, step)
    assert normal == "" and made and [c["arguments"] for c in _accumulate(deltas)] == [calls[0].arguments]


@pytest.mark.parametrize("name", ["hermes", "llama3", "mistral", "deepseekv3"])
def test_arguments_that_are_not_json_never_stream_as_arguments(name):
    """Audit 34: a call whose arguments are not JSON (a request's own regex replaced the tools' grammar)
    streamed its raw text as arguments (`{"tz": UTC}}\\n`, closing markup included); as SGLang, only the
    part that is the start of a JSON object streams."""
    parser = get_tool_call_parser(name)
    text = parser.call_begin.replace("{name}", "get_time") + '{"tz": UTC}' + parser.call_end
    _, deltas, _, _ = _stream(name, text, 3)
    assert [c["arguments"] for c in _accumulate(deltas)] in ([], ['{"tz": '])


def test_json_prefix_length_is_the_start_some_json_value_begins_with():
    from thinkform.server.json_prefix import json_prefix_length

    value = {"a": [1, -2.5e-3, True, None, {}], "b\u00e9": "x\"\\\n</tool_call>", "c": {"d": []}}
    for text in (json.dumps(value), json.dumps(value, ensure_ascii=False), json.dumps(value, indent=1)):
        assert all(json_prefix_length(text[:cut]) == cut for cut in range(len(text) + 1))
    for text, valid in (('{"tz": UTC}', 7), ('{"a": 01', 7), ('{"a" 1', 5), ('{"a": "\x01"', 7), ('[1, 2]]', 6),
                        ('{"a": "\\q"}', 7), ("x", 0)):
        assert json_prefix_length(text) == valid, text


def test_a_growing_texts_scan_goes_on_where_it_stopped_and_agrees_with_a_fresh_one():
    """Review: re-scanned whole each chunk, 28 KB of streamed arguments cost 7.7 s of the event loop."""
    from thinkform.server.json_prefix import JsonPrefixScan, json_prefix_length

    texts = [json.dumps({"code": "x = \"a\\n\"\n" * 200, "n": [1, 2.5e3, None]}), '{"a": "b\\u00e9c", "d": tru',
             '{"tz": UTC}}', '{"s": "ab\\qc"}']
    for text in texts:
        for step in (1, 3, 17):
            scan = JsonPrefixScan()
            for cut in range(0, len(text) + step, step):
                assert scan.length(text[:cut]) == json_prefix_length(text[:cut]), (text[:cut][-40:], step)
        scan = JsonPrefixScan()
        scan.length(text)
        assert scan.length("[1, x") == 4  # not a continuation: scanned from the start


@pytest.mark.parametrize("name", ["hermes", "llama3", "deepseekv3"])
def test_arguments_nested_past_pythons_stack_are_no_call_not_a_crash(name):
    """Audit 35: /parse_function_call (and a model's answer) with arguments 1,000 levels deep raised
    RecursionError: a 500."""
    parser = get_tool_call_parser(name)
    text = parser.call_begin.replace("{name}", "f") + '{"a": ' + "[" * 5000 + "]" * 5000 + "}" + parser.call_end
    content, calls = parser.parse(text)
    # a stream sends such a call's header (the arguments' start is JSON): its text is no content either way
    assert calls == [] and content == _stream(name, text, 997)[0]


@pytest.mark.parametrize("name", ["hermes", "llama3", "mistral"])
def test_a_tool_without_parameters_takes_no_arguments(name):
    """Audit (client libraries): OpenAI says omitting `parameters` defines a function of no parameters; any object
    was allowed, so a random model called `now` with made-up keys and `now(**args)` raised TypeError."""
    parser = get_tool_call_parser(name)
    now = {"type": "function", "function": {"name": "now", "description": "the time"}}

    def call(arguments: str) -> str:
        one = parser.call_begin.replace("{name}", "now") + arguments + parser.call_end
        return parser.wrapper[0] + one + parser.wrapper[1] if parser.wrapper else one

    for tools in ([now], [{**now, "function": {**now["function"], "parameters": {}}}]):
        required = parser.structural_tag(tools, "required")
        assert _grammar_accepts(required, call("{}"))
        assert not _grammar_accepts(required, call('{"tz": "UTC"}'))
