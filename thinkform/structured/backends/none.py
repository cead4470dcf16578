"""--grammar-backend none: serving without constraints; any constraint is a request error."""
from __future__ import annotations

from typing import ClassVar

from thinkform.structured.backends.base import CompiledGrammar, GrammarBackend
from thinkform.structured.backends.registry import register_backend
from thinkform.structured.spec import Constraint, ConstraintError


@register_backend
class NoneBackend(GrammarBackend):
    name: ClassVar[str] = "none"
    kinds: ClassVar[frozenset[str]] = frozenset()

    def compile(self, constraint: Constraint) -> CompiledGrammar:
        raise ConstraintError(
            f"grammar backend is none: cannot enforce the {constraint.field} constraint; "
            "start the server with --grammar-backend xgrammar (or llguidance / outlines)",
            field=constraint.field,
        )
