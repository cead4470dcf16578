"""Request models of the OpenAI-compatible and native APIs (pydantic). Unknown fields are kept
(extra="allow") so the handlers can log and ignore them instead of failing the request."""
from __future__ import annotations

import json
import logging
from typing import Any, ClassVar, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, conint, confloat, field_validator, model_validator

from thinkform.server.errors import APIError

logger = logging.getLogger(__name__)

Stop = Union[str, list[str], None]


class Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")
    # fields whose null means something of its own, not their default (completions' max_tokens: no limit)
    null_kept: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _unicode_text(cls, data: Any) -> Any:
        """A lone surrogate anywhere in the body is a 400 naming its field, before anything reads it (the
        tokenizer failed unnamed, a stream's first chunk broke the connection after its 200)."""
        where = lone_surrogate_at(data) if isinstance(data, dict) else None
        if where is not None:
            raise APIError(f"{where}: holds an unpaired UTF-16 surrogate (\\ud800-\\udfff alone is not Unicode text)",
                           param=where)
        return data

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        """JSON null for a field with a default means that default (OpenAI documents most fields nullable,
        vLLM takes `"n": null`, `"logprobs": null`, ...; clients send unset options as null)."""
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        return {k: v for k, v in data.items() if v is not None or k not in fields or k in cls.null_kept
                or fields[k].is_required() or fields[k].default is None}


