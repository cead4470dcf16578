"""Output tokens/s of the embedded model on this machine: thinkform vs transformers.generate, same run.

    python bench/throughput.py [--batch-sizes 1 8 32] [--max-new-tokens 64] [--model-path PATH] \
        [--configs bfloat16/auto bfloat16/none float32/none] [--repeats 3] [--llama-python PYTHON]

`--llama-python` names an interpreter that has llama-cpp-python installed (it builds llama.cpp, so it lives
in its own environment): llama.cpp then runs the same GGUF at batch 1 (its Python API decodes one sequence),
2 threads, greedy, EOS suppressed, in the same run.

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
from pathlib import Path

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


def bench_llama_cpp(llm, prompt: str, new: int) -> float:
    eos = {llm.token_eos(): -1e9}
    llm.create_completion(prompt, max_tokens=4, temperature=0.0, top_k=1)  # warm-up
    llm.reset()
    t0 = time.perf_counter()
    out = llm.create_completion(prompt, max_tokens=new, temperature=0.0, top_k=1, logit_bias=eos)
    return out["usage"]["completion_tokens"] / (time.perf_counter() - t0)


def child(args: argparse.Namespace) -> None:
    """One engine, every batch size; prints {batch: tok/s} as JSON."""
    results = {}
    if args.child == "llama.cpp":  # runs under --llama-python: no thinkform here
        from llama_cpp import Llama

        llm = Llama(model_path=args.gguf, n_threads=2, n_ctx=1024, verbose=False)
        prompt = json.loads(args.prompt_json)
        results[1] = statistics.median(bench_llama_cpp(llm, prompt, args.max_new_tokens) for _ in range(args.repeats))
        print("RESULT " + json.dumps(results), flush=True)
        return
    import thinkform

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


def run_llama_cpp(args: argparse.Namespace) -> dict[int, float]:
    from transformers import AutoTokenizer

    from thinkform.models.loader import _gguf_in, default_model_file, gguf_to_hf_dir

    gguf = _gguf_in(Path(args.model_path)) if args.model_path else default_model_file()
    if gguf is None:
        raise SystemExit("--llama-python needs a GGUF model (the embedded default, or --model-path FILE.gguf)")
    prompt = prompts_for(AutoTokenizer.from_pretrained(str(gguf_to_hf_dir(gguf))), 1)[0]
    return run_child(args, "llama.cpp", python=args.llama_python,
                     extra=["--gguf", str(gguf), "--prompt-json", json.dumps(prompt)])


def run_child(args: argparse.Namespace, which: str, python: str = sys.executable,
              extra: list[str] | None = None) -> dict[int, float]:
    cmd = [python, __file__, "--child", which, *(extra or []), "--max-new-tokens", str(args.max_new_tokens),
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
    ap.add_argument("--llama-python", default=None, help="an interpreter with llama-cpp-python: adds llama.cpp at batch 1")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--gguf", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--prompt-json", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    theirs = {} if args.skip_transformers else run_child(args, "transformers")
    llama = run_llama_cpp(args) if args.llama_python else {}
    ours = {cfg: run_child(args, cfg) for cfg in args.configs}
    for bs in args.batch_sizes:
        row: dict = {"batch": bs, "transformers_fp32_tok_s": round(theirs[bs], 1) if theirs else None}
        if llama:
            row["llama_cpp_bs1_tok_s"] = round(llama[1], 1)
        for cfg in args.configs:
            row[f"thinkform_{cfg}_tok_s"] = round(ours[cfg][bs], 1)
            if theirs:
                row[f"ratio_{cfg}"] = round(ours[cfg][bs] / theirs[bs], 2)
        print(json.dumps(row), flush=True)
    import torch

    print(f"machine: {platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}")


if __name__ == "__main__":
    main()
