"""String formats (date, date-time, time, ipv4): every value the grammar admits is one Python, pydantic and
jsonschema read. The grammar libraries' own formats took April 31, Feb 29 of any year, year 0000, second 60 and
(xgrammar's ipv4) leading zeros, so a pydantic model with a `date` field failed on an answer marked valid."""
from __future__ import annotations

import datetime
import ipaddress
import json
import re
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from thinkform.structured.backends import BackendContext, create_backend
from thinkform.structured.spec import GrammarOptions, constraint_from_fields
from thinkform.testing.tokenizers import build_tiny_tokenizer

BACKENDS = ["xgrammar", "llguidance", "outlines", "auto"]
CHECKER = jsonschema.Draft202012Validator.FORMAT_CHECKER  # (date-time and time need rfc3339-validator)
PYTHON = {"date": datetime.date.fromisoformat, "date-time": datetime.datetime.fromisoformat,
          "time": datetime.time.fromisoformat, "ipv4": ipaddress.IPv4Address}
PYDANTIC = {"date": TypeAdapter(datetime.date), "date-time": TypeAdapter(datetime.datetime),
            "time": TypeAdapter(datetime.time), "ipv4": TypeAdapter(ipaddress.IPv4Address)}


class Event(BaseModel):
    when: datetime.date
    at: datetime.datetime
    t: datetime.time


EVENT = Event.model_json_schema()  # {"type": "string", "format": "date"}, "date-time", "time"
HOST = {"type": "object", "properties": {"ip": {"type": "string", "format": "ipv4"}}, "required": ["ip"]}


def readers_take(fmt: str, value: str) -> bool:
    """Whether Python's reader, pydantic and jsonschema's format checker all take `value` as `fmt`."""
    try:
        PYTHON[fmt](value)
        PYDANTIC[fmt].validate_python(value)
    except (ValueError, ValidationError):
        return False
    return CHECKER.conforms(value, fmt)


def event_values(answer: str) -> bool:
    """Whether every value of an Event answer is read by all three readers (and pydantic reads the answer)."""
    value = json.loads(answer)
    Event.model_validate_json(answer)
    return all(readers_take(fmt, value[key]) for key, fmt in (("when", "date"), ("at", "date-time"), ("t", "time")))


@pytest.fixture(scope="module")
def ctx() -> BackendContext:
    tok = build_tiny_tokenizer()
    return BackendContext(tok, len(tok) + 45, (tok.eos_token_id,), GrammarOptions())


def admits(ctx: BackendContext, backend: str, fields: dict[str, Any], text: str) -> bool:
    matcher = create_backend(backend, ctx).compile(constraint_from_fields(**fields)).new_matcher()
    return matcher.accept_string(text) and matcher.can_terminate()


def as_json(backend: str, value: Any) -> str:
    return json.dumps(value, separators=(",", ":") if backend == "outlines" else (", ", ": "))  # outlines: no spaces


def test_a_date_pattern_takes_exactly_the_days_every_reader_takes() -> None:
    from thinkform.structured.formats import format_pattern

    pattern = re.compile(format_pattern("date"))
    for year in (0, 1, 4, 100, 200, 400, 1900, 2000, 2023, 2024, 9996, 9999):
        for month in range(14):
            for day in range(33):
                text = f"{year:04d}-{month:02d}-{day:02d}"
                assert bool(pattern.fullmatch(text)) == readers_take("date", text), text


