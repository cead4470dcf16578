"""TokenVocab: the raw output bytes of every token id, built once per tokenizer.

The reasoning gate matches markers on these bytes, so a marker spelled in several tokens works like one
special token. Byte-level BPE (GPT-2 byte↔unicode map), sentencepiece ('▁' → ' ', `<0xNN>` byte tokens)
and added/special tokens (their text) are decoded by xgrammar's TokenizerInfo, which every grammar
backend already relies on; rows past the tokenizer (logits padding) decode to b"" and are never allowed.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xgrammar

from thinkform.structured.bitmask import keep_mask

_SENTINEL = "\n"  # encoded before text whose plain encoding gains a sentencepiece prefix space


def special_token_ids(tok: Any) -> set[int]:
    """The tokenizer's special tokens: `all_special_ids`, and the added tokens marked special, which it
    leaves out (Qwen's `<|im_start|>`, `<|vision_pad|>`, ...)."""
    special = set(tok.all_special_ids)
    for tid, added in getattr(tok, "added_tokens_decoder", {}).items():
        if getattr(added, "special", False):
            special.add(int(tid))
    return special


def added_token_ids(tok: Any) -> set[int]:
    """Every token the tokenizer splits out of text by its spelling: added tokens, special or not."""
    return special_token_ids(tok) | {int(tid) for tid in getattr(tok, "added_tokens_decoder", {})}


@dataclass(frozen=True)
class TokenVocab:
    token_bytes: list[bytes]  # one entry per logits row (vocab_size), padding rows b""
    num_tokens: int  # ids below this come from the tokenizer; the rest are padding
    eos_token_ids: tuple[int, ...]
    tokenizer: Any  # the transformers tokenizer it was built from
    byte_ids: dict[int, int]  # byte value -> id of a token that is exactly that one byte (when one exists)
    # tokens the tokenizer splits out of text by their spelling (added_token_ids): forced answer text spelled
    # through it may come back holding one
    added_ids: frozenset[int] = frozenset()
    _keep_masks: dict[frozenset[int], np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    @property
    def vocab_size(self) -> int:
        return len(self.token_bytes)

    @property
    def padding_ids(self) -> range:
        return range(self.num_tokens, self.vocab_size)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, vocab_size: int,
                       eos_token_ids: Iterable[int] | None = None) -> TokenVocab:
        """Decode every id of `tokenizer`; `vocab_size` is the model's logits width (≥ len(tokenizer))."""
        num_tokens = len(tokenizer)
        if vocab_size < num_tokens:
            raise ValueError(f"vocab_size: the model's logits width {vocab_size} is smaller than the "
                             f"tokenizer's {num_tokens} tokens")
        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        decoded = [bytes(b) for b in info.decoded_vocab]
        decoded += [b""] * (vocab_size - len(decoded))
        for token_id in range(num_tokens, vocab_size):
            decoded[token_id] = b""
        if eos_token_ids is None:
            eos = tokenizer.eos_token_id
            eos_token_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        byte_ids: dict[int, int] = {}
        for token_id, data in enumerate(decoded):
            if len(data) == 1:
                byte_ids.setdefault(data[0], token_id)
        return cls(token_bytes=decoded, num_tokens=num_tokens,
                   eos_token_ids=tuple(dict.fromkeys(int(i) for i in eos_token_ids)), tokenizer=tokenizer,
                   byte_ids=byte_ids, added_ids=frozenset(added_token_ids(tokenizer)))

    def keep_mask(self, banned: frozenset[int]) -> np.ndarray:
        """Packed int32 words allowing every tokenizer id but `banned` (padding rows never), built once
        per set: a gate ANDs it into each of its rows."""
        mask = self._keep_masks.get(banned)
        if mask is None:
            words = (self.vocab_size + 31) // 32
            flags = list(banned) + list(self.padding_ids)
            mask = self._keep_masks.setdefault(banned, keep_mask(self.vocab_size, words, flags).numpy())
        return mask

    def bytes_of(self, token_ids: Iterable[int]) -> bytes:
        return b"".join(self.token_bytes[i] for i in token_ids)

    def encode_text(self, text: str) -> list[int]:
        """Token ids whose bytes are exactly `text`; added tokens in it (e.g. `</think>`) come back as
        the tokenizer's own single ids. No BOS/EOS is added."""
        want = text.encode("utf-8")
        ids = list(self.tokenizer.encode(text, add_special_tokens=False))
        if self.bytes_of(ids) == want:
            return ids
        # sentencepiece tokenizers prepend '▁' to the first word: encode after a sentinel and drop it
        head = list(self.tokenizer.encode(_SENTINEL, add_special_tokens=False))
        ids = list(self.tokenizer.encode(_SENTINEL + text, add_special_tokens=False))
        if ids[:len(head)] == head and self.bytes_of(ids[len(head):]) == want:
            return ids[len(head):]
        raise ValueError(f"encode_text: the tokenizer cannot spell {text!r} exactly "
                         f"(its tokens decode to {self.bytes_of(ids)!r})")

    def encode_bytes(self, data: bytes) -> list[int]:
        """Token ids spelling `data` exactly; bytes that are not whole UTF-8 text use single-byte tokens."""
        try:
            return self.encode_text(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            pass
        missing = sorted({b for b in data if b not in self.byte_ids})
        if missing:
            raise ValueError(f"encode_bytes: the vocabulary has no single-byte token for {bytes(missing)!r}")
        return [self.byte_ids[b] for b in data]
