"""/v1/responses: OpenAI's Responses API over the chat path.

A Responses request becomes a chat request (input items -> messages, `text.format` -> response_format, flat
function tools -> chat tools), runs exactly as /v1/chat/completions would (same constraints, reasoning split,
tool-call parsing, budgets), and its answer is told as output items: a `reasoning` item (the reasoning text),
a `message` with one `output_text`, and one `function_call` per tool call. Streams send OpenAI's typed events.
Responses are stored (`store`, default true) so `previous_response_id` can continue a conversation.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from thinkform.server.errors import APIError, loc_fields, to_api_error
from thinkform.server.openai_api import (chained, chat_choice, chat_logprob_entries, chat_prompt, engine_outputs,
                                         eos_ids, finish_reason_of, logprob_pairs, new_choice_stream,
                                         plan_chat, raise_if_failed, start_chat, tool_mode)
from thinkform.server.protocol import ChatCompletionRequest, ResponsesRequest, warn_unknown
from thinkform.server.response_store import StoredResponse
from thinkform.server.state import ServerState, new_id, now
from thinkform.server.streaming import call_until_disconnect, open_stream, stream_with_abort

router = APIRouter()

# Chat fields a Responses request spells differently (or has no room for): naming them is a 400, so a
# client that sent chat's spelling learns the right one instead of getting it silently ignored.
_CHAT_SPELLINGS = {"messages": "input", "max_tokens": "max_output_tokens",
                   "max_completion_tokens": "max_output_tokens", "response_format": "text.format",
                   "logprobs": None, "n": None, "echo": None}
_LOGPROBS = "message.output_text.logprobs"
# what `include` may name (OpenAI's ResponseIncludable): only the answer's logprobs mean anything here (the
# others name tools, images and encrypted reasoning this server has none of, so there is nothing to add);
# a name outside the list is a 400, as OpenAI's, so a misspelt include is not silently ignored
_INCLUDABLE = frozenset({_LOGPROBS, "file_search_call.results", "web_search_call.results",
                         "web_search_call.action.sources", "message.input_image.image_url",
                         "computer_call_output.output.image_url", "code_interpreter_call.outputs",
                         "reasoning.encrypted_content"})
# Responses' own fields that chat must not read from the extras (chat's stream_options is another object)
_RESPONSES_ONLY = frozenset({"stream_options"})
# truncation "auto" without max_output_tokens keeps this much of the context for the answer (a quarter of the
# context at most): enough for a reasoning model to think and answer after a long conversation
DEFAULT_ANSWER_ROOM = 4096


def _state(request: Request) -> ServerState:
    return request.app.state.thinkform


# ---------------------------------------------------------------- request -> chat

def _text_of(content: Any, where: str) -> str:
    """The text of an item's content: a string, or text parts (input_text / output_text / text / refusal)."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if not isinstance(content, list):
        raise APIError(f"{where}: must be a string or a list of content parts", param=where)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text", "reasoning_text", "summary_text"):
            texts.append(str(part.get("text", "")))
        elif kind == "refusal":
            texts.append(str(part.get("refusal", "")))
        else:
            raise APIError(f"{where}[{j}].type: {kind!r} parts are not supported by this server (text only)",
                           param=f"{where}[{j}].type")
    return "".join(texts)


