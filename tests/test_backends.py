"""Every backend, every kind it supports: whatever a random sampler picks inside the mask satisfies the
constraint; bad constraints are ConstraintErrors carrying the library's message."""
from __future__ import annotations

import json
import random
import re
from typing import Any, Literal

import jsonschema
import pytest
import torch
import xgrammar as xgr
from pydantic import BaseModel, Field

from thinkform.structured.backends import (
    BACKENDS,
    BackendContext,
    CompiledGrammar,
    GrammarBackend,
    GrammarMatcher,
    create_backend,
    register_backend,
)
from thinkform.structured.spec import Constraint, ConstraintError, GrammarOptions, constraint_from_fields
from thinkform.testing.tokenizers import build_tiny_tokenizer

PADDING = 45  # the model's logits are wider than the tokenizer, as for real checkpoints
CLOSERS = ('"', "}", "]", ",")


class CapitalInfo(BaseModel):
    name: str = Field(..., pattern=r"^\w+$")
    population: int


class Address(BaseModel):
    city: Literal["Paris", "London", "Rome"]
    zip: str = Field(..., pattern=r"^[0-9]{2,5}$")
    code: str = Field(..., pattern=r"^\w+$", min_length=2, max_length=4)  # xgrammar alone drops the lengths
    note: str = Field(..., min_length=2, max_length=5)


class Person(BaseModel):
    name: str = Field(..., max_length=8)
    age: int = Field(..., ge=0, le=120)
    home: Address
    tags: list[str] = Field(..., min_length=1, max_length=3)
    grid: list[list[int]] = Field(..., max_length=2)
    score: float | None


class Item(BaseModel):
    sku: Literal["A1", "B2"]
    qty: int
    note: str | None = Field(..., max_length=6)


class Order(BaseModel):  # nothing outlines-core would drop: no numeric bounds, no pattern + length
    items: list[Item] = Field(..., min_length=1, max_length=2)
    rows: list[list[bool]]
    code: str = Field(..., pattern=r"^[A-Z]{2}[0-9]$")


HANDWRITTEN = {
    "type": "object",
    "properties": {
        "kind": {"enum": ["a", "b", 3]},
        "value": {"anyOf": [{"type": "integer", "minimum": -5, "maximum": 5}, {"type": "boolean"}]},
        "items": {"type": "array", "items": {"type": "string", "maxLength": 3}, "minItems": 2, "maxItems": 2},
    },
    "required": ["kind", "value", "items"],
}

SCHEMAS = {"seed": CapitalInfo.model_json_schema(), "pydantic_defs": Person.model_json_schema(),
           "handwritten": HANDWRITTEN, "nested": Order.model_json_schema()}
OUTLINES_SCHEMAS = {"seed", "nested"}  # the others use keywords outlines-core cannot enforce

EBNF = """
root ::= city | description
city ::= "London" | "Paris" | "Berlin" | "Rome"
description ::= city " is " status
status ::= "the capital of " country
country ::= "England" | "France" | "Germany" | "Italy"
"""
EBNF_SENTENCES = {c for c in ("London", "Paris", "Berlin", "Rome")} | {
    f"{c} is the capital of {k}" for c in ("London", "Paris", "Berlin", "Rome")
    for k in ("England", "France", "Germany", "Italy")}

