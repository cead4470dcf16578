"""Grammar backends behind one protocol (base.py). Adding one: a module with a @register_backend class,
imported below."""
from __future__ import annotations

from thinkform.structured.backends.base import (
    BackendContext,
    CompiledGrammar,
    GrammarBackend,
    GrammarMatcher,
)
from thinkform.structured.backends.registry import BACKENDS, create_backend, register_backend

# Imported for their registration side effect.
from thinkform.structured.backends import none as _none  # noqa: E402,F401
from thinkform.structured.backends import xgrammar as _xgrammar  # noqa: E402,F401
from thinkform.structured.backends import llguidance as _llguidance  # noqa: E402,F401
from thinkform.structured.backends import outlines as _outlines  # noqa: E402,F401
from thinkform.structured.backends import auto as _auto  # noqa: E402,F401

DEFAULT_BACKEND = "xgrammar"

__all__ = [
    "BACKENDS", "DEFAULT_BACKEND", "BackendContext", "CompiledGrammar", "GrammarBackend", "GrammarMatcher",
    "create_backend", "register_backend",
]
