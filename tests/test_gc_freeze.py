"""The engine's startup heap is frozen out of Python's full collections while it runs, and given back after."""
from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import weakref

from thinkform import Engine


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_startup_heap_frozen_while_the_engine_runs_and_released_at_shutdown(tiny_model_dirs):
    engine = Engine(model_path=str(tiny_model_dirs["qwen2"]), max_total_tokens=2048)
    try:
        # the tokenizer, the model's modules, the grammar backend: far more than a handful of objects
        assert gc.get_freeze_count() > 10_000
        out = engine.generate("hello", {"max_new_tokens": 4, "json_schema": '{"type": "object"}'})
        assert out["meta_info"]["completion_tokens"] >= 1
        # not gc.disable(): a cycle made while the engine runs is still collected
        a, b = _Node(), _Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        del a, b
        gc.collect()
        assert gone() is None
    finally:
        engine.shutdown()
    assert gc.get_freeze_count() == 0


def test_disable_gc_freeze_leaves_the_heap_as_it_was(tiny_model_dirs):
    before = gc.get_freeze_count()
    engine = Engine(model_path=str(tiny_model_dirs["qwen2"]), max_total_tokens=2048, disable_gc_freeze=True)
    try:
        assert gc.get_freeze_count() == before
    finally:
        engine.shutdown()


def test_exit_without_shutdown_reports_no_leaked_native_objects(tiny_model_dirs):
    """A frozen object is never finalized at exit: native bindings (nanobind) would print pages of 'leaked
    instance' reports after a script that never called shutdown, unless the engine unfreezes at exit."""
    script = textwrap.dedent("""
        import sys
        from thinkform import Engine
        engine = Engine(model_path=sys.argv[1], max_total_tokens=2048)
        print(engine.generate("hello", {"max_new_tokens": 4, "json_schema": '{"type": "object"}'})["text"])
    """)
    done = subprocess.run([sys.executable, "-c", script, str(tiny_model_dirs["qwen2"])], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "leaked" not in done.stderr, done.stderr[-2000:]
