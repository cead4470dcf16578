"""Native (SGLang) routes: /generate, /health, /ping, /get_model_info, /get_server_info (and their newer
names /model_info, /server_info), /get_weight_version, /get_load, /abort_request, /flush_cache,
/separate_reasoning, /parse_function_call; SGLang's weight-update and memory-release routes answer that they are
not supported."""
from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from thinkform.args import SECRET_ARGS
from thinkform.engine.engine import SGLANG_IGNORED_KEYWORDS, SGLANG_NEUTRAL_KEYWORDS, refuse_sglang_only
from thinkform.engine.errors import ContextLengthError, EngineOverloaded, RequestFieldError
from thinkform.engine.sampling_params import SamplingParamError
from thinkform.server.errors import APIError, error_body
from thinkform.engine.requests import RequestLimits
from thinkform.server.params import check_max_tokens, refuse_hidden_states, take_thinking_budget, validate_constraints
from thinkform.reasoning import get_markers, split_reasoning
from thinkform.server.protocol import (AbortRequest, GenerateRequest, ParseFunctionCallRequest,
                                       SeparateReasoningRequest, warn_unknown)
from thinkform.server.tools import get_tool_call_parser, tool_name
from thinkform.server.state import ServerState, new_id
from thinkform.server.streaming import (SSE_DONE, call_until_disconnect, open_stream, sse,
                                        stream_with_abort)

router = APIRouter()
_SGLANG_KEYWORDS = frozenset(SGLANG_NEUTRAL_KEYWORDS) | SGLANG_IGNORED_KEYWORDS

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
    """(the rid for the engine, the ids to abort when the client goes). A string rid with a batch goes to
    the engine as it is (SGLang: it expands it into per-item ids); a list needs one id per prompt."""
    texts = body.text if body.text is not None else body.input_ids
    batch = len(texts) if isinstance(texts, list) and texts and not isinstance(texts[0], int) else None
    if isinstance(body.rid, list):
        if batch is not None and len(body.rid) != batch:
            raise APIError(f"rid: a list needs one id per prompt ({batch}), got {len(body.rid)}", param="rid")
        return body.rid, body.rid
    if body.rid:  # a batch's items are rid_0, rid_1, ... (SGLang's expansion, done by the engine)
        return body.rid, [f"{body.rid}_{i}" for i in range(batch)] if batch is not None else [body.rid]
    if batch is None:
        rid = new_id("")
        return rid, [rid]
    rids = [new_id("") for _ in range(batch)]
    return rids, rids


def _with_thinking_budget(params: dict[str, Any] | list[dict[str, Any]] | None,
                          budget: int | None) -> dict[str, Any] | list[dict[str, Any]] | None:
    """SGLang's top-level max_thinking_tokens, put into every prompt's sampling params as our
    max_reasoning_tokens (copies: the request's dicts stay as they came)."""
    if budget is None:
        return params
    each = [dict(p) for p in (params if isinstance(params, list) else [params or {}])]
    for p in each:
        take_thinking_budget(p, budget, "max_thinking_tokens")
    return each if isinstance(params, list) else each[0]


def _check_generate(body: GenerateRequest, state: ServerState) -> None:
    if (body.text is None) == (body.input_ids is None):
        raise APIError("give exactly one of text or input_ids", param="text")
    if isinstance(body.text, list) and not body.text or isinstance(body.input_ids, list) and not body.input_ids:
        raise APIError("the prompt list must not be empty", param="text" if body.text is not None else "input_ids")
    refuse_hidden_states(body.return_hidden_states)
    # SGLang's fields for what thinkform does not do (lora_path, image_data, ...): a 400 unless they ask for nothing
    refuse_sglang_only({k: v for k, v in (body.model_extra or {}).items() if k in _SGLANG_KEYWORDS})
    params = body.sampling_params or {}
    for p in params if isinstance(params, list) else [params]:
        _check_sampling_params(p, state.max_n, state.limits)


@router.post("/generate")
@router.put("/generate", operation_id="generate_put")  # SGLang takes both
async def generate(body: GenerateRequest, request: Request) -> Response:
    state = _state(request)
    warn_unknown(body, "/generate", _SGLANG_KEYWORDS)
    _check_generate(body, state)
    rid, rids = _rids(body)
    call = _spelled(body, state.engine.async_generate(
        prompt=body.text, input_ids=body.input_ids,
        sampling_params=_with_thinking_budget(body.sampling_params, body.max_thinking_tokens),
        require_reasoning=body.require_reasoning, stream=body.stream, rid=rid,
        return_logprob=body.return_logprob, top_logprobs_num=body.top_logprobs_num,
        logprob_start_len=body.logprob_start_len, return_text_in_logprobs=body.return_text_in_logprobs,
        token_ids_logprob=body.token_ids_logprob))
    if body.stream:
        first, rest = await open_stream(request, state.engine, call, rids)
        return StreamingResponse(stream_with_abort(state.engine, rids, _events(first, rest)),
                                 media_type="text/event-stream")
    result = await call_until_disconnect(request, state.engine, call, rids)  # a client gone: the app's 499
    return JSONResponse(result)


