"""pattern + minLength/maxLength: xgrammar would drop the lengths; we bound the pattern or refuse clearly."""
from __future__ import annotations

import pytest

from thinkform.structured.pattern_length import bound_pattern_lengths
from thinkform.structured.spec import ConstraintError, constraint_from_fields


@pytest.mark.parametrize("pattern, low, high, expected", [
    ("^[A-Za-z0-9_]+$", None, 8, "^[A-Za-z0-9_]{1,8}$"),
    ("[a-z]*", 2, None, "^[a-z]{2,}$"),
    ("^[0-9]{2,5}$", None, 3, "^[0-9]{2,3}$"),
    ("^[0-9]{2,}$", 3, 9, "^[0-9]{3,9}$"),
    ("^.?$", None, 1, "^.{0,1}$"),
    ("^\\.+$", 1, 2, "^\\.{1,2}$"),
    ("^[^\\]\"]+$", None, 5, "^[^\\]\"]{1,5}$"),
    ("^[a-z][a-z0-9_]+$", 3, 8, "^[a-z][a-z0-9_]{2,7}$"),
    ("^v[0-9]*x$", None, 4, "^vx$".replace("x$", "[0-9]{0,2}x$")),
    ("^ab$", 2, 2, "^ab$"),
    ("^a{3}[0-9]+$", None, 5, "^a{3}[0-9]{1,2}$"),
])
def test_one_repeated_class_becomes_one_bounded_pattern(pattern, low, high, expected) -> None:
    schema = {"type": "string", "pattern": pattern}
    schema |= {"minLength": low} if low is not None else {}
    schema |= {"maxLength": high} if high is not None else {}
    assert bound_pattern_lengths(schema) == {"type": "string", "pattern": expected}


def test_nested_schemas_are_rewritten_and_data_left_alone() -> None:
    schema = {"$defs": {"Code": {"type": "string", "pattern": "^[A-Z]+$", "maxLength": 3}},
              "type": "object", "properties": {"code": {"$ref": "#/$defs/Code"}, "n": {"type": "integer"}},
              "examples": [{"pattern": "^x+$", "maxLength": 1}]}
    out = bound_pattern_lengths(schema)
    assert out["$defs"]["Code"] == {"type": "string", "pattern": "^[A-Z]{1,3}$"}
    assert out["examples"] == schema["examples"] and out["properties"] == schema["properties"]


def test_other_patterns_next_to_a_length_are_refused_naming_the_path() -> None:
    schema = {"type": "object", "properties": {"id": {"type": "string", "pattern": "^(ab)+$", "maxLength": 6}}}
    with pytest.raises(ConstraintError, match="#/properties/id.*llguidance"):
        bound_pattern_lengths(schema)
    with pytest.raises(ConstraintError, match="admits no string"):
        bound_pattern_lengths({"type": "string", "pattern": "^[a-z]{5}$", "maxLength": 3})
    with pytest.raises(ConstraintError, match="admits no string"):
        bound_pattern_lengths({"type": "string", "pattern": "^ab[0-9]+$", "maxLength": 2})
    with pytest.raises(ConstraintError, match="cannot enforce"):  # two repetitions: which one would shrink?
        bound_pattern_lengths({"type": "string", "pattern": "^[a-z]+[0-9]+$", "maxLength": 4})


def test_xgrammar_refuses_and_auto_falls_back_to_llguidance(tiny_tokenizer) -> None:
    from thinkform.structured.backends import BackendContext, create_backend
    from thinkform.structured.spec import GrammarOptions

    ctx = BackendContext(tiny_tokenizer, len(tiny_tokenizer), (tiny_tokenizer.eos_token_id,), GrammarOptions())
    constraint = constraint_from_fields(json_schema={"type": "string", "pattern": "^(ab)+$", "maxLength": 4})
    with pytest.raises(ConstraintError, match="cannot enforce minLength/maxLength"):
        create_backend("xgrammar", ctx).compile(constraint)
    matcher = create_backend("auto", ctx).compile(constraint).new_matcher()
    assert matcher.accept_string('"abab"') and matcher.can_terminate()
    refused = create_backend("auto", ctx).compile(constraint).new_matcher()
    assert not refused.accept_string('"ababab"')


@pytest.mark.parametrize("backend", ["xgrammar", "outlines"])
def test_the_lengths_hold_on_backends_that_would_drop_them(tiny_tokenizer, backend) -> None:
    from thinkform.structured.backends import BackendContext, create_backend
    from thinkform.structured.spec import GrammarOptions

    ctx = BackendContext(tiny_tokenizer, len(tiny_tokenizer), (tiny_tokenizer.eos_token_id,), GrammarOptions())
    schema = {"type": "object", "properties": {"code": {"type": "string", "pattern": "^\\w+$", "minLength": 2,
                                                         "maxLength": 4}}, "required": ["code"]}
    compiled = create_backend(backend, ctx).compile(constraint_from_fields(json_schema=schema))
    colon = ": " if backend == "xgrammar" else ":"  # outlines-core's compact JSON has no spaces
    for value, ok in [("ab1", True), ("abcd", True), ("a", False), ("abcde", False)]:
        text = f'{{"code"{colon}"{value}"}}'
        matcher = compiled.new_matcher()
        accepted = matcher.accept_string(text) and matcher.can_terminate()
        assert accepted == ok, (backend, text)


def test_a_multi_character_escape_is_one_atom() -> None:
    """Audit 26: `\\x41` was read as `\\x`, `4`, `1`, so `^\\x41+$` with minLength 5 became `^\\x41{3,}$`."""
    assert bound_pattern_lengths({"pattern": r"^\x41+$", "minLength": 5})["pattern"] == r"^\x41{5,}$"
    assert bound_pattern_lengths({"pattern": r"^\u00e9+$", "maxLength": 2})["pattern"] == r"^\u00e9{1,2}$"
