"""/v1/responses (OpenAI's Responses API), driven with the official openai SDK: output items, streaming
events, stored conversations, structured answers and tool calls; the real engine's answers valid."""
from __future__ import annotations

import json

import httpx
import openai
import pydantic
import pytest

from server_fixtures import error_response, running_server, sse_events

HERMES_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather of a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


def _client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)


def _prompt(engine) -> str:
    return engine.tokenizer.decode(engine.calls[-1]["input_ids"])


def test_a_response_has_a_reasoning_item_and_a_message(served):
    engine, base = served
    r = _client(base).responses.create(model="m", input="Capital of France?", instructions="Be brief.",
                                       max_output_tokens=50)
    assert r.status == "completed" and r.object == "response" and r.id.startswith("resp_")
    assert [o.type for o in r.output] == ["reasoning", "message"]
    assert r.output[0].content[0].text == "Let me think." and r.output_text == "Paris"
    assert r.usage.input_tokens == 7 and r.usage.output_tokens_details.reasoning_tokens == 3
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.instructions == "Be brief." and r.max_output_tokens == 50
    assert engine.calls[-1]["sampling_params"]["max_new_tokens"] == 50
    assert _prompt(engine).startswith("<|im_start|>system\nBe brief.")


def test_a_cut_answer_is_incomplete_with_its_reason(served):
    engine, base = served
    engine.finish_reason = {"type": "length", "matched": None}
    try:
        r = _client(base).responses.create(model="m", input="Capital?")
    finally:
        engine.finish_reason = {"type": "stop", "matched": None}
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.output[-1].status == "incomplete"


def test_the_stream_tells_the_same_response_in_typed_events(served):
    engine, base = served
    client = _client(base)
    with client.responses.stream(model="m", input="Capital?") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    reasoning = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    answer = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert (reasoning, answer) == ("Let me think.", "Paris") and final.output_text == "Paris"
    assert kinds.index("response.reasoning_text.done") < kinds.index("response.output_text.delta")
    stored = client.responses.retrieve(final.id)
    assert [o.id for o in stored.output] == [o.id for o in final.output]


def test_previous_response_id_continues_the_conversation(served):
    engine, base = served
    client = _client(base)
    first = client.responses.create(model="m", input="Capital of France?", instructions="Only first.")
    engine.reply = lambda call: "Hmm.</think>Berlin"
    second = client.responses.create(model="m", input="And Germany?", previous_response_id=first.id)
    prompt = _prompt(engine)
    assert second.output_text == "Berlin" and second.previous_response_id == first.id
    assert prompt.index("Capital of France?") < prompt.index("Paris") < prompt.index("And Germany?")
    assert "Only first." not in prompt  # instructions do not carry over, as OpenAI's
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    r = httpx.post(f"{base}/v1/responses", json={"input": "x", "previous_response_id": first.id})
    error_response(r, 404, "previous_response_id")


