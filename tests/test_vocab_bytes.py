"""The bytes the grammar backends read for each token agree with the tokenizer's own decoding (what an answer's
text is decoded with): checked at start, corrected where xgrammar or llguidance misread a vocabulary, and a
tokenizer whose decoding cannot be spelled token by token refused (vocab.checked_token_bytes)."""
from __future__ import annotations

import json
import random
import re
from typing import Any

import pytest
import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from thinkform.structured.backends import BackendContext, create_backend
from thinkform.structured.backends.llguidance import LLGuidanceBackend
from thinkform.structured.spec import GrammarOptions, constraint_from_fields
from thinkform.structured import vocab as tokvocab
from thinkform.structured.vocab import TokenVocab
from thinkform.testing.tokenizers import build_harmony_tokenizer, build_tiny_tokenizer

SPACE_MARK = "▁".encode()
CORPUS = (
    "What is the capital of France? Paris is the capital of France.",
    '{"name": "Paris", "population": 2147000} [1, 2, 3] true false null',
    "Let me think step by step. The answer is 42. Hello world! How are you today?",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 {} [] : , \" . ! ? _ -",
)
SPECIAL = ("<unk>", "<s>", "</s>")
REPLACE = decoders.Replace("▁", " ")


def sentencepiece(decoder: Any, byte_fallback: bool) -> PreTrainedTokenizerFast:
    """A SentencePiece-style BPE ('▁' for spaces, prepended to the first word) with the given tokenizer.json
    decoder, with or without `<0xNN>` byte tokens; `<think>`/`</think>` added."""
    trainer = Tokenizer(models.BPE())
    trainer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    alphabet = sorted(set("".join(CORPUS).replace(" ", "")) | {"▁"})
    trainer.train_from_iterator(list(CORPUS) * 4, trainer=trainers.BpeTrainer(
        vocab_size=400, show_progress=False, special_tokens=[], initial_alphabet=alphabet))
    trained = json.loads(trainer.to_str())["model"]
    vocab = {s: i for i, s in enumerate(SPECIAL)}
    if byte_fallback:
        vocab.update((f"<0x{b:02X}>", len(SPECIAL) + b) for b in range(256))
    for piece in sorted(trained["vocab"], key=trained["vocab"].get):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=byte_fallback,
                               fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok.decoder = decoder
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIAL])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    wrapped.add_tokens([AddedToken(m, special=False, normalized=False) for m in ("<think>", "</think>")])
    return wrapped


@pytest.fixture(scope="module")
def metaspace_no_fallback() -> PreTrainedTokenizerFast:
    """What transformers' SpmConverter writes for a T5/XGLM-style vocabulary: no byte fallback, a Metaspace
    decoder. xgrammar reads it RAW: '▁the' stays b'\\xe2\\x96\\x81the'."""
    return sentencepiece(decoders.Metaspace(replacement="▁", prepend_scheme="first", split=True), False)


@pytest.fixture(scope="module")
def metaspace_after_byte_fallback() -> PreTrainedTokenizerFast:
    """A `Sequence[ByteFallback, Metaspace]` decoder: xgrammar reads '▁the' as b' the', llguidance (on its
    own) as b'\\xe2\\x96\\x81the'."""
    return sentencepiece(decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(
        replacement="▁", prepend_scheme="first", split=False)]), True)


def _ctx(tok: Any) -> BackendContext:
    return BackendContext(tok, len(tok) + 12, (tok.eos_token_id,), GrammarOptions())


