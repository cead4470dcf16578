"""The startup heap taken out of the garbage collector's walk.

A full (generation-2) collection stops every thread and walks every tracked object. An engine's process holds
hundreds of thousands of them from its start that live as long as it does (the tokenizer's vocabulary, the
model's modules, compiled grammars): one such walk took 140-190 ms in the first batch after a start on a CPU
(bench/gc_pauses.py) and reclaimed nothing, while the device waited. vLLM and SGLang freeze that heap after
their warm-up; so does the engine. Objects made later are collected as before. The freeze is the process's:
where several engines run in one, the first shut down unfreezes the others' heap too (their collections are
slower again, nothing else changes)."""
from __future__ import annotations

import gc
import weakref


def freeze_startup_heap(owner: object) -> weakref.finalize:
    """Collect what is garbage now, then freeze the rest. The returned finalizer unfreezes: call it at
    shutdown; it also runs when `owner` is collected and at interpreter exit, where a frozen object is never
    finalized (native bindings such as nanobind's then report their objects leaked)."""
    gc.collect()
    gc.freeze()
    return weakref.finalize(owner, gc.unfreeze)
