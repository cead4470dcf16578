"""usable_cpus: the grammar libraries' worker threads are sized by the CPUs the container grants, not the host's."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from thinkform.cpus import cgroup_cpu_quota, usable_cpus

AFFINITY = len(os.sched_getaffinity(0))


def _cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text + "\n")
    return tmp_path


@pytest.mark.parametrize("files, quota", [
    ({"cpu.max": "150000 100000"}, 1.5),  # v2: one and a half CPUs
    ({"cpu.max": "max 100000"}, None),
    ({"cpu/cpu.cfs_quota_us": "200000", "cpu/cpu.cfs_period_us": "100000"}, 2.0),  # v1
    ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),
    ({}, None),
    ({"cpu.max": "garbage"}, None),
])
def test_cgroup_quota_is_read_in_cpus(tmp_path: Path, files: dict[str, str], quota: float | None) -> None:
    assert cgroup_cpu_quota(_cgroup(tmp_path, files)) == quota


def test_a_quota_below_the_affinity_caps_the_count(tmp_path: Path) -> None:
    root = _cgroup(tmp_path, {"cpu.max": "50000 100000"})  # half a CPU: still one thread
    assert usable_cpus(root) == 1
    root = _cgroup(tmp_path, {"cpu.max": f"{(AFFINITY + 8) * 100000} 100000"})  # above the affinity: no cap
    assert usable_cpus(root) == AFFINITY
    assert usable_cpus(_cgroup(tmp_path / "none", {})) == AFFINITY


def test_backends_size_their_threads_by_it(monkeypatch: pytest.MonkeyPatch, tiny_tokenizer) -> None:
    import llguidance
    import xgrammar

    from thinkform.structured.backends import llguidance as llg_backend, xgrammar as xgr_backend
    from thinkform.structured.backends.base import BackendContext
    from thinkform.structured.spec import GrammarOptions

    seen = {}
    for module in (xgr_backend, llg_backend):
        monkeypatch.setattr(module, "usable_cpus", lambda: 6)
    batch, executor = xgrammar.BatchGrammarMatcher, llguidance.LLExecutor
    monkeypatch.setattr(xgrammar, "BatchGrammarMatcher", lambda n: seen.setdefault(f"xgrammar-{n}", n) and batch(n))
    monkeypatch.setattr(llguidance, "LLExecutor", lambda n: seen.setdefault("llguidance", n) and executor(n))
    ctx = BackendContext(tiny_tokenizer, len(tiny_tokenizer), (tiny_tokenizer.eos_token_id,), GrammarOptions())
    xgr_backend.XGrammarBackend(ctx)
    llg_backend.LLGuidanceBackend(ctx)
    assert seen == {"xgrammar-1": 1, "xgrammar-3": 3, "llguidance": 4}  # one; half of them; 80 % of them


def test_small_batches_fill_in_one_thread_large_ones_in_many(tiny_tokenizer) -> None:
    """A step's mask fill runs in xgrammar's worker threads only from PARALLEL_FILL_ROWS rows on: below, the
    hand-offs cost more than the rows (32 rows inside a JSON string: 0.17 ms in one thread, 3-4 ms in two
    on a busy 2-core machine)."""
    import xgrammar

    from thinkform.structured.backends.base import BackendContext
    from thinkform.structured.backends.xgrammar import PARALLEL_FILL_ROWS, XGrammarBackend
    from thinkform.structured.spec import GrammarOptions, constraint_from_fields

    ctx = BackendContext(tiny_tokenizer, len(tiny_tokenizer), (tiny_tokenizer.eos_token_id,), GrammarOptions())
    backend = XGrammarBackend(ctx)
    compiled = backend.compile(constraint_from_fields(regex="[a-z]+"))
    used = []

    class Spy:
        def __init__(self, name: str, inner) -> None:
            self.name, self.inner = name, inner

        def batch_fill_next_token_bitmask(self, *args) -> None:
            used.append(self.name)
            self.inner.batch_fill_next_token_bitmask(*args)

    backend._batch, backend._parallel = Spy("one", backend._batch), Spy("many", backend._parallel)
    one = xgrammar.allocate_token_bitmask(1, len(tiny_tokenizer))
    compiled.new_matcher().fill_bitmask(one, 0)
    for rows in (1, 32, PARALLEL_FILL_ROWS):
        bitmask = xgrammar.allocate_token_bitmask(rows, len(tiny_tokenizer))
        bitmask.fill_(0)
        backend.fill_bitmasks(bitmask, [(i, compiled.new_matcher()) for i in range(rows)])
        assert (bitmask == one).all()  # every row filled as one matcher fills it, either way
    assert used == ["one", "one", "many"]
