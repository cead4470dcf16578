"""Constraint parsing: SGLang's request fields become one canonical Constraint, or a clear error."""
from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, Field

from thinkform.structured.spec import ConstraintError, constraint_from_fields


class CapitalInfo(BaseModel):
    name: str = Field(..., pattern=r"^\w+$", description="Name of the capital city")
    population: int = Field(..., description="Population of the capital city")


SEED_TAG = {
    "type": "structural_tag",
    "max_new_tokens": 2048,  # the seed's stray key: not part of a structural tag
    "structures": [
        {"begin": "<function=get_current_weather>", "schema": {"type": "object"}, "end": "</function>"},
        {"begin": "<function=get_current_date>", "schema": {"type": "object"}, "end": "</function>"},
    ],
    "triggers": ["<function="],
}


def test_no_constraint_is_none() -> None:
    assert constraint_from_fields() is None


def test_schema_as_dict_string_or_pydantic_model_is_the_same_constraint() -> None:
    schema = CapitalInfo.model_json_schema()
    a = constraint_from_fields(json_schema=schema)
    b = constraint_from_fields(json_schema=json.dumps(schema, indent=2))
    c = constraint_from_fields(json_schema=CapitalInfo)
    assert a == b == c
    assert a.kind == "json_schema"
    assert json.loads(a.source)["properties"]["name"]["pattern"] == "^[A-Za-z0-9_]+$"  # ECMA \\w
    assert json.loads(a.source)["properties"]["population"] == schema["properties"]["population"]


def test_schema_key_order_is_kept_because_it_is_the_answer_order() -> None:
    schema = {"type": "object", "properties": {"z": {"type": "integer"}, "a": {"type": "integer"}}}
    source = constraint_from_fields(json_schema=schema).source
    assert source.index('"z"') < source.index('"a"')


def test_any_json_and_json_object() -> None:
    assert constraint_from_fields(json_schema="$$ANY$$").kind == "json_object"
    assert constraint_from_fields(json_object=True).kind == "json_object"
    assert constraint_from_fields(json_object=True).field == "json_schema"


@pytest.mark.parametrize("fields,names", [
    ({"json_schema": {"type": "object"}, "regex": "a+"}, ("json_schema", "regex")),
    ({"ebnf": 'root ::= "a"', "structural_tag": SEED_TAG}, ("ebnf", "structural_tag")),
    ({"regex": "a", "json_object": True}, ("json_object", "regex")),
])
def test_two_constraints_are_an_error_naming_both(fields: dict, names: tuple[str, str]) -> None:
    with pytest.raises(ConstraintError) as e:
        constraint_from_fields(**fields)
    assert all(n in str(e.value) for n in names)
    assert e.value.field in names


@pytest.mark.parametrize("fields,field", [
    ({"json_schema": "{not json"}, "json_schema"),
    ({"json_schema": "[1, 2]"}, "json_schema"),
    ({"regex": ""}, "regex"),
    ({"ebnf": "   "}, "ebnf"),
    ({"structural_tag": "{"}, "structural_tag"),
    ({"structural_tag": {"type": "other", "format": {"type": "any_text"}}}, "structural_tag"),
    ({"structural_tag": {"type": "structural_tag", "structures": []}}, "structural_tag"),
    ({"structural_tag": {**SEED_TAG, "triggers": []}}, "structural_tag"),
    ({"structural_tag": {"type": "structural_tag", "structures": [{"begin": "<a>", "end": "</a>"}],
                         "triggers": ["<a"]}}, "structural_tag"),
])
def test_malformed_fields_name_the_field(fields: dict, field: str) -> None:
    with pytest.raises(ConstraintError) as e:
        constraint_from_fields(**fields)
    assert e.value.field == field
    assert field.split("_")[0] in str(e.value)


def test_legacy_structural_tag_drops_stray_keys_and_accepts_a_json_string() -> None:
    a = constraint_from_fields(structural_tag=SEED_TAG)
    b = constraint_from_fields(structural_tag=json.dumps(SEED_TAG))
    assert a == b and a.kind == "structural_tag"
    data = a.data()
    assert "max_new_tokens" not in data
    assert [s["begin"] for s in data["structures"]] == [
        "<function=get_current_weather>", "<function=get_current_date>"]
    assert data["triggers"] == ["<function="]


