"""Issue 6's GPU benchmark, engine level: thinkform against transformers.generate, same card, same call.

    python bench/gpu_bench.py --out DIR [--config qwen2.5-1.5b|tiny] [--batch-sizes 1 32]
        [--max-new-tokens 128] [--parts thinkform transformers] [--no-compile] [--repeats 5]

Model: random bfloat16 weights at the given config with the real Qwen vocabulary (151,669 tokens, logits
151,936). Greedy, `max-new-tokens` per request, the seed's CapitalInfo schema. Rows (one JSON object per
line, appended to DIR/results.jsonl as each finishes, so a run cut short still reports what it measured):

- `check`: the CUDA path (Triton kernels, with and without CUDA graphs) against the torch path: greedy
  agreement and JSON validity.
- thinkform `free`: `ignore_eos`, all of max-new-tokens, median of `repeats` runs alternated with as many
  with the overlap schedule off (`free_no_overlap`); `json`: constrained with jump-forward off, and an
  unconstrained run that writes exactly the same token counts (`ratio` = constrained / unconstrained tok/s,
  median of `repeats` pairs, each pair's rates kept); `json_jf`: jump-forward on (`sampled_tok_s` counts only
  sampled tokens).
- `attention`: the engine's decode attention against a GQA-grouped candidate (bench/attention_variants.py).
- `profile`: torch.profiler tables of 16 decode steps per batch size (DIR/profile_bs{N}.txt), the
  engine loop's wall time per step in its main calls, free and under the seed's schema (three calls in a
  row after a warm-up, the prefix cache as the thinkform part leaves it; `peaks`: each call's slowest one), one batched mask fill of 32 rows by its thread count (the engine's, thinkform.cpus, against
  xgrammar's "auto"), and the host µs of a graph replay and an event record (`launch_host_us`).
- transformers `eager` (default dynamic cache) and `static` (static cache, `torch.compile`
  reduce-overhead: CUDA graphs), each `free` and `json` (xgrammar's HF logits processor).

Each part runs in its own child process. `bench/gpu_check.sh` is the one-call wrapper for the device.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed_cases import CAPITAL_INFO_SCHEMA, capital_prompts, json_valid  # noqa: E402

CONFIGS: dict[str, dict[str, Any]] = {  # Qwen2.5-1.5B's shapes; `tiny` is for trying the script on a CPU
    "qwen2.5-1.5b": dict(hidden_size=1536, num_layers=28, num_heads=12, num_kv_heads=2, intermediate_size=8960,
                         tie_word_embeddings=True, max_position_embeddings=32768),
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
                 tie_word_embeddings=True),
}
QWEN_LOGITS_WIDTH = 151_936


def build_model(config: str, path: Path) -> Path:
    import torch

    from thinkform.testing.models import make_tiny_model_dir
    from thinkform.testing.qwen_vocab import build_qwen_tokenizer

    if (path / "config.json").is_file():
        return path
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return make_tiny_model_dir(path, "qwen2", build_qwen_tokenizer(reasoning=False), vocab_size=QWEN_LOGITS_WIDTH,
                               dtype=torch.bfloat16, device=device, **CONFIGS[config])


def emit(out: Path, row: dict[str, Any]) -> None:
    print(json.dumps(row), flush=True)
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_check(args: argparse.Namespace) -> None:
    """The CUDA path against the plain torch one on the same card: greedy token agreement (free text and
    JSON), and every JSON answer valid. bf16 kernels differ in rounding, so a random model may part ways
    after a near-tie; agreement is reported, validity must be total."""
    import thinkform

    prompts = capital_prompts(8)
    schema = json.dumps(CAPITAL_INFO_SCHEMA)
    runs: dict[str, list[list[int]]] = {}
    import torch

    variants = (("torch", False), ("triton", True)) if torch.cuda.is_available() else (("torch", False),)
    for backend, graphs in variants:
        name = f"{backend}{'+graphs' if graphs else ''}"
        t0 = time.perf_counter()
        with thinkform.Engine(model_path=str(args.model), dtype="bfloat16", attention_backend=backend,
                              disable_cuda_graph=not graphs, max_total_tokens=1 << 16) as engine:
            start = time.perf_counter() - t0
            free = engine.generate(prompts, {"temperature": 0, "max_new_tokens": 32, "ignore_eos": True})
            constrained = engine.generate(prompts, {"temperature": 0, "max_new_tokens": args.max_new_tokens,
                                                    "json_schema": schema})
            replay = _replay_ms(engine.parts.small_steps)
        runs[name] = [o["output_ids"] for o in free] + [o["output_ids"] for o in constrained]
        valid = sum(json_valid(o["text"], CAPITAL_INFO_SCHEMA) for o in constrained)
        emit(args.out, {"check": name, "start_s": round(start, 1), "json_valid": f"{valid}/{len(constrained)}",
                        "graph_replay_ms": replay, "example": constrained[0]["text"][:80]})
    base = runs["torch"]
    for name, ids in runs.items():
        same = [_common_prefix(a, b) / max(1, len(a)) for a, b in zip(base, ids)]
        emit(args.out, {"check": name, "vs": "torch", "mean_prefix_agreement": round(sum(same) / len(same), 3),
                        "identical": sum(a == b for a, b in zip(base, ids))})


def _replay_ms(steps: Any) -> dict[int, float] | None:
    """Device time of one captured forward (a decode step of that many tokens), for the step's CPU share."""
    import torch

    if steps is None or not steps.graphs:
        return None
    times = {}
    steps.load_padding()  # no stale logit rows or slots from the last real step
    for width in (1, 32):
        graph = steps.graphs.get((width, 1))
        if graph is None:
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        graph.replay()
        start.record()
        for _ in range(20):
            graph.replay()
        end.record()
        end.synchronize()
        times[width] = round(start.elapsed_time(end) / 20, 3)
    return times


