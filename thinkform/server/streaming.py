"""Calling the engine from a handler: client disconnects abort the request, stream errors that
happen before the first chunk become ordinary 4xx answers, SSE framing."""
from __future__ import annotations

import asyncio
import inspect
import json
import logging
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable

from fastapi import Request

from thinkform.server.errors import APIError, error_body, to_api_error

logger = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.2


class ClientGone(Exception):
    """The client went away; the request was aborted."""


def abort_all(engine: Any, rids: Iterable[str]) -> None:
    for rid in rids:
        try:
            engine.abort(rid)
        except Exception:  # aborting a finished or unknown request is not an error worth a crash
            logger.debug("abort of %s failed", rid, exc_info=True)


async def call_until_disconnect(request: Request, engine: Any, call: Awaitable[Any], rids: list[str]) -> Any:
    """Await `call`; if the client disconnects first, abort its requests and raise ClientGone."""
    task = asyncio.ensure_future(call)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                logger.info("client disconnected; aborting %s", ", ".join(rids))
                abort_all(engine, rids)
                task.cancel()
                raise ClientGone()
    except asyncio.CancelledError:
        abort_all(engine, rids)
        task.cancel()
        raise


async def open_stream(request: Request, engine: Any, call: Any,
                      rids: list[str]) -> tuple[Any, AsyncIterator[dict[str, Any]]]:
    """Start a streaming engine call and take its first chunk, so errors raised before anything is
    generated surface here (as a 4xx) rather than inside the SSE body. Returns (first, rest). A client
    that leaves before it (queued, or its grammar compiling) aborts its requests at once (ClientGone),
    not when they are scheduled and prefilled."""
    async def first_chunk() -> tuple[Any, AsyncIterator[dict[str, Any]]]:
        stream = await call if inspect.isawaitable(call) else call
        iterator = stream.__aiter__()
        try:
            first = await iterator.__anext__()
        except StopAsyncIteration:
            first = None
        return first, iterator

    return await call_until_disconnect(request, engine, first_chunk(), rids)


def sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


SSE_DONE = "data: [DONE]\n\n"


def sse_error(exc: BaseException) -> str:
    err = to_api_error(exc)
    return sse(error_body(err.message, err.type, err.param, err.code or err.status))


def chat_error_events(exc: BaseException) -> list[str]:
    return [sse_error(exc), SSE_DONE]


async def stream_with_abort(engine: Any, rids: list[str], body: AsyncIterator[str],
                            error_events: Callable[[BaseException], list[str]] = chat_error_events
                            ) -> AsyncIterator[str]:
    """Wrap an SSE body: when the client goes away (the generator is cancelled or closed before its
    end), abort the engine requests; errors mid-stream become error events (an error, then [DONE])."""
    finished = False
    try:
        async for piece in body:
            yield piece
        finished = True
    except (asyncio.CancelledError, GeneratorExit):
        raise
    except Exception as exc:  # the response has started: report in-band
        finished = True
        abort_all(engine, rids)  # the stream's other samples (n > 1) have nobody left to read them
        if not isinstance(exc, APIError):
            logger.warning("stream failed: %s", exc)
        for event in error_events(exc):
            yield event
    finally:
        if not finished:
            logger.info("stream closed early; aborting %s", ", ".join(rids))
            abort_all(engine, rids)
