"""How the engine loop's host time spreads over its steps: bursts that stall a whole batch.

    python bench/step_times.py [--batch 32] [--max-new-tokens 128] [--repeats 5]

On a GPU a step's host work hides under the device's forward pass up to the forward's length; a step whose
host work runs past it leaves the device idle, and every row of the batch waits. Total host time does not
show that, its spread over steps does. The tiny random model with Qwen's vocabulary, the device stood in
(host_overhead.py --stand-in-device), `batch` prompts started together, free (ignore_eos) and under the seed's
schema: each step's host time (`EngineLoop._step`), as median, 99th percentile and largest, and the steps
that took more than `--slack-ms` (what a GPU step leaves the host: run 10's H200 ~0.9 ms at batch 32, free).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from host_overhead import StandInDevice, time_calls  # noqa: E402
from seed_cases import CAPITAL_INFO_SCHEMA  # noqa: E402
from structured_overhead import report, tiny_prompts, tiny_qwen_engine  # noqa: E402


def step_times(engine: Any, prompts: list[str], params: dict[str, Any]) -> list[float]:
    """ms of each `_step` of one generate call."""
    loop = engine.loop
    times: list[float] = []
    time_calls(loop, "_step", lambda seconds, _: times.append(seconds * 1e3))
    try:
        engine.parts.pool.reset_prefix_cache()
        engine.generate(prompts, params)
    finally:
        del loop._step
    return times[1:]  # the first step is the prefill


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--slack-ms", type=float, default=0.9)
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    kinds = {"free": {"temperature": 0, "max_new_tokens": args.max_new_tokens, "ignore_eos": True},
             "json": {"temperature": 0, "max_new_tokens": args.max_new_tokens,
                      "json_schema": json.dumps(CAPITAL_INFO_SCHEMA)}}
    rows = []
    with tiny_qwen_engine(disable_jump_forward=True, disable_sparse_logits=True, max_total_tokens=65536) as engine:
        StandInDevice(engine.loop, engine.loop.sampler.tokenizer_size)
        prompts = tiny_prompts(args.batch)
        for params in kinds.values():
            engine.generate(prompts, params)  # warm-up
        for kind, params in kinds.items():
            times = [t for _ in range(args.repeats) for t in step_times(engine, prompts, params)]
            ordered = sorted(times)
            over = [t - args.slack_ms for t in times if t > args.slack_ms]
            rows.append({"kind": kind, "batch": args.batch, "steps": len(times),
                         "median_ms": round(statistics.median(times), 3),
                         "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))], 3),
                         "max_ms": round(ordered[-1], 3), "total_ms": round(sum(times), 1),
                         "over_slack_steps": len(over), "over_slack_ms": round(sum(over), 1)})
            print(rows[-1], file=sys.stderr, flush=True)
    table = [f"| call | steps | median ms | p99 ms | largest ms | host ms in all | steps past {args.slack_ms} ms "
             f"(ms past it) |", "|---|---|---|---|---|---|---|"]
    table += [f"| {r['kind']} | {r['steps']} | {r['median_ms']} | {r['p99_ms']} | {r['max_ms']} | {r['total_ms']} | "
              f"{r['over_slack_steps']} ({r['over_slack_ms']}) |" for r in rows]
    report(started, table, rows, args.json_out, " Tiny random model, Qwen vocabulary, device stood in.")


if __name__ == "__main__":
    main()
