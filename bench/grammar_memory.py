"""What compiled grammars hold as a server meets new schemas: the process's RSS and the grammar cache's entries
and bytes after every `--step` unique two-field schemas (the tiny random model, Qwen's vocabulary: a grammar's
token masks take ~2.4 MB), then after `flush_cache()`. A bounded cache levels off; an unbounded one grows by
what each grammar holds.

    python bench/grammar_memory.py [--schemas 600] [--step 100]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--schemas", type=int, default=600)
    ap.add_argument("--step", type=int, default=100)
    args = ap.parse_args()

    import thinkform
    from thinkform.testing.models import make_tiny_model_dir
    from thinkform.testing.qwen_vocab import build_qwen_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        model = make_tiny_model_dir(Path(tmp) / "m", "qwen2", build_qwen_tokenizer(), hidden_size=32, seed=1)
        engine = thinkform.Engine(model_path=str(model))
        cache = engine.parts.grammar_cache
        print(f"Run {time.strftime('%Y-%m-%d %H:%M %Z')}; command: `{' '.join(sys.argv)}`\n")
        print("| unique schemas | RSS MiB | cache entries | cache MiB |\n|---|---|---|---|")
        print(f"| 0 | {rss_mib():.0f} | 0 | 0 |")
        for i in range(args.schemas):
            schema = {"type": "object", "properties": {f"p{i}": {"type": "string", "maxLength": 8},
                                                       f"q{i}": {"type": "integer"}}, "required": [f"p{i}"]}
            engine.generate("hi", {"max_new_tokens": 2, "json_schema": json.dumps(schema)})
            if (i + 1) % args.step == 0:
                stats = cache.stats()
                print(f"| {i + 1} | {rss_mib():.0f} | {stats.entries} | {stats.bytes / 2**20:.0f} |", flush=True)
        engine.flush_cache()
        print(f"| after flush_cache() | {rss_mib():.0f} | {cache.stats().entries} | {cache.stats().bytes / 2**20:.0f} |")
        engine.shutdown()


if __name__ == "__main__":
    main()
