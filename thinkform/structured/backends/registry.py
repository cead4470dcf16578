"""Name → backend class. Each backend module registers itself with @register_backend."""
from __future__ import annotations

from typing import TypeVar

from thinkform.structured.backends.base import BackendContext, GrammarBackend

B = TypeVar("B", bound=type[GrammarBackend])

# The registry is filled once at import time by the backend modules and never changed afterwards.
BACKENDS: dict[str, type[GrammarBackend]] = {}


def register_backend(cls: B) -> B:
    """Class decorator: make `cls` available to --grammar-backend under `cls.name`."""
    if cls.name in BACKENDS and BACKENDS[cls.name] is not cls:
        raise ValueError(f"grammar backend {cls.name!r} is registered twice")
    BACKENDS[cls.name] = cls
    return cls


def create_backend(name: str, ctx: BackendContext) -> GrammarBackend:
    """Instantiate the backend called `name`; an unknown name lists the known ones."""
    try:
        cls = BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"unknown grammar backend {name!r}; choose one of: {', '.join(sorted(BACKENDS))}") from None
    return cls(ctx)
