"""FastAPI application factory: routes, API-key check, error mapping (every error an OpenAI error object)."""
from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from thinkform.args import EngineArgs
from thinkform.engine.errors import EngineDead, EngineOverloaded
from thinkform.server import metrics, native_api, openai_api, responses_api, tokenize_api
from thinkform.server.errors import APIError, api_error_handler, error_body, http_error_handler, validation_handler
from thinkform.server.limits import BodyLimitMiddleware
from thinkform.server.metrics import ResponseCounter
from thinkform.server.state import ServerState
from thinkform.server.streaming import ClientGone
from thinkform.structured.spec import ConstraintError

# open without the key, as SGLang leaves them: health and readiness probes, Prometheus' scrape, CORS preflights
OPEN_PREFIXES = ("/health", "/ready", "/metrics")


def key_matches(given: str, expected: str) -> bool:
    """Constant-time comparison, so response timing does not reveal how much of a key was right."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def _given_key(request: Request) -> str:
    """The key a request sends: `Authorization: Bearer KEY` (OpenAI's clients), else `x-api-key: KEY`."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else request.headers.get("x-api-key", "").strip()


def _open(scope: Scope) -> bool:
    return scope.get("method") == "OPTIONS" or str(scope.get("path", "")).startswith(OPEN_PREFIXES)


class ApiKeyMiddleware:
    """Plain ASGI (not BaseHTTPMiddleware, which would get in the way of streaming and disconnects).

    SGLang's rule for its two keys: an admin route (`admin_paths`) takes the admin key where one is set (the API
    key then does not open it), else the API key; every other route takes the API key where one is set (the
    admin key does not open it). A route whose key is unset is open."""

    def __init__(self, app: ASGIApp, api_key: str | None, admin_api_key: str | None = None,
                 admin_paths: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.api_key = api_key
        self.admin_api_key = admin_api_key
        self.admin_paths = admin_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not _open(scope):
            admin = bool(self.admin_api_key) and scope.get("path") in self.admin_paths
            expected = self.admin_api_key if admin else self.api_key
            if expected and not key_matches(_given_key(Request(scope)), expected):
                message = ("invalid or missing admin API key (this route takes --admin-api-key's key: send "
                           "'Authorization: Bearer ADMIN_KEY')" if admin else
                           "invalid or missing API key (send 'Authorization: Bearer KEY')")
                response = JSONResponse(error_body(message, "authentication_error", code="invalid_api_key"),
                                        status_code=401)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class UnexpectedErrorMiddleware:
    """An exception no handler took becomes its 500 error body here, inside the response counter and the
    connection: a handler for Exception runs outermost in Starlette, where the response went uncounted and
    the keep-alive connection was closed after it. A response already begun is left to the server."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:  # noqa: BLE001 - every error a client can cause answers as one
            if started:
                raise
            response = await api_error_handler(Request(scope), exc)
            await response(scope, receive, send)


def _is_constraint_error(exc: BaseException) -> bool:
    return isinstance(exc, ConstraintError) or isinstance(exc.__cause__, ConstraintError)


async def _counting_error_handler(request: Request, exc: Exception) -> JSONResponse:
    if _is_constraint_error(exc):
        request.app.state.thinkform.metrics.invalid_constraints += 1
    return await api_error_handler(request, exc)


async def _client_gone(request: Request, exc: ClientGone) -> Response:
    """The client left before its answer or a stream's first chunk (its requests are aborted; see
    streaming.call_until_disconnect): nginx's 499, read by nobody."""
    return Response(status_code=499)


def _route_paths(app: FastAPI, routers: tuple[APIRouter, ...]) -> frozenset[str]:
    """Every path the app serves (included routers are not listed flat in app.routes)."""
    paths = {getattr(r, "path", None) for r in app.routes}
    paths.update(getattr(r, "path", None) for router in routers for r in router.routes)
    return frozenset(p for p in paths if isinstance(p, str))


def create_app(engine: Any, api_key: str | None = None, admin_api_key: str | None = None) -> FastAPI:
    """The HTTP server around one engine. `api_key` and `admin_api_key` default to the engine's `--api-key` and
    `--admin-api-key`."""
    state = ServerState.from_engine(engine, api_key, admin_api_key)
    app = FastAPI(title="thinkform", version="0.1.0")
    app.state.thinkform = state

    app.add_exception_handler(RequestValidationError, validation_handler)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error_handler)  # type: ignore[arg-type]
    for exc in (APIError, ValueError, TypeError, EngineOverloaded, EngineDead):
        app.add_exception_handler(exc, _counting_error_handler)
    app.add_exception_handler(ClientGone, _client_gone)  # type: ignore[arg-type]
    routers = (openai_api.router, responses_api.router, native_api.router, tokenize_api.router, metrics.router)
    for router in routers:
        app.include_router(router)
    # Middleware added last runs first: count every response, then check the key, then the body size, then
    # answer any error no handler took.
    args = getattr(engine, "args", None)
    app.add_middleware(UnexpectedErrorMiddleware)  # innermost: inside the counter
    app.add_middleware(BodyLimitMiddleware, max_bytes=getattr(args, "max_request_body_bytes", 8 * 2**20))
    if state.api_key or state.admin_api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=state.api_key, admin_api_key=state.admin_api_key,
                           admin_paths=native_api.ADMIN_PATHS)
    app.add_middleware(ResponseCounter, metrics=state.metrics, routes=_route_paths(app, routers))
    # outermost: a browser's preflight (OPTIONS, no API key) is answered here, and every response is tagged
    origins = args.origins() if isinstance(args, EngineArgs) else ["*"]
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["*"], allow_headers=["*"])
    return app
