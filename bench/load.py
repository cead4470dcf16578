"""Load benchmark: many concurrent mixed requests (chat / completions / native, streaming or not,
constrained or not, some hung up early) against a thinkform server; prints throughput, latency,
failures, constraint validity, and the server's KV pool and memory afterwards.

    python bench/load.py --url http://127.0.0.1:30000                 # a running server
    python bench/load.py --tiny                                        # starts one on a tiny random model
    python bench/load.py --model-path PATH --reasoning-parser deepseek-r1 --requests 500 --concurrency 200
    python bench/load.py                                               # starts one on the default model

Rounds (--rounds) repeat the load so memory growth between them shows.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import httpx

from thinkform.testing.load import run_load
from thinkform.utils import launch_server_cmd, terminate_process, wait_for_server


def _rss_mib(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def _start_server(ns: argparse.Namespace) -> tuple[object, str]:
    model = ns.model_path
    if ns.tiny:
        from thinkform.testing.models import make_tiny_model_dir
        model = str(make_tiny_model_dir(Path(tempfile.mkdtemp(prefix="thinkform-load-")), "qwen2"))
    cmd = ["python -m thinkform.launch_server --log-level warning",
           f"--max-running-requests {ns.max_running_requests}", f"--max-queued-requests {max(1024, ns.requests)}"]
    if model:
        cmd.append(f"--model-path {model}")
    if ns.reasoning_parser:
        cmd.append(f"--reasoning-parser {ns.reasoning_parser} --max-reasoning-tokens {ns.max_reasoning_tokens}")
    process, port = launch_server_cmd(" ".join(cmd))
    base = f"http://127.0.0.1:{port}"
    wait_for_server(base, timeout=600, process=process)
    return process, base


def _server_state(base: str, api_key: str | None) -> dict:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    info = httpx.get(f"{base}/get_server_info", headers=headers, timeout=30).json()
    return {k: info.get(k) for k in ("kv_pages_used", "kv_pages_total", "running", "waiting", "finished", "aborted")}


def _settle(base: str, api_key: str | None, timeout: float = 30.0) -> dict:
    """Wait for aborted requests to leave the engine, then report its state."""
    deadline = time.monotonic() + timeout
    state = _server_state(base, api_key)
    while (state["kv_pages_used"] or state["running"] or state["waiting"]) and time.monotonic() < deadline:
        time.sleep(0.2)
        state = _server_state(base, api_key)
    return state


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="a running server (default: start one)")
    p.add_argument("--api-key")
    p.add_argument("--model-path", help="model for the server this script starts (default: the embedded one)")
    p.add_argument("--tiny", action="store_true", help="start the server on a tiny random-weight model")
    p.add_argument("--reasoning-parser", default="deepseek-r1")
    p.add_argument("--max-reasoning-tokens", type=int, default=16)
    p.add_argument("--max-running-requests", type=int, default=64)
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--disconnect-every", type=int, default=10, help="every Nth request hangs up early (0: none)")
    p.add_argument("--rounds", type=int, default=1)
    ns = p.parse_args(argv)

    process, base = (None, ns.url) if ns.url else _start_server(ns)
    pid = getattr(process, "pid", None)
    try:
        print(json.dumps({"machine": f"{platform.machine()} {os.cpu_count()} CPUs", "python": sys.version.split()[0],
                          "server": base, "requests": ns.requests, "concurrency": ns.concurrency,
                          "max_tokens": ns.max_tokens}))
        ok = True
        for round_no in range(1, ns.rounds + 1):
            report = asyncio.run(run_load(base, ns.requests, ns.concurrency, ns.max_tokens, ns.disconnect_every,
                                          api_key=ns.api_key))
            summary = {"round": round_no, **report.summary(), "server_after": _settle(base, ns.api_key),
                       "server_rss_mib": _rss_mib(pid)}
            print(json.dumps(summary))
            for o in report.failures[:5]:
                print("  failure:", o.kind, o.status, o.error)
            ok = ok and not report.failures and not summary["server_after"]["kv_pages_used"]
        return 0 if ok else 1
    finally:
        if process is not None:
            terminate_process(process)


if __name__ == "__main__":
    sys.exit(main())