WEATHER = {"type": "object", "properties": {
    "city": {"type": "string", "maxLength": 10}, "state": {"type": "string", "maxLength": 2},
    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city", "state", "unit"]}
DATE = {"type": "object", "properties": {"timezone": {"type": "string", "maxLength": 16}}, "required": ["timezone"]}
TOOL_SCHEMAS = {"get_current_weather": WEATHER, "get_current_date": DATE}
LEGACY_TAG = {
    "type": "structural_tag", "max_new_tokens": 2048,
    "structures": [{"begin": f"<function={name}>", "schema": schema, "end": "</function>"}
                   for name, schema in TOOL_SCHEMAS.items()],
    "triggers": ["<function="],
}
FORMAT_TAG = {"type": "structural_tag", "format": {
    "type": "triggered_tags", "triggers": ["<function="],
    "tags": [{"type": "tag", "begin": f"<function={name}>", "end": "</function>",
              "content": {"type": "json_schema", "json_schema": schema}} for name, schema in TOOL_SCHEMAS.items()]}}

SUPPORTED = {
    "xgrammar": {"json_schema", "json_object", "regex", "ebnf", "structural_tag"},
    "llguidance": {"json_schema", "json_object", "regex", "ebnf", "structural_tag"},
    "outlines": {"json_schema", "regex"},
    "none": set(),
}


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def ctx(tokenizer: Any) -> BackendContext:
    return BackendContext(tokenizer, len(tokenizer) + PADDING, (tokenizer.eos_token_id,), GrammarOptions())


@pytest.fixture(scope="module")
def backends(ctx: BackendContext) -> dict[str, GrammarBackend]:
    return {name: create_backend(name, ctx) for name in SUPPORTED}


def allowed_ids(matcher: GrammarMatcher, vocab_size: int) -> list[int]:
    mask = torch.zeros((2, (vocab_size + 31) // 32), dtype=torch.int32)
    matcher.fill_bitmask(mask, 1)
    assert not mask[0].any(), "a matcher must only write its own row"
    bits = (mask[1].unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1
    return bits.flatten()[:vocab_size].nonzero().flatten().tolist()


def sample(matcher: GrammarMatcher, tokenizer: Any, vocab_size: int, seed: int, max_steps: int = 300) -> str:
    """Uniform among allowed tokens, but half the time among closing ones (or EOS) so answers end."""
    rng = random.Random(seed)
    closers = {i for i in range(len(tokenizer)) if any(c in tokenizer.decode([i]) for c in CLOSERS)}
    eos = tokenizer.eos_token_id
    out: list[int] = []
    for _ in range(max_steps):
        allowed = allowed_ids(matcher, vocab_size)
        assert allowed, f"nothing allowed after {tokenizer.decode(out)!r}"
        assert all(t < len(tokenizer) for t in allowed), "padding ids are never allowed"
        assert (eos in allowed) == matcher.can_terminate()
        preferred = [t for t in allowed if t == eos or t in closers]
        token = rng.choice(preferred if preferred and rng.random() < 0.5 else allowed)
        if eos in allowed and rng.random() < 0.5:
            token = eos
        assert matcher.accept_token(token)
        if matcher.is_terminated():
            assert token == eos
            return tokenizer.decode(out)
        out.append(token)
    raise AssertionError(f"no end after {max_steps} steps: {tokenizer.decode(out)!r}")


def supported_cases() -> list[tuple[str, str, str]]:
    names = [("json_schema", n) for n in SCHEMAS] + [
        ("json_object", "any"), ("regex", "capital"), ("regex", "number"), ("ebnf", "seed"),
        ("structural_tag", "legacy"), ("structural_tag", "format")]
    return [(b, k, n) for b, supported in SUPPORTED.items() for k, n in names if k in supported
            and not (b == "outlines" and k == "json_schema" and n not in OUTLINES_SCHEMAS)]


REGEXES = {"capital": "(Paris|London)", "number": r"-?[1-9][0-9]{0,3}\.[0-9]{2}"}


def make_constraint(kind: str, name: str) -> Constraint:
    if kind == "json_schema":
        return constraint_from_fields(json_schema=SCHEMAS[name])
    if kind == "json_object":
        return constraint_from_fields(json_object=True)
    if kind == "regex":
        return constraint_from_fields(regex=REGEXES[name])
    if kind == "ebnf":
        return constraint_from_fields(ebnf=EBNF)
    return constraint_from_fields(structural_tag=LEGACY_TAG if name == "legacy" else FORMAT_TAG)


@pytest.mark.parametrize("backend,kind,name", supported_cases())
def test_random_sampling_inside_the_mask_satisfies_the_constraint(
        backends: dict[str, GrammarBackend], tokenizer: Any, ctx: BackendContext,
        backend: str, kind: str, name: str) -> None:
    compiled = backends[backend].compile(make_constraint(kind, name))
    for seed in range(4):
        matcher = compiled.new_matcher()
        prefix = "Let me check. <function=" if kind == "structural_tag" else ""  # steer into a tool call
        assert matcher.accept_string(prefix)
        text = prefix + sample(matcher, tokenizer, ctx.vocab_size, seed)
        check(kind, name, text, backends[backend])


def loads(text: str) -> Any:
    # strict=False: xgrammar 0.2.8 lets raw control characters into JSON strings (a library quirk)
    return json.loads(text, strict=False)


def check(kind: str, name: str, text: str, backend: GrammarBackend) -> None:
    if kind == "json_schema":
        jsonschema.validate(loads(text), SCHEMAS[name])
    elif kind == "json_object":
        assert isinstance(loads(text), (dict, list))
    elif kind == "regex":
        assert re.fullmatch(REGEXES[name], text), text
    elif kind == "ebnf":
        assert text in EBNF_SENTENCES
        again = backend.compile(make_constraint("ebnf", "seed")).new_matcher()
        assert again.accept_string(text) and again.can_terminate()
    else:
        calls = re.findall(r"<function=(\w+)>(.*?)</function>", text, flags=re.S)
        assert calls, text
        for fn, args in calls:
            jsonschema.validate(loads(args), TOOL_SCHEMAS[fn])


@pytest.mark.parametrize("backend", ["xgrammar", "llguidance"])
def test_json_is_compact_by_default(backends: dict[str, GrammarBackend], tokenizer: Any,
                                    ctx: BackendContext, backend: str) -> None:
    schema = {"type": "object", "properties": {"kind": {"enum": ["a", "b"]}, "n": {"type": "integer"},
                                               "xs": {"type": "array", "items": {"type": "boolean"}}},
              "required": ["kind", "n", "xs"]}
    compiled = backends[backend].compile(constraint_from_fields(json_schema=schema))
    for seed in range(3):
        text = sample(compiled.new_matcher(), tokenizer, ctx.vocab_size, seed)
        assert text == json.dumps(loads(text), ensure_ascii=False)  # exactly ", " and ": ", no other whitespace


def test_outlines_json_is_compact_without_spaces(backends: dict[str, GrammarBackend], tokenizer: Any,
                                                 ctx: BackendContext) -> None:
    compiled = backends["outlines"].compile(make_constraint("json_schema", "nested"))
    text = sample(compiled.new_matcher(), tokenizer, ctx.vocab_size, 0)
    assert text == json.dumps(loads(text), separators=(",", ":"), ensure_ascii=False)


@pytest.mark.parametrize("backend", ["xgrammar", "llguidance", "outlines"])
def test_extra_properties_are_refused_in_strict_mode(backends: dict[str, GrammarBackend], backend: str) -> None:
    matcher = backends[backend].compile(make_constraint("json_schema", "seed")).new_matcher()
    assert matcher.accept_string('{"name": "Paris", "population": 1') or matcher.accept_string(
        '{"name":"Paris","population":1')
    assert not matcher.accept_string(', "x": 1') and not matcher.accept_string(',"x":1')
    assert matcher.accept_string("}") and matcher.can_terminate()


@pytest.mark.parametrize("backend", ["xgrammar", "llguidance", "outlines"])
def test_a_fill_writes_every_word_of_its_rows(backends: dict[str, GrammarBackend], tokenizer: Any,
                                               ctx: BackendContext, backend: str) -> None:
    """The engine reuses one mask buffer uncleared: a row's fill must not leave any word of the last step."""
    compiled = backends[backend].compile(constraint_from_fields(regex="(Paris|London) is big"))
    matchers = [compiled.new_matcher() for _ in range(3)]
    assert matchers[1].accept_string("Par")
    words = (ctx.vocab_size + 31) // 32
    fills = []
    for before in (0, -1, 0x5A5A5A5A):
        mask = torch.full((4, words), before, dtype=torch.int32)
        backends[backend].fill_bitmasks(mask, [(row, m) for row, m in enumerate(matchers)])
        assert torch.equal(mask[3], torch.full((words,), before, dtype=torch.int32))  # no row but its own
        fills.append(mask[:3])
    assert torch.equal(fills[0], fills[1]) and torch.equal(fills[0], fills[2])


@pytest.mark.parametrize("backend", ["xgrammar", "llguidance", "outlines"])
def test_matcher_protocol(backends: dict[str, GrammarBackend], tokenizer: Any, ctx: BackendContext,
                          backend: str) -> None:
    compiled = backends[backend].compile(constraint_from_fields(regex="(Paris|London) is big"))
    m = compiled.new_matcher()
    assert m.find_jump_forward_bytes() == b""  # two ways to go
    start = allowed_ids(m, ctx.vocab_size)
    bad = tokenizer.encode("xyz", add_special_tokens=False)[0]
    assert not m.accept_token(bad) and allowed_ids(m, ctx.vocab_size) == start  # refused, unchanged
    assert m.accept_string("Par")
    assert m.find_jump_forward_bytes() == b"is is big"
    ids = tokenizer.encode("is", add_special_tokens=False)
    for t in ids:
        assert m.accept_token(t)
    m.rollback(len(ids) + 1)  # the string counts as one step, like xgrammar
    assert allowed_ids(m, ctx.vocab_size) == start
    assert m.accept_string("London is big") and m.can_terminate() and not m.is_terminated()
    assert allowed_ids(m, ctx.vocab_size) == [tokenizer.eos_token_id]
    assert m.accept_token(tokenizer.eos_token_id) and m.is_terminated()
    m.rollback(1)
    assert not m.is_terminated() and m.can_terminate()


@pytest.mark.parametrize("backend", ["xgrammar", "llguidance", "outlines"])
def test_jump_forward_from_inside_a_character(backends: dict[str, GrammarBackend], tokenizer: Any,
                                              backend: str) -> None:
    """Text that stops inside a character (two of 東's three bytes sampled) is forced on with the rest of it;
    xgrammar's own str answer raised UnicodeDecodeError there and aborted the request."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_token = {b: tokenizer.convert_tokens_to_ids(c) for b, c in bytes_to_unicode().items()}
    m = backends[backend].compile(constraint_from_fields(regex="(東京|東北) is big")).new_matcher()
    assert m.accept_token(byte_token[0xE6]) and m.accept_token(byte_token[0x9D])
    assert m.find_jump_forward_bytes() == b"\xb1"  # 東 = e6 9d b1; then 京 or 北
    assert m.accept_token(byte_token[0xB1]) and m.accept_string("京")
    assert m.find_jump_forward_bytes() == b" is big"


SIBLING_SCHEMAS = [  # keywords beside anyOf / oneOf / allOf, which xgrammar 0.2 drops: (schema, invalid answer)
    ({"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}},
      "oneOf": [{"properties": {"kind": {"enum": ["a"]}}}, {"properties": {"kind": {"enum": ["b"]}}}]}, "{}"),
    ({"type": "object", "anyOf": [{"required": ["x"]}, {"required": ["y"]}]}, '""'),
    ({"allOf": [{"type": "object", "required": ["a"], "properties": {"a": {"type": "integer"}}},
                {"required": ["b"], "properties": {"b": {"type": "integer"}}}]}, '""'),
]


@pytest.mark.parametrize("schema, invalid", SIBLING_SCHEMAS)
def test_schemas_xgrammar_would_not_enforce_are_refused_and_auto_takes_llguidance(
        backends: dict[str, GrammarBackend], ctx: BackendContext, schema: dict, invalid: str) -> None:
    with pytest.raises(ConstraintError, match="would not enforce"):
        backends["xgrammar"].compile(constraint_from_fields(json_schema=schema))
    try:  # llguidance enforces it, or refuses it too (strict mode can make a branch unsatisfiable)
        m = create_backend("auto", ctx).compile(constraint_from_fields(json_schema=schema)).new_matcher()
    except ConstraintError as e:
        assert "llguidance" in str(e) and "use --grammar-backend" not in str(e)  # already on auto
        return
    assert not (m.accept_string(invalid) and m.can_terminate())


@pytest.mark.parametrize("legacy", [True, False])
def test_tool_arguments_xgrammar_would_not_enforce_are_refused_too(backends: dict[str, GrammarBackend],
                                                                   ctx: BackendContext, legacy: bool) -> None:
    """A structural tag's JSON (a tool call's arguments) gets the same check as a json_schema."""
    schema, invalid = SIBLING_SCHEMAS[1]
    tag = ({"type": "structural_tag", "triggers": ["<f="], "structures": [{"begin": "<f=a>", "schema": schema,
                                                                          "end": "</f>"}]} if legacy else
           {"type": "structural_tag", "format": {"type": "triggered_tags", "triggers": ["<f="], "tags": [
               {"type": "tag", "begin": "<f=a>", "content": {"type": "json_schema", "json_schema": schema},
                "end": "</f>"}]}})
    with pytest.raises(ConstraintError, match="structural_tag: .*would not enforce"):
        backends["xgrammar"].compile(constraint_from_fields(structural_tag=tag))
    m = create_backend("auto", ctx).compile(constraint_from_fields(structural_tag=tag)).new_matcher()
    assert not (m.accept_string(f"<f=a>{invalid}</f>") and m.can_terminate())


@pytest.mark.parametrize("backend", ["xgrammar", "llguidance", "auto"])
def test_a_required_property_properties_does_not_list_is_required_with_any_value(
        backends: dict[str, GrammarBackend], ctx: BackendContext, backend: str) -> None:
    """Strict mode admits no unlisted property: xgrammar dropped the requirement, llguidance called the
    schema unsatisfiable. It is listed now, as any value."""
    schema = {"type": "object", "properties": {"n": {"type": "string"}}, "required": ["n", "v"]}
    be = backends[backend] if backend in backends else create_backend(backend, ctx)
    compiled = be.compile(constraint_from_fields(json_schema=schema))
    m = compiled.new_matcher()
    assert not (m.accept_string('{"n": ""}') and m.can_terminate())
    m = compiled.new_matcher()
    assert m.accept_string('{"n": "", "v": [1]}') and m.can_terminate()


@pytest.mark.parametrize("backend", ["xgrammar", "llguidance", "auto"])
def test_a_required_property_gets_its_pattern_properties_schema(
        backends: dict[str, GrammarBackend], ctx: BackendContext, backend: str) -> None:
    schema = {"type": "object", "patternProperties": {"^b$": {"type": "integer"}}, "required": ["b"]}
    be = backends[backend] if backend in backends else create_backend(backend, ctx)
    compiled = be.compile(constraint_from_fields(json_schema=schema))
    for text, ok in (("{}", False), ('{"b": "x"}', False), ('{"b": 1}', True)):
        m = compiled.new_matcher()
        assert (m.accept_string(text) and m.can_terminate()) is ok, (backend, text)


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"a": {}}, "required": ["a", "b"], "additionalProperties": False},
    {"type": "object", "properties": {"a": {}}, "required": ["b"], "propertyNames": {"pattern": "^a"}},
])
@pytest.mark.parametrize("backend", ["xgrammar", "llguidance", "auto"])
def test_a_required_property_the_object_can_never_hold_is_a_clear_error(
        backends: dict[str, GrammarBackend], ctx: BackendContext, backend: str, schema: dict) -> None:
    be = backends[backend] if backend in backends else create_backend(backend, ctx)
    with pytest.raises(ConstraintError):  # xgrammar would drop `required`; llguidance knows it cannot be met
        be.compile(constraint_from_fields(json_schema=schema))


OUTSIDE_TARGETS = [  # (a schema kept under a key no keyword names, reached by `$ref`; an answer it rejects)
    ({"type": "number", "multipleOf": 0.5}, "0.3"),
    ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "[1, 1]"),
    ({"type": "string", "not": {"const": "bad"}}, '"bad"'),
    ({"type": "object", "required": ["a"], "anyOf": [{"properties": {"a": {}}}]}, "{}"),
    ({"pattern": "^a+$"}, '"zz"'),
]


@pytest.mark.parametrize("target, invalid", OUTSIDE_TARGETS)
def test_a_ref_target_under_any_key_is_checked_like_the_rest(ctx: BackendContext, target: dict, invalid: str) -> None:
    """`{"$ref": "#/file"}` (5 JSONSchemaBench schemas keep definitions so): the checks walked only the
    places keywords name, so xgrammar dropped the `multipleOf` there and the answer check never ran."""
    schema = {"type": "object", "properties": {"v": {"$ref": "#/file"}}, "required": ["v"], "file": target}
    compiled = create_backend("auto", ctx).compile(constraint_from_fields(json_schema=schema))
    m = compiled.new_matcher()
    admitted = m.accept_string(f'{{"v": {invalid}}}') and m.can_terminate()
    assert not admitted or compiled.answer_check(f'{{"v": {invalid}}}'.encode()) is False


REF_SIBLINGS = [  # (a keyword beside $ref, an answer the pair rejects)
    ({"maxLength": 3}, '"abcdef"'), ({"enum": ["a"]}, '"zz"'), ({"pattern": "^a"}, '"zz"'),
]


@pytest.mark.parametrize("sibling, invalid", REF_SIBLINGS)
def test_a_keyword_beside_a_ref_is_enforced_from_draft_2019_09_on(backends: dict[str, GrammarBackend],
                                                                   ctx: BackendContext, sibling: dict,
                                                                   invalid: str) -> None:
    """xgrammar keeps a `$ref`'s target and drops what stands beside it (`{"$ref": ..., "maxLength": 3}`
    admitted "abcdef"); since draft 2019-09 (and so for a schema naming no draft) both apply. Draft 7 and
    before ignore them, as xgrammar does."""
    schema = {"type": "object", "properties": {"v": {"$ref": "#/$defs/s", **sibling}}, "required": ["v"],
              "$defs": {"s": {"type": "string"}}}
    with pytest.raises(ConstraintError, match="beside '\\$ref'"):
        backends["xgrammar"].compile(constraint_from_fields(json_schema=schema))
    m = create_backend("auto", ctx).compile(constraint_from_fields(json_schema=schema)).new_matcher()
    assert not (m.accept_string(f'{{"v": {invalid}}}') and m.can_terminate())
    draft7 = {**schema, "$schema": "http://json-schema.org/draft-07/schema#"}
    m = backends["xgrammar"].compile(constraint_from_fields(json_schema=draft7)).new_matcher()
    assert m.accept_string(f'{{"v": {invalid}}}') and m.can_terminate()


def test_keywords_no_draft_knows_stand_beside_a_ref_or_anyof(backends: dict[str, GrammarBackend]) -> None:
    """`javaType`, `propertyOrder`, `deprecationMessage` describe the schema: nothing to drop (they had sent
    such schemas away from xgrammar)."""
    schema = {"type": "object", "properties": {
        "a": {"$ref": "#/$defs/s", "javaType": "x.Y", "description": "d"},
        "b": {"anyOf": [{"type": "string"}, {"type": "null"}], "deprecationMessage": "old"}},
        "$defs": {"s": {"type": "string"}}}
    m = backends["xgrammar"].compile(constraint_from_fields(json_schema=schema)).new_matcher()
    assert m.accept_string('{"a": "x", "b": null}') and m.can_terminate()


@pytest.mark.parametrize("extra", [True, {"type": "string"}])
def test_a_listed_name_spelled_with_escapes_is_no_other_property(backends: dict[str, GrammarBackend],
                                                                  extra: Any) -> None:
    """xgrammar checks an open object's other names on the written text: `"\\u0069d"` is `id`, and passed
    as another property with any value (`{"\\u0069d": "zz"}` for an integer `id`)."""
    schema = {"type": "object", "properties": {"id": {"type": "integer"}, "a/b": {"type": "integer"}},
              "additionalProperties": extra}
    compiled = backends["xgrammar"].compile(constraint_from_fields(json_schema=schema))
    for text, ok in (('{"\\u0069d": "zz"}', False), ('{"i\\u0064": "zz"}', False), ('{"a\\/b": "zz"}', False),
                     ('{"id": 1, "note": "s"}', True), ('{"say \\"hi\\"": "s"}', True)):
        m = compiled.new_matcher()
        assert (m.accept_string(text) and m.can_terminate()) is ok, text


def test_llguidance_names_written_with_escapes_are_checked_on_the_answer(backends: dict[str, GrammarBackend]) -> None:
    """llguidance too matches an open object's names on their text; its grammar cannot be mended, so an
    answer that spells a listed name so is found by the answer check (constraint_satisfied false)."""
    schema = {"type": "object", "properties": {"id": {"type": "integer"}}, "additionalProperties": True}
    compiled = backends["llguidance"].compile(constraint_from_fields(json_schema=schema))
    m = compiled.new_matcher()
    assert m.accept_string('{"\\u0069d": "zz"}') and m.can_terminate()
    assert compiled.answer_check(b'{"\\u0069d": "zz"}') is False
    assert compiled.answer_check(b'{"id": 1, "note": "s"}') is True


@pytest.mark.parametrize("extra", [True, {"type": "string"}])
def test_pattern_properties_in_an_open_object_go_to_llguidance(backends: dict[str, GrammarBackend],
                                                                ctx: BackendContext, extra: Any) -> None:
    """xgrammar took any name with the other properties' schema there, a listed one too: `{"id": "zz"}`."""
    schema = {"type": "object", "properties": {"id": {"type": "integer"}},
              "patternProperties": {"^x": {"type": "integer"}}, "additionalProperties": extra}
    with pytest.raises(ConstraintError, match="patternProperties"):
        backends["xgrammar"].compile(constraint_from_fields(json_schema=schema))
    compiled = create_backend("auto", ctx).compile(constraint_from_fields(json_schema=schema))
    for text, ok in (('{"id": "zz"}', False), ('{"x1": "zz"}', False), ('{"id": 1, "x1": 2, "b": "s"}', True)):
        m = compiled.new_matcher()
        assert (m.accept_string(text) and m.can_terminate()) is ok, text


UNTYPED_SCHEMAS = [  # (a property's schema with no `type`, answers it admits, answers it does not)
    ({"pattern": "^a+$"}, ['"aa"', "7", "null", "[]"], ['"ab"', '""']),
    ({"minLength": 3}, ['"abc"', "true"], ['"ab"']),
    ({"maxLength": 1}, ['"a"', "{}"], ['"ab"']),
    ({"format": "date"}, ['"2024-01-02"', "1.5"], ['"tomorrow"']),
    ({"maxItems": 1, "items": {"type": "integer"}}, ["[1]", '"x"'], ["[1, 2]"]),
    ({"minItems": 1, "items": {"type": "integer"}}, ["[1]", "false"], ["[]"]),
    ({"minProperties": 1, "additionalProperties": {"type": "integer"}}, ['{"k": 1}'], ["{}"]),
    ({"maxProperties": 1, "additionalProperties": {"type": "integer"}}, ['{"k": 1}', "{}"], ['{"k": 1, "j": 2}']),
    ({"type": "object", "required": ["a"]}, ['{"a": [1]}'], ["{}"]),
    ({"required": ["a"]}, ['{"a": 1}'], ["{}"]),
]


@pytest.mark.parametrize("schema, valid, invalid", UNTYPED_SCHEMAS)
@pytest.mark.parametrize("backend", ["xgrammar", "llguidance"])
def test_keywords_of_a_schema_without_a_type_are_kept(backends: dict[str, GrammarBackend], backend: str,
                                                      schema: dict, valid: list[str], invalid: list[str]) -> None:
    """JSON Schema binds `pattern` / lengths / `format` to strings (items / property counts to arrays and
    objects) and lets other values pass. xgrammar took a schema with no type for any value and dropped them
    (`{"v": "ab"}` for `{"pattern": "^a+$"}`), and closed an object listing no properties to `{}`, dropping its
    `required`."""
    compiled = backends[backend].compile(constraint_from_fields(json_schema={
        "type": "object", "properties": {"v": schema}, "required": ["v"]}))
    for value in invalid:
        m = compiled.new_matcher()
        assert not (m.accept_string(f'{{"v": {value}}}') and m.can_terminate()), (backend, value)
    if backend == "xgrammar":  # (llguidance narrows some to their type: valid, checked on its own walks)
        for value in valid:
            m = compiled.new_matcher()
            assert m.accept_string(f'{{"v": {value}}}') and m.can_terminate(), (backend, value)


@pytest.mark.parametrize("schema, valid", [
    ({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}},
      "anyOf": [{"required": ["a"]}, {"required": ["b"]}]}, '{"a": 1, "b": "x"}'),  # required-only branches stay open
    ({"type": "integer", "properties": {"a": {}}, "required": ["b"], "additionalProperties": False}, "5"),
    ({"$ref": "#/definitions/a/full", "definitions": {"a": {"full": {
        "type": "object", "properties": {"v": {"type": "integer"}}, "required": ["v"]}}}}, '{"v": 1}'),
])
def test_satisfiable_schemas_stay_satisfiable_under_auto(ctx: BackendContext, schema: dict, valid: str) -> None:
    m = create_backend("auto", ctx).compile(constraint_from_fields(json_schema=schema)).new_matcher()
    assert m.accept_string(valid) and m.can_terminate()


def test_an_allof_of_objects_is_closed_as_a_whole(ctx: BackendContext) -> None:
    """OpenAPI's base + extension (audit 12: each branch closed on its own excluded the other's properties,
    a 400 for a satisfiable schema): every branch's properties are allowed together, no others."""
    base = {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}
    schema = {"$defs": {"Base": base},
              "allOf": [{"$ref": "#/$defs/Base"}, {"type": "object", "properties": {
                  "name": {"type": "string"}, "tag": {"type": "object", "properties": {"k": {"type": "string"}}}},
                  "required": ["name"]}]}
    compiled = create_backend("auto", ctx).compile(constraint_from_fields(json_schema=schema))
    m = compiled.new_matcher()
    assert m.accept_string('{"id": 1, "name": "x", "tag": {"k": "v"}}') and m.can_terminate()
    for extra in ('{"id": 1, "name": "x", "zz": 1', '{"id": 1, "name": "x", "tag": {"k": "v", "q": 1'):
        assert not compiled.new_matcher().accept_string(extra), extra  # strict mode stands, nested objects too


def test_allof_compositions_below_the_root_and_ref_wrappers(ctx: BackendContext) -> None:
    """Audit 14: the composition in a property (its $ref looked up in the wrong place), an allOf of an allOf
    (three-level inheritance) were still 400s; pydantic v1's one-branch `allOf: [{$ref}]` field was opened."""
    base = {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}
    ext = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}

    def accepts(schema: dict, text: str, backend: str = "auto") -> bool:
        m = create_backend(backend, ctx).compile(constraint_from_fields(json_schema=schema)).new_matcher()
        return m.accept_string(text) and m.can_terminate()

    nested = {"$defs": {"Base": base}, "type": "object", "required": ["pet"],
              "properties": {"pet": {"allOf": [{"$ref": "#/$defs/Base"}, ext]}}}
    assert accepts(nested, '{"pet": {"id": 1, "name": "x"}}')
    three = {"$defs": {"Root": base, "Mid": {"allOf": [{"$ref": "#/$defs/Root"}, ext]}},
             "allOf": [{"$ref": "#/$defs/Mid"}, {"type": "object", "properties": {"extra": {"type": "boolean"}}}]}
    assert accepts(three, '{"id": 1, "name": "x"}')
    wrapped = {"definitions": {"Pet": base}, "type": "object", "required": ["pet"],
               "properties": {"pet": {"allOf": [{"$ref": "#/definitions/Pet"}], "description": "the pet"}}}
    assert accepts(wrapped, '{"pet": {"id": 1}}', "llguidance")
    assert not accepts(wrapped, '{"pet": {"id": 1, "zzz": 2}}', "llguidance")


