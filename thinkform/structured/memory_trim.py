"""Freed native memory handed back to the system after compiled grammars are evicted.

Each grammar compiles on its own thread, and its masks and tables are native allocations (xgrammar,
llguidance, numpy) that glibc serves from per-thread arenas. Freed, they stay in those arenas: a server
taking new schemas for hours grew its RSS wave after wave past the grammar cache's bound (1.9 GB where the
cache held 256 MiB; `malloc_trim(0)` gave back 524 MiB of it). glibc's `malloc_trim` returns the free pages of
every arena; it runs on a timer thread of its own, at most once per `interval_s` (a burst of evictions is
one trim, after it), never on the engine loop. Elsewhere than glibc it does nothing."""
from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
from typing import Callable


def _glibc_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to call
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


class MemoryTrim:
    """`request()` after freeing: one trim follows, `interval_s` after the last at the earliest."""

    def __init__(self, interval_s: float = 5.0) -> None:
        self.interval_s = interval_s
        self._trim = _glibc_malloc_trim()
        self.available = self._trim is not None
        self._last = float("-inf")
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self.count = 0

    def request(self) -> None:
        if self._trim is None:
            return
        with self._lock:
            if self._timer is not None:  # one is coming: it frees this too
                return
            wait = max(0.0, self._last + self.interval_s - time.monotonic())
            self._timer = threading.Timer(wait, self._run)
            self._timer.daemon = True
            self._timer.name = "malloc-trim"
            self._timer.start()

    def _run(self) -> None:
        with self._lock:
            self._timer = None
            self._last = time.monotonic()
        assert self._trim is not None
        self._trim(0)
        self.count += 1
