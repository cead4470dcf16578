"""Per-request histograms the engine keeps for /metrics (Prometheus buckets: counts of observations ≤ each
bound), observed as SGLang and vLLM observe theirs, so their dashboards and alerts read the same quantities."""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

# seconds. Time to first token: a millisecond to the minutes a long prompt (or a busy queue) can take
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 400.0, 640.0, 1200.0, 2560.0)
# a whole request and its phases: a long reasoning trace runs for many minutes (vLLM's range, to 2 hours)
REQUEST_BUCKETS = (0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 60.0, 120.0, 240.0,
                   480.0, 960.0, 1920.0, 2400.0, 3600.0, 7680.0)
# one token's gap: SGLang's millisecond resolution where decode steps live
TOKEN_GAP_BUCKETS = (0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.05, 0.06, 0.075,
                     0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
# token counts: 1, 2, 5, 10, ... (vLLM's)
TOKEN_COUNT_BUCKETS = tuple(float(m * 10 ** e) for e in range(7) for m in (1, 2, 5))

# the histograms SGLang and vLLM both serve (under their own prefixes)
SHARED_HISTOGRAMS = {"time_to_first_token_seconds": TTFT_BUCKETS, "e2e_request_latency_seconds": REQUEST_BUCKETS,
                     "inter_token_latency_seconds": TOKEN_GAP_BUCKETS}
# vLLM's alone
VLLM_HISTOGRAMS = {"request_time_per_output_token_seconds": TOKEN_GAP_BUCKETS,
                   "request_queue_time_seconds": REQUEST_BUCKETS, "request_prefill_time_seconds": REQUEST_BUCKETS,
                   "request_decode_time_seconds": REQUEST_BUCKETS, "request_inference_time_seconds": REQUEST_BUCKETS,
                   "request_prompt_tokens": TOKEN_COUNT_BUCKETS, "request_generation_tokens": TOKEN_COUNT_BUCKETS,
                   "request_max_num_generation_tokens": TOKEN_COUNT_BUCKETS}


@dataclass
class Histogram:
    bounds: tuple[float, ...] = TTFT_BUCKETS
    counts: list[int] = field(default_factory=list)  # per bucket, not cumulative; the last is +Inf
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float, times: int = 1) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += times
        self.total += value * times
        self.count += times

    def snapshot(self) -> dict[str, object]:
        """Cumulative counts per upper bound (the last +Inf), the sum and the count."""
        running, cumulative = 0, []
        for c in self.counts:
            running += c
            cumulative.append(running)
        return {"bounds": list(self.bounds), "cumulative": cumulative, "sum": self.total, "count": self.count}


class RequestHistograms:
    """The engine's latency and size histograms. Token gaps are observed each step (a step that appends n
    tokens, jump-forward's, counts n gaps of its interval / n: SGLang's reading; one mean per request hid
    every stall inside it); the rest once per finished sample, from its arrival (before its grammar compiles:
    a slow compile is time to the first token), admission, first token and end."""

    def __init__(self) -> None:
        every = {**SHARED_HISTOGRAMS, **VLLM_HISTOGRAMS}
        self.histograms = {name: Histogram(bounds) for name, bounds in every.items()}
        self._gap = self.histograms["inter_token_latency_seconds"]

    def tokens_appended(self, interval: float, count: int) -> None:
        self._gap.observe(interval / count, count)

    def finished(self, seq: Any, now: float) -> None:
        h = self.histograms
        h["e2e_request_latency_seconds"].observe(now - seq.arrival)
        h["request_prompt_tokens"].observe(len(seq.prompt_ids))
        h["request_generation_tokens"].observe(len(seq.output_ids))
        h["request_max_num_generation_tokens"].observe(seq.params.max_new_tokens)
        if seq.scheduled_time is not None:
            h["request_queue_time_seconds"].observe(seq.scheduled_time - seq.arrival)
            h["request_inference_time_seconds"].observe(now - seq.scheduled_time)
        if seq.first_token_time is None:
            return
        h["time_to_first_token_seconds"].observe(seq.first_token_time - seq.arrival)
        h["request_decode_time_seconds"].observe(now - seq.first_token_time)
        if seq.scheduled_time is not None:
            h["request_prefill_time_seconds"].observe(seq.first_token_time - seq.scheduled_time)
        if len(seq.output_ids) > 1:
            per_token = (now - seq.first_token_time) / (len(seq.output_ids) - 1)
            h["request_time_per_output_token_seconds"].observe(per_token)

    def snapshot(self, names: dict[str, Any]) -> dict[str, dict[str, object]]:
        return {name: self.histograms[name].snapshot() for name in names}
