"""TokenVocab: the raw output bytes of every token id, built once per tokenizer.

The reasoning gate matches markers on these bytes, so a marker spelled in several tokens works like one
special token. Byte-level BPE (GPT-2 byte↔unicode map), sentencepiece ('▁' → ' ', `<0xNN>` byte tokens)
and added/special tokens (their text) are decoded by xgrammar's TokenizerInfo, which every grammar
backend already relies on; rows past the tokenizer (logits padding) decode to b"" and are never allowed.

xgrammar guesses the vocabulary's encoding from the tokenizer.json's decoder, and a guess can be wrong (a
Metaspace decoder without byte fallback, as transformers writes for T5/XGLM-style vocabularies, is read RAW:
'▁the' stays b'\xe2\x96\x81the'). `checked_token_bytes` compares those bytes with the tokenizer's own
decoding on a sample and, where they disagree, takes every token's bytes from the tokenizer's decoding
(what the answer's text is decoded with); the backends are all fed those bytes (`xgrammar_tokenizer_info`).
A tokenizer whose decoding does not compose token by token is refused with a ValueError.
"""
from __future__ import annotations

import random
import re
import weakref
from collections.abc import Callable, Iterable, Sequence
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


def spell_text(tokenizer: Any, token_bytes: Sequence[bytes], text: str) -> tuple[list[int], bool]:
    """The tokenizer's ids for `text` (no BOS/EOS) and whether their bytes are exactly `text`: a sentencepiece
    tokenizer that prepends '▁' to the first word is asked after a sentinel, which is dropped."""
    want = text.encode("utf-8")
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    if b"".join(token_bytes[i] for i in ids) == want:
        return ids, True
    head = list(tokenizer.encode(_SENTINEL, add_special_tokens=False))
    ids = list(tokenizer.encode(_SENTINEL + text, add_special_tokens=False))
    if ids[:len(head)] == head and b"".join(token_bytes[i] for i in ids[len(head):]) == want:
        return ids[len(head):], True
    return ids, False


# --- the bytes every backend reads, checked against the tokenizer's own decoding ---------------------------

CHECK_SPREAD = 4096  # ids spread evenly over the vocabulary that the start-up check decodes
# what a misread vocabulary leaves in xgrammar's bytes: sentencepiece's '▁' and `<0xNN>` spellings (every id
# holding one is checked too)
_SUSPECT = re.compile(rb"\xe2\x96\x81|<0x")
_PREFIXES = (b"a", b"x", b"e", b"t", b"0", b"1", b"(")  # a plain token decoded before each one checked
CHECK_PAIRS = 512  # token pairs decoded to check that corrected bytes compose
_PAIR_NOISE = 0.01  # share of those pairs that may disagree before a tokenizer is refused


@dataclass(frozen=True)
class CheckedBytes:
    """Every logits row's bytes as all grammar backends must read them (`checked_token_bytes`)."""

    token_bytes: list[bytes]  # one entry per logits row (vocab_size), padding rows b""
    num_tokens: int  # rows below this are the tokenizer's
    add_prefix_space: bool  # xgrammar's reading of the tokenizer (TokenizerInfo.add_prefix_space)
    corrected: int  # how many tokens' bytes the tokenizer's decoding replaced (0: xgrammar's reading stands)
    # the ids the check compared (neither added nor special, with a whole-text decoding): another backend's
    # reading of the vocabulary is compared on these (`misread_token`)
    sample: tuple[int, ...]


_CHECKED: weakref.WeakKeyDictionary[Any, dict[tuple[int, int], CheckedBytes]] = weakref.WeakKeyDictionary()


