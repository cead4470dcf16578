"""Every finished constrained answer satisfies its constraint: random tiny models, all backends, all kinds."""
from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from constraint_cases import CASES, _json as _json_check

BACKENDS = ["xgrammar", "llguidance", "outlines"]


@pytest.fixture(scope="module")
def engines(tiny_model_dirs):
    from thinkform import Engine

    built = {b: Engine(model_path=str(tiny_model_dirs["qwen2"]), reasoning_parser="deepseek-r1", grammar_backend=b,
                       max_total_tokens=16384) for b in BACKENDS}
    yield built
    for e in built.values():
        e.shutdown()


def _supported(engine, case) -> bool:
    return case.kind in engine.parts.grammar_backend.kinds


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(backend=st.sampled_from(BACKENDS), case=st.sampled_from(CASES), reasoning=st.booleans(),
       temperature=st.sampled_from([0.0, 0.7, 1.5]), n=st.sampled_from([1, 2]), seed=st.integers(0, 2**16))
def test_finished_answers_satisfy_constraint(engines, backend, case, reasoning, temperature, n, seed):
    engine = engines[backend]
    if not _supported(engine, case):
        with pytest.raises(ValueError, match=case.kind.split("_")[0]):
            engine.generate("Give me", {"max_new_tokens": 8, **case.params})
        return
    params = {"temperature": temperature, "seed": seed, "n": n, "max_new_tokens": 96, "max_reasoning_tokens": 12,
              **case.params}
    try:
        outs = engine.generate("Give me the information of the capital of France.", params,
                               require_reasoning=reasoning)
    except ValueError as e:  # outlines refuses keywords it would silently drop: a clear error, not a bad answer
        assert backend == "outlines" and "cannot enforce" in str(e), e
        return
    outs = outs if isinstance(outs, list) else [outs]
    for out in outs:
        meta = out["meta_info"]
        answer = meta["content"] if reasoning else out["text"]
        if reasoning:
            assert meta["reasoning_content"] is not None
            assert out["text"].count("</think>") == 1
        if meta["finish_reason"]["type"] == "stop":
            assert meta["constraint_satisfied"] is True
            case.check(answer)
        else:
            assert meta["finish_reason"]["type"] == "length"


@pytest.mark.parametrize("backend", BACKENDS)
def test_seed_schema_no_runaway_greedy(engines, backend):
    """The seed's integer ran to max_new_tokens under SGLang; here the number ends and the JSON closes."""
    schema = {"type": "object", "properties": {"population": {"type": "integer"}, "ratio": {"type": "number"}},
              "required": ["population", "ratio"]}
    for prompt in ("Give me", "The population of Paris is", "1234567890"):
        out = engines[backend].generate(prompt, {"temperature": 0, "max_new_tokens": 120, "json_schema": schema})
        assert out["meta_info"]["finish_reason"]["type"] == "stop", out["text"]
        _json_check(schema)(out["text"])


def _call_tag(schema: dict, triggered: bool = False) -> str:
    """A structural tag for one tool, `plan`, written `<function=plan>{...}</function>`: the answer is exactly
    one call, or (triggered) free text in which calls may start."""
    tags = [{"type": "tag", "begin": "<function=plan>", "end": "</function>",
             "content": {"type": "json_schema", "json_schema": schema}}]
    fmt = ({"type": "triggered_tags", "triggers": ["<function="], "tags": tags} if triggered else
           {"type": "tags_with_separator", "separator": "\n", "at_least_one": True, "stop_after_first": True,
            "tags": tags})
    return json.dumps({"type": "structural_tag", "format": fmt})


def _favour(engine, wanted) -> dict[str, float]:
    """A logit_bias that makes the model write tokens whose text passes `wanted` wherever it may."""
    return {str(t): 30.0 for t in range(len(engine.tokenizer)) if wanted(engine.tokenizer.decode([t]).strip())}


