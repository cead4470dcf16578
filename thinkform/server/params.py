"""OpenAI request fields -> SGLang sampling params and constraints (validated before the engine)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from thinkform.engine.requests import RequestLimits
from thinkform.server.errors import APIError
from thinkform.server.protocol import ResponseFormat, SamplingFields
from thinkform.server.tools import tool_name
from thinkform.structured.schema_support import schema_problem
from thinkform.structured.spec import ConstraintError, constraint_from_fields, lark_text

_PASSTHROUGH = ("temperature", "top_p", "top_k", "min_p", "seed", "stop_token_ids", "n", "presence_penalty",
                "frequency_penalty", "repetition_penalty", "skip_special_tokens", "ignore_eos",
                "max_reasoning_tokens", "answer_reserve_tokens", "custom_params", "no_stop_trim", "stop_regex",
                "allowed_token_ids", "bad_words")


def sampling_params(req: SamplingFields, max_new_tokens: int | None, max_n: int | None) -> dict[str, Any]:
    """The engine's sampling params for an OpenAI request (constraints excluded)."""
    refuse_hidden_states(req.return_hidden_states)
    if req.use_beam_search:
        raise APIError("use_beam_search: beam search is not supported by this server", param="use_beam_search")
    params: dict[str, Any] = {k: getattr(req, k) for k in _PASSTHROUGH if getattr(req, k) is not None}
    if max_new_tokens is not None:
        params["max_new_tokens"] = max_new_tokens
    if req.min_tokens is not None:
        params["min_new_tokens"] = req.min_tokens
    if req.include_stop_str_in_output:  # vLLM's: the matched stop string stays (not the rest of its token)
        params["include_stop_str_in_output"] = True
    for name in _BUDGET_ALIASES:
        budget = getattr(req, name)
        take_thinking_budget(params, None if budget == -1 else budget, name)  # vLLM's -1: no budget
    if req.stop is not None:
        params["stop"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
    if req.logit_bias:
        params["logit_bias"] = _logit_bias(req.logit_bias)
    if max_n is not None and req.n > max_n:
        raise APIError(f"n={req.n} is larger than this server's limit of {max_n}", param="n")
    return params


# Other names clients give the thinking budget (max_reasoning_tokens): vLLM's, SGLang's native /generate
# field, and the short form; custom_params.thinking_budget is taken by the engine itself
_BUDGET_ALIASES = ("thinking_token_budget", "max_thinking_tokens", "thinking_budget")


def take_thinking_budget(params: dict[str, Any], budget: int | None, name: str) -> None:
    """Set max_reasoning_tokens from an alias; two different budgets are a 400 naming the alias, not a
    silent choice of one."""
    if budget is None:
        return
    if params.get("max_reasoning_tokens", budget) != budget:
        raise APIError(f"{name}: {budget} conflicts with max_reasoning_tokens={params['max_reasoning_tokens']}",
                       param=name)
    params["max_reasoning_tokens"] = budget


def refuse_hidden_states(value: Any, param: str = "return_hidden_states") -> None:
    """SGLang can return hidden states; thinkform cannot, and a client that asked must not get an answer
    silently without them."""
    if value is not None and value is not False:
        raise APIError(f"{param}: returning hidden states is not supported by this server", param=param)


_EFFORTS = frozenset({"none", "minimal", "low", "medium", "high", "xhigh", "max"})


def chat_template_kwargs(kwargs: dict[str, Any] | None, effort: Any, reasoning: Any) -> dict[str, Any] | None:
    """chat_template_kwargs with the thinking switches folded in, as SGLang's protocol does: reasoning_effort
    (or reasoning.effort) "none" turns thinking off, another effort or reasoning.enabled true turns it on;
    reasoning.enabled false (OpenRouter) turns it off. Both switch names are set (deepseek-v3 reads
    `thinking`, qwen3 / glm `enable_thinking`); a value the request gave in chat_template_kwargs wins."""
    effort = _effort(effort, reasoning)
    thinking = _reasoning_enabled(reasoning)
    if effort is not None:
        thinking = effort != "none"
    if thinking is None:
        return kwargs
    out = dict(kwargs or {})
    out.setdefault("thinking", thinking)
    out.setdefault("enable_thinking", thinking)
    if effort is not None:
        out.setdefault("reasoning_effort", effort)  # templates that take it (gpt-oss, mistral) see it
    return out


def _effort(effort: Any, reasoning: Any) -> str | float | None:
    param = "reasoning_effort"
    if effort is None and isinstance(reasoning, dict):
        key = "effort" if "effort" in reasoning else "reasoning_effort"
        effort, param = reasoning.get(key), f"reasoning.{key}"
    if effort is None:
        return None
    if isinstance(effort, str) and effort in _EFFORTS:
        return effort
    if isinstance(effort, (int, float)) and not isinstance(effort, bool) and 0.0 <= effort <= 0.99:
        return float(effort)
    raise APIError(f"{param}: must be one of {', '.join(sorted(_EFFORTS))} or a number in [0, 0.99], "
                   f"got {effort!r}", param=param)


def _reasoning_enabled(reasoning: Any) -> bool | None:
    if reasoning is None:
        return None
    if not isinstance(reasoning, dict):
        raise APIError(f"reasoning: must be an object, got {reasoning!r}", param="reasoning")
    key = "enabled" if "enabled" in reasoning else "enable"
    value = reasoning.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        value = value.strip().lower() in {"1", "true", "yes", "y", "on"}
    if not isinstance(value, bool):
        raise APIError(f"reasoning.{key}: must be a boolean, got {value!r}", param=f"reasoning.{key}")
    return value


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
        if schema is False:  # the schema no value satisfies: no answer could ever be given
            raise APIError("response_format.json_schema.schema: false admits no value, so no answer can match it",
                           param="response_format.json_schema.schema")
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


@dataclass
class RequestConstraints:
    """A request's constraint fields in our names, and how the request spelled each (errors name that)."""

    fields: dict[str, Any] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # our field -> the request's
    # tools whose parameter schemas make the constraint, by their place in the request: a compile error
    # names the one whose schema is not a JSON Schema (`tool_error`)
    tools: dict[int, Mapping[str, Any]] = field(default_factory=dict)

    def spelled(self, name: str | None) -> str | None:
        return self.names.get(name, name) if name else name

    def use_tools(self, tools: Mapping[int, Mapping[str, Any]]) -> None:
        """The constraint is made of these tools' schemas (request index -> tool): errors name them."""
        self.tools = dict(tools)
        self.names.setdefault("structural_tag", "tools")
        for i in tools:
            self.names.setdefault(tool_parameters_field(i), tool_parameters_field(i))

    def tool_error(self) -> APIError | None:
        """The first tool whose parameters are not a JSON Schema, as a 400 naming it; None if none is."""
        for i, tool in self.tools.items():
            schema = tool.get("function", {}).get("parameters")
            problem = schema_problem(schema) if schema is not None else None
            if problem:
                param = self.spelled(tool_parameters_field(i))
                return APIError(f"{param}: not a valid JSON schema for function {tool_name(tool)!r}: {problem}",
                                param=param)
        return None


def tool_parameters_field(index: int) -> str:
    return f"tools.{index}.function.parameters"


def _response_format_name(fmt: ResponseFormat | None) -> str:
    return "response_format.json_schema.schema" if fmt is not None and fmt.type == "json_schema" else "response_format"


def constraint_fields(req: SamplingFields, fmt: ResponseFormat | None) -> RequestConstraints:
    """All constraint fields of a request: response_format plus SGLang's extra fields (vLLM's spellings
    taken too). Two constraints are an error naming both (validate_constraints)."""
    given: list[tuple[str, str, Any]] = [(_response_format_name(fmt), name, value)
                                         for name, value in response_format_fields(fmt).items()]
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
    return RequestConstraints(fields, named)


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
    if ours == "ebnf" and name != "ebnf" and isinstance(value, str) and lark_text(value):  # vLLM's grammar fields
        _check_lark(name, value)
        return "ebnf", value  # the Lark as written: each backend reads it its own way (Constraint.dialect)
    if ours != "choice":
        return ours, value
    if not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value):
        raise APIError(f"{name}: a non-empty list of non-empty strings is required", param=name)
    return "ebnf", "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in value)


