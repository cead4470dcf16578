"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/models."""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse

from thinkform.engine.errors import RequestFieldError
from thinkform.reasoning import RawAnswerSplitter, StreamingReasoningParser, split_reasoning
from thinkform.reasoning.markers import ReasoningMarkers
from thinkform.server.chat import (ChatTemplateError, ReasoningStart, continued_reasoning_closed, decide_reasoning_start,
                                   normalize_message, tools_system_prompt, with_system_text)
from thinkform.server.errors import APIError
from thinkform.server.params import (RequestConstraints, chat_template_kwargs, check_max_tokens, constraint_fields,
                                    sampling_params, spelled_error, validate_constraints)
from thinkform.server.protocol import (ChatCompletionRequest, CompletionRequest, NamedToolChoice, SamplingFields,
                                       refuse_sglang_only_fields, warn_unknown)
from thinkform.server.state import ServerState, new_id, now
from thinkform.server.streaming import (SSE_DONE, call_until_disconnect, open_stream, sse,
                                        stream_with_abort)
from thinkform.server.tools import StreamingToolParser, ToolCall, ToolCallParser, tool_name
from thinkform.structured.spec import ConstraintError, tag_openings

logger = logging.getLogger(__name__)

router = APIRouter()


def _state(request: Request) -> ServerState:
    return request.app.state.thinkform


# ---------------------------------------------------------------- chat: planning

@dataclass
class ChatPlan:
    rid: str
    input_ids: list[int]
    reasoning_start: ReasoningStart
    params: dict[str, Any]
    reasoning: bool  # the output may hold a reasoning section (a parser, and the prompt did not skip it)
    split: bool  # separate reasoning_content from content
    tool_parser: ToolCallParser | None  # tools are active: parse calls out of the answer
    max_calls: int | None  # parallel_tool_calls false: one call at most
    return_logprob: bool
    top_logprobs_num: int
    content_prefix: str = ""  # written before the content (minimax-append-think: the `<think>` the template wrote)
    exact_answer: bool = False  # a JSON / regex / EBNF constraint: the content keeps its leading whitespace
    return_token_ids: bool = False  # choices carry the output's token ids
    return_prompt_token_ids: bool = False  # and the prompt's (SGLang: also with return_token_ids)
    include_reasoning: bool = True  # vLLM's include_reasoning false: the reasoning is left out
    token_names: Any = None  # names logprob tokens: the tokenizer, or TokenIdNames (return_tokens_as_token_ids)
    prompt_logprobs: int | None = None  # vLLM's: the prompt's logprobs with their top k, in the response
    constraints: RequestConstraints | None = None  # how the request spelled its constraint (errors name it)
    markers: ReasoningMarkers | None = None  # the family's, as the engine reads this request (see markers_for)
    # the request's names of the engine's fields, for its errors (a context overflow names max_tokens)
    field_names: dict[str, str] = field(default_factory=dict)


def tool_mode(body: ChatCompletionRequest) -> tuple[str, list[dict[str, Any]]]:
    """('none'|'auto'|'required'|'named', the tools that may be called)."""
    tools = [t.model_dump(exclude_none=True) for t in body.tools or []]
    choice = body.tool_choice
    if not tools:
        if choice not in (None, "none"):
            raise APIError("tool_choice needs a non-empty tools list", param="tool_choice")
        return "none", []
    if choice is None or choice == "auto":
        return "auto", tools
    if choice == "none":
        return "none", []
    if choice == "required":
        return "required", tools
    assert isinstance(choice, NamedToolChoice)
    name = choice.function.get("name")
    chosen = [t for t in tools if tool_name(t) == name]
    if not chosen:
        raise APIError(f"tool_choice names function {name!r}, which is not in tools", param="tool_choice")
    return "named", chosen


def render_chat(state: ServerState, body: ChatCompletionRequest, tools: list[dict[str, Any]],
                kwargs: dict[str, Any] | None) -> tuple[str, str]:
    """(the prompt text of the conversation, the part of it after the history, which decides where the output
    starts: see ChatRenderer.generation_prompt). A template that cannot list tools gets them in the system
    message, one that cannot render calls gets each earlier call as text in the tool-call format."""
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    renderer = state.renderer
    if tools and not renderer.uses_tools:
        messages = with_system_text(messages, tools_system_prompt(tools, state.tool_parser.example()))
    if not renderer.renders_calls(bool(tools)):
        messages = [calls_as_text(m, state.tool_parser) for m in messages]
    try:
        prompt = renderer.render(messages, tools=tools or None, add_generation_prompt=body.add_generation_prompt,
                                 continue_final_message=body.continue_final_message, chat_template_kwargs=kwargs)
    except ChatTemplateError as e:
        raise APIError(str(e), param="messages") from e
    if state.markers is None:
        return prompt, prompt
    return prompt, renderer.generation_prompt(prompt, messages, tools or None, body.continue_final_message, kwargs)


def calls_as_text(message: dict[str, Any], parser: ToolCallParser) -> dict[str, Any]:
    """An assistant message's calls appended to its text in the server's tool-call format."""
    if message.get("role") != "assistant" or not message.get("tool_calls"):
        return message
    message = normalize_message(message)
    calls = parser.written(message.pop("tool_calls"))
    return {**message, "content": f"{message['content']}\n{calls}" if message["content"] else calls}


def chat_prompt(state: ServerState, body: ChatCompletionRequest,
                tools: list[dict[str, Any]]) -> tuple[str, str, list[int], dict[str, Any] | None]:
    """(prompt text, its part after the history, its ids, the template kwargs with the thinking switches
    folded in): the rendered messages, or SGLang's input_ids where given (the messages then only shape the
    request)."""
    kwargs = chat_template_kwargs(body.chat_template_kwargs, body.reasoning_effort, body.reasoning)
    if body.input_ids is not None:
        text = _given_ids(state, body.input_ids)
        return text, text, list(body.input_ids), kwargs
    prompt, tail = render_chat(state, body, tools, kwargs)
    return prompt, tail, state.engine.tokenizer.encode(prompt, add_special_tokens=False), kwargs


