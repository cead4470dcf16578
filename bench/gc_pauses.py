"""Python's garbage-collection pauses in the engine's first calls after its start, startup heap frozen or not.

    python bench/gc_pauses.py [--rounds 4] [--batch 32] [--max-new-tokens 128]

A full (generation-2) collection stops every thread and walks every tracked object; an engine's process holds
hundreds of thousands from its start (the tokenizer's vocabulary, the model, compiled grammars). Each variant
runs in a fresh process: the tiny random model with Qwen's vocabulary, the device stood in (host_overhead.py
--stand-in-device: what a GPU's host does a step), then `rounds` rounds of one call under the seed's schema
and one free call of `batch` prompts. Per call: seconds, and the collections that ran inside it by
generation (count, ms), seen through `gc.callbacks`.
"""
from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from host_overhead import StandInDevice  # noqa: E402
from seed_cases import CAPITAL_INFO_SCHEMA  # noqa: E402
from structured_overhead import report, tiny_prompts, tiny_qwen_engine  # noqa: E402

VARIANTS = {"frozen (default)": [], "not frozen (--disable-gc-freeze)": ["--disable-gc-freeze"]}


class CollectionLog:
    """Each collection's generation and duration, while installed in gc.callbacks."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.pauses.append((info["generation"], time.perf_counter() - self._t0))

    def by_generation(self) -> dict[int, tuple[int, float]]:
        out: dict[int, tuple[int, float]] = {}
        for gen, seconds in self.pauses:
            n, ms = out.get(gen, (0, 0.0))
            out[gen] = (n + 1, ms + seconds * 1e3)
        return out


def run_variant(args: argparse.Namespace) -> None:
    """In this process: one engine, its calls, one JSON line per call on stdout."""
    free = {"temperature": 0, "max_new_tokens": args.max_new_tokens, "ignore_eos": True}
    json_params = {"temperature": 0, "max_new_tokens": args.max_new_tokens,
                   "json_schema": json.dumps(CAPITAL_INFO_SCHEMA)}
    log = CollectionLog()
    with tiny_qwen_engine(disable_jump_forward=True, disable_sparse_logits=True, max_total_tokens=65536,
                          disable_gc_freeze=args.disable_gc_freeze) as engine:
        StandInDevice(engine.loop, engine.loop.sampler.tokenizer_size)
        prompts = tiny_prompts(args.batch)
        print(json.dumps({"tracked_objects": len(gc.get_objects()), "frozen": gc.get_freeze_count()}), flush=True)
        gc.callbacks.append(log)
        try:
            for rnd in range(args.rounds):
                for kind, params in (("json", json_params), ("free", free)):
                    log.pauses.clear()
                    t0 = time.perf_counter()
                    engine.generate(prompts, params)
                    seconds = time.perf_counter() - t0
                    gens = log.by_generation()
                    print(json.dumps({"round": rnd, "kind": kind, "seconds": round(seconds, 4),
                                      "gen2": gens.get(2, (0, 0.0))[0], "gen2_ms": round(gens.get(2, (0, 0.0))[1], 1),
                                      "gen01_ms": round(sum(ms for g, (_, ms) in gens.items() if g < 2), 1)}),
                          flush=True)
        finally:
            gc.callbacks.remove(log)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--disable-gc-freeze", action="store_true", help="(one variant, in this process)")
    ap.add_argument("--variant", action="store_true", help="(internal) run one variant here")
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args()
    if args.variant:
        run_variant(args)
        return
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    rows = []
    for label, flags in VARIANTS.items():
        cmd = [sys.executable, __file__, "--variant", "--rounds", str(args.rounds), "--batch", str(args.batch),
               "--max-new-tokens", str(args.max_new_tokens), *flags]
        lines = [json.loads(line) for line in subprocess.run(cmd, capture_output=True, text=True, check=True)
                 .stdout.splitlines() if line.startswith("{")]
        for line in lines:
            rows.append({"variant": label, **line})
            print(rows[-1], file=sys.stderr, flush=True)
    table = ["| variant | tracked objects at start (frozen) | call | seconds | full collections (ms) "
             "| young collections ms |", "|---|---|---|---|---|---|"]
    heap = {r["variant"]: r for r in rows if "tracked_objects" in r}
    for r in rows:
        if "round" in r:
            h = heap[r["variant"]]
            table.append(f"| {r['variant']} | {h['tracked_objects']:,} ({h['frozen']:,}) | {r['round']} {r['kind']} | "
                         f"{r['seconds']:.3f} | {r['gen2']} ({r['gen2_ms']}) | {r['gen01_ms']} |")
    report(started, table, rows, args.json_out, " Tiny random model, Qwen vocabulary, device stood in.")


if __name__ == "__main__":
    main()
