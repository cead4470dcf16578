"""Jump-forward decoding: where the grammar admits exactly one continuation, append its tokens at once.

The forced text is re-tokenized together with the token just sampled, because `"` + `name` may tokenize
as `"name`: when the boundary changes, the sampled token is replaced (its k/v is not computed yet, so
this is free). The appended tokens are computed in the next forward pass as one extend.
"""
from __future__ import annotations

from typing import Any

import torch

from thinkform.structured.bitmask import set_bits
from thinkform.structured.gate import GateError, Phase


def jump_forward(gate: Any, vocab: Any, sampled: int | None, budget: int) -> tuple[list[int], bool]:
    """Tokens to append after `sampled` (already accepted by the gate); (ids, replaced_sampled)."""
    if budget <= 0 or gate.phase is not Phase.ANSWER:
        return [], False
    forced = gate.jump_forward()
    if not forced:
        return [], False
    if sampled is not None:
        retokenized = _encode(vocab, vocab.token_bytes[sampled] + forced)
        if retokenized and retokenized[0] != sampled:
            gate.rollback(1)
            ids = _accept_prefix(gate, retokenized[: budget + 1])
            if ids:
                return ids, True
            gate.accept_forced([sampled])  # it was valid a moment ago
            return [], False
    ids = _encode(vocab, forced)
    return _accept_prefix(gate, ids[:budget]), False


def _encode(vocab: Any, data: bytes) -> list[int]:
    try:
        return vocab.encode_bytes(data)
    except ValueError:
        return []


def _accept_prefix(gate: Any, ids: list[int]) -> list[int]:
    """Feed ids to the gate one by one; keep the longest accepted prefix."""
    accepted: list[int] = []
    for tid in ids:
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

