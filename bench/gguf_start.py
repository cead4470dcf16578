"""GGUF start benchmark: the first start (the file converted into a fresh cache) and a warm start (the copy read
back) of `load_model` on a GGUF file, each in its own process; prints wall time, peak RSS, how often the
vocabulary was parsed, and the copy's size on disk beside the file's.

    python bench/gguf_start.py                                  # the embedded SmolLM2-135M Q4_1
    python bench/gguf_start.py MODEL.gguf [--dtype float32]     # any GGUF file
    python bench/gguf_start.py --write-qwen-gguf OUT.gguf       # a tiny qwen2 GGUF with Qwen's real vocabulary
                                                                # (151,669 tokens), Q4_1 weights

Each start runs in a child process with THINKFORM_CACHE_DIR pointing at a scratch cache (deleted afterwards
unless --keep-cache), so the user's own cache is neither read nor written.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# ---- a tiny GGUF with the real Qwen vocabulary ---------------------------------------------------------

def write_qwen_gguf(out: Path, weights: str = "q4_1", hidden: int = 64, seed: int = 0) -> None:
    """A one-layer qwen2 GGUF whose vocabulary, merges and token types are Qwen's, written as llama.cpp's converter
    writes them (byte-alphabet spellings; special added tokens CONTROL, the others USER_DEFINED)."""
    from thinkform.testing.gguf_files import CONTROL, NORMAL, USER_DEFINED, write_qwen2_gguf
    from thinkform.testing.qwen_vocab import ADDED_TOKENS, PLAIN_CHAT_TEMPLATE, _cached_tokenizer_json

    data = json.loads(_cached_tokenizer_json().read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    tokens = [""] * (len(vocab) + len(ADDED_TOKENS))
    for text, i in vocab.items():
        tokens[i] = text
    types = [NORMAL] * len(vocab)
    for offset, (text, special) in enumerate(ADDED_TOKENS):
        tokens[len(vocab) + offset] = text
        types.append(CONTROL if special else USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    ids = {t: i for i, t in enumerate(tokens)}
    write_qwen2_gguf(out, tokens, types, merges, bos=ids["<|endoftext|>"], eos=ids["<|im_end|>"],
                     pad=ids["<|endoftext|>"], weights=weights, hidden=hidden, context_length=4096, seed=seed,
                     chat_template=PLAIN_CHAT_TEMPLATE)


# ---- one start, in a child process ----------------------------------------------------------------------


def _count_vocab_parses() -> dict[str, int]:
    """Count the readers that parse the file's whole metadata (the vocabulary with it): gguf's GGUFReader and
    transformers' read_gguf_metadata asked for the token list."""
    import gguf
    import transformers.integrations.gguf.reader as hf_reader

    counts = {"GGUFReader": 0, "read_gguf_metadata(tokens)": 0}
    init = gguf.GGUFReader.__init__

    def counted_init(self, *args, **kwargs):
        counts["GGUFReader"] += 1
        init(self, *args, **kwargs)

    gguf.GGUFReader.__init__ = counted_init
    read = hf_reader._read_metadata

    def counted_read(blob, path, string_arrays=()):
        if "tokenizer.ggml.tokens" in string_arrays:
            counts["read_gguf_metadata(tokens)"] += 1
        return read(blob, path, string_arrays)

    hf_reader._read_metadata = counted_read
    return counts


def child(model: str, dtype_name: str | None, quantization: str) -> None:
    import torch

    from thinkform.models.loader import load_model

    counts = _count_vocab_parses()
    dtype = getattr(torch, dtype_name) if dtype_name else None
    base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    loaded = load_model(model, dtype, "cpu", quantization=quantization)
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": round(seconds, 2), "peak_rss_mib": round(peak_kib / 1024),
                      "rss_before_load_mib": round(base_kib / 1024), "parses": counts,
                      "copy": loaded.model_path, "dtype": str(loaded.config.dtype)}))


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _start(model: Path, cache: Path, args: argparse.Namespace) -> dict:
    env = {**os.environ, "THINKFORM_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, __file__, "--child", str(model), "--quantization", args.quantization]
    if args.dtype:
        command += ["--dtype", args.dtype]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the start failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", help="a .gguf file (default: the embedded SmolLM2-135M Q4_1)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="default: the device's")
    parser.add_argument("--quantization", default="auto", choices=("auto", "none", "int4"))
    parser.add_argument("--warm-starts", type=int, default=1)
    parser.add_argument("--cache", help="the scratch cache directory (default: a new temporary one)")
    parser.add_argument("--keep-cache", action="store_true")
    parser.add_argument("--write-qwen-gguf", metavar="OUT", help="write the tiny Qwen-vocabulary GGUF and exit")
    parser.add_argument("--weights", default="q4_1", choices=("f32", "f16", "q8_0", "q4_1"),
                        help="the tensor type of --write-qwen-gguf's weights")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write_qwen_gguf:
        write_qwen_gguf(Path(args.write_qwen_gguf), args.weights)
        print(f"wrote {args.write_qwen_gguf} ({Path(args.write_qwen_gguf).stat().st_size / 2**20:.1f} MiB)")
        return
    if args.child:
        child(args.model, args.dtype, args.quantization)
        return
    if args.model:
        model = Path(args.model).resolve()
    else:
        from thinkform.models.loader import default_model_file
        model = default_model_file()
    cache = Path(args.cache) if args.cache else Path(tempfile.mkdtemp(prefix="gguf-start-"))
    try:
        first = _start(model, cache, args)
        copy = Path(first["copy"])
        size, copy_size = model.stat().st_size, _dir_bytes(copy)
        weights = sum(p.stat().st_size for p in copy.glob("*.safetensors"))
        print(f"file   {model.name}: {size / 2**20:.1f} MiB")
        print(f"copy   {copy.name}: {copy_size / 2**20:.1f} MiB ({copy_size / size:.2f}x the file; "
              f"weights {weights / 2**20:.1f} MiB), loaded as {first['dtype']}")
        print(f"first  {first['seconds']:.2f} s, peak RSS {first['peak_rss_mib']} MiB "
              f"(after imports {first['rss_before_load_mib']} MiB), parses {first['parses']}")
        for _ in range(args.warm_starts):
            warm = _start(model, cache, args)
            print(f"warm   {warm['seconds']:.2f} s, peak RSS {warm['peak_rss_mib']} MiB "
                  f"(after imports {warm['rss_before_load_mib']} MiB), parses {warm['parses']}")
    finally:
        if not args.keep_cache:
            shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
