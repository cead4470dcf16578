"""Jump-forward decoding: where the grammar admits exactly one continuation, append its tokens at once.

The forced text is re-tokenized together with the token just sampled, because `"` + `name` may tokenize
as `"name`: when the boundary changes, the sampled token is replaced (its k/v is not computed yet, so
this is free). The appended tokens are computed in the next forward pass as one extend.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from thinkform.structured.bitmask import set_bits
from thinkform.structured.gate import GateError, Phase


class SpecialPrefixes:
    """The texts of the added tokens, by first byte: where forced text ends inside one's spelling, the jump
    stops before it. Jumped, `<|tool_call` (the text Kimi-K2's `<|tool_call_begin|>` and
    `<|tool_calls_section_end|>` share) went in as text pieces where the model writes either as one token,
    and with it the place where budget closing would have ended the calls. (A whole spelling inside forced
    text is encoded as the token itself: _accept_prefix decides whether the answer may hold it.)"""

    def __init__(self, texts: Iterable[bytes]) -> None:
        self._by_first: dict[int, list[bytes]] = {}
        for text in texts:
            if len(text) > 1:
                self._by_first.setdefault(text[0], []).append(text)

    def cut(self, forced: bytes) -> bytes:
        """`forced` up to the first place from which the rest is the beginning of an added token's text."""
        for i, byte in enumerate(forced):
            rest = forced[i:]
            if any(len(text) > len(rest) and text.startswith(rest) for text in self._by_first.get(byte, ())):
                return forced[:i]
        return forced


def jump_forward(gate: Any, vocab: Any, sampled: int | None, budget: int,
                 specials: SpecialPrefixes | None = None) -> tuple[list[int], bool]:
    """Tokens to append after `sampled` (already accepted by the gate); (ids, replaced_sampled)."""
    if budget <= 0 or gate.phase is not Phase.ANSWER:
        return [], False
    forced = gate.jump_forward()
    if forced and specials is not None:
        forced = specials.cut(forced)
    if not forced:
        return [], False
    # the added tokens this answer may not hold (a JSON value's `<|im_start|>`, the reasoning marker): the
    # tokenizer encodes their spelling as them, and the text then hides them or reads a marker
    banned = gate.forced_banned
    if sampled is not None:
        retokenized = _encode(vocab, vocab.token_bytes[sampled] + forced)
        if retokenized and retokenized[0] != sampled:
            gate.rollback(1)
            ids = _accept_prefix(gate, retokenized[: budget + 1], banned)
            if ids:
                return ids, True
            gate.accept_forced([sampled])  # it was valid a moment ago
            return [], False
    ids = _encode(vocab, forced)
    return _accept_prefix(gate, ids[:budget], banned), False


def _encode(vocab: Any, data: bytes) -> list[int]:
    try:
        return vocab.encode_bytes(data)
    except ValueError:
        return []


def _accept_prefix(gate: Any, ids: list[int], banned: frozenset[int]) -> list[int]:
    """Feed ids to the gate one by one; keep the longest accepted prefix, up to the first banned token (also
    where the sampled `<` and the forced `|im_start|>` re-tokenize together into the special token)."""
    accepted: list[int] = []
    for tid in ids:
        if tid in banned:
            break
        try:
            gate.accept_forced([tid])
        except GateError:
            break
        accepted.append(tid)
        if gate.phase is not Phase.ANSWER:
            break
    return accepted


def eos_only_mask(vocab_size: int, eos_token_ids: tuple[int, ...]) -> torch.Tensor:
    """The bitmask row that allows nothing but EOS."""
    mask = torch.zeros((1, (vocab_size + 31) // 32), dtype=torch.int32)
    set_bits(mask, 0, eos_token_ids, True)
    return mask


def forced_end(gate: Any, eos_only: torch.Tensor) -> bool:
    """Whether the finished answer admits nothing but EOS: the request then ends without another
    forward pass (checked only where the grammar may end, so it costs one mask fill per answer)."""
    if gate.phase is not Phase.ANSWER or not gate.constrained or not gate.may_stop():
        return False
    row = torch.empty_like(eos_only)
    return gate.fill_bitmask(row, 0) and torch.equal(row, eos_only)

