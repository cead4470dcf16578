"""Budget closing of tool calls written without a section around them (Llama-3's `<|python_tag|>` calls): under
tool_choice required the answer is calls only, and between two of them it may end."""
from __future__ import annotations

import json

import pytest

from thinkform.server.tools import get_tool_call_parser

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
           "required": ["city", "days"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]
TEMPLATE = ("{%- for message in messages -%}"
            "{{ '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>\\n' }}"
            "{%- endfor -%}"
            "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n<think>' }}{%- endif -%}")


@pytest.fixture(scope="module")
def llama3(tmp_path_factory):
    from transformers import GenerationConfig

    from thinkform import Engine
    from thinkform.testing.models import make_tiny_model_dir
    from thinkform.testing.tokenizers import build_tiny_tokenizer

    tok = build_tiny_tokenizer(marker_is_special=True)
    tok.add_special_tokens({"additional_special_tokens": ["<|python_tag|>", "<tool_call>", "</tool_call>"]})
    tok.chat_template = TEMPLATE
    path = make_tiny_model_dir(tmp_path_factory.mktemp("llama3") / "m", "qwen2", tok, vocab_size=len(tok) + 16, seed=3)
    GenerationConfig(eos_token_id=[tok.eos_token_id], pad_token_id=tok.pad_token_id).save_pretrained(path)
    engine = Engine(model_path=str(path), reasoning_parser="qwen3", max_total_tokens=8192)
    engine.set_tool_markup(get_tool_call_parser("llama3").markup)
    yield engine, tok
    engine.shutdown()


def test_required_parallel_calls_end_between_calls_near_the_budget(llama3):
    """Audit 23: a required call's answer that had room for one call ran on into a second, cut off by
    max_new_tokens ("length", the constraint unsatisfied): closing looked only inside a call's arguments.
    The answer is calls only, and the search's ending there is EOS after the last complete call."""
    engine, tok = llama3
    parser = get_tool_call_parser("llama3")
    tag = parser.structural_tag(TOOLS, "required", parallel=True)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Weather?"}], tokenize=False,
                                     add_generation_prompt=True)
    think_end, python_tag = tok.convert_tokens_to_ids("</think>"), tok.convert_tokens_to_ids("<|python_tag|>")
    for seed in range(3):
        for bias in (0, 8):  # 8: the model favours beginning one more call
            for max_new_tokens in (60, 100):
                out = engine.generate(prompt, {
                    "structural_tag": json.dumps(tag), "max_new_tokens": max_new_tokens, "temperature": 1.0,
                    "seed": seed, "logit_bias": {str(think_end): 40, str(python_tag): bias},
                    "skip_special_tokens": False})
                meta = out["meta_info"]
                assert meta["constraint_satisfied"] and meta["finish_reason"]["type"] == "stop", (seed, bias, out)
                _, calls = parser.parse(out["text"].split("</think>")[-1])
                assert calls and all(json.loads(c.arguments).keys() == {"city", "days"} for c in calls), out["text"]


def test_closing_never_writes_a_call_the_model_did_not_begin(llama3):
    """Audit 24: near the budget the closing took a calls-only answer from its first token, and the search's
    ending was the grammar's shortest call: `get` with empty arguments, where the model was writing
    `get_weather` (6 of 6 at 40 tokens; before, "length" with the model's call). Closing now waits for the
    model's call: inside its arguments, or after it."""
    engine, tok = llama3
    parser = get_tool_call_parser("hermes")
    tools = [{"type": "function", "function": {"name": "get", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}}}}] + TOOLS
    tag = parser.structural_tag(tools, "required", parallel=True)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Weather?"}], tokenize=False,
                                     add_generation_prompt=True)
    bias = {str(tok.convert_tokens_to_ids("</think>")): 40, str(tok.convert_tokens_to_ids("_")): 6}

    def first_call(seed: int, max_new_tokens: int) -> str | None:
        out = engine.generate(prompt, {"structural_tag": json.dumps(tag), "max_new_tokens": max_new_tokens,
                                       "temperature": 1.0, "seed": seed, "logit_bias": bias,
                                       "skip_special_tokens": False})
        _, calls = parser.parse(out["text"].split("</think>")[-1], with_cut_call=True)
        return calls[0].name if calls else None

    chosen = {seed: first_call(seed, 400) for seed in range(4)}  # room for the whole call: the model's pick
    assert "get_weather" in chosen.values()
    for max_new_tokens in (30, 36, 40, 48):
        for seed, name in chosen.items():
            assert first_call(seed, max_new_tokens) in (name, None), (max_new_tokens, seed, name)


