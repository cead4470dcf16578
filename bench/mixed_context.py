"""Decode steps of short requests beside one long-context request (the CPU / torch attention path).

    python bench/mixed_context.py [--long 8000] [--short 31] [--max-new-tokens 64] [--group-slack 1024]

Reasoning servers mix a long context (a long prompt, or thousands of thinking tokens) with short requests.
The model: random float32 weights at a real attention width (16 heads of 64, 8 KV heads; 2 layers, so the
step is mostly attention). Three runs of greedy decoding: the short requests alone, the long one alone, all
together; per run the median decode step (every row decoding) and the process's peak RSS.
`--group-slack 1000000000` puts every row in one padded grid (the layout before rows were grouped).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _peak_mib() -> float:
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1]) / 1024


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--long", type=int, default=8000, help="prompt tokens of the long request")
    parser.add_argument("--short", type=int, default=31, help="short requests (64-token prompts)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--group-slack", type=int, default=None,
                        help="attention.GROUP_SLACK_TOKENS for this run (a huge value: one grid for all rows)")
    args = parser.parse_args()

    import thinkform.engine.attention as attention
    from thinkform import Engine
    from thinkform.engine.loop import EngineLoop
    from thinkform.testing.models import make_tiny_model_dir
    from thinkform.testing.tokenizers import build_tiny_tokenizer

    if args.group_slack is not None:
        attention.GROUP_SLACK_TOKENS = args.group_slack
    tok = build_tiny_tokenizer()
    model = make_tiny_model_dir(Path(tempfile.mkdtemp()) / "wide", "llama", tok, hidden_size=1024, num_heads=16,
                                num_kv_heads=8, num_layers=2, max_position_embeddings=args.long + 4096, seed=2)
    steps: list[tuple[int, float]] = []
    step = EngineLoop._step

    def timed(loop: EngineLoop, batch) -> None:  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        step(loop, batch)
        if all(n == 1 for n in batch.num_tokens):
            steps.append((len(batch.seqs), time.perf_counter() - start))
    EngineLoop._step = timed  # type: ignore[method-assign]

    engine = Engine(model_path=str(model), dtype="float32", max_total_tokens=args.long + 8192)
    rng = random.Random(1)
    vocab = len(tok)
    shorts = [[rng.randrange(10, vocab) for _ in range(64)] for _ in range(args.short)]
    long = [rng.randrange(10, vocab) for _ in range(args.long)]
    params = {"temperature": 0, "max_new_tokens": args.max_new_tokens, "ignore_eos": True}
    rows = []
    for label, prompts in (("short alone", shorts), ("long alone", [long]), ("long + short", [long] + shorts)):
        engine.flush_cache()
        steps.clear()
        _reset_peak()
        start = time.perf_counter()
        engine.generate(input_ids=prompts, sampling_params=params)
        full = sorted(s for b, s in steps if b == len(prompts))
        rows.append({"run": label, "rows": len(prompts), "decode_step_ms": round(full[len(full) // 2] * 1e3, 2),
                     "seconds": round(time.perf_counter() - start, 1), "peak_rss_mib": round(_peak_mib())})
        print(json.dumps(rows[-1]), flush=True)
    engine.shutdown()


if __name__ == "__main__":
    main()
