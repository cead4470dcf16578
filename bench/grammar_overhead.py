"""Grammar backends on real-world schemas, with the real Qwen vocabulary: coverage, compile time, mask time.

    python bench/grammar_overhead.py --schemas-dir ../shared/data/jsonschemabench \
        [--limit N] [--backend-limit outlines=100] [--backends xgrammar llguidance outlines] \
        [--timeout 10] [--walk-tokens 48] [--decode-batch 8] [--json-out results.json]

For each backend, one worker process builds the Qwen tokenizer (151,669 tokens; logits width 151,936 as in
Qwen2.5/Qwen3) and the backend, then takes one schema at a time:
  * cold compile: thinkform's GrammarCache.get (what the engine does for a new constraint);
  * cached lookup: the same get again (an LRU hit);
  * a random valid walk of up to --walk-tokens tokens (the JSONSchemaBench files carry no instances): each
    step times fill_bitmask, then picks an allowed token (half the time one made of JSON punctuation or
    digits, so the walk leaves strings and moves through the structure) and stops at EOS with p = 0.5
    where the grammar may end. The first mask of a walk is reported apart (llguidance builds lazily).
A schema that takes longer than --timeout seconds (compile + walk) is counted as a time-out and its worker
is killed and restarted, so one pathological schema cannot stall the run. A worker that dies counts as a
crash. A walk where the mask allows a token the matcher then rejects (or allows nothing) is a walk error.

Then decode tokens/s constrained vs unconstrained, per backend, on one engine (a tiny random model with
the Qwen vocabulary), via structured_overhead.decode_pair (same prompts, same token counts).
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed_cases import CAPITAL_INFO_SCHEMA  # noqa: E402

QWEN_LOGITS_WIDTH = 151_936  # Qwen2.5 / Qwen3 lm_head rows (the tokenizer has 151,669)
STRUCTURAL_CHARS = frozenset(' {}[]",:0123456789.-')
SEED_ID = "seed/CapitalInfo"


@dataclass
class SchemaResult:
    schema_id: str
    status: str  # ok | rejected | timeout | crash | walk_error
    message: str = ""
    compile_s: float | None = None
    cached_s: float | None = None
    first_mask_s: list[float] = field(default_factory=list)
    mask_s: list[float] = field(default_factory=list)
    walk_tokens: int = 0


@dataclass
class Job:
    schema_id: str
    schema_text: str
    walks: int


# ---- worker process -----------------------------------------------------------------------------------

def worker_main(conn: Connection, backend_name: str, vocab_size: int, walk_tokens: int, seed: int) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(1)
    from thinkform.structured.backends import BackendContext, create_backend
    from thinkform.structured.cache import GrammarCache
    from thinkform.structured.spec import GrammarOptions
    from thinkform.testing.qwen_vocab import build_qwen_tokenizer

    t0 = time.perf_counter()
    tok = build_qwen_tokenizer()
    # The parent enforces the time-out by killing this process; the cache's own time-out must not fire first.
    options = GrammarOptions(compile_timeout_s=3600.0)
    backend = create_backend(backend_name, BackendContext(tok, vocab_size, (tok.eos_token_id,), options))
    walker = Walker(tok, vocab_size, walk_tokens, random.Random(seed))
    conn.send(("ready", time.perf_counter() - t0))
    while True:
        job: Job | None = conn.recv()
        if job is None:
            return
        cache = GrammarCache(backend, max_entries=4)  # a fresh cache: every compile is a cold one
        try:
            conn.send(measure_schema(job, cache, walker))
        finally:
            cache.close()


class Walker:
    """Random valid walks through a compiled grammar, timing fill_bitmask at every step."""

    def __init__(self, tok: Any, vocab_size: int, max_tokens: int, rng: random.Random) -> None:
        import numpy as np
        import xgrammar as xgr

        self.np = np
        self.vocab_size = vocab_size
        self.max_tokens = max_tokens
        self.rng = rng
        self.eos = tok.eos_token_id
        decoded = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab_size).decoded_vocab
        self.structural = np.zeros(vocab_size, dtype=bool)
        for i, data in enumerate(decoded[: len(tok)]):
            text = data.decode("utf-8", errors="replace")
            if text and (set(text) <= STRUCTURAL_CHARS or text in ("true", "false", "null")):
                self.structural[i] = True
        self.bitmask = xgr.allocate_token_bitmask(1, vocab_size)

    def walk(self, matcher: Any) -> tuple[float, list[float], int, str | None]:
        """(first mask seconds, later mask seconds, tokens walked, error or None)."""
        np = self.np
        times: list[float] = []
        for step in range(self.max_tokens):
            t0 = time.perf_counter()
            matcher.fill_bitmask(self.bitmask, 0)
            times.append(time.perf_counter() - t0)
            bits = np.unpackbits(self.bitmask[0].numpy().view(np.uint8), bitorder="little")[: self.vocab_size]
            allowed = bits.astype(bool)
            eos_ok = bool(allowed[self.eos])
            allowed[self.eos] = False
            candidates = np.flatnonzero(allowed)
            if eos_ok and (len(candidates) == 0 or self.rng.random() < 0.5):
                if not matcher.accept_token(self.eos):
                    return times[0], times[1:], step, f"EOS allowed by the mask but rejected at step {step}"
                return times[0], times[1:], step + 1, None
            if len(candidates) == 0:
                return times[0], times[1:], step, f"the mask allows no token at step {step}"
            structural = np.flatnonzero(allowed & self.structural)
            pool = structural if len(structural) and self.rng.random() < 0.5 else candidates
            token = int(pool[self.rng.randrange(len(pool))])
            if not matcher.accept_token(token):
                return times[0], times[1:], step, f"token {token} allowed by the mask but rejected at step {step}"
        return times[0], times[1:], self.max_tokens, None


def measure_schema(job: Job, cache: Any, walker: Walker) -> SchemaResult:
    from thinkform.structured.spec import ConstraintError, constraint_from_fields

    result = SchemaResult(job.schema_id, "ok")
    try:
        constraint = constraint_from_fields(json_schema=job.schema_text)
        t0 = time.perf_counter()
        compiled = cache.get(constraint)
        result.compile_s = time.perf_counter() - t0
    except ConstraintError as e:
        result.status, result.message = "rejected", str(e)[:300]
        return result
    t0 = time.perf_counter()
    cache.get(constraint)
    result.cached_s = time.perf_counter() - t0
    for _ in range(job.walks):
        first, rest, steps, error = walker.walk(compiled.new_matcher())
        result.first_mask_s.append(first)
        result.mask_s.extend(rest)
        result.walk_tokens += steps
        if error is not None:
            result.status, result.message = "walk_error", error
            break
    return result


# ---- parent side --------------------------------------------------------------------------------------

class WorkerCrashed(RuntimeError):
    pass


class Worker:
    """One backend's worker process; killed and restarted when a schema runs past the time-out."""

    def __init__(self, backend: str, args: argparse.Namespace) -> None:
        self.backend = backend
        self.args = args
        self.restarts = 0
        self.init_s: list[float] = []
        self._start()

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker_main, daemon=True, args=(
            child, self.backend, self.args.vocab_size, self.args.walk_tokens, self.args.seed + self.restarts))
        self.proc.start()
        child.close()
        if not self.conn.poll(300):
            raise RuntimeError(f"{self.backend} worker did not start within 300 s")
        _, init_s = self.conn.recv()
        self.init_s.append(init_s)

    def run(self, job: Job, timeout: float) -> SchemaResult:
        try:
            self.conn.send(job)
            if self.conn.poll(timeout):
                return self.conn.recv()
            status, message = "timeout", f"compile + walk ran past {timeout:g} s"
        except (EOFError, BrokenPipeError, ConnectionResetError):
            status, message = "crash", f"worker died (exit code {self.proc.exitcode})"
        self.restart()
        return SchemaResult(job.schema_id, status, message)

    def restart(self) -> None:
        self.kill()
        self.restarts += 1
        self._start()

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join()
        self.conn.close()

    def close(self) -> None:
        try:
            self.conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.proc.join(5)
        self.kill()


