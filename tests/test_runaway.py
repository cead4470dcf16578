"""NumberGuard: a digit-loving sampler cannot write endless numbers; the grammar still has the last word."""
from __future__ import annotations

import json
import random
import re
from typing import Any

import pytest
import torch
import xgrammar as xgr

from thinkform.structured.backends import BackendContext, create_backend
from thinkform.structured.bitmask import narrow_unless_empty
from thinkform.structured.runaway import Mode, NumberGuard, NumberRules, TaggedNumberGuard
from thinkform.structured.spec import GrammarOptions, constraint_from_fields
from thinkform.testing.tokenizers import build_tiny_tokenizer

TOKENS = [b"1", b"12", b"123", b"1234", b",", b"}", b".", b".5", b"e", b"e+", b"e12", b"5,", b'"', b" 12345", b"a"]


def ids(*tokens: bytes) -> set[int]:
    return {TOKENS.index(t) for t in tokens}


def allowed_after(guard: NumberGuard, allowed: set[int]) -> set[int]:
    mask = torch.zeros((2, 1), dtype=torch.int32)
    for t in allowed:
        mask[1, 0] |= (1 << t) if t < 31 else -(1 << 31)
    narrow_unless_empty(mask.numpy()[1], guard.keep())
    assert mask[0, 0] == 0
    return {t for t in range(len(TOKENS)) if (int(mask[1, 0]) >> t) & 1}


@pytest.fixture()
def guard() -> NumberGuard:
    return NumberGuard(NumberRules(TOKENS, max_number_digits=4, max_exponent_digits=2))


def test_tokens_that_overrun_the_mantissa_are_cleared(guard: NumberGuard) -> None:
    guard.observe(b'{"a": 12')
    assert guard.state.mode == Mode.MANTISSA and guard.state.mantissa_digits == 2
    everything = set(range(len(TOKENS)))
    # 2 digits used of 4: "123"/"1234" overrun; "." and ".5" fit (a "." owes one more digit)
    assert allowed_after(guard, everything) == everything - ids(b"123", b"1234", b" 12345")


def test_at_the_budget_only_the_end_of_the_number_remains(guard: NumberGuard) -> None:
    guard.observe(b"[1234")
    assert allowed_after(guard, set(range(len(TOKENS)))) == ids(b",", b"}", b"e", b"e+", b"e12", b'"', b"a")


def test_exponent_digits_are_bounded(guard: NumberGuard) -> None:
    guard.observe(b"[1e")
    assert guard.state.mode == Mode.EXP_START
    # "123"/"1234" would be 3/4 exponent digits; " 12345" starts a 5-digit number ("e12" is the grammar's business)
    assert set(range(len(TOKENS))) - allowed_after(guard, set(range(len(TOKENS)))) == ids(b"123", b"1234", b" 12345")
    guard.observe(b"1")
    assert guard.state.exponent_digits == 1
    assert allowed_after(guard, ids(b"1", b"12", b",")) == ids(b"1", b",")


def test_strings_are_never_restricted(guard: NumberGuard) -> None:
    guard.observe(b'{"a": "12345\\"678')
    assert guard.state.mode == Mode.STRING
    assert allowed_after(guard, set(range(len(TOKENS)))) == set(range(len(TOKENS)))


def test_an_escape_split_across_tokens_stays_in_the_string(guard: NumberGuard) -> None:
    # the string "xab\"123456789 \"": each backslash is a token of its own, the quote after it is escaped
    for piece in (b'{"a": "x', b"ab", b"\\", b'"12345678', b"9 ", b"\\", b'"'):
        guard.observe(piece)
        assert guard.state.mode in (Mode.STRING, Mode.ESCAPE)
    guard.observe(b'"')  # the closing quote
    assert guard.state.mode == Mode.OUT


