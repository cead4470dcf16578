"""The seed page's prompts and constraints (SGLang's "Structured Outputs For Reasoning Models"), shared by
the benchmarks in this folder, with a checker for each constraint kind."""
from __future__ import annotations

import json
import re
from typing import Any

from thinkform.testing.seed import SEED_EBNF, SEED_REGEX, SEED_SCHEMA, CapitalInfo
from thinkform.testing.seed import SEED_EBNF_LANGUAGE as EBNF_LANGUAGE

CAPITAL_INFO_SCHEMA: dict[str, Any] = CapitalInfo.model_json_schema()
SEED_JSON_SCHEMA = SEED_SCHEMA
SEED_EBNF_LANGUAGE = re.compile(EBNF_LANGUAGE)

CAPITAL_PROMPT = "Give me the information and population of the capital of France in the JSON format."
COUNTRIES = ("France", "China", "Ireland", "Germany", "Italy", "Japan", "Spain", "Egypt", "Brazil", "Canada",
             "Kenya", "Peru", "Norway", "India", "Chile", "Greece")


def capital_prompts(n: int) -> list[str]:
    """n distinct user messages in the seed's wording, cycling through countries."""
    out = []
    for i in range(n):
        text = f"Give me the information and population of the capital of {COUNTRIES[i % len(COUNTRIES)]} in the JSON format."
        out.append(text if i < len(COUNTRIES) else f"{text} (Question {i + 1}.)")
    return out


def json_valid(text: str, schema: dict[str, Any]) -> bool:
    import jsonschema

    try:
        jsonschema.validate(json.loads(text), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def regex_valid(text: str, pattern: str) -> bool:
    return re.fullmatch(pattern, text) is not None


def ebnf_valid(text: str) -> bool:
    return SEED_EBNF_LANGUAGE.fullmatch(text) is not None