def _given_ids(state: ServerState, ids: list[int]) -> str:
    """The text of the prompt ids a request gave (SGLang's input_ids), which decides where the output starts."""
    if not ids or any(i < 0 for i in ids):
        raise APIError("input_ids: must be a non-empty list of token ids >= 0", param="input_ids")
    try:
        return state.engine.tokenizer.decode(ids)
    except (OverflowError, ValueError, TypeError, IndexError) as e:
        raise APIError(f"input_ids: must be token ids of this model's vocabulary ({e})", param="input_ids") from e


def _check_token_id_options(body: ChatCompletionRequest | CompletionRequest) -> None:
    """As SGLang: the ids come on the whole choice only, so a stream refuses them (and a chat stream
    vLLM's prompt_logprobs, which come at the top of the whole response)."""
    if isinstance(body, ChatCompletionRequest) and body.stream and body.prompt_logprobs is not None:
        raise APIError("prompt_logprobs: not supported with streaming chat (set stream to false)",
                       param="prompt_logprobs")
    for name, asked in (("return_token_ids", body.return_token_ids),
                        ("return_prompt_token_ids", body.return_prompt_token_ids)):
        if body.stream and asked:
            raise APIError(f"{name}: not supported with streaming (set stream to false)", param=name)


def _check_stream_options(body: ChatCompletionRequest | CompletionRequest) -> None:
    """As OpenAI and vLLM (and /v1/responses here): stream_options only with stream true, where its
    include_usage would otherwise be dropped without a word."""
    if body.stream_options is not None and not body.stream:
        raise APIError("stream_options: only allowed when stream is true", param="stream_options")


def plan_chat(state: ServerState, body: ChatCompletionRequest) -> ChatPlan:
    refuse_sglang_only_fields(body)
    if body.chat_template is not None:
        raise APIError("chat_template: a per-request template is not supported; start the server with "
                       "--chat-template", param="chat_template")
    mode, tools = tool_mode(body)
    _check_token_id_options(body)
    _check_stream_options(body)
    prompt, tail, ids, kwargs = chat_prompt(state, body, tools)
    ids = truncated(ids, body.truncate_prompt_tokens, state.engine.context_length)
    continues = body.continue_final_message and bool(body.messages) and body.messages[-1].role == "assistant" and \
        continued_reasoning_closed(body.messages[-1].model_dump(), state.markers)
    reasoning_start = decide_reasoning_start(tail, state.markers, kwargs, continues)
    if body.top_logprobs and not body.logprobs:
        raise APIError("top_logprobs: needs logprobs set to true", param="top_logprobs")
    max_tokens = body.max_completion_tokens or body.max_tokens
    check_max_tokens(max_tokens, state.limits, "max_completion_tokens" if body.max_completion_tokens else "max_tokens")
    params = sampling_params(body, max_tokens, state.max_n)
    if max_tokens is None:  # as SGLang, vLLM and OpenAI: a chat answer is bounded by the context, not by 128
        params["max_new_tokens"] = None
    constraints = constraint_fields(body, body.response_format)
    fields = constraints.fields
    tool_parser = state.tool_parser.for_tools(tools, sum(len(m.tool_calls or []) for m in body.messages))
    if mode in ("required", "named"):
        if fields:
            raise APIError(f"tool_choice {mode!r} cannot be combined with another constraint", param="tool_choice")
        fields = {"structural_tag": _tool_tag(tool_parser, tools, mode, body.parallel_tool_calls)}
    elif mode == "auto" and not fields:
        tag = _tool_tag(tool_parser, tools, "auto", body.parallel_tool_calls)
        fields = {"structural_tag": tag} if tag else {}
    if mode != "none" and "structural_tag" in fields:  # the tools' schemas make it: errors name them
        given = [t.model_dump(exclude_none=True) for t in body.tools or []]
        constraints.use_tools({i: t for i, t in enumerate(given) if t in tools})  # by their place in the request
    params.update(validate_constraints(fields, state.limits, constraints))
    reasoning = state.markers is not None and reasoning_start != "answer"
    unsplit = reasoning and state.markers.reasoning_in_content
    return ChatPlan(rid=body.rid or body.request_id or new_id(""), input_ids=ids, reasoning_start=reasoning_start,
                    params=params, reasoning=reasoning, split=body.separate_reasoning and reasoning and not unsplit,
                    content_prefix=state.markers.start if unsplit and reasoning_start == "reasoning" else "",
                    exact_answer=bool(fields) and "structural_tag" not in fields,
                    tool_parser=tool_parser if mode != "none" else None,
                    max_calls=None if body.parallel_tool_calls else 1,
                    return_logprob=body.logprobs, top_logprobs_num=body.top_logprobs or 0,
                    return_token_ids=body.return_token_ids,
                    return_prompt_token_ids=body.return_prompt_token_ids or body.return_token_ids,
                    include_reasoning=body.include_reasoning, token_names=token_names(state, body),
                    prompt_logprobs=body.prompt_logprobs, constraints=constraints,
                    markers=state.markers.for_answer("structural_tag" in fields, _tag_openings(fields))
                    if state.markers else None,
                    field_names={"prompt": "input_ids" if body.input_ids is not None else "messages",
                                 "max_new_tokens": "max_completion_tokens"
                                 if body.max_completion_tokens else "max_tokens", "min_new_tokens": "min_tokens"})


def _tag_openings(fields: dict[str, Any]) -> list[str] | None:
    """The structural tag's own strings (spec.tag_openings), where the request has one: read from the same
    parsed tag as the engine reads them."""
    tag = fields.get("structural_tag")
    if tag is None:
        return None
    try:
        return tag_openings(json.loads(tag) if isinstance(tag, str) else tag)
    except (ValueError, AttributeError):  # not an object: validation refused it already
        return None


def _tool_tag(parser: ToolCallParser, tools: list[dict[str, Any]], mode: str,
              parallel: bool) -> dict[str, Any] | None:
    try:
        return parser.structural_tag(tools, mode, parallel)  # type: ignore[arg-type]
    except ValueError as e:
        raise APIError(str(e), param="tool_choice") from e


