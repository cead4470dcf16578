"""vLLM clients against the server: the response fields they read (reasoning, stop_reason, token ids as
names), request fields they send (allowed_token_ids, bad_words, request_id, include_reasoning, -1 budgets)
and the routes they call; what thinkform cannot do is a 400 naming the field, never silently ignored."""
from __future__ import annotations

import httpx
import pytest

from server_fixtures import error_response as _error, running_server, sse_events

QUESTION = [{"role": "user", "content": "Give me the capital of France."}]
GREEDY = {"temperature": 0, "max_new_tokens": 24, "ignore_eos": True}


def _chat(base: str, **body) -> httpx.Response:
    return httpx.post(f"{base}/v1/chat/completions", json={"messages": QUESTION, **body})


def test_reasoning_under_vllms_name_too_and_stop_reason(served):
    _, base = served
    choice = _chat(base).json()["choices"][0]
    assert choice["message"]["reasoning"] == choice["message"]["reasoning_content"] == "Let me think."
    assert "stop_reason" in choice and choice["stop_reason"] == choice["matched_stop"]
    with httpx.stream("POST", f"{base}/v1/chat/completions", json={"messages": QUESTION, "stream": True}) as r:
        events = [e for e in sse_events(r)[:-1] if e["choices"]]
    deltas = [e["choices"][0]["delta"] for e in events]
    assert "".join(d.get("reasoning", "") for d in deltas) == "Let me think."
    assert all(d.get("reasoning") == d.get("reasoning_content") for d in deltas)
    assert "stop_reason" in events[-1]["choices"][0]
    cmpl = httpx.post(f"{base}/v1/completions", json={"prompt": "hi"}).json()["choices"][0]
    assert "stop_reason" in cmpl


def test_include_reasoning_false_leaves_the_reasoning_out(served):
    _, base = served
    message = _chat(base, include_reasoning=False).json()["choices"][0]["message"]
    assert message["reasoning"] is None and message["reasoning_content"] is None and message["content"] == "Paris"
    with httpx.stream("POST", f"{base}/v1/chat/completions",
                      json={"messages": QUESTION, "stream": True, "include_reasoning": False}) as r:
        deltas = [e["choices"][0]["delta"] for e in sse_events(r)[:-1] if e["choices"]]
    assert not any(d.get("reasoning") or d.get("reasoning_content") for d in deltas)
    assert "".join(d.get("content") or "" for d in deltas) == "Paris"


def test_request_id_names_the_response(served):
    engine, base = served
    assert _chat(base, request_id="my-req").json()["id"] == "chatcmpl-my-req"
    assert engine.calls[-1]["rid"] == "my-req"
    assert httpx.post(f"{base}/v1/completions", json={"prompt": "hi", "request_id": "c1"}).json()["id"] == "cmpl-c1"


def test_return_tokens_as_token_ids_names_logprob_tokens_by_id(served):
    engine, base = served
    content = _chat(base, logprobs=True, top_logprobs=1, return_tokens_as_token_ids=True).json()[
        "choices"][0]["logprobs"]["content"]
    ids = engine.tokenizer.encode("Let me think.</think>\n\nParis", add_special_tokens=False)
    assert [c["token"] for c in content] == [f"token_id:{i}" for i in ids]
    lp = httpx.post(f"{base}/v1/completions", json={"prompt": "hi", "logprobs": 1, "echo": True,
                                                    "return_tokens_as_token_ids": True}).json()["choices"][0]["logprobs"]
    assert all(t.startswith("token_id:") for t in lp["tokens"])
    assert lp["text_offset"] == sorted(lp["text_offset"])  # offsets still count the text's characters


def test_fields_passed_to_the_engine(served):
    engine, base = served
    assert _chat(base, allowed_token_ids=[5, 6], bad_words=["Rome"], thinking_token_budget=-1).status_code == 200
    params = engine.calls[-1]["sampling_params"]
    assert params["allowed_token_ids"] == [5, 6] and params["bad_words"] == ["Rome"]
    assert "max_reasoning_tokens" not in params  # vLLM's -1: no budget
    assert _chat(base, thinking_token_budget=7).status_code == 200
    assert engine.calls[-1]["sampling_params"]["max_reasoning_tokens"] == 7


