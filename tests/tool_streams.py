"""Streamed tool-call parsing for the parser tests: a text fed in chunks, and the deltas put back together."""
from __future__ import annotations

import itertools
from typing import Any


def stream_in_chunks(parser: Any, text: str, sizes: int | list[int], cut: bool = False) -> tuple[str, list, bool]:
    """Feed `text` in chunks of the given size (or sizes, cycled); (normal text, deltas, made a call)."""
    stream = parser.streaming()
    sent, deltas, i = "", [], 0
    for step in itertools.cycle([sizes] if isinstance(sizes, int) else sizes):
        if i >= len(text):
            break
        normal, calls = stream.feed(text[i:i + step])
        sent, deltas, i = sent + normal, deltas + calls, i + step
    rest, calls, made = stream.finish(cut)
    return sent + rest, deltas + calls, made


def accumulate(deltas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each streamed call's id, name and arguments, put together from its deltas (one header each)."""
    calls: dict[int, dict[str, Any]] = {}
    for d in deltas:
        call = calls.setdefault(d["index"], {"id": None, "name": None, "arguments": ""})
        if "id" in d:
            assert call["id"] is None and d["type"] == "function"
            call["id"] = d["id"]
        call["name"] = d.get("function", {}).get("name") or call["name"]
        call["arguments"] += d.get("function", {}).get("arguments") or ""
    return [calls[k] for k in sorted(calls)]
