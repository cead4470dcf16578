"""The seed page's constraints (SGLang's "Structured Outputs For Reasoning Models"), shared by the demo,
the tests and the benchmarks."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class CapitalInfo(BaseModel):
    name: str = Field(..., pattern=r"^\w+$", description="Name of the capital city")
    population: int = Field(..., description="Population of the capital city")


SEED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string", "pattern": "^[\\w]+$"}, "population": {"type": "integer"}},
    "required": ["name", "population"],
}
SEED_EBNF = (
    "root ::= city | description\n"
    'city ::= "London" | "Paris" | "Berlin" | "Rome"\n'
    'description ::= city " is " status\n'
    'status ::= "the capital of " country\n'
    'country ::= "England" | "France" | "Germany" | "Italy"'
)
SEED_EBNF_LANGUAGE = r"(London|Paris|Berlin|Rome)( is the capital of (England|France|Germany|Italy))?"
SEED_REGEX = "(Paris|London)"
WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 12}, "state": {"type": "string", "maxLength": 4},
                   "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "state", "unit"],
}
DATE_SCHEMA: dict[str, Any] = {"type": "object", "properties": {"timezone": {"type": "string", "maxLength": 16}},
                               "required": ["timezone"]}
SEED_TAG: dict[str, Any] = {"type": "structural_tag", "triggers": ["<function="], "structures": [
    {"begin": "<function=get_current_weather>", "schema": WEATHER_SCHEMA, "end": "</function>"},
    {"begin": "<function=get_current_date>", "schema": DATE_SCHEMA, "end": "</function>"}]}