async def _spelled(body: GenerateRequest, call: Any) -> Any:
    """The engine call; a field the engine names is named as this route spells it: a sampling param under
    `sampling_params.`, the prompt as `text` or `input_ids`."""
    try:
        return await call
    except RequestFieldError as e:
        if e.field == "prompt":
            e.field = "text" if body.text is not None else "input_ids"
        elif isinstance(e, (SamplingParamError, ContextLengthError)):
            e.field = f"sampling_params.{e.field}"
        raise


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
    return _unhealthy("engine is not healthy")


@router.get("/health_generate")
async def health_generate(request: Request) -> Response:
    """SGLang's deep check: a one-token request is served within the time-out. A loop busy with other work
    passes too where it is seen taking steps meanwhile (a long queue delays the probe's token, it does not
    make the server unhealthy); a loop that is alive but makes no progress fails."""
    state = _state(request)
    engine = state.engine
    if not engine.is_healthy():
        return _unhealthy("engine is not healthy")
    steps = _steps(engine)
    rid = new_id("HEALTH_CHECK_")
    try:
        await asyncio.wait_for(engine.async_generate(input_ids=[0], rid=rid, sampling_params={
            "max_new_tokens": 1, "temperature": 0}), state.health_generate_timeout_s)
        return Response(status_code=200)
    except EngineOverloaded:  # a full queue: is the loop working through it?
        await asyncio.sleep(min(1.0, state.health_generate_timeout_s))
    except asyncio.TimeoutError:
        engine.abort(rid)
    except Exception as e:  # noqa: BLE001 - whatever failed the probe's request is the answer
        return _unhealthy(f"a one-token request failed: {type(e).__name__}: {e}")
    if engine.is_healthy() and _steps(engine) > steps:
        return Response(status_code=200)
    return _unhealthy(f"no token and no engine step in {state.health_generate_timeout_s:g} s")


def _steps(engine: Any) -> int:
    return int(engine.get_server_info().get("steps", 0))


def _unhealthy(message: str) -> Response:
    return JSONResponse(error_body(message, "service_unavailable", code=503), status_code=503)


@router.get("/version")
async def version() -> dict[str, str]:
    from thinkform import __version__

    return {"version": __version__}


@router.get("/ping")
@router.post("/ping", operation_id="ping_post")  # vLLM takes both
async def ping() -> Response:
    """SGLang's (SageMaker) liveness probe of the HTTP server: 200, empty."""
    return Response(status_code=200)


@router.get("/get_model_info")
@router.get("/model_info", operation_id="model_info")  # SGLang's newer name
async def get_model_info(request: Request) -> dict[str, Any]:
    return _state(request).engine.get_model_info()


@router.get("/get_server_info")
@router.get("/server_info", operation_id="server_info")  # SGLang's newer name
async def get_server_info(request: Request) -> dict[str, Any]:
    state = _state(request)
    # the keys never shown, whatever the engine's info holds
    info = {k: v for k, v in state.engine.get_server_info().items() if k not in SECRET_ARGS}
    # the --tool-call-parser name as given (qwen25, as SGLang reports it, though it reads hermes' format), else
    # the format guessed from the chat template
    given = getattr(getattr(state.engine, "args", None), "tool_call_parser", None)
    return {**info, "tool_call_parser": given or state.tool_parser.name}


@router.get("/get_weight_version")
async def get_weight_version(request: Request) -> dict[str, Any]:
    return {"weight_version": _state(request).engine.get_model_info().get("weight_version", "default")}


# SGLang's routes that change the weights or free the GPU memory in place (RL training loops): thinkform serves
# the weights it loaded at start and holds its memory, so each is answered as SGLang answers one that failed
# (400, {"success": false, "message": ...}), the message naming the endpoint, with the usual error object beside
# it; never the bare 404 of a route that does not exist, never a pretended success.
_NOT_SUPPORTED = {
    "update_weights_from_disk": ("POST",),
    "update_weights_from_tensor": ("POST",),
    "update_weights_from_distributed": ("POST",),
    "init_weights_update_group": ("POST",),
    "release_memory_occupation": ("GET", "POST"),
    "resume_memory_occupation": ("GET", "POST"),
}
_WHY = {"weights": "it serves the weights it loaded at start (restart it with the new --model-path to change them)",
        "memory": "it keeps its model and KV cache in memory while it runs"}


