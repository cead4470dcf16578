"""A JSON string's `pattern` holds for its decoded value: no backend lets a raw quote, backslash or control
character into the string's JSON text, and an escaped one counts as the character it stands for."""
from __future__ import annotations

import json
import random
import re
from typing import Any

import pytest
import torch

from thinkform.structured.backends import BackendContext, GrammarBackend, create_backend
from thinkform.structured.json_string_pattern import has_assertions, json_text_pattern, without_assertions
from thinkform.structured.spec import ConstraintError, GrammarOptions, constraint_from_fields
from thinkform.testing.tokenizers import build_tiny_tokenizer

BACKENDS = ("xgrammar", "llguidance", "outlines")
# (pattern, values whose JSON text must be admitted, JSON texts that must not be)
CASES = [
    ("^café-.*-fin$", ['café-a"b-fin', "café-a\\b-fin"], ['café-a"b-fin']),  # after a non-ASCII letter
    ('^a"b$', ['a"b'], ['a"b']),
    ("^a\\\\b$", ["a\\b"], ["a\\b"]),
    ("^[ -~]+$", ['say "hi"', "C:\\dir"], ['say "hi"', "C:\\dir", "a\\qb"]),
    ('^é[a-z"]*$', ['é"x"'], ['é"x']),
    ("^[^,]+$", ['a"b', "x\\y"], ['a"b', "a\tb"]),
    ("^a\\sb$", ["a b", "a\tb", "a\nb"], ["a\tb", "a\nb"]),
    ("^[a\nb]+$", ["a\nb"], ["a\nb"]),  # a raw newline in a class: xgrammar's own lexer refused it
]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def ctx(tokenizer: Any) -> BackendContext:
    return BackendContext(tokenizer, len(tokenizer), (tokenizer.eos_token_id,), GrammarOptions())


@pytest.fixture(scope="module")
def backends(ctx: BackendContext) -> dict[str, GrammarBackend]:
    return {name: create_backend(name, ctx) for name in BACKENDS}


def schema_for(pattern: str) -> dict[str, Any]:
    return {"type": "object", "properties": {"x": {"type": "string", "pattern": pattern}}, "required": ["x"]}


def answer(backend: str, value_text: str) -> str:
    gap = "" if backend == "outlines" else " "  # outlines writes compact JSON without spaces
    return '{"x":' + gap + '"' + value_text + '"}'


def admits(backends: dict[str, GrammarBackend], backend: str, pattern: str, value_text: str) -> bool:
    matcher = backends[backend].compile(constraint_from_fields(json_schema=schema_for(pattern))).new_matcher()
    return matcher.accept_string(answer(backend, value_text)) and matcher.can_terminate()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pattern,values,raw_texts", CASES)
def test_escaped_characters_are_admitted_and_raw_ones_are_not(backends: dict[str, GrammarBackend], backend: str,
                                                                pattern: str, values: list[str],
                                                                raw_texts: list[str]) -> None:
    for value in values:
        text = json.dumps(value, ensure_ascii=False)[1:-1]
        assert admits(backends, backend, pattern, text), (pattern, text)
    for raw in raw_texts:
        assert not admits(backends, backend, pattern, raw), (pattern, raw)


