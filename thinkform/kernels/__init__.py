"""CUDA-only Triton kernels for the decode step (norms, activation, rotary, KV store, paged attention).

Imported only when the engine runs on CUDA, never on CPU code paths: this package imports nothing heavy,
so `import thinkform.kernels` stays cheap; the kernels themselves (and triton) live in
`thinkform.kernels.triton_ops`, which callers import explicitly.
"""
from __future__ import annotations

__all__: list[str] = []
