from __future__ import annotations

from thinkform.engine.detokenizer import IncrementalDetokenizer, find_stop


def test_multibyte_utf8_split_across_tokens(tiny_tokenizer):
    text = "café 日本語 🙂 naïve — ok"
    ids = tiny_tokenizer.encode(text)
    assert len(ids) > len(text.split())  # byte-level: the emoji and CJK take several tokens
    detok = IncrementalDetokenizer(tiny_tokenizer, tiny_tokenizer.encode("Hello"), frozenset())
    pieces = [detok.push([t]) for t in ids]
    pieces.append(detok.flush())
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_hidden_special_tokens_skipped(tiny_tokenizer):
    eos = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    detok = IncrementalDetokenizer(tiny_tokenizer, [1], frozenset({eos}))
    ids = tiny_tokenizer.encode("Paris") + [eos]
    "".join(detok.push([t]) for t in ids)
    assert detok.text == "Paris"


def test_find_stop_earliest_in_new_text():
    assert find_stop("hello world. bye.", 4, [".", "bye"]) == (13, "bye")
    assert find_stop("abc", 1, ["x"]) is None
    assert find_stop("ab|c", 1, ["|c"]) == (2, "|c")  # a stop spanning the old and the new text