def start_chat(state: ServerState, plan: ChatPlan, stream: bool) -> Any:
    return spelled_errors(state.engine.async_generate(
        input_ids=plan.input_ids, sampling_params=plan.params, reasoning_start=plan.reasoning_start,
        stream=stream, rid=plan.rid,
        **engine_logprob_args(plan.top_logprobs_num if plan.return_logprob else None, plan.prompt_logprobs)),
        plan.constraints, plan.field_names)


async def spelled_errors(call: Any, names: RequestConstraints | None, fields: Mapping[str, str] | None = None) -> Any:
    """The engine call; a grammar that fails to compile is a 400 naming the field as the request spelled it,
    and so is a field the engine names otherwise (`fields`: the engine's name -> the request's)."""
    try:
        return await call
    except ConstraintError as e:
        raise spelled_error(e, names) from e
    except RequestFieldError as e:
        if fields and e.field in fields:
            e.field = fields[e.field]
        head, colon, rest = str(e).partition(":")
        if colon and " " not in head and head != e.field:  # the message names the field as the param does
            e.args = (f"{e.field}:{rest}",)
        raise


def engine_logprob_args(output_k: int | None, prompt_k: int | None, echo: bool = False) -> dict[str, Any]:
    """What the engine computes for the logprobs a request shows: the output's (top output_k; None: none),
    the prompt's (vLLM's prompt_logprobs, or echo): the larger top k serves both, each shown trimmed."""
    return {"return_logprob": output_k is not None or prompt_k is not None,
            "top_logprobs_num": max(output_k or 0, prompt_k or 0),
            "logprob_start_len": 0 if prompt_k is not None or echo else -1}


def vllm_prompt_logprobs(names: Any, meta: dict[str, Any], k: int) -> list[dict[str, Any] | None]:
    """vLLM's prompt_logprobs: per prompt token, None for the first, else {token id: {logprob, rank,
    decoded_token}} for the token itself and the row's top k."""
    out: list[dict[str, Any] | None] = []
    tops = meta.get("input_top_logprobs") or []
    ranks = meta.get("input_token_ranks") or []
    for i, (value, tid, _) in enumerate(meta.get("input_token_logprobs") or []):
        if value is None:
            out.append(None)
            continue
        top = (tops[i] if i < len(tops) else None) or []
        row = {str(t): {"logprob": v, "rank": j + 1, "decoded_token": _token_text(names, t)}
               for j, (v, t, _) in enumerate(top[:k])}
        row[str(tid)] = {"logprob": value, "rank": ranks[i] if i < len(ranks) else None,
                         "decoded_token": _token_text(names, tid)}
        out.append(row)
    return out


# ---------------------------------------------------------------- chat: answers

def vllm_stop_reason(eos_ids: tuple[int, ...], matched: Any) -> Any:
    """vLLM's stop_reason: the stop string or stop token id that ended the output, None where the model's
    own EOS did (SGLang's matched_stop names the EOS id too)."""
    return None if isinstance(matched, int) and matched in eos_ids else matched


def eos_ids(state: ServerState) -> tuple[int, ...]:
    return tuple(getattr(state.engine, "eos_token_ids", ()))


def finish_reason_of(meta: dict[str, Any]) -> tuple[str | None, Any]:
    fr = meta.get("finish_reason")
    if not fr:
        return None, None
    return fr.get("type"), fr.get("matched")


def _split(state: ServerState, plan: ChatPlan, text: str, meta: dict[str, Any],
           always: bool = False) -> tuple[str | None, str]:
    """(reasoning, answer) where the plan separates them (or `always`: for finding tool calls), else
    (None, the whole text)."""
    if not (plan.split or (always and plan.reasoning)):
        return None, text
    if "content" in meta:
        return meta.get("reasoning_content"), meta["content"]
    return split_reasoning(text, plan.markers, plan.reasoning_start == "reasoning",  # type: ignore[arg-type]
                           plan.exact_answer)


def _answer_calls(state: ServerState, plan: ChatPlan, text: str, meta: dict[str, Any],
                  content: str) -> tuple[str, list[ToolCall]]:
    """(content without the calls, the calls): calls come from the answer only, never from the reasoning,
    also when the reasoning stays in `content` (separate_reasoning false); one at most without
    parallel_tool_calls."""
    assert plan.tool_parser is not None
    _, answer = _split(state, plan, text, meta, always=True)
    cut = (meta.get("finish_reason") or {}).get("type") == "length"
    # no call section: the content as it is; a section whose calls the request does not declare, or whose call
    # never finished, is left out of it, as streaming leaves it out (and /parse_function_call)
    read = plan.tool_parser.read(answer, with_cut_call=cut)
    if read is None:
        return content, []
    normal, calls = read
    at = content.rfind(answer) if answer else -1  # content: the answer, or the reasoning and then the answer
    return (content[:at] if at > 0 else "") + normal, calls[: plan.max_calls]


def satisfied(meta: dict[str, Any]) -> dict[str, bool]:
    """A finished constrained choice's `constraint_satisfied` (as the native meta_info's): whether its answer
    holds to the whole constraint, also what no grammar enforced (a pattern's lookaround, `uniqueItems`)."""
    value = meta.get("constraint_satisfied")
    return {"constraint_satisfied": value} if isinstance(value, bool) else {}