def test_a_token_starting_a_too_long_number_is_cleared(guard: NumberGuard) -> None:
    guard.observe(b'{"a":')
    assert guard.state.mode == Mode.OUT
    assert b" 12345" not in {TOKENS[t] for t in allowed_after(guard, set(range(len(TOKENS))))}


def test_the_grammar_wins_when_nothing_else_would_remain(guard: NumberGuard) -> None:
    guard.observe(b"[1234")
    assert allowed_after(guard, ids(b"1", b"12")) == ids(b"1", b"12")


def test_reset_starts_a_new_answer(guard: NumberGuard) -> None:
    guard.observe(b'"abc')
    guard.reset()
    assert guard.state.mode == Mode.OUT


# ---- with a real xgrammar matcher on a small tokenizer ---------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {
        "population": {"type": "integer"},
        "ratio": {"type": "number"},
        "history": {"type": "array", "items": {"type": "number"}, "maxItems": 3},
    },
    "required": ["population", "ratio", "history"],
}
NUMBER = re.compile(r"-?(\d+)(?:\.(\d+))?(?:[eE][+-]?(\d+))?")


@pytest.fixture(scope="module")
def setup() -> tuple[Any, Any, list[bytes], int]:
    tokenizer = build_tiny_tokenizer()
    vocab_size = len(tokenizer) + 7
    ctx = BackendContext(tokenizer, vocab_size, (tokenizer.eos_token_id,), GrammarOptions())
    compiled = create_backend("xgrammar", ctx).compile(constraint_from_fields(json_schema=SCHEMA))
    token_bytes = list(xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size).decoded_vocab)
    return tokenizer, compiled, token_bytes[: len(tokenizer)], vocab_size


