"""Shared by the tool-call parser tests: the tools and calls they use, a text fed in chunks and its deltas put
back together, the budget check of an open call, and tiny engines whose call tags are special tokens."""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

WEATHER_PARAMS = {"type": "object", "properties": {
    "city": {"type": "string"}, "days": {"type": "integer"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "days", "unit"]}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_PARAMS}}
DATE = {"type": "function", "function": {"name": "get_date", "parameters": {
    "type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}}
TOOLS = [WEATHER, DATE]
EXPECTED = [("get_weather", {"city": "Paris", "days": 3, "unit": "celsius"}), ("get_date", {"tz": "CET"})]


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


@contextmanager
def special_tag_engines(tmp_path_factory: Any, specials: dict[str, list[str]],
                        reasoning_parser: Callable[[str], str] = lambda name: "qwen3") -> Iterator[Callable[[str], Any]]:
    """A getter of one tiny engine per format (and its tokenizer) whose call tags `specials[name]` are special
    tokens, built when first asked for; all shut down on exit."""
    from transformers import GenerationConfig

    from thinkform import Engine
    from thinkform.server.tools import get_tool_call_parser
    from thinkform.testing.models import make_tiny_model_dir
    from thinkform.testing.tokenizers import build_tiny_tokenizer

    built: dict[str, tuple[Any, Any]] = {}

    def get(name: str) -> tuple[Any, Any]:
        if name not in built:
            tok = build_tiny_tokenizer(marker_is_special=True)
            if specials[name]:
                tok.add_special_tokens({"additional_special_tokens": specials[name]})
            path = make_tiny_model_dir(tmp_path_factory.mktemp(name) / "m", "qwen2", tok, vocab_size=len(tok) + 16,
                                       seed=3)
            GenerationConfig(eos_token_id=[tok.eos_token_id], pad_token_id=tok.pad_token_id).save_pretrained(path)
            engine = Engine(model_path=str(path), reasoning_parser=reasoning_parser(name), max_total_tokens=16384)
            engine.set_tool_markup(get_tool_call_parser(name).markup)
            built[name] = (engine, tok)
        return built[name]

    try:
        yield get
    finally:
        for engine, _ in built.values():
            engine.shutdown()
