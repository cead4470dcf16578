"""Freed native memory handed back to the system after compiled grammars are evicted.

Each grammar compiles on its own thread, and its masks and tables are native allocations (xgrammar,
llguidance, numpy) that glibc serves from per-thread arenas. Freed, they stay in those arenas: a server
taking new schemas for hours grew its RSS wave after wave past the grammar cache's bound (1.9 GB where the
cache held 256 MiB; `malloc_trim(0)` gave back 524 MiB of it). glibc's `malloc_trim` returns the free pages of
every arena; it runs at most once per `interval_s`, on the compile thread that evicted, never on the engine
loop. Elsewhere than glibc it does nothing."""
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
    """`due()` after freeing; `run()` trims where one is due and `interval_s` has passed since the last."""

    def __init__(self, interval_s: float = 5.0) -> None:
        self.interval_s = interval_s
        self._trim = _glibc_malloc_trim()
        self._due = False
        self._last = float("-inf")
        self._lock = threading.Lock()
        self.count = 0

    def due(self) -> None:
        self._due = True

    def run(self) -> None:
        if self._trim is None or not self._due:
            return
        with self._lock:
            now = time.monotonic()
            if not self._due or now - self._last < self.interval_s:
                return
            self._due, self._last = False, now
        self._trim(0)
        self.count += 1