def test_truncate_prompt_tokens_and_add_special_tokens(served):
    engine, base = served
    tok = engine.tokenizer
    text = "one two three four five six"
    assert httpx.post(f"{base}/v1/completions", json={"prompt": text, "truncate_prompt_tokens": 3}).status_code == 200
    assert engine.calls[-1]["input_ids"] == tok.encode(text)[-3:]
    httpx.post(f"{base}/v1/completions", json={"prompt": [text, "seven"], "add_special_tokens": False})
    assert engine.calls[-1]["input_ids"] == [tok.encode(t, add_special_tokens=False) for t in (text, "seven")]
    assert _chat(base, truncate_prompt_tokens=4).status_code == 200
    assert len(engine.calls[-1]["input_ids"]) == 4


def test_completions_return_token_ids(served):
    engine, base = served
    tok = engine.tokenizer
    choices = httpx.post(f"{base}/v1/completions", json={"prompt": ["a b", "c"], "return_token_ids": True}).json()[
        "choices"]
    assert [c["prompt_token_ids"] for c in choices] == [tok.encode("a b"), tok.encode("c")]
    assert choices[0]["token_ids"] == tok.encode("Paris", add_special_tokens=False)
    plain = httpx.post(f"{base}/v1/completions", json={"prompt": "a b"}).json()["choices"][0]
    assert "token_ids" not in plain and "prompt_token_ids" not in plain
    _error(httpx.post(f"{base}/v1/completions", json={"prompt": "a", "stream": True, "return_token_ids": True}),
           400, "return_token_ids")


@pytest.mark.parametrize("route, body, param", [
    ("/v1/chat/completions", {"messages": QUESTION, "chat_template": "{{ messages }}"}, "chat_template"),
    ("/v1/chat/completions", {"messages": QUESTION, "use_beam_search": True}, "use_beam_search"),
    ("/v1/completions", {"prompt": "def f(", "suffix": "return x"}, "suffix"),
])
def test_what_thinkform_cannot_do_is_refused_by_name(served, route, body, param):
    _, base = served
    _error(httpx.post(f"{base}{route}", json=body), 400, param)


def test_vllm_routes(served):
    _, base = served
    assert httpx.get(f"{base}/version").json()["version"]
    assert httpx.post(f"{base}/ping").status_code == 200
    tok = httpx.post(f"{base}/tokenize", json={"prompt": "Hello world", "return_token_strs": True}).json()
    assert len(tok["token_strs"]) == len(tok["tokens"]) and all(isinstance(t, str) for t in tok["token_strs"])
    back = httpx.post(f"{base}/detokenize", json={"tokens": tok["tokens"]}).json()
    assert back["prompt"] == back["text"] == "Hello world"


def test_history_reasoning_under_either_name_reaches_the_template():
    from thinkform.server.protocol import ChatMessage

    m = ChatMessage(role="assistant", content="Paris", reasoning="It is Paris.")
    assert m.model_dump(exclude_none=True)["reasoning_content"] == "It is Paris."


# ---------------------------------------------------------------- on the real engine