def load_schemas(schemas_dir: Path, limit: int | None) -> list[tuple[str, str]]:
    """(subset/file, text) in a stable order; --limit takes the same share from every subset."""
    subsets = sorted(p for p in schemas_dir.iterdir() if p.is_dir())
    if not subsets:
        raise SystemExit(f"--schemas-dir {schemas_dir}: no subset folders found")
    per = None if limit is None else max(1, math.ceil(limit / len(subsets)))
    out = []
    for sub in subsets:
        files = sorted(sub.glob("*.json"))[:per]
        out.extend((f"{sub.name}/{f.stem}", f.read_text(encoding="utf-8")) for f in files)
    return out[:limit] if limit is not None else out


def run_backend(backend: str, schemas: list[tuple[str, str]], args: argparse.Namespace) -> dict[str, Any]:
    worker = Worker(backend, args)
    t0 = time.perf_counter()
    try:
        seed = worker.run(Job(SEED_ID, json.dumps(CAPITAL_INFO_SCHEMA), args.seed_walks), args.timeout)
        results = []
        for i, (sid, text) in enumerate(schemas, 1):
            results.append(worker.run(Job(sid, text, 1), args.timeout))
            if i % 100 == 0 or i == len(schemas):
                ok = sum(r.status == "ok" for r in results)
                print(f"  {backend}: {i}/{len(schemas)} schemas, {ok} ok, {time.perf_counter() - t0:.0f} s",
                      file=sys.stderr, flush=True)
    finally:
        worker.close()
    return {"backend": backend, "seed": seed, "results": results, "wall_s": time.perf_counter() - t0,
            "restarts": worker.restarts, "init_s": worker.init_s}