def _not_supported(name: str) -> Any:
    why = _WHY["memory" if name.endswith("memory_occupation") else "weights"]
    message = f"/{name} is not supported by thinkform: {why}"

    async def endpoint() -> JSONResponse:
        body: dict[str, Any] = {"success": False, "message": message}
        if name.startswith("update_weights"):
            body["num_paused_requests"] = 0  # SGLang's update answer carries it; nothing was paused
        return JSONResponse({**body, **error_body(message, code=400)}, status_code=400)

    endpoint.__name__ = f"{name}_not_supported"
    return endpoint


for _name, _methods in _NOT_SUPPORTED.items():
    router.add_api_route(f"/{_name}", _not_supported(_name), methods=list(_methods), include_in_schema=False,
                         operation_id=f"{_name}_not_supported")

# SGLang's admin routes (its AuthLevel.ADMIN_OPTIONAL) that this server has: --admin-api-key guards them (app.py)
ADMIN_PATHS = frozenset({"/flush_cache", "/abort_request", *(f"/{name}" for name in _NOT_SUPPORTED)})


@router.post("/separate_reasoning")
async def separate_reasoning(body: SeparateReasoningRequest, request: Request) -> dict[str, str]:
    """SGLang's: {text, reasoning_parser} → {reasoning_text, text}, split as a request's output is (a family
    whose prompt opens the reasoning reads text with no start marker as reasoning up to the end marker)."""
    markers = _chosen(_state(request).markers, get_markers, body.reasoning_parser, "reasoning_parser")
    if markers is None:
        raise APIError("reasoning_parser: name one (this server was started without --reasoning-parser)",
                       param="reasoning_parser")
    if markers.reasoning_in_content:  # minimax-append-think: nothing is separated, the template's start restored
        return {"reasoning_text": "", "text": markers.start + body.text}
    reasoning, text = split_reasoning(body.text, markers, markers.starts_in_reasoning())
    return {"reasoning_text": reasoning or "", "text": text}


@router.post("/parse_function_call")
async def parse_function_call(body: ParseFunctionCallRequest, request: Request) -> dict[str, Any]:
    """SGLang's: {text, tools, tool_call_parser} → {normal_text, calls: [{tool_index, name, parameters}]}, the
    parameters as JSON text; as SGLang, a call of a function `tools` does not declare is left out."""
    parser = _chosen(_state(request).tool_parser, get_tool_call_parser, body.tool_call_parser, "tool_call_parser")
    index = {tool_name(tool): i for i, tool in reversed(list(enumerate(body.tools)))}
    normal, calls = parser.for_tools(body.tools).parse(body.text)
    return {"normal_text": normal, "calls": [{"tool_index": index[c.name], "name": c.name, "parameters": c.arguments}
                                             for c in calls if c.name in index]}


def _chosen(default: Any, lookup: Any, name: str | None, field: str) -> Any:
    """The server's own parser, or the one the request names (an unknown name: a 400 naming `field`)."""
    if name is None:
        return default
    try:
        return lookup(name)
    except ValueError as e:
        raise APIError(str(e), param=field) from None


@router.get("/get_load")
async def get_load(request: Request) -> list[dict[str, Any]]:
    """SGLang's load report, one entry per data-parallel rank (one here): requests and KV tokens in use."""
    info = _state(request).engine.get_server_info()
    running, waiting = info.get("running", 0), info.get("waiting", 0)
    return [{"dp_rank": 0, "num_reqs": running + waiting, "num_waiting_reqs": waiting,
             "num_tokens": info.get("kv_pages_used", 0) * info.get("page_size", 1), "ts_tic": time.perf_counter()}]


@router.post("/abort_request")
async def abort_request(body: AbortRequest, request: Request) -> Response:
    """SGLang's answer: 200 with an empty body, whether or not the request was still in flight."""
    if not body.rid and not body.abort_all:  # SGLang ignores it; here a body that aborts nothing is a 400
        raise APIError("rid: give the id of the request to abort, or abort_all: true", param="rid")
    _state(request).engine.abort_request(rid=body.rid or "", abort_all=body.abort_all)
    return Response(status_code=200)


FLUSHED = ("Cache flushed.\nPlease check backend logs for more details. "
           "(When there are running or waiting requests, the operation will not be performed.)\n")


@router.get("/flush_cache")
@router.post("/flush_cache", operation_id="flush_cache_post")
async def flush_cache(request: Request) -> Response:
    """SGLang's answer, plain text: 200 when flushed, 400 when requests in flight hold the caches. The
    engine waits for its loop, so the call leaves the event loop free meanwhile."""
    if await run_in_threadpool(_state(request).engine.flush_cache):
        return PlainTextResponse(FLUSHED)
    return PlainTextResponse("Cache not flushed: requests are running or waiting; try again when they end.\n",
                             status_code=400)
