"""The CUDA step path (flattened tokens, per-token paged attention, padding to graph buckets) checked on
the CPU through Triton's interpreter: every step of real workloads gives the logits the torch path gives."""
from __future__ import annotations

import json

from thinkform.engine.graph_runner import CudaStepRunner
from thinkform.engine.runner import ModelRunner


def _both_paths(engine, max_tokens: int):
    """Make the engine run every step on both paths; returns the list of (tokens, max |Δlogit|) per step
    the CUDA path fitted, and the steps it did not."""
    loop = engine.loop
    parts = engine.parts
    steps = CudaStepRunner(parts.model, parts.kv, parts.device, max_tokens=max_tokens,
                           max_pages=-(-parts.context_length // parts.kv.page_size),
                           max_seqs=engine.args.max_running_requests, use_graphs=False)
    torch_path = ModelRunner(parts.model, parts.kv, parts.device)
    seen: list[tuple[int, float]] = []
    skipped: list[int] = []

    class Both:
        def forward(self, batch):
            ref, rows = torch_path.forward(batch)
            if not steps.fits(batch):
                skipped.append(batch.total_tokens)
                return ref, rows
            got, got_rows = steps.forward(batch)
            assert got_rows == rows
            diff = 0.0 if ref is None else float((ref - got).abs().max())
            seen.append((batch.total_tokens, diff))
            return ref, rows

    loop.runner = Both()
    return seen, skipped


def test_cuda_step_path_matches_torch_path_on_every_step(triton_interpreter, tiny_model_dirs):
    from thinkform import Engine

    schema = json.dumps({"type": "object", "properties": {"name": {"type": "string", "maxLength": 6},
                                                          "n": {"type": "integer"}}, "required": ["name", "n"]})
    with Engine(model_path=str(tiny_model_dirs["qwen2"]), dtype="float32", max_total_tokens=2048, page_size=4,
                chunked_prefill_size=32) as engine:
        seen, skipped = _both_paths(engine, max_tokens=24)
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
