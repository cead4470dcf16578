"""gpt-oss (harmony): reasoning ends at the final channel's header however the model spells its content
type, and at a tool call's header, which stays at the head of the answer for the gpt-oss tool-call parser;
calls in both recipient positions, parsed whole and streamed; the call grammar; and a random tiny model with
gpt-oss's special tokens through the real engine and server, whose calls and JSON answers come out valid."""
from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

from thinkform.reasoning import get_markers, split_reasoning
from thinkform.reasoning.parser import RawAnswerSplitter, StreamingReasoningParser
from thinkform.server.tools import get_tool_call_parser, guess_tool_call_parser
from thinkform.structured.spec import constraint_from_fields, json_tag_bounds
from thinkform.testing.tokenizers import HARMONY_TEMPLATE, build_harmony_tokenizer

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
           "required": ["city", "days"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]
ANALYSIS = "<|channel|>analysis<|message|>Need the weather.<|end|>"
ARGS = '{"city": "Paris", "days": 3}'
CALLS = {  # how gpt-oss writes a call after its analysis (recipient in the channel or in the role header)
    "channel": f"{ANALYSIS}<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{ARGS}",
    "tight": f"{ANALYSIS}<|start|>assistant<|channel|>commentary to=functions.get_weather<|constrain|>json<|message|>{ARGS}",
    "role": f"{ANALYSIS}<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{ARGS}",
    "after_final": f"{ANALYSIS}<|start|>assistant<|channel|>final<|message|>get_weather <|constrain|>json<|message|>{ARGS}",
    # no analysis: the first header, right after the template's `<|start|>assistant` (audit 13: reasoning)
    "first": f" to=functions.get_weather<|channel|>commentary json<|message|>{ARGS}",
}


def _stream_split(text: str, step: int) -> tuple[str, str]:
    parser = StreamingReasoningParser(get_markers("gpt-oss"), in_reasoning=True)
    reasoning = content = ""
    for i in range(0, len(text), step):
        r, c = parser.feed(text[i:i + step])
        reasoning, content = reasoning + r, content + c
    r, c = parser.flush()
    return reasoning + r, content + c


@pytest.mark.parametrize("kind", [" <|constrain|>json", "<|constrain|>json", " json", ""])
def test_the_final_header_ends_reasoning_in_every_spelling(kind):
    """vLLM #23120: `<|channel|>final <|constrain|>json<|message|>` was not an end, so the JSON ran unconstrained."""
    text = f'{ANALYSIS}<|start|>assistant<|channel|>final{kind}<|message|>{{"a": 1}}'
    assert split_reasoning(text, get_markers("gpt-oss"), in_reasoning=True) == ("Need the weather.", '{"a": 1}')
    assert _stream_split(text, 3) == ("Need the weather.", '{"a": 1}')


@pytest.mark.parametrize("step", [1, 3, 7, 1000])
def test_two_analysis_messages_are_two_lines_of_reasoning(step):
    """harmony may write its analysis as several messages (`<|end|><|start|>assistant<|channel|>analysis…`):
    their texts were glued (`thought.Second`); a newline now parts them, as vLLM joins them, whole and
    streamed alike."""
    second = "<|start|>assistant<|channel|>analysis<|message|>Then the city.<|end|>"
    text = f"{ANALYSIS}{second}<|start|>assistant<|channel|>final<|message|>Paris."
    expected = ("Need the weather.\nThen the city.", "Paris.")
    assert split_reasoning(text, get_markers("gpt-oss"), in_reasoning=True) == expected
    assert _stream_split(text, step) == expected


@pytest.mark.parametrize("cut", ["<|channel|>commentary", "<|channel|>final <|constrain|>"])
def test_a_header_the_budget_cut_off_leaves_no_markup_in_the_reasoning(cut):
    """Audit 14: the thinking budget's close text after a header begun (`<|channel|>commentary`) left the
    header in reasoning_content; whole and streamed alike now drop it."""
    close = get_markers("gpt-oss").close_text
    text = f"{ANALYSIS}<|start|>assistant{cut}{close}{{}}"
    markers = get_markers("gpt-oss").without_answer_ends
    whole = split_reasoning(text, markers, in_reasoning=True)
    assert whole == ("Need the weather.", "{}")
    parser = StreamingReasoningParser(markers, in_reasoning=True)
    pieces = [parser.feed(text[i:i + 3]) for i in range(0, len(text), 3)] + [parser.flush()]
    assert ("".join(r for r, _ in pieces), "".join(c for _, c in pieces)) == whole