def test_tool_call_arguments_no_runaway(engines):
    """The same inside a tool call (a structural tag, as `tool_choice` required builds): a model that writes
    digits wherever it may still closes its numbers within 17 digits, and the call ends."""
    engine = engines["xgrammar"]
    schema = {"type": "object", "properties": {"days": {"type": "integer"}, "ratio": {"type": "number"}},
              "required": ["days", "ratio"]}
    for prompt in ("Give me", "1234567890"):
        out = engine.generate(prompt, {"temperature": 0, "max_new_tokens": 120, "structural_tag": _call_tag(schema),
                                       "logit_bias": _favour(engine, str.isdigit)})
        assert out["meta_info"]["finish_reason"]["type"] == "stop", out["text"]
        args = out["text"].removeprefix("<function=plan>").removesuffix("</function>")
        _json_check(schema)(args)
        for number in re.findall(r"-?(\d+)(?:\.(\d+))?(?:[eE][+-]?(\d+))?", args):
            assert len(number[0]) + len(number[1]) <= 17 and len(number[2]) <= 3, args


def test_tool_call_near_its_budget_closes(engines):
    """A tool call whose string argument would run past max_new_tokens is steered to its end (as a JSON
    answer is): the call arrives whole, marked closed_by_budget."""
    engine = engines["xgrammar"]
    schema = {"type": "object", "properties": {"note": {"type": "string"}, "days": {"type": "integer"}},
              "required": ["note", "days"]}
    for jump in (True, False):
        engine.loop.jump_enabled = jump
        try:
            out = engine.generate("Note:", {"temperature": 0, "max_new_tokens": 48, "structural_tag": _call_tag(schema),
                                            "logit_bias": _favour(engine, str.isalpha)})
        finally:
            engine.loop.jump_enabled = True
        meta = out["meta_info"]
        assert meta["finish_reason"]["type"] == "stop" and meta["closed_by_budget"], out["text"]
        assert out["text"].startswith("<function=plan>") and out["text"].endswith("</function>"), out["text"]
        _json_check(schema)(out["text"].removeprefix("<function=plan>").removesuffix("</function>"))


def test_free_text_beside_tool_calls_is_not_closed(engines):
    """Closing steers only a tool call's JSON: plain text where a call could start runs to max_new_tokens
    and says so ("length"), rather than being ended early as if the model had stopped."""
    engine = engines["xgrammar"]
    out = engine.generate("Note:", {"temperature": 0, "max_new_tokens": 40, "logit_bias": _favour(engine, str.isalpha),
                                    "structural_tag": _call_tag({"type": "object"}, triggered=True)})
    assert "<function=" not in out["text"]
    assert out["meta_info"]["finish_reason"]["type"] == "length" and not out["meta_info"]["closed_by_budget"]


def test_pythonic_tool_calls_from_a_random_model_parse_and_fit(engines):
    """tool_choice required with the pythonic format: whatever a random model samples, a finished answer
    is a list of calls the parser reads, with arguments that match the tools' schemas."""
    import jsonschema

    from thinkform.server.tools import get_tool_call_parser

    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 12}, "days": {"type": "integer"}}, "required": ["city"]}}}]
    parser = get_tool_call_parser("pythonic")
    tag = json.dumps(parser.structural_tag(tools, "required"))
    outs = engines["xgrammar"].generate(["Weather?"] * 6, [{"temperature": 1.0, "seed": i, "max_new_tokens": 96,
                                                            "structural_tag": tag} for i in range(6)])
    finished = [o for o in outs if o["meta_info"]["finish_reason"]["type"] == "stop"]
    assert len(finished) >= 3
    for out in finished:
        normal, calls = parser.parse(out["text"])
        assert normal == "" and calls, out["text"]
        for call in calls:
            jsonschema.validate(json.loads(call.arguments), tools[0]["function"]["parameters"])


def test_two_constraints_is_an_error(engines):
    with pytest.raises(ValueError, match="regex"):
        engines["xgrammar"].generate("Hi", {"regex": "a+", "ebnf": 'root ::= "a"'})