def _allowed(matcher: Any, vocab_size: int) -> list[int]:
    mask = torch.zeros((1, (vocab_size + 31) // 32), dtype=torch.int32)
    matcher.fill_bitmask(mask, 0)
    words = mask[0].tolist()
    return [i for i in range(vocab_size) if (words[i // 32] >> (i % 32)) & 1]


def _walk(backend: Any, tok: Any, constraint: Any, seed: int, vocab_size: int) -> str:
    """A random answer inside the backend's masks, as the tokenizer decodes it: half the steps pick a token
    holding a space, quote or brace where one is allowed, so answers end soon."""
    matcher = backend.compile(constraint).new_matcher()
    rng, ids, eos = random.Random(seed), [], tok.eos_token_id
    pieces = tok.convert_ids_to_tokens(list(range(len(tok))))
    ends = {i for i, piece in enumerate(pieces) if re.search('[▁"}]', piece)}
    for step in range(80):
        allowed = [i for i in _allowed(matcher, vocab_size) if i != eos]
        if matcher.can_terminate() and (not allowed or step >= 4 and rng.random() < 0.5):
            break
        assert allowed, f"dead end after {tok.convert_ids_to_tokens(ids)}"
        closing = [i for i in allowed if i in ends]
        token = rng.choice(closing if closing and rng.random() < 0.5 else allowed)
        assert matcher.accept_token(token)
        ids.append(token)
    assert matcher.can_terminate(), f"unfinished: {tok.convert_ids_to_tokens(ids)}"
    return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def test_metaspace_without_byte_fallback_reads_spaces(metaspace_no_fallback) -> None:
    tok = metaspace_no_fallback
    vocab = TokenVocab.from_tokenizer(tok, len(tok) + 12)
    the = tok.convert_tokens_to_ids("▁the")
    assert vocab.token_bytes[the] == b" the"
    assert not any(SPACE_MARK in data for data in vocab.token_bytes)
    assert vocab.bytes_of(vocab.encode_text("the capital of France")) == b"the capital of France"
    assert tokvocab.checked_token_bytes(tok, len(tok) + 12).corrected > 0


@pytest.mark.parametrize("backend_name", ["xgrammar", "llguidance", "outlines", "auto"])
def test_every_backend_spells_spaces_with_such_a_tokenizer(metaspace_no_fallback, backend_name) -> None:
    """Before: xgrammar and outlines never allowed a space (the answer ran to a dead end), llguidance could
    not read the tokenizer ("can't determine decoder type")."""
    tok = metaspace_no_fallback
    ctx = _ctx(tok)
    backend = create_backend(backend_name, ctx)
    schema = {"type": "object", "properties": {"name": {"type": "string", "pattern": "^[a-z]+ [a-z]+$"}},
              "required": ["name"]}
    for seed in range(3):
        text = _walk(backend, tok, constraint_from_fields(regex="[a-z]+ [a-z]+"), seed, ctx.vocab_size)
        assert re.fullmatch("[a-z]+ [a-z]+", text), text
        text = _walk(backend, tok, constraint_from_fields(json_schema=json.dumps(schema)), seed, ctx.vocab_size)
        assert re.fullmatch("[a-z]+ [a-z]+", json.loads(text)["name"]), text
        if backend_name != "outlines":  # (outlines' JSON is written without spaces)
            assert '", "' in text or '": "' in text, text


def test_llguidance_reads_what_the_others_read(metaspace_after_byte_fallback) -> None:
    """Before: llguidance read '▁the' as b'\xe2\x96\x81the', so no answer with a space could end."""
    tok = metaspace_after_byte_fallback
    ctx = _ctx(tok)
    the = tok.convert_tokens_to_ids("▁the")
    vocab = TokenVocab.from_tokenizer(tok, ctx.vocab_size)
    assert vocab.token_bytes[the] == b" the"  # xgrammar reads this one right
    backend = LLGuidanceBackend(ctx)
    assert backend._tok.decode_bytes([the]) == b" the"
    assert backend._tok.tokenize_str("the capital") == vocab.encode_text("the capital")
    for seed in range(3):
        text = _walk(backend, tok, constraint_from_fields(regex="[a-z]+ [a-z]+"), seed, ctx.vocab_size)
        assert re.fullmatch("[a-z]+ [a-z]+", text), text
    checked = tokvocab.checked_token_bytes(tok, ctx.vocab_size)
    assert checked.corrected == 0
    assert tokvocab.misread_token(checked, lambda i: backend._tok.decode_bytes([i])) is None


def test_a_decoding_that_cannot_be_spelled_token_by_token_is_refused() -> None:
    """A CTC decoder merges a repeated token: `dd` decodes as `d`, so no bytes per token spell its text."""
    vocab = {"<unk>": 0, "</s>": 1}
    for piece in [*"abcdefghij", *("▁" + c for c in "abcdefghij")]:
        vocab[piece] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.CTC(pad_token="<unk>", word_delimiter_token="▁", cleanup=False)
    tok.add_special_tokens([AddedToken(s, special=True) for s in ("<unk>", "</s>")])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>")
    with pytest.raises(ValueError, match=r"tokenizer .*CTC.* cannot be spelled token by token \(tokens \d+ '(\w)' "
                                         r"and \d+ '\1' decode as b'\1' together"):
        TokenVocab.from_tokenizer(wrapped, len(wrapped))
    with pytest.raises(ValueError, match="cannot be spelled token by token"):
        create_backend("xgrammar", _ctx(wrapped))


def _suite_tokenizers() -> list[tuple[str, Any]]:
    gemma = sentencepiece(decoders.Sequence([REPLACE, decoders.ByteFallback(), decoders.Fuse()]), True)
    llama = sentencepiece(decoders.Sequence([REPLACE, decoders.ByteFallback(), decoders.Fuse(),
                                             decoders.Strip(" ", 1, 0)]), True)
    return [("tiny", lambda: build_tiny_tokenizer()), ("tiny, plain markers", lambda: build_tiny_tokenizer(False)),
            ("harmony", build_harmony_tokenizer), ("llama-2 style", lambda: llama), ("gemma style", lambda: gemma)]


@pytest.mark.parametrize("name,build", _suite_tokenizers(), ids=[n for n, _ in _suite_tokenizers()])
def test_the_suites_tokenizers_are_read_as_they_were(name, build) -> None:
    """No false alarm: xgrammar's reading stands for every tokenizer the tests build, and llguidance's own."""
    tok = build()
    ctx = _ctx(tok)
    checked = tokvocab.checked_token_bytes(tok, ctx.vocab_size)
    assert checked.corrected == 0 and len(checked.sample) > len(tok) // 2
    import llguidance.hf

    own = llguidance.hf.from_tokenizer(tok, n_vocab=ctx.vocab_size, eos_token=[tok.eos_token_id])
    assert tokvocab.misread_token(checked, lambda i: own.decode_bytes([i])) is None
    _same_as_xgrammars_reading(tok, ctx.vocab_size)


def _same_as_xgrammars_reading(tok: Any, vocab_size: int) -> None:
    """The TokenizerInfo the xgrammar backend builds from the checked bytes reads the vocabulary as xgrammar's
    own from_huggingface does: the same bytes, special ids, stop ids and prefix space."""
    import xgrammar as xgr

    stops = [tok.eos_token_id]
    built = tokvocab.xgrammar_tokenizer_info(tok, vocab_size, stops)
    own = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab_size, stop_token_ids=stops)
    assert [bytes(b) for b in built.decoded_vocab][:len(own.decoded_vocab)] == [bytes(b) for b in own.decoded_vocab]
    assert (built.special_token_ids, built.stop_token_ids, built.add_prefix_space) == (
        own.special_token_ids, own.stop_token_ids, own.add_prefix_space)


@pytest.fixture(scope="module")
def qwen() -> Any:
    from thinkform.testing.qwen_vocab import build_qwen_tokenizer

    return build_qwen_tokenizer()


def test_qwen_and_the_embedded_model_are_read_as_they_were(qwen) -> None:
    tokenizers = [qwen]
    try:
        from thinkform.models.loader import _load_tokenizer, default_model_file, gguf_to_hf_dir

        tokenizers.append(_load_tokenizer(gguf_to_hf_dir(default_model_file())))  # SmolLM2-135M's GGUF
    except FileNotFoundError:
        pass
    for tok in tokenizers:
        checked = tokvocab.checked_token_bytes(tok, len(tok))
        assert checked.corrected == 0 and len(checked.sample) >= 4000
        _same_as_xgrammars_reading(tok, len(tok))
