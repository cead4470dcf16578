"""Load at CI scale: 64 concurrent mixed requests (streaming and not, constrained and not, some hung up
early), three rounds, against a real server over a tiny model. Every request we did not abort comes
back 200, every constrained answer that stopped validates, the KV pool empties, memory stays flat.
bench/load.py runs the same mix at larger scale."""
from __future__ import annotations

import asyncio
import resource

import httpx
import pytest

from server_fixtures import running_server
from test_reliability import _wait_for, pool_empty
from thinkform.testing.load import run_load

MiB = 2**20


def rss_bytes() -> int:
    """Resident memory of this process now (Linux /proc), else its peak."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from thinkform import Engine
    from thinkform.testing.models import make_tiny_model_dir

    path = make_tiny_model_dir(tmp_path_factory.mktemp("tiny"), "qwen2")
    engine = Engine(model_path=str(path), reasoning_parser="deepseek-r1", max_reasoning_tokens=8,
                    max_running_requests=64, max_total_tokens=16384)
    try:
        with running_server(engine) as base:
            yield engine, base
    finally:
        engine.shutdown()


def test_64_concurrent_mixed_requests_three_rounds(served):
    engine, base = served
    rss = []
    for _ in range(3):
        report = asyncio.run(run_load(base, num_requests=64, concurrency=64, max_tokens=48, disconnect_every=8,
                                      timeout_s=120))
        summary = report.summary()
        assert report.failures == [], [vars(o) for o in report.failures[:5]]
        assert summary["aborted_by_client"] >= 4 and summary["completed"] >= 48, summary
        assert summary["constrained_valid"] >= 16 and summary["constrained_invalid"] == 0, summary
        assert _wait_for(lambda: pool_empty(engine), 15), engine.loop.stats()
        rss.append(rss_bytes())
    assert engine.is_healthy() and httpx.get(f"{base}/health").status_code == 200
    # the first round warms caches (grammars, tokenizer tables); after it memory must stay flat
    assert rss[2] - rss[0] < max(48 * MiB, rss[0] // 10), [r // MiB for r in rss]