@pytest.mark.parametrize("params, field", [
    ({"json_schema": "{not json"}, "json_schema"),
    ({"json_schema": {"type": "object", "properties": {"a": {"type": "strin"}}}}, "json_schema"),
    ({"regex": "(unclosed"}, "regex"),
    ({"ebnf": "root ::= missing_rule"}, "ebnf"),
    ({"ebnf": "root ::= root"}, "ebnf"),  # compiles, but no text satisfies it: a request could only fail
    ({"regex": "\\"}, "regex"),  # llguidance reads it as the empty string: no answer either
])
@pytest.mark.parametrize("backend", ["xgrammar", "llguidance"])
def test_invalid_constraint_is_clean_error_and_engine_goes_on(engines, backend, params, field):
    engine = engines[backend]
    with pytest.raises(ValueError, match=field):
        engine.generate("Hi", {"max_new_tokens": 4, **params})
    ok = engine.generate("Hi", {"max_new_tokens": 4, "regex": "(Paris|London)"})
    assert ok["text"] in ("Paris", "London")


SELF_REQUIRING = {"$defs": {"n": {"type": "object", "properties": {"c": {"$ref": "#/$defs/n"}}, "required": ["c"],
                                  "additionalProperties": False}}, "$ref": "#/$defs/n"}


@pytest.mark.parametrize("params", [
    {"ebnf": 'root ::= "a" root'},
    {"ebnf": 'root ::= "b" | "a" x\nx ::= "a" x'},  # an answer ("b") exists; after "a" none does
    {"json_schema": json.dumps(SELF_REQUIRING)},
    {"structural_tag": json.dumps({"type": "structural_tag", "format": {
        "type": "triggered_tags", "triggers": ["<f="], "tags": [{"type": "tag", "begin": "<f=x>", "end": "</f>",
                                                                "content": {"type": "json_schema",
                                                                            "json_schema": SELF_REQUIRING}}]}})},
])
def test_a_grammar_with_no_finite_answer_is_refused_up_front(engines, params):
    """Audit 29: `root ::= "a" root` and an object that requires itself compiled; xgrammar's jump-forward then
    followed the forced `aaaa…` / `{"c": {"c": …` until the process ran out of memory (22 GB, killed), and
    without jump-forward the answer could only run to the token limit. A 400 naming the field now."""
    field = next(iter(params))
    with pytest.raises(ValueError, match=f"{field}: the constraint has no finite answer"):
        engines["xgrammar"].generate("Hi", {"max_new_tokens": 8, **params})
    if field != "structural_tag":  # llguidance's requests failed at the dead end ("token 0 is not allowed")
        with pytest.raises(ValueError, match=f"{field}: the constraint has no finite answer"):
            engines["llguidance"].generate("Hi", {"max_new_tokens": 8, **params})
    ok = engines["xgrammar"].generate("Hi", {"max_new_tokens": 8, "ebnf": 'root ::= "b" | "a" x\nx ::= "a" x?'})
    assert re.fullmatch("b|a+", ok["text"]), ok["text"]


def test_unending_rules_reads_xgrammars_printed_grammars():
    import xgrammar as xgr

    from thinkform.structured.unending import unending_rules

    def rules(ebnf: str) -> list[str]:
        return unending_rules(str(xgr.Grammar.from_ebnf(ebnf)))

    assert rules('root ::= "a" root') == ["root"]
    assert rules('root ::= x+\nx ::= "a" x') == ["root", "root_1", "x"]  # x+ is x, then x*: xgrammar's rules
    for fine in ('root ::= [a-z]+ ("," [0-9]*)? "x"{2,3}', 'root ::= x\nx ::= "(" x ")" | ""',
                 'root ::= ("a" | "b")* "c"', 'root ::= "a" root | "b"'):
        assert rules(fine) == [], fine
    optional = {**SELF_REQUIRING, "$defs": {"n": {**SELF_REQUIRING["$defs"]["n"], "required": []}}}
    assert unending_rules(str(xgr.Grammar.from_json_schema(json.dumps(optional)))) == []
    assert unending_rules("root ::= @@@ what") == []  # unreadable: no verdict, never a refusal


