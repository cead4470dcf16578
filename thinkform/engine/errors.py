"""Errors the engine raises to its callers."""
from __future__ import annotations


class EngineOverloaded(RuntimeError):
    """The waiting queue is full; retry later (the servers answer 503 with Retry-After)."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EngineDead(RuntimeError):
    """The engine loop crashed or was shut down; no request can be served."""


class DuplicateRequestId(ValueError):
    """A request's rid is the id of another request still in flight (a 400 naming `rid`)."""

    field = "rid"


class RequestFieldError(ValueError):
    """A bad request field; `field` (the servers' error `param`) is the message's "name:" prefix."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field if field is not None else message.split(":", 1)[0]


class ContextLengthError(RequestFieldError):
    """The prompt, or the prompt and the tokens asked for, do not fit in the model's context; `field` is
    "prompt" or "max_new_tokens" (the servers spell it as their request did). The message is SGLang's, which
    clients read to shrink what they ask for."""