@pytest.mark.parametrize("max_digits,max_exp", [(17, 3), (5, 1)])
def test_digit_loving_sampler_always_finishes_numbers_within_budget(
        setup: tuple[Any, Any, list[bytes], int], max_digits: int, max_exp: int) -> None:
    tokenizer, compiled, token_bytes, vocab_size = setup
    rules = NumberRules(token_bytes, max_digits, max_exp)
    digity = {i for i, b in enumerate(token_bytes) if re.search(rb"[0-9eE.]", b)}
    for seed in range(6):
        rng = random.Random(seed)
        matcher, guard = compiled.new_matcher(), NumberGuard(rules)
        mask = torch.zeros((1, (vocab_size + 31) // 32), dtype=torch.int32)
        text = ""
        for _ in range(400):
            matcher.fill_bitmask(mask, 0)
            narrow_unless_empty(mask.numpy()[0], guard.keep())
            bits = ((mask[0].unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1).flatten()[:vocab_size]
            allowed = bits.nonzero().flatten().tolist()
            preferred = [t for t in allowed if t in digity]  # adversarial: digits whenever possible
            if tokenizer.eos_token_id in allowed:
                token = tokenizer.eos_token_id
            else:
                token = rng.choice(preferred if preferred and rng.random() < 0.97 else allowed)
            assert matcher.accept_token(token)
            if matcher.is_terminated():
                break
            text += token_bytes[token].decode("utf-8", errors="replace")
            guard.observe(token_bytes[token])
        assert matcher.is_terminated(), f"no end: {text[:200]!r}…"
        value = json.loads(text, strict=False)
        assert isinstance(value["population"], int) and -(2**63) <= value["population"] < 2**63
        for m in NUMBER.finditer(re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)):
            whole, frac, exp = m.group(1), m.group(2) or "", m.group(3) or ""
            digits = whole + frac
            significant = digits.lstrip("0")
            assert len(significant) <= max_digits, m.group(0)
            assert len(digits) - len(significant) <= max_digits, m.group(0)  # leading zeros: bounded apart
            assert len(exp) <= max_exp, m.group(0)


def test_rules_from_options_use_the_option_budgets() -> None:
    rules = NumberRules.from_options([b"1"], GrammarOptions(max_number_digits=3, max_exponent_digits=2))
    assert (rules.max_number_digits, rules.max_exponent_digits) == (3, 2)


def test_control_characters_kept_out_of_strings():
    """xgrammar lets raw control characters into maxLength strings; the guard keeps the JSON valid."""
    import torch

    from thinkform.structured.runaway import NumberGuard, NumberRules

    tokens = [b'"', b"ab", b"\x1e", b"c\td", b'x"\n', b"1"]
    guard = NumberGuard(NumberRules(tokens))
    guard.observe(b'{"name": "a')
    mask = torch.full((1, 1), -1, dtype=torch.int32)
    narrow_unless_empty(mask.numpy()[0], guard.keep())
    allowed = [i for i in range(len(tokens)) if (int(mask[0, 0]) >> i) & 1]
    assert allowed == [0, 1, 4, 5]  # no raw \x1e or \t inside the string; a quote then a newline is fine


# --- structural tags: the JSON of each tag's content (tool-call arguments) ----------------------

FUNCTION_TAG = [("<function=f>", "</function>")]


def _tagged(tags: list[tuple[str, str]] = FUNCTION_TAG) -> tuple[TaggedNumberGuard, NumberRules]:
    rules = NumberRules(TOKENS, max_number_digits=4, max_exponent_digits=2)
    return TaggedNumberGuard(rules, tags), rules


def _same_as_plain(guard: TaggedNumberGuard, rules: NumberRules, json_text: bytes) -> bool:
    plain = NumberGuard(rules)
    plain.observe(json_text)
    return guard.keep() is plain.keep()


def test_free_text_around_tool_calls_is_never_restricted() -> None:
    guard, rules = _tagged()
    guard.observe(b'I have 123456789012345 apples and "12345')
    assert guard.keep() is rules.keep_all
    assert allowed_after(guard, set(range(len(TOKENS)))) == set(range(len(TOKENS)))


def test_numbers_inside_a_tag_are_bounded_even_with_its_begin_split_across_tokens() -> None:
    guard, rules = _tagged()
    for piece in (b"Let me check. 99999999 <func", b"tion=f", b'>{"a": 12', b"34"):
        guard.observe(piece)
    assert _same_as_plain(guard, rules, b'{"a": 1234')
    assert b"1" not in {TOKENS[t] for t in allowed_after(guard, set(range(len(TOKENS))))}


def test_the_end_string_counts_only_outside_strings_and_after_the_value() -> None:
    guard, rules = _tagged()
    guard.observe(b'<function=f>{"s": "</function>", "n": 12')  # the end string inside a JSON string
    assert _same_as_plain(guard, rules, b'{"s": "", "n": 12')
    guard.observe(b"}</function> and 123456")
    assert guard.keep() is rules.keep_all
    guard.observe(b'<function=f>{"m": 1')  # the next call starts from a fresh JSON state
    assert _same_as_plain(guard, rules, b'{"m": 1')

    guard, rules = _tagged()
    guard.observe(b'<function=f>"a string value: </function>')  # a tag whose JSON is a string
    assert _same_as_plain(guard, rules, b'"a string value: </function>')

    guard, rules = _tagged([('<|python_tag|>{"name": "f", "parameters": ', "}")])
    guard.observe(b'<|python_tag|>{"name": "f", "parameters": {"a": {"b": 1}, "c": 123')  # nested "}"
    assert _same_as_plain(guard, rules, b'{"a": {"b": 1}, "c": 123')
    guard.observe(b"}}")
    assert guard.keep() is rules.keep_all


def test_json_tag_bounds_of_both_structural_tag_forms() -> None:
    from thinkform.structured.spec import json_tag_bounds

    legacy = constraint_from_fields(structural_tag={"type": "structural_tag", "triggers": ["<function="], "structures": [
        {"begin": "<function=a>", "schema": {"type": "object"}, "end": "</function>"}]})
    assert json_tag_bounds(legacy.data()) == [("<function=a>", "</function>")]
    args = {"type": "json_schema", "json_schema": {"type": "object"}}
    nested = constraint_from_fields(structural_tag={"type": "structural_tag", "format": {
        "type": "tag", "begin": "<tools>", "end": "</tools>", "content": {
            "type": "tags_with_separator", "separator": ",", "tags": [
                {"type": "tag", "begin": "<a>", "end": "</a>", "content": args},
                {"type": "tag", "begin": "<b>", "end": "</b>", "content": {"type": "regex", "pattern": "x"}}]}}})
    assert json_tag_bounds(nested.data()) == [("<a>", "</a>")]


def test_calls_back_to_back_in_one_token_each_start_fresh() -> None:
    rules = NumberRules(TOKENS, max_number_digits=4, max_exponent_digits=2)
    guard = TaggedNumberGuard(rules, [("<function=f>", "</function>"),
                                      ("<function=a_much_longer_tool_name>", "</function>")])
    guard.observe(b'<function=f>{"a": 1}</function><function=f>{"b": 123')
    assert _same_as_plain(guard, rules, b'{"b": 123')
    guard.observe(b"}</function>")
    assert guard.keep() is rules.keep_all


def test_the_state_after_any_tokens_is_the_character_walks() -> None:
    """The guard's shortcuts (digits inside a number, remembered transitions from outside numbers, shared
    by every guard of the rules) end in the state a walk over the answer's characters ends in."""
    from thinkform.structured.runaway import LexState, _step

    pieces = [b'{"a": ', b"12", b"3", b".", b"45", b"e", b"-", b"7", b", ", b'"x\\"', b'y"', b"-0", b"]", b"00",
              b' "', b"\\", b"n", b'"', b"1e+2", b": ", b"9"]
    rules = NumberRules(pieces, max_number_digits=4, max_exponent_digits=2)
    rng = random.Random(5)
    for trial in range(200):
        guard = NumberGuard(rules)
        walked = LexState()
        for data in rng.choices(pieces, k=12):
            guard.observe(data)
            for ch in data.decode("latin-1"):
                walked = _step(walked, ch)
            assert guard.state == walked, (trial, data)


def test_leading_zeros_are_no_significant_digits() -> None:
    """`0.30000000000000004` (Python's repr of 0.1 + 0.2) has 17 significant digits: its last `4` was refused
    (the `0` before the point counted); zeros before the first non-zero digit are bounded on their own."""
    pieces = [b"0", b".", b"3", b"4", b"0000", b"1", b",", b"00001"]
    rules = NumberRules(pieces, max_number_digits=17, max_exponent_digits=2)
    guard = NumberGuard(rules)
    guard.observe(b'{"p": 0.3000000000000000')
    assert guard.state.mantissa_digits == 16
    keep = rules_keep_ids(guard, len(pieces))
    assert pieces.index(b"4") in keep and pieces.index(b"0000") not in keep
    guard.observe(b"4")
    keep = rules_keep_ids(guard, len(pieces))
    assert pieces.index(b",") in keep and pieces.index(b"4") not in keep  # 18 significant digits: refused
    small = NumberGuard(rules)
    small.observe(b"[0.0000000000000001")  # 16 zeros, then the first significant digit
    assert small.state.mantissa_digits == 1 and pieces.index(b"4") in rules_keep_ids(small, len(pieces))
    runaway = NumberGuard(rules)
    runaway.observe(b"[0.0000000000000000")  # 17 leading zeros: no more of them
    keep = rules_keep_ids(runaway, len(pieces))
    assert pieces.index(b"0") not in keep and pieces.index(b"00001") not in keep and pieces.index(b"1") in keep


def rules_keep_ids(guard: NumberGuard, n: int) -> set[int]:
    words = guard.keep()
    return {t for t in range(n) if (int(words[t // 32]) >> (t % 32)) & 1}