def test_keywords_in_grouped_definitions_are_seen(backends: dict[str, GrammarBackend]) -> None:
    """`definitions/a/full` (a group of definitions a $ref points into) is checked like any schema."""
    schema = {"$ref": "#/definitions/a/full", "definitions": {"a": {"full": {
        "type": "object", "required": ["v"], "properties": {"v": {"type": "integer"}},
        "oneOf": [{"properties": {"k": {"const": 1}}}]}}}}
    with pytest.raises(ConstraintError, match="#/definitions/a/full"):
        backends["xgrammar"].compile(constraint_from_fields(json_schema=schema))


@pytest.mark.parametrize("schema, ok, bad", [
    ({"type": "number", "multipleOf": 0.5}, "1.5", "1.25"),  # xgrammar drops it for a number
    ({"type": "integer", "multipleOf": 7, "maximum": 100}, "98", "97"),  # and beside a range
    ({"type": "integer", "multipleOf": 7}, "21", "22"),  # and leaves it no bound on the digits (audit 29)
])
def test_multiple_of_is_refused_for_xgrammar(backends: dict[str, GrammarBackend], ctx: BackendContext,
                                             schema: dict, ok: str, bad: str) -> None:
    """auto takes llguidance, which enforces it."""
    with pytest.raises(ConstraintError, match="'multipleOf'"):
        backends["xgrammar"].compile(constraint_from_fields(json_schema=schema))
    compiled = create_backend("auto", ctx).compile(constraint_from_fields(json_schema=schema))
    for text, holds in ((ok, True), (bad, False)):
        m = compiled.new_matcher()
        assert (m.accept_string(text) and m.can_terminate()) is holds, text