@pytest.mark.parametrize("form", sorted(CALLS))
@pytest.mark.parametrize("step", [1, 4, 1000])
def test_calls_are_answers_not_reasoning(form, step):
    markers, parser = get_markers("gpt-oss"), get_tool_call_parser("gpt-oss").for_tools(TOOLS)
    reasoning, content = split_reasoning(CALLS[form], markers, in_reasoning=True)
    assert reasoning == ("" if form == "first" else "Need the weather.")
    assert _stream_split(CALLS[form], step) == (reasoning, content)
    normal, calls = parser.parse(content)
    assert normal == "" and [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", json.loads(ARGS))]
    assert calls[0].id.startswith("call_")
    stream = parser.streaming()
    sent, deltas = "", []
    for i in range(0, len(content), step):
        text, more = stream.feed(content[i:i + step])
        sent, deltas = sent + text, deltas + more
    rest, more, made = stream.finish()
    assert made and sent + rest == ""
    args = "".join(d["function"]["arguments"] for d in deltas + more)
    assert [d["function"]["name"] for d in deltas + more if "id" in d] == ["get_weather"] and json.loads(args) == json.loads(ARGS)


MENTION = "<|channel|>analysis<|message|>I could send it to=functions.get_weather but no.<|end|>"
FINAL = "<|start|>assistant<|channel|>final<|message|>Sunny."
CALL_AFTER = f"<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{ARGS}"
MENTIONS = {  # a recipient written in the analysis message's text is a mention: reasoning, not a call
    "then final": (MENTION + FINAL, ("I could send it to=functions.get_weather but no.", "Sunny.")),
    "then call": (MENTION + CALL_AFTER, ("I could send it to=functions.get_weather but no.", CALL_AFTER[len("<|start|>assistant"):])),
    "unfinished": (MENTION[:-7] + " still", ("I could send it to=functions.get_weather but no. still", "")),
    # a second analysis message's text, and the output's first header (the template's), whose recipient is a call
    "second message": ("<|channel|>analysis<|message|>Hm.<|end|><|start|>assistant<|channel|>analysis<|message|>"
                       " to=functions.x is no call<|end|>" + FINAL, ("Hm.\n to=functions.x is no call", "Sunny.")),
    "first header": (CALLS["first"], ("", CALLS["first"].lstrip())),
}


@pytest.mark.parametrize("case", sorted(MENTIONS))
def test_a_recipient_mentioned_in_the_analysis_text_is_reasoning(case):
    """Audit: `to=functions.NAME` inside the analysis message's text ended the reasoning there (reasoning `I could
    send it`, the rest content). SGLang's and vLLM's harmony parsers read a recipient only in a message's header
    (from `<|start|>`, or the output's start, to `<|message|>`): whole, streamed in pieces of every size, and
    cut where the answer begins (separate_reasoning false)."""
    text, expected = MENTIONS[case]
    markers = get_markers("gpt-oss")
    assert split_reasoning(text, markers, in_reasoning=True) == expected
    for step in (1, 3, 7, len(text)):
        assert _stream_split(text, step) == expected, step
        splitter = RawAnswerSplitter(markers, in_reasoning=True)
        pieces = [splitter.feed(text[i:i + step]) for i in range(0, len(text), step)] + [splitter.flush()]
        before, answer = "".join(b for b, _ in pieces), "".join(a for _, a in pieces)
        assert before + answer == text and answer.strip() == expected[1], step


@pytest.mark.parametrize("case", sorted(MENTIONS))
def test_a_recipient_mentioned_in_the_analysis_streams_token_by_token(case, harmony_tokenizer):
    """The same, fed as the engine detokenizes: one harmony token at a time (the framing's special tokens whole)."""
    text, expected = MENTIONS[case]
    ids = harmony_tokenizer.encode(text, add_special_tokens=False)
    shown = [harmony_tokenizer.decode(ids[:k]) for k in range(len(ids) + 1)]
    assert shown[-1] == text
    parser = StreamingReasoningParser(get_markers("gpt-oss"), in_reasoning=True)
    pieces = [parser.feed(new[len(old):]) for old, new in zip(shown, shown[1:])] + [parser.flush()]
    assert ("".join(r for r, _ in pieces), "".join(c for _, c in pieces)) == expected


def test_the_chat_route_keeps_a_mentioned_recipient_in_the_reasoning():
    """The audit's repro through the server, whole and streamed (3-, 1- and 7-character pieces): the mention
    stays reasoning, the final answer is content, and a real call after the mention is still the call."""
    from fake_engine import FakeEngine
    from server_fixtures import running_server, sse_events

    engine = FakeEngine(reasoning_parser="gpt-oss", tool_call_parser="gpt-oss")
    request = {"model": "m", "messages": [{"role": "user", "content": "Weather?"}], "tools": TOOLS}
    reasoning = "I could send it to=functions.get_weather but no."
    with running_server(engine) as base:
        for reply, content, calls in ((MENTION + FINAL, "Sunny.", []), (MENTION + CALL_AFTER, None, [ARGS])):
            engine.reply = lambda call, reply=reply: reply
            whole = httpx.post(f"{base}/v1/chat/completions", json=request, timeout=60).json()["choices"][0]
            message = whole["message"]
            assert (message["reasoning_content"], message["content"]) == (reasoning, content)
            assert [json.loads(c["function"]["arguments"]) for c in message.get("tool_calls") or []] == \
                [json.loads(a) for a in calls]
            assert whole["finish_reason"] == ("tool_calls" if calls else "stop")
            for chunk in (3, 1, 7):
                engine.chunk_chars = chunk
                with httpx.stream("POST", f"{base}/v1/chat/completions", json={**request, "stream": True},
                                  timeout=60) as r:
                    deltas = [e["choices"][0]["delta"] for e in sse_events(r) if e != "[DONE]" and e.get("choices")]
                assert "".join(d.get("reasoning_content") or "" for d in deltas) == reasoning, chunk
                assert "".join(d.get("content") or "" for d in deltas) == (content or ""), chunk
                args = "".join(c["function"].get("arguments") or "" for d in deltas for c in d.get("tool_calls") or [])
                assert (json.loads(args) if args else None) == (json.loads(ARGS) if calls else None), chunk


def test_a_call_header_ends_reasoning_only_where_the_answer_may_be_a_call():
    """Audit 14: without tools a call header (or a mention of `to=functions.`) ended the reasoning, and a JSON
    answer then followed the header: content `<|channel|>commentary to=functions.{...}`, not JSON. Only a
    request whose answer may be a call (a structural tag: tools) reads them as its end."""
    markers = get_markers("gpt-oss")
    plain = markers.without_answer_ends
    reasoning, content = split_reasoning(CALLS["channel"], plain, in_reasoning=True)
    assert content == "" and "<|" not in reasoning
    mention = f"{ANALYSIS[:-7]} I could send it to=functions.get_weather but no.<|end|>"
    assert split_reasoning(mention + "<|start|>assistant<|channel|>final<|message|>{}", plain, True)[1] == "{}"


def test_the_engine_reads_call_headers_as_ends_only_under_a_structural_tag(harmony_engine):
    tag = constraint_from_fields(structural_tag=get_tool_call_parser("gpt-oss").structural_tag(TOOLS, "required"))
    json_schema = constraint_from_fields(json_schema=json.dumps(WEATHER))
    builder = harmony_engine.builder
    assert builder.markers_for(tag).answer_ends
    assert not builder.markers_for(json_schema).answer_ends and not builder.markers_for(None).answer_ends


def test_a_plain_answer_has_no_calls_and_streams_whole():
    parser = get_tool_call_parser("gpt-oss").for_tools(TOOLS)
    assert parser.parse("Paris is sunny, get_weather says.") == ("Paris is sunny, get_weather says.", [])
    stream = parser.streaming()
    sent = "".join(stream.feed(piece)[0] for piece in ("Paris ", "is ", "sunny."))
    rest, _, made = stream.finish()
    assert sent + rest == "Paris is sunny." and not made


def test_the_template_tells_the_parser():
    assert guess_tool_call_parser(HARMONY_TEMPLATE).name == "gpt-oss"


@pytest.fixture(scope="module")
def harmony_tokenizer():
    return build_harmony_tokenizer()


def _accepts(harmony_tokenizer, tag, text):
    from thinkform.structured.backends import BackendContext, create_backend
    from thinkform.structured.spec import GrammarOptions

    ctx = BackendContext(harmony_tokenizer, len(harmony_tokenizer), (harmony_tokenizer.eos_token_id,), GrammarOptions())
    matcher = create_backend("xgrammar", ctx).compile(constraint_from_fields(structural_tag=tag)).new_matcher()
    return all(matcher.accept_token(t) for t in harmony_tokenizer.encode(text, add_special_tokens=False))


def test_the_call_grammar(harmony_tokenizer):
    parser = get_tool_call_parser("gpt-oss")
    required, auto = parser.structural_tag(TOOLS, "required"), parser.structural_tag(TOOLS, "auto")
    call = "get_weather <|constrain|>json<|message|>" + ARGS
    assert _accepts(harmony_tokenizer, required, call)
    assert _accepts(harmony_tokenizer, required, "get_weather<|channel|>commentary json<|message|>" + ARGS)
    assert not _accepts(harmony_tokenizer, required, "Paris is sunny.")
    assert not _accepts(harmony_tokenizer, required, 'get_weather <|constrain|>json<|message|>{"town": "Paris"}')
    assert not _accepts(harmony_tokenizer, required, "get_time <|constrain|>json<|message|>{")
    assert _accepts(harmony_tokenizer, auto, "Paris is sunny.") and _accepts(harmony_tokenizer, auto, call)
    assert not _accepts(harmony_tokenizer, auto, "Paris<|message|>")  # a call's head must name a tool
    assert json_tag_bounds(required)  # the arguments' numbers are bounded like any tool call's


# ---------------------------------------------------------------- the real engine

@pytest.fixture(scope="module")
def harmony_engine(tmp_path_factory, harmony_tokenizer):
    from transformers import GenerationConfig

    from thinkform import Engine
    from thinkform.testing.models import make_tiny_model_dir

    tok = harmony_tokenizer
    path = make_tiny_model_dir(tmp_path_factory.mktemp("harmony") / "m", "qwen2", tok, vocab_size=len(tok) + 16, seed=3)
    stops = [tok.convert_tokens_to_ids("<|return|>"), tok.convert_tokens_to_ids("<|call|>")]
    GenerationConfig(eos_token_id=stops, pad_token_id=tok.pad_token_id).save_pretrained(path)
    engine = Engine(model_path=str(path), reasoning_parser="gpt-oss", max_total_tokens=8192)
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def harmony_server(harmony_engine):
    from server_fixtures import running_server

    with running_server(harmony_engine) as base:
        yield base


def _chat(base, **body):
    body = {"messages": [{"role": "user", "content": "Weather in Paris?"}], "max_tokens": 80,
            "max_reasoning_tokens": 20, "temperature": 1.0, **body}
    return httpx.post(f"{base}/v1/chat/completions", json=body, timeout=120).json()["choices"][0]


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_real_engine_calls_are_valid(harmony_server, choice):
    for seed in range(3):
        out = _chat(harmony_server, tools=TOOLS, tool_choice=choice, seed=seed)
        message = out["message"]
        (call,) = message["tool_calls"]
        assert out["finish_reason"] == "tool_calls" and message["content"] is None
        assert call["function"]["name"] == "get_weather"
        jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER)
        assert "<|" not in message["reasoning_content"] and not message["reasoning_content"].endswith("assistant")
        assert "<|" not in call["function"]["arguments"]  # markup in a value would come back as real tokens


