"""FramingGuard: a model family's markup never inside a constrained JSON value.

gpt-oss frames its messages with special tokens (`<|channel|>`, `<|message|>`, `<|start|>`, `<|end|>`,
`<|constrain|>`), Kimi-K2 its tool calls (`<|tool_call_begin|>`, `<|tool_call_end|>`, …). A grammar reads
each as its text, which a JSON string may hold, so a model could write one inside a value; sent back in the
next turn's history it would be encoded as the real token and break the conversation's framing. The guard
keeps them out of a JSON answer, and out of a tool call's arguments (a structural tag's JSON) while the
answer is inside them; the call's header and end tag, which need them, are left alone.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from thinkform.structured.closing import TagTracker


class FramingGuard:
    """An AnswerGuard (see gate.py): `keep` is the vocabulary without the markup tokens while `inside()`
    (always, without one), `keep_outside` otherwise (a structural tag's free text and its tags' own strings:
    every token but the special ones no tag string spells, which a text hides or would frame wrong)."""

    def __init__(self, keep_without: np.ndarray, keep_outside: np.ndarray,
                 inside: Callable[[], bool] | None = None, tags: TagTracker | None = None) -> None:
        self._without = keep_without
        self._outside = keep_outside
        self._inside = inside
        self._tags = tags  # or, followed from the answer's bytes (a tool call's XML arguments: inside its tags)

    def reset(self) -> None:
        if self._tags is not None:
            self._tags.reset()

    def observe(self, data: bytes) -> None:
        if self._tags is not None:
            self._tags.feed(data)

    def keep(self) -> np.ndarray:
        if self._tags is not None:
            return self._without if self._tags.inside else self._outside
        return self._without if self._inside is None or self._inside() else self._outside