def _check_lark(name: str, grammar: str) -> None:
    """A Lark grammar (vLLM's `guided_grammar` takes them) checked up front by xgrammar's Lark reader."""
    import xgrammar

    from thinkform.structured.backends.xgrammar import xgrammar_reason

    try:
        xgrammar.Grammar.from_lark(grammar)
    except (RuntimeError, ValueError) as e:
        raise APIError(f"{name}: read as a Lark grammar (no rule is defined with '::='), and it is not one "
                       f"xgrammar reads: {xgrammar_reason(str(e)).splitlines()[0]}", param=name) from e


def check_max_tokens(value: int | None, limits: RequestLimits, param: str) -> None:
    if value is not None:
        try:
            limits.check_max_new_tokens(value, param)
        except ValueError as e:
            raise APIError(str(e), param=param) from e


def validate_constraints(fields: dict[str, Any], limits: RequestLimits | None = None,
                         names: RequestConstraints | None = None) -> dict[str, str]:
    """Check the fields (one constraint at most, within the limits, well-formed) and return them as
    SGLang params; an error names the field as the request spelled it (`names`)."""
    try:
        (limits or RequestLimits()).check_constraints(fields)
        constraint_from_fields(**fields)
    except ConstraintError as e:
        raise spelled_error(e, names, next(iter(fields), None)) from e
    return {k: _json_text(v) for k, v in fields.items()}


def spelled_error(e: ConstraintError, names: RequestConstraints | None, default: str | None = None) -> APIError:
    """A constraint's error under the name the request gave its field (guided_json, response_format, ...)."""
    ours = e.field or default
    if ours == "structural_tag" and names is not None and names.tools:
        culprit = names.tool_error()
        if culprit is not None:
            return culprit
    param = names.spelled(ours) if names is not None else ours
    message = str(e)
    if param != ours and not message.startswith(f"{param}:"):
        message = f"{param}: {message.removeprefix(f'{ours}: ')}"
    return APIError(message, param=param)