@pytest.mark.parametrize("backend", BACKENDS)
def test_answers_that_part_inside_a_character_arrive(engines, backend):
    """Sampled bytes that stop inside 東 leave the rest of it forced: jump-forward goes on from there (under
    xgrammar this aborted every such request with a UnicodeDecodeError)."""
    from constraint_cases import NON_ASCII_SCHEMA

    params = {"temperature": 1.0, "max_new_tokens": 48, "max_reasoning_tokens": 4, "json_schema": NON_ASCII_SCHEMA}
    for seed in range(8):
        out = engines[backend].generate("JSON:", {**params, "seed": seed}, require_reasoning=True)
        meta = out["meta_info"]
        assert meta["finish_reason"]["type"] == "stop", meta["finish_reason"]
        assert json.loads(meta["content"])["city"] in NON_ASCII_SCHEMA["properties"]["city"]["enum"]


@pytest.mark.parametrize("backend", ["xgrammar", "llguidance"])
def test_a_stop_string_never_cuts_a_constrained_answer_short(engines, backend):
    """A stop string ends the answer only where it is complete, and the answer keeps it: trimmed, `ab` with
    stop "b" became `a`, reported as a satisfied constraint."""
    for seed in range(6):
        out = engines[backend].generate("x", {"temperature": 1.0, "seed": seed, "max_new_tokens": 16,
                                              "regex": "ab(cd)?", "stop": ["b", "c"]})
        if out["meta_info"]["finish_reason"]["type"] == "stop":
            assert re.fullmatch("ab(cd)?", out["text"]), out["text"]


@pytest.mark.parametrize("backend", ["xgrammar", "llguidance"])
def test_a_stop_token_id_never_cuts_a_constrained_answer_short(engines, backend):
    """The same for stop_token_ids: a stop token the grammar took stays in the answer."""
    engine = engines[backend]
    stop = engine.tokenizer.convert_tokens_to_ids("c")
    stopped = 0
    for seed in range(8):
        out = engine.generate("x", {"temperature": 1.0, "seed": seed, "max_new_tokens": 16, "regex": "a(b|c)",
                                    "stop_token_ids": [stop]})
        assert re.fullmatch("a(b|c)", out["text"]), out["text"]
        stopped += out["meta_info"]["finish_reason"].get("matched") == stop
    assert stopped  # the stop token did end some of them


@pytest.mark.parametrize("max_new_tokens", [1, 2, 3])
def test_the_flags_describe_the_text_returned_when_the_budget_cuts_it(engines, max_new_tokens):
    """Forced text that fills max_new_tokens: the token sampled after it, which the output has no room
    for, must not count (it made a cut answer read as satisfied)."""
    out = engines["xgrammar"].generate("Answer:", {"temperature": 0, "max_new_tokens": max_new_tokens,
                                                   "regex": "Paris is (a|b)"})
    meta = out["meta_info"]
    assert meta["completion_tokens"] == len(out["output_ids"]) <= max_new_tokens
    assert meta["constraint_satisfied"] is bool(re.fullmatch("Paris is (a|b)", out["text"])), out


UNENFORCEABLE_SCHEMAS = [  # keywords no grammar enforces: each finished answer is checked against the schema
    {"type": "object", "properties": {"v": {"type": "array", "items": {"enum": [1, 2]}, "minItems": 3, "maxItems": 3,
                                            "uniqueItems": True}}, "required": ["v"]},
    {"type": "object", "properties": {"k": {"enum": ["a", "b"]}, "x": {"type": "integer"}}, "required": ["k"],
     "if": {"properties": {"k": {"const": "a"}}}, "then": {"required": ["x"]}},
    {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},  # draft 7
     "dependencies": {"a": ["b"]}},
    # both libraries read an overlapping oneOf as anyOf: an integer matches both branches
    {"type": "object", "properties": {"v": {"oneOf": [{"type": "integer"}, {"type": "number"}]}}, "required": ["v"]},
]


@pytest.mark.parametrize("backend", ["xgrammar", "llguidance"])
@pytest.mark.parametrize("schema", UNENFORCEABLE_SCHEMAS)
def test_constraint_satisfied_tells_the_truth_about_keywords_no_grammar_enforces(engines, schema, backend):
    """xgrammar ignores them and llguidance refuses them (they are left out of its grammar): either way the
    finished answer is checked against the whole schema."""
    import jsonschema

    verdicts = set()
    for seed in range(6):
        out = engines[backend].generate("x", {"temperature": 1.0, "seed": seed, "max_new_tokens": 48,
                                                 "json_schema": schema})
        meta = out["meta_info"]
        if meta["finish_reason"]["type"] != "stop":
            continue
        valid = jsonschema.Draft7Validator(schema).is_valid(json.loads(out["text"]))
        assert meta["constraint_satisfied"] is valid, out["text"]
        verdicts.add(valid)
    assert verdicts  # some answers finished


