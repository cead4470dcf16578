"""`auto`, the default: xgrammar first; where it rejects a constraint or would not enforce it, llguidance
(JSONSchemaBench: xgrammar compiles 955 of 1,000 real-world schemas, less the 181 it would not
enforce, the fallback most of those). The answer keeps the chosen library's matcher. A structural tag with
XML-style arguments (Qwen3-Coder's, GLM-4.5's tool calls) is xgrammar's alone: no fallback."""
from __future__ import annotations

from typing import ClassVar

import torch

from thinkform.structured.backends.base import BackendContext, CompiledGrammar, GrammarBackend, Pending, split_pending
from thinkform.structured.backends.llguidance import LLGuidanceBackend, LLGuidanceMatcher
from thinkform.structured.backends.registry import register_backend
from thinkform.structured.backends.xgrammar import XGrammarBackend
from thinkform.structured.schema_support import OTHER_BACKENDS_HINT
from thinkform.structured.spec import Constraint, ConstraintError, has_xml_content


@register_backend
class AutoBackend(GrammarBackend):
    name: ClassVar[str] = "auto"
    kinds: ClassVar[frozenset[str]] = XGrammarBackend.kinds | LLGuidanceBackend.kinds

    def __init__(self, ctx: BackendContext) -> None:
        super().__init__(ctx)
        self.primary = XGrammarBackend(ctx)
        self._fallback: LLGuidanceBackend | None = None  # built on first need: its tokenizer costs a second
        self._fallback_error: ValueError | None = None  # why it could not be built

    def compile(self, constraint: Constraint) -> CompiledGrammar:
        try:
            return self.primary.compile(constraint)
        except ConstraintError as first:
            if constraint.kind not in LLGuidanceBackend.kinds:
                raise
            if constraint.kind == "structural_tag" and has_xml_content(constraint.data()):
                # XML-style tool-call arguments (qwen_xml, glm_xml): xgrammar only, its message stands
                raise ConstraintError(str(first).replace(OTHER_BACKENDS_HINT, ""), field=first.field) from first
            reason = str(first).replace(OTHER_BACKENDS_HINT, "")
            try:
                return self._llguidance().compile(constraint)
            except ConstraintError as second:  # neither library: the hint to try the other one is moot here
                raise ConstraintError(f"{reason} (llguidance: {_own_words(second)})", field=first.field) from second
            except ValueError as second:  # llguidance cannot read this tokenizer (llguidance.lltokenizer)
                raise ConstraintError(f"{reason} (llguidance cannot serve this model: {second})",
                                      field=first.field) from second

    def fill_bitmasks(self, bitmask: torch.Tensor, pending: Pending) -> None:
        """Each library's rows through its own batched fill."""
        fallback, primary = split_pending(pending, LLGuidanceMatcher)
        self.primary.fill_bitmasks(bitmask, primary)
        if fallback:
            self._llguidance().fill_bitmasks(bitmask, fallback)

    def _llguidance(self) -> LLGuidanceBackend:
        if self._fallback is None:
            if self._fallback_error is not None:  # built once: a tokenizer it cannot read is not retried
                raise ValueError(str(self._fallback_error))
            try:
                self._fallback = LLGuidanceBackend(self.ctx)
            except ValueError as e:
                self._fallback_error = e
                raise
        return self._fallback


def _own_words(error: ConstraintError) -> str:
    """llguidance's message without the "invalid <field>: " that xgrammar's reason already begins with."""
    text = str(error)
    prefix = f"invalid {error.field}: "
    return text[len(prefix):] if text.startswith(prefix) else text
