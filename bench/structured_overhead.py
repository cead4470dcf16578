"""What structured output costs at decode time, engine-level (no server).

    python bench/structured_overhead.py [--models tiny embedded] [--tiny-batches 1 8 32] \
        [--embedded-batches 1 8] [--repeats 3] [--json-out results.json]

For each model, three engines in turn (VARIANTS): jump-forward off with the CPU's sparse logits (the
default), jump-forward off with every row's full logits computed and then masked (the grammar's own cost),
and jump-forward on. On each, for each batch size, the seed's
CapitalInfo answers are generated greedily (constrained), then the same prompts unconstrained with
`ignore_eos` and `max_new_tokens` set to each prompt's constrained token count, so both runs write the same
number of tokens in the same batch shapes and the tokens/s ratio isolates the grammar's cost. Runs
alternate constrained / unconstrained `--repeats` times; medians are reported. Batch 1 sends the prompts one
at a time; larger batches send them in one `generate` call.

Forward passes per answer come from the engine's counters: at batch 1, `steps` / answers (one step is one
forward pass: the prefill, then one per sampled token); at any batch, sampled tokens per answer =
(generated − jump-forward − forced tokens) / answers, which is the number of forward passes the answer
needed. Saved = 1 − passes / tokens (without jump-forward each answer token costs one pass).

Models: `tiny` is a random-weight qwen2 model (hidden 64, 2 layers) with the real Qwen vocabulary (151,669
tokens, logits width 151,936); random weights would write CapitalInfo's `name` forever, so its schema
bounds the name to 24 word characters (`^\\w{1,24}$`); numbers are bounded by the engine's anti-runaway rule.
`embedded` is the engine's default model (SmolLM2-135M-Instruct) with the seed's CapitalInfo schema
unchanged and the seed's prompt wording in its chat template.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed_cases import CAPITAL_INFO_SCHEMA, capital_prompts, json_valid  # noqa: E402

QWEN_LOGITS_WIDTH = 151_936
# (jump-forward, sparse logits) per engine: the overhead with the CPU default, the grammar's own cost
# (every row's full logits computed, then masked), and the forward passes jump-forward saves
VARIANTS = ((False, True), (False, False), (True, True))

BOUNDED_CAPITAL_SCHEMA: dict[str, Any] = {
    **CAPITAL_INFO_SCHEMA,
    "properties": {**CAPITAL_INFO_SCHEMA["properties"],
                   "name": {**CAPITAL_INFO_SCHEMA["properties"]["name"], "pattern": "^[A-Za-z0-9_]{1,24}$"}},
}


def make_qwen_tiny_model(path: Path, hidden_size: int = 64, num_layers: int = 2) -> Path:
    from thinkform.testing.models import make_tiny_model_dir
    from thinkform.testing.qwen_vocab import build_qwen_tokenizer

    return make_tiny_model_dir(path, "qwen2", build_qwen_tokenizer(reasoning=False), hidden_size=hidden_size,
                               num_layers=num_layers, vocab_size=QWEN_LOGITS_WIDTH)


@contextlib.contextmanager
def tiny_qwen_engine(**engine_kwargs: Any) -> Iterator[Any]:
    """An Engine on the tiny random model with Qwen's vocabulary, made in a temporary directory (offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import thinkform

    with tempfile.TemporaryDirectory() as tmp:
        engine = thinkform.Engine(model_path=str(make_qwen_tiny_model(Path(tmp) / "tiny-qwen")), **engine_kwargs)
        try:
            yield engine
        finally:
            engine.shutdown()


def tiny_prompts(n: int) -> list[str]:
    """Raw prompts (a random model has no use for a chat template)."""
    return capital_prompts(n)


def chat_prompts(tokenizer: Any, n: int) -> list[str]:
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                          add_generation_prompt=True) for p in capital_prompts(n)]


def _generate(engine: Any, prompts: list[str], params: list[dict[str, Any]], batch: int) -> tuple[list[dict], float]:
    """Prompts in chunks of `batch`, one generate call per chunk; (outputs, seconds)."""
    outs: list[dict] = []
    t0 = time.perf_counter()
    for i in range(0, len(prompts), batch):
        got = engine.generate(prompts[i:i + batch], params[i:i + batch])
        outs.extend(got if isinstance(got, list) else [got])
    return outs, time.perf_counter() - t0


def _counters(engine: Any) -> dict[str, int]:
    return dict(engine.loop.counters)