def input_items(items: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The request's input as OpenAI lists it (GET /v1/responses/{id}/input_items): items with ids, a
    message's text as `input_text` parts (an assistant's as `output_text`). Checked by input_messages first."""
    if isinstance(items, str):
        items = [{"type": "message", "role": "user", "content": items}]
    listed = []
    for item in items:
        kind = item.get("type", "message" if "role" in item else None)
        entry = {**item, "type": kind, "id": item.get("id") or new_id(_ITEM_ID_PREFIX.get(kind, "item_")),
                 "status": item.get("status") or "completed"}
        if kind == "message":
            entry.update(role=str(item.get("role")).lower(), content=_listed_parts(item.get("content"), item.get("role")))
        elif kind == "reasoning":
            entry.setdefault("summary", [])
        listed.append(entry)
    return listed


_ITEM_ID_PREFIX = {"message": "msg_", "function_call": "fc_", "function_call_output": "fco_", "reasoning": "rs_"}


def _listed_parts(content: Any, role: Any) -> list[dict[str, Any]]:
    """A message's content as OpenAI lists it: `input_text` parts (an assistant's `output_text`, with its
    annotations), whatever text part type the request spelled (chat's `text` too)."""
    kind = "output_text" if str(role).lower() == "assistant" else "input_text"
    parts = [{"type": kind, "text": content}] if isinstance(content, str) else list(content or [])
    listed = []
    for part in parts:
        if isinstance(part, dict) and part.get("type") in ("text", "input_text", "output_text"):
            part = {**part, "type": kind}
            if kind == "output_text":
                part.setdefault("annotations", [])
        listed.append(part)
    return listed


def input_messages(items: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages from Responses input items. A replayed `reasoning` item goes with the assistant turn
    after it; `function_call` items join the assistant message they follow (one turn, several calls)."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[dict[str, Any]] = []
    reasoning: str | None = None
    for i, item in enumerate(items):
        where = f"input[{i}]"
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            role = role.lower() if isinstance(role, str) else role  # "User" as chat reads it (SGLang's way)
            if role not in ("user", "assistant", "system", "developer"):
                raise APIError(f"{where}.role: must be user, assistant, system or developer, got {role!r}",
                               param=f"{where}.role")
            message: dict[str, Any] = {"role": role, "content": _text_of(item.get("content"), f"{where}.content")}
            if role == "assistant" and reasoning is not None:
                message["reasoning_content"], reasoning = reasoning, None
            messages.append(message)
        elif kind == "reasoning":
            reasoning = _text_of(item.get("content") or item.get("summary"), f"{where}.content")
        elif kind == "function_call":
            call = {"id": item.get("call_id") or item.get("id") or new_id("call_"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments") or "{}"}}
            if not isinstance(call["function"]["name"], str) or not call["function"]["name"]:
                raise APIError(f"{where}.name: a function_call item needs the function's name", param=f"{where}.name")
            last = messages[-1] if messages else None
            if last is None or last["role"] != "assistant":
                last = {"role": "assistant", "content": None}
                if reasoning is not None:
                    last["reasoning_content"], reasoning = reasoning, None
                messages.append(last)
            last.setdefault("tool_calls", []).append(call)
        elif kind == "function_call_output":
            if not item.get("call_id"):
                raise APIError(f"{where}.call_id: a function_call_output item needs the call_id it answers",
                               param=f"{where}.call_id")
            messages.append({"role": "tool", "tool_call_id": item["call_id"],
                             "content": _text_of(item.get("output"), f"{where}.output")})
        else:
            raise APIError(f"{where}.type: {kind!r} items are not supported by this server (message, reasoning, "
                           "function_call, function_call_output)", param=f"{where}.type")
    return messages


def _chat_tool(tool: dict[str, Any], i: int) -> dict[str, Any]:
    """A Responses function tool (flat: type, name, parameters) as a chat tool; chat's nested form passes."""
    if tool.get("type", "function") != "function":
        raise APIError(f"tools[{i}].type: {tool.get('type')!r} tools are not supported by this server "
                       "(function tools only)", param=f"tools[{i}].type")
    if "function" in tool:
        return tool
    fn = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
    return {"type": "function", "function": fn}


def _chat_tool_choice(choice: str | dict[str, Any]) -> Any:
    if isinstance(choice, str):
        return choice
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    if choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        return choice
    raise APIError(f"tool_choice: {choice!r} is not supported (auto, none, required or "
                   "{\"type\": \"function\", \"name\": ...})", param="tool_choice")


def _response_format(text: Any) -> dict[str, Any] | None:
    fmt = text.format if text is not None else None
    if not fmt or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_schema":
        spec = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        if "schema" not in spec:
            raise APIError("text.format.schema: a json_schema format needs its schema", param="text.format.schema")
        return {"type": "json_schema", "json_schema": spec}
    if fmt.get("type") in ("json_object", "structural_tag"):
        return fmt
    raise APIError(f"text.format.type: must be text, json_object or json_schema, got {fmt.get('type')!r}",
                   param="text.format.type")


def _check_supported(body: ResponsesRequest) -> None:
    _check_values(body)
    for name, instead in _CHAT_SPELLINGS.items():
        if name in (body.model_extra or {}):
            hint = f"; use {instead}" if instead else ""
            raise APIError(f"{name}: not a field of /v1/responses{hint}", param=name)
    if body.background:
        raise APIError("background: background responses are not supported by this server", param="background")
    for name, what in (("conversation", "conversations"), ("prompt", "stored prompt templates")):
        if (body.model_extra or {}).get(name) is not None:
            raise APIError(f"{name}: {what} are not supported by this server (use previous_response_id or "
                           "input)", param=name)


def _check_values(body: ResponsesRequest) -> None:
    """What OpenAI refuses and the request model lets through (its bounds are chat's, or none)."""
    if body.temperature is not None and body.temperature > 2:
        raise APIError(f"temperature: must be between 0 and 2, got {body.temperature}", param="temperature")
    for i, name in enumerate(body.include or []):
        if name not in _INCLUDABLE:
            raise APIError(f"include[{i}]: {name!r} is not a value include takes (one of "
                           f"{', '.join(sorted(_INCLUDABLE))})", param=f"include[{i}]")
    options = (body.model_extra or {}).get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise APIError("stream_options: must be an object (e.g. {\"include_obfuscation\": false})",
                       param="stream_options")
    if options is not None and not body.stream:
        raise APIError("stream_options: only allowed when stream is true", param="stream_options")
    _check_metadata(body.metadata)


def _check_metadata(metadata: dict[str, Any] | None) -> None:
    """OpenAI's bounds: 16 pairs at most, string keys of up to 64 characters, string values of up to 512."""
    if metadata is None:
        return
    if len(metadata) > 16:
        raise APIError(f"metadata: at most 16 pairs, got {len(metadata)}", param="metadata")
    for key, value in metadata.items():
        if len(key) > 64:
            raise APIError(f"metadata: key {key[:16]!r}... is longer than 64 characters", param="metadata")
        if not isinstance(value, str) or len(value) > 512:
            raise APIError(f"metadata.{key}: must be a string of at most 512 characters", param=f"metadata.{key}")


def wants_logprobs(body: ResponsesRequest) -> bool:
    """The answer's logprobs are shown where `include` asks for them (as OpenAI and vLLM: top_logprobs alone
    only says how many alternatives)."""
    return _LOGPROBS in (body.include or [])


def answer_logprobs(state: ServerState, chat_plan: Any, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The logprob entries of the answer's tokens (the streamed ones, whole)."""
    feed = _AnswerLogprobs.for_plan(state, chat_plan)
    feed.feed(meta)
    return feed.take()


def chat_request(state: ServerState, body: ResponsesRequest, response_id: str,
                 earlier: list[dict[str, Any]]) -> tuple[ChatCompletionRequest, list[dict[str, Any]]]:
    """(the chat request that runs this response, the conversation without instructions)."""
    _check_supported(body)
    conversation = earlier + input_messages(body.input)
    if not conversation:
        raise APIError("input: must hold at least one message or item", param="input")
    messages = ([{"role": "system", "content": body.instructions}] if body.instructions else []) + conversation
    tools = [_chat_tool(t, i) for i, t in enumerate(body.tools)]
    extras = {k: v for k, v in (body.model_extra or {}).items() if k not in _RESPONSES_ONLY}
    data: dict[str, Any] = {
        **extras, "model": body.model, "messages": messages, "stream": body.stream,
        "max_tokens": body.max_output_tokens, "temperature": body.temperature, "top_p": body.top_p,
        "tools": tools or None, "parallel_tool_calls": body.parallel_tool_calls and body.max_tool_calls != 1,
        "response_format": _response_format(body.text), "reasoning": body.reasoning,
        "chat_template_kwargs": body.chat_template_kwargs, "request_id": response_id, "user": body.user}
    if wants_logprobs(body):
        data.update(logprobs=True, top_logprobs=body.top_logprobs or 0)
    if tools or body.tool_choice not in ("auto", "none"):  # chat refuses a tool_choice without tools
        data["tool_choice"] = _chat_tool_choice(body.tool_choice)
    try:
        return ChatCompletionRequest.model_validate({k: v for k, v in data.items() if v is not None}), conversation
    except ValidationError as e:
        first = e.errors()[0]
        where = _responses_name(loc_fields(first["loc"]))
        raise APIError(f"{where}: {first['msg']}", param=where) from e


# ---------------------------------------------------------------- truncation "auto"

def answer_room(body: ResponsesRequest, context_length: int) -> int:
    """The tokens truncation "auto" leaves for the answer: max_output_tokens, else DEFAULT_ANSWER_ROOM (a
    quarter of the context at most)."""
    return body.max_output_tokens or min(DEFAULT_ANSWER_ROOM, context_length // 4)


def _droppable_turns(messages: list[Any]) -> list[list[int]]:
    """The indices of the conversation's messages truncation may drop, oldest turn first: a turn is a user
    message and what answers it (assistant replies, tool calls and their results), so what is kept still
    starts at a user message and alternates (Gemma's and Mistral's templates refuse anything else); system
    messages stay (the instructions)."""
    turns: list[list[int]] = []
    for i, message in enumerate(messages):
        if message.role in ("system", "developer"):
            continue
        if message.role == "user" or not turns:
            turns.append([i])
        else:
            turns[-1].append(i)
    return turns


def fitted(state: ServerState, chat: ChatCompletionRequest, room: int) -> ChatCompletionRequest:
    """truncation "auto", OpenAI's way: the fewest of the oldest turns dropped, whole, so that the templated
    prompt (instructions and tools kept) leaves `room` tokens of the context for the answer. Never a cut inside
    a message (vLLM's truncate_prompt_tokens would cut the system turn off the front); a 400 where even the
    last turn does not fit."""
    if chat.input_ids is not None:  # SGLang's prompt ids: the messages do not make the prompt
        return chat
    _, tools = tool_mode(chat)
    context, turns = state.engine.context_length, _droppable_turns(chat.messages)

    def without(k: int) -> ChatCompletionRequest:
        dropped = {i for turn in turns[:k] for i in turn}
        return chat.model_copy(update={"messages": [m for i, m in enumerate(chat.messages) if i not in dropped]})

    def fits(k: int) -> bool:
        try:
            return len(chat_prompt(state, without(k), tools)[2]) + room <= context
        except APIError:  # a template that refuses what is left (the whole conversation's error is the user's)
            if k == 0:
                raise
            return False

    if fits(0):
        return chat
    last = max(len(turns) - 1, 0)
    if not fits(last):
        tokens = len(chat_prompt(state, without(last), tools)[2])
        raise APIError(f"input: truncation \"auto\" dropped every earlier item, but the instructions, tools and "
                       f"last input item take {tokens} tokens, which with the {room} kept for the answer "
                       f"(max_output_tokens; by default {DEFAULT_ANSWER_ROOM} or a quarter of the context) is more "
                       f"than the model's context length of {context} tokens", param="input")
    low, high = 1, last  # the fewest turns to drop: fits(high), not fits(low - 1); a prompt shrinks as k grows
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if fits(mid) else (mid + 1, high)
    return without(high)


def _responses_name(loc: list[str]) -> str:
    """A chat field's name as this request spelled it (response_format.json_schema.schema: text.format.schema,
    tools.0.function.name: tools[0].name)."""
    if loc[:2] == ["response_format", "json_schema"]:
        loc = ["text", "format"] + loc[2:]
    elif loc[:1] == ["response_format"]:
        loc = ["text", "format"] + loc[1:]
    elif loc[:1] in (["max_tokens"], ["max_completion_tokens"]):
        loc = ["max_output_tokens"] + loc[1:]
    elif loc[:1] == ["messages"]:
        loc = ["input"]
    elif loc[:1] == ["tools"] and len(loc) > 1 and loc[1].isdigit():
        loc = [f"tools[{loc[1]}]"] + [part for part in loc[2:] if part != "function"]
    return ".".join(loc)


def _responses_param(name: str | None) -> str | None:
    return _responses_name(name.replace("[", ".").replace("]", "").split(".")) if name else name


def _responses_params(names: dict[str, str]) -> dict[str, str]:
    """Each of a chat plan's field names (ours -> the chat request's) as this request spells it."""
    return {ours: _responses_param(theirs) or theirs for ours, theirs in names.items()}


def _renamed(e: APIError) -> APIError:
    """A chat error under this request's names (its message starts with the name it gives)."""
    param = _responses_param(e.param)
    message = e.message
    if param != e.param and e.param and message.startswith(f"{e.param}"):
        message = param + message[len(e.param):]
    return APIError(message, e.status, param=param, type=e.type, code=e.code, headers=e.headers)


# ---------------------------------------------------------------- answer -> output items

@dataclass
class OutputItems:
    """A response's output items in order, built whole or piece by piece as a stream goes."""

    items: list[dict[str, Any]] = field(default_factory=list)

    def add_reasoning(self) -> dict[str, Any]:
        return self._add({"id": new_id("rs_"), "type": "reasoning", "summary": [],
                          "content": [{"type": "reasoning_text", "text": ""}], "status": "in_progress"})

    def add_message(self) -> dict[str, Any]:
        return self._add({"id": new_id("msg_"), "type": "message", "role": "assistant", "status": "in_progress",
                          "content": [{"type": "output_text", "text": "", "annotations": [], "logprobs": []}]})

    def add_call(self, call_id: str, name: str) -> dict[str, Any]:
        return self._add({"id": new_id("fc_"), "type": "function_call", "call_id": call_id, "name": name,
                          "arguments": "", "status": "in_progress"})

    def _add(self, item: dict[str, Any]) -> dict[str, Any]:
        self.items.append(item)
        return item

    def finish(self, status: str) -> None:
        for item in self.items:
            item["status"] = _item_status(item, status)

    def assistant_message(self) -> dict[str, Any]:
        """The answer as a chat message, for the stored conversation."""
        message: dict[str, Any] = {"role": "assistant", "content": None}
        for item in self.items:
            if item["type"] == "reasoning":
                message["reasoning_content"] = item["content"][0]["text"]
            elif item["type"] == "message":
                message["content"] = item["content"][0]["text"]
            else:
                message.setdefault("tool_calls", []).append(
                    {"id": item["call_id"], "type": "function",
                     "function": {"name": item["name"], "arguments": item["arguments"]}})
        return message


def _text(item: dict[str, Any]) -> str:
    return item["content"][0]["text"] if item["type"] in ("reasoning", "message") else item["arguments"]


def whole_output(choice: dict[str, Any], max_calls: int | None,
                 logprobs: list[dict[str, Any]] | None = None) -> OutputItems:
    """The output items of a finished chat choice; `logprobs`: the answer's tokens' entries, for its text
    (where the answer is text alone: beside tool calls the text's tokens are not told apart from theirs)."""
    message, out = choice["message"], OutputItems()
    if message.get("reasoning_content"):
        out.add_reasoning()["content"][0]["text"] = message["reasoning_content"]
    calls = (message.get("tool_calls") or [])[:max_calls]
    if message.get("content") or not calls:
        part = out.add_message()["content"][0]
        part["text"] = message.get("content") or ""
        part["logprobs"] = list(logprobs or []) if not message.get("tool_calls") else []
    for call in calls:
        out.add_call(call["id"], call["function"]["name"])["arguments"] = call["function"]["arguments"]
    return out


def _outcome(meta: dict[str, Any]) -> tuple[str, dict[str, Any] | None, dict[str, Any] | None]:
    """(status, incomplete_details, error) of a finished answer. An abort (abort_request, a stop_regex
    timeout, a shutdown) is "cancelled", as vLLM's, with its reason in `error` (OpenAI's incomplete_details
    has no reason for it); "server_error" is the only code of OpenAI's list that fits."""
    reason = meta.get("finish_reason") or {}
    if reason.get("type") == "length":
        return "incomplete", {"reason": "max_output_tokens"}, None
    if reason.get("type") == "abort":
        return "cancelled", None, {"code": "server_error",
                                   "message": reason.get("message") or "the request was aborted"}
    return "completed", None, None


def _item_status(item: dict[str, Any], status: str) -> str:
    """An output item's status once the response has `status`: a message the answer did not finish is
    "incomplete" (its type allows in_progress, completed or incomplete, not "cancelled"); other items are whole."""
    if item["type"] != "message" or status == "completed":
        return "completed"
    return "incomplete"


def _usage(meta: dict[str, Any]) -> dict[str, Any]:
    prompt, output = meta.get("prompt_tokens", 0), meta.get("completion_tokens", 0)
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": meta.get("cached_tokens", 0)},
            "output_tokens": output, "output_tokens_details": {"reasoning_tokens": meta.get("reasoning_tokens", 0)},
            "total_tokens": prompt + output}


@dataclass
class ResponsePlan:
    """What one /v1/responses call runs and answers with."""

    response_id: str
    body: ResponsesRequest
    chat: ChatCompletionRequest
    conversation: list[dict[str, Any]]
    created_at: int
    model: str

    def skeleton(self) -> dict[str, Any]:
        """The response object before any output (the request's settings echoed, as OpenAI's)."""
        body = self.body
        return {"id": self.response_id, "object": "response", "created_at": self.created_at,
                "status": "in_progress", "background": False, "error": None, "incomplete_details": None,
                "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
                "max_tool_calls": body.max_tool_calls, "model": self.model, "output": [],
                "parallel_tool_calls": body.parallel_tool_calls, "previous_response_id": body.previous_response_id,
                "reasoning": {"effort": (body.reasoning or {}).get("effort"),
                              "summary": (body.reasoning or {}).get("summary")},
                "store": body.store, "temperature": body.temperature, "top_p": body.top_p,
                "top_logprobs": body.top_logprobs,
                "text": {"format": (body.text.format if body.text and body.text.format else {"type": "text"})},
                "tool_choice": body.tool_choice, "tools": body.tools, "truncation": body.truncation,
                "usage": None, "user": body.user, "metadata": body.metadata or {}}

    def finished(self, state: ServerState, output: OutputItems, meta: dict[str, Any]) -> dict[str, Any]:
        """The final response object; stored when the request asks."""
        status, incomplete, error = _outcome(meta)
        output.finish(status)
        response = {**self.skeleton(), "status": status, "incomplete_details": incomplete, "error": error,
                    "output": output.items, "usage": _usage(meta)}
        if status == "completed":
            response["completed_at"] = now()
        if self.body.store:
            state.responses.put(self.response_id, StoredResponse(
                response, self.conversation + [output.assistant_message()], input_items(self.body.input)))
        return response


def plan_response(state: ServerState, body: ResponsesRequest) -> tuple[ResponsePlan, Any]:
    """(the plan, the chat plan that runs it)."""
    earlier: list[dict[str, Any]] = []
    if body.previous_response_id is not None:
        stored = state.responses.get(body.previous_response_id)
        if stored is None:
            raise APIError(f"previous_response_id: no stored response {body.previous_response_id!r}", 404,
                           param="previous_response_id")
        earlier = [dict(m) for m in stored.conversation]
    response_id, created = body.request_id or new_id("resp_"), now()
    chat, conversation = chat_request(state, body, response_id, earlier)
    warn_unknown(chat, "/v1/responses")
    try:
        if body.truncation == "auto":  # the stored conversation stays whole: each turn truncates afresh
            chat = fitted(state, chat, answer_room(body, state.engine.context_length))
        chat_plan = plan_chat(state, chat)
    except APIError as e:
        raise _renamed(e) from e
    plan = ResponsePlan(response_id, body, chat, conversation, created, body.model)
    # the engine's errors (a grammar that fails to compile, a context overflow) named as this request names them
    chat_plan.field_names = _responses_params(chat_plan.field_names)
    if chat_plan.constraints is not None:
        chat_plan.constraints.names = _responses_params(chat_plan.constraints.names)
    return plan, chat_plan


# ---------------------------------------------------------------- routes

@router.post("/v1/responses")
async def create_response(body: ResponsesRequest, request: Request) -> Response:
    state = _state(request)
    plan, chat_plan = await run_in_threadpool(plan_response, state, body)  # templates, tokenizers: off the loop
    if body.stream:
        first, rest = await open_stream(request, state.engine, start_chat(state, chat_plan, stream=True),
                                        [chat_plan.rid])
        events = ResponseEvents(plan, state, chat_plan)
        return StreamingResponse(stream_with_abort(state.engine, [chat_plan.rid], events.run(first, rest),
                                                   events.error_events),
                                 media_type="text/event-stream")
    result = await call_until_disconnect(request, state.engine, start_chat(state, chat_plan, stream=False),
                                         [chat_plan.rid])
    out = engine_outputs(result)[0]
    choice, meta = chat_choice(state, chat_plan, 0, out), out.get("meta_info", {})
    logprobs = answer_logprobs(state, chat_plan, meta) if wants_logprobs(body) else None
    return JSONResponse(plan.finished(state, whole_output(choice, body.max_tool_calls, logprobs), meta))


def _stored(state: ServerState, response_id: str) -> StoredResponse:
    stored = state.responses.get(response_id)
    if stored is None:
        raise APIError(f"No response found with id {response_id!r}", 404, param="response_id")
    return stored


@router.get("/v1/responses/{response_id}")
async def retrieve_response(response_id: str, request: Request) -> dict[str, Any]:
    return _stored(_state(request), response_id).response


@router.get("/v1/responses/{response_id}/input_items")
async def list_input_items(response_id: str, request: Request, limit: int = 20, order: str = "desc",
                           after: str | None = None) -> dict[str, Any]:
    """The stored response's input items, OpenAI's list: `limit` (1-100) of them in `order` (desc: the last
    item first), from the one after `after`."""
    if not 1 <= limit <= 100:
        raise APIError(f"limit: must be between 1 and 100, got {limit}", param="limit")
    if order not in ("asc", "desc"):
        raise APIError(f"order: must be 'asc' or 'desc', got {order!r}", param="order")
    items = _stored(_state(request), response_id).input_items
    items = items if order == "asc" else items[::-1]
    if after is not None:
        at = next((i for i, item in enumerate(items) if item["id"] == after), None)
        if at is None:
            raise APIError(f"after: no input item {after!r} in response {response_id!r}", param="after")
        items = items[at + 1:]
    page = items[:limit]
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit}


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, request: Request) -> dict[str, Any]:
    state = _state(request)
    _stored(state, response_id)
    state.responses.delete(response_id)
    return {"id": response_id, "object": "response.deleted", "deleted": True}


@router.post("/v1/responses/{response_id}/cancel")
async def cancel_response(response_id: str, request: Request) -> dict[str, Any]:
    """OpenAI's cancel is for background responses, which this server does not run: every stored response has
    already finished (vLLM's answer for one that is not queued or in progress: a 400). Unknown: a 404."""
    _stored(_state(request), response_id)
    raise APIError(f"response_id: cannot cancel response {response_id!r}: it has finished, and only background "
                   "responses can be cancelled, which this server does not support", param="response_id")


# ---------------------------------------------------------------- streaming

def _event(kind: str, seq: int, **fields: Any) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, 'sequence_number': seq, **fields}, ensure_ascii=False)}\n\n"


