"""SGLang's /tokenize and /detokenize (also under /v1): the served model's tokenizer, over HTTP."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError

from thinkform.server.errors import APIError
from thinkform.server.openai_api import chat_prompt, tool_mode
from thinkform.server.protocol import ChatCompletionRequest, DetokenizeRequest, TokenizeRequest
from thinkform.server.state import ServerState

router = APIRouter()


def _state(request: Request) -> ServerState:
    return request.app.state.thinkform


def _chat_ids(state: ServerState, body: TokenizeRequest) -> list[int]:
    """The ids /v1/chat/completions would give these messages (tools, chat_template_kwargs and the thinking
    switches included, as SGLang turns a tokenize request into a chat request)."""
    fields = {**(body.model_extra or {}), "messages": [m.model_dump(exclude_none=True) for m in body.messages or []]}
    try:
        chat = ChatCompletionRequest.model_validate(fields)
    except ValidationError as e:
        first = e.errors()[0]
        name = ".".join(str(p) for p in first.get("loc", ())) or "messages"
        raise APIError(f"{name}: {first.get('msg', 'invalid value')}", param=name) from e
    _, tools = tool_mode(chat)
    return chat_prompt(state, chat, tools)[2]


@router.post("/tokenize")
@router.post("/v1/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> dict[str, Any]:
    """SGLang's TokenizeResponse: tokens and count (lists for a list of prompts) and max_model_len (the
    context length, what a client checks a prompt against)."""
    state = _state(request)
    if (body.prompt is None) == (body.messages is None):
        raise APIError("give exactly one of prompt or messages", param="prompt")
    encode = state.engine.tokenizer.encode
    if body.messages is not None:
        tokens: Any = _chat_ids(state, body)
        count: Any = len(tokens)
    elif isinstance(body.prompt, str):
        tokens = encode(body.prompt, add_special_tokens=body.add_special_tokens)
        count = len(tokens)
    else:
        tokens = [encode(p, add_special_tokens=body.add_special_tokens) for p in body.prompt or []]
        count = [len(t) for t in tokens]
    out = {"tokens": tokens, "count": count, "max_model_len": state.engine.context_length}
    if body.return_token_strs:  # vLLM's: each token's own string
        convert = state.engine.tokenizer.convert_ids_to_tokens
        out["token_strs"] = convert(tokens) if count == len(tokens) else [convert(t) for t in tokens]
    return out


@router.post("/detokenize")
@router.post("/v1/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> dict[str, Any]:
    """SGLang's DetokenizeResponse: the text (a list of texts for a list of id lists)."""
    tokenizer = _state(request).engine.tokenizer
    batched = bool(body.tokens) and isinstance(body.tokens[0], list)
    lists = body.tokens if batched else [body.tokens]
    texts = []
    size = len(tokenizer)
    for i, ids in enumerate(lists):
        if any(not 0 <= t < size for t in ids):  # type: ignore[operator]
            raise APIError(f"tokens: token ids must be in [0, {size}) (the tokenizer's vocabulary)",
                           param=f"tokens.{i}" if batched else "tokens")
        try:
            texts.append(tokenizer.decode(ids, skip_special_tokens=body.skip_special_tokens))
        except (OverflowError, ValueError, TypeError, IndexError) as e:
            raise APIError(f"tokens: not ids of this model's vocabulary ({e})", param="tokens") from e
    text = texts if batched else texts[0]
    return {"text": text, "prompt": text}  # SGLang's key, and vLLM's