def decode_pair(engine: Any, prompts: list[str], params: dict[str, Any], repeats: int = 3,
                batch: int | None = None, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """Constrained vs token-matched unconstrained decode on one engine; medians over `repeats` pairs."""
    batch = batch or len(prompts)
    schema = schema if schema is not None else json.loads(params["json_schema"])
    engine.generate(prompts[0], {**params, "max_new_tokens": 8})  # warm-up; compiles and caches the grammar
    pool = engine.parts.pool
    con_rates, free_rates, ratios = [], [], []
    first: dict[str, Any] = {}
    for rep in range(repeats):
        pool.reset_prefix_cache()
        before = _counters(engine)
        outs, dt = _generate(engine, prompts, [params] * len(prompts), batch)
        after = _counters(engine)
        lengths = [o["meta_info"]["completion_tokens"] for o in outs]
        free_params = [{"temperature": 0, "max_new_tokens": n, "ignore_eos": True} for n in lengths]
        pool.reset_prefix_cache()
        free_outs, free_dt = _generate(engine, prompts, free_params, batch)
        free_lengths = [o["meta_info"]["completion_tokens"] for o in free_outs]
        if free_lengths != lengths:
            raise RuntimeError(f"unconstrained run wrote {free_lengths} tokens, expected {lengths}")
        total = sum(lengths)
        con_rates.append(total / dt)
        free_rates.append(total / free_dt)
        ratios.append(free_dt / dt)
        if rep == 0:
            first = _first_run_stats(outs, before, after, schema)
    return {"batch": batch, "answers": len(prompts), "constrained_tok_s": statistics.median(con_rates),
            "unconstrained_tok_s": statistics.median(free_rates), "ratio": statistics.median(ratios),
            "ratios": [round(r, 3) for r in ratios], "constrained_runs": [round(r, 1) for r in con_rates],
            "unconstrained_runs": [round(r, 1) for r in free_rates], **first}


def _first_run_stats(outs: list[dict], before: dict[str, int], after: dict[str, int],
                     schema: dict[str, Any]) -> dict[str, Any]:
    d = {k: after[k] - before.get(k, 0) for k in after}
    n = len(outs)
    tokens = sum(o["meta_info"]["completion_tokens"] for o in outs)
    sampled = d["generated_tokens"] - d["jump_tokens"] - d["forced_tokens"]
    return {
        "tokens_per_answer": tokens / n,
        "steps": d["steps"], "steps_per_answer": d["steps"] / n,
        "passes_per_answer": sampled / n, "jump_tokens": d["jump_tokens"],
        "saved": 1 - sampled / tokens if tokens else 0.0,
        "valid": sum(json_valid(_answer(o), schema) for o in outs),
        "satisfied": sum(bool(o["meta_info"].get("constraint_satisfied")) for o in outs),
        "example": _answer(outs[0])[:80],
    }


def _answer(out: dict) -> str:
    return out["text"]  # a matched EOS is not part of text


def bench_model(label: str, model_path: str | None, make_prompts: Callable[[Any, int], list[str]], schema: dict[str, Any],
                batches: list[int], max_new_tokens: int, repeats: int, bs1_answers: int) -> list[dict[str, Any]]:
    """`make_prompts(tokenizer, n)` gives n distinct prompts; batch 1 runs `bs1_answers` of them one by one."""
    import thinkform

    params = {"temperature": 0, "max_new_tokens": max_new_tokens, "json_schema": json.dumps(schema)}
    rows = []
    for jump, sparse in VARIANTS:
        t0 = time.perf_counter()
        engine = thinkform.Engine(model_path=model_path, disable_jump_forward=not jump,
                                  disable_sparse_logits=not sparse, max_total_tokens=65536)
        print(f"[{label}] engine (jump-forward {'on' if jump else 'off'}, sparse logits {'on' if sparse else 'off'}) "
              f"loaded in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        try:
            for bs in batches:
                prompts = make_prompts(engine.tokenizer, bs1_answers if bs == 1 else bs)
                row = decode_pair(engine, prompts, params, repeats, batch=bs, schema=schema)
                rows.append({"model": label, "jump_forward": jump, "sparse_logits": sparse, **row})
                print(f"[{label}] jf={jump} sparse={sparse} bs={bs}: {json.dumps(rows[-1])}", file=sys.stderr,
                      flush=True)
        finally:
            engine.shutdown()
    return rows


def table(rows: list[dict[str, Any]]) -> list[str]:
    out = ["| model | jump-forward | sparse logits | batch | answers | constrained tok/s | unconstrained tok/s | ratio (per-pair median) "
           "| tokens / answer | passes / answer | saved | steps / answer (bs 1) | valid | example |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        bs1 = f"{r['steps_per_answer']:.1f}" if r["batch"] == 1 else "–"
        out.append(f"| {r['model']} | {'on' if r['jump_forward'] else 'off'} | {'on' if r['sparse_logits'] else 'off'} "
                   f"| {r['batch']} | {r['answers']} "
                   f"| {r['constrained_tok_s']:.1f} | {r['unconstrained_tok_s']:.1f} | {r['ratio']:.3f} "
                   f"| {r['tokens_per_answer']:.1f} | {r['passes_per_answer']:.1f} | {r['saved'] * 100:.0f}% "
                   f"| {bs1} | {r['valid']}/{r['answers']} | `{r['example']}` |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["tiny", "embedded"], choices=["tiny", "embedded"])
    ap.add_argument("--tiny-batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--embedded-batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--bs1-answers", type=int, default=8, help="answers generated one at a time at batch 1")
    ap.add_argument("--embedded-bs1-answers", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--embedded-repeats", type=int, default=2)
    ap.add_argument("--embedded-model-path", default=None, help="default: the engine's embedded model")
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        if "tiny" in args.models:
            model_dir = make_qwen_tiny_model(Path(tmp) / "tiny-qwen")
            rows += bench_model("tiny-qwen-vocab", str(model_dir), lambda tok, n: tiny_prompts(n),
                                BOUNDED_CAPITAL_SCHEMA, args.tiny_batches, args.max_new_tokens, args.repeats,
                                args.bs1_answers)
    if "embedded" in args.models:
        rows += bench_model("embedded", args.embedded_model_path,
                            chat_prompts, CAPITAL_INFO_SCHEMA, args.embedded_batches, args.max_new_tokens,
                            args.embedded_repeats, args.embedded_bs1_answers)
    report(started, table(rows), rows, args.json_out)


def report(started: str, lines: list[str], rows: list[dict[str, Any]], json_out: Path | None, note: str = "") -> None:
    """The run's machine, command and table on stdout (for BENCHMARKS.md); the raw rows to `json_out`."""
    import torch

    print("\n".join([f"Run {started} on {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, "
                     f"torch {torch.__version__} with {torch.get_num_threads()} threads).{note}", "",
                     "Command: `" + " ".join(sys.argv) + "`", ""] + lines))
    if json_out:
        json_out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
