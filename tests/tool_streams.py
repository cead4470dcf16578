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


def assert_open_calls_are_closed_valid(engine: Any, name: str, tools: list[dict[str, Any]], schema: dict[str, Any],
                                       budget: int) -> None:
    """A random model never closes a free string, so its required call is open when `budget` runs out: the
    budget ending closes it (value, call and section end), and every call parses and validates against `schema`."""
    import json

    import jsonschema

    from thinkform.server.tools import get_tool_call_parser

    parser = get_tool_call_parser(name)
    tag = json.dumps(parser.structural_tag(tools, "required"))
    outs = engine.generate(["Weather?"] * 4, [{"temperature": 1.0, "seed": i, "max_new_tokens": budget,
                                               "structural_tag": tag} for i in range(4)])
    for out in outs:
        meta = out["meta_info"]
        assert meta["finish_reason"]["type"] == "stop" and meta["constraint_satisfied"], out["text"]
        normal, calls = parser.for_tools(tools).parse(out["text"])
        assert normal == "" and len(calls) >= 1, out["text"]
        for call in calls:
            jsonschema.validate(json.loads(call.arguments), schema)
    assert any(o["meta_info"]["closed_by_budget"] for o in outs)