def lone_surrogate_at(data: Any) -> str | None:
    """The dotted name of the first string (or key) in a request body holding an unpaired UTF-16 surrogate
    (JSON's `"\\ud800"`: no Unicode text, so no tokenizer or response can carry it), else None. Iterative: a
    body may nest deeper than Python's stack."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return path or "body"
        elif isinstance(value, dict):
            for key, item in value.items():
                name = f"{path}.{key}" if path else str(key)
                stack.append((name, key))
                stack.append((name, item))
        elif isinstance(value, list):
            stack.extend((f"{path}.{i}" if path else str(i), item) for i, item in enumerate(value))
    return None


def unknown_fields(model: BaseModel, prefix: str = "") -> list[str]:
    """Dotted names of every field the models do not know, nested models included."""
    names = [prefix + k for k in (model.model_extra or {})]
    for name in type(model).model_fields:
        value = getattr(model, name)
        children = value if isinstance(value, list) else [value]
        for i, child in enumerate(children):
            if isinstance(child, BaseModel):
                sub = f"{name}[{i}]" if isinstance(value, list) else name
                names += unknown_fields(child, f"{prefix}{sub}.")
    return names


def warn_unknown(model: BaseModel, where: str, known: frozenset[str] = frozenset()) -> None:
    """Log the fields no model knows; `known`: fields taken elsewhere (SGLang's keywords at /generate)."""
    names = [name for name in unknown_fields(model) if name not in known]
    if names:
        logger.warning("%s: ignoring unknown field(s) %s", where, ", ".join(names))


def refuse_sglang_only_fields(body: "SamplingFields") -> None:
    """SGLang's OpenAI request fields for what thinkform does not do are a 400 naming the field, never dropped
    silently (the answer would come from the base model, unprocessed): `lora_path` and `custom_logit_processor`
    unless they ask for nothing (null, or a list of nulls per prompt, as /generate takes them). (A `model`
    spelled `base:adapter` is not read as a LoRA request: any model name is taken, and Ollama-style names
    such as `qwen3:8b` are common.)"""
    for name in ("lora_path", "custom_logit_processor"):
        value = getattr(body, name, None)
        if value is not None and not (isinstance(value, list) and all(v is None for v in value)):
            what = "LoRA adapters are" if name == "lora_path" else "custom logit processors are"
            raise APIError(f"{name}: {what} not supported by thinkform (leave it out or pass null)", param=name)


# ---------- OpenAI: shared ----------

class StreamOptions(Lenient):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM / SGLang: every chunk carries the usage so far


class JsonSchemaSpec(Lenient):
    name: str = "response"
    schema_: Optional[Union[dict[str, Any], bool]] = Field(default=None, alias="schema")
    strict: Optional[bool] = None
    description: Optional[str] = None


class ResponseFormat(Lenient):
    type: Literal["text", "json_object", "json_schema", "structural_tag"]
    json_schema: Optional[JsonSchemaSpec] = None
    # structural_tag, legacy form (SGLang): structures + triggers
    structures: Optional[list[dict[str, Any]]] = None
    triggers: Optional[list[str]] = None
    # structural_tag, xgrammar form: format
    format: Optional[dict[str, Any]] = None

    @model_validator(mode="before")
    @classmethod
    def _wrap_bare_schema(cls, data: Any) -> Any:
        """`{"type": "json_schema", "schema": {...}}` without the `json_schema` wrapper, as SGLang accepts it
        (its name from the schema's title)."""
        if isinstance(data, dict) and data.get("type") == "json_schema" and "json_schema" not in data \
                and "schema" in data:
            data = dict(data)
            schema = data.pop("schema")
            if isinstance(schema, str):  # a schema sent as JSON text, as json_schema may be elsewhere
                try:
                    schema = json.loads(schema)
                except json.JSONDecodeError:
                    raise ValueError("schema: is not valid JSON") from None
            title = schema.get("title") if isinstance(schema, dict) else None
            data["json_schema"] = {"name": data.pop("name", None) or title or "response", "schema": schema,
                                   **({"strict": data.pop("strict")} if "strict" in data else {})}
        return data


class SamplingFields(Lenient):
    """Fields shared by chat and completions (OpenAI + SGLang extras)."""

    max_tokens: Optional[conint(ge=1)] = None
    temperature: Optional[confloat(ge=0.0)] = None
    top_p: Optional[confloat(gt=0.0, le=1.0)] = None
    top_k: Optional[int] = None
    min_p: Optional[confloat(ge=0.0, le=1.0)] = None
    seed: Optional[int] = None
    stop: Stop = None
    stop_regex: Stop = None  # SGLang's: stop where the output matches one of these regexes
    stop_token_ids: Optional[list[int]] = None
    n: conint(ge=1) = 1
    presence_penalty: Optional[confloat(ge=-2.0, le=2.0)] = None
    frequency_penalty: Optional[confloat(ge=-2.0, le=2.0)] = None
    repetition_penalty: Optional[confloat(gt=0.0)] = None
    logit_bias: Optional[dict[str, float]] = None
    skip_special_tokens: Optional[bool] = None
    ignore_eos: Optional[bool] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    user: Optional[str] = None
    rid: Optional[str] = None
    # constraints (SGLang extra_body)
    regex: Optional[str] = None
    ebnf: Optional[str] = None
    json_schema: Optional[Union[str, dict[str, Any]]] = None
    structural_tag: Optional[Union[str, dict[str, Any]]] = None
    # the same, in vLLM's spelling (server/params.py maps them), so vLLM clients are not silently unconstrained
    guided_json: Optional[Union[str, dict[str, Any]]] = None
    guided_regex: Optional[str] = None
    guided_grammar: Optional[str] = None
    guided_choice: Optional[list[str]] = None
    structured_outputs: Optional[dict[str, Any]] = None
    max_reasoning_tokens: Optional[conint(ge=0)] = None
    answer_reserve_tokens: Optional[conint(ge=0)] = None
    # the thinking budget in vLLM's spelling (-1: none), and SGLang's strict-thinking form custom_params.thinking_budget
    thinking_token_budget: Optional[conint(ge=-1)] = None
    custom_params: Optional[dict[str, Any]] = None
    # more spellings of the thinking budget: SGLang's native max_thinking_tokens, and thinking_budget
    max_thinking_tokens: Optional[conint(ge=0)] = None
    thinking_budget: Optional[conint(ge=0)] = None
    min_tokens: Optional[conint(ge=0)] = None  # SGLang / vLLM: min_new_tokens
    no_stop_trim: Optional[bool] = None
    include_stop_str_in_output: Optional[bool] = None  # vLLM's no_stop_trim
    # SGLang's (bool or "last"); not supported here, so refused (params.refuse_hidden_states), not ignored
    return_hidden_states: Any = None
    # SGLang's LoRA adapter (a name, or one per prompt) and custom logit processor (a serialized callable, with
    # custom_params as its arguments): not supported here, so refused unless null (refuse_sglang_only_fields)
    lora_path: Any = None
    custom_logit_processor: Any = None
    # vLLM's
    allowed_token_ids: Optional[list[int]] = None
    bad_words: Optional[list[str]] = None
    request_id: Optional[str] = None  # the response id (SGLang's rid)
    return_tokens_as_token_ids: bool = False  # logprob tokens as "token_id:N"
    use_beam_search: bool = False  # refused: no beam search here
    prompt_logprobs: Optional[conint(ge=0, le=20)] = None  # each prompt token's logprob and its top k
    truncate_prompt_tokens: Optional[conint(ge=-1)] = None  # keep a prompt's last tokens only (-1: what fits)


# ---------- OpenAI: chat ----------

class FunctionCall(Lenient):
    name: str
    arguments: Union[str, dict[str, Any]] = "{}"


class ToolCallIn(Lenient):
    id: Optional[str] = None
    type: str = "function"
    function: FunctionCall


class ChatMessage(Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Union[str, list[dict[str, Any]], None] = None
    name: Optional[str] = None
    tool_calls: Optional[list[ToolCallIn]] = None
    tool_call_id: Optional[str] = None
    reasoning_content: Optional[str] = None
    reasoning: Optional[str] = None  # vLLM's newer name for reasoning_content: templates see it as both

    def model_post_init(self, _context: Any) -> None:
        if self.reasoning_content is None and self.reasoning is not None:
            self.reasoning_content = self.reasoning

    @field_validator("role", mode="before")
    @classmethod
    def _lower_role(cls, role: Any) -> Any:
        return role.lower() if isinstance(role, str) else role  # "System" as SGLang reads it

    @field_validator("content")
    @classmethod
    def _text_parts_only(cls, content: Any) -> Any:
        """Images, audio and files would be dropped and the answer made up without them: refused by name. A
        `refusal` part (the OpenAI SDK's assistant messages may carry one) is its text."""
        if not isinstance(content, list):
            return content
        parts = [{"type": "text", "text": part["refusal"]} if part.get("type") == "refusal"
                 and isinstance(part.get("refusal"), str) else part for part in content]
        for part in parts:
            kind = part.get("type", "text")
            if kind != "text" or not isinstance(part.get("text"), str):
                raise ValueError(f"a {kind!r} part is not supported: this server's models read text only "
                                 "(parts of type 'text' with a 'text' string, or 'refusal')")
        return parts


class FunctionDef(Lenient):
    name: str = Field(min_length=1)
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None
    strict: Optional[bool] = None


class Tool(Lenient):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedToolChoice(Lenient):
    type: Literal["function"] = "function"
    function: dict[str, Any]


class ChatCompletionRequest(SamplingFields):
    model: str = "default"
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[conint(ge=1)] = None
    response_format: Optional[ResponseFormat] = None
    tools: Optional[list[Tool]] = None
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None
    parallel_tool_calls: bool = True
    logprobs: bool = False
    top_logprobs: Optional[conint(ge=0, le=20)] = None
    chat_template_kwargs: Optional[dict[str, Any]] = None
    continue_final_message: bool = False
    add_generation_prompt: bool = True
    separate_reasoning: bool = True
    stream_reasoning: bool = True
    # thinking switches (params.chat_template_kwargs folds them into chat_template_kwargs, as SGLang does):
    # OpenAI's reasoning_effort ("none" turns thinking off) and OpenRouter's reasoning object
    reasoning_effort: Any = None
    reasoning: Any = None
    input_ids: Optional[list[int]] = None  # SGLang: the prompt is these ids, not the rendered messages
    return_token_ids: bool = False
    return_prompt_token_ids: bool = False
    include_reasoning: bool = True  # vLLM: false leaves the reasoning out of the response
    chat_template: Optional[str] = None  # vLLM's per-request template: refused (the server's --chat-template)


# ---------- OpenAI: completions ----------

class CompletionRequest(SamplingFields):
    null_kept: ClassVar[frozenset[str]] = frozenset({"max_tokens"})  # null: no limit but the context's
    model: str = "default"
    prompt: Union[str, list[str], list[int], list[list[int]]]
    max_tokens: Optional[conint(ge=0)] = 16  # 0 with echo and logprobs: score the prompt only
    echo: bool = False
    logprobs: Optional[conint(ge=0, le=20)] = None
    suffix: Optional[str] = None
    add_special_tokens: bool = True  # vLLM's: false encodes a text prompt without BOS and the like
    return_token_ids: bool = False  # choices carry the output's and the prompt's token ids
    return_prompt_token_ids: bool = False
    response_format: Optional[ResponseFormat] = None
    rid: Union[str, list[str], None] = None  # SGLang's: a list gives one id per prompt of a batch


# ---------- OpenAI: responses ----------

class ResponseText(Lenient):
    format: Optional[dict[str, Any]] = None  # {"type": "text" | "json_object" | "json_schema", ...}


class ResponsesRequest(Lenient):
    """/v1/responses (OpenAI's Responses API, as SGLang and vLLM serve it). Fields chat has and this does not
    (top_k, min_p, stop, regex, max_reasoning_tokens, ...) are taken from the extras, as SGLang takes its
    sampling extras."""

    model: str = "default"
    input: Union[str, list[dict[str, Any]]] = Field(default_factory=list)
    instructions: Optional[str] = None
    max_output_tokens: Optional[conint(ge=1)] = None
    temperature: Optional[confloat(ge=0.0)] = None
    top_p: Optional[confloat(gt=0.0, le=1.0)] = None
    text: Optional[ResponseText] = None
    reasoning: Optional[dict[str, Any]] = None  # {"effort": ..., "summary": ...}; effort "none" turns thinking off
    tools: list[dict[str, Any]] = Field(default_factory=list)
    tool_choice: Union[Literal["none", "auto", "required"], dict[str, Any]] = "auto"
    parallel_tool_calls: bool = True
    max_tool_calls: Optional[conint(ge=1)] = None
    stream: bool = False
    store: bool = True
    previous_response_id: Optional[str] = None
    metadata: Optional[dict[str, Any]] = None
    user: Optional[str] = None
    truncation: Literal["auto", "disabled"] = "disabled"
    background: bool = False
    include: Optional[list[str]] = None
    top_logprobs: Optional[conint(ge=0, le=20)] = None
    request_id: Optional[str] = None  # SGLang's: the response id
    chat_template_kwargs: Optional[dict[str, Any]] = None


# ---------- native ----------

class GenerateRequest(Lenient):
    text: Union[str, list[str], None] = None
    input_ids: Union[list[int], list[list[int]], None] = None
    sampling_params: Union[dict[str, Any], list[dict[str, Any]], None] = None
    require_reasoning: bool = False
    stream: bool = False
    # one value for every prompt, or (SGLang's GenerateReqInput) one per prompt of a batch: the engine checks
    # a list against the batch and n
    return_logprob: Union[bool, list[bool], None] = False
    top_logprobs_num: Union[conint(ge=0), list[conint(ge=0)], None] = 0  # SGLang: up to the vocabulary
    logprob_start_len: Union[conint(ge=-1), list[conint(ge=-1)], None] = -1
    return_text_in_logprobs: bool = False
    token_ids_logprob: Union[list[int], list[list[int]], None] = None  # these tokens' logprobs at every position
    rid: Union[str, list[str], None] = None
    max_thinking_tokens: Optional[conint(ge=0)] = None  # SGLang: the thinking budget of every prompt
    return_hidden_states: Any = None  # refused when set: not supported


class SeparateReasoningRequest(Lenient):
    """SGLang's /separate_reasoning: a model's whole output split by a reasoning parser's markers."""

    text: str
    reasoning_parser: Optional[str] = None  # SGLang requires it; here the server's parser is the default


class ParseFunctionCallRequest(Lenient):
    """SGLang's /parse_function_call: a model's whole output read by a tool-call parser."""

    text: str
    tools: list[dict[str, Any]] = Field(default_factory=list)
    tool_call_parser: Optional[str] = None  # the server's parser when left out


class AbortRequest(Lenient):
    rid: Optional[str] = ""  # SGLang's AbortReq: optional (null too) with abort_all
    abort_all: bool = False


class TokenizeRequest(Lenient):
    """SGLang's /tokenize: a prompt (or prompts), or chat messages rendered as /v1/chat/completions would."""

    model: str = "default"
    prompt: Union[str, list[str], None] = None
    messages: Optional[list[ChatMessage]] = None
    add_special_tokens: bool = True
    return_token_strs: bool = False  # vLLM's: also each token's string


class DetokenizeRequest(Lenient):
    model: str = "default"
    tokens: Union[list[int], list[list[int]]]
    skip_special_tokens: bool = True
