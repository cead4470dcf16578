"""Kimi-K2 (`--reasoning-parser kimi_k2 --tool-call-parser kimi_k2`) on a tiny random model whose tokenizer
spells the call tags as special tokens, as Kimi's does: the tool-call format's tags are the model's markup."""
from __future__ import annotations

import json

import httpx
import jsonschema
import pytest
from server_fixtures import running_server

from thinkform.server.tools import get_tool_call_parser

TAGS = ("<|tool_calls_section_begin|>", "<|tool_calls_section_end|>", "<|tool_call_begin|>",
        "<|tool_call_argument_begin|>", "<|tool_call_end|>")
TEMPLATE = ("{%- for message in messages -%}"
            "{{ '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>\\n' }}"
            "{%- endfor -%}"
            "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n<think>' }}{%- endif -%}")
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
           "required": ["city", "days"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def test_the_formats_markup_is_its_tags():
    assert set(TAGS) <= {t for piece in get_tool_call_parser("kimi_k2").markup for t in TAGS if t in piece}
    # audit 23: GLM-4.5 writes its arguments between tags of their own (hidden, the calls came back `{}`)
    assert {"<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>"} <= set(get_tool_call_parser("glm45").markup)
    assert get_tool_call_parser("deepseekv31").markup[:3] == ("<｜tool▁calls▁begin｜>", "<｜tool▁calls▁begin｜>",
                                                              "<｜tool▁calls▁end｜>")


@pytest.fixture(scope="module")
def kimi(tmp_path_factory):
    from transformers import GenerationConfig

    from thinkform import Engine
    from thinkform.testing.models import make_tiny_model_dir
    from thinkform.testing.tokenizers import build_tiny_tokenizer

    tok = build_tiny_tokenizer(marker_is_special=True)
    tok.add_special_tokens({"additional_special_tokens": list(TAGS)})
    tok.chat_template = TEMPLATE
    path = make_tiny_model_dir(tmp_path_factory.mktemp("kimi") / "m", "qwen2", tok, vocab_size=len(tok) + 16, seed=3)
    GenerationConfig(eos_token_id=[tok.eos_token_id], pad_token_id=tok.pad_token_id).save_pretrained(path)
    engine = Engine(model_path=str(path), reasoning_parser="kimi_k2", tool_call_parser="kimi_k2",
                    max_total_tokens=8192)
    try:
        with running_server(engine) as base:
            yield base, tok, engine
    finally:
        engine.shutdown()


def _chat(base: str, **body) -> dict:
    body = {"messages": [{"role": "user", "content": "Weather in Paris?"}], "temperature": 1.0, **body}
    r = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]


def test_calls_come_back_as_tool_calls_with_special_tokens_skipped(kimi):
    """Audit 22: skip_special_tokens (the default) hid `<|tool_call_begin|>` and the rest, so the parser found
    no call and the user got the call's markup as content, finish_reason "stop"."""
    base, tok, _ = kimi
    end = tok.convert_tokens_to_ids("</think>")
    for seed in range(3):
        choice = _chat(base, tools=TOOLS, tool_choice=NAMED, max_tokens=120, seed=seed, logit_bias={str(end): 40})
        assert choice["finish_reason"] == "tool_calls", choice
        call = choice["message"]["tool_calls"][0]
        assert call["function"]["name"] == "get_weather" and call["id"] == "functions.get_weather:0"
        jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER)
        assert not choice["message"]["content"]


