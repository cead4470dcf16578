from __future__ import annotations

import random

import pytest

from thinkform.engine.detokenizer import IncrementalDetokenizer, find_stop, partial_stop_len


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


def test_partial_stop_len_is_the_longest_end_that_may_begin_a_stop():
    assert partial_stop_len("continental veter", ["terminal"]) == 3  # "ter" may become "terminal"
    assert partial_stop_len("abcab", ["abcabd"]) == 5  # the earliest candidate is the longest
    assert partial_stop_len("xab", ["abc", "bx", "b"]) == 2  # the longest over all stops; a 1-char stop holds none
    assert partial_stop_len("abc", ["abc"]) == 0  # a whole stop is matched, not held
    assert partial_stop_len("hello", ["xyz", ""]) == 0
    assert partial_stop_len("", ["abc"]) == 0
    assert partial_stop_len("aa", ["aaa"]) == 2


def _window_detokenize(tokenizer, prompt_ids, hidden, pushes):
    """The reference: decode the window twice per push (vLLM's prefix/read offsets), in Python."""
    def decode(ids):
        return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    ids = [t for t in prompt_ids[-6:] if t not in hidden]
    prefix, read, pieces = 0, len(ids), []
    for push in pushes:
        visible = [t for t in push if t not in hidden]
        if not visible:
            pieces.append("")
            continue
        ids.extend(visible)
        prefix_text, full = decode(ids[prefix:read]), decode(ids[prefix:])
        if len(full) <= len(prefix_text) or full.endswith("\ufffd"):
            pieces.append("")
            continue
        pieces.append(full[len(prefix_text):])
        prefix, read = read, len(ids)
    prefix_text, full = decode(ids[prefix:read]), decode(ids[prefix:])
    pieces.append(full[len(prefix_text):] if len(full) > len(prefix_text) else "")
    return pieces