def test_a_stored_responses_input_items_are_listed(served):
    """GET /v1/responses/{id}/input_items (the SDK's responses.input_items.list): the request's own input,
    last first by default, in pages; typed by the SDK as OpenAI's items."""
    engine, base = served
    client = _client(base)
    r = client.responses.create(model="m", input=[
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {"role": "user", "content": [{"type": "input_text", "text": "And tomorrow?"}]}], tools=TOOLS)
    items = client.responses.input_items.list(r.id)
    assert [i.type for i in items.data] == ["message", "function_call_output", "function_call", "message"]
    assert items.data[0].content[0].text == "And tomorrow?" and items.data[-1].content[0].type == "input_text"
    assert items.data[1].output == "sunny" and items.data[2].name == "get_weather"
    assert len({i.id for i in items.data}) == 4 and not items.has_more
    first = client.responses.input_items.list(r.id, order="asc", limit=1)
    assert first.data[0].content[0].text == "Weather in Paris?" and first.has_more
    rest = client.responses.input_items.list(r.id, order="asc", limit=10, after=first.data[0].id)
    assert [i.type for i in rest.data] == ["function_call", "function_call_output", "message"]
    plain = client.responses.create(model="m", input="Capital?")
    assert [(i.role, i.content[0].text) for i in client.responses.input_items.list(plain.id).data] == [
        ("user", "Capital?")]
    # every kind of input item the request takes, as the SDK's types have them (audit 25: statuses, an
    # assistant's annotations, a reasoning item's summary, chat's `text` parts were missing or passed through)
    from openai.types.responses import ResponseItemList

    rich = client.responses.create(model="m", input=[
        {"role": "system", "content": "Be brief."},
        {"type": "message", "role": "user", "content": [{"type": "text", "text": "Weather?"}]},
        {"type": "reasoning", "content": [{"type": "reasoning_text", "text": "Look it up."}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {"role": "assistant", "content": "It is sunny."}, {"role": "user", "content": "Thanks."}], tools=TOOLS)
    listed = httpx.get(f"{base}/v1/responses/{rich.id}/input_items", params={"order": "asc"}).json()
    ResponseItemList.model_validate(listed, strict=False)  # raises on a missing or mistyped field
    assert [i["content"][0]["type"] for i in listed["data"] if i["type"] == "message"] == [
        "input_text", "input_text", "output_text", "input_text"]
    assert all(i["status"] == "completed" for i in listed["data"])
    error_response(httpx.get(f"{base}/v1/responses/{r.id}/input_items", params={"limit": "abc"}), 400, "limit")
    error_response(httpx.get(f"{base}/v1/responses/{r.id}/input_items", params={"limit": 0}), 400, "limit")
    error_response(httpx.get(f"{base}/v1/responses/{r.id}/input_items", params={"order": "up"}), 400, "order")
    error_response(httpx.get(f"{base}/v1/responses/resp_none/input_items"), 404, "response_id")


def test_store_false_keeps_nothing(served):
    engine, base = served
    r = _client(base).responses.create(model="m", input="Capital?", store=False)
    assert httpx.get(f"{base}/v1/responses/{r.id}").status_code == 404


class CapitalInfo(pydantic.BaseModel):
    name: str
    population: int


def test_text_format_json_schema_constrains_the_answer(served):
    engine, base = served
    engine.reply = lambda call: 'Hmm.</think>{"name": "Paris", "population": 2100000}'
    r = _client(base).responses.parse(model="m", input="Capital?", text_format=CapitalInfo)
    assert r.output_parsed == CapitalInfo(name="Paris", population=2100000)
    schema = json.loads(engine.calls[-1]["sampling_params"]["json_schema"])
    assert schema["required"] == ["name", "population"]


def test_function_calls_and_their_outputs(served):
    engine, base = served
    client = _client(base)
    engine.reply = lambda call: "I should look.</think>\n\n" + HERMES_CALL
    r = client.responses.create(model="m", input="Weather in Paris?", tools=TOOLS)
    (call,) = [o for o in r.output if o.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert "message" not in [o.type for o in r.output]  # nothing but the call was said
    engine.reply = lambda call: "Got it.</think>It is sunny."
    follow = client.responses.create(model="m", previous_response_id=r.id, tools=TOOLS, input=[
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}])
    prompt = _prompt(engine)
    assert follow.output_text == "It is sunny."
    assert prompt.index("get_weather") < prompt.index("sunny, 21 C")
    # the same turn replayed by the client instead of previous_response_id
    replay = [{"role": "user", "content": "Weather in Paris?"}] + [o.model_dump() for o in r.output] + [
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}]
    client.responses.create(model="m", input=replay, tools=TOOLS)
    assert _prompt(engine) == prompt


def test_function_calls_stream_as_items(served):
    engine, base = served
    engine.reply = lambda call: "I should look.</think>\n\n" + HERMES_CALL
    with _client(base).responses.stream(model="m", input="Weather?", tools=TOOLS) as stream:
        events = list(stream)
        final = stream.get_final_response()
    added = [e.item.type for e in events if e.type == "response.output_item.added"]
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert added == ["reasoning", "function_call"] and json.loads(args) == {"city": "Paris"}
    assert final.output[-1].type == "function_call" and final.output[-1].arguments == args


def test_tool_choice_names_a_function(served):
    engine, base = served
    engine.reply = lambda call: "ok</think>" + HERMES_CALL
    _client(base).responses.create(model="m", input="Weather?", tools=TOOLS,
                                   tool_choice={"type": "function", "name": "get_weather"})
    tag = json.loads(engine.calls[-1]["sampling_params"]["structural_tag"])
    assert "get_weather" in json.dumps(tag)


@pytest.mark.parametrize("body, param, match", [
    ({"messages": [{"role": "user", "content": "x"}]}, "messages", "use input"),
    ({"input": "x", "max_tokens": 5}, "max_tokens", "max_output_tokens"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type", "function tools only"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}]},
     "input[0].content[0].type", "text only"),
    ({"input": "x", "background": True}, "background", "not supported"),
    ({"input": "x", "conversation": "conv_1"}, "conversation", "not supported"),
    ({"input": "x", "prompt": {"id": "pmpt_1"}}, "prompt", "not supported"),
    ({"input": "x", "text": {"format": {"type": "yaml"}}}, "text.format.type", "json_schema"),
    ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id", "call_id"),
    ({"input": []}, "input", "at least one"),
    ({"input": "x", "top_k": "many"}, "top_k", ""),
    ({"input": "x", "text": {"format": {"type": "json_schema", "name": "x", "schema": 5}}}, "text.format.schema", ""),
    # audit (Responses) F3 / F5: OpenAI's bounds the request model lets through
    ({"input": "x", "stream": True, "stream_options": 5}, "stream_options", "must be an object"),
    ({"input": "x", "stream_options": {"include_obfuscation": False}}, "stream_options", "stream is true"),
    ({"input": "x", "include": ["message.output_text.logprobs", "not.a.value"]}, "include[1]", "not.a.value"),
    ({"input": "x", "temperature": 7}, "temperature", "between 0 and 2"),
    ({"input": "x", "metadata": {"k": 5}}, "metadata.k", "string"),
])
def test_bad_requests_name_their_field(served, body, param, match):
    engine, base = served
    r = httpx.post(f"{base}/v1/responses", json=body)
    error_response(r, 400, param, match)
    assert httpx.post(f"{base}/v1/responses", json={"input": "x"}).status_code == 200


def test_stream_events_carry_their_names(served):
    engine, base = served
    with httpx.stream("POST", f"{base}/v1/responses", json={"input": "Capital?", "stream": True}) as r:
        lines = [line for line in r.iter_lines() if line]
    names = [line[len("event: "):] for line in lines if line.startswith("event: ")]
    datas = [json.loads(line[len("data: "):]) for line in lines if line.startswith("data: ")]
    assert names == [d["type"] for d in datas] and names[-1] == "response.completed"


# ---------------------------------------------------------------- the real engine

def test_real_engine_answers_valid_json_after_reasoning(reasoning_engine):
    """A random model under a thinking budget: the answer still comes, valid for the schema, both ways."""
    with running_server(reasoning_engine) as base:
        client = _client(base)
        r = client.responses.parse(model="m", input="Capital of France?", text_format=CapitalInfo,
                                   max_output_tokens=96, temperature=0.8,
                                   extra_body={"max_reasoning_tokens": 16, "seed": 1})
        assert isinstance(r.output_parsed, CapitalInfo) and r.status == "completed"
        # the thinking budget caps the reasoning (a random model may also end it itself: EOS becomes the end)
        assert r.output[0].type == "reasoning" and 1 <= r.usage.output_tokens_details.reasoning_tokens <= 16 + 8
        with client.responses.stream(model="m", input="Capital of Italy?", text_format=CapitalInfo,
                                     max_output_tokens=96, extra_body={"max_reasoning_tokens": 16}) as stream:
            final = stream.get_final_response()
        assert isinstance(final.output_parsed, CapitalInfo)
        events = sse_events(httpx.post(f"{base}/v1/responses", timeout=60, json={
            "input": "Hi", "stream": True, "max_output_tokens": 24, "temperature": 0}))
        assert events[-1]["type"] in ("response.completed", "response.incomplete")
        # a grammar that fails to compile is named as this request named it (audit 13: response_format...)
        bad = {"type": "json_schema", "name": "x", "schema": {"type": "string", "pattern": "(a)\\1"}}
        for stream in (False, True):
            r = httpx.post(f"{base}/v1/responses", timeout=60, json={"input": "Hi", "text": {"format": bad},
                                                                      "stream": stream})
            error_response(r, 400, "text.format.schema", "^text.format.schema: ")
        # a tool whose schema is not one is named as this request names it
        broken = {"type": "function", "name": "broken", "parameters": {"type": "object", "properties": 5}}
        r = httpx.post(f"{base}/v1/responses", timeout=60, json={"input": "Hi", "tools": [TOOLS[0], broken],
                                                                  "tool_choice": "required"})
        error_response(r, 400, "tools[1].parameters", "^tools\\[1\\].parameters: not a valid JSON schema for "
                                                      "function 'broken': 5 is not of type 'object'")


def test_real_engine_logprobs_cover_the_answer_tokens(reasoning_engine):
    """include message.output_text.logprobs (was a 400): one entry per answer token, the reasoning's (its
    markers included) left out, each with top_logprobs alternatives; streamed with the text deltas, the
    same entries as the whole response; none unless `include` asks (top_logprobs alone: how many)."""
    body = {"input": "Capital?", "max_output_tokens": 40, "temperature": 0, "max_reasoning_tokens": 8,
            "include": ["message.output_text.logprobs"], "top_logprobs": 2}
    with running_server(reasoning_engine) as base:
        whole = httpx.post(f"{base}/v1/responses", json=body, timeout=60).json()
        part = next(o for o in whole["output"] if o["type"] == "message")["content"][0]
        usage = whole["usage"]
        assert usage["output_tokens_details"]["reasoning_tokens"] > 0
        assert len(part["logprobs"]) == usage["output_tokens"] - usage["output_tokens_details"]["reasoning_tokens"]
        assert "".join(e["token"] for e in part["logprobs"]) == part["text"]
        assert all(len(e["top_logprobs"]) == 2 and e["logprob"] <= 0 for e in part["logprobs"])

        events = sse_events(httpx.post(f"{base}/v1/responses", json={**body, "stream": True}, timeout=60))
        streamed = [e for ev in events if ev["type"] == "response.output_text.delta" for e in ev["logprobs"]]
        done = next(ev for ev in events if ev["type"] == "response.output_text.done")
        final = next(o for o in events[-1]["response"]["output"] if o["type"] == "message")["content"][0]
        assert streamed == done["logprobs"] == final["logprobs"] == part["logprobs"]  # greedy: the same answer

        # an answer that ends on the model's end token (a schema's): that token, not text, has no entry
        schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
        closed = {**body, "text": {"format": {"type": "json_schema", "name": "x", "schema": schema}},
                  "max_output_tokens": 64}
        whole = httpx.post(f"{base}/v1/responses", json=closed, timeout=60).json()
        assert whole["status"] == "completed"
        part = next(o for o in whole["output"] if o["type"] == "message")["content"][0]
        assert "".join(e["token"] for e in part["logprobs"]) == part["text"]
        events = sse_events(httpx.post(f"{base}/v1/responses", json={**closed, "stream": True}, timeout=60))
        streamed = [e for ev in events if ev["type"] == "response.output_text.delta" for e in ev["logprobs"]]
        done = next(ev for ev in events if ev["type"] == "response.output_text.done")
        assert streamed == done["logprobs"] == part["logprobs"]

        for extra in ({"include": []}, {"include": None, "top_logprobs": 3}):
            plain = httpx.post(f"{base}/v1/responses", json={**body, **extra}, timeout=60).json()
            assert next(o for o in plain["output"] if o["type"] == "message")["content"][0]["logprobs"] == []


def test_a_stream_and_a_whole_response_have_the_same_items(served):
    """Audit 13: an answer cut inside its reasoning had an (empty) message whole but none streamed; an added
    item carried its content part, which content_part.added then sent again."""
    engine, base = served
    engine.reply = lambda call: "Still thinking, no end"
    engine.finish_reason = {"type": "length", "matched": None}
    client = _client(base)
    try:
        whole = client.responses.create(model="m", input="Capital?")
        with client.responses.stream(model="m", input="Capital?") as stream:
            events = list(stream)
    finally:
        engine.finish_reason = {"type": "stop", "matched": None}
    final = next(e for e in events if e.type == "response.incomplete").response
    assert [o.type for o in final.output] == [o.type for o in whole.output] == ["reasoning", "message"]
    added = [e.item for e in events if e.type == "response.output_item.added"]
    parts = [e for e in events if e.type == "response.content_part.added"]
    assert all(item.content == [] for item in added) and len(parts) == len(added)


def test_the_store_keeps_the_newest_within_its_count_and_size():
    from thinkform.server.response_store import ResponseStore, StoredResponse

    store = ResponseStore(capacity=3, max_bytes=6000)
    for i in range(5):
        store.put(f"r{i}", StoredResponse({"id": f"r{i}"}, [{"role": "user", "content": "x" * 100}]))
    assert [store.get(f"r{i}") is not None for i in range(5)] == [False, False, True, True, True]
    store.put("big", StoredResponse({"id": "big"}, [{"role": "user", "content": "y" * 4000}]))
    assert store.get("big") is not None and len(store) == 1  # the older ones made room
    assert store.delete("big") and not store.delete("big") and len(store) == 0 and store.bytes == 0


def test_the_store_holds_about_its_bound_in_memory():
    """Audit (Responses) F2: the bound counted the JSON of the response and conversation only (not the input
    items), ~10x less than the dicts and strings kept: a store "within 256 MiB" held 2.6 GB. Now the memory
    it really holds (traced) is near its bound."""
    import gc
    import tracemalloc

    from thinkform.server.response_store import ResponseStore, StoredResponse
    from thinkform.server.responses_api import input_items, input_messages

    bound = 2 * 2**20
    tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        store = ResponseStore(max_bytes=bound)
        for n in range(300):  # every request resends its history (the SDK's `input += r.output`)
            items = [item for t in range(20) for item in (
                {"role": "user", "content": f"question {t} of {n}"},
                {"type": "function_call", "call_id": f"c{t}", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": f"c{t}", "output": "x" * 20})]
            answer = {"role": "assistant", "content": "x" * 20}
            store.put(f"r{n}", StoredResponse({"id": f"r{n}", "output": []}, input_messages(items) + [answer],
                                              input_items(items)))
            del items, answer
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert 0 < len(store) < 300  # the bound dropped the oldest
    assert 0.8 * bound < held < 1.2 * bound, (held, store.bytes)


# ---------------------------------------------------------------- audit (Responses): truncation, aborts, ...

def _history(turns: int) -> list[dict]:
    """A long agent conversation: each turn a question, a call, its output and an answer."""
    items = []
    for i in range(turns):
        items += [{"role": "user", "content": f"Old question {i}: " + "words " * 12},
                  {"type": "function_call", "call_id": f"call_{i}", "name": "get_weather",
                   "arguments": json.dumps({"city": f"City{i}"})},
                  {"type": "function_call_output", "call_id": f"call_{i}", "output": f"sunny {i}."},
                  {"role": "assistant", "content": f"Old answer {i}."}]
    return items + [{"role": "user", "content": "Latest question: weather in Paris?"}]


def test_truncation_auto_drops_the_oldest_items_whole(served):
    """Audit (Responses) F1: truncation "auto" kept the last context-1 tokens of the templated prompt: the
    instructions and tools were cut off the front, a message cut in half, no room left for the answer. Now
    the oldest items go whole (a call with its output), the system turn stays, max_output_tokens fits (by
    default min(4096, context/4)), and a last item too long on its own is a 400 naming input."""
    engine, base = served
    history = _history(40)
    engine.context_length = 1024  # room for two of the (whole) turns beside a quarter of it kept for the answer
    for room, extra in ((64, {"max_output_tokens": 64}), (min(4096, engine.context_length // 4), {})):
        r = httpx.post(f"{base}/v1/responses", timeout=60, json={
            "input": history, "instructions": "You are WeatherBot.", "tools": TOOLS, "truncation": "auto", **extra})
        assert r.status_code == 200, r.text
        ids, prompt = engine.calls[-1]["input_ids"], _prompt(engine)
        system = prompt[:prompt.index("<|im_start|>user")]  # the system turn, whole: instructions and tools
        assert system.startswith("<|im_start|>system\n") and "You are WeatherBot." in system
        assert '"name": "get_weather", "description": "Weather of a city"' in system
        assert len(ids) + room <= engine.context_length
        assert "Latest question: weather in Paris?" in prompt
        kept = [i for i in range(40) if f'City{i}"' in prompt or f"sunny {i}." in prompt or f"Old answer {i}." in prompt
                or f"Old question {i}:" in prompt]
        assert kept and kept == list(range(kept[0], 40)) and kept[0] > 0  # the newest turns, the oldest gone
        for i in kept[1:]:  # whole messages, and each call with its output
            assert f"Old question {i}: " + "words " * 12 in prompt and f'City{i}"' in prompt and f"sunny {i}." in prompt
        assert (f'City{kept[0]}"' in prompt) == (f"sunny {kept[0]}." in prompt)
    # the whole conversation is still stored: the next turn truncates afresh
    assert len(list(_client(base).responses.input_items.list(r.json()["id"], limit=100))) == len(history)
    too_long = [{"role": "user", "content": "Old question: " + "words " * 1200}]
    r = httpx.post(f"{base}/v1/responses", json={"input": history[:4] + too_long, "truncation": "auto"})
    error_response(r, 400, "input", "truncation")


ALTERNATING = ("{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
               "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
               "{% endif %}{{ '<start_of_turn>' + message['role'] + '\\n' + message['content'] + '<end_of_turn>\\n' }}"
               "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}")


def test_truncation_auto_keeps_a_conversation_that_alternates():
    """Review: a user message could go while its answer stayed; Gemma's and Mistral's templates refuse a
    conversation that starts with the assistant, and that 400 ended the search."""
    from fake_engine import FakeEngine

    engine = FakeEngine(reasoning_parser=None)
    engine.chat_template = ALTERNATING
    history = [m for i in range(30) for m in ({"role": "user", "content": f"Question {i}: " + "words " * 10},
                                              {"role": "assistant", "content": f"Answer {i}."})]
    with running_server(engine) as base:
        r = httpx.post(f"{base}/v1/responses", timeout=60, json={
            "input": history + [{"role": "user", "content": "Latest?"}], "truncation": "auto", "max_output_tokens": 64})
        assert r.status_code == 200, r.text
        prompt = engine.tokenizer.decode(engine.calls[-1]["input_ids"])
        assert prompt.startswith("<start_of_turn>user") and "Latest?" in prompt and "Question 0:" not in prompt


def test_stream_options_are_taken_when_streaming(served):
    """Audit (Responses) F3: OpenAI's stream_options ({"include_obfuscation": false}) was a 400."""
    engine, base = served
    stream = _client(base).responses.create(model="m", input="hi", stream=True,
                                            stream_options={"include_obfuscation": False})
    assert [e.type for e in stream][-1] == "response.completed"


def test_an_aborted_response_is_cancelled_with_its_reason(served):
    """Audit (Responses) F4: an abort's message item said "cancelled" (the SDK's type allows in_progress,
    completed or incomplete), the abort's reason was lost, and a failure mid-stream sent an `error` event
    numbered 0."""
    from openai.types.responses import ResponseOutputMessage

    engine, base = served
    engine.finish_reason = {"type": "abort", "matched": None, "message": "stop_regex timed out after 1 s"}
    try:
        whole = httpx.post(f"{base}/v1/responses", json={"input": "hi"}).json()
        events = sse_events(httpx.post(f"{base}/v1/responses", json={"input": "hi", "stream": True}))
        engine.finish_reason = {"type": "abort", "status_code": 500, "message": "engine failed mid-way"}
        failed = sse_events(httpx.post(f"{base}/v1/responses", json={"input": "hi", "stream": True}))
    finally:
        engine.finish_reason = {"type": "stop", "matched": None}
    for response in (whole, events[-1]["response"]):
        assert response["status"] == "cancelled" and response["error"]["message"] == "stop_regex timed out after 1 s"
        assert [(o["type"], o["status"]) for o in response["output"]] == [("reasoning", "completed"),
                                                                         ("message", "incomplete")]
        ResponseOutputMessage.model_validate(response["output"][1])  # raises on a status its type does not allow
    assert events[-1]["type"] == "response.failed"
    assert [e["sequence_number"] for e in failed] == list(range(len(failed)))
    assert failed[-1]["type"] == "error" and failed[-1]["message"] == "engine failed mid-way"


def test_cancel_says_background_responses_are_not_supported(served):
    """Audit (Responses) F5: responses.cancel(id) was FastAPI's bare 404 "Not Found"."""
    engine, base = served
    client = _client(base)
    r = client.responses.create(model="m", input="hi", top_logprobs=3)
    with pytest.raises(openai.BadRequestError, match="only background responses can be cancelled"):
        client.responses.cancel(r.id)
    error_response(httpx.post(f"{base}/v1/responses/resp_none/cancel"), 404, "response_id")
    assert r.top_logprobs == 3  # echoed, as the request's other settings
