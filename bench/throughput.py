"""Output tokens/s of the embedded model on this machine: thinkform vs transformers.generate, same run.

    python bench/throughput.py [--batch-sizes 1 8 32] [--max-new-tokens 64] [--model-path PATH] \
        [--configs bfloat16/auto bfloat16/none float32/none] [--repeats 3]

A thinkform config is DTYPE/QUANTIZATION: `bfloat16/auto` is the default engine on a bf16-capable CPU (the
embedded Q4_1 GGUF then runs on its own 4-bit weights), `bfloat16/none` the same weights dequantized.

Each engine runs in its own child process, one after the other: two engines in one process would each keep
an OpenMP team, and libgomp throttles every team once it manages more threads than there are cores.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

PROMPTS = [
    "Give me the information and population of the capital of France in the JSON format.",
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain why the sky is blue in two sentences.",
    "List three uses of a paperclip.",
    "Summarize the plot of Hamlet.",
    "What is 17 times 23?",
    "Describe a cat to someone who has never seen one.",
]


def prompts_for(tok, batch: int) -> list[str]:
    msgs = [[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}] for i in range(batch)]
    return [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in msgs]


def bench_thinkform(engine, batch: int, new: int) -> float:
    prompts = prompts_for(engine.tokenizer, batch)
    params = {"temperature": 0, "max_new_tokens": new, "ignore_eos": True}
    engine.generate(prompts[:1], {**params, "max_new_tokens": 4})  # warm-up
    engine.parts.pool.reset_prefix_cache()
    t0 = time.perf_counter()
    outs = engine.generate(prompts, params)
    dt = time.perf_counter() - t0
    return sum(o["meta_info"]["completion_tokens"] for o in outs) / dt


def bench_transformers(model, tok, batch: int, new: int) -> float:
    prompts = prompts_for(tok, batch)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    model.generate(**{k: v[:1] for k, v in enc.items()}, max_new_tokens=4, do_sample=False)
    t0 = time.perf_counter()
    out = model.generate(**enc, max_new_tokens=new, min_new_tokens=new, do_sample=False)
    dt = time.perf_counter() - t0
    return (out.shape[1] - enc["input_ids"].shape[1]) * batch / dt


def child(args: argparse.Namespace) -> None:
    """One engine, every batch size; prints {batch: tok/s} as JSON."""
    import thinkform

    results = {}
    if args.child == "transformers":
        import torch
        from transformers import AutoModelForCausalLM

        from thinkform.models.loader import load_model

        loaded = load_model(args.model_path, torch.float32, "cpu")  # the converted copy of the same weights
        model = AutoModelForCausalLM.from_pretrained(loaded.model_path, dtype=torch.float32).eval()
        tokenizer = loaded.tokenizer
        del loaded
        for bs in args.batch_sizes:
            results[bs] = statistics.median(bench_transformers(model, tokenizer, bs, args.max_new_tokens)
                                            for _ in range(args.repeats))
    else:
        dtype, _, quantization = args.child.partition("/")
        with thinkform.Engine(model_path=args.model_path, dtype=dtype, quantization=quantization or "auto") as engine:
            for bs in args.batch_sizes:
                results[bs] = statistics.median(bench_thinkform(engine, bs, args.max_new_tokens)
                                                for _ in range(args.repeats))
    print("RESULT " + json.dumps(results), flush=True)


def run_child(args: argparse.Namespace, which: str) -> dict[int, float]:
    cmd = [sys.executable, __file__, "--child", which, "--max-new-tokens", str(args.max_new_tokens),
           "--repeats", str(args.repeats),
           "--batch-sizes", *map(str, args.batch_sizes)]
    if args.model_path:
        cmd += ["--model-path", args.model_path]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return {int(k): v for k, v in json.loads(line[len("RESULT "):]).items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument("--repeats", type=int, default=3, help="runs per batch size; the median is reported")
    ap.add_argument("--configs", nargs="+", default=["bfloat16/auto", "bfloat16/none", "float32/none"],
                    help="thinkform DTYPE/QUANTIZATION configs to measure (transformers runs float32, its CPU default)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    theirs = {} if args.skip_transformers else run_child(args, "transformers")
    ours = {cfg: run_child(args, cfg) for cfg in args.configs}
    for bs in args.batch_sizes:
        row: dict = {"batch": bs, "transformers_fp32_tok_s": round(theirs[bs], 1) if theirs else None}
        for cfg in args.configs:
            row[f"thinkform_{cfg}_tok_s"] = round(ours[cfg][bs], 1)
            if theirs:
                row[f"ratio_{cfg}"] = round(ours[cfg][bs] / theirs[bs], 2)
        print(json.dumps(row), flush=True)
    import torch

    print(f"machine: {platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}")


if __name__ == "__main__":
    main()
