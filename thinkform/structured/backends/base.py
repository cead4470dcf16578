"""The one small protocol every grammar backend implements.

Bitmasks everywhere are xgrammar's layout: int32 tensor [batch, ceil(vocab_size / 32)], bit j of word i set
when token 32*i + j is allowed. Every backend writes that layout so the sampler has one code path.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from thinkform.structured.spec import Constraint, ConstraintError, GrammarOptions


class GrammarMatcher(ABC):
    """Per-request grammar state. Not thread-safe; one request owns it."""

    # byte strings that lead out of a state the ending search cannot leave byte class by byte class (an XML
    # value's closing tag: inside the raw text every letter is allowed, so no one letter spells the tag)
    ending_hints: tuple[bytes, ...] = ()

    @abstractmethod
    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the allowed next tokens into bitmask[row] (EOS bit set only where the grammar may end)."""

    @abstractmethod
    def accept_token(self, token_id: int) -> bool:
        """Advance by one token; False (state unchanged) when the grammar rejects it."""

    @abstractmethod
    def accept_string(self, text: str) -> bool:
        """Advance by raw text (used for text after a reasoning end marker inside one token)."""

    @abstractmethod
    def rollback(self, num_tokens: int) -> None:
        """Undo the last num_tokens accepted tokens."""

    @abstractmethod
    def is_terminated(self) -> bool:
        """The grammar is complete and accepted EOS/stop (no more tokens may follow)."""

    @abstractmethod
    def can_terminate(self) -> bool:
        """The text so far is a complete sentence of the grammar (EOS would be accepted now)."""

    @abstractmethod
    def find_jump_forward_bytes(self) -> bytes:
        """The bytes the grammar forces next (b'' when more than one continuation is possible). They may
        begin inside the character the text so far ends in (finishing it), and never end inside one."""


Pending = Sequence[tuple[int, GrammarMatcher]]  # a step's (bitmask row, matcher) pairs to fill


class CompiledGrammar(ABC):
    # checks a finished answer against what the grammar could not enforce (schema_support.AnswerCheck)
    answer_check: Callable[[bytes], bool] | None = None
    ending_hints: tuple[bytes, ...] = ()  # given to its matchers (GrammarMatcher.ending_hints)
    # the literal runs of a regex / EBNF source (literals.py), for the ending search: set by the compile cache
    closing_literals: tuple[bytes, ...] = ()
    # whether an answer's ending may grow by more than a token at once (spec.ending_may_grow): set once per
    # grammar by the compile cache; until then, as it may
    ending_grows: bool = True
    # a structural tag's texts opening a tool call, by call (spec.call_openings), set by the compile cache: the
    # ending search measures each call's shortest length from one of them
    call_openings: tuple[tuple[str, ...], ...] = ()

    @abstractmethod
    def new_matcher(self) -> GrammarMatcher: ...

    def memory_bytes(self) -> int:
        """What the compiled grammar holds in memory, where the backend tells (0: it does not)."""
        return 0

    def unending_rules(self) -> list[str]:
        """The grammar's rules, reachable from its root, that can never end (unending.py); [] where every
        one can, or where the backend cannot tell."""
        return []


@dataclass
class BackendContext:
    """What a backend needs to know about the model: the HF tokenizer and the logits width."""

    tokenizer: Any  # transformers PreTrainedTokenizerBase
    vocab_size: int  # model logits width (may exceed len(tokenizer))
    eos_token_ids: tuple[int, ...]
    options: GrammarOptions


class GrammarBackend(ABC):
    name: ClassVar[str]
    kinds: ClassVar[frozenset[str]]  # constraint kinds it can compile

    def __init__(self, ctx: BackendContext) -> None:
        self.ctx = ctx

    def check_kind(self, constraint: Constraint) -> None:
        if constraint.kind not in self.kinds:
            raise ConstraintError(
                f"grammar backend '{self.name}' does not support {constraint.kind} constraints "
                f"(it supports: {', '.join(sorted(self.kinds)) or 'none'}); choose another --grammar-backend",
                field=constraint.field,
            )

    @abstractmethod
    def compile(self, constraint: Constraint) -> CompiledGrammar:
        """Compile or raise ConstraintError quoting the library's message."""

    def fill_bitmasks(self, bitmask: torch.Tensor, pending: Pending) -> None:
        """Fill bitmask[row] from its matcher for each (row, matcher) of a step, all at once (a backend with
        a batched, threaded fill overrides this; the default fills row by row)."""
        for row, matcher in pending:
            matcher.fill_bitmask(bitmask, row)


def split_pending(pending: Pending, kind: type) -> tuple[list[tuple[int, Any]], list[tuple[int, GrammarMatcher]]]:
    """(the rows whose matcher is a `kind`, the other rows). One pass, the exact type first: an isinstance
    against an ABC's subclass goes through ABCMeta (~0.4 µs; a step asks twice a row)."""
    ours: list[tuple[int, Any]] = []
    rest: list[tuple[int, GrammarMatcher]] = []
    for item in pending:
        matcher = item[1]
        (ours if type(matcher) is kind or isinstance(matcher, kind) else rest).append(item)
    return ours, rest