def test_tool_call_arguments_are_checked_for_keywords_no_grammar_enforces(engines):
    args = {"type": "object", "properties": {"xs": {"type": "array", "items": {"enum": [1]}, "minItems": 2,
                                                    "uniqueItems": True}}, "required": ["xs"]}
    tag = {"type": "structural_tag", "format": {"type": "tags_with_separator", "separator": "\n",
           "at_least_one": True, "stop_after_first": True, "tags": [
               {"type": "tag", "begin": '<tool_call>{"name": "f", "arguments": ',
                "content": {"type": "json_schema", "json_schema": args}, "end": "}</tool_call>"}]}}
    out = engines["xgrammar"].generate("x", {"temperature": 0, "max_new_tokens": 60, "structural_tag": tag})
    assert out["meta_info"]["finish_reason"]["type"] == "stop", out
    assert '"xs": [1, 1]' in out["text"] and out["meta_info"]["constraint_satisfied"] is False


def test_an_answer_check_that_cannot_run_leaves_the_grammars_verdict(engines):
    """`(?<word>…)` is ECMA (xgrammar takes it) but Python's re refuses it, so jsonschema cannot check the
    answer's uniqueItems: the request still answers (it once hung), with the grammar's verdict."""
    schema = {"type": "array", "uniqueItems": True, "minItems": 1, "maxItems": 2,
              "items": {"type": "string", "pattern": "^(?<word>[a-c])$"}}
    out = engines["xgrammar"].generate("x", {"temperature": 0, "max_new_tokens": 32, "json_schema": schema})
    assert out["meta_info"]["finish_reason"]["type"] in ("stop", "length")
    assert all(item in "abc" for item in json.loads(out["text"]))


def test_numbers_fit_a_double_by_default(engines):
    """17 significant digits and a two-digit exponent: no answer parses to infinity (1289E343 did)."""
    import math

    for seed in range(8):
        out = engines["xgrammar"].generate("x", {"temperature": 1.5, "seed": seed, "max_new_tokens": 40,
                                                 "json_schema": {"type": "array", "items": {"type": "number"}}})
        if out["meta_info"]["finish_reason"]["type"] == "stop":
            assert all(math.isfinite(v) for v in json.loads(out["text"])), out["text"]
            assert not re.search(r"[eE][+-]?\d{3}", out["text"]), out["text"]


def test_budget_forces_marker_and_answer_arrives(engines):
    out = engines["xgrammar"].generate("Question:", {"temperature": 0, "max_new_tokens": 64,
                                                     "max_reasoning_tokens": 10, "regex": "(Paris|London)"},
                                       require_reasoning=True)
    meta = out["meta_info"]
    assert meta["content"] in ("Paris", "London")
    assert meta["reasoning_tokens"] <= 10 + 4  # the budget, plus the forced marker's tokens
    assert meta["finish_reason"]["type"] == "stop"


def test_sglang_strict_thinking_budget_is_honoured(engines):
    """SGLang's per-request budget (`custom_params.thinking_budget`) caps the thinking like max_reasoning_tokens."""
    engine = engines["xgrammar"]
    params = {"temperature": 0, "max_new_tokens": 64, "regex": "(Paris|London)", "custom_params": {"thinking_budget": 6}}
    meta = engine.generate("Question:", params, require_reasoning=True)["meta_info"]
    assert 6 <= meta["reasoning_tokens"] <= 6 + 4 and meta["content"] in ("Paris", "London")
    with pytest.raises(ValueError, match="custom_params.thinking_budget"):
        engine.generate("Question:", {**params, "max_reasoning_tokens": 9})
    with pytest.raises(ValueError, match="custom_params.thinking_budget"):
        engine.generate("Question:", {**params, "custom_params": {"thinking_budget": -1}})