def checked_token_bytes(tokenizer: Any, vocab_size: int) -> CheckedBytes:
    """The bytes of every id as xgrammar reads the tokenizer, checked against the tokenizer's own decoding
    (`tokenizer.decode([p, t])` less `decode([p])` for a plain token p: what an answer's text is decoded
    with) on the ids a misreading shows in (every one holding '▁' or `<0x`) and CHECK_SPREAD more spread
    over the vocabulary, added and special tokens and byte pieces of a character left out. Where any
    disagree, every token's bytes are taken from the tokenizer's decoding, and some pairs are decoded to
    check those bytes compose; a tokenizer whose decoding does not is refused (ValueError).

    Built once per tokenizer and width (the engine's TokenVocab and its backends share it). On the
    151,669-token Qwen vocabulary the check costs 33-60 ms (measured on two shared, loaded cores: 4,052 ids
    and 512 pairs decoded, ~25 ms of it; the '▁' / `<0x` scan ~10 ms; tests/test_vocab_bytes.py bounds it),
    beside xgrammar's own 1.5 s reading of it (from_huggingface, decoded_vocab); a correction decodes the
    whole vocabulary (~0.8 s at Qwen's size)."""
    key = (len(tokenizer), vocab_size)
    try:
        known = _CHECKED.setdefault(tokenizer, {})
    except TypeError:  # a tokenizer that cannot be weakly referenced or hashed: checked each time
        known = {}
    if key not in known:
        known[key] = _checked(tokenizer, vocab_size)
    return known[key]


def xgrammar_tokenizer_info(tokenizer: Any, vocab_size: int,
                            stop_token_ids: Sequence[int] | None = None) -> xgrammar.TokenizerInfo:
    """xgrammar's TokenizerInfo for the tokenizer, built from the checked bytes (RAW: taken as they are).
    Those are xgrammar's own reading where the check found it right, so its special and stop ids come out
    the same as from_huggingface's; reading the tokenizer a second time cost 0.6 s at Qwen's size (0.07 s so)."""
    checked = checked_token_bytes(tokenizer, vocab_size)
    stops = list(stop_token_ids) if stop_token_ids is not None else None
    if stops is None and tokenizer.eos_token_id is not None:
        stops = [tokenizer.eos_token_id]
    return xgrammar.TokenizerInfo(list(checked.token_bytes), xgrammar.VocabType.RAW, vocab_size=vocab_size,
                                  stop_token_ids=stops, add_prefix_space=checked.add_prefix_space)


def misread_token(checked: CheckedBytes, read: Callable[[int], bytes]) -> tuple[int, bytes] | None:
    """The first checked id (`CheckedBytes.sample`) whose bytes another backend's `read` gets wrong, with
    what it reads; None where it agrees on all of them."""
    for token_id in checked.sample:
        got = read(token_id)
        if got != checked.token_bytes[token_id]:
            return token_id, got
    return None


def tokenizer_name(tokenizer: Any) -> str:
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    return f"{name} (decoder {decoder!r})" if decoder is not None else name


def token_text(tokenizer: Any, token_id: int) -> str:
    try:
        return str(tokenizer.convert_ids_to_tokens(token_id))
    except Exception:  # noqa: BLE001 - only for a message
        return "?"


def _checked(tokenizer: Any, vocab_size: int) -> CheckedBytes:
    num_tokens = min(len(tokenizer), vocab_size)
    info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
    decoded = [bytes(b) for b in info.decoded_vocab]
    decoded += [b""] * (vocab_size - len(decoded))
    for token_id in range(num_tokens, vocab_size):
        decoded[token_id] = b""
    return check_decoded(tokenizer, decoded, num_tokens, info.add_prefix_space)


def check_decoded(tokenizer: Any, decoded: list[bytes], num_tokens: int,
                  add_prefix_space: bool = False) -> CheckedBytes:
    """`checked_token_bytes` on bytes already read (`decoded`, one entry per logits row)."""
    skip = added_token_ids(tokenizer)
    found = _reader(tokenizer, decoded, num_tokens, skip)
    if found is None:  # no plain token to decode after: nothing to compare with
        return CheckedBytes(decoded, num_tokens, add_prefix_space, 0, ())
    read, prefix = found
    skip = skip | {prefix}  # (its bytes after itself may not be its own: a decoder that merges repeats)
    sample, wrong = [], []
    for token_id in _sample_ids(tokenizer, decoded, num_tokens, skip):
        truth = read(token_id)
        if truth is not None:
            sample.append(token_id)
            if truth != decoded[token_id]:
                wrong.append((token_id, truth))
    fixed, corrected = decoded, 0
    if wrong:  # the tokenizer's decoding is what the answer's text is: every token's bytes taken from it
        fixed = list(decoded)
        for token_id in range(num_tokens):
            if token_id not in skip and (truth := read(token_id)) is not None and truth != fixed[token_id]:
                fixed[token_id] = truth
                corrected += 1
    _check_composes(tokenizer, fixed, sample, read, decoded, wrong[0] if wrong else None)
    return CheckedBytes(fixed, num_tokens, add_prefix_space, corrected, tuple(sample))