def test_allowed_token_ids_bad_words_and_min_tokens_on_the_engine(engine64):
    out = engine64.generate("Hello", {**GREEDY, "allowed_token_ids": [100, 101, 102]})
    assert set(out["output_ids"]) <= {100, 101, 102} and len(out["output_ids"]) == 24
    with pytest.raises(ValueError, match="allowed_token_ids"):
        engine64.generate("Hello", {**GREEDY, "allowed_token_ids": [1], "regex": "a+"})
    whole = engine64.generate("Hello", GREEDY)
    word = engine64.tokenizer.decode(whole["output_ids"][4:6])
    banned = engine64.generate("Hello", {**GREEDY, "bad_words": [word]})
    ids = engine64.tokenizer.encode(word, add_special_tokens=False)
    assert not any(banned["output_ids"][i:i + len(ids)] == ids for i in range(len(banned["output_ids"])))
    stop = engine64.tokenizer.decode(whole["output_ids"][1:3])
    early = engine64.generate("Hello", {**GREEDY, "stop": [stop]})
    late = engine64.generate("Hello", {**GREEDY, "stop": [stop], "min_new_tokens": 10})
    assert len(early["output_ids"]) < 10 and len(late["output_ids"]) >= 10  # no stop before min_new_tokens
    with pytest.raises(ValueError, match="min_new_tokens"):  # as SGLang and vLLM: not silently ignored
        engine64.generate("Hello", {**GREEDY, "max_new_tokens": 4, "min_new_tokens": 10})


def test_bad_words_under_a_grammar_give_way_where_it_allows_nothing_else(engine64):
    """Audit 12: regex (yes|no) with both first letters banned was a 500 (GateError): the grammar now wins
    where bad words would leave it no token; where it has another way, the bad word is still avoided."""
    tok = engine64.tokenizer
    firsts = sorted({tok.decode(tok.encode(w, add_special_tokens=False)[:1]) for w in ("yes", "no")})
    for seed in range(3):
        out = engine64.generate("Answer:", {"temperature": 1.0, "seed": seed, "max_new_tokens": 8,
                                            "regex": "(yes|no)", "bad_words": firsts})
        assert out["text"] in ("yes", "no") and out["meta_info"]["finish_reason"]["type"] == "stop", out
    yes = tok.encode("yes", add_special_tokens=False)
    if len(yes) == 1:  # one token: banning it leaves "no", the grammar's other way
        for seed in range(3):
            out = engine64.generate("Answer:", {"temperature": 1.0, "seed": seed, "max_new_tokens": 8,
                                                "regex": "(yes|no)", "bad_words": ["yes"]})
            assert out["text"] == "no", out


def test_text_the_grammar_forces_is_scored_when_logprobs_are_asked(engine64):
    """Audit 12: jump-forward appended forced text with logprob 0.0 and no alternatives (`yes` under
    (yes|no) read [-8.0, 0.0, 0.0]); with logprobs asked every token is sampled and scored by the model."""
    out = engine64.generate("Answer:", {"temperature": 0, "max_new_tokens": 64, "regex": "(yes|no)"},
                            return_logprob=True, top_logprobs_num=2)
    meta = out["meta_info"]
    assert out["text"] in ("yes", "no") and len(meta["output_token_logprobs"]) == len(out["output_ids"])
    assert all(value < 0 for value, _, _ in meta["output_token_logprobs"]), meta["output_token_logprobs"]
    assert all(len(top) == 2 for top in meta["output_top_logprobs"])