def test_required_parallel_calls_leave_room_for_the_longest_tool(llama3):
    """Audit 30: between two calls the answer went on while the shortest tool's call still fitted, and the
    model opened the long one (eight required strings) without room for it: cut by max_new_tokens
    ("length", the constraint unsatisfied). Each tool's shortest call is measured, and between calls the
    answer ends unless the longest of them still fits."""
    engine, tok = llama3
    parser = get_tool_call_parser("hermes")
    big = {"type": "object", "properties": {k: {"type": "string"} for k in "abcdefgh"}, "required": list("abcdefgh")}
    tools = [{"type": "function", "function": {"name": "g", "parameters": {
        "type": "object", "properties": {"q": {"type": "integer"}}, "required": ["q"]}}},
        {"type": "function", "function": {"name": "big_tool", "parameters": big}}]
    tag = parser.structural_tag(tools, "required", parallel=True)
    prompt = tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True)
    bias = {str(tok.convert_tokens_to_ids("</think>")): 40, str(tok.convert_tokens_to_ids("<tool_call>")): 8,
            str(tok.convert_tokens_to_ids("g")): 3}  # short calls first, then one more call is likely
    names = []
    for seed in (3, 6, 7):
        for max_new_tokens in (110, 130, 190, 230):
            out = engine.generate(prompt, {"structural_tag": json.dumps(tag), "max_new_tokens": max_new_tokens,
                                           "temperature": 1.0, "seed": seed, "logit_bias": bias,
                                           "skip_special_tokens": False})
            meta = out["meta_info"]
            assert meta["constraint_satisfied"] and meta["finish_reason"]["type"] == "stop", (seed, out["text"])
            _, calls = parser.parse(out["text"].split("</think>")[-1])
            names.append([c.name for c in calls])
    assert any(len(n) > 1 and "big_tool" in n for n in names), names  # the case this is about came up


def test_a_call_begun_inside_the_reasoning_ends_it(llama3):
    """Audit 32: Qwen3 may open `<tool_call>` without `</think>` (SGLang's Qwen3 and GLM-4.5 detectors end the
    reasoning there); the call stayed in the reasoning, unconstrained, and no tool call came back."""
    engine, tok = llama3
    parser = get_tool_call_parser("hermes")
    tag = parser.structural_tag(TOOLS, "required", parallel=False)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Weather?"}], tokenize=False,
                                     add_generation_prompt=True)
    bias = {str(tok.convert_tokens_to_ids("</think>")): -100, str(tok.convert_tokens_to_ids("<tool_call>")): 12}
    for seed in range(3):
        out = engine.generate(prompt, {"structural_tag": json.dumps(tag), "max_new_tokens": 120, "temperature": 1.0,
                                       "seed": seed, "logit_bias": bias, "skip_special_tokens": False},
                              require_reasoning=True)
        assert out["meta_info"]["reasoning_tokens"] > 0, out["text"]
        assert "</think>" not in out["text"] and "<tool_call>" in out["text"], out["text"]
        assert out["meta_info"]["constraint_satisfied"], out
        _, calls = parser.parse(out["text"][out["text"].index("<tool_call>"):])
        assert [c.name for c in calls] == ["get_weather"] and json.loads(calls[0].arguments).keys() == {"city", "days"}


def test_a_constrained_answers_leading_whitespace_stays_in_its_content(llama3):
    """Audit 36: the reasoning split stripped a regex answer's leading newline from `content` (the grammar's
    `\\n(ok|ko)\\n` came back as `ok\\n`)."""
    engine, tok = llama3
    prompt = tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True)
    out = engine.generate(prompt, {"regex": "\n(ok|ko)\n", "max_new_tokens": 40, "temperature": 0,
                                   "logit_bias": {str(tok.convert_tokens_to_ids("</think>")): 40}},
                          require_reasoning=True)
    assert out["meta_info"]["content"] in ("\nok\n", "\nko\n"), out


