"""Latency histograms the engine keeps for /metrics (Prometheus buckets: counts of observations ≤ each bound)."""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

# seconds, roughly logarithmic from a millisecond to minutes (SGLang's range for its latency histograms)
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                   15.0, 20.0, 30.0, 40.0, 60.0, 120.0, 240.0, 400.0)


@dataclass
class Histogram:
    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)  # per bucket, not cumulative; the last is +Inf
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def snapshot(self) -> dict[str, object]:
        """Cumulative counts per upper bound (the last +Inf), the sum and the count."""
        running, cumulative = 0, []
        for c in self.counts:
            running += c
            cumulative.append(running)
        return {"bounds": list(self.bounds), "cumulative": cumulative, "sum": self.total, "count": self.count}
