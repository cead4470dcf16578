"""OpenAI-style error objects and the mapping of exceptions to HTTP statuses."""
from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from thinkform.engine.errors import EngineDead, EngineOverloaded

logger = logging.getLogger(__name__)


class APIError(Exception):
    """An error the client caused (or must retry): becomes `{"error": {...}}` with `status`."""

    def __init__(self, message: str, status: int = 400, param: str | None = None,
                 type: str = "invalid_request_error", code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.param, self.type = message, status, param, type
        self.code = code
        self.headers = headers or {}


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: Any = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(error_body(err.message, err.type, err.param, err.code or err.status),
                        status_code=err.status, headers=err.headers)


def to_api_error(exc: BaseException) -> APIError:
    """Exceptions from the engine and the layers below become client errors where they are."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, EngineOverloaded):
        return APIError(str(exc), 503, type="server_overloaded", code="overloaded",
                        headers={"Retry-After": str(exc.retry_after_s)})
    if isinstance(exc, EngineDead):
        return APIError(f"engine unavailable: {exc}", 503, type="service_unavailable", code="engine_dead",
                        headers={"Retry-After": "5"})
    if isinstance(exc, (ValueError, TypeError)):
        # ConstraintError and friends carry the offending field
        return APIError(str(exc) or type(exc).__name__, 400, param=getattr(exc, "field", None))
    logger.exception("internal error", exc_info=exc)
    return APIError(f"internal error: {type(exc).__name__}: {exc}", 500, type="internal_error")


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list", "tuple", "none", "NamedToolChoice"})


def _is_field(part: Any) -> bool:
    """pydantic puts union members (`str`, `list[str]`, `function-after[…]`) in error locations."""
    text = str(part)
    return text != "body" and text not in _TYPE_TAGS and not any(c in text for c in "[(-")


def loc_fields(loc: tuple[Any, ...]) -> list[str]:
    """The field names of a pydantic error location (union members left out; a query or path parameter named
    as itself: `limit`, not `query.limit`)."""
    if loc and loc[0] in ("query", "path", "header", "cookie"):
        loc = loc[1:]
    return [str(p) for p in loc if _is_field(p)]


def _loc_name(loc: tuple[Any, ...]) -> str:
    return ".".join(loc_fields(loc)) or "body"


async def validation_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
    param = _loc_name(tuple(first.get("loc", ())))
    kind = first.get("type", "")
    if kind == "json_invalid":
        message = f"request body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}"
        param = None
    elif kind == "missing" and param == "body":
        message = "request body is missing"
    elif param == "body" and "json" not in request.headers.get("content-type", ""):
        # a form or text body (curl -d sends application/x-www-form-urlencoded) is read as no object at all
        message = (f"body: send a JSON object with the header Content-Type: application/json (the request's "
                   f"content type is {request.headers.get('content-type') or 'missing'})")
    else:
        message = f"{param}: {first.get('msg', 'invalid value')}"
    more = len(errors) - 1
    if more > 0:
        message += f" (and {more} more error{'s' if more > 1 else ''})"
    return JSONResponse(error_body(message, param=param, code=400), status_code=400)


async def api_error_handler(request: Request, exc: Exception) -> JSONResponse:
    return error_response(to_api_error(exc))


async def http_error_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return JSONResponse(error_body(str(exc.detail), kind, code=exc.status_code), status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))