@pytest.mark.parametrize("name", ["hermes", "llama3"])
def test_a_call_the_model_began_is_never_ended_for_it(llama3, name):
    """Review: between two calls the answer ends unless the longest tool's call still fits; a budget that fell
    to that mark while the model was writing its next call's begin string (`<tool_call>\\n{"name": "get_w`)
    had the rest of the call written for it, with the grammar's empty arguments. The answer ends only at a
    call's end: a call begun is the model's."""
    from thinkform.engine.requests import LogprobOptions

    engine, tok = llama3
    parser = get_tool_call_parser(name)
    inc = {"type": "function", "function": {"name": "inc", "parameters": {
        "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}}
    tag = json.dumps(parser.structural_tag(TOOLS + [inc], "required", parallel=True))

    def call(city: str) -> str:
        return parser.call_begin.replace("{name}", "get_weather") + '{"city": "%s", "days": 3}' % city + parser.call_end

    text = call("Paris") + parser.separator + call("Lyon")
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    second = len(tok.encode(call("Paris") + parser.separator, add_special_tokens=False))  # where call 2 begins
    written, ended_between = 0, 0
    for max_new_tokens in range(len(ids) - 10, len(ids) + 90, 3):
        req = engine._prepare("hi", {"structural_tag": tag, "max_new_tokens": max_new_tokens}, None, False, None, None,
                              False, LogprobOptions(False, 0, -1, False, None), {})
        engine._compile_sync(req)
        assert all(engine.parts.ending_search.wait_measured(c, 60) for c in req.compiled.values())
        gate = engine.builder.sequences(req, lambda *_: None)[0].gate
        for n, token in enumerate(ids):
            forced = gate.forced_tokens(n)
            if forced:
                out = tok.decode(ids[:n] + forced)
                ended_between += n < second and "Lyon" not in out
                # the separator or call 2's begin written, with room for all of it: the model's call is its own
                written += n >= second and max_new_tokens > len(ids) and "Lyon" not in out
                break
            gate.accept(token)
    assert written == 0 and ended_between  # the budgets reach both cases


def test_a_call_begun_too_late_to_fit_gives_way_to_the_end_of_the_text(qwen_vocab_model) -> None:
    """Audit (grammar dialects): a trigger written in the last few tokens began a call that could not fit
    (`...themselves<tool>{"n": ` at max_new_tokens, constraint_satisfied false); the step that begins it is
    undone and the answer ends in its text instead."""
    from thinkform import Engine

    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    tag = {"type": "structural_tag", "structures": [{"begin": "<tool>", "schema": schema, "end": "</tool>"}],
           "triggers": ["<"]}
    model, tok = qwen_vocab_model
    less_than = tok.encode("<", add_special_tokens=False)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Go:"}], tokenize=False, add_generation_prompt=True)
    with Engine(model_path=str(model), max_total_tokens=8192) as engine:
        outs = engine.generate([prompt] * 40, [{"structural_tag": json.dumps(tag), "logit_bias": {str(less_than[0]): 12},
                                                "max_new_tokens": 48, "temperature": 1.0, "seed": seed}
                                               for seed in range(40)])
    assert all(o["meta_info"]["constraint_satisfied"] for o in outs), \
        [o["text"][-40:] for o in outs if not o["meta_info"]["constraint_satisfied"]]
    assert sum("<tool>" in o["text"] for o in outs) >= 10  # calls that fit are written


@pytest.mark.parametrize("name, call", [
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}\n</tool_call>'),
    ("qwen3_coder", "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n"
                    "</parameter>\n</function>\n</tool_call>"),
    ("glm45", "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n<arg_key>days</arg_key>\n"
              "<arg_value>3</arg_value>\n</tool_call>"),
])
def test_the_step_check_never_undoes_a_call_that_fits(qwen_vocab_model, name, call):
    """Review: Qwen's `<tool_call>` is an added token but no markup, so the ending search spelled a call's end in
    characters (~3x the model's tokens), and the step check took calls that fitted for ones that did not: the
    model's call was undone and the answer ended before it, with 60 tokens to spare."""
    from thinkform import Engine
    from thinkform.engine.requests import LogprobOptions

    model, tok = qwen_vocab_model
    weather = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
               "required": ["city", "days"]}
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": weather}}]
    parser = get_tool_call_parser(name)
    tag = json.dumps(parser.structural_tag(tools, "auto", parallel=True))
    ids = tok.encode("Sure." + call, add_special_tokens=False)
    with Engine(model_path=str(model), max_total_tokens=8192) as engine:
        engine.set_tool_markup(parser.markup)
        for spare in (10, 30, 60):
            req = engine._prepare("hi", {"structural_tag": tag, "max_new_tokens": len(ids) + spare}, None, False, None,
                                  None, False, LogprobOptions(False, 0, -1, False, None), {})
            engine._compile_sync(req)
            gate = engine.builder.sequences(req, lambda *_: None)[0].gate
            out: list[int] = []
            for token in ids:  # the model writes its call, token by token, as the engine drives the gate
                if gate.forced_tokens(len(out)):
                    break  # the budget's closing inside the call (it keeps the call)
                step = gate.accept(token)
                assert gate.ending_instead(step, len(out)) is None, (spare, tok.decode(out))
                out += step