def test_a_multiple_of_integer_ends_within_the_number_digits(ctx: BackendContext) -> None:
    """Audit 29: at the 17th digit a number that is no multiple yet must go on; the digit guard then leaves
    no token and the grammar wins (`{"type": "integer", "multipleOf": 7}` ran to 38 digits, satisfied).
    llguidance gets the integer's range from the digits, and ends it within them."""
    compiled = create_backend("auto", ctx).compile(constraint_from_fields(
        json_schema={"type": "integer", "multipleOf": 7}))
    m = compiled.new_matcher()
    assert m.accept_string("9" * 16)
    assert not m.accept_string("9")  # 99999999999999999 is no multiple of 7, and an 18th digit is past the range
    assert m.accept_string("5") and m.can_terminate()  # 99999999999999995 = 7 * 14285714285714285


@pytest.mark.parametrize("beside", [{"format": "email"}, {"enum": ["zz@b.co", "ab@b.co"]}])
def test_a_pattern_beside_a_format_or_enum_is_refused_for_xgrammar(backends: dict[str, GrammarBackend],
                                                                  ctx: BackendContext, beside: dict) -> None:
    """Audit 26: xgrammar kept the format (or the values) and dropped the pattern: "zz@b.co" for ^a."""
    schema = {"type": "object", "properties": {"x": {"type": "string", "pattern": "^a", **beside}}, "required": ["x"]}
    with pytest.raises(ConstraintError, match=f"'pattern' beside '{next(iter(beside))}'"):
        backends["xgrammar"].compile(constraint_from_fields(json_schema=schema))
    compiled = create_backend("auto", ctx).compile(constraint_from_fields(json_schema=schema))
    for value, ok in (("ab@b.co", True), ("zz@b.co", False)):
        m = compiled.new_matcher()
        assert (m.accept_string(f'{{"x": "{value}"}}') and m.can_terminate()) is ok, value


