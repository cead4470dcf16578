"""How many CPUs this process may really use: what the grammar libraries' worker threads are sized by.

xgrammar sizes its batched mask fill ("auto") by `std::thread::hardware_concurrency()`, which counts the
machine's CPUs, not the container's: in a container given 16 CPUs of a larger host it would start threads for
half of the host's, and a CPU quota spent by them throttles the whole process (the engine loop with it) for
the rest of the quota's period. This count takes the CPU affinity and the cgroup quota (v2 `cpu.max`, v1
`cpu.cfs_quota_us`) into account.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

_CGROUP = Path("/sys/fs/cgroup")


def usable_cpus(cgroup_root: Path = _CGROUP) -> int:
    """CPUs this process may run on at once: its affinity, capped by its cgroup's CPU quota (at least 1)."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        count = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def cgroup_cpu_quota(root: Path = _CGROUP) -> float | None:
    """The cgroup's CPU quota in CPUs (1.5: one and a half CPUs' time per period), None where there is none."""
    v2 = _read(root / "cpu.max")
    if v2 is not None:
        quota, _, period = v2.partition(" ")
        return None if quota == "max" else _ratio(quota, period)
    quota, period = _read(root / "cpu" / "cpu.cfs_quota_us"), _read(root / "cpu" / "cpu.cfs_period_us")
    if quota is None or period is None or quota.startswith("-"):
        return None
    return _ratio(quota, period)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period or "100000")
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None