# ---- statistics and tables ----------------------------------------------------------------------------

def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def ms(v: float | None, digits: int = 2) -> str:
    return "–" if v is None else f"{v * 1e3:.{digits}f}"


def us(v: float | None) -> str:
    return "–" if v is None else f"{v * 1e6:.0f}"


def backend_summary(run: dict[str, Any]) -> dict[str, Any]:
    results: list[SchemaResult] = run["results"]
    ok = [r for r in results if r.status == "ok"]
    compiled = [r for r in results if r.compile_s is not None]
    masks = [t for r in compiled for t in r.mask_s]
    firsts = [t for r in compiled for t in r.first_mask_s]
    count = {s: sum(r.status == s for r in results) for s in ("ok", "rejected", "timeout", "crash", "walk_error")}
    return {
        "backend": run["backend"], "attempted": len(results), **count,
        "compile_p50": pct([r.compile_s for r in compiled], 50),
        "compile_p90": pct([r.compile_s for r in compiled], 90),
        "compile_max": pct([r.compile_s for r in compiled], 100),
        "cached_p50": pct([r.cached_s for r in compiled], 50),
        "first_mask_p50": pct(firsts, 50), "first_mask_p90": pct(firsts, 90),
        "mask_p50": pct(masks, 50), "mask_p99": pct(masks, 99), "mask_max": pct(masks, 100),
        "mask_samples": len(masks), "walk_tokens": sum(r.walk_tokens for r in compiled),
        "ok_ids": sorted(r.schema_id for r in ok), "wall_s": run["wall_s"], "restarts": run["restarts"],
    }


