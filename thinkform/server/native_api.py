"""Native (SGLang) routes: /generate, /health, /get_model_info, /get_server_info, /abort_request."""
from __future__ import annotations

from typing import Any, AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from thinkform.server.errors import APIError, error_body
from thinkform.engine.requests import RequestLimits
from thinkform.server.params import check_max_tokens, validate_constraints
from thinkform.server.protocol import AbortRequest, GenerateRequest, warn_unknown
from thinkform.server.state import ServerState, new_id
from thinkform.server.streaming import (SSE_DONE, ClientGone, call_until_disconnect, open_stream, sse,
                                        stream_with_abort)

router = APIRouter()

_CONSTRAINT_KEYS = ("json_schema", "regex", "ebnf", "structural_tag")


def _state(request: Request) -> ServerState:
    return request.app.state.thinkform


def _check_sampling_params(params: dict[str, Any], max_n: int | None, limits: RequestLimits) -> None:
    """Constraints are validated here so a bad one is a 400 naming its field before any work."""
    try:
        validate_constraints({k: params[k] for k in _CONSTRAINT_KEYS if params.get(k) is not None}, limits)
    except APIError as e:
        e.param = f"sampling_params.{e.param}" if e.param else "sampling_params"
        raise
    n = params.get("n", 1)
    if max_n is not None and isinstance(n, int) and n > max_n:
        raise APIError(f"n={n} is larger than this server's limit of {max_n}", param="sampling_params.n")
    max_new = params.get("max_new_tokens")
    if isinstance(max_new, int):
        check_max_tokens(max_new, limits, "sampling_params.max_new_tokens")


def _rids(body: GenerateRequest) -> tuple[str | list[str], list[str]]:
    texts = body.text if body.text is not None else body.input_ids
    batch = len(texts) if isinstance(texts, list) and texts and not isinstance(texts[0], int) else None
    if body.rid is not None:
        if batch is not None and (not isinstance(body.rid, list) or len(body.rid) != batch):
            raise APIError("rid must be a list with one id per prompt for batched input", param="rid")
        return body.rid, body.rid if isinstance(body.rid, list) else [body.rid]
    if batch is None:
        rid = new_id("")
        return rid, [rid]
    rids = [new_id("") for _ in range(batch)]
    return rids, rids


@router.post("/generate")
async def generate(body: GenerateRequest, request: Request) -> Response:
    state = _state(request)
    warn_unknown(body, "/generate")
    if (body.text is None) == (body.input_ids is None):
        raise APIError("give exactly one of text or input_ids", param="text")
    if isinstance(body.text, list) and not body.text or isinstance(body.input_ids, list) and not body.input_ids:
        raise APIError("the prompt list must not be empty", param="text" if body.text is not None else "input_ids")
    params = body.sampling_params or {}
    for p in params if isinstance(params, list) else [params]:
        _check_sampling_params(p, state.max_n, state.limits)
    rid, rids = _rids(body)
    call = state.engine.async_generate(
        prompt=body.text, input_ids=body.input_ids, sampling_params=body.sampling_params,
        require_reasoning=body.require_reasoning, stream=body.stream, rid=rid,
        return_logprob=body.return_logprob, top_logprobs_num=body.top_logprobs_num,
        logprob_start_len=body.logprob_start_len, return_text_in_logprobs=body.return_text_in_logprobs)
    if body.stream:
        first, rest = await open_stream(call)
        return StreamingResponse(stream_with_abort(state.engine, rids, _events(first, rest)),
                                 media_type="text/event-stream")
    try:
        result = await call_until_disconnect(request, state.engine, call, rids)
    except ClientGone:
        return Response(status_code=499)
    return JSONResponse(result)


async def _events(first: dict[str, Any] | None, rest: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    if first is not None:
        yield sse(first)
    async for chunk in rest:
        yield sse(chunk)
    yield SSE_DONE


@router.get("/health")
async def health(request: Request) -> Response:
    if _state(request).engine.is_healthy():
        return Response(status_code=200)
    return JSONResponse(error_body("engine is not healthy", "service_unavailable", code=503), status_code=503)


@router.get("/health_generate")
async def health_generate(request: Request) -> Response:
    return await health(request)


@router.get("/get_model_info")
async def get_model_info(request: Request) -> dict[str, Any]:
    state = _state(request)
    args = getattr(state.engine, "args", None)
    return {"model_path": getattr(args, "model_path", None) or state.model_name,
            "tokenizer_path": getattr(args, "tokenizer_path", None) or getattr(args, "model_path", None),
            "served_model_name": state.model_name, "is_generation": True,
            "context_length": state.engine.context_length,
            "reasoning_parser": getattr(args, "reasoning_parser", None),
            "tool_call_parser": state.tool_parser.name}


@router.get("/get_server_info")
async def get_server_info(request: Request) -> dict[str, Any]:
    return _state(request).engine.server_info()


@router.post("/abort_request")
async def abort_request(body: AbortRequest, request: Request) -> dict[str, Any]:
    aborted = _state(request).engine.abort(body.rid)
    return {"rid": body.rid, "aborted": bool(aborted)}