def test_structural_tag_schema_given_as_string_is_parsed() -> None:
    tag = {**SEED_TAG, "structures": [{**SEED_TAG["structures"][0], "schema": '{"type": "object"}'}]}
    assert constraint_from_fields(structural_tag=tag).data()["structures"][0]["schema"] == {"type": "object"}


def test_format_structural_tag_is_kept() -> None:
    tag = {"type": "structural_tag", "format": {"type": "const_string", "value": "hi"}, "extra": 1}
    assert constraint_from_fields(structural_tag=tag).data() == {
        "type": "structural_tag", "format": {"type": "const_string", "value": "hi"}}


def test_regex_and_ebnf_keep_their_text() -> None:
    c = constraint_from_fields(regex="(Paris|London)")
    assert (c.kind, c.source, c.field) == ("regex", "(Paris|London)", "regex")
    assert constraint_from_fields(ebnf='root ::= "a"').key == ("ebnf", 'root ::= "a"')


@pytest.mark.parametrize("backend", ["xgrammar", "llguidance", "outlines"])
def test_a_regex_digit_is_an_ascii_digit_on_every_backend(backend):
    """`\\d` as xgrammar (SGLang's default) reads it, also where `auto` falls back to llguidance, whose `\\d`
    took Unicode digits (`൦555-５߉` for `\\d{4}-\\d{2}`)."""
    from thinkform.structured.backends import BackendContext, create_backend
    from thinkform.structured.spec import GrammarOptions
    from thinkform.testing.tokenizers import build_tiny_tokenizer

    assert constraint_from_fields(regex=r"\d{2}-\w").source == "[0-9]{2}-[A-Za-z0-9_]"
    tok = build_tiny_tokenizer()
    ctx = BackendContext(tok, len(tok) + 8, (tok.eos_token_id,), GrammarOptions())
    compiled = create_backend(backend, ctx).compile(constraint_from_fields(regex=r"\d{2}"))
    for text, ok in (("12", True), ("٣٤", False)):
        m = compiled.new_matcher()
        assert (m.accept_string(text) and m.can_terminate()) is ok, (backend, text)


def test_json_schema_patterns_take_ecma_meaning():
    """\\w in a JSON Schema pattern is ASCII (ECMA-262), whatever the backend's regex engine says."""
    import json as _json

    from thinkform.structured.ecma_regex import ecma_pattern

    assert ecma_pattern(r"^\w+$") == "^[A-Za-z0-9_]+$"
    assert ecma_pattern(r"[\w.-]+\d{2}\\w") == r"[A-Za-z0-9_.-]+[0-9]{2}\\w"
    assert ecma_pattern(r"[\w-a]") == r"[A-Za-z0-9_\-a]"  # '-' beside a class escape is a character (audit 26)
    c = constraint_from_fields(json_schema={"type": "object", "properties": {
        "pattern": {"type": "string", "pattern": r"^\w+$"}}, "default": {"pattern": r"\w"}})
    data = _json.loads(c.source)
    assert data["properties"]["pattern"]["pattern"] == "^[A-Za-z0-9_]+$"
    assert data["default"] == {"pattern": r"\w"}


def test_a_json_answer_no_parser_reads_is_not_satisfied(tiny_tokenizer) -> None:
    """Audit 24: xgrammar writes a string's `pattern` text raw, so `^café-.*-fin$` let a raw `"` into the
    string: `{"x": "café-a"b-fin"}`, which no JSON parser reads, came with constraint_satisfied true (the
    schema had no keyword left to check). Every finished JSON answer is parsed now."""
    import json as _json

    from thinkform.structured.backends.base import BackendContext
    from thinkform.structured.backends.xgrammar import XGrammarBackend
    from thinkform.structured.spec import GrammarOptions, constraint_from_fields

    schema = {"type": "object", "properties": {"x": {"type": "string", "pattern": "^caf.-.*-fin$"}}, "required": ["x"]}
    ctx = BackendContext(tiny_tokenizer, len(tiny_tokenizer), (tiny_tokenizer.eos_token_id,), GrammarOptions())
    check = XGrammarBackend(ctx).compile(constraint_from_fields(json_schema=_json.dumps(schema))).answer_check
    assert check is not None
    assert check('{"x": "café-ab-fin"}'.encode()) and not check('{"x": "café-a"b-fin"}'.encode())