def quote_heavy_sample(matcher: Any, tokenizer: Any, vocab_size: int, rng: random.Random) -> str | None:
    """A random walk that takes a token holding `"` or `\\` whenever the mask allows one, half the time."""
    risky = {i for i in range(len(tokenizer)) if any(c in tokenizer.decode([i]) for c in '"\\')}
    out: list[int] = []
    for _ in range(120):
        mask = torch.zeros((1, (vocab_size + 31) // 32), dtype=torch.int32)
        matcher.fill_bitmask(mask, 0)
        bits = (mask[0].unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1
        allowed = bits.flatten()[:vocab_size].nonzero().flatten().tolist()
        may_end = tokenizer.eos_token_id in allowed
        allowed = [t for t in allowed if t != tokenizer.eos_token_id]
        if may_end and (not allowed or rng.random() < 0.3):
            return tokenizer.decode(out)
        preferred = [t for t in allowed if t in risky]
        token = rng.choice(preferred if preferred and rng.random() < 0.5 else allowed)
        assert matcher.accept_token(token)
        out.append(token)
    return None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pattern", ["^é.{0,10}$", "^[ -~]{1,12}$", '^(?:[a-z]|"){1,12}$', "^[^,]{1,12}$"])
def test_every_sampled_answer_parses_and_keeps_its_pattern(backends: dict[str, GrammarBackend], tokenizer: Any,
                                                           backend: str, pattern: str) -> None:
    compiled = backends[backend].compile(constraint_from_fields(json_schema=schema_for(pattern)))
    rng = random.Random(0)
    ended = 0
    for _ in range(12):
        text = quote_heavy_sample(compiled.new_matcher(), tokenizer, len(tokenizer), rng)
        if text is None:
            continue
        ended += 1
        value = json.loads(text)["x"]  # strict: a raw control character fails too
        assert re.search(pattern, value), (pattern, text)
    assert ended >= 6


@pytest.mark.parametrize("any_whitespace", [False, True])
def test_a_tool_calls_argument_strings_are_mended_too(tokenizer: Any, any_whitespace: bool) -> None:
    ctx = BackendContext(tokenizer, len(tokenizer), (tokenizer.eos_token_id,),
                         GrammarOptions(any_whitespace=any_whitespace))
    tag = {"type": "structural_tag", "format": {"type": "triggered_tags", "triggers": ["<f>"], "tags": [
        {"type": "tag", "begin": "<f>", "end": "</f>",
         "content": {"type": "json_schema", "json_schema": {**schema_for("^café-.*-fin$"), "properties": {
             "x": {"type": "string", "pattern": "^café-.*-fin$"}, "y": {"type": "string", "maxLength": 5}}}}}]}}
    compiled = create_backend("xgrammar", ctx).compile(constraint_from_fields(structural_tag=tag))
    sep = ": " if not any_whitespace else ":"
    assert compiled.new_matcher().accept_string('<f>{"x"' + sep + '"café-a\\"b-fin"}</f>')
    assert not compiled.new_matcher().accept_string('<f>{"x"' + sep + '"café-a"b')
    assert compiled.new_matcher().accept_string('<f>{"x"' + sep + '"café--fin", "y"' + sep + '"a b"}</f>')
    assert not compiled.new_matcher().accept_string('<f>{"x"' + sep + '"café--fin", "y"' + sep + '"a\tb')


def test_the_json_text_regex_keeps_the_patterns_meaning() -> None:
    """Checked with Python's re on both sides, over values with quotes, backslashes and non-ASCII letters."""
    alphabet = ['a', 'b', 'é', '"', '\\', ' ', ',', '-', '~']
    rng = random.Random(1)
    for pattern in ['^a.b$', '^[ -~]+$', r'^[^,"]*$', r'^\S{1,3}$', r'^(?:x|")+\\?$', r'^[\x22-\x5c]+$']:
        regex = re.compile(json_text_pattern(pattern))
        for _ in range(400):
            value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 5)))
            text = json.dumps(value, ensure_ascii=False)[1:-1]
            assert bool(regex.fullmatch(text)) == bool(re.search(pattern, value)), (pattern, value, text)


def test_patterns_without_such_characters_are_left_as_written() -> None:
    for pattern in ["^[A-Za-z0-9_]+$", "^\\d{3}-[a-z]{2,}$", "^(?:ab|cd)*\\.x$", "^é+\\p{L}$"]:
        assert json_text_pattern(pattern) == pattern


def test_outlines_refuses_property_name_patterns_it_would_drop(backends: dict[str, GrammarBackend]) -> None:
    for schema in ({"type": "object", "patternProperties": {"^k$": {"type": "integer"}}},
                   {"type": "object", "propertyNames": {"pattern": "^k$"}}):
        with pytest.raises(ConstraintError, match="'outlines' cannot enforce"):
            backends["outlines"].compile(constraint_from_fields(json_schema=schema))


@pytest.mark.parametrize("backend", ["xgrammar", "outlines"])
@pytest.mark.parametrize("pattern", ["^[^\\p{L}]$", "^\\p{P}+$", "^\\P{L}+$", "^[\\p{L}\"]+$", "^a\\", "^[z-a\"]$",
                                     "^\\ud800\"$"])
def test_what_cannot_be_written_as_json_text_is_refused_clearly(backends: dict[str, GrammarBackend], backend: str,
                                                               pattern: str) -> None:
    """Audit 26: a Unicode property that may hold a quote was dropped from its class (`[^\\p{L}]` admitted
    `a`) or written raw (outlines admitted `"` for `\\p{P}`); a refusal sends `auto` to llguidance."""
    with pytest.raises(ConstraintError) as e:
        backends[backend].compile(constraint_from_fields(json_schema=schema_for(pattern)))
    assert e.value.field == "json_schema"
    auto = create_backend("auto", backends["xgrammar"].ctx)
    if pattern.startswith("^[^\\p") or pattern.startswith("^\\p") or pattern.startswith("^\\P"):
        assert type(auto.compile(constraint_from_fields(json_schema=schema_for(pattern)))).__name__ == \
            "LLGuidanceCompiled"