def test_call_tags_never_enter_the_arguments(kimi):
    """Audit 22: a model that favours `<|tool_call_end|>` (a logit bias) wrote it inside the call's string
    value, where the grammar reads it as text; the next turn would read it as the call's end."""
    base, tok, _ = kimi
    end, call_end = (tok.convert_tokens_to_ids(t) for t in ("</think>", "<|tool_call_end|>"))
    for extra in ({"tools": TOOLS, "tool_choice": NAMED},
                  {"response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER}}}):
        choice = _chat(base, max_tokens=120, seed=0, skip_special_tokens=False,
                       logit_bias={str(end): 40, str(call_end): 8}, **extra)
        message = choice["message"]
        answer = message["tool_calls"][0]["function"]["arguments"] if message.get("tool_calls") else message["content"]
        assert "<|" not in answer, answer
        jsonschema.validate(json.loads(answer), WEATHER)


def test_a_calls_end_tag_is_written_as_its_token(kimi):
    """The guard keeps the tags out of the call's JSON value, not out of the call: its end tag, due after the
    value, is written as the one special token (as the model was trained), not spelled in pieces of text."""
    _, tok, engine = kimi
    end, call_end = (tok.convert_tokens_to_ids(t) for t in ("</think>", "<|tool_call_end|>"))
    tag = get_tool_call_parser("kimi_k2").structural_tag(TOOLS, "required", parallel=False)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Weather in Paris?"}], tokenize=False,
                                     add_generation_prompt=True)
    for seed in range(3):
        out = engine.generate(prompt, {"structural_tag": json.dumps(tag), "max_new_tokens": 120, "temperature": 1.0,
                                       "seed": seed, "logit_bias": {str(end): 40, str(call_end): 8},
                                       "skip_special_tokens": False})
        assert out["meta_info"]["constraint_satisfied"], out["text"]
        ids = out["output_ids"]
        assert ids.count(call_end) == 1, out["text"]  # the call's end, and nowhere inside its value


def test_parallel_calls_near_the_budget_close_the_section(kimi):
    """Audit 22: under `required` (up to 8 parallel calls) a budget that ran out after the first call ended
    "length": the ending search took the bytes toward one more call (`<|tool_call_begin|>` and
    `<|tool_calls_section_end|>` part at `_` and `s`), and between two calls the answer was outside any
    call's tag, where closing did not look. The section's end is now tried whole, and looked for between
    calls: the answer ends with its calls complete, finish_reason "tool_calls"."""
    base, tok, _ = kimi
    end = tok.convert_tokens_to_ids("</think>")
    for max_tokens in (40, 50, 64, 90):
        for seed in range(2):
            choice = _chat(base, tools=TOOLS, tool_choice="required", max_tokens=max_tokens, seed=seed,
                           logit_bias={str(end): 40}, answer_reserve_tokens=0)
            assert choice["finish_reason"] == "tool_calls", (max_tokens, seed, choice)
            for call in choice["message"]["tool_calls"]:
                jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER)


def test_call_tags_stay_hidden_where_no_call_may_come(kimi):
    """Audit 23: the tags are shown to the parser in requests that may call tools, and hidden elsewhere
    (skip_special_tokens, as vLLM and SGLang): a plain chat, tool_choice none, the native /generate."""
    base, tok, _ = kimi
    begin = tok.convert_tokens_to_ids("<|tool_call_begin|>")
    bias = {str(tok.convert_tokens_to_ids("</think>")): 40, str(begin): 6}
    for extra in ({}, {"tools": TOOLS, "tool_choice": "none"}):
        message = _chat(base, max_tokens=40, seed=0, logit_bias=bias, **extra)["message"]
        assert "<|tool_call" not in (message["content"] or "") + (message.get("reasoning_content") or ""), message
    r = httpx.post(f"{base}/generate", json={"text": "Weather?", "sampling_params": {
        "max_new_tokens": 30, "temperature": 1.0, "seed": 0, "logit_bias": {str(begin): 6}}}, timeout=60)
    assert r.status_code == 200 and "<|tool_call" not in r.json()["text"], r.text
    # and shown where a call may come: under `auto` the model's free text may hold one (as vLLM shows it)
    message = _chat(base, max_tokens=40, seed=0, logit_bias=bias, tools=TOOLS, tool_choice="auto",
                    skip_special_tokens=True)["message"]
    assert "<|tool_call_begin|>" in (message["content"] or "") + (message.get("reasoning_content") or ""), message