@pytest.mark.parametrize("fmt, taken, refused", [
    ("time", ["00:00:00Z", "23:59:59+23:59", "12:30:05.5-00:00", "12:30:05.123456789+05:30"],
     ["12:00:60Z", "24:00:00Z", "12:00:00z", "12:00:00", "12:00:00+0100", "12:00:00+24:00", "12:00Z",
      "12:00:00.1234567890Z"]),  # (the readers take ten fraction digits; the pattern bounds them at nine)
    ("date-time", ["2024-02-29T23:59:59Z", "0001-01-01T00:00:00.5+23:59", "9999-12-31T23:59:59-23:59"],
     ["2023-02-29T00:00:00Z", "0000-01-01T00:00:00Z", "2024-04-31T00:00:00Z", "2024-01-01T00:09:60+00:00",
      "2024-01-01 00:00:00Z", "2024-01-01T00:00:00z", "2024-01-01t00:00:00Z"]),
    ("ipv4", ["0.0.0.0", "10.0.0.1", "255.255.255.255", "192.168.100.9"], ["01.2.3.4", "1.2.3.004", "256.1.1.1"]),
])
def test_time_date_time_and_ipv4_patterns_take_what_every_reader_takes(fmt, taken, refused) -> None:
    from thinkform.structured.formats import format_pattern

    pattern = re.compile(format_pattern(fmt))
    for text in taken:
        assert pattern.fullmatch(text) and readers_take(fmt, text), text
    for text in refused:
        assert not pattern.fullmatch(text), text


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_admits_real_dates_only(ctx, backend) -> None:
    """Audit: `9900-04-31`, `0003-02-30T…`, `0000-05-05`, `06:47:60-22:06` came back with constraint_satisfied."""
    good = {"when": "2024-02-29", "at": "2000-02-29T23:59:59.123+05:30", "t": "00:00:00Z"}
    assert admits(ctx, backend, {"json_schema": EVENT}, as_json(backend, good))
    for key, value in (("when", "2023-02-29"), ("when", "9900-04-31"), ("when", "0000-05-05"),
                       ("at", "0003-02-30T00:00:00Z"), ("at", "1900-02-29T00:00:00Z"), ("t", "06:47:60-22:06"),
                       ("t", "12:00:00z")):
        assert not admits(ctx, backend, {"json_schema": EVENT}, as_json(backend, {**good, key: value})), value
    assert admits(ctx, backend, {"json_schema": HOST}, as_json(backend, {"ip": "10.0.0.1"}))
    assert not admits(ctx, backend, {"json_schema": HOST}, as_json(backend, {"ip": "10.0.0.01"}))


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_answers_under_date_formats_read_back_in_pydantic(ctx, backend) -> None:
    from test_backends import sample

    compiled = create_backend(backend, ctx).compile(constraint_from_fields(json_schema=EVENT))
    for seed in range(8):
        answer = sample(compiled.new_matcher(), ctx.tokenizer, ctx.vocab_size, seed)
        assert event_values(answer), answer


@pytest.mark.parametrize("backend", ["xgrammar", "llguidance"])
@pytest.mark.parametrize("prefix", ['{"when": "', '{"when": "2024-02-2', '{"when": "2023-02-2',
                                    '{"when": "1999-12-31", "at": "2024-02-29T23:59:5',
                                    '{"when": "1999-12-31", "at": "2024-02-29T23:59:59.12345678'])
def test_the_budget_ending_writes_dates_every_reader_takes(backend, prefix) -> None:
    """Audit: the budget's ending wrote `{"when": "0000-01-01", "at": "0000-01-01T00:09:60+00:00", ...}`."""
    from test_closing import json_answer_ended

    assert event_values(json_answer_ended(build_tiny_tokenizer(), backend, EVENT, prefix))


@pytest.mark.parametrize("backend, style", [("xgrammar", "json"), ("llguidance", "json"), ("auto", "json"),
                                            ("xgrammar", "qwen_xml"), ("auto", "qwen_xml")])  # (XML: xgrammar's)