def test_escapes_are_read_as_ecma_reads_them() -> None:
    assert json_text_pattern("^\\cé$") == "^\\cé$"  # \c takes an ASCII letter only: no tab here
    assert json_text_pattern("^\\cJ$") == "^(?:\\\\n)$"
    assert json_text_pattern("^a{,3}\\/$") == "^a{,3}\\/$"  # literal braces and slash kept as written
    assert json_text_pattern("^\\uD83D\\uDE00\"$") == "^\\uD83D\\uDE00(?:\\\\\")$"  # one astral character
    assert re.fullmatch(json_text_pattern("^[\\s\\S]+$"), "a\\nb\\tc\\\"")  # "any character" names \s
    assert not re.fullmatch(json_text_pattern("^[\\s\\S]+$"), "a\\u0001b")  # \S alone names no control
    assert json_text_pattern("^[\\p{L}_]+$") == "^[\\p{L}_]+$"  # no escaped character: as written


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_optional_group_after_a_starred_atom_is_kept(backends: dict[str, GrammarBackend], backend: str) -> None:
    """xgrammar's regex automaton read `(b*c)?` as `(b*c?)?`: the DNS-label pattern admitted `go-`, which ends
    with a hyphen (JSONSchemaBench Github_hard/o75202 got `"type": "go_"`)."""
    label = "^[a-z]([a-z0-9_-]*[a-z])?$"
    assert admits(backends, backend, label, "g-o") and admits(backends, backend, label, "g")
    assert not admits(backends, backend, label, "go-") and not admits(backends, backend, label, "go_")
    assert not admits(backends, backend, "^a(b*c)??$", "ab") and admits(backends, backend, "^a(b*c)??$", "abc")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_length_bounded_string_holds_escapes_and_no_raw_control(backends: dict[str, GrammarBackend],
                                                                  backend: str) -> None:
    """xgrammar counted a min/maxLength string's characters with `[^"\\\\\\r\\n]`: a raw tab got in (invalid
    JSON, JSONSchemaBench Github_hard/o84346)."""
    schema = {"type": "object", "properties": {"x": {"type": "string", "minLength": 3, "maxLength": 4}},
              "required": ["x"]}
    compiled = backends[backend].compile(constraint_from_fields(json_schema=schema))

    def ok(value_text: str) -> bool:
        matcher = compiled.new_matcher()
        return matcher.accept_string(answer(backend, value_text)) and matcher.can_terminate()

    assert ok("abcd") and ok("é-é")
    assert not ok("a\tb") and not ok("ab") and not ok("abcde") and not ok('a\\qb')
    if backend != "xgrammar":  # xgrammar counts characters of one class: no escape there (as before)
        assert ok('a\\tb') and ok('say\\"')



@pytest.mark.parametrize("backend", BACKENDS)
def test_a_pattern_anchored_at_one_end_or_per_alternative_compiles_everywhere(backends: dict[str, GrammarBackend],
                                                                             backend: str) -> None:
    """outlines-core refused `^ab` ("vocabulary incompatible") and read `a|^b$` as `"a` or `b"`, so no string
    could end; a whole match is admitted on every backend now."""
    for pattern, values in (("^ab", ["ab"]), ("ab$", ["ab"]), ("a|^b$", ["a", "b"]), ('^a"', ['a\\"'])):
        for value_text in values:
            assert admits(backends, backend, pattern, value_text), (pattern, value_text)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_pattern_anchored_at_one_end_is_a_prefix_or_suffix_test(backends: dict[str, GrammarBackend],
                                                                  backend: str) -> None:
    """ECMA-262 searches: `^https?://` holds for every URL, but xgrammar and outlines matched it whole, so the
    only answers were `http://` and `https://` themselves (30 of JSONSchemaBench's patterns are one-sided)."""
    assert admits(backends, backend, "^https?://", "https://example.com/a?b=1")
    assert admits(backends, backend, "\\.png$", "cat.png") and admits(backends, backend, "^v?[0-9]+|^dev-", "dev-x")
    assert not admits(backends, backend, "^https?://", "ftp://x") and not admits(backends, backend, "\\.png$", "a.jpg")
    assert not admits(backends, backend, "^https?://", 'https://a"b')  # the run-on text is JSON text too


def test_an_emails_quoted_pair_is_json_text_under_xgrammar(backends: dict[str, GrammarBackend]) -> None:
    """xgrammar wrote the quoted pair of an email's quoted local part as a bare backslash and the character:
    `"\\"a\\qb\\"@c.de"` (`\\q` is no JSON escape) was admitted."""
    schema = {"type": "object", "properties": {"x": {"type": "string", "format": "email"}}, "required": ["x"]}
    compiled = backends["xgrammar"].compile(constraint_from_fields(json_schema=schema))

    def ok(text: str) -> bool:
        matcher = compiled.new_matcher()
        return matcher.accept_string(text) and matcher.can_terminate()

    for value in ('"a\\qb"@c.de', '"a\\"b"@c.de', "ab@c.de"):
        assert ok(json.dumps({"x": value})), value
    assert not ok('{"x": "\\"a\\qb\\"@c.de"}')


