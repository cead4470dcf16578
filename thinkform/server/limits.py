"""Request body size limit (--max-request-body-bytes): a larger body is a 413 before anything parses it."""
from __future__ import annotations

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from thinkform.server.errors import error_body


class BodyTooLarge(Exception):
    pass


def too_large_response(limit: int) -> JSONResponse:
    return JSONResponse(error_body(f"request body is larger than this server's limit of {limit} bytes "
                                   "(--max-request-body-bytes)", param="body", code="request_too_large"),
                        status_code=413)


class BodyLimitMiddleware:
    """Plain ASGI. A declared Content-Length over the limit is refused unread; otherwise the body is
    read here (the handlers read it whole anyway) with a running count, so a chunked upload cannot
    slip past, then replayed to the app. Later receive() calls go to the server, so disconnects
    are still seen."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await too_large_response(self.max_bytes)(scope, receive, send)
            return
        try:
            body, more = await self._read(receive)
        except BodyTooLarge:
            await too_large_response(self.max_bytes)(scope, receive, send)
            return
        await self.app(scope, _replay(body, more, receive), send)

    async def _read(self, receive: Receive) -> tuple[bytes, list[Message]]:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks), [message]  # e.g. http.disconnect: hand it on
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise BodyTooLarge()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), []


def _replay(body: bytes, more: list[Message], receive: Receive) -> Receive:
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}, *more]

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