def _sentencepiece_style_tokenizer():
    """Llama-2 style: Metaspace pieces, byte fallback for everything else, the leading space stripped."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece in ["▁", *"abcdefghijklmnopqrstuvwxyzPF,.{}\":", "▁P", "▁Paris", "ar", "is", "é"]:
        vocab.setdefault(piece, len(vocab))
    merges = [("▁", "P"), ("a", "r"), ("i", "s"), ("▁P", "ar"), ("▁Par", "is")]
    vocab.setdefault("▁Par", len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(["<s>", "</s>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", bos_token="<s>", unk_token="<unk>")


@pytest.mark.parametrize("kind", ["byte-level BPE", "sentencepiece-style", "Qwen"])
def test_same_text_as_decoding_the_window(kind, tiny_tokenizer):
    """Random token streams (broken UTF-8, special and hidden tokens, several ids a push): every piece and
    the final text are what decoding the window twice per push gives."""
    if kind == "Qwen":
        from thinkform.testing.qwen_vocab import build_qwen_tokenizer

        tokenizer = build_qwen_tokenizer()
    else:
        tokenizer = tiny_tokenizer if kind == "byte-level BPE" else _sentencepiece_style_tokenizer()
    rng = random.Random(7)
    size = len(tokenizer)
    prompt = tokenizer.encode("Hello, what is the capital of France?")
    hidden = frozenset({tokenizer.eos_token_id})
    for trial in range(40):
        ids = [rng.randrange(size) for _ in range(rng.randrange(1, 30))]
        if trial % 4 == 0:  # also text the tokenizer would write itself: words, accents, emoji
            ids = tokenizer.encode(" Paris, café 🙂 北京 é", add_special_tokens=False) + ids
        cuts = sorted(rng.sample(range(1, len(ids)), min(len(ids) - 1, rng.randrange(0, 8))))
        pushes = [ids[a:b] for a, b in zip([0, *cuts], [*cuts, len(ids)])]
        detok = IncrementalDetokenizer(tokenizer, prompt, hidden)
        pieces = [detok.push(p) for p in pushes] + [detok.flush()]
        assert pieces == _window_detokenize(tokenizer, prompt, hidden, pushes), (kind, ids)
        assert detok.text == "".join(pieces)
        assert all(not p.endswith("\ufffd") for p in pieces[:-1])


def test_leading_space_of_the_first_token_kept(tiny_tokenizer):
    sp = _sentencepiece_style_tokenizer()
    for tokenizer in (tiny_tokenizer, sp):
        detok = IncrementalDetokenizer(tokenizer, tokenizer.encode("Hello"), frozenset())
        for t in tokenizer.encode(" Paris", add_special_tokens=False):
            detok.push([t])
        detok.flush()
        assert detok.text == " Paris"


@pytest.mark.parametrize("kind", ["byte-level BPE", "Qwen"])
def test_a_prompt_ending_inside_a_character_leaves_nothing_of_itself_in_the_text(kind, tiny_tokenizer):
    """Audit 15: token prompts cut inside a character (a continuation of an answer cut mid-emoji) made the
    first piece the prompt's last tokens' text (`kyo \\ufffd{"name": …}`): a JSON answer came out invalid, and
    stop strings matched the prompt."""
    if kind == "Qwen":
        from thinkform.testing.qwen_vocab import build_qwen_tokenizer

        tokenizer = build_qwen_tokenizer()
    else:
        tokenizer = tiny_tokenizer
    ids = tokenizer.encode("Give me JSON about Tokyo 東京🙂", add_special_tokens=False)
    cut = [ids[:k] for k in range(len(ids)) if tokenizer.decode(ids[:k]).endswith("\ufffd")]
    assert cut  # the prompts end inside a character
    answer = tokenizer.encode('{"name": "Tokyo"}', add_special_tokens=False)
    for prompt in cut:
        detok = IncrementalDetokenizer(tokenizer, prompt, frozenset())
        pieces = [detok.push([t]) for t in answer] + [detok.flush()]
        assert "".join(pieces) == '{"name": "Tokyo"}', (prompt, pieces)


def test_a_stop_regex_search_that_runs_out_of_time_once_is_tried_again(monkeypatch):
    """Audit 17: the time limit is wall-clock, and with other threads busy an ordinary pattern ran out of it:
    a healthy request was ended. A search that runs out is tried once more with a second's time; only a
    pattern that needs more than that ends its request."""
    import regex

    from thinkform.engine import detokenizer

    monkeypatch.setattr(detokenizer, "STOP_REGEX_SECONDS", 0.0)  # the first try always runs out
    text = "so the final answer: 42" + " and more" * 200
    patterns = [regex.compile(r"(?i)final answer\s*:\s*\d+")]
    assert detokenizer.find_stop_regex(text[:23], 5, patterns) == (7, 23, patterns[0].pattern)
    assert detokenizer.partial_stop_regex_len("so the final ans", patterns) == len("final ans")
    monkeypatch.setattr(detokenizer, "STOP_REGEX_RETRY_SECONDS", 0.01)
    with pytest.raises(detokenizer.StopRegexTimeout, match="stop_regex"):
        detokenizer.find_stop_regex("a" * 40, 1, [regex.compile("(a|aa)+b")])


@pytest.mark.parametrize("kind", ["byte-level BPE", "sentencepiece-style", "Qwen"])
def test_a_lazy_detokenizer_gives_the_text_pushes_as_they_came_give(kind, tiny_tokenizer):
    """A request nobody streams (and without stop strings) decodes its pushes when the text is first read:
    the same text, broken bytes included (a byte-fallback tokenizer's text depends on how ids were pushed)."""
    if kind == "Qwen":
        from thinkform.testing.qwen_vocab import build_qwen_tokenizer

        tokenizer = build_qwen_tokenizer()
    else:
        tokenizer = tiny_tokenizer if kind == "byte-level BPE" else _sentencepiece_style_tokenizer()
    rng = random.Random(3)
    prompt = tokenizer.encode("Hello, what is the capital of France?")
    hidden = frozenset({tokenizer.eos_token_id})
    for trial in range(60):
        ids = [rng.randrange(len(tokenizer)) for _ in range(rng.randrange(1, 30 if trial % 4 else 200))]
        if trial % 3 == 0:
            ids = tokenizer.encode(" Paris, café 🙂 北京 é", add_special_tokens=False) + ids
        # a few ids a push, or one (past LAZY_PUSHES waiting pushes: decoded then, without a read)
        cuts = sorted(rng.sample(range(1, len(ids)), min(len(ids) - 1, rng.randrange(0, 8) if trial % 4 else 999)))
        pushes = [ids[a:b] for a, b in zip([0, *cuts], [*cuts, len(ids)])]
        eager = IncrementalDetokenizer(tokenizer, prompt, hidden)
        # any phase (a batch's rows get consecutive ones): the first burst comes earlier, the text is the same
        lazy = IncrementalDetokenizer(tokenizer, prompt, hidden, lazy=True, lazy_phase=rng.randrange(200))
        for i, push in enumerate(pushes):
            eager.push(push)
            assert lazy.push(push) == ""
            if trial % 2 and i == len(pushes) // 2:  # read midway: what waited is decoded, later pushes wait
                assert lazy.text == eager.text
        eager.flush()
        lazy.flush()
        assert lazy.text == eager.text, (kind, ids)