def test_a_thinking_budget_of_zero_thinks_not_at_all(engines):
    """The end marker comes before anything is sampled (a budget of 0 let one thinking token through)."""
    out = engines["xgrammar"].generate("Question:", {"temperature": 1.0, "seed": 3, "max_new_tokens": 32,
                                                     "max_reasoning_tokens": 0, "regex": "(Paris|London)"},
                                       require_reasoning=True)
    meta = out["meta_info"]
    assert meta["reasoning_content"] == "" and meta["content"] in ("Paris", "London")
    assert out["text"].startswith("</think>")


def test_thinking_costs_no_mask_work(engines, monkeypatch):
    """Steps where every constrained request is still in its reasoning fill no bitmask at all: the masks
    start with the answer."""
    engine = engines["xgrammar"]
    fills = []
    fill = engine.loop._fill_masks
    monkeypatch.setattr(engine.loop, "_fill_masks", lambda seqs, *a: fills.append(len(seqs)) or fill(seqs, *a))
    out = engine.generate("Question:", {"temperature": 0, "max_new_tokens": 64, "max_reasoning_tokens": 10,
                                        "regex": "(Paris|London)"}, require_reasoning=True)
    meta = out["meta_info"]
    assert meta["reasoning_tokens"] >= 10 and meta["content"] in ("Paris", "London")
    assert 1 <= len(fills) <= meta["completion_tokens"] - meta["reasoning_tokens"] + 1


def test_answer_reserve_keeps_room_for_answer(engines):
    out = engines["xgrammar"].generate("Question:", {"temperature": 0, "max_new_tokens": 40,
                                                     "ebnf": 'root ::= "Paris is the capital of France"'},
                                       require_reasoning=True)
    assert out["meta_info"]["content"] == "Paris is the capital of France"
    assert out["meta_info"]["completion_tokens"] <= 40


def test_unconstrained_reasoning_split_and_budget(engines):
    out = engines["xgrammar"].generate("Question:", {"temperature": 0, "max_new_tokens": 30,
                                                     "max_reasoning_tokens": 8, "ignore_eos": True},
                                       require_reasoning=True)
    meta = out["meta_info"]
    assert "</think>" in out["text"]
    assert meta["reasoning_content"] is not None and "</think>" not in meta["content"]
    assert out["text"].split("</think>")[0].strip() == meta["reasoning_content"].strip()


def test_jump_forward_saves_forward_passes_without_changing_answers(tiny_model_dirs):
    """Forced text (`{"name": "`, `", "population": `, the final EOS) is appended without sampling steps."""
    import json

    from thinkform import Engine

    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 6},
                                               "population": {"type": "integer"}}, "required": ["name", "population"]}
    params = {"temperature": 0, "max_new_tokens": 80, "json_schema": schema}
    results = {}
    for jump in (True, False):
        with Engine(model_path=str(tiny_model_dirs["qwen2"]), disable_jump_forward=not jump) as eng:
            out = eng.generate("Give me the capital of France.", params)
            results[jump] = (out, eng.loop.counters["steps"], eng.loop.counters["jump_tokens"])
    (on, steps_on, jumped), (off, steps_off, none) = results[True], results[False]
    assert on["meta_info"]["finish_reason"]["type"] == off["meta_info"]["finish_reason"]["type"] == "stop"
    json.loads(on["text"]), json.loads(off["text"])
    assert on["text"].startswith('{"name": "') and ', "population": ' in on["text"]
    assert jumped >= 6 and none == 0
    assert steps_on <= steps_off - 6


SPECIAL_TOKEN_CASES = [  # (constraint fields, a check of the returned text)
    ({"json_schema": json.dumps({"type": "object", "required": ["code"], "properties": {
        "code": {"type": "string", "minLength": 13, "maxLength": 13}}})}, lambda v: len(json.loads(v)["code"]) == 13),
    ({"json_schema": json.dumps({"type": "object", "required": ["tag"], "properties": {
        "tag": {"type": "string", "pattern": "^<[a-z_|]+>$"}}})},
     lambda v: re.fullmatch(r"<[a-z_|]+>", json.loads(v)["tag"]) is not None),
    ({"regex": "[a-z<>|]{13}"}, lambda v: re.fullmatch("[a-z<>|]{13}", v) is not None),
]