def test_a_users_structural_tag_does_not_begin_with_the_call_section(kimi):
    """Audit 22: under a user's structural tag (no tools) the call section's tag ended the reasoning and
    headed the content, which was then `<|tool_calls_section_begin|>{...}`, not the tag's answer. A tag
    that never spells the section's tag reads it as reasoning, as a JSON schema does."""
    base, tok, _ = kimi
    section = tok.convert_tokens_to_ids("<|tool_calls_section_begin|>")
    tag = {"type": "structural_tag", "format": {"type": "tag", "begin": "<answer>", "end": "</answer>",
                                                "content": {"type": "json_schema", "json_schema": WEATHER}}}
    mentioned = json.loads(json.dumps(tag))  # audit 25: a schema that only mentions the section's tag
    mentioned["format"]["content"]["json_schema"]["description"] = "never <|tool_calls_section_begin|> here"
    for response_format in (tag, mentioned):
        for bias in (40, 8):
            message = _chat(base, max_tokens=60, seed=0, logit_bias={str(section): bias}, skip_special_tokens=False,
                            max_reasoning_tokens=6, response_format=response_format)["message"]
            content = message["content"]
            assert content.startswith("<answer>") and content.endswith("</answer>"), message
            jsonschema.validate(json.loads(content[len("<answer>"):-len("</answer>")]), WEATHER)


@pytest.mark.parametrize("case", ["tools", "escaped", "format-and-triggers", "mention"])
def test_the_engine_and_the_server_read_a_tag_alike(case):
    """Audit 25: the server read the request's raw tag text, the engine its parsed constraint: a tag spelled
    with `\\u003c` escapes, or a format beside a legacy `triggers` key (which xgrammar ignores), was read
    as a call section by one and not the other, and the same request split two ways. Both read the tag's
    own strings now (spec.tag_openings), from the same parse."""
    from thinkform.reasoning import get_markers
    from thinkform.server.openai_api import _tag_openings
    from thinkform.structured.spec import constraint_from_fields, tag_openings

    kimi = get_markers("kimi_k2")
    tools_tag = get_tool_call_parser("kimi_k2").structural_tag(TOOLS, "auto")
    answer = {"type": "tag", "begin": "<answer>", "end": "</answer>",
              "content": {"type": "json_schema", "json_schema": {**WEATHER, "description": TAGS[0]}}}
    raw, expect_call = {
        "tools": (json.dumps(tools_tag), True),
        "escaped": (json.dumps(tools_tag).replace("<", "\\u003c").replace(">", "\\u003e"), True),
        "format-and-triggers": (json.dumps({"type": "structural_tag", "format": answer, "triggers": [TAGS[0]]}), False),
        "mention": (json.dumps({"type": "structural_tag", "format": answer}), False),
    }[case]
    server = kimi.for_answer(True, _tag_openings({"structural_tag": raw}))
    engine = kimi.for_answer(True, tag_openings(constraint_from_fields(structural_tag=raw).data()))
    assert server.answer_ends == engine.answer_ends == ((TAGS[0],) if expect_call else ())


def test_after_a_call_the_next_tag_is_one_token(kimi):
    """Audit 24: after a call, Kimi-K2's next call and the section's end share the text `<|tool_call`, which
    jump-forward wrote as text pieces: the model could no longer write either tag as its one token, and the
    jump passed over the point where closing would have ended the calls. Jumps stop short of a special
    token's text."""
    from thinkform.engine.jump_forward import SpecialPrefixes

    assert SpecialPrefixes([b"<|tool_call_begin|>", b"<|tool_calls_section_end|>"]).cut(b'"}<|tool_call') == b'"}'
    assert SpecialPrefixes([b"<|tool_call_end|>"]).cut(b'"}<|tool_call_end|>') == b'"}<|tool_call_end|>'
    _, tok, engine = kimi
    end, call_end = (tok.convert_tokens_to_ids(t) for t in ("</think>", "<|tool_call_end|>"))
    following = {tok.convert_tokens_to_ids(t) for t in ("<|tool_call_begin|>", "<|tool_calls_section_end|>")}
    tag = get_tool_call_parser("kimi_k2").structural_tag(TOOLS, "required", parallel=True)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Weather in Paris?"}], tokenize=False,
                                     add_generation_prompt=True)
    after = []
    for seed in range(3):
        out = engine.generate(prompt, {"structural_tag": json.dumps(tag), "max_new_tokens": 150, "temperature": 1.0,
                                       "seed": seed, "logit_bias": {str(end): 40}, "skip_special_tokens": False})
        ids = out["output_ids"]
        after += [ids[i + 1] for i, t in enumerate(ids[:-1]) if t == call_end]
    assert after and set(after) <= following, [tok.convert_ids_to_tokens(t) for t in after]