def test_stop_reason_is_null_where_the_models_eos_ended_it(engine64):
    """vLLM: stop_reason is the stop string or stop token id, None for EOS (audit 12: it was the EOS id,
    SGLang's matched_stop, which stays)."""
    with running_server(engine64) as base:
        for path, body in (("/v1/completions", {"prompt": "Answer:"}),
                           ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Answer:"}]})):
            choice = httpx.post(f"{base}{path}", timeout=60, json={
                **body, "max_tokens": 16, "temperature": 0, "regex": "(yes|no)"}).json()["choices"][0]
            assert choice["finish_reason"] == "stop" and choice["matched_stop"] in engine64.eos_token_ids
            assert choice["stop_reason"] is None, choice


def test_constraint_errors_name_the_field_the_request_sent(engine64):
    """Audit 12: a bad guided_json / guided_regex / structured_outputs.regex / response_format schema was a
    400 naming json_schema or regex, fields the client never sent; checked up front and at compile time."""
    cases = {"guided_json": {"guided_json": "{bad"}, "guided_regex": {"guided_regex": "(a"},
             "guided_grammar": {"guided_grammar": "root ::= foo"},
             "structured_outputs.regex": {"structured_outputs": {"regex": "(a"}},
             "response_format.json_schema.schema": {"response_format": {
                 "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}}}
    with running_server(engine64) as base:
        for sent, extra in cases.items():
            for path, body in (("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
                               ("/v1/completions", {"prompt": "hi"})):
                r = httpx.post(f"{base}{path}", timeout=60, json={**body, "max_tokens": 4, **extra})
                err = r.json()["error"]
                assert r.status_code == 400 and err["param"] == sent and err["message"].startswith(sent), (path, err)


def test_vllm_metric_names(engine64):
    with running_server(engine64) as base:
        httpx.post(f"{base}/generate", json={"text": "Hi", "sampling_params": {"max_new_tokens": 3}})
        text = httpx.get(f"{base}/metrics").text
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
                 "vllm:time_to_first_token_seconds_bucket", "vllm:e2e_request_latency_seconds_count"):
        assert f"\n{name}{{" in text, name


def test_metrics_dashboards_read_count_what_was_sent(engine64):
    """Audit 32: series SGLang's and vLLM's Grafana dashboards and alerts query were missing (finish reasons,
    token-count histograms, phase times, preemptions, throughput); the inter-token histogram took one mean per
    request (3 requests of 20 tokens: 3 observations, where SGLang and vLLM count 57 gaps)."""
    from test_reliability import parse_metrics

    def scrape(base: str) -> dict[str, float]:
        return parse_metrics(httpx.get(f"{base}/metrics").text)

    with running_server(engine64) as base:
        before = scrape(base)
        for _ in range(3):
            httpx.post(f"{base}/generate", timeout=60, json={"text": "Hi", "sampling_params": {
                "max_new_tokens": 20, "ignore_eos": True, "temperature": 0}})
        after = scrape(base)
    model = f'model_name="{engine64.served_model_name}"'

    def grew(key: str) -> float:
        return after[key] - before.get(key, 0)

    assert grew(f"vllm:inter_token_latency_seconds_count{{{model}}}") == 3 * 19
    assert grew(f"sglang:inter_token_latency_seconds_count{{{model}}}") == 3 * 19
    assert grew(f"vllm:request_time_per_output_token_seconds_count{{{model}}}") == 3
    assert grew(f'vllm:request_success_total{{{model},finished_reason="length"}}') == 3
    assert grew(f"vllm:request_generation_tokens_sum{{{model}}}") == 60
    assert grew(f'vllm:request_generation_tokens_bucket{{le="20.0",{model}}}') == 3
    assert grew(f"vllm:request_max_num_generation_tokens_sum{{{model}}}") == 60
    for phase in ("queue", "prefill", "decode", "inference"):
        assert grew(f"vllm:request_{phase}_time_seconds_count{{{model}}}") == 3
    assert f"vllm:num_preemptions_total{{{model}}}" in after and f"vllm:gpu_cache_usage_perc{{{model}}}" in after
    assert grew(f"vllm:prefix_cache_queries_total{{{model}}}") == grew(f"vllm:prompt_tokens_total{{{model}}}")
    assert after[f"sglang:gen_throughput{{{model}}}"] > 0
    assert after[f"sglang:max_total_num_tokens{{{model}}}"] == engine64.parts.pool.token_capacity
    assert f'sglang:e2e_request_latency_seconds_bucket{{le="2400.0",{model}}}' in after  # long reasoning fits


def test_time_to_first_token_counts_the_grammar_compile(engine64, monkeypatch):
    """Audit 32: TTFT and end-to-end latency began after the request's grammar compiled: a 0.7 s compile was
    missing from every dashboard of an engine whose requests are mostly constrained (vLLM and SGLang count
    from the request's arrival)."""
    import time

    from thinkform.structured.cache import GrammarCache
    original = GrammarCache._compile

    def slow(cache, job):
        time.sleep(0.5)
        original(cache, job)
    monkeypatch.setattr(GrammarCache, "_compile", slow)
    out = engine64.generate("Hi", {"max_new_tokens": 2, "regex": "(yes|no) audit 32"})
    assert out["meta_info"]["e2e_latency"] >= 0.5 and out["meta_info"]["ttft"] >= 0.5


def test_prompt_logprobs_as_vllm_gives_them(engine64):
    """vLLM's prompt_logprobs: per prompt token (the first None) the token's own logprob and rank and the
    row's top k, on completions (per choice, streamed in a choice's first chunk) and chat (at the top)."""
    text = "The capital of France is Paris"
    ids = engine64.tokenizer.encode(text)
    with running_server(engine64) as base:
        r = httpx.post(f"{base}/v1/completions", json={"prompt": text, "max_tokens": 2, "prompt_logprobs": 2,
                                                        "temperature": 0})
        native = httpx.post(f"{base}/generate", json={"text": text, "sampling_params": {"max_new_tokens": 0},
                                                      "return_logprob": True, "logprob_start_len": 0,
                                                      "top_logprobs_num": 2}).json()["meta_info"]
        with httpx.stream("POST", f"{base}/v1/completions", json={"prompt": text, "max_tokens": 2, "stream": True,
                                                                  "prompt_logprobs": 2}) as s:
            events = [e for e in sse_events(s)[:-1] if e["choices"]]
        chat = httpx.post(f"{base}/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 2,
                                                               "prompt_logprobs": 0}).json()
    choice = r.json()["choices"][0]
    assert choice["logprobs"] is None  # output logprobs were not asked for
    rows = choice["prompt_logprobs"]
    assert len(rows) == len(ids) and rows[0] is None
    for i, row in enumerate(rows[1:], start=1):
        own = row[str(ids[i])]
        assert own["logprob"] == pytest.approx(native["input_token_logprobs"][i][0], abs=1e-5)
        assert own["decoded_token"] == engine64.tokenizer.decode([ids[i]])
        top = native["input_top_logprobs"][i]
        assert (own["rank"] == 1) == (top[0][1] == ids[i]) and own["rank"] >= 1
        assert {str(t) for _, t, _ in top} <= set(row) and len(row) <= 3
    assert [e["choices"][0].get("prompt_logprobs") is not None for e in events].count(True) == 1
    assert events[0]["choices"][0]["prompt_logprobs"] == rows
    prompt = chat["prompt_logprobs"]
    assert prompt[0] is None and all(len(row) == 1 for row in prompt[1:])  # k 0: the token itself
    assert chat["choices"][0]["logprobs"] is None


def test_audit_mends(served, engine64):
    engine, base = served
    assert httpx.post(f"{base}/v1/completions", json={"prompt": "one two", "truncate_prompt_tokens": -1}).status_code == 200
    assert engine.calls[-1]["input_ids"] == engine.tokenizer.encode("one two")  # -1: all that fits
    _error(_chat(base, stream=True, prompt_logprobs=1), 400, "prompt_logprobs")
    # one list of ids for a whole batch serves every prompt
    outs = engine64.generate(["Hello", "Hi there"], {**GREEDY, "max_new_tokens": 2}, return_logprob=True,
                             token_ids_logprob=[[10, 11]])
    assert all([t for _, t, _ in o["meta_info"]["output_token_ids_logprobs"][0]] == [10, 11] for o in outs)
    assert "output_token_ids_logprobs" not in engine64.generate(["Hello"], GREEDY, return_logprob=True,
                                                                 token_ids_logprob=[[]])[0]["meta_info"]


def test_deepseekv31_calls_with_whitespace_after_the_separator():
    from thinkform.server.tools import get_tool_call_parser

    text = ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>\n{\"city\": \"Tokyo\"}"
            "<｜tool▁call▁end｜><｜tool▁calls▁end｜>")
    normal, calls = get_tool_call_parser("deepseekv31").parse(text)
    assert normal == "" and [(c.name, c.arguments) for c in calls] == [("get_weather", '{"city": "Tokyo"}')]


def test_lark_grammars_work_as_in_vllm(served):
    """Audit 36: vLLM reads a grammar with no `::=` rule as Lark (its documented SQL example); ours failed
    with an EBNF lexer error. It is checked by xgrammar's own Lark reader; one it cannot read is a 400 saying so."""
    engine, base = served
    sql = ('?start: select_statement\n?select_statement: "SELECT " column_list " FROM " table_name\n'
           '?column_list: column_name ("," column_name)*\n?table_name: identifier\n?column_name: identifier\n'
           '?identifier: /[a-zA-Z_][a-zA-Z0-9_]*/\n')
    for body in ({"guided_grammar": sql}, {"structured_outputs": {"grammar": sql}}):
        assert _chat(base, **body).status_code == 200
        assert engine.calls[-1]["sampling_params"]["ebnf"] == sql  # as written: each backend reads the Lark
    r = _chat(base, guided_grammar='start: NAME\n%import common.NAME')
    _error(r, 400, param="guided_grammar", match="Lark")
    assert _chat(base, guided_grammar='root ::= "a" | "b"').status_code == 200  # EBNF stays EBNF
    assert engine.calls[-1]["sampling_params"]["ebnf"] == 'root ::= "a" | "b"'


def test_a_false_schema_is_refused(served):
    """Audit 36: `"schema": false` (no value satisfies it) was served as any JSON."""
    _, base = served
    r = _chat(base, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": False}})
    _error(r, 400, param="response_format.json_schema.schema", match="admits no value")


def test_openai_choices_say_whether_the_constraint_held(engine64):
    """Audit 36: what no grammar enforces (a lookahead) is checked on the finished answer, but only native
    meta_info said so; an OpenAI client got "stop" for `ab` under `(?!ab)[ab]{2}`. Each constrained choice
    now carries constraint_satisfied, whole and streamed."""
    import re

    with running_server(engine64) as base:
        for path, body in (("/v1/chat/completions", {"messages": QUESTION}), ("/v1/completions", {"prompt": "hi"})):
            for seed in range(3):
                req = {**body, "max_tokens": 8, "temperature": 1.0, "seed": seed, "regex": "(?!ab)[ab]{2}"}
                choice = httpx.post(f"{base}{path}", timeout=60, json=req).json()["choices"][0]
                text = choice["message"]["content"] if "message" in choice else choice["text"]
                assert choice["constraint_satisfied"] == bool(re.fullmatch("(?!ab)[ab]{2}", text)), (text, choice)
                with httpx.stream("POST", f"{base}{path}", timeout=60, json={**req, "stream": True}) as r:
                    last = [e for e in sse_events(r)[:-1] if e["choices"]][-1]["choices"][0]
                assert last["constraint_satisfied"] == choice["constraint_satisfied"]
            plain = httpx.post(f"{base}{path}", timeout=60, json={**body, "max_tokens": 2}).json()["choices"][0]
            assert "constraint_satisfied" not in plain


def test_a_bad_token_id_error_names_one_field_in_param_and_message(engine64):
    """Audit 35: the param said messages (or prompt) and the message input_ids."""
    with running_server(engine64) as base:
        for path, body, param in (("/v1/chat/completions", {"messages": QUESTION, "input_ids": [10**9]}, "input_ids"),
                                  ("/v1/completions", {"prompt": [[]]}, "prompt")):
            err = httpx.post(f"{base}{path}", timeout=60, json={**body, "max_tokens": 2}).json()["error"]
            assert err["param"] == param and err["message"].startswith(f"{param}:"), err


def test_sglangs_ebnf_field_is_never_read_as_lark(served):
    """Review: the Lark reading is vLLM's, for its grammar fields; SGLang's `ebnf` stays EBNF (its errors EBNF's)."""
    engine, base = served
    r = _chat(base, ebnf='start: "a"')
    if r.status_code == 200:
        assert engine.calls[-1]["sampling_params"]["ebnf"] == 'start: "a"'
    else:
        assert r.status_code == 400 and "Lark" not in r.text, r.text