def test_real_engine_streams_the_call(harmony_server):
    with httpx.stream("POST", f"{harmony_server}/v1/chat/completions", timeout=120, json={
            "messages": [{"role": "user", "content": "Weather?"}], "tools": TOOLS, "tool_choice": "required",
            "max_tokens": 80, "max_reasoning_tokens": 20, "seed": 7, "temperature": 1.0, "stream": True}) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    deltas = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls") or []]
    args = "".join(d["function"].get("arguments", "") for d in deltas)
    jsonschema.validate(json.loads(args), WEATHER)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert not "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)


def test_markup_tokens_never_enter_json_values(harmony_server, harmony_tokenizer):
    """A model that favours `<|channel|>` (a logit bias makes it certain) writes it in its reasoning, never in
    a JSON string value or a call's arguments, where the grammar alone would take it as text."""
    channel = harmony_tokenizer.convert_tokens_to_ids("<|channel|>")
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    for extra in ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}},
                  {"tools": TOOLS, "tool_choice": "required"}):
        out = _chat(harmony_server, seed=0, max_tokens=60, max_reasoning_tokens=8, logit_bias={str(channel): 30},
                    **extra)["message"]
        answer = out["content"] or out["tool_calls"][0]["function"]["arguments"]
        assert "<|" not in answer, answer
        json.loads(answer)


def test_markup_tokens_never_enter_a_regex_answer(harmony_server, harmony_tokenizer):
    """The same for a regex answer whose class takes any text (it took `<|channel|>` as text before)."""
    channel = harmony_tokenizer.convert_tokens_to_ids("<|channel|>")
    for seed in range(3):
        out = _chat(harmony_server, seed=seed, max_tokens=60, max_reasoning_tokens=8,
                    logit_bias={str(channel): 30}, regex=r"[^\n]{1,30}\.")["message"]
        assert "<|" not in out["content"], out["content"]
        assert out["content"].endswith(".")


def test_real_engine_json_answers_are_valid(harmony_server):
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    for seed in range(8):
        out = _chat(harmony_server, seed=seed, max_tokens=60, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
        jsonschema.validate(json.loads(out["message"]["content"]), schema)
        # audit 13: a random model wrote harmony's special tokens inside string values (3 of 8)
        assert "<|" not in out["message"]["content"]
