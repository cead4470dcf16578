"""Utf8Guard: a constrained answer is well-formed UTF-8 even where the grammar backend admits more.

xgrammar 0.2.8 admits UTF-8-encoded surrogates inside JSON strings; a random model once wrote
`{"name": "oningЌ\\xed\\xb4\\xb7)"}` under `maxLength: 8`, which the user received as
`"oningЌ���)"`, 10 characters, breaking the schema."""
from __future__ import annotations

import itertools
import json

import jsonschema
import pytest
import torch
import xgrammar as xgr
from hypothesis import given
from hypothesis import strategies as st

from thinkform.structured.bitmask import narrow_unless_empty
from thinkform.structured.utf8 import BOUNDARY, Utf8Guard, Utf8Rules, advance

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8}}, "required": ["name"]}
SURROGATE_BYTES = [0xED] + list(range(0xA0, 0xC0))  # ED A0..BF xx is U+D800..U+DFFF


def _python_accepts_prefix(data: bytes) -> bool:
    """Whether some bytes after `data` make it well-formed UTF-8, by Python's strict decoder. (Its incremental
    decoder alone is no oracle: it buffers b"\\xed\\xa0", the start of a surrogate, without complaint.) One of
    these continuation bytes is legal wherever any is (80..8F after F4, 80..9F after ED, 90..BF after F0,
    A0..BF after E0, else 80..BF), so trying them up to 3 deep is exact."""
    for k in range(4):
        for tail in itertools.product(b"\x80\x90\xa0\xbf", repeat=k):
            try:
                (data + bytes(tail)).decode("utf-8")
                return True
            except UnicodeDecodeError:
                pass
    return False


@given(st.binary(max_size=12) | st.text(max_size=6).map(lambda s: s.encode("utf-8", "surrogatepass")))
def test_the_decoder_states_agree_with_pythons_strict_utf8(data: bytes) -> None:
    try:
        state = advance(BOUNDARY, data)
    except ValueError:
        assert not _python_accepts_prefix(data)
        return
    assert _python_accepts_prefix(data)
    whole = True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        whole = False
    assert (state is BOUNDARY) == whole


def _allowed(mask: torch.Tensor, n: int) -> set[int]:
    return {i for i in range(n) if (int(mask[0, i // 32]) >> (i % 32)) & 1}


def test_after_a_lead_byte_only_its_legal_continuations_remain() -> None:
    tokens = [b"a", b"\xed", b"\xb4", b"\x9f", b"\x9f\x80", b"\xe4\xb8", b"\xad", b'"', "é".encode(), b"\x80a"]
    guard = Utf8Guard(Utf8Rules(tokens))
    everything = torch.full((1, 1), -1, dtype=torch.int32)

    def after(prefix: bytes) -> set[int]:
        guard.reset()
        guard.observe(prefix)
        mask = everything.clone()
        narrow_unless_empty(mask.numpy()[0], guard.keep())
        return {tokens[i] for i in _allowed(mask, len(tokens))}

    assert after(b"x") == {b"a", b"\xed", b"\xe4\xb8", b'"', "é".encode()}  # no stray continuation
    assert after(b"x\xed") == {b"\x9f", b"\x9f\x80"}  # not A0..BF: that would be a surrogate
    last_byte = {b"\xb4", b"\x9f", b"\xad", b"\x80a"}  # any of 80..BF ends the character
    assert after(b"x\xed\x9f") == last_byte
    assert after(b"\xe4\xb8") == last_byte
    assert after(b"\xe4\xb8\xad") == after(b"")


def test_the_grammar_wins_when_nothing_well_formed_is_left() -> None:
    guard = Utf8Guard(Utf8Rules([b"\xb4", b"\xb5"]))
    mask = torch.tensor([[0b01]], dtype=torch.int32)
    narrow_unless_empty(mask.numpy()[0], guard.keep())
    assert int(mask[0, 0]) == 0b01


def test_xgrammar_admits_surrogates_and_the_gate_removes_them(tiny_tokenizer) -> None:
    from thinkform.structured.backends import BackendContext, create_backend
    from thinkform.structured.gate import Phase, ReasoningGate
    from thinkform.structured.spec import GrammarOptions, constraint_from_fields
    from thinkform.structured.vocab import TokenVocab

    vocab = TokenVocab.from_tokenizer(tiny_tokenizer, len(tiny_tokenizer))
    backend = create_backend("xgrammar", BackendContext(tiny_tokenizer, vocab.vocab_size,
                                                        vocab.eos_token_ids, GrammarOptions()))
    compiled = backend.compile(constraint_from_fields(json_schema=SCHEMA))
    byte_id = vocab.byte_ids
    surrogate_tails = {byte_id[b] for b in range(0xA0, 0xC0) if b in byte_id}
    assert surrogate_tails and 0xED in byte_id

    def allowed_after(gate: ReasoningGate) -> set[int]:
        mask = xgr.allocate_token_bitmask(1, vocab.vocab_size)
        gate.fill_bitmask(mask, 0)
        return _allowed(mask, vocab.vocab_size)

    prefix = vocab.encode_text('{"name": "ab') + [byte_id[0xED]]
    plain = ReasoningGate(vocab, None, Phase.ANSWER, compiled.new_matcher())
    plain.accept_forced(prefix)
    assert surrogate_tails <= allowed_after(plain)  # the backend's own mask lets a surrogate through

    guarded = ReasoningGate(vocab, None, Phase.ANSWER, compiled.new_matcher(),
                            guards=[Utf8Guard(Utf8Rules(vocab.token_bytes))])
    guarded.accept_forced(prefix)
    ok = allowed_after(guarded)
    assert not surrogate_tails & ok and byte_id[0x9F] in ok
    guarded.rollback(1)  # replayed: back at a character boundary, continuation bytes are out
    assert not {byte_id[b] for b in range(0x80, 0xC0) if b in byte_id} & allowed_after(guarded)


@pytest.mark.parametrize("backend", ["xgrammar", "llguidance", "outlines"])
def test_a_model_pushed_towards_broken_utf8_still_answers_in_well_formed_utf8(tiny_model_dirs, tiny_tokenizer,
                                                                             backend) -> None:
    """Logit bias drives a random model towards lone lead bytes, surrogate tails and bytes that are never
    UTF-8; every answer must still decode strictly and meet its maxLength in characters."""
    from thinkform import Engine
    from thinkform.structured.vocab import TokenVocab

    vocab = TokenVocab.from_tokenizer(tiny_tokenizer, len(tiny_tokenizer))
    bias = {str(vocab.byte_ids[b]): 8.0 for b in SURROGATE_BYTES + [0x80, 0xC0, 0xF5, 0xFF] if b in vocab.byte_ids}
    params = [{"max_new_tokens": 32, "json_schema": json.dumps(SCHEMA), "logit_bias": bias, "seed": i,
               "temperature": 1.0} for i in range(24)]
    with Engine(model_path=str(tiny_model_dirs["qwen2"]), grammar_backend=backend, max_total_tokens=4096) as engine:
        outs = engine.generate(["Name?"] * len(params), params)
    finished = [o for o in outs if o["meta_info"]["finish_reason"]["type"] == "stop"]
    assert len(finished) >= 12
    for o in finished:
        answer = vocab.bytes_of(t for t in o["output_ids"] if t not in vocab.eos_token_ids)
        jsonschema.validate(json.loads(answer.decode("utf-8")), SCHEMA)  # strict: raises on ill-formed bytes
        assert json.loads(o["text"]) == json.loads(answer)