def print_tables(runs: list[dict[str, Any]], summaries: list[dict[str, Any]], out: list[str]) -> None:
    out.append("| backend | schemas | compiled | rejected | time-out | crash | walk error | compile p50 / p90 / max (ms) "
               "| cached lookup p50 (µs) | first mask p50 / p90 (ms) | mask p50 / p99 / max (µs) | masks timed | wall (s) |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in summaries:
        compiled = s["ok"] + s["walk_error"]
        out.append(
            f"| {s['backend']} | {s['attempted']} | {compiled} | {s['rejected']} | {s['timeout']} | {s['crash']} "
            f"| {s['walk_error']} | {ms(s['compile_p50'])} / {ms(s['compile_p90'])} / {ms(s['compile_max'], 0)} "
            f"| {us(s['cached_p50'])} | {ms(s['first_mask_p50'])} / {ms(s['first_mask_p90'])} "
            f"| {us(s['mask_p50'])} / {us(s['mask_p99'])} / {us(s['mask_max'])} | {s['mask_samples']} "
            f"| {s['wall_s']:.0f} |")
    out.append("")
    out.append("Seed schema (CapitalInfo, pydantic), cold compile in a fresh worker, then random walks:")
    out.append("")
    out.append("| backend | status | compile cold (ms) | cached lookup (µs) | first mask p50 (ms) | mask p50 / p99 (µs) | tokens walked |")
    out.append("|---|---|---|---|---|---|---|")
    for run in runs:
        r: SchemaResult = run["seed"]
        out.append(f"| {run['backend']} | {r.status}{(': ' + r.message) if r.message else ''} | {ms(r.compile_s)} "
                   f"| {us(r.cached_s)} | {ms(pct(r.first_mask_s, 50))} | {us(pct(r.mask_s, 50))} / "
                   f"{us(pct(r.mask_s, 99))} | {r.walk_tokens} |")
    out.append("")


def print_subsets(runs: list[dict[str, Any]], out: list[str]) -> None:
    subsets = sorted({r.schema_id.split("/")[0] for run in runs for r in run["results"]})
    out.append("Schemas compiled per subset (compiled / attempted):")
    out.append("")
    out.append("| subset | " + " | ".join(run["backend"] for run in runs) + " |")
    out.append("|---|" + "---|" * len(runs))
    for sub in subsets:
        cells = []
        for run in runs:
            rs = [r for r in run["results"] if r.schema_id.startswith(sub + "/")]
            cells.append(f"{sum(r.compile_s is not None for r in rs)} / {len(rs)}" if rs else "–")
        out.append(f"| {sub} | " + " | ".join(cells) + " |")
    out.append("")


def print_cross(runs: list[dict[str, Any]], out: list[str]) -> None:
    """Where one backend fails a schema another compiles, and what an ordered fallback would cover."""
    status = {run["backend"]: {r.schema_id: r.compile_s is not None for r in run["results"]} for run in runs}
    names = [run["backend"] for run in runs]
    out.append("Schemas one backend fails (rejects, times out or crashes on) and another compiles, on the "
               "schemas both attempted (row fails, column compiles):")
    out.append("")
    out.append("| fails \\ compiles | " + " | ".join(names) + " |")
    out.append("|---|" + "---|" * len(names))
    for a in names:
        cells = []
        for b in names:
            common = status[a].keys() & status[b].keys()
            cells.append("–" if a == b else f"{sum(not status[a][k] and status[b][k] for k in common)} / {len(common)}")
        out.append(f"| {a} | " + " | ".join(cells) + " |")
    out.append("")
    first = names[0]
    for k in range(2, len(names) + 1):
        chain = names[:k]
        common = set.intersection(*(set(status[n]) for n in chain))
        alone = sum(status[first][s] for s in common)
        auto = sum(any(status[n][s] for n in chain) for s in common)
        out.append(f"- `auto` = {' → '.join(chain)} on the {len(common)} schemas all of them attempted: "
                   f"{first} alone compiles {alone}, the fallback chain {auto} (+{auto - alone}).")
    out.append("")


def print_failures(runs: list[dict[str, Any]], out: list[str], per_backend: int = 5) -> None:
    out.append("Sample failure messages:")
    out.append("")
    for run in runs:
        bad = [r for r in run["results"] if r.status != "ok"]
        for r in bad[:per_backend]:
            out.append(f"- {run['backend']} {r.schema_id} [{r.status}]: {r.message[:200]}")
    out.append("")


# ---- decode tokens/s on one engine ----------------------------------------------------------------------

def decode_section(backends: list[str], args: argparse.Namespace, out: list[str]) -> list[dict[str, Any]]:
    import tempfile

    from structured_overhead import BOUNDED_CAPITAL_SCHEMA, decode_pair, make_qwen_tiny_model, tiny_prompts

    import thinkform

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_qwen_tiny_model(Path(tmp) / "tiny-qwen")
        prompts = tiny_prompts(args.decode_batch)
        params = {"temperature": 0, "max_new_tokens": args.decode_max_new_tokens,
                  "json_schema": json.dumps(BOUNDED_CAPITAL_SCHEMA)}
        for backend in backends:
            engine = thinkform.Engine(model_path=str(model_dir), grammar_backend=backend,
                                      disable_jump_forward=True, max_total_tokens=65536)
            try:
                row = decode_pair(engine, prompts, params, repeats=args.decode_repeats)
            finally:
                engine.shutdown()
            rows.append({"backend": backend, **row})
            print(f"  decode {backend}: {row}", file=sys.stderr, flush=True)
    out.append(f"Decode on one engine per backend (tiny random qwen2 model, hidden 64, 2 layers, Qwen vocabulary; "
               f"batch {args.decode_batch}, greedy, jump-forward off, bounded CapitalInfo schema; the unconstrained "
               f"run writes exactly the constrained run's token count per prompt; median of {args.decode_repeats}):")
    out.append("")
    out.append("| backend | constrained tok/s | unconstrained tok/s | ratio | tokens per answer | answers valid |")
    out.append("|---|---|---|---|---|---|")
    for r in rows:
        out.append(f"| {r['backend']} | {r['constrained_tok_s']:.0f} | {r['unconstrained_tok_s']:.0f} "
                   f"| {r['ratio']:.3f} | {r['tokens_per_answer']:.1f} | {r['valid']}/{r['answers']} |")
    out.append("")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--schemas-dir", type=Path, required=True)
    ap.add_argument("--backends", nargs="+", default=["xgrammar", "llguidance", "outlines"])
    ap.add_argument("--limit", type=int, default=None, help="schemas per backend, an equal share per subset")
    ap.add_argument("--backend-limit", nargs="*", default=[], metavar="NAME=N",
                    help="a smaller limit for one backend (outlines=100): its cross-backend figures use the schemas both ran")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per schema (compile + walk)")
    ap.add_argument("--walk-tokens", type=int, default=48)
    ap.add_argument("--seed-walks", type=int, default=50)
    ap.add_argument("--vocab-size", type=int, default=QWEN_LOGITS_WIDTH)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--decode-batch", type=int, default=8, help="0 skips the decode measurement")
    ap.add_argument("--decode-max-new-tokens", type=int, default=48)
    ap.add_argument("--decode-repeats", type=int, default=3)
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    limits = {}
    for item in args.backend_limit:
        name, _, n = item.partition("=")
        if not n.isdigit():
            raise SystemExit(f"--backend-limit {item!r}: expected NAME=N")
        limits[name] = int(n)

    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    runs = []
    for backend in args.backends:
        schemas = load_schemas(args.schemas_dir, limits.get(backend, args.limit))
        print(f"{backend}: {len(schemas)} schemas", file=sys.stderr, flush=True)
        runs.append(run_backend(backend, schemas, args))
    summaries = [backend_summary(run) for run in runs]
    out = [f"Run {started} on {platform.node()} ({platform.processor() or platform.machine()}, "
           f"{os.cpu_count()} CPUs), Python {platform.python_version()}.", "", "Command: `" + " ".join(sys.argv) + "`", ""]
    print_tables(runs, summaries, out)
    print_subsets(runs, out)
    if len(runs) > 1:
        print_cross(runs, out)
    print_failures(runs, out)
    decode = decode_section(args.backends, args, out) if args.decode_batch > 0 else []
    print("\n".join(out))
    if args.json_out:
        args.json_out.write_text(json.dumps({
            "summaries": [{k: v for k, v in s.items() if k != "ok_ids"} for s in summaries],
            "results": {run["backend"]: [asdict(r) | {"mask_s": None, "first_mask_s": None} for r in run["results"]]
                        for run in runs},
            "decode": decode}, indent=1))


if __name__ == "__main__":
    main()
