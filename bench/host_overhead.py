"""The engine loop's CPU work per sampled token, constrained vs free: what an accelerator waits for.

    python bench/host_overhead.py [--batch-sizes 1 32] [--max-new-tokens 64] [--repeats 3]

On a GPU the forward pass runs on the device while the CPU fills the next step's grammar masks and appends
the sampled tokens (grammar, detokenizer, stop rules). When that CPU work per step outgrows the forward,
the device waits, and constrained decoding falls behind free decoding. This measures that CPU work here,
on any machine, by timing the loop's pieces around the forward pass: the tiny random model with the real
Qwen vocabulary (151,936 logits), the seed's CapitalInfo schema (name bounded, see structured_overhead.py),
greedy, jump-forward off and every row's full logits computed (`--disable-sparse-logits`, as on a GPU).

Per sampled token, in µs: `masks` (the matchers' batched fill and each gate's rules), `sample` (the
sampler, whose CPU masking a GPU does in one kernel instead), `advance` (appending the token: gate,
grammar accept, detokenizer, stop rules), and `host` = masks + advance, the part a GPU step waits for
whatever the sampler costs. Medians over `--repeats` runs; free runs write the constrained runs' token counts.

`--stream`: outputs streamed and read chunk by chunk (the caller's thread shares the GIL with the loop, as a
server's event loop does); `wall` (µs per sampled token of the whole calls) then counts the reading too.

`--stand-in-device`: the forward pass and the sampler are replaced by stand-ins that cost the host almost
nothing (no logits, a token drawn at random among those the row's mask allows). On this CPU the real forward
and sampler sweep megabytes of weights and logits through the caches before every piece of host work, which
then runs cold (xgrammar's accept ~8 µs a token against ~0.7 warm); a GPU host's caches stay warm, as here.
Only `masks`, `advance` and `host` mean anything then (free rows draw any id of the tokenizer).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from structured_overhead import BOUNDED_CAPITAL_SCHEMA, report, tiny_prompts, tiny_qwen_engine  # noqa: E402

PARTS = ("forward", "masks", "sample", "advance", "deliver")


def loop_calls(loop: Any) -> dict[str, tuple[Any, str]]:
    """The engine loop's main calls by part, as (owner, method name): where a step's time goes."""
    return {"forward": (loop.runner, "forward"), "masks": (loop, "_fill_masks"), "sample": (loop.sampler, "sample"),
            "advance": (loop, "_advance"), "launch_ahead": (loop, "_launch_ahead"),
            "commit_ahead": (loop.scheduler, "commit_ahead")} | (
        {"deliver": (loop, "_deliver")} if hasattr(loop, "_deliver") else {})  # (trees before it: in advance)


def time_calls(owner: Any, method: str, record: Callable[[float, tuple], None]) -> None:
    """Wrap `owner.method` on the instance: each call's wall seconds and positional arguments go to
    `record`. `delattr(owner, method)` puts the method back (the instance attribute shadows it)."""
    inner: Callable[..., Any] = getattr(owner, method)

    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            record(time.perf_counter() - t0, args)

    setattr(owner, method, timed)


class PartTimer:
    """Wraps the loop's main calls on their instances and sums their wall time by part, and the rows the
    sampler saw; `remove()` puts the methods back."""

    def __init__(self, loop: Any) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.peaks: dict[str, tuple[int, float]] = {}  # part → (its slowest call's index, seconds)
        self.rows = 0
        self._calls = loop_calls(loop)
        for part, (owner, method) in self._calls.items():
            time_calls(owner, method, lambda seconds, args, part=part: self._add(part, seconds, args))

    def _add(self, part: str, seconds: float, args: tuple) -> None:
        self.seconds[part] += seconds
        if seconds > self.peaks.get(part, (0, 0.0))[1]:
            self.peaks[part] = (self.calls[part], seconds)
        self.calls[part] += 1
        if part == "sample":
            self.rows += len(args[1])

    def remove(self) -> None:
        for owner, method in self._calls.values():
            delattr(owner, method)  # the instance attribute shadowed the method

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()
        self.peaks.clear()
        self.rows = 0

    def per_row_us(self) -> dict[str, float]:
        return {p: self.seconds[p] / max(self.rows, 1) * 1e6 for p in PARTS}


class StandInDevice:
    """The runner's forward and the sampler, on the loop's instances, replaced by host-cheap stand-ins: a
    zero-width logits tensor, and a token per row drawn (seeded) among those its mask allows; rows without
    a mask draw any id of the tokenizer. `remove()` puts the methods back."""

    def __init__(self, loop: Any, tokenizer_size: int, seed: int = 0) -> None:
        import numpy as np
        import torch
        from thinkform.engine.sampler import SampleOutput

        self._loop, self._np, self._torch, self._out = loop, np, torch, SampleOutput
        self._size = tokenizer_size
        self._rng = np.random.default_rng(seed)
        loop.runner.forward = self._forward
        loop.sampler.sample = self._sample

    def _forward(self, batch: Any, allowed: Any = None) -> tuple[Any, list[int]]:
        rows = [i for i, need in enumerate(batch.needs_logits()) if need]
        return (self._torch.zeros(len(rows), 0) if rows else None), rows

    def _sample(self, logits: Any, seqs: list[Any], bitmask: Any = None, masked_rows: Any = None,
                on_tokens: Any = None) -> Any:
        np = self._np
        masked = set(masked_rows or ())
        tokens = []
        for r in range(len(seqs)):
            if r in masked:  # a random allowed word, then a random bit of it: a few µs, no sweep over the row
                words = bitmask.numpy()[r]
                word = int(self._rng.choice(np.flatnonzero(words)))
                bits = [b for b in range(32) if int(words[word]) >> b & 1 and word * 32 + b < self._size]
                tokens.append(word * 32 + int(self._rng.choice(bits)) if bits else 0)
            else:
                tokens.append(int(self._rng.integers(self._size)))
        return self._out(tokens)

    def remove(self) -> None:
        del self._loop.runner.forward, self._loop.sampler.sample


def run(engine: Any, timer: PartTimer, prompts: list[str], params: list[dict[str, Any]], batch: int,
        stream: bool = False) -> tuple[dict[str, float], list[int]]:
    """One pass over the prompts in batches: µs per sampled token by part, plus `wall` (the whole calls,
    the caller's reading of a stream included), and each answer's length."""
    engine.parts.pool.reset_prefix_cache()
    timer.reset()
    lengths = []
    t0 = time.perf_counter()
    for i in range(0, len(prompts), batch):
        outs = engine.generate(prompts[i:i + batch], params[i:i + batch], stream=stream)
        if stream:  # cumulative chunks: each sequence's last one is its output
            outs = list({chunk.get("index", 0): chunk for chunk in outs}.values())
        lengths += [o["meta_info"]["completion_tokens"] for o in outs]
    wall = time.perf_counter() - t0
    return timer.per_row_us() | {"wall": wall / max(timer.rows, 1) * 1e6}, lengths


def bench_batch(engine: Any, timer: PartTimer, batch: int, answers: int, max_new_tokens: int,
                repeats: int, stream: bool = False, free_tokens: int | None = None) -> dict[str, Any]:
    prompts = tiny_prompts(answers)
    params = {"temperature": 0, "max_new_tokens": max_new_tokens, "json_schema": json.dumps(BOUNDED_CAPITAL_SCHEMA)}
    engine.generate(prompts[:1], [{**params, "max_new_tokens": 8}])  # compiles and caches the grammar
    con, free = defaultdict(list), defaultdict(list)
    for _ in range(repeats):
        times, lengths = run(engine, timer, prompts, [params] * len(prompts), batch, stream)
        for k, v in times.items():
            con[k].append(v)
        free_params = [{"temperature": 0, "max_new_tokens": free_tokens or n, "ignore_eos": True} for n in lengths]
        times, _ = run(engine, timer, prompts, free_params, batch, stream)
        for k, v in times.items():
            free[k].append(v)
    row = {"batch": batch, "answers": answers, "tokens": sum(lengths)}
    for label, series in (("json", con), ("free", free)):
        for part in (*PARTS, "wall"):
            row[f"{label}_{part}"] = statistics.median(series[part])
        row[f"{label}_host"] = row[f"{label}_masks"] + row[f"{label}_advance"]
    return row


def table(rows: list[dict[str, Any]]) -> list[str]:
    if rows and rows[0].get("stand_in"):  # no forward, no sampler: the host work only
        return ["| batch | tokens | masks JSON | advance free / JSON | host (masks + advance) free / JSON "
                "| deliver free / JSON | wall free / JSON |", "|---|---|---|---|---|---|---|"] + [
            f"| {r['batch']} | {r['tokens']} | {r['json_masks']:.1f} | {r['free_advance']:.1f} / "
            f"{r['json_advance']:.1f} | {r['free_host']:.1f} / **{r['json_host']:.1f}** "
            f"| {r['free_deliver']:.1f} / {r['json_deliver']:.1f} | {r['free_wall']:.1f} / {r['json_wall']:.1f} |"
            for r in rows]
    out = ["| batch | tokens | forward free / JSON | masks JSON | sample free / JSON | advance free / JSON "
           "| host (masks + advance) free / JSON |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['batch']} | {r['tokens']} | {r['free_forward']:.0f} / {r['json_forward']:.0f} "
                   f"| {r['json_masks']:.1f} | {r['free_sample']:.1f} / {r['json_sample']:.1f} "
                   f"| {r['free_advance']:.1f} / {r['json_advance']:.1f} "
                   f"| {r['free_host']:.1f} / **{r['json_host']:.1f}** |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--bs1-answers", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json-out", type=Path, default=None)
    ap.add_argument("--stream", action="store_true", help="stream the outputs (read chunk by chunk, as a server)")
    ap.add_argument("--free-tokens", type=int, default=None,
                    help="free rows write this many tokens each (default: as many as the JSON answers)")
    ap.add_argument("--stand-in-device", action="store_true",
                    help="forward and sampler replaced by host-cheap stand-ins (warm caches, as on a GPU host)")
    args = ap.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    rows = []
    with tiny_qwen_engine(disable_jump_forward=True, disable_sparse_logits=True, max_total_tokens=65536) as engine:
        stand_in = StandInDevice(engine.loop, engine.loop.sampler.tokenizer_size) if args.stand_in_device else None
        timer = PartTimer(engine.loop)
        for bs in args.batch_sizes:
            rows.append(bench_batch(engine, timer, bs, args.bs1_answers if bs == 1 else bs,
                                    args.max_new_tokens, args.repeats, args.stream, args.free_tokens)
                        | {"stand_in": stand_in is not None, "stream": args.stream})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    report(started, table(rows), rows, args.json_out, " µs per sampled token.")


if __name__ == "__main__":
    main()
