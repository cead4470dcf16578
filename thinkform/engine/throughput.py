"""The generation throughput of the last window of steps (SGLang's `last_gen_throughput`)."""
from __future__ import annotations

import time


class ThroughputWindow:
    """Tokens per second over the last `steps` engine steps, measured when each window closes (SGLang logs
    and reports its decode throughput the same way, every 40 decode steps). 0.0 until a window closes."""

    def __init__(self, steps: int = 40) -> None:
        self.steps = steps
        self.last = 0.0
        self._start = time.perf_counter()
        self._start_tokens = 0

    def step(self, step: int, tokens: int) -> None:
        """After engine step number `step` (1, 2, ...), with `tokens` generated in all so far."""
        if step % self.steps:
            return
        now = time.perf_counter()
        self.last = (tokens - self._start_tokens) / max(now - self._start, 1e-9)
        self._start, self._start_tokens = now, tokens
