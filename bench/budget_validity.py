"""Answers of real-world schemas under tight token budgets, after reasoning: how many come back valid, and
what the budget's ending costs the engine loop.

    python bench/budget_validity.py --schemas-dir ../shared/data/jsonschemabench [--per-subset 6] [--seed 0]

The promise under test: a reasoning model's constrained answer always arrives valid when the schema's
shortest answer fits the tokens left, even when thinking ate most of `max_new_tokens`. A tiny random qwen2
model with the real Qwen vocabulary thinks first (`<think>` open, deepseek-r1 markers) and answers under each
schema (default `auto` backend), greedy and sampled, in the configurations below. For every answer: valid
(JSON that the schema validates, `jsonschema`), invalid, or refused up front (a clear error: a keyword the
backends cannot enforce). Only schemas whose shortest answer (the engine's own measure) plus the closing
reserve fits `max_new_tokens` count; the others are listed apart.

Each configuration runs twice in one engine (compiled grammars shared): with the step check (gate.py's
`ending_instead`: a step that leaves the answer's ending no room is undone and the ending written instead)
and without it (the check switched off, as before it existed). `searches` and `search ms` are the ending
searches each answer cost the engine loop (EndingSearch.ending_tokens, timed around each call).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import jsonschema

from thinkform import Engine
from thinkform.structured.closing import closing_reserve
from thinkform.structured.ending import EndingSearch
from thinkform.structured.gate import ReasoningGate
from thinkform.structured.spec import constraint_from_fields
from thinkform.testing.models import make_tiny_model_dir
from thinkform.testing.qwen_vocab import build_qwen_tokenizer

CONFIGS = {
    "greedy, 16 tokens": {"temperature": 0, "max_new_tokens": 16},
    "greedy, 24 tokens": {"temperature": 0, "max_new_tokens": 24},
    "sampled, 24 tokens": {"temperature": 1, "max_new_tokens": 24, "seed": 1},
    "sampled, 48 tokens, thinking 4": {"temperature": 1, "max_new_tokens": 48, "seed": 3, "max_reasoning_tokens": 4},
    "greedy, 96 tokens, thinking 8": {"temperature": 0, "max_new_tokens": 96, "max_reasoning_tokens": 8},
}
PROMPT = "Give the answer as JSON."


class SearchClock:
    """Counts and times EndingSearch.ending_tokens (one engine loop thread: no locking needed)."""

    def __init__(self) -> None:
        self.calls, self.seconds = 0, 0.0
        self._original = EndingSearch.ending_tokens
        clock = self

        def timed(search, *args, **kwargs):
            start = time.perf_counter()
            try:
                return clock._original(search, *args, **kwargs)
            finally:
                clock.calls += 1
                clock.seconds += time.perf_counter() - start

        EndingSearch.ending_tokens = timed  # type: ignore[method-assign]

    def take(self) -> tuple[int, float]:
        calls, seconds = self.calls, self.seconds
        self.calls, self.seconds = 0, 0.0
        return calls, seconds


def sample_schemas(root: Path, per_subset: int, seed: int) -> list[Path]:
    rng = random.Random(seed)
    picked = []
    for subset in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(subset.glob("*.json"))
        picked += rng.sample(files, min(per_subset, len(files)))
    return picked


def outcome(schema: dict, out: dict) -> str:
    content = out["meta_info"].get("content") or ""
    try:
        jsonschema.validate(json.loads(content), schema)
    except (ValueError, jsonschema.ValidationError, jsonschema.SchemaError):
        return "invalid"
    return "valid"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--schemas-dir", type=Path, required=True)
    ap.add_argument("--per-subset", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json-out", type=Path, default=None)
    ap.add_argument("--checked-only", action="store_true", help="run each configuration with the step check only")
    ap.add_argument("--compile-timeout", type=float, default=None,
                    help="the engine's grammar_compile_timeout (seconds; a loaded machine may need more)")
    args = ap.parse_args()

    tok = build_qwen_tokenizer()
    model = make_tiny_model_dir(Path(tempfile.mkdtemp()) / "qwen", "qwen2", tok, vocab_size=151936, seed=0)
    clock = SearchClock()
    step_check = ReasoningGate.ending_instead
    rows: list[dict] = []
    timeout = {} if args.compile_timeout is None else {"grammar_compile_timeout": args.compile_timeout}
    with Engine(model_path=str(model), reasoning_parser="deepseek-r1", max_total_tokens=8192, **timeout) as engine:
        schemas = []
        for path in sample_schemas(args.schemas_dir, args.per_subset, args.seed):
            text = path.read_text()
            try:
                compiled = engine.parts.grammar_cache.get(constraint_from_fields(json_schema=text))
            except Exception as e:  # noqa: BLE001 - refused up front: reported, not run
                rows.append({"schema": str(path), "refused": str(e).splitlines()[0][:120]})
                continue
            schemas.append((path, text, engine.parts.ending_search.shortest_answer(compiled)))
        clock.take()
        for name, params in CONFIGS.items():
            for checked in (True,) if args.checked_only else (True, False):
                ReasoningGate.ending_instead = step_check if checked else (lambda *a, **k: None)  # type: ignore
                for path, text, shortest in schemas:
                    fits = shortest is not None and shortest + closing_reserve(params["max_new_tokens"]) <= \
                        params["max_new_tokens"]
                    out = engine.generate(PROMPT, {**params, "json_schema": text}, require_reasoning=True)
                    calls, seconds = clock.take()
                    rows.append({"schema": str(path), "config": name, "step_check": checked, "fits": fits,
                                 "outcome": outcome(json.loads(text), out), "searches": calls,
                                 "search_ms": seconds * 1e3, "finish": out["meta_info"]["finish_reason"]["type"]})
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        ReasoningGate.ending_instead = step_check  # type: ignore[method-assign]
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=1))
    report(rows)


def report(rows: list[dict]) -> None:
    refused = [r for r in rows if "refused" in r]
    run = [r for r in rows if "refused" not in r]
    print(f"{len({r['schema'] for r in run})} schemas run, {len(refused)} refused up front")
    print("| configuration | step check | invalid where the shortest answer fits | invalid where it does not "
          "| searches an answer (mean) | search ms an answer (mean / max) |")
    print("| --- | --- | --- | --- | --- | --- |")
    groups: dict[tuple[str, bool], list[dict]] = defaultdict(list)
    for r in run:
        groups[(r["config"], r["step_check"])].append(r)
    for (name, checked), group in groups.items():
        fit = [r for r in group if r["fits"]]
        unfit = [r for r in group if not r["fits"]]
        bad = sum(r["outcome"] != "valid" for r in fit)
        bad_unfit = sum(r["outcome"] != "valid" for r in unfit)
        ms = [r["search_ms"] for r in group]
        print(f"| {name} | {'on' if checked else 'off'} | {bad}/{len(fit)} | {bad_unfit}/{len(unfit)} "
              f"| {statistics.mean(r['searches'] for r in group):.1f} | {statistics.mean(ms):.1f} / {max(ms):.1f} |")


if __name__ == "__main__":
    main()
