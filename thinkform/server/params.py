"""OpenAI request fields -> SGLang sampling params and constraints (validated before the engine)."""
from __future__ import annotations

import json
from typing import Any

from thinkform.engine.requests import RequestLimits
from thinkform.server.errors import APIError
from thinkform.server.protocol import ResponseFormat, SamplingFields
from thinkform.structured.spec import ConstraintError, constraint_from_fields

_PASSTHROUGH = ("temperature", "top_p", "top_k", "min_p", "seed", "stop_token_ids", "n", "presence_penalty",
                "frequency_penalty", "repetition_penalty", "skip_special_tokens", "ignore_eos",
                "max_reasoning_tokens", "answer_reserve_tokens", "custom_params", "no_stop_trim")


def sampling_params(req: SamplingFields, max_new_tokens: int | None, max_n: int | None) -> dict[str, Any]:
    """The engine's sampling params for an OpenAI request (constraints excluded)."""
    params: dict[str, Any] = {k: getattr(req, k) for k in _PASSTHROUGH if getattr(req, k) is not None}
    if max_new_tokens is not None:
        params["max_new_tokens"] = max_new_tokens
    if req.min_tokens is not None:
        params["min_new_tokens"] = req.min_tokens
    if req.thinking_token_budget is not None:
        if params.get("max_reasoning_tokens", req.thinking_token_budget) != req.thinking_token_budget:
            raise APIError(f"thinking_token_budget: {req.thinking_token_budget} conflicts with max_reasoning_tokens="
                           f"{params['max_reasoning_tokens']}", param="thinking_token_budget")
        params["max_reasoning_tokens"] = req.thinking_token_budget
    if req.stop is not None:
        params["stop"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
    if req.logit_bias:
        params["logit_bias"] = _logit_bias(req.logit_bias)
    if max_n is not None and req.n > max_n:
        raise APIError(f"n={req.n} is larger than this server's limit of {max_n}", param="n")
    return params


def _logit_bias(bias: dict[str, float]) -> dict[int, float]:
    out = {}
    for key, value in bias.items():
        try:
            out[int(key)] = float(value)
        except ValueError:
            raise APIError(f"logit_bias keys must be token ids, got {key!r}", param="logit_bias") from None
    return out


def _json_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def response_format_fields(fmt: ResponseFormat | None) -> dict[str, Any]:
    """response_format -> constraint fields (json_schema / structural_tag), as dicts or text."""
    if fmt is None or fmt.type == "text":
        return {}
    if fmt.type == "json_object":
        return {"json_schema": {"type": "object"}}
    if fmt.type == "json_schema":
        if fmt.json_schema is None or fmt.json_schema.schema_ is None:
            raise APIError("response_format.json_schema.schema is required for type json_schema",
                           param="response_format.json_schema.schema")
        schema = fmt.json_schema.schema_
        return {"json_schema": schema if isinstance(schema, dict) else {}}
    if fmt.format is not None:
        return {"structural_tag": {"type": "structural_tag", "format": fmt.format}}
    if fmt.structures:
        return {"structural_tag": {"type": "structural_tag", "structures": fmt.structures,
                                   "triggers": fmt.triggers or []}}
    raise APIError("response_format of type structural_tag needs 'format' or 'structures' + 'triggers'",
                   param="response_format")


# vLLM's constraint fields -> ours: `guided_*` (extra_body) and the `structured_outputs` object of vLLM ≥ 0.10
_VLLM_FIELDS = {"guided_json": "json_schema", "guided_regex": "regex", "guided_grammar": "ebnf",
                "guided_choice": "choice"}
_VLLM_STRUCTURED_OUTPUTS = {"json": "json_schema", "regex": "regex", "grammar": "ebnf", "choice": "choice",
                            "structural_tag": "structural_tag", "json_object": "json_object"}


def constraint_fields(req: SamplingFields, fmt: ResponseFormat | None) -> dict[str, Any]:
    """All constraint fields of a request: response_format plus SGLang's extra fields (vLLM's spellings
    taken too). Two constraints are an error naming both (validate_constraints)."""
    given: list[tuple[str, str, Any]] = [(name, name, value) for name, value in response_format_fields(fmt).items()]
    given += [(name, name, getattr(req, name)) for name in ("json_schema", "regex", "ebnf", "structural_tag")]
    given += [(name, ours, getattr(req, name)) for name, ours in _VLLM_FIELDS.items()]
    given += _structured_outputs(req.structured_outputs)
    fields: dict[str, Any] = {}
    named: dict[str, str] = {}
    for name, ours, value in given:
        if value is None or value is False:
            continue
        ours, value = _vllm_value(name, ours, value)
        if ours in fields:
            raise APIError(f"{name}: {named[ours]} already gives a {ours} constraint", param=name)
        fields[ours], named[ours] = value, name
    return fields


def _structured_outputs(value: dict[str, Any] | None) -> list[tuple[str, str, Any]]:
    if value is None:
        return []
    unknown = sorted(set(value) - set(_VLLM_STRUCTURED_OUTPUTS) - {"backend", "disable_any_whitespace",
                                                                     "disable_additional_properties", "whitespace_pattern"})
    if unknown:
        raise APIError(f"structured_outputs: unknown key {unknown[0]!r} (known: "
                       f"{', '.join(sorted(_VLLM_STRUCTURED_OUTPUTS))})", param=f"structured_outputs.{unknown[0]}")
    return [(f"structured_outputs.{k}", ours, value.get(k)) for k, ours in _VLLM_STRUCTURED_OUTPUTS.items()]


def _vllm_value(name: str, ours: str, value: Any) -> tuple[str, Any]:
    """A choice is an EBNF of its alternatives (the answer is one of them, verbatim); json_object any object."""
    if ours == "json_object":
        return "json_schema", {"type": "object"}
    if ours != "choice":
        return ours, value
    if not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value):
        raise APIError(f"{name}: a non-empty list of non-empty strings is required", param=name)
    return "ebnf", "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in value)


def check_max_tokens(value: int | None, limits: RequestLimits, param: str) -> None:
    if value is not None:
        try:
            limits.check_max_new_tokens(value, param)
        except ValueError as e:
            raise APIError(str(e), param=param) from e


def validate_constraints(fields: dict[str, Any], limits: RequestLimits | None = None) -> dict[str, str]:
    """Check the fields (one constraint at most, within the limits, well-formed) and return them as
    SGLang params."""
    try:
        (limits or RequestLimits()).check_constraints(fields)
        constraint_from_fields(**fields)
    except ConstraintError as e:
        raise APIError(str(e), param=e.field or next(iter(fields), None)) from e
    return {k: _json_text(v) for k, v in fields.items()}