@pytest.mark.parametrize("pattern", ["^https?://", "^a.*$", "^[^,]+$", "^\\S+$"])
def test_xgrammar_admits_no_overlong_or_surrogate_bytes_in_a_pattern(backends: dict[str, GrammarBackend],
                                                                    pattern: str) -> None:
    """Audit 27: xgrammar's regex automaton built a negated class, or one whose ranges cross UTF-8's segments,
    as bytes that took the overlong E0 80 80 (the tiny model's `https://…need` ended in three U+FFFD, and the
    UTF-8 guard gives way where the grammar leaves nothing well-formed)."""
    compiled = backends["xgrammar"].compile(constraint_from_fields(json_schema=schema_for(pattern)))
    head = '{"x": "' + ("https://" if "http" in pattern else "a")

    def takes(data: bytes) -> bool:
        return compiled.new_matcher()._m.accept_string(head.encode() + data)  # the raw bytes, not text

    assert takes("\u0800".encode()) and takes("\ud7ff".encode()) and takes("\U00010000".encode())
    for bad in (b"\xe0\x80\x80", b"\xed\xa0\x80", b"\xf0\x80\x80\x80", b"\xc0\x80"):
        assert not takes(bad), bad


def test_assertions_are_dropped_from_a_pattern_and_nothing_else() -> None:
    cases = {r"^(?!x)[a-z]+$": "^[a-z]+$", r"^[a-z]+(?<!z)$": "^[a-z]+$", r"^\bab\B": "^ab",
             r"^(?=.*[A-Z])(?=(a|b)c)+.{8,}$": "^.{8,}$", r"a(?:b)?(?!c){2}?d": "a(?:b)?d"}
    for pattern, loosened in cases.items():
        assert without_assertions(pattern) == loosened and has_assertions(pattern)
    for kept in (r"[\b(?=]a", r"(?<n>a)\k<n>", r"^(a)?b\d$", r"\P{L}"):
        assert without_assertions(kept) == kept and not has_assertions(kept)


@pytest.mark.parametrize("backend", ["xgrammar", "llguidance", "auto"])
def test_a_pattern_with_a_lookaround_is_enforced_without_it_and_checked_on_the_answer(
        backends: dict[str, GrammarBackend], ctx: BackendContext, backend: str) -> None:
    """xgrammar ignored `(?!x)` (`"xb"` passed for `^(?!x)[a-z]+$` with constraint_satisfied true) and refused a
    lookbehind; llguidance refused both. The grammar now enforces the rest and the answer check the whole."""
    be = backends[backend] if backend in backends else create_backend(backend, ctx)
    for pattern, good, bad in ((r"^(?!x)[a-z]+$", "ab", "xb"), (r"^[a-z]+(?<!z)$", "ab", "az"),
                               (r"^(?=.*[0-9])[a-z0-9]{3}$", "a1b", "abc")):
        compiled = be.compile(constraint_from_fields(json_schema={"type": "string", "pattern": pattern}))
        for text, ok in ((good, True), (bad, False)):
            m = compiled.new_matcher()
            assert m.accept_string(json.dumps(text)) and m.can_terminate(), (backend, pattern, text)
            assert compiled.answer_check(json.dumps(text).encode()) is ok, (backend, pattern, text)
        regex = be.compile(constraint_from_fields(regex=pattern.strip("^$")))
        assert regex.answer_check(good.encode()) and not regex.answer_check(bad.encode())


@pytest.mark.parametrize("fields", [{"json_schema": {"type": "string"}}, {"json_object": True},
                                    {"json_schema": {"type": "object", "properties": {"s": {"type": "string"}}}}])
def test_no_lone_surrogate_escape_in_a_string(backends: dict[str, GrammarBackend], fields: dict) -> None:
    """xgrammar took any `\\uXXXX`: `"\\udfee"` decodes to no character (Python's json gives a string that
    cannot be encoded to UTF-8; stricter parsers refuse it). A pair, and any other code point, stay."""
    compiled = backends["xgrammar"].compile(constraint_from_fields(**fields))
    wrap = {"json_object": "[{}]", "json_schema": "{}"}[next(iter(fields))]
    if "properties" in fields.get("json_schema", {}):
        wrap = '{{"s": {}}}'
    for escaped, ok in (("\\u0041", True), ("\\ud83d\\ude00", True), ("\\uFFFD", True), ("\\ud83d", False),
                        ("\\uDFEE", False), ("\\ude00\\ud83d", False), ("\\ud83dx", False)):
        m = compiled.new_matcher()
        assert (m.accept_string(wrap.format(f'"{escaped}"')) and m.can_terminate()) is ok, escaped
