"""outlines-core backend: regular languages only, so JSON schema (via its regex) and regex."""
from __future__ import annotations

import json
from typing import ClassVar

import torch
from outlines_core import Guide, Index, Vocabulary
from outlines_core.json_schema import build_regex_from_schema

from thinkform.structured.backends.base import BackendContext, CompiledGrammar, GrammarBackend, GrammarMatcher
from thinkform.structured.backends.registry import register_backend
from thinkform.structured.backends.text import without_cut_end
from thinkform.structured.bitmask import word_bit
from thinkform.structured.ecma_regex import map_patterns
from thinkform.structured.json_string_pattern import json_text_pattern, whole_text_regex
from thinkform.structured.pattern_length import bound_pattern_lengths
from thinkform.structured.spec import Constraint, ConstraintError, GrammarOptions
from thinkform.structured.vocab import checked_token_bytes, special_token_ids, spell_text

MAX_ROLLBACK = 1024  # tokens the Guide remembers for rollback
MAX_JUMP_BYTES = 64  # cap on one jump-forward walk


class OutlinesMatcher(GrammarMatcher):
    def __init__(self, compiled: OutlinesCompiled) -> None:
        self._c = compiled
        self._guide = Guide(compiled.index, max_rollback=MAX_ROLLBACK)
        self._steps: list[int] = []  # Guide advances per accept call; 0 marks the accepted EOS
        self._terminated = False

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        out = bitmask[row]
        out.zero_()
        if not self._terminated:
            self._guide.write_mask_into(out.data_ptr(), out.numel(), out.element_size())
        if self._terminated or self._guide.is_finished():
            for eos in self._c.eos_token_ids:  # outlines knows one EOS; allow all of the model's
                out[eos // 32] |= word_bit(eos % 32)
        else:
            for eos in self._c.eos_token_ids:
                out[eos // 32] &= ~word_bit(eos % 32)

    def accept_token(self, token_id: int) -> bool:
        if self._terminated:
            return False
        if token_id in self._c.eos_token_ids:
            if not self._guide.is_finished():
                return False
            self._terminated = True
            self._steps.append(0)
            return True
        return self._advance([token_id])

    def accept_string(self, text: str) -> bool:
        if self._terminated:
            return False
        return self._advance(self._c.encode(text)) if text else True

    def _advance(self, tokens: list[int]) -> bool:
        if not tokens or not self._guide.accepts_tokens(tokens):
            return False
        for t in tokens:
            self._guide.advance(t, return_tokens=False)
        self._steps.append(len(tokens))
        return True

    def rollback(self, num_tokens: int) -> None:
        if num_tokens > len(self._steps):
            raise ValueError(f"cannot roll back {num_tokens} steps, only {len(self._steps)} taken")
        for _ in range(num_tokens):
            n = self._steps.pop()
            if n == 0:
                self._terminated = False
            else:
                self._guide.rollback_state(n)

    def is_terminated(self) -> bool:
        return self._terminated

    def can_terminate(self) -> bool:
        return self._guide.is_finished()

    def find_jump_forward_bytes(self) -> bytes:
        """Bytes every allowed continuation starts with: while all allowed tokens share the shortest
        allowed token as a prefix, that token's bytes are forced (all single bytes are tokens)."""
        if self._terminated:
            return b""
        index, token_bytes = self._c.index, self._c.token_bytes
        state: int | None = self._guide.get_state()
        out = b""
        while state is not None and len(out) < MAX_JUMP_BYTES and not index.is_final_state(state):
            allowed = [t for t in index.get_allowed_tokens(state) or [] if t in token_bytes]
            if not allowed:
                break
            first = min(allowed, key=lambda t: len(token_bytes[t]))
            head = token_bytes[first]
            if not all(token_bytes[t].startswith(head) for t in allowed):
                break
            out += head
            state = index.get_next_state(state, first)
        return without_cut_end(out)


class OutlinesCompiled(CompiledGrammar):
    def __init__(self, index: Index, backend: OutlinesBackend) -> None:
        self.index = index
        self.token_bytes = backend.token_bytes
        self.eos_token_ids = backend.ctx.eos_token_ids
        self.encode = backend.encode

    def new_matcher(self) -> GrammarMatcher:
        return OutlinesMatcher(self)


@register_backend
class OutlinesBackend(GrammarBackend):
    name: ClassVar[str] = "outlines"
    # json_object is left out: outlines' regex for "any object" takes seconds even on a tiny vocabulary.
    kinds: ClassVar[frozenset[str]] = frozenset({"json_schema", "regex"})

    def __init__(self, ctx: BackendContext) -> None:
        super().__init__(ctx)
        if not ctx.eos_token_ids:
            raise ValueError("the outlines grammar backend needs at least one EOS token id")
        self.token_bytes = text_token_bytes(ctx)
        by_bytes: dict[bytes, list[int]] = {}
        for token_id, data in self.token_bytes.items():
            by_bytes.setdefault(data, []).append(token_id)
        self._vocab = Vocabulary(ctx.eos_token_ids[0], by_bytes)

    def encode(self, text: str) -> list[int]:
        """The tokenizer's ids for `text` (a sentencepiece tokenizer's prefix space left out: vocab.spell_text)."""
        return spell_text(self.ctx.tokenizer, checked_token_bytes(self.ctx.tokenizer, self.ctx.vocab_size).token_bytes,
                          text)[0]

    def compile(self, constraint: Constraint) -> CompiledGrammar:
        self.check_kind(constraint)
        try:
            regex = self._regex(constraint)
            return OutlinesCompiled(Index(regex, self._vocab), self)
        except ConstraintError:
            raise
        except Exception as e:  # outlines-core raises ValueError / TypeError with its reason
            raise ConstraintError(f"invalid {constraint.field}: {e}", field=constraint.field) from e

    def _regex(self, constraint: Constraint) -> str:
        if constraint.kind == "regex":
            return constraint.source
        schema = constraint.data()
        try:
            schema = bound_pattern_lengths(schema)  # one repeated class + lengths: one bounded pattern
        except ConstraintError:
            pass  # other patterns next to a length: refused just below, naming the keywords
        ignored = sorted(unenforced_keywords(schema))
        if ignored:  # outlines-core would drop them silently and answers could break the schema
            raise ConstraintError(
                f"grammar backend 'outlines' cannot enforce json_schema keyword(s) {', '.join(ignored)}; "
                "use --grammar-backend xgrammar, llguidance or auto", field="json_schema")
        # outlines-core writes a pattern's text raw between the quotes (and strips `^...$` only where it has
        # both; `a|^b$` became `"a|b"`, which no string could end): give it the whole JSON text's regex
        schema = map_patterns(schema, lambda pattern: whole_text_regex(json_text_pattern(pattern)))
        return build_regex_from_schema(json.dumps(schema), whitespace_pattern(self.ctx.options))


_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")


def unenforced_keywords(schema: object) -> set[str]:
    """Keywords outlines-core's regex builder ignores: numeric bounds, uniqueItems, patternProperties,
    propertyNames, and a pattern next to minLength/maxLength (it keeps the length and drops the pattern)."""
    found: set[str] = set()
    if isinstance(schema, list):
        for item in schema:
            found |= unenforced_keywords(item)
    elif isinstance(schema, dict):
        found |= {k for k in _BOUNDS if isinstance(schema.get(k), (int, float)) and not isinstance(schema[k], bool)}
        if schema.get("uniqueItems") is True:
            found.add("uniqueItems")
        found |= {k for k in ("patternProperties", "propertyNames") if isinstance(schema.get(k), dict) and schema[k]}
        if isinstance(schema.get("pattern"), str) and ("minLength" in schema or "maxLength" in schema):
            found.add("pattern with minLength/maxLength")
        for value in schema.values():
            found |= unenforced_keywords(value)
    return found


def whitespace_pattern(opts: GrammarOptions) -> str:
    # outlines puts the pattern around every JSON token; compact means none at all ({"a":1,"b":2}).
    return rf"[ \t\n\r]{{0,{opts.max_whitespace}}}" if opts.any_whitespace else ""


def text_token_bytes(ctx: BackendContext) -> dict[int, bytes]:
    """Each ordinary token's bytes (special and EOS tokens left out), decoded offline.

    xgrammar already knows how to decode every HF vocabulary type (byte-level, byte-fallback, raw); its
    reading is checked against the tokenizer's own decoding (vocab.checked_token_bytes)."""
    token_bytes = checked_token_bytes(ctx.tokenizer, ctx.vocab_size).token_bytes
    special = special_token_ids(ctx.tokenizer) | set(ctx.eos_token_ids)  # special added ones too
    size = min(len(ctx.tokenizer), ctx.vocab_size)
    return {i: data for i, data in enumerate(token_bytes[:size]) if data and i not in special}