def _common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def run_thinkform(args: argparse.Namespace) -> None:
    import thinkform
    from structured_overhead import decode_pair

    prompts = capital_prompts(max(args.batch_sizes))
    schema = json.dumps(CAPITAL_INFO_SCHEMA)
    for jump in (False, True):
        t0 = time.perf_counter()
        with thinkform.Engine(model_path=str(args.model), dtype="bfloat16", disable_jump_forward=not jump,
                              **args.engine_args) as engine:
            steps = engine.parts.small_steps
            emit(args.out, {"engine": "thinkform", "engine_args": args.engine_args,
                            "start_s": round(time.perf_counter() - t0, 1),
                            "kv_tokens": engine.parts.pool.num_pages * engine.parts.pool.page_size,
                            "cuda_graphs": len(steps.graphs) if steps is not None else 0,
                            "one_token_linear": _gemv_plans(engine), "graph_replay_ms": _replay_ms(steps)})
            for bs in args.batch_sizes:
                batch = prompts[:bs]
                if not jump:
                    free = {"temperature": 0, "max_new_tokens": args.max_new_tokens, "ignore_eos": True}
                    engine.generate(batch, free)  # warm-up
                    rates = _free_rates(engine, batch, free, args.repeats)
                    emit(args.out, {"engine": "thinkform", "kind": "free", "batch": bs,
                                    "tok_s": statistics.median(rates["engine"]), "runs": rates["engine"]})
                    # what a call costs besides its decode steps (prefill, hand-offs, the last step's ahead)
                    one = _median_seconds(lambda: engine.generate(batch, {**free, "max_new_tokens": 1}))
                    step = len(batch) / statistics.median(rates["engine"])
                    emit(args.out, {"engine": "thinkform", "kind": "call_overhead", "batch": bs,
                                    "one_token_call_ms": round(one * 1e3, 3),
                                    "decode_step_ms": round((step * args.max_new_tokens - one)
                                                            / (args.max_new_tokens - 1) * 1e3, 4)})
                    if rates["no_overlap"]:  # what the overlap schedule is worth, runs alternated with the above
                        emit(args.out, {"engine": "thinkform", "kind": "free_no_overlap", "batch": bs,
                                        "tok_s": statistics.median(rates["no_overlap"]), "runs": rates["no_overlap"]})
                params = {"temperature": 0, "max_new_tokens": args.max_new_tokens, "json_schema": schema}
                engine.generate(batch, params)  # warm-up at this batch, as the free runs had (the gates' caches)
                row = decode_pair(engine, batch, params, repeats=args.repeats, batch=bs, schema=CAPITAL_INFO_SCHEMA)
                if jump:  # count only sampled tokens: the forced ones cost no step of their own
                    row["sampled_tok_s"] = row["constrained_tok_s"] * row["passes_per_answer"] / row["tokens_per_answer"]
                emit(args.out, {"engine": "thinkform", "kind": "json_jf" if jump else "json", **row})


