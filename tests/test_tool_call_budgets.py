"""Tool calls of tools of very different sizes near max_new_tokens, across formats (audit 37's fuzz): the longest
tool's call is measured per grammar (one call, also where a section allows several), XML arguments keep the
format's call tags out, and a large call in a grammar-written format (pythonic) is closed in time."""
from __future__ import annotations

import json

import pytest

from thinkform.server.tools import get_tool_call_parser
from thinkform.structured.spec import constraint_from_fields
from tool_cases import special_tag_engines

INC = {"type": "function", "function": {"name": "inc", "parameters": {
    "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}}
SEARCH = {"type": "function", "function": {"name": "search", "parameters": {
    "type": "object", "properties": {"query": {"type": "string"}, "lang": {"type": "string", "enum": ["en", "fr"]}},
    "required": ["query"]}}}
TRIP = {"type": "function", "function": {"name": "book_trip", "parameters": {
    "type": "object", "required": ["origin", "destination", "date", "cabin", "passengers", "travelers", "contact",
                                   "flexible", "notes", "currency", "legs"],
    "properties": {
        "origin": {"type": "string"}, "destination": {"type": "string"}, "date": {"type": "string"},
        "cabin": {"enum": ["economy", "business"]}, "passengers": {"type": "integer"},
        "travelers": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "contact": {"type": "object", "properties": {"name": {"type": "string"}, "email": {"type": "string"}},
                    "required": ["name", "email"]},
        "flexible": {"type": "boolean"}, "notes": {"type": "string"}, "currency": {"enum": ["EUR", "USD"]},
        "legs": {"type": "array", "minItems": 1, "items": {
            "type": "object", "properties": {"from": {"type": "string"}, "to": {"type": "string"}},
            "required": ["from", "to"]}}}}}}
KIMI_TAGS = ["<|tool_calls_section_begin|>", "<|tool_calls_section_end|>", "<|tool_call_begin|>",
             "<|tool_call_argument_begin|>", "<|tool_call_end|>"]
SPECIALS = {"qwen3_coder": ["<tool_call>", "</tool_call>"], "kimi_k2": KIMI_TAGS, "pythonic": [],
            "glm45": ["<tool_call>", "</tool_call>", "<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>"]}
PROMPT = "<|im_start|>user\nPlan it.<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """One tiny engine per format, built when a test first asks for it: (name, engine, tokenizer)."""
    with special_tag_engines(tmp_path_factory, SPECIALS,
                             lambda name: "kimi_k2" if name == "kimi_k2" else "qwen3") as get:
        yield lambda name: (name, *get(name))


def _tag(name: str, tools: list, mode: str, parallel: bool) -> str:
    return json.dumps(get_tool_call_parser(name).for_tools(tools).structural_tag(tools, mode, parallel))


def _measured(engine, tag: str):
    compiled = engine.parts.grammar_cache.get(constraint_from_fields(structural_tag=tag))
    assert engine.parts.ending_search.wait_measured(compiled, 60)
    search = engine.parts.ending_search
    return search.longest_call(compiled), search.shortest_answer(compiled)


@pytest.mark.parametrize("name", ["kimi_k2", "qwen3_coder", "glm45"])
def test_the_longest_call_is_one_call_whatever_the_section_allows(engines, name):
    """Audit 37: Kimi-K2's section with parallel calls measured as all eight calls it allows (1,347 tokens for
    one of 171): the answer reserve took the whole budget, and thinking ended at its first token."""
    _, engine, _ = engines(name)
    one, _ = _measured(engine, _tag(name, [INC, TRIP], "required", False))
    many, shortest = _measured(engine, _tag(name, [INC, TRIP], "required", True))
    small, _ = _measured(engine, _tag(name, [INC], "required", True))
    assert one is not None and many == one and shortest <= one and small < one / 2, (one, many, shortest, small)


@pytest.mark.parametrize("name", ["qwen3_coder", "glm45"])
def test_xml_arguments_never_hold_the_formats_call_tag(engines, name):
    """Audit 37: qwen3_coder / glm45 let `<tool_call>` into a parameter's value (58 of 262 calls), the call
    well-formed and "satisfied"; the JSON formats kept it out."""
    _, engine, tok = engines(name)
    tag = _tag(name, [SEARCH], "required", False)
    bias = {str(tok.convert_tokens_to_ids("<tool_call>")): 12}
    for seed in range(3):
        out = engine.generate(PROMPT, {"structural_tag": tag, "max_new_tokens": 120, "temperature": 1.0, "seed": seed,
                                       "logit_bias": bias, "skip_special_tokens": False})
        _, calls = get_tool_call_parser(name).for_tools([SEARCH]).parse(out["text"])
        assert calls and not any("<tool_call>" in c.arguments for c in calls), out["text"]
        assert out["text"].count("<tool_call>") == 1, out["text"]


@pytest.mark.parametrize("name", sorted(SPECIALS))
def test_a_large_call_comes_whole_near_the_budget(engines, name):
    """Audit 37: a pythonic call of an eleven-argument tool (shortest answer 159 tokens) was first looked at
    128 tokens before the end, too late for its 134-token ending, and ran into max_new_tokens; a second XML
    call was begun without room for the longest tool's. Every answer now ends whole."""
    _, engine, tok = engines(name)
    tag = _tag(name, [INC, TRIP], "required", True)
    longest, shortest = _measured(engine, tag)
    need = longest or shortest
    bias = {str(tok.encode("book_trip", add_special_tokens=False)[0]): 4}
    if SPECIALS[name]:
        bias[str(tok.convert_tokens_to_ids(SPECIALS[name][0]))] = 12
    for seed in (1, 1777):
        for extra in (8, 64, 160):
            out = engine.generate(PROMPT, {"structural_tag": tag, "max_new_tokens": need + extra, "temperature": 1.0,
                                           "seed": seed, "logit_bias": bias, "skip_special_tokens": False})
            meta = out["meta_info"]
            assert meta["finish_reason"]["type"] == "stop" and meta["constraint_satisfied"], (seed, extra, out["text"])
