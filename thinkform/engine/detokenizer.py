"""Incremental detokenization: correct for multi-byte UTF-8 split across tokens; stop strings."""
from __future__ import annotations

from typing import Any

_CONTEXT_TOKENS = 6  # prompt tokens decoded with the output so leading spaces come out right


class IncrementalDetokenizer:
    """Decodes a small window of ids per step (vLLM's prefix/read offsets) instead of the whole output."""

    def __init__(self, tokenizer: Any, prompt_ids: list[int], hidden_ids: frozenset[int]) -> None:
        self.tokenizer = tokenizer
        self.hidden_ids = hidden_ids
        context = [t for t in prompt_ids[-_CONTEXT_TOKENS:] if t not in hidden_ids]
        self.ids: list[int] = context
        self.prefix_offset = 0
        self.read_offset = len(context)
        self.text = ""

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def push(self, token_ids: list[int]) -> str:
        """Add generated ids; return the newly complete text (held back while a UTF-8 char is unfinished)."""
        visible = [t for t in token_ids if t not in self.hidden_ids]
        if not visible:
            return ""
        self.ids.extend(visible)
        prefix_text = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        if len(full) <= len(prefix_text) or full.endswith("\ufffd"):
            return ""
        new = full[len(prefix_text):]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        self.text += new
        return new

    def flush(self) -> str:
        """At the end: whatever is held back, replacement characters included."""
        prefix_text = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        new = full[len(prefix_text):] if len(full) > len(prefix_text) else ""
        self.prefix_offset = self.read_offset = len(self.ids)
        self.text += new
        return new


def find_stop(text: str, new_len: int, stops: list[str]) -> tuple[int, str] | None:
    """Earliest stop string that ends inside the last new_len chars of text: (start index, stop)."""
    best: tuple[int, str] | None = None
    for stop in stops:
        start = max(0, len(text) - new_len - len(stop) + 1)
        pos = text.find(stop, start)
        if pos >= 0 and (best is None or pos < best[0]):
            best = (pos, stop)
    return best
