"""The CUDA step path (flattened tokens, per-token paged attention, padding to graph buckets) checked on
the CPU through Triton's interpreter: every step of real workloads gives the logits the torch path gives."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from thinkform.engine.graph_runner import CudaStepRunner, _flatten_rows, flatten_step
from thinkform.engine.kv_cache import KVCache
from thinkform.engine.runner import ModelRunner


def test_a_decode_ahead_step_flattens_as_the_row_by_row_walk_does():
    """Decode-ahead steps take a by-columns path: the same token columns, tables, rows and longest context
    as the general walk, for ids read by the host and for ids fed from the device."""
    import random
    from types import SimpleNamespace

    import numpy as np

    from thinkform.engine.scheduler import ScheduledBatch

    rng = random.Random(0)
    for trial in range(50):
        page = rng.choice([1, 4, 16])
        seqs = []
        for _ in range(rng.randrange(1, 40)):
            computed = rng.randrange(0, 300)
            seqs.append(SimpleNamespace(num_computed=computed,
                                        block_table=rng.sample(range(10_000), computed // page + 1)))
        tokens = [rng.randrange(150_000) for _ in seqs] if trial % 2 else None
        batch = ScheduledBatch(seqs, [1] * len(seqs), tokens, None if tokens else object())
        fast, walk = flatten_step(batch, page), _flatten_rows(batch, page)
        assert np.array_equal(fast.ints, walk.ints)
        assert (fast.tables, fast.rows, fast.longest) == (walk.tables, walk.rows, walk.longest)


def _both_paths(engine, max_tokens: int):
    """Make the engine run every step on both paths, each over its own KV cache (same pages, same tables:
    a k/v written to a wrong slot cannot be read back right from the other path's writes). Returns the
    (tokens, max |Δlogit|) of each step the CUDA path fitted, and the sizes of the steps it did not (those
    run eagerly on its side too, as the engine's runner does)."""
    loop = engine.loop
    parts = engine.parts
    kv = KVCache(parts.kv.k.shape[0], parts.kv.num_pages, parts.kv.page_size, parts.kv.k.shape[2],
                 parts.kv.k.shape[3], parts.kv.k.dtype, parts.device)
    steps = CudaStepRunner(parts.model, kv, parts.device, max_tokens=max_tokens,
                           max_pages=-(-parts.context_length // parts.kv.page_size),
                           max_seqs=engine.args.max_running_requests, use_graphs=False)
    # as the CUDA engine runs: cos/sin gathered from a table (strided views of it reach the rotary kernel)
    parts.model.rotary.cache_positions(parts.context_length, next(parts.model.parameters()).dtype, parts.device)
    cuda_side = ModelRunner(parts.model, kv, parts.device, small_steps=steps)
    torch_path = ModelRunner(parts.model, parts.kv, parts.device)
    seen: list[tuple[int, float]] = []
    skipped: list[int] = []

    class Both:
        def forward(self, batch, allowed=None):
            assert not allowed
            ref, rows = torch_path.forward(batch)
            fitted = steps.fits(batch)
            got, got_rows = cuda_side.forward(batch)
            assert got_rows == rows
            if not fitted:
                skipped.append(batch.total_tokens)
                return ref, rows
            diff = 0.0 if ref is None else float((ref - got).abs().max())
            seen.append((batch.total_tokens, diff))
            return ref, rows

    loop.runner = Both()
    return seen, skipped


@pytest.mark.parametrize(("long_context", "overlap"), [(None, False), (8, False), (None, True)])
def test_cuda_step_path_matches_torch_path_on_every_step(triton_interpreter, tiny_model_dirs, long_context,
                                                         overlap, monkeypatch):
    """long_context=8: every step past 8 keys takes the split (flash-decoding) attention. overlap: decode
    steps launched ahead, their ids written into the step's device buffers from the sampler's output."""
    from thinkform import Engine
    from thinkform.engine import graph_runner

    if long_context is not None:
        monkeypatch.setattr(graph_runner, "LONG_CONTEXT", long_context)
    splits_seen: set[int] = set()
    attend = triton_interpreter.paged_decode_attention

    def recording(*args, splits=1, **kwargs):
        splits_seen.add(splits)
        return attend(*args, splits=splits, **kwargs)

    monkeypatch.setattr(triton_interpreter, "paged_decode_attention", recording)

    schema = json.dumps({"type": "object", "properties": {"name": {"type": "string", "maxLength": 6},
                                                          "n": {"type": "integer"}}, "required": ["name", "n"]})
    # disable_sparse_logits: as on a GPU, whose forward always computes every row's full logits
    with Engine(model_path=str(tiny_model_dirs["qwen2"]), dtype="float32", max_total_tokens=2048, page_size=4,
                chunked_prefill_size=32, disable_sparse_logits=True) as engine:
        seen, skipped = _both_paths(engine, max_tokens=24)
        engine.loop.overlap = overlap
        prompts = ["hello there", "a much longer prompt that spans several pages of four tokens each " * 2,
                   "x", "json please"]
        free = engine.generate(prompts, {"temperature": 0, "max_new_tokens": 6, "ignore_eos": True})
        constrained = engine.generate(prompts[:2], {"temperature": 0, "max_new_tokens": 24, "json_schema": schema})
    assert all(o["meta_info"]["finish_reason"]["type"] == "length" for o in free)
    assert all(json.loads(o["text"])["n"] is not None for o in constrained)
    sizes = {n for n, _ in seen}
    assert len(seen) >= 10 and skipped, (seen, skipped)  # decodes, extends and a prefill too long for it
    assert any(n not in (1, 2, 4, 8, 12, 16, 24) for n in sizes)  # some steps ran padded to a bucket
    worst = max(d for _, d in seen)
    assert worst < 1e-4, seen
    assert splits_seen == ({1} if long_context is None else {1, graph_runner.LONG_SPLITS})


def test_cpu_engine_never_imports_the_cuda_kernels(tiny_model_dirs):
    """CUDA-only code is chosen at run time: a CPU engine serves without importing thinkform.kernels."""
    code = (
        "import sys, json\n"
        "from thinkform import Engine\n"
        f"e = Engine(model_path={str(tiny_model_dirs['qwen2'])!r}, max_total_tokens=1024)\n"
        "e.generate('hi', {'max_new_tokens': 4, 'json_schema': json.dumps({'type': 'object'})})\n"
        "e.shutdown()\n"
        "print(sorted(m for m in sys.modules if m.startswith('thinkform.kernels')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_triton_backend_on_a_cpu_is_a_clear_error(tiny_model_dirs):
    from thinkform import Engine

    with pytest.raises(ValueError, match="attention_backend: triton needs a CUDA device"):
        Engine(model_path=str(tiny_model_dirs["qwen2"]), attention_backend="triton", max_total_tokens=1024)
    with pytest.raises(ValueError, match="attention_backend: unknown backend 'flash'"):
        Engine(model_path=str(tiny_model_dirs["qwen2"]), attention_backend="flash", max_total_tokens=1024)