def _usage(metas: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """The usage of whole outputs, grouped by prompt (n each)."""
    return _usage_of(metas[::n], metas)  # each prompt counted once


def _choice_usage(latest: dict[int, dict[str, Any]], index: int, prompt_tokens: int) -> dict[str, Any]:
    """The usage so far of one choice of a stream, on each of its chunks (continuous_usage_stats): its own
    prompt and the tokens it has written, as SGLang and vLLM report it (not a total over the choices);
    `prompt_tokens` before its first output."""
    meta = latest.get(index)
    return _usage_of([meta], [meta]) if meta is not None else _usage_of([{"prompt_tokens": prompt_tokens}], [])


def _usage_of(prompts: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> dict[str, Any]:
    prompt = sum(m.get("prompt_tokens", 0) for m in prompts)
    completion = sum(m.get("completion_tokens", 0) for m in outputs)
    reasoning = sum(m.get("reasoning_tokens", 0) for m in outputs)
    # reasoning_tokens twice: at the top as SGLang's UsageInfo, and where OpenAI's SDK reads it
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "reasoning_tokens": reasoning,
            "prompt_tokens_details": {"cached_tokens": sum(m.get("cached_tokens", 0) for m in prompts)},
            "completion_tokens_details": {"reasoning_tokens": reasoning}}


def _token_text(tokenizer: Any, token_id: int) -> str:
    return tokenizer.decode([token_id])


class TokenIdNames:
    """Stands in for the tokenizer where logprob tokens are named "token_id:N" (vLLM's
    return_tokens_as_token_ids: a byte-level token's text alone can be ambiguous or invalid UTF-8)."""

    def decode(self, ids: list[int]) -> str:
        return "".join(f"token_id:{i}" for i in ids)


def token_names(state: ServerState, body: SamplingFields) -> Any:
    return TokenIdNames() if body.return_tokens_as_token_ids else state.engine.tokenizer


LogprobPair = tuple[tuple[float, int, Any], list[tuple[float, int, Any]] | None]  # (token's entry, its top ones)


def logprob_pairs(meta: dict[str, Any], start: int = 0, k: int | None = None) -> list[LogprobPair] | None:
    """The output tokens' (logprob entry, top entries, at most k of them) from `start` on; None when the
    engine sent none."""
    tokens = meta.get("output_token_logprobs")
    if tokens is None:
        return None
    tops = meta.get("output_top_logprobs") or [None] * len(tokens)
    return [(t, top[:k] if top is not None and k is not None else top) for t, top in zip(tokens[start:], tops[start:])]


def chat_logprob_entries(tokenizer: Any, pairs: list[LogprobPair],
                         token_bytes: Callable[[int], bytes] | None = None) -> list[dict[str, Any]]:
    """OpenAI's chat logprobs. `token_bytes`: each token's own bytes (the engine's), which join to the text
    where a character is split over tokens (its text alone is U+FFFD); else the token's text's."""
    def entry(tid: int, logprob: float) -> dict[str, Any]:
        text = _token_text(tokenizer, tid)
        return {"token": text, "logprob": logprob,
                "bytes": list(token_bytes(tid) if token_bytes is not None else text.encode())}

    return [{**entry(tid, lp), "top_logprobs": [entry(i, p) for p, i, _ in (top or [])]}
            for (lp, tid, _), top in pairs]


def _chat_logprobs(tokenizer: Any, meta: dict[str, Any], k: int | None = None,
                   token_bytes: Callable[[int], bytes] | None = None) -> dict[str, Any] | None:
    pairs = logprob_pairs(meta, k=k)
    return None if pairs is None else {"content": chat_logprob_entries(tokenizer, pairs, token_bytes)}


@dataclass
class _LogprobFeed:
    """Streamed logprobs of one choice: each event's engine output carries the entries of the tokens whose
    text it shows (cumulative); the new ones wait here for the next chunk of that choice."""

    k: int | None = None  # top entries shown per token (the engine may compute more for the prompt's)
    sent: int = 0  # entries taken from the engine so far
    pending: list[LogprobPair] = field(default_factory=list)

    def feed(self, meta: dict[str, Any]) -> None:
        pairs = logprob_pairs(meta, self.sent, self.k)
        if pairs:
            self.pending.extend(pairs)
            self.sent += len(pairs)

    def take(self) -> list[LogprobPair]:
        pairs, self.pending = self.pending, []
        return pairs


def chat_choice(state: ServerState, plan: ChatPlan, index: int, out: dict[str, Any]) -> dict[str, Any]:
    meta = out.get("meta_info", {})
    reasoning, content = _split(state, plan, out.get("text", ""), meta)
    content = plan.content_prefix + content
    reason, matched = finish_reason_of(meta)
    calls: list[ToolCall] = []
    if plan.tool_parser is not None:
        content, calls = _answer_calls(state, plan, out.get("text", ""), meta, content)
    reasoning = reasoning if plan.include_reasoning else None
    # the reasoning under both names: SGLang's reasoning_content and vLLM's (newer) reasoning
    message: dict[str, Any] = {"role": "assistant", "content": content if (content or not calls) else None,
                               "reasoning_content": reasoning, "reasoning": reasoning}
    if calls:
        message["tool_calls"] = [c.to_openai() for c in calls]
        reason = "tool_calls" if reason == "stop" else reason  # a call cut by max_tokens stays a "length"
    choice = {"index": index, "message": message, "finish_reason": reason, "matched_stop": matched, **satisfied(meta),
              "stop_reason": vllm_stop_reason(eos_ids(state), matched),
              "logprobs": _chat_logprobs(plan.token_names, meta, plan.top_logprobs_num, state.engine.token_bytes)
              if plan.return_logprob else None}
    if plan.return_token_ids:  # as SGLang's choice: present only when asked for
        choice["token_ids"] = list(out.get("output_ids", []))
    if plan.return_prompt_token_ids:
        choice["prompt_token_ids"] = list(plan.input_ids)
    return choice


def engine_outputs(result: Any) -> list[dict[str, Any]]:
    """The engine's outputs as a list (raising the error of one the engine failed)."""
    outs = result if isinstance(result, list) else [result]
    for out in outs:
        raise_if_failed(out.get("meta_info", {}))
    return outs


def raise_if_failed(meta: dict[str, Any]) -> None:
    """An output the engine failed (an abort with a status, as SGLang's) is an error, not a cut answer: the
    whole response, or in a stream an error event."""
    reason = meta.get("finish_reason") or {}
    if reason.get("type") == "abort" and reason.get("status_code"):
        raise APIError(reason.get("message") or "the request failed", reason["status_code"], type="internal_error")


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    state = _state(request)
    warn_unknown(body, "/v1/chat/completions")
    plan = await run_in_threadpool(plan_chat, state, body)  # templates and tokenizers: off the event loop
    chat_id = f"chatcmpl-{plan.rid}"
    if body.stream:
        first, rest = await open_stream(request, state.engine, start_chat(state, plan, stream=True), [plan.rid])
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = _chat_events(state, plan, body, chat_id, first, rest, include_usage)
        return StreamingResponse(stream_with_abort(state.engine, [plan.rid], events),
                                 media_type="text/event-stream")
    result = await call_until_disconnect(request, state.engine, start_chat(state, plan, False), [plan.rid])
    outs = engine_outputs(result)
    response = {
        "id": chat_id, "object": "chat.completion", "created": now(), "model": body.model or state.model_name,
        "choices": [chat_choice(state, plan, i, o) for i, o in enumerate(outs)],
        "usage": _usage([o.get("meta_info", {}) for o in outs], body.n),
    }
    if plan.prompt_logprobs is not None:  # one prompt: vLLM gives them once, at the top
        response["prompt_logprobs"] = vllm_prompt_logprobs(plan.token_names, outs[0].get("meta_info", {}),
                                                           plan.prompt_logprobs)
    return JSONResponse(response)


@dataclass
class _ChoiceStream:
    """Per-choice streaming state: turns cumulative text into reasoning / content / tool-call deltas."""

    reasoning: StreamingReasoningParser | None
    tools: StreamingToolParser | None
    hold_reasoning: bool  # stream_reasoning=false: send the reasoning in one piece when it ends
    raw: RawAnswerSplitter | None = None  # separate_reasoning false with tools: calls come from the answer only
    prefix: str = ""  # content sent before the first text (ChatPlan.content_prefix)
    seen: int = 0
    held: list[str] = field(default_factory=list)
    done: bool = False

    def feed(self, text: str) -> list[dict[str, Any]]:
        delta, self.seen = text[self.seen:], max(self.seen, len(text))
        if not delta:
            return []
        prefix, self.prefix = ([{"content": self.prefix}] if self.prefix else []), ""
        if self.raw is not None:  # the reasoning goes out as content, unparsed
            before, answer = self.raw.feed(delta)
            return prefix + ([{"content": before}] if before else []) + self._deltas("", answer)
        r, c = self.reasoning.feed(delta) if self.reasoning else ("", delta)
        return prefix + self._deltas(r, c)

    def finish(self, cut: bool = False) -> tuple[list[dict[str, Any]], bool]:
        """The last deltas, and whether the answer made tool calls (`cut`: it ran out of tokens)."""
        r, c = self.reasoning.flush() if self.reasoning else ("", "")
        deltas = ([{"content": self.prefix}] if self.prefix else []) + self._deltas(r, c)  # no text came
        self.prefix = ""
        if self.raw is not None:
            before, answer = self.raw.flush()
            deltas += ([{"content": before}] if before else []) + self._deltas("", answer)
        if self.held:
            deltas.append({"reasoning_content": "".join(self.held)})
            self.held.clear()
        if self.tools is None:
            return deltas, False
        normal, calls, made = self.tools.finish(cut)
        if normal:
            deltas.append({"content": normal})
        deltas += [{"tool_calls": part} for part in one_per_index(calls)]
        return deltas, made

    def _deltas(self, r: str, c: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if r:
            if self.hold_reasoning:
                self.held.append(r)
            else:
                out.append({"reasoning_content": r})
        if c:
            if self.held:
                out.append({"reasoning_content": "".join(self.held)})
                self.held.clear()
            calls: list[dict[str, Any]] = []
            if self.tools is not None:
                c, calls = self.tools.feed(c)
            if c:
                out.append({"content": c})
            out += [{"tool_calls": part} for part in one_per_index(calls)]
        return out


def one_per_index(calls: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Tool-call deltas in runs where no call's index comes twice: a chunk each, so the header (id, name,
    empty arguments) and the first arguments of a call go out in two chunks, as OpenAI sends them (clients
    that take one entry per call a chunk, or that set the arguments at the header, read both right)."""
    parts: list[list[dict[str, Any]]] = []
    for call in calls:
        if not parts or any(c["index"] == call["index"] for c in parts[-1]):
            parts.append([])
        parts[-1].append(call)
    return parts


def new_choice_stream(state: ServerState, plan: ChatPlan, hold_reasoning: bool) -> _ChoiceStream:
    """The streaming state of one choice of this plan."""
    return _ChoiceStream(
        reasoning=StreamingReasoningParser(plan.markers, plan.reasoning_start == "reasoning", plan.exact_answer)
        if plan.split else None,
        tools=plan.tool_parser.streaming(plan.max_calls) if plan.tool_parser else None,
        hold_reasoning=hold_reasoning, prefix=plan.content_prefix,
        raw=RawAnswerSplitter(plan.markers, plan.reasoning_start == "reasoning")  # type: ignore[arg-type]
        if plan.tool_parser and plan.reasoning and not plan.split else None)


async def _chat_events(state: ServerState, plan: ChatPlan, body: ChatCompletionRequest, chat_id: str,
                       first: dict[str, Any] | None, rest: AsyncIterator[dict[str, Any]],
                       include_usage: bool) -> AsyncIterator[str]:
    created, model = now(), body.model or state.model_name
    choices = [new_choice_stream(state, plan, hold_reasoning=not body.stream_reasoning) for _ in range(body.n)]
    finals: dict[int, dict[str, Any]] = {}
    latest: dict[int, dict[str, Any]] = {}  # each choice's last engine output: its counts so far
    feeds = [_LogprobFeed(plan.top_logprobs_num) for _ in range(body.n)] if plan.return_logprob else None
    continuous = _continuous_usage(body)

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        pairs = feeds[index].take() if feeds is not None else None  # the tokens delivered since the last chunk
        logprobs = {"content": chat_logprob_entries(plan.token_names, pairs, state.engine.token_bytes)} if pairs else None
        if "reasoning_content" in delta:  # under both names, as in the whole response
            delta = {**delta, "reasoning": delta["reasoning_content"]}
        else:  # SGLang writes it in every delta (null where none): `delta.reasoning_content` must not raise
            delta = {**delta, "reasoning_content": None}
        event = {"id": chat_id, "object": "chat.completion.chunk", "created": created, "model": model,
                 "choices": [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": logprobs,
                              **extra}]}
        if continuous:
            event["usage"] = _choice_usage(latest, index, len(plan.input_ids))
        return sse(event)

    for i in range(body.n):
        yield chunk(i, {"role": "assistant", "content": ""})
    async for item in chained(first, rest):
        index = item.get("index", 0)
        stream = choices[index]
        meta = item.get("meta_info", {})
        latest[index] = meta
        if feeds is not None:
            feeds[index].feed(meta)
        for delta in _shown(stream.feed(item.get("text", "")), plan):
            yield chunk(index, delta)
        raise_if_failed(meta)
        reason, matched = finish_reason_of(meta)
        if reason is None or stream.done:
            continue
        stream.done = True
        finals[index] = meta
        deltas, made_calls = stream.finish(cut=reason == "length")
        for delta in _shown(deltas, plan):
            yield chunk(index, delta)
        if made_calls and reason == "stop":  # a call cut by max_tokens stays a "length"
            reason = "tool_calls"
        yield chunk(index, {}, reason, matched_stop=matched, stop_reason=vllm_stop_reason(eos_ids(state), matched),
                    **satisfied(meta))
    if include_usage:
        metas = [finals[i] for i in sorted(finals)]
        yield sse({"id": chat_id, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [], "usage": _usage(metas, body.n) if metas else None})
    yield SSE_DONE


def _shown(deltas: list[dict[str, Any]], plan: ChatPlan) -> list[dict[str, Any]]:
    """The deltas the response carries: without reasoning where the request left it out."""
    if plan.include_reasoning:
        return deltas
    return [d for d in ({k: v for k, v in d.items() if k != "reasoning_content"} for d in deltas) if d]


def _continuous_usage(body: ChatCompletionRequest | CompletionRequest) -> bool:
    return bool(body.stream_options and body.stream_options.continuous_usage_stats)


# ---------------------------------------------------------------- completions

def _completion_inputs(body: CompletionRequest, tokenizer: Any, context_length: int) -> dict[str, Any]:
    """The engine's prompt arguments: text as given, or token ids where the request gave ids, asks for no
    special tokens or for its prompts cut to their last truncate_prompt_tokens tokens (vLLM's)."""
    prompt = body.prompt
    if not prompt and not isinstance(prompt, str):
        raise APIError("prompt must not be empty", param="prompt")
    if body.add_special_tokens and body.truncate_prompt_tokens is None:
        if isinstance(prompt, str):
            return {"prompt": prompt}
        if isinstance(prompt[0], str):
            return {"prompt": list(prompt)}
    texts = [prompt] if isinstance(prompt, str) or isinstance(prompt[0], int) else list(prompt)
    lists = [tokenizer.encode(p, add_special_tokens=body.add_special_tokens) if isinstance(p, str) else list(p)
             for p in texts]
    lists = [truncated(ids, body.truncate_prompt_tokens, context_length) for ids in lists]
    single = isinstance(prompt, str) or isinstance(prompt[0], int)
    return {"input_ids": lists[0] if single else lists}


def truncated(ids: list[int], keep: int | None, context_length: int) -> list[int]:
    """vLLM's truncate_prompt_tokens: the last `keep` tokens of a prompt (-1: as many as the context holds
    with room for one token; None or 0: all of them)."""
    if not keep:
        return ids
    return ids[-(context_length - 1 if keep == -1 else keep):]


def _completion_logprob_lists(tokenizer: Any, pairs: list[LogprobPair], start: int,
                              names: Any = None) -> tuple[dict[str, Any], int]:
    """OpenAI's legacy logprobs of these tokens, their text_offset counted on from `start` (where their text
    begins in the returned text); and the offset after them. `names` names the tokens (default: their text)."""
    names = names or tokenizer
    texts = [_token_text(tokenizer, tid) for (_, tid, _), _ in pairs]
    offsets, pos = [], start
    for t in texts:
        offsets.append(pos)
        pos += len(t)
    tokens = texts if names is tokenizer else [_token_text(names, tid) for (_, tid, _), _ in pairs]
    return {"tokens": tokens, "token_logprobs": [lp for (lp, _, _), _ in pairs], "text_offset": offsets,
            "top_logprobs": [_top_with_chosen(names, top, name, lp)
                             for name, ((lp, _, _), top) in zip(tokens, pairs)]}, pos


def _top_with_chosen(names: Any, top: list[tuple[float, int, Any]] | None, chosen: str,
                     logprob: float | None) -> dict[str, float | None]:
    """A legacy top_logprobs entry: the top tokens and the chosen one ("the API will always return the
    logprob of the sampled token, so there may be up to logprobs+1 elements", as vLLM does; `logprobs: 0`
    gives it alone)."""
    entry = {_token_text(names, i): p for p, i, _ in (top or [])}
    entry.setdefault(chosen, logprob)
    return entry


def _completion_logprobs(tokenizer: Any, meta: dict[str, Any], echo: dict[str, Any] | None = None,
                         start: int = 0, names: Any = None, k: int | None = None) -> dict[str, Any] | None:
    """The whole answer's logprobs; with echo, the prompt's entries (`_echo_logprobs`) first, and the
    answer's offsets from `start`, the length of the echoed prompt."""
    pairs = logprob_pairs(meta, k=k)
    if pairs is None:
        return None
    lists, _ = _completion_logprob_lists(tokenizer, pairs, start, names)
    return _joined_logprobs(_scored_echo(names or tokenizer, echo, meta, k), lists) if echo is not None else lists


def _joined_logprobs(first: dict[str, Any], then: dict[str, Any]) -> dict[str, Any]:
    return {k: first[k] + then[k] for k in ("tokens", "token_logprobs", "text_offset", "top_logprobs")}


def _echo_logprobs(tokenizer: Any, prompt: str | list[int], text: str, names: Any = None) -> dict[str, Any]:
    """With echo, the prompt's tokens come first in the logprobs, text_offset into the echoed prompt `text`;
    their logprobs come with the output (`_scored_echo`)."""
    ids, offsets = _prompt_token_offsets(tokenizer, prompt, text)
    return {"tokens": [_token_text(names or tokenizer, t) for t in ids], "token_logprobs": [None] * len(ids),
            "text_offset": offsets, "top_logprobs": [None] * len(ids)}


def _scored_echo(tokenizer: Any, echo: dict[str, Any], meta: dict[str, Any], k: int | None = None) -> dict[str, Any]:
    """The echoed prompt's entries with the engine's prompt logprobs (scored from the first token on; the
    first has none, as in OpenAI's legacy API)."""
    scored = meta.get("input_token_logprobs") or []
    if len(scored) != len(echo["tokens"]):
        return echo
    tops = meta.get("input_top_logprobs") or [None] + [[]] * (len(scored) - 1)  # logprobs 0: the token alone
    return {**echo, "token_logprobs": [lp for lp, _, _ in scored],
            "top_logprobs": [_top_with_chosen(tokenizer, top[:k], name, lp) if top is not None else None
                             for top, name, (lp, _, _) in zip(tops, echo["tokens"], scored)]}


def _prompt_token_offsets(tokenizer: Any, prompt: str | list[int], text: str) -> tuple[list[int], list[int]]:
    """The prompt's ids (as the engine encodes it) and where each token starts in `text`: each token's own
    text laid end to end where those add up to the prompt; else the tokenizer's offsets (a BOS, a character
    split over tokens), clamped into the text where it has none."""
    offsets_map = None
    if isinstance(prompt, str) and getattr(tokenizer, "is_fast", False):
        enc = tokenizer(prompt, return_offsets_mapping=True)
        ids, offsets_map = list(enc["input_ids"]), [s for s, _ in enc["offset_mapping"]]
    elif isinstance(prompt, str):  # a slow tokenizer has no offset mapping: the token texts laid end to end
        ids = tokenizer.encode(prompt)  # below serve instead
    else:
        ids = list(prompt)
    texts = [_token_text(tokenizer, t) for t in ids]
    if offsets_map is not None and "".join(texts) != text:
        return ids, offsets_map
    offsets, pos = [], 0
    for t in texts:
        offsets.append(min(pos, len(text)))
        pos += len(t)
    return ids, offsets


def _completion_rids(body: CompletionRequest, batch: int | None) -> tuple[str, str | list[str]]:
    """(the response's id, the engine's rid: one per prompt of a batch of `batch` prompts): the client's list
    as SGLang takes it, else `<id>-<i>`."""
    if isinstance(body.rid, list):
        if len(body.rid) != (batch or 1):
            raise APIError(f"rid: a list needs one id per prompt ({batch or 1}), got {len(body.rid)}", param="rid")
        return body.rid[0], list(body.rid) if batch is not None else body.rid[0]
    base = body.rid or body.request_id or new_id("")
    return base, [f"{base}-{i}" for i in range(batch)] if batch is not None else base


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request) -> Response:
    state = _state(request)
    warn_unknown(body, "/v1/completions")
    refuse_sglang_only_fields(body)
    inputs = _completion_inputs(body, state.engine.tokenizer, state.engine.context_length)
    _check_token_id_options(body)
    _check_stream_options(body)
    check_max_tokens(body.max_tokens, state.limits, "max_tokens")
    params = sampling_params(body, body.max_tokens, state.max_n)
    constraints = constraint_fields(body, body.response_format)
    params.update(validate_constraints(constraints.fields, state.limits, constraints))
    prompt = body.prompt
    batched = isinstance(prompt, list) and not isinstance(prompt[0], int)
    base, rid = _completion_rids(body, len(prompt) if batched else None)
    rids = rid if isinstance(rid, list) else [rid]
    want_logprobs = body.logprobs is not None
    prompts = _prompt_texts(state, inputs)  # before the engine call: it may refuse bad token ids
    if body.suffix is not None:
        raise APIError("suffix: fill-in-the-middle is not supported by this server", param="suffix")
    tokenizer, names = state.engine.tokenizer, token_names(state, body)
    echoes = ([_echo_logprobs(tokenizer, p, t, names) for p, t in zip(_prompt_inputs(inputs), prompts)]
              if body.echo and want_logprobs else None)
    call = spelled_errors(state.engine.async_generate(**inputs, sampling_params=params, stream=body.stream, rid=rid,
                                                      **engine_logprob_args(body.logprobs, body.prompt_logprobs,
                                                                            bool(echoes))), constraints,
                          {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens"})
    cmpl_id, created, model = f"cmpl-{base}", now(), body.model or state.model_name
    if body.stream:
        first, rest = await open_stream(request, state.engine, call, rids)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = _completion_events(body, cmpl_id, created, model, first, rest, include_usage, prompts,
                                    tokenizer if want_logprobs else None, echoes, names, eos_ids(state))
        return StreamingResponse(stream_with_abort(state.engine, rids, events), media_type="text/event-stream")
    outs = engine_outputs(await call_until_disconnect(request, state.engine, call, rids))
    choices = []
    for i, out in enumerate(outs):
        meta = out.get("meta_info", {})
        reason, matched = finish_reason_of(meta)
        echoed = prompts[i // body.n] if body.echo else ""
        logprobs = (_completion_logprobs(tokenizer, meta, echoes[i // body.n] if echoes else None, len(echoed),
                                         names, body.logprobs) if want_logprobs else None)
        choices.append({"index": i, "text": echoed + out.get("text", ""), "finish_reason": reason,
                        "matched_stop": matched, "stop_reason": vllm_stop_reason(eos_ids(state), matched),
                        "logprobs": logprobs, **satisfied(meta)})
        if body.prompt_logprobs is not None:
            choices[-1]["prompt_logprobs"] = vllm_prompt_logprobs(names, meta, body.prompt_logprobs)
        if body.return_token_ids:
            choices[-1]["token_ids"] = list(out.get("output_ids", []))
        if body.return_token_ids or body.return_prompt_token_ids:
            choices[-1]["prompt_token_ids"] = _prompt_ids(tokenizer, _prompt_inputs(inputs)[i // body.n])
    return JSONResponse({"id": cmpl_id, "object": "text_completion", "created": created, "model": model,
                         "choices": choices, "usage": _usage([o.get("meta_info", {}) for o in outs], body.n)})


def _prompt_inputs(inputs: dict[str, Any]) -> list[str | list[int]]:
    """Each prompt as given: a text or a list of token ids."""
    if "prompt" in inputs:
        p = inputs["prompt"]
        return [p] if isinstance(p, str) else list(p)
    ids = inputs["input_ids"]
    return [ids] if ids and isinstance(ids[0], int) else list(ids)


def _prompt_ids(tokenizer: Any, prompt: str | list[int]) -> list[int]:
    """A prompt's ids as the engine encodes it (text) or as given (ids)."""
    return tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)


def _prompt_texts(state: ServerState, inputs: dict[str, Any]) -> list[str]:
    """Each prompt as text (token ids decoded)."""
    try:
        return [p if isinstance(p, str) else state.engine.tokenizer.decode(p) for p in _prompt_inputs(inputs)]
    except (OverflowError, ValueError, TypeError, IndexError) as e:
        raise APIError(f"prompt: token ids must be valid ids of this model's vocabulary ({e})", param="prompt") from e


@dataclass
class _CompletionLogprobStream:
    """Streamed /v1/completions logprobs of one choice: each chunk the lists of the tokens it delivers, their
    text_offset running on through the returned text; with echo the prompt's entries lead the first chunk."""

    tokenizer: Any
    echo: dict[str, Any] | None
    pos: int  # where the next token's text starts in the returned text
    names: Any = None  # names the tokens (default: their text)
    feed: _LogprobFeed = field(default_factory=_LogprobFeed)

    def take(self) -> dict[str, Any] | None:
        pairs = self.feed.take()
        if not pairs and self.echo is None:
            return None
        lists, self.pos = _completion_logprob_lists(self.tokenizer, pairs, self.pos, self.names)
        if self.echo is not None:
            lists, self.echo = _joined_logprobs(self.echo, lists), None
        return lists


async def _completion_events(body: CompletionRequest, cmpl_id: str, created: int, model: str,
                             first: dict[str, Any] | None, rest: AsyncIterator[dict[str, Any]],
                             include_usage: bool, prompts: list[str], tokenizer: Any = None,
                             echoes: list[dict[str, Any]] | None = None, names: Any = None,
                             eos: tuple[int, ...] = ()) -> AsyncIterator[str]:
    """`tokenizer`: logprobs were asked for; `echoes`: with echo, each prompt's own logprob entries; `eos`: the
    model's EOS ids (vLLM's stop_reason leaves them out)."""
    seen: dict[int, int] = {}
    finals: dict[int, dict[str, Any]] = {}
    latest: dict[int, dict[str, Any]] = {}  # each choice's last engine output: its counts so far
    lps: dict[int, _CompletionLogprobStream] = {}
    prompt_sent: set[int] = set()
    continuous = _continuous_usage(body)
    async for item in chained(first, rest):
        index, text = item.get("index", 0), item.get("text", "")
        latest[index] = item.get("meta_info", {})
        delta = text[seen.get(index, 0):]
        prompt = prompts[index // body.n] if body.echo else ""
        if body.echo and index not in seen:
            delta = prompt + delta
        seen[index] = max(seen.get(index, 0), len(text))
        meta = item.get("meta_info", {})
        raise_if_failed(meta)
        reason, matched = finish_reason_of(meta)
        if reason is not None:
            finals[index] = meta
        lp = None
        if tokenizer is not None:
            lp = lps.setdefault(index, _CompletionLogprobStream(
                tokenizer, echoes[index // body.n] if echoes else None, len(prompt), names, _LogprobFeed(body.logprobs)))
            lp.feed.feed(meta)
            if lp.echo is not None:
                lp.echo = _scored_echo(names or tokenizer, lp.echo, meta, body.logprobs)
        if delta or reason is not None:
            event = {"id": cmpl_id, "object": "text_completion", "created": created, "model": model,
                     "choices": [{"index": index, "text": delta, "finish_reason": reason,
                                  "matched_stop": matched, "stop_reason": vllm_stop_reason(eos, matched),
                                  "logprobs": lp.take() if lp is not None else None,
                                  **(satisfied(meta) if reason is not None else {})}]}
            if body.prompt_logprobs is not None and index not in prompt_sent:  # once, in a choice's first chunk
                prompt_sent.add(index)
                event["choices"][0]["prompt_logprobs"] = vllm_prompt_logprobs(names or tokenizer, meta,
                                                                              body.prompt_logprobs)
            if continuous:
                event["usage"] = _choice_usage(latest, index, 0)
            yield sse(event)
    if include_usage:
        metas = [finals[i] for i in sorted(finals)]
        yield sse({"id": cmpl_id, "object": "text_completion", "created": created, "model": model,
                   "choices": [], "usage": _usage(metas, body.n) if metas else None})
    yield SSE_DONE


# ---------------------------------------------------------------- models

def _model_card(state: ServerState) -> dict[str, Any]:
    return {"id": state.model_name, "object": "model", "created": now(), "owned_by": "thinkform",
            "root": state.model_name, "max_model_len": state.engine.context_length}


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [_model_card(_state(request))]}


@router.get("/v1/models/{model:path}")  # `:path`: model ids often hold a slash (org/name)
async def retrieve_model(model: str, request: Request) -> dict[str, Any]:
    """OpenAI's models.retrieve(id); an id this server does not serve is SGLang's 404."""
    state = _state(request)
    if model != state.model_name:
        raise APIError(f"The model '{model}' does not exist", 404, param="model", code="model_not_found")
    return _model_card(state)


async def chained(first: dict[str, Any] | None, rest: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """The chunk already awaited (to surface errors before the first byte), then the rest of the stream."""
    if first is not None:
        yield first
    async for item in rest:
        yield item
