"""What a streamed token costs the engine loop as the output grows: its output's building and hand-over.

    python bench/stream_cost.py [--lengths 200 2000] [--batch 8] [--repeats 3]

Streamed outputs are cumulative (SGLang's shape: the whole text and output ids so far, the reasoning split
out). Built on the engine loop for every token, their copies grow with the output, and a long reasoning
stream costs the loop the square of its length. The forward pass and sampler are stood in for (see
host_overhead.py --stand-in-device): the tiny random model, Qwen's vocabulary, DeepSeek-R1's reasoning
markers, `batch` prompts streamed together and read chunk by chunk. Per token, in µs: `loop` (appending it,
building and handing over its output) and `wall` (the whole call, the reading included). Medians of `repeats`,
after a warm-up call.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from host_overhead import StandInDevice, time_calls  # noqa: E402
from structured_overhead import report, tiny_prompts, tiny_qwen_engine  # noqa: E402


def one_run(engine: Any, prompts: list[str], length: int) -> tuple[float, float]:
    """(loop µs, wall µs) per streamed token of one call: `loop` = appending the tokens and building and
    handing over the outputs (`_advance`, and `_deliver` where the tree has it: before, outputs were built
    and handed over inside `_advance`)."""
    loop = engine.loop
    spent: list[float] = []
    wrapped = [name for name in ("_advance", "_deliver") if hasattr(loop, name)]
    for name in wrapped:
        time_calls(loop, name, lambda seconds, _: spent.append(seconds))
    try:
        engine.parts.pool.reset_prefix_cache()
        t0 = time.perf_counter()
        for _ in engine.generate(prompts, [{"temperature": 0, "max_new_tokens": length, "ignore_eos": True}]
                                 * len(prompts), stream=True):
            pass
        wall = time.perf_counter() - t0
    finally:
        for name in wrapped:
            delattr(loop, name)
    tokens = len(prompts) * length
    return sum(spent) / tokens * 1e6, wall / tokens * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[200, 2000])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    rows = []
    with tiny_qwen_engine(reasoning_parser="deepseek-r1",
                          max_total_tokens=2 * args.batch * max(args.lengths) + 4096) as engine:
        StandInDevice(engine.loop, engine.loop.sampler.tokenizer_size)
        prompts = tiny_prompts(args.batch)
        one_run(engine, prompts, 16)  # warm-up
        for length in args.lengths:
            runs = [one_run(engine, prompts, length) for _ in range(args.repeats)]
            rows.append({"length": length, "batch": args.batch, "loop_us": statistics.median(r[0] for r in runs),
                         "wall_us": statistics.median(r[1] for r in runs)})
            print(rows[-1], file=sys.stderr, flush=True)
    table = ["| tokens a stream | batch | loop µs / token | wall µs / token |", "|---|---|---|---|"]
    table += [f"| {r['length']} | {r['batch']} | {r['loop_us']:.1f} | {r['wall_us']:.1f} |" for r in rows]
    report(started, table, rows, args.json_out, " µs per streamed token.")


if __name__ == "__main__":
    main()
