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
                "max_reasoning_tokens", "answer_reserve_tokens")


def sampling_params(req: SamplingFields, max_new_tokens: int | None, max_n: int | None) -> dict[str, Any]:
    """The engine's sampling params for an OpenAI request (constraints excluded)."""
    params: dict[str, Any] = {k: getattr(req, k) for k in _PASSTHROUGH if getattr(req, k) is not None}
    if max_new_tokens is not None:
        params["max_new_tokens"] = max_new_tokens
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


def constraint_fields(req: SamplingFields, fmt: ResponseFormat | None) -> dict[str, Any]:
    """All constraint fields of a request: response_format plus SGLang's extra fields."""
    fields = response_format_fields(fmt)
    for name in ("json_schema", "regex", "ebnf", "structural_tag"):
        value = getattr(req, name)
        if value is None:
            continue
        if name in fields:
            raise APIError(f"{name} given both in response_format and as a field", param=name)
        fields[name] = value
    return fields


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