def _free_rates(engine: Any, batch: list[str], free: dict[str, Any], repeats: int) -> dict[str, list[float]]:
    """tok/s of `repeats` free runs at the engine's schedule ("engine") and, where that is the overlap
    schedule, as many with it off ("no_overlap"), alternated: single runs differed by more than the schedule's
    worth (run 9: 10,051 vs 12,348 tok/s at batch 32, one run each)."""
    initial = engine.loop.overlap
    rates: dict[str, list[float]] = {"engine": [], "no_overlap": []}
    try:
        for _ in range(repeats):
            for label in ("engine", "no_overlap") if initial else ("engine",):
                engine.loop.overlap = initial and label == "engine"
                _sync()
                t0 = time.perf_counter()
                outs = engine.generate(batch, free)
                _sync()
                tokens = sum(o["meta_info"]["completion_tokens"] for o in outs)
                rates[label].append(round(tokens / (time.perf_counter() - t0), 1))
    finally:
        engine.loop.overlap = initial
    return rates


def _median_seconds(call: Any, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        call()
        _sync()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _gemv_plans(engine: Any) -> dict[str, str]:
    """What each one-token linear layer runs on (thinkform.kernels.gemv's choice, timed at start; "silu" the
    MLP's projection fused with its activation, against cuBLAS + the activation kernel)."""
    planner = getattr(engine.parts.model.ops, "gemv", None)
    if planner is None:
        return {}
    return {_plan_name(key): {"chosen": str(t or "cuBLAS"), "us": {
        str(c or "cuBLAS"): round(v, 2)
        for c, v in planner.timings[key].items()}} for key, t in planner.plans.items()}


def _plan_name(key: tuple) -> str:
    return "silu " + "x".join(map(str, key[1])) if key[0] == "silu" else "x".join(map(str, key[0]))


def run_attention(args: argparse.Namespace) -> None:
    """The engine's decode attention against a GQA-grouped candidate (bench/attention_variants.py): on a card
    timed at Qwen2.5-1.5B's heads; on a CPU compared only, on small shapes through Triton's interpreter."""
    import torch

    timed = torch.cuda.is_available()
    if not timed:
        os.environ["TRITON_INTERPRET"] = "1"  # before attention_variants imports triton
    from attention_variants import run

    shapes = ([1, 32], [256, 1024, 4096]) if timed else ([1, 3], [40, 300])
    for row in run(*shapes, timed=timed):
        emit(args.out, row)


def run_profile(args: argparse.Namespace) -> None:
    """torch.profiler over a few decode steps at each batch size: the device kernels a step runs (CUPTI sees
    every thread's; torch's CPU ops of the engine thread are not recorded from this one), as tables in
    DIR/profile_bs{N}.txt: what to fuse next. Empty on a CPU."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    import thinkform

    prompts = capital_prompts(max(args.batch_sizes))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with thinkform.Engine(model_path=str(args.model), dtype="bfloat16", **args.engine_args) as engine:
        # is the batched mask fill sized right for this host (thinkform.cpus), and what do its threads buy?
        emit(args.out, {"mask_fill_ms_by_threads": _fill_threads(engine)})
        if torch.cuda.is_available():
            emit(args.out, {"launch_host_us": _launch_costs(engine)})
        for bs in args.batch_sizes:
            params = {"temperature": 0, "max_new_tokens": 16, "ignore_eos": True}
            engine.generate(prompts[:bs], params)  # warm-up
            with profile(activities=activities) as prof:
                engine.generate(prompts[:bs], params)
            emit(args.out, {"host_ms_per_step": bs, **_host_times(engine, prompts[:bs], params)})
            # the same under the seed's schema (jump-forward on, the default): does the CPU's grammar work
            # (masks on the mask thread, advance on the loop's) outlast the device's forward?
            # as long as the benchmark's (at 32 tokens every answer is closed by budget: the ending search's
            # cost, not a step's, filled the `advance` column: 21.7 ms a step at batch 32 on an H200)
            json_params = {"temperature": 0, "max_new_tokens": args.max_new_tokens,
                           "json_schema": json.dumps(CAPITAL_INFO_SCHEMA)}
            engine.generate(prompts[:bs], json_params)  # warm-up: grammar compiled, mask kernel warm
            # three in a row, as the thinkform part runs them: the first timed call after a warm-up ran 15-25 %
            # slower on the card (runs 10-11, batch 32, free and JSON alike). Its warm-up's prompts met a prefix
            # cache in another state than the timed calls' (a prefill of another shape): which part of which
            # step holds the difference (`peaks`), and does it come back with the cache in the warm-up's state?
            free_long = {**params, "max_new_tokens": args.max_new_tokens}
            for label, run_params, reset in (("json", json_params, True), ("free", free_long, False)):
                if not reset:  # the thinkform part's free runs: warmed on an empty cache, timed on a full one
                    engine.parts.pool.reset_prefix_cache()
                    engine.generate(prompts[:bs], run_params)
                for run in range(3):
                    if reset:  # decode_pair's: each run on an empty cache
                        engine.parts.pool.reset_prefix_cache()
                    emit(args.out, {f"host_ms_per_step_{label}": bs, "run": run,
                                    **_host_times(engine, prompts[:bs], run_params)})
            for label, run_params in (("free", free_long), ("json", json_params)):
                (args.out / f"cprofile_bs{bs}_{label}.txt").write_text(
                    _loop_profile(engine, prompts[:bs], run_params))
            sort = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
            table = prof.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=70)
            (args.out / f"profile_bs{bs}.txt").write_text(table)
            emit(args.out, {"profile": bs, "file": f"profile_bs{bs}.txt", "steps": 16})


def _fill_threads(engine: Any, rows: int = 32, repeats: int = 50) -> dict[str, float]:
    """ms of one batched xgrammar mask fill of `rows` CapitalInfo matchers inside the name string, by the fill's
    thread count: 1, 2, 4, 8, the engine's (thinkform.cpus) and xgrammar's own "auto" (the host's CPUs)."""
    import xgrammar

    from thinkform.cpus import usable_cpus
    from thinkform.structured.spec import constraint_from_fields

    compiled = engine.parts.grammar_backend.compile(constraint_from_fields(json_schema=json.dumps(CAPITAL_INFO_SCHEMA)))
    matchers = [compiled.new_matcher() for _ in range(rows)]
    for m in matchers:
        for t in engine.tokenizer.encode('{"name": "ab', add_special_tokens=False):
            m.accept_token(t)
    inner = [m._m for m in matchers]
    bitmask = xgrammar.allocate_token_bitmask(rows, engine.parts.vocab_size)
    out = {}
    for threads in (1, 2, 4, 8, max(1, usable_cpus() // 2), "auto"):
        batch = xgrammar.BatchGrammarMatcher(threads)
        batch.batch_fill_next_token_bitmask(inner, bitmask)  # warm
        t0 = time.perf_counter()
        for _ in range(repeats):
            batch.batch_fill_next_token_bitmask(inner, bitmask)
        out[str(threads)] = round((time.perf_counter() - t0) / repeats * 1e3, 3)
    return out


def _launch_costs(engine: Any, calls: int = 20) -> dict[str, Any]:
    """Host µs a call of what each decode step launches, on this card's host: the batch-1 graph's replay
    through torch's Python wrapper and through its C++ method, an event's record() with and without its
    stream given (run 10: replay 7.6 vs 8.1, the wrapper is `super().replay()`; record 15.6 vs 2.0). The graph replays over padding (the state it was captured in: every k/v write
    to the scratch page), so nothing of the cache changes."""
    import inspect

    import torch

    runner = engine.parts.small_steps
    graph = runner.graphs[min(runner.graphs)]
    runner.load_padding()
    stream = torch.cuda.current_stream()
    event = torch.cuda.Event()
    ways = {"replay_python": lambda: torch.cuda.CUDAGraph.replay(graph),
            "replay_cpp": lambda: torch._C._CUDAGraph.replay(graph),
            "event_record": event.record, "event_record_stream": lambda: event.record(stream)}
    out: dict[str, Any] = {}
    for _ in range(2):  # the second round is the one kept (warm)
        for name, call in ways.items():
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(calls):
                call()
            out[name] = round((time.perf_counter() - t0) / calls * 1e6, 1)
    torch.cuda.synchronize()
    out["torch_replay_source"] = inspect.getsource(torch.cuda.CUDAGraph.replay)[:600]
    return out


def _loop_profile(engine: Any, prompts: list[str], params: dict[str, Any]) -> str:
    """cProfile of the engine loop's thread over one generate call (its step calls profiled where they run):
    which Python calls a step's host time goes to, by own time and by cumulative time."""
    import cProfile
    import io
    import pstats

    loop = engine.loop
    prof, mask_prof = cProfile.Profile(), cProfile.Profile()  # the loop's thread, the mask thread (a GPU's)

    def profiled(inner: Any, profiler: cProfile.Profile) -> Any:
        def call(*a: Any, **k: Any) -> Any:
            profiler.enable()
            try:
                return inner(*a, **k)
            finally:
                profiler.disable()
        return call

    loop._step, loop._finish_ahead = profiled(loop._step, prof), profiled(loop._finish_ahead, prof)
    # the mask thread's own profiler (from 3.12 one profiler sees every thread, and a second may not start); on
    # a CPU the masks fill inside the profiled calls (a nested wrap with the same profiler would stop it early)
    if sys.version_info < (3, 12) and loop.parts.device.type != "cpu":
        loop._fill_masks = profiled(loop._fill_masks, mask_prof)
    steps = loop.counters["steps"]
    try:
        engine.generate(prompts, params)
    finally:
        del loop._step, loop._finish_ahead
        loop.__dict__.pop("_fill_masks", None)
    text = io.StringIO()
    text.write(f"steps: {loop.counters['steps'] - steps}\n")
    for name, profiler in (("loop thread", prof), ("mask thread", mask_prof)):
        if profiler.getstats():
            text.write(f"===== {name}\n")
            stats = pstats.Stats(profiler, stream=text)
            stats.sort_stats("tottime").print_stats(45)
            stats.sort_stats("cumulative").print_stats(45)
    return text.getvalue()


def _host_times(engine: Any, prompts: list[str], params: dict[str, Any]) -> dict[str, float]:
    """Wall time per step inside the engine loop's main calls (the sampler's includes waiting for the device;
    a decode-ahead step's masks fill on the loop thread, a scheduled step's on the mask thread during its
    forward; `deliver` hands the step's outputs over)."""
    from host_overhead import PartTimer, loop_calls

    loop = engine.loop
    timer = PartTimer(loop)
    steps = loop.counters["steps"]
    t0 = time.perf_counter()
    try:
        engine.generate(prompts, params)
    finally:
        timer.remove()
    n = max(1, loop.counters["steps"] - steps)
    return {"total": round((time.perf_counter() - t0) / n * 1e3, 3),
            **{k: round(timer.seconds[k] / n * 1e3, 3) for k in loop_calls(loop)},
            # each part's slowest call (its index among the part's calls, ms): one stall (a kernel compiled or
            # loaded for a new shape, an allocation) or a cost spread over every step?
            "peaks": {k: [i, round(s * 1e3, 3)] for k, (i, s) in timer.peaks.items()}}


def run_transformers(args: argparse.Namespace) -> None:
    import torch
    import xgrammar as xgr
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(str(args.model))
    tok.padding_side = "left"
    tok.pad_token = tok.pad_token or tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(args.model), dtype=torch.bfloat16).to(device).eval()
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=model.config.vocab_size)
    grammar = xgr.GrammarCompiler(info).compile_json_schema(json.dumps(CAPITAL_INFO_SCHEMA))
    prompts = capital_prompts(max(args.batch_sizes))
    for mode in args.transformers_modes:
        if mode == "static":  # generate() then compiles the forward itself (reduce-overhead: CUDA graphs)
            model.generation_config.cache_implementation = "static"
            model.generation_config.disable_compile = args.no_compile
        for bs in args.batch_sizes:
            enc = tok(prompts[:bs], return_tensors="pt", padding=True).to(device)
            for kind in ("free", "json"):
                kwargs: dict[str, Any] = {"max_new_tokens": args.max_new_tokens, "do_sample": False}
                if kind == "free":
                    kwargs["min_new_tokens"] = args.max_new_tokens
                with torch.inference_mode():
                    model.generate(**enc, **kwargs, logits_processor=_processors(kind, grammar, bs))  # warm-up
                    _sync()
                    t0 = time.perf_counter()
                    out = model.generate(**enc, **kwargs, logits_processor=_processors(kind, grammar, bs))
                    _sync()
                dt = time.perf_counter() - t0
                new = out[:, enc["input_ids"].shape[1]:]
                tokens = int((new != tok.pad_token_id).sum()) if kind == "json" else new.numel()
                emit(args.out, {"engine": f"transformers-{mode}", "kind": kind, "batch": bs, "tok_s": tokens / dt,
                                "example": tok.decode(new[0], skip_special_tokens=True)[:80]})


def _processors(kind: str, grammar: Any, bs: int) -> list[Any] | None:
    """A fresh xgrammar logits processor per generate call (it holds the matchers' state)."""
    import xgrammar as xgr

    return [xgr.contrib.hf.LogitsProcessor([grammar] * bs)] if kind == "json" else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--config", default="qwen2.5-1.5b", choices=sorted(CONFIGS))
    ap.add_argument("--model-dir", type=Path, default=Path("/tmp/thinkform-gpu-bench-model"))
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5,
                    help="thinkform's free runs and JSON ÷ free pairs per batch size (medians; the first runs lowest)")
    ap.add_argument("--parts", nargs="+", default=["check", "thinkform", "attention", "profile", "transformers"],
                    choices=["check", "thinkform", "attention", "profile", "transformers"])
    ap.add_argument("--no-compile", action="store_true", help="transformers static cache without torch.compile")
    ap.add_argument("--transformers-modes", nargs="+", default=["eager", "static"], choices=["eager", "static"])
    ap.add_argument("--engine-args", type=json.loads, default={}, help="extra thinkform.Engine arguments (JSON)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.child:
        parts = {"check": run_check, "thinkform": run_thinkform, "attention": run_attention, "profile": run_profile,
                 "transformers": run_transformers}
        parts[args.child](args)
        return
    t0 = time.perf_counter()
    model = build_model(args.config, args.model_dir / args.config)
    emit(args.out, {"event": "model", "config": args.config, "seconds": round(time.perf_counter() - t0, 1)})
    for part in args.parts:
        cmd = [sys.executable, __file__, "--child", part, "--model", str(model), "--out", str(args.out),
               "--max-new-tokens", str(args.max_new_tokens), "--repeats", str(args.repeats),
               "--batch-sizes", *map(str, args.batch_sizes), "--transformers-modes", *args.transformers_modes,
               "--engine-args", json.dumps(args.engine_args)] + \
            (["--no-compile"] if args.no_compile else [])
        # a broken CUDA path still leaves figures: without graphs, then on the torch path
        fallbacks = [[], ["--engine-args", '{"disable_cuda_graph": true}'], ["--engine-args", '{"attention_backend": "torch"}']]
        for extra in fallbacks if part == "thinkform" else [[]]:
            t1 = time.perf_counter()
            code = subprocess.run(cmd + extra).returncode
            emit(args.out, {"event": "part", "part": part, "extra": extra, "returncode": code,
                            "seconds": round(time.perf_counter() - t1, 1)})
            if code == 0:
                break


if __name__ == "__main__":
    main()
