"""A GGUF's vocabulary as llama.cpp reads it, to correct the tokenizer transformers builds from it.

transformers spells a byte-level (tokenizer.ggml.model "gpt2") vocabulary in the byte alphabet, so a CONTROL token
written with other characters (DeepSeek's `<｜User｜>`, `<｜begin▁of▁sentence｜>`) is skipped as an added token
and cut into byte pieces, and its bos / eos / pad, named by that text, are appended as new ids past the model's
vocabulary. llama.cpp matches every CONTROL and USER_DEFINED token whole by its text, under its own id:
`fix_converted_tokenizer` makes the converted copy's tokenizer do the same.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("thinkform")

# llama.cpp's token types (gguf.TokenType)
CONTROL, USER_DEFINED = 3, 4

# llama.cpp's end-of-generation tokens, matched by text (llama-vocab.cpp, special_eog_ids)
END_OF_GENERATION_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
    "<|endoftext|>", "<|eom_id|>", "<EOT>", "_<EOT>", "<｜end▁of▁sentence｜>", "<end_of_utterance>",
)

_SPECIAL_ID_KEYS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "pad_token": "padding_token_id",
                    "unk_token": "unknown_token_id"}


@dataclass
class GGUFVocab:
    model: str | None  # tokenizer.ggml.model: "gpt2" (byte-level BPE), "llama" (sentencepiece), ...
    tokens: list[str]
    types: list[int]
    special_ids: dict[str, int]  # "bos_token" / "eos_token" / "pad_token" / "unk_token" -> the file's id

    def end_of_generation_ids(self) -> list[int]:
        """The eos id, then every token llama.cpp ends generation on (by its text), in id order."""
        wanted = set(END_OF_GENERATION_TEXTS)
        ids = [self.special_ids["eos_token"]] if "eos_token" in self.special_ids else []
        return ids + [i for i, text in enumerate(self.tokens) if text in wanted and i not in ids]


def vocab_from_tokenizer_fields(fields: dict[str, Any]) -> GGUFVocab | None:
    """The vocabulary from the tokenizer fields transformers' `load_gguf_checkpoint` returns (its "tokenizer":
    tokens, token_type, tokenizer_type, bos/eos/pad/unk_token_id), so the file's vocabulary is parsed once."""
    tokens = fields.get("tokens")
    if not isinstance(tokens, list):
        return None
    special_ids = {}
    for name in _SPECIAL_ID_KEYS:
        value = fields.get(f"{name}_id")
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(tokens):
            special_ids[name] = value
    model = fields.get("tokenizer_type")
    types = [int(t) for t in fields.get("token_type") or []]
    return GGUFVocab(model if isinstance(model, str) else None, tokens, types, special_ids)


def fix_converted_tokenizer(out: Path, vocab: GGUFVocab) -> bool:
    """Rewrite the tokenizer transformers saved in `out` from a byte-level GGUF so that every CONTROL (special) and
    USER_DEFINED token is an added token with its own id and raw text, nothing lies past the file's vocabulary,
    and bos / eos / pad / unk name the file's ids. Files needing none of it are left byte for byte as they were.
    Returns whether anything changed."""
    if vocab.model != "gpt2":  # sentencepiece / unigram vocabularies keep their raw spellings already
        return False
    tokenizer_file = out / "tokenizer.json"
    data = json.loads(tokenizer_file.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    bpe_vocab = model.get("vocab")
    if model.get("type") != "BPE" or not isinstance(bpe_vocab, dict):
        return False
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    spelling = bytes_to_unicode()
    n = len(vocab.tokens)
    added: dict[int, dict[str, Any]] = {}
    changed = False
    for entry in data.get("added_tokens") or []:
        if entry["id"] >= n:  # appended past the model's vocabulary: its text gets its real id below
            changed = True
        else:
            added[entry["id"]] = entry
    wanted = {i: (text, kind == CONTROL) for i, (text, kind) in enumerate(zip(vocab.tokens, vocab.types))
              if kind in (CONTROL, USER_DEFINED)}
    for i in vocab.special_ids.values():
        wanted.setdefault(i, (vocab.tokens[i], True))
    merged = None
    for i, (text, special) in sorted(wanted.items()):
        if i in added and added[i]["content"] == text:
            continue
        if bpe_vocab.get(text, i) != i:
            logger.warning("GGUF token %d %r: its text is token %d's; left as it is", i, text, bpe_vocab[text])
            continue
        if text not in bpe_vocab:
            respelled = "".join(spelling[b] for b in text.encode("utf-8"))
            if merged is None:
                merged = {"".join(m.split(" ", 1) if isinstance(m, str) else m) for m in model.get("merges") or []}
            if bpe_vocab.get(respelled) == i and respelled not in merged:
                del bpe_vocab[respelled]
            bpe_vocab[text] = i
        if i in added:
            logger.warning("GGUF token %d: added token %r replaced by the file's %r", i, added[i]["content"], text)
        added[i] = {"id": i, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
                    "normalized": False, "special": special}
        changed = True
    if not changed:
        return False
    data["added_tokens"] = [added[i] for i in sorted(added)]
    ids = {**bpe_vocab, **{entry["content"]: i for i, entry in added.items()}}
    _remap_post_processor(data.get("post_processor"), ids)
    tokenizer_file.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
    config_file = out / "tokenizer_config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text(encoding="utf-8"))
        for name, i in vocab.special_ids.items():
            config[name] = vocab.tokens[i]
        if "added_tokens_decoder" in config:
            config["added_tokens_decoder"] = {
                str(i): {k: v for k, v in entry.items() if k != "id"} for i, entry in sorted(added.items())}
        config_file.write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")
    return True


def _remap_post_processor(processor: Any, ids: dict[str, int]) -> None:
    """The ids a TemplateProcessing (bos added to each prompt) names its special tokens by, from their text."""
    if not isinstance(processor, dict):
        return
    for inner in processor.get("processors") or []:
        _remap_post_processor(inner, ids)
    for name, special in (processor.get("special_tokens") or {}).items():
        tokens = special.get("tokens") or [name]
        if all(t in ids for t in tokens):
            special["ids"] = [ids[t] for t in tokens]
