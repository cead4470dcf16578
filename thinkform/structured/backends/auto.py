"""`auto`: xgrammar first; where it rejects a constraint, llguidance (JSONSchemaBench: xgrammar compiles 96
of 100 sampled real-world schemas, with the fallback 98). The answer keeps the chosen library's matcher."""
from __future__ import annotations

from typing import ClassVar

import torch

from thinkform.structured.backends.base import BackendContext, CompiledGrammar, GrammarBackend, GrammarMatcher
from thinkform.structured.backends.llguidance import LLGuidanceBackend, LLGuidanceMatcher
from thinkform.structured.backends.registry import register_backend
from thinkform.structured.backends.xgrammar import XGrammarBackend
from thinkform.structured.spec import Constraint, ConstraintError


@register_backend
class AutoBackend(GrammarBackend):
    name: ClassVar[str] = "auto"
    kinds: ClassVar[frozenset[str]] = XGrammarBackend.kinds | LLGuidanceBackend.kinds

    def __init__(self, ctx: BackendContext) -> None:
        super().__init__(ctx)
        self.primary = XGrammarBackend(ctx)
        self._fallback: LLGuidanceBackend | None = None  # built on first need: its tokenizer costs a second

    def compile(self, constraint: Constraint) -> CompiledGrammar:
        try:
            return self.primary.compile(constraint)
        except ConstraintError as first:
            if constraint.kind not in LLGuidanceBackend.kinds:
                raise
            try:
                return self._llguidance().compile(constraint)
            except ConstraintError as second:
                raise ConstraintError(f"{first} (llguidance: {second})", field=first.field) from second

    def fill_bitmasks(self, matchers: list[GrammarMatcher], bitmask: torch.Tensor, rows: list[int]) -> None:
        """Each library's rows through its own batched fill."""
        fallback = [(m, r) for m, r in zip(matchers, rows) if isinstance(m, LLGuidanceMatcher)]
        primary = [(m, r) for m, r in zip(matchers, rows) if not isinstance(m, LLGuidanceMatcher)]
        if primary:
            self.primary.fill_bitmasks([m for m, _ in primary], bitmask, [r for _, r in primary])
        if fallback:
            self._llguidance().fill_bitmasks([m for m, _ in fallback], bitmask, [r for _, r in fallback])

    def _llguidance(self) -> LLGuidanceBackend:
        if self._fallback is None:
            self._fallback = LLGuidanceBackend(self.ctx)
        return self._fallback