def _reader(tokenizer: Any, decoded: list[bytes], num_tokens: int,
            skip: set[int]) -> tuple[Callable[..., bytes | None], int] | None:
    """A function giving the bytes of ids as the tokenizer decodes them after a plain prefix token (None
    where that decoding is not the prefix's text and more, or holds a byte of a character, U+FFFD, that the
    tokens' own bytes do not), and that prefix token; None where no prefix token is found."""
    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    candidates = []
    for text in _PREFIXES:
        try:
            candidates.append(decoded.index(text, 0, num_tokens))
        except ValueError:
            pass
    candidates += list(tokenizer.encode("a", add_special_tokens=False))[-1:]
    for prefix in candidates:
        if prefix in skip or not 0 <= prefix < num_tokens:
            continue
        head = decode([prefix])
        if head:
            break
    else:
        return None

    def read(*token_ids: int) -> bytes | None:
        text = decode([prefix, *token_ids])
        if not text.startswith(head):
            return None
        data = text[len(head):].encode("utf-8", "surrogatepass")
        if "\ufffd" in text[len(head):] and data != b"".join(decoded[t] for t in token_ids):
            return None
        return data

    return read, prefix


def _sample_ids(tokenizer: Any, decoded: list[bytes], num_tokens: int, skip: set[int]) -> list[int]:
    """CHECK_SPREAD ids spread over the tokenizer's, every id whose bytes hold '▁' or `<0x`, and the
    `<0xNN>` byte tokens: added and special ones left out."""
    ids = set(range(0, num_tokens, max(1, num_tokens // CHECK_SPREAD)))
    joined = b"".join(decoded[:num_tokens])
    hits = [m.start() for m in _SUSPECT.finditer(joined)]
    if hits:  # each hit's id: the first whose bytes end past it (a hit across two tokens: harmless)
        ends = np.cumsum([len(b) for b in decoded[:num_tokens]])
        ids.update(int(i) for i in np.searchsorted(ends, hits, side="right"))
    byte_ids = tokenizer.convert_tokens_to_ids([f"<0x{b:02X}>" for b in range(256)])
    ids.update(i for i in byte_ids if isinstance(i, int))
    return sorted(i for i in ids if 0 <= i < num_tokens and i not in skip)


def _check_composes(tokenizer: Any, fixed: list[bytes], sample: list[int], read: Callable[..., bytes | None],
                    decoded: list[bytes], example: tuple[int, bytes] | None) -> None:
    """The bytes must spell what the tokenizer decodes a sequence of tokens as: checked on CHECK_PAIRS pairs
    of sampled ids (~3 ms on Qwen's vocabulary), a tokenizer whose decoding depends on the neighbours (a
    CTC decoder merging repeats) is refused. `example`: a token whose bytes were corrected, for the message."""
    if not sample:
        return
    rng = random.Random(0)
    pairs = [(rng.choice(sample), rng.choice(sample)) for _ in range(CHECK_PAIRS)]
    bad = [(a, b, got) for a, b in pairs if (got := read(a, b)) is not None and got != fixed[a] + fixed[b]]
    if len(bad) <= max(2, _PAIR_NOISE * len(pairs)):
        return
    a, b, got = bad[0]
    pair = (f"tokens {a} {token_text(tokenizer, a)!r} and {b} {token_text(tokenizer, b)!r} decode as {got!r} "
            f"together, not {fixed[a] + fixed[b]!r}")
    if example is None:
        head = f"tokenizer {tokenizer_name(tokenizer)}: its decoding cannot be spelled token by token ({pair})"
    else:
        token_id, truth = example
        head = (f"tokenizer {tokenizer_name(tokenizer)}: the grammar backends would read token {token_id} "
                f"{token_text(tokenizer, token_id)!r} as {decoded[token_id]!r} but the tokenizer decodes it as "
                f"{truth.decode('utf-8', 'replace')!r}, and its decoding cannot be spelled token by token "
                f"either ({pair})")
    raise ValueError(f"{head}: no grammar backend can constrain what it decodes")


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
        decoded = list(checked_token_bytes(tokenizer, vocab_size).token_bytes)
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
        ids, spelled = spell_text(self.tokenizer, self.token_bytes, text)
        if spelled:
            return ids
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