@pytest.mark.parametrize("fields, holds", SPECIAL_TOKEN_CASES)
@pytest.mark.parametrize("special", ["<|endoftext|>", "<|im_start|>"])
def test_a_special_token_the_text_hides_is_never_part_of_an_answer(engine64, tiny_tokenizer, fields, holds,
                                                                     special):
    """Audit 30: xgrammar spells a special token as its text, so a model that wants `<|im_start|>` wrote it
    into `{"tag": "` (the grammar counted `<|im_start|>`); skip_special_tokens then returned `{"tag": ""}`,
    breaking the pattern with finish_reason stop and constraint_satisfied true. Special tokens stay out of
    answers now, as markup tokens did."""
    token = tiny_tokenizer.convert_tokens_to_ids(special)
    out = engine64.generate("Hello", {"temperature": 0, "max_new_tokens": 24, **fields,
                                      "logit_bias": {str(token): 100.0}})
    meta = out["meta_info"]
    assert token not in out["output_ids"]
    assert meta["finish_reason"]["type"] == "stop" and meta["constraint_satisfied"], meta
    assert holds(out["text"]), out["text"]


@pytest.mark.parametrize("fields", [{"regex": ".+"}, {"ebnf": "root ::= [^x]+"}, {"regex": "[^x]{1,40}"}])
def test_a_lone_end_marker_never_opens_an_answer(reasoning_engine, tiny_tokenizer, fields):
    """Audit 29: where the model chooses whether to think (reasoning_start "open": qwen3 and the hybrid
    families), its first token may open the reasoning or the answer. A grammar that takes any text took the
    one-token `</think>` as the answer's first token: content "</think>", finish stop, constraint satisfied,
    and `text.split("</think>")` wrong. The end marker is kept out there as in the answer."""
    end = tiny_tokenizer.convert_tokens_to_ids("</think>")
    out = reasoning_engine.generate("Hello", {"temperature": 0, "max_new_tokens": 8, **fields,
                                              "logit_bias": {str(end): 100.0}}, reasoning_start="open")
    assert end not in out["output_ids"] and "</think>" not in out["text"], out
    assert out["meta_info"]["reasoning_content"] is None and out["meta_info"]["content"] == out["text"]
    start = tiny_tokenizer.convert_tokens_to_ids("<think>")  # the start marker still opens the reasoning
    out = reasoning_engine.generate("Hello", {"temperature": 0, "max_new_tokens": 8, **fields,
                                              "logit_bias": {str(start): 100.0}}, reasoning_start="open")
    assert out["output_ids"][0] == start and out["meta_info"]["reasoning_content"] is not None


@pytest.mark.parametrize("special", ["<|endoftext|>", "<|im_start|>"])
def test_a_structural_tags_free_text_holds_no_hidden_special_token(engine64, tiny_tokenizer, special):
    """Audit 29: beside its tags a triggered structural tag admits any text, and xgrammar spells a special
    token as its text: a hidden `<|im_start|>` as the whole free text left an empty answer ("" after
    skip_special_tokens) that EOS then ended with finish stop. Special tokens no tag string spells stay out
    of the free text as they stay out of the tags' JSON."""
    token = tiny_tokenizer.convert_tokens_to_ids(special)
    eos = tiny_tokenizer.eos_token_id
    tag = {"type": "structural_tag", "format": {"type": "triggered_tags", "triggers": ["<f="], "tags": [
        {"type": "tag", "begin": "<f=plan>", "end": "</f>", "content": {"type": "json_schema", "json_schema": {
            "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}]}}
    out = engine64.generate("Hello", {"temperature": 0, "max_new_tokens": 8, "structural_tag": json.dumps(tag),
                                      "logit_bias": {str(token): 100.0, str(eos): 50.0}})
    assert token not in out["output_ids"], out
    assert out["text"].strip(), out  # EOS comes only after some text
