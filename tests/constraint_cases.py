"""Constraints used by the engine-level tests, each with an independent validity check."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable

import jsonschema
from pydantic import BaseModel, Field

from thinkform.testing.seed import SEED_EBNF, SEED_EBNF_LANGUAGE, SEED_SCHEMA, SEED_TAG, CapitalInfo


class Landmark(BaseModel):
    title: str = Field(..., min_length=1, max_length=12)
    kind: str = Field(..., pattern=r"^(museum|tower|park)$")


class City(BaseModel):
    name: str = Field(..., max_length=10)
    rank: int = Field(..., ge=1, le=100)
    score: float = Field(..., ge=0, le=10)
    tags: list[str] = Field(..., min_length=1, max_length=3)
    landmark: Landmark | None
    mode: str = Field(..., json_schema_extra={"enum": ["a", "b"]})


@dataclass(frozen=True)
class Case:
    name: str
    kind: str
    params: dict[str, Any]
    check: Callable[[str], None]


def _json(schema: dict) -> Callable[[str], None]:
    def check(text: str) -> None:
        jsonschema.validate(json.loads(text), schema)
        _no_runaway(text)
    return check


def _no_runaway(text: str) -> None:
    for number in re.findall(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?", re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)):
        mantissa = re.match(r"-?(\d+)(?:\.(\d+))?", number)
        digits = (mantissa.group(1) + (mantissa.group(2) or "")).lstrip("0")
        assert len(digits) <= 17, f"runaway number {number!r}"


def _regex(pattern: str) -> Callable[[str], None]:
    def check(text: str) -> None:
        assert re.fullmatch(pattern, text), f"{text!r} does not match {pattern!r}"
    return check


def _tags(text: str) -> None:
    schemas = {s["begin"]: s["schema"] for s in SEED_TAG["structures"]}
    pos = 0
    while (i := text.find("<function=", pos)) >= 0:
        begin = next(b for b in schemas if text.startswith(b, i))
        end = text.index("</function>", i)
        jsonschema.validate(json.loads(text[i + len(begin):end]), schemas[begin])
        pos = end + len("</function>")


# answers that share their first bytes and part inside a character (東京 / 東北: e6 9d b1 e4… / e6 9d b1 e5…)
NON_ASCII_SCHEMA = {"type": "object", "properties": {"city": {"enum": ["Ελλάδα", "Ελβετία", "東京", "東北"]}},
                    "required": ["city"]}
CASES = [
    Case("pydantic", "json_schema", {"json_schema": json.dumps(CapitalInfo.model_json_schema())},
         _json(CapitalInfo.model_json_schema())),
    Case("nested", "json_schema", {"json_schema": City.model_json_schema()}, _json(City.model_json_schema())),
    Case("seed_schema", "json_schema", {"json_schema": json.dumps(SEED_SCHEMA)}, _json(SEED_SCHEMA)),
    Case("any_json", "json_object", {"json_schema": "$$ANY$$"}, lambda t: (json.loads(t), _no_runaway(t))),
    Case("non_ascii_enum", "json_schema", {"json_schema": NON_ASCII_SCHEMA}, _json(NON_ASCII_SCHEMA)),
    Case("regex", "regex", {"regex": "(Paris|London)"}, _regex("(Paris|London)")),
    Case("regex2", "regex", {"regex": r"[0-9]{3}-[a-z]{2,5}"}, _regex(r"[0-9]{3}-[a-z]{2,5}")),
    Case("ebnf", "ebnf", {"ebnf": SEED_EBNF}, _regex(SEED_EBNF_LANGUAGE)),
    Case("structural_tag", "structural_tag", {"structural_tag": json.dumps(SEED_TAG)}, _tags),
]