class ResponseEvents:
    """Turns the chat stream's deltas (reasoning, content, tool calls) into Responses events: each piece
    opens its output item the first time it comes, the previous item closes, and the final response follows."""

    def __init__(self, plan: ResponsePlan, state: ServerState, chat_plan: Any) -> None:
        self.plan, self.state = plan, state
        self.stream = new_choice_stream(state, chat_plan, hold_reasoning=False)
        self.output = OutputItems()
        self.open: dict[str, Any] | None = None
        self.calls: dict[int, dict[str, Any]] = {}  # the chat stream's call index -> its function_call item
        self.seq = 0
        self.logprobs = _AnswerLogprobs.for_plan(state, chat_plan) if wants_logprobs(plan.body) else None

    def event(self, kind: str, **fields: Any) -> str:
        self.seq += 1
        return _event(kind, self.seq - 1, **fields)

    def error_events(self, exc: BaseException) -> list[str]:
        """A failure after the stream began: Responses' `error` event, numbered on from the events before it
        (it also carries the `error` object, so OpenAI's SDK raises it as it does chat's)."""
        err = to_api_error(exc)
        body = {"message": err.message, "type": err.type, "param": err.param, "code": err.code or err.status}
        return [self.event("error", message=err.message, code=err.code or err.status, param=err.param,
                           error=body)]

    async def run(self, first: dict[str, Any] | None, rest: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
        yield self.event("response.created", response=self.plan.skeleton())
        yield self.event("response.in_progress", response=self.plan.skeleton())
        meta: dict[str, Any] = {}
        async for item in chained(first, rest):
            meta = item.get("meta_info", {})
            if self.logprobs is not None:
                self.logprobs.feed(meta)
            for delta in self.stream.feed(item.get("text", "")):
                for event in self._on_delta(delta):
                    yield event
            raise_if_failed(meta)
            reason, _ = finish_reason_of(meta)
            if reason is not None:
                deltas, _ = self.stream.finish(cut=reason == "length")
                for delta in deltas:
                    for event in self._on_delta(delta):
                        yield event
                break
        if not any(item["type"] != "reasoning" for item in self.output.items):  # as whole: an answer, if empty
            for event in self._append("message", ""):
                yield event
        for event in self._close(_outcome(meta)[0]):
            yield event
        response = self.plan.finished(self.state, self.output, meta)
        kind = {"incomplete": "response.incomplete", "cancelled": "response.failed"}.get(response["status"],
                                                                                      "response.completed")
        yield self.event(kind, response=response)

    def _on_delta(self, delta: dict[str, Any]) -> list[str]:
        events: list[str] = []
        if delta.get("reasoning_content"):
            events += self._append("reasoning", delta["reasoning_content"])
        if delta.get("content"):
            events += self._append("message", delta["content"])
        for call in delta.get("tool_calls") or []:
            events += self._call_delta(call)
        return events

    def _append(self, kind: str, text: str) -> list[str]:
        events: list[str] = []
        if self.open is None or self.open["type"] != kind:
            events += self._close()
            item = self.output.add_reasoning() if kind == "reasoning" else self.output.add_message()
            events += self._opened(item)
            part = {"type": "reasoning_text", "text": ""} if kind == "reasoning" else \
                {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            events.append(self.event("response.content_part.added", item_id=item["id"], output_index=self._index(item),
                                     content_index=0, part=part))
        item = self.open
        assert item is not None
        if not text:
            return events
        item["content"][0]["text"] += text
        name = "response.reasoning_text.delta" if kind == "reasoning" else "response.output_text.delta"
        extra = {} if kind == "reasoning" else {"logprobs": self._text_logprobs(item)}
        events.append(self.event(name, item_id=item["id"], output_index=self._index(item), content_index=0,
                                 delta=text, **extra))
        return events

    def _text_logprobs(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        """The answer tokens' entries come so far, for this text delta (and its item's whole list)."""
        if self.logprobs is None or self.calls:  # beside tool calls the text's tokens are not told apart
            return []
        entries = self.logprobs.take()
        item["content"][0]["logprobs"].extend(entries)
        return entries

    def _call_delta(self, call: dict[str, Any]) -> list[str]:
        events: list[str] = []
        index, fn = call.get("index", len(self.calls)), call.get("function") or {}
        if index not in self.calls:
            if self.plan.body.max_tool_calls is not None and len(self.calls) >= self.plan.body.max_tool_calls:
                return []
            events += self._close()
            self.calls[index] = self.output.add_call(call.get("id") or new_id("call_"), fn.get("name", ""))
            events += self._opened(self.calls[index])
        item = self.calls[index]
        if fn.get("arguments"):
            item["arguments"] += fn["arguments"]
            events.append(self.event("response.function_call_arguments.delta", item_id=item["id"],
                                     output_index=self._index(item), delta=fn["arguments"]))
        return events

    def _opened(self, item: dict[str, Any]) -> list[str]:
        self.open = item
        added = {**item, "content": []} if "content" in item else dict(item)  # its part comes next, on its own
        return [self.event("response.output_item.added", output_index=self._index(item), item=added)]

    def _index(self, item: dict[str, Any]) -> int:
        return next(i for i, it in enumerate(self.output.items) if it is item)

    def _close(self, status: str = "completed") -> list[str]:
        item, self.open = self.open, None
        if item is None:
            return []
        at, text = self._index(item), _text(item)
        item["status"] = _item_status(item, status)
        if item["type"] == "function_call":
            events = [self.event("response.function_call_arguments.done", item_id=item["id"], output_index=at,
                                 name=item["name"], arguments=text)]
        else:
            done = "response.reasoning_text.done" if item["type"] == "reasoning" else "response.output_text.done"
            extra = {"logprobs": item["content"][0]["logprobs"]} if item["type"] == "message" else {}
            events = [self.event(done, item_id=item["id"], output_index=at, content_index=0, text=text, **extra),
                      self.event("response.content_part.done", item_id=item["id"], output_index=at, content_index=0,
                                 part=dict(item["content"][0]))]
        return events + [self.event("response.output_item.done", output_index=at, item=dict(item))]


@dataclass
class _AnswerLogprobs:
    """The answer tokens' logprob entries: each engine event carries the entries of the output tokens it
    shows (cumulative); those past the reasoning (its markers included) wait here for the next text delta.
    The end token, not text, has none; entries no delta took (a token cut by a stop string) are dropped."""

    names: Any  # names logprob tokens (the tokenizer)
    k: int  # top entries shown per token
    eos: frozenset[int]
    seen: int = 0
    pending: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def for_plan(cls, state: ServerState, chat_plan: Any) -> "_AnswerLogprobs":
        return cls(chat_plan.token_names, chat_plan.top_logprobs_num, frozenset(eos_ids(state)))

    def feed(self, meta: dict[str, Any]) -> None:
        pairs = logprob_pairs(meta, self.seen, self.k) or []
        start = max(0, meta.get("reasoning_tokens", 0) - self.seen)
        self.pending += chat_logprob_entries(self.names, [p for p in pairs[start:] if p[0][1] not in self.eos])
        self.seen += len(pairs)

    def take(self) -> list[dict[str, Any]]:
        entries, self.pending = self.pending, []
        return entries
