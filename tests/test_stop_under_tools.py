"""Stop strings and stop_token_ids under tools (tool_choice auto: a structural tag) cut free text as without tools.

Audit (combo) 2: with tools and no call made, stop ["F"] left '… devil Factors' (the stop string and the rest of
its token) where the same answer without tools was cut before F: any grammar kept its stop string. A JSON, regex
or EBNF answer still keeps it, and so does a call (its answer is not complete without it).
"""
from __future__ import annotations

import json
import re

import pytest

from thinkform.server.tools import get_tool_call_parser

TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}]
AUTO = json.dumps(get_tool_call_parser("hermes").structural_tag(TOOLS, "auto"))
REQUIRED = json.dumps(get_tool_call_parser("hermes").structural_tag(TOOLS, "required"))
PROMPT = "Hello"


def _run(engine, tools: bool, **params):
    fields = {"temperature": 0, "max_new_tokens": 24, **params}
    if tools:
        fields["structural_tag"] = AUTO
    out = engine.generate(PROMPT, fields)
    return out["text"], out["meta_info"]["finish_reason"]


@pytest.fixture(scope="module")
def free_text(engine64):
    """The tokens both runs write alike (with the tools' tag and without), their text, and a stop string: a
    character inside one of them past the first, where it is not the token's first."""
    plain = engine64.generate(PROMPT, {"temperature": 0, "max_new_tokens": 24})["output_ids"]
    tagged = engine64.generate(PROMPT, {"temperature": 0, "max_new_tokens": 24, "structural_tag": AUTO})["output_ids"]
    same = 0
    while same < min(len(plain), len(tagged)) and plain[same] == tagged[same]:
        same += 1
    ids = plain[:same]
    texts = [engine64.tokenizer.decode([t]) for t in ids]
    for k in range(1, len(ids)):
        head = "".join(texts[:k])
        token = texts[k]
        for j in range(1, len(token)):
            ch = token[j]
            if ch.isalnum() and ch not in head + token[:j] and ids.index(ids[k]) == k:
                return ids, ch, k
    pytest.fail("no token of the tiny model's answer holds a fresh character past its first: the tests below need one")


@pytest.mark.parametrize("extra", [{}, {"include_stop_str_in_output": True}, {"no_stop_trim": True}])
def test_a_stop_string_cuts_free_text_beside_the_tools_as_without_them(engine64, free_text, extra):
    _, stop, _ = free_text
    text, reason = _run(engine64, True, stop=[stop], **extra)
    assert (text, reason) == _run(engine64, False, stop=[stop], **extra)
    assert reason == {"type": "stop", "matched": stop}
    if not extra:
        assert stop not in text  # cut before it, not after the rest of its token
    elif "include_stop_str_in_output" in extra:
        assert text.endswith(stop)


@pytest.mark.parametrize("extra", [{}, {"include_stop_str_in_output": True}])
def test_a_stop_token_id_ends_free_text_beside_the_tools_as_without_them(engine64, free_text, extra):
    ids, _, k = free_text
    text, reason = _run(engine64, True, stop_token_ids=[ids[k]], **extra)
    assert (text, reason) == _run(engine64, False, stop_token_ids=[ids[k]], **extra)
    want = engine64.tokenizer.decode(ids[: k + 1] if extra else ids[:k])
    assert reason == {"type": "stop", "matched": ids[k]} and text == want


def test_a_stop_string_never_cuts_a_call(engine64):
    """A required call ends with `</tool_call>`: the stop string there ends the answer, which keeps it (without
    it the call is not complete), and the call is read."""
    out = engine64.generate(PROMPT, {"temperature": 0, "max_new_tokens": 48, "structural_tag": REQUIRED,
                                     "stop": ["</tool_call>"]})
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": "</tool_call>"}, out["text"]
    assert out["text"].endswith("</tool_call>") and out["meta_info"]["constraint_satisfied"]
    _, calls = get_tool_call_parser("hermes").parse(out["text"])
    assert [c.name for c in calls] == ["add"] and isinstance(json.loads(calls[0].arguments)["a"], int)


def test_a_regex_answer_keeps_its_stop_string(engine64):
    """The rule for JSON, regex and EBNF answers stands: the answer keeps its stop string, also where what is
    before it would be a complete answer too (`se` with stop `e` under `[a-z]+`, not `s`)."""
    kept = 0
    for seed in range(4):
        out = engine64.generate(PROMPT, {"temperature": 1.0, "seed": seed, "max_new_tokens": 8, "regex": "[a-z]+",
                                         "stop": ["e"]})
        if out["meta_info"]["finish_reason"].get("matched") == "e":
            assert re.fullmatch("[a-z]+", out["text"]) and "e" in out["text"], out["text"]
            kept += not out["text"].startswith("e")  # cut, it would have been a complete answer
    assert kept  # such a stop did end some of them


def test_a_stop_token_on_the_first_answer_token_leaves_no_empty_answer(engine64, free_text):
    """Review: a stop_token_id that hit on the first answer token under tools auto was trimmed to an empty answer
    (constraint_satisfied true), where the gate's rule is that an empty answer is no answer: the token's text
    stays, as it stays under any grammar whose answer is not complete without it."""
    ids, _, _ = free_text
    text, reason = _run(engine64, True, stop_token_ids=[ids[0]])
    assert reason == {"type": "stop", "matched": ids[0]}
    assert text == engine64.tokenizer.decode([ids[0]]) and text.strip()