def test_an_enum_against_its_type_is_refused_for_xgrammar(backends: dict[str, GrammarBackend]) -> None:
    with pytest.raises(ConstraintError, match="'type' beside 'enum'"):
        backends["xgrammar"].compile(constraint_from_fields(
            json_schema={"type": "object", "properties": {"m": {"type": "object", "enum": ["all"]}}}))


def test_siblings_xgrammar_may_drop_are_kept(backends: dict[str, GrammarBackend]) -> None:
    """`type` that every branch already has, and additionalProperties in strict mode, lose nothing."""
    schema = {"type": "object", "additionalProperties": False,
              "anyOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                        {"type": "object", "properties": {"b": {"type": "string"}}, "required": ["b"]}]}
    backends["xgrammar"].compile(constraint_from_fields(json_schema=schema))


def test_a_cut_character_is_dropped_from_the_end_of_forced_bytes() -> None:
    from thinkform.structured.backends.text import without_cut_end

    tokyo = "東京".encode()
    assert without_cut_end(tokyo) == tokyo and without_cut_end(tokyo[:-1]) == tokyo[:3]
    assert without_cut_end(tokyo[1:3]) == tokyo[1:3]  # the end of a character begun earlier: kept
    assert without_cut_end(b"ab\xf0\x9f\x98") == b"ab" and without_cut_end("a😀".encode()) == "a😀".encode()
    assert without_cut_end(b"") == b""


@pytest.mark.parametrize("backend", ["xgrammar", "llguidance", "outlines"])
@pytest.mark.parametrize("kind,source,field", [
    ("json_schema", {"type": "object", "properties": {"a": {"type": "nonsense"}}}, "json_schema"),
    ("regex", "(abc", "regex"),
    ("ebnf", 'root ::= "a" missing_rule', "ebnf"),
])
def test_invalid_constraints_raise_the_library_message(backends: dict[str, GrammarBackend], backend: str,
                                                       kind: str, source: Any, field: str) -> None:
    constraint = constraint_from_fields(**{kind: source})
    with pytest.raises(ConstraintError) as e:
        backends[backend].compile(constraint)
    assert e.value.field == field
    message = str(e.value)
    if kind in SUPPORTED[backend]:
        assert message.startswith(f"invalid {field}: ") and len(message) > len(f"invalid {field}: ") + 5
        assert any(word in message.lower() for word in ("nonsense", "unclosed", "missing_rule", "undefined",
                                                        "unknown", "invalid", "type"))
    else:
        assert f"'{backend}' does not support {kind}" in message


@pytest.mark.parametrize("name,keyword", [("pydantic_defs", "maximum"), ("handwritten", "minimum")])
def test_outlines_refuses_keywords_it_would_silently_drop(backends: dict[str, GrammarBackend],
                                                          name: str, keyword: str) -> None:
    with pytest.raises(ConstraintError, match=f"'outlines' cannot enforce .*{keyword}") as e:
        backends["outlines"].compile(make_constraint("json_schema", name))
    assert e.value.field == "json_schema"
    tricky = {"type": "string", "pattern": "^(ab)+$", "maxLength": 3}
    with pytest.raises(ConstraintError, match="pattern with minLength/maxLength"):
        backends["outlines"].compile(constraint_from_fields(json_schema=tricky))
    bounded = {"type": "string", "pattern": "^a+$", "maxLength": 3}  # one repeated atom: bounded instead
    compiled = backends["outlines"].compile(constraint_from_fields(json_schema=bounded))
    assert compiled.new_matcher().accept_string('"aaa"') and not compiled.new_matcher().accept_string('"aaaa"')


def test_llguidance_refuses_rich_structural_tag_formats_clearly(backends: dict[str, GrammarBackend]) -> None:
    tag = {"type": "structural_tag", "format": {"type": "sequence", "elements": [
        {"type": "const_string", "value": "A"}, {"type": "regex", "pattern": "[0-9]+"}]}}
    constraint = constraint_from_fields(structural_tag=tag)
    with pytest.raises(ConstraintError, match="llguidance.*structural_tag.*xgrammar"):
        backends["llguidance"].compile(constraint)
    m = backends["xgrammar"].compile(constraint).new_matcher()  # xgrammar compiles the full format
    assert m.accept_string("A12") and m.can_terminate()


def test_xgrammar_structural_tag_with_bad_schema_names_the_field(backends: dict[str, GrammarBackend]) -> None:
    tag = {**LEGACY_TAG, "structures": [{"begin": "<f>", "schema": {"type": "nonsense"}, "end": "</f>"}],
           "triggers": ["<f"]}
    with pytest.raises(ConstraintError) as e:
        backends["xgrammar"].compile(constraint_from_fields(structural_tag=tag))
    assert e.value.field == "structural_tag" and "nonsense" in str(e.value)


def test_none_backend_refuses_every_constraint(backends: dict[str, GrammarBackend]) -> None:
    for kind, source in (("json_schema", {"type": "object"}), ("regex", "a"), ("ebnf", 'root ::= "a"')):
        with pytest.raises(ConstraintError, match="grammar backend is none") as e:
            backends["none"].compile(constraint_from_fields(**{kind: source}))
        assert e.value.field == kind


def test_unknown_backend_lists_the_known_ones(ctx: BackendContext) -> None:
    with pytest.raises(ValueError, match="llguidance, none, outlines, xgrammar"):
        create_backend("pytorch-magic", ctx)


def test_a_new_backend_registers_itself(ctx: BackendContext) -> None:
    class EchoCompiled(CompiledGrammar):
        def new_matcher(self) -> GrammarMatcher:
            raise NotImplementedError

    @register_backend
    class EchoBackend(GrammarBackend):
        name = "echo-test"
        kinds = frozenset({"regex"})

        def compile(self, constraint: Constraint) -> CompiledGrammar:
            self.check_kind(constraint)
            return EchoCompiled()

    try:
        backend = create_backend("echo-test", ctx)
        assert isinstance(backend.compile(constraint_from_fields(regex="a")), EchoCompiled)
        with pytest.raises(ConstraintError, match="'echo-test' does not support ebnf"):
            backend.compile(constraint_from_fields(ebnf='root ::= "a"'))
    finally:
        del BACKENDS["echo-test"]


@pytest.mark.parametrize("backend", ["xgrammar", "llguidance", "outlines"])
def test_flexible_whitespace_is_bounded(tokenizer: Any, backend: str) -> None:
    options = GrammarOptions(any_whitespace=True, max_whitespace=2)
    ctx = BackendContext(tokenizer, len(tokenizer), (tokenizer.eos_token_id,), options)
    compiled = create_backend(backend, ctx).compile(make_constraint("json_schema", "seed"))
    assert compiled.new_matcher().accept_string('{ "name" :\n"Paris",  "population":1}')
    assert not compiled.new_matcher().accept_string('{"name":   "Paris"')


def test_auto_backend_falls_back_to_llguidance_where_xgrammar_refuses():
    from thinkform.structured.backends import BackendContext, create_backend
    from thinkform.structured.spec import GrammarOptions
    from thinkform.testing.tokenizers import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    ctx = BackendContext(tok, len(tok) + 8, (tok.eos_token_id,), GrammarOptions())
    schema = {"type": "object", "properties": {"a": {"type": "string", "pattern": "^\\p{L}+$"}}, "required": ["a"]}
    constraint = constraint_from_fields(json_schema=schema)
    with pytest.raises(ConstraintError, match="Unicode property"):
        create_backend("xgrammar", ctx).compile(constraint)
    matcher = create_backend("auto", ctx).compile(constraint).new_matcher()
    for tid in tok.encode('{"a": "ab"}'):
        assert matcher.accept_token(tid)
    assert matcher.can_terminate()
    with pytest.raises(ConstraintError, match="regex") as refused:  # both refuse: both messages, naming the field
        create_backend("auto", ctx).compile(constraint_from_fields(regex="(unclosed"))
    assert str(refused.value).startswith("invalid regex: ") and "(llguidance: invalid regex: " not in str(refused.value)


@pytest.mark.parametrize("backend", ["xgrammar", "llguidance", "outlines", "auto"])
def test_a_steps_rows_filled_at_once_equal_rows_filled_one_by_one(ctx: BackendContext, tokenizer: Any,
                                                                  backend: str) -> None:
    be = create_backend(backend, ctx)
    compiled = [be.compile(make_constraint(kind, name)) for b, kind, name in supported_cases()
                if b == (backend if backend != "auto" else "xgrammar")][:4]
    if backend == "auto":  # one row from the llguidance fallback (xgrammar refuses a Unicode property)
        schema = {"type": "object", "properties": {"a": {"type": "string", "pattern": "^\\p{L}+$"}}}
        compiled[1] = be.compile(constraint_from_fields(json_schema=schema))
        assert type(compiled[1]).__name__ == "LLGuidanceCompiled"
    matchers = [c.new_matcher() for c in compiled]
    assert len(matchers) == 4
    for i, m in enumerate(matchers):  # different states: advance each by a few allowed tokens
        for step in range(i):
            ok = allowed_ids(m, ctx.vocab_size)
            assert m.accept_token(ok[step % len(ok)])
    rows = [3, 0, 2, 1][: len(matchers)]
    together = xgr.allocate_token_bitmask(4, ctx.vocab_size)
    be.fill_bitmasks(together, list(zip(rows, matchers)))
    for m, r in zip(matchers, rows):
        alone = xgr.allocate_token_bitmask(1, ctx.vocab_size)
        m.fill_bitmask(alone, 0)
        assert torch.equal(together[r], alone[0])


def test_the_answer_check_reads_multiple_of_in_decimal() -> None:
    """jsonschema divides floats: 274.9 / 0.01 is 27489.999999999996, and a valid answer was reported as
    breaking its schema (constraint_satisfied false) wherever the answer check ran."""
    from thinkform.structured.schema_support import AnswerCheck

    check = AnswerCheck.for_schema({"type": "object", "properties": {"price": {"type": "number", "multipleOf": 0.01}},
                                    "not": {"required": ["z"]}})
    assert check is not None and check.keywords == ["not"]
    for text, ok in (('{"price": 274.9}', True), ('{"price": 8503358.02}', True), ('{"price": 0.005}', False),
                     ('{"price": 1e300}', True), ('{"z": 1}', False)):
        assert check(text.encode()) is ok, text


@pytest.mark.parametrize("backend", ["xgrammar", "llguidance"])
def test_a_property_named_twice_is_found_by_the_answer_check(backends: dict[str, GrammarBackend],
                                                             backend: str) -> None:
    """Both libraries admit `{"b": 1, "b": 2}` in an object open to other properties; a parser keeps one
    `b`, so `minProperties: 2` counted a property that is not there (audit 28). The grammar cannot count
    names; the answer check reads them (constraint_satisfied false), for a schema and for json_object."""
    schema = {"type": "object", "additionalProperties": {"type": "integer"}, "minProperties": 2}
    for fields in ({"json_schema": schema}, {"json_object": True}):
        compiled = backends[backend].compile(constraint_from_fields(**fields))
        m = compiled.new_matcher()
        assert m.accept_string('{"b": 1, "b": 2}') and m.can_terminate()
        assert compiled.answer_check(b'{"b": 1, "b": 2}') is False
        assert compiled.answer_check(b'{"a": 1, "b": 2}') is True


REGEX_MEANINGS = [  # (regex, answers ECMA-262 admits, answers it does not)
    ("a.c", ["abc", "aéc"], ["a\nc", "a\rc", "a\u2028c"]),
    (r"a\sb", ["a b", "a\u2003b", "a\u3000b", "a\tb"], ["a\x1cb", "axb"]),
    (r"[\p{L}]+", ["é", "ab"], ["{", "1"]),
]


@pytest.mark.parametrize("regex, valid, invalid", REGEX_MEANINGS)
def test_a_regex_means_what_ecma_says_under_auto(ctx: BackendContext, regex: str, valid: list[str],
                                                 invalid: list[str]) -> None:
    """Audit 31: xgrammar's `.` took a newline (`a.c` admitted `a\\nc`: 49 answers over JSONSchemaBench's
    patterns as regexes), its `\\s` missed U+2000-U+200A and U+3000, and it read `[\\p{L}]` as the letters
    `p{L}`. Character sets now reach it as positive classes in ECMA's meaning; a Unicode property goes to
    llguidance."""
    for backend in ("auto", "llguidance"):  # (llguidance's `.` took `\r` and U+2028)
        compiled = create_backend(backend, ctx).compile(constraint_from_fields(regex=regex))
        for text, ok in [(v, True) for v in valid] + [(v, False) for v in invalid]:
            m = compiled.new_matcher()
            assert (m.accept_string(text) and m.can_terminate()) is ok, (backend, regex, text)


def test_a_lookaround_regex_python_cannot_read_keeps_the_grammars_verdict(ctx: BackendContext) -> None:
    """Audit 31: the answer check of `(?<y>[0-9]{4})\\b` (a named group Python's re cannot read) raised once
    the answer was done, failing the request."""
    compiled = create_backend("auto", ctx).compile(constraint_from_fields(regex=r"(?<y>[0-9]{4})\b"))
    assert compiled.answer_check(b"2024") is True


@pytest.mark.parametrize("regex", ["a$b?", "a(^b)?c?"])
def test_an_anchor_inside_a_regex_is_refused_for_xgrammar(backends: dict[str, GrammarBackend], regex: str) -> None:
    """Audit 31: xgrammar ignores a `^` or `$` inside a regex (`a$b?` admitted `ab`, which ECMA's full match
    refuses); ends of top-level alternatives stay fine (`a|^b$`)."""
    with pytest.raises(ConstraintError, match="regex: xgrammar ignores"):
        backends["xgrammar"].compile(constraint_from_fields(regex=regex))
    m = backends["xgrammar"].compile(constraint_from_fields(regex="a|^b$")).new_matcher()
    assert m.accept_string("b") and m.can_terminate()


@pytest.mark.parametrize("backend", ["xgrammar", "auto"])
def test_a_length_bounded_string_takes_escapes_each_counted_as_one_character(backends: dict[str, GrammarBackend],
                                                                              ctx: BackendContext,
                                                                              backend: str) -> None:
    r"""A string with maxLength (pydantic's Field(max_length=...)) took no escape at all under xgrammar: no quote,
    backslash or newline (`"He said ` was all a model could write of `He said "hi"`). Each escape counts as the
    one character it decodes to, as JSON Schema counts the decoded string."""
    def accepts(sub: dict[str, Any], value: str) -> bool:
        schema = {"type": "object", "properties": {"s": sub}, "required": ["s"]}
        compiled = (backends[backend] if backend in backends else create_backend(backend, ctx)).compile(
            constraint_from_fields(json_schema=schema))
        m = compiled.new_matcher()
        return m.accept_string('{"s": ' + value + "}") and m.can_terminate()

    quote = {"type": "string", "maxLength": 80}
    assert accepts(quote, r'"He said \"hi\"\nthen left \\ \/ \u00e9"')
    assert accepts({"type": "string", "maxLength": 20}, r'"Z\u00fcrich"')
    assert accepts({"type": "string", "maxLength": 1}, r'"\ud83d\ude00"')  # a surrogate pair: one character
    assert not accepts({"type": "string", "maxLength": 3}, r'"a\nbc"')  # four characters
    assert accepts({"type": "string", "maxLength": 3}, r'"a\nb"')
    assert accepts({"type": "string", "minLength": 2}, r'"\n\t"')
    assert not accepts({"type": "string", "minLength": 2}, r'"\n"')
    assert not accepts({"type": "string", "minLength": 2, "maxLength": 4}, r'"\n\n\n\n\n"')
    for invalid in ('"a\tb"', r'"\q"', r'"\udfee"'):  # a raw tab, no escape, a lone surrogate
        assert not accepts(quote, invalid), invalid


def test_other_property_names_take_escapes_once_they_differ_from_every_listed_name(
        backends: dict[str, GrammarBackend]) -> None:
    r"""`{"id": 1, "caf\u00e9": 2}` was refused at `\u` (extra names took no `\u` or `\/` escape anywhere); once a
    name has a character no listed name has there, any escape follows. Where it may still spell a listed name,
    `\u` stays refused (`"\u0069d"` is `id`)."""
    schema = {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"],
              "additionalProperties": {"type": "integer"}}
    compiled = backends["xgrammar"].compile(constraint_from_fields(json_schema=schema))
    for text, ok in ((r'{"id": 1, "caf\u00e9": 2}', True), (r'{"id": 1, "a\/b": 2}', True),
                     (r'{"id": 1, "i\u0064x": 2}', False), (r'{"id": 1, "\u0069d": 2}', False)):
        m = compiled.new_matcher()
        assert (m.accept_string(text) and m.can_terminate()) is ok, text