def test_a_tool_calls_date_argument_is_a_real_date(ctx, backend, style) -> None:
    """Tool-call arguments (a structural tag's schemas, in either form) get the same formats."""
    schema = {"type": "object", "properties": {"when": {"type": "string", "format": "date"}}, "required": ["when"]}
    content = {"type": "json_schema", "json_schema": schema, "style": style}
    tag = {"type": "structural_tag", "format": {"type": "triggered_tags", "triggers": ["<tool_call>"], "tags": [
        {"type": "tag", "begin": "<tool_call>", "end": "</tool_call>", "content": content}]}}

    def call(day: str) -> str:
        body = json.dumps({"when": day}) if style == "json" else f"<parameter=when>\n{day}\n</parameter>\n"
        return f"ok <tool_call>{body}</tool_call>"

    assert admits(ctx, backend, {"structural_tag": tag}, call("2024-02-29"))
    assert not admits(ctx, backend, {"structural_tag": tag}, call("2023-02-29"))
    if style == "json":
        legacy = {"type": "structural_tag", "triggers": ["<tool_call>"],
                  "structures": [{"begin": "<tool_call>", "schema": schema, "end": "</tool_call>"}]}
        assert admits(ctx, backend, {"structural_tag": legacy}, call("2024-02-29"))
        assert not admits(ctx, backend, {"structural_tag": legacy}, call("2024-04-31"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_lengths_beside_a_format_hold_on_every_backend(ctx, backend) -> None:
    """xgrammar dropped `maxLength` beside a format (`2024-02-29T00:00:00.5Z`, 22 characters, under 20), and
    outlines dropped the format beside a length (`2023-02-29` passed): the lengths are in the pattern now."""
    short = {"json_schema": {"type": "string", "format": "date-time", "maxLength": 20}}
    assert admits(ctx, backend, short, '"2024-02-29T00:00:00Z"')
    for text in ("2024-02-29T00:00:00.5Z", "2024-02-29T00:00:00+01:00", "2023-02-29", "10:00:00Z"):
        assert not admits(ctx, backend, short, json.dumps(text)), text
    long = {"json_schema": {"type": "string", "format": "time", "minLength": 12}}
    assert admits(ctx, backend, long, '"10:00:00.55Z"') and admits(ctx, backend, long, '"10:00:00+01:00"')
    assert not admits(ctx, backend, long, '"10:00:00.5Z"')


def test_the_rewrite_keeps_the_other_keywords_and_leaves_what_it_must() -> None:
    from thinkform.structured.formats import format_pattern, format_patterns

    schema = {"type": "object", "$defs": {"D": {"type": ["string", "null"], "format": "date", "title": "D"}},
              "properties": {
                  "a": {"$ref": "#/$defs/D"},
                  "b": {"anyOf": [{"type": "string", "format": "time", "description": "x"}, {"type": "null"}]},
                  "own": {"type": "string", "format": "date", "pattern": "^2023-"},  # both hold: left to llguidance
                  "listed": {"type": "string", "format": "date", "enum": ["2024-01-01"]},
                  "number": {"type": "integer", "format": "date"},  # the format binds strings only
                  "never": {"type": "string", "format": "date", "maxLength": 9},  # no value fits: left as it is
                  "email": {"type": "string", "format": "email"}}}
    out = format_patterns(schema)
    assert out["$defs"]["D"] == {"type": ["string", "null"], "title": "D", "pattern": format_pattern("date")}
    assert out["properties"]["b"]["anyOf"][0] == {"type": "string", "description": "x", "pattern": format_pattern("time")}
    for name in ("own", "listed", "number", "never", "email"):
        assert out["properties"][name] == schema["properties"][name], name


def test_a_random_model_on_qwens_vocabulary_answers_dates_pydantic_reads(qwen_vocab_model) -> None:
    """The audit's case end to end (the engine's guards and budget ending included): a random model with
    Qwen's vocabulary wrote `9900-04-31` and `21:00:60-04:13` with constraint_satisfied true."""
    from thinkform import Engine

    with Engine(model_path=str(qwen_vocab_model[0]), max_total_tokens=16384) as engine:
        outs = engine.generate(["go"] * 6, [{"temperature": 1.0, "seed": seed, "max_new_tokens": budget,
                                             "json_schema": json.dumps(EVENT)}
                                            for seed in (0, 1, 5) for budget in (90, 300)])
    for out in outs:
        assert out["meta_info"]["finish_reason"]["type"] == "stop", out["text"]
        assert out["meta_info"]["constraint_satisfied"] and event_values(out["text"]), out["text"]
