"""Output tokens/s of the embedded model on this machine: thinkform vs transformers.generate, same run.

    python bench/throughput.py [--batch-sizes 1 8 32] [--max-new-tokens 64] [--model-path PATH] [--dtypes float32 bfloat16]
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"],
                    help="thinkform dtypes to measure (transformers runs float32, its CPU default)")
    args = ap.parse_args()
    import thinkform
    from transformers import AutoModelForCausalLM

    engines = {dt: thinkform.Engine(model_path=args.model_path, dtype=dt) for dt in args.dtypes}
    first = next(iter(engines.values()))
    hf = None
    if not args.skip_transformers:
        hf = AutoModelForCausalLM.from_pretrained(first.parts.model_dir, dtype=torch.float32).eval()
    for bs in args.batch_sizes:
        theirs = bench_transformers(hf, first.tokenizer, bs, args.max_new_tokens) if hf is not None else None
        row: dict = {"batch": bs, "transformers_fp32_tok_s": round(theirs, 1) if theirs else None}
        for dt, engine in engines.items():
            ours = bench_thinkform(engine, bs, args.max_new_tokens)
            row[f"thinkform_{dt}_tok_s"] = round(ours, 1)
            if theirs:
                row[f"ratio_{dt}"] = round(ours / theirs, 2)
        print(json.dumps(row), flush=True)
    for engine in engines.values():
        engine.shutdown()
    print(f"machine: {platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}")


if __name__ == "__main__":
    main()
