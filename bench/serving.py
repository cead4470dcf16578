"""Online load generator for a running thinkform (or SGLang) server, like `sglang.bench_serving`.

    python bench/serving.py --base-url http://127.0.0.1:30000 --num-requests 64 --request-rate 4
    python bench/serving.py --launch tiny --concurrency 8 --num-requests 64     # starts a server itself

Sends streaming `/v1/chat/completions` requests with reasoning on (the server's --reasoning-parser splits
`reasoning_content` from `content`), drawn from a mix of the seed's constraints: a JSON schema
(CapitalInfo, as `response_format`), a regex (`(Paris|London)`), an EBNF grammar (`root ::= city |
description …`) and plain requests, each with the seed's prompt. Arrivals are Poisson at --request-rate
requests/s, or a closed loop of --concurrency clients.

Reports request and token throughput, TTFT (first streamed token, reasoning included), time to the first
answer token, TPOT ((latency − TTFT) / (completion tokens − 1)), latency p50 / p99, and the share of
constrained answers (`content`) that validate: the JSON with `jsonschema` against CapitalInfo, the regex by
full match, the EBNF by its language written as a Python regex.

`--launch tiny` builds a random-weight qwen2 model with the real Qwen vocabulary and a chat template that
opens `<think>` (as QwQ / DeepSeek-R1-Distill-Qwen do), `--launch default` uses the embedded model; both
run `python -m thinkform.launch_server … --reasoning-parser deepseek-r1` on a free port and stop it at the end.
A random model never closes its reasoning by itself, so requests carry `max_reasoning_tokens`
(--max-reasoning-tokens) and the server forces the end marker there.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed_cases import (  # noqa: E402
    CAPITAL_INFO_SCHEMA, COUNTRIES, SEED_EBNF, SEED_REGEX, ebnf_valid, json_valid, regex_valid,
)

KINDS = ("json", "regex", "ebnf", "plain")


@dataclass(frozen=True)
class Workload:
    kind: str
    body: dict[str, Any]  # the request fields beyond model / messages / stream
    messages: Callable[[str], list[dict[str, str]]]  # country → the seed's messages for it
    validate: Callable[[str], bool] | None


def _capital(country: str) -> str:
    return f"Give me the information and population of the capital of {country} in the JSON format."


def workloads(max_tokens: int, max_reasoning_tokens: int | None) -> dict[str, Workload]:
    """The seed's four chat examples (its assistant-role prompts sent as user messages), one country each."""
    base: dict[str, Any] = {"temperature": 0, "max_tokens": max_tokens}
    if max_reasoning_tokens is not None:
        base["max_reasoning_tokens"] = max_reasoning_tokens
    return {
        "json": Workload("json", {**base, "response_format": {
            "type": "json_schema", "json_schema": {"name": "foo", "schema": CAPITAL_INFO_SCHEMA}}},
            lambda c: [{"role": "user", "content": _capital(c)}], lambda text: json_valid(text, CAPITAL_INFO_SCHEMA)),
        "regex": Workload("regex", {**base, "regex": SEED_REGEX},
                          lambda c: [{"role": "user", "content": f"What is the capital of {c}?"}],
                          lambda text: regex_valid(text, SEED_REGEX)),
        "ebnf": Workload("ebnf", {**base, "ebnf": SEED_EBNF},
                         lambda c: [{"role": "system", "content": "You are a helpful geography bot."},
                                    {"role": "user", "content": _capital(c)}], ebnf_valid),
        "plain": Workload("plain", base, lambda c: [{"role": "user", "content": _capital(c)}], None),
    }


@dataclass
class Result:
    kind: str
    ok: bool = False
    error: str = ""
    start: float = 0.0
    ttft: float | None = None
    ttfa: float | None = None  # time to the first answer (content) token
    latency: float | None = None
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    finish_reason: str | None = None
    content: str = ""
    reasoning: str = ""
    valid: bool | None = None


async def sse_events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


async def one_request(client: httpx.AsyncClient, url: str, model: str, work: Workload, headers: dict[str, str],
                      index: int) -> Result:
    res = Result(work.kind, start=time.perf_counter())
    body = {"model": model, **work.body, "messages": work.messages(COUNTRIES[index % len(COUNTRIES)]),
            "stream": True, "stream_options": {"include_usage": True}}
    content: list[str] = []
    reasoning: list[str] = []
    try:
        async with client.stream("POST", url, json=body, headers=headers) as response:
            if response.status_code != 200:
                res.error = f"HTTP {response.status_code}: {(await response.aread()).decode()[:200]}"
                return res
            async for event in sse_events(response):
                now = time.perf_counter() - res.start
                if event.get("usage"):
                    usage = event["usage"]
                    res.completion_tokens = usage.get("completion_tokens", 0)
                    res.reasoning_tokens = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens", 0)
                for choice in event.get("choices", []):
                    delta = choice.get("delta", {})
                    if delta.get("reasoning_content"):
                        reasoning.append(delta["reasoning_content"])
                        res.ttft = res.ttft if res.ttft is not None else now
                    if delta.get("content"):
                        content.append(delta["content"])
                        res.ttft = res.ttft if res.ttft is not None else now
                        res.ttfa = res.ttfa if res.ttfa is not None else now
                    if choice.get("finish_reason"):
                        res.finish_reason = choice["finish_reason"]
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        res.error = f"{type(e).__name__}: {e}"
        return res
    res.latency = time.perf_counter() - res.start
    res.content, res.reasoning = "".join(content), "".join(reasoning)
    res.ok = res.finish_reason is not None
    if not res.ok:
        res.error = "stream ended without a finish_reason"
    if work.validate is not None:
        res.valid = work.validate(res.content)
    return res


def schedule(num: int, mix: dict[str, float], seed: int) -> list[str]:
    """Request kinds in arrival order: each kind's share of `num`, rounded, shuffled."""
    total = sum(mix.values())
    counts = {k: int(round(num * w / total)) for k, w in mix.items()}
    while sum(counts.values()) != num:  # fix rounding on the largest share
        k = max(mix, key=lambda name: mix[name])
        counts[k] += 1 if sum(counts.values()) < num else -1
    kinds = [k for k, c in counts.items() for _ in range(c)]
    random.Random(seed).shuffle(kinds)
    return kinds


async def run_load(args: argparse.Namespace, base_url: str, model: str) -> tuple[list[Result], float]:
    works = workloads(args.max_tokens, args.max_reasoning_tokens)
    kinds = schedule(args.num_requests, args.mix, args.seed)
    url = base_url.rstrip("/") + "/v1/chat/completions"
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=max(64, args.concurrency or 0))
    async with httpx.AsyncClient(timeout=httpx.Timeout(args.request_timeout), limits=limits) as client:
        # one warm-up request per kind: compiles each grammar once, as a long-running server would have
        await asyncio.gather(*(one_request(client, url, model, works[k], headers, 0) for k in sorted(set(kinds))))
        t0 = time.perf_counter()
        if args.concurrency:
            results = await closed_loop(client, url, model, works, kinds, headers, args.concurrency)
        else:
            results = await open_loop(client, url, model, works, kinds, headers, args.request_rate, args.seed)
        return results, time.perf_counter() - t0


async def open_loop(client: httpx.AsyncClient, url: str, model: str, works: dict[str, Workload], kinds: list[str],
                    headers: dict[str, str], rate: float, seed: int) -> list[Result]:
    rng = random.Random(seed + 1)
    tasks = []
    for i, kind in enumerate(kinds):
        tasks.append(asyncio.create_task(one_request(client, url, model, works[kind], headers, i)))
        if math.isfinite(rate):
            await asyncio.sleep(rng.expovariate(rate))
    return list(await asyncio.gather(*tasks))


async def closed_loop(client: httpx.AsyncClient, url: str, model: str, works: dict[str, Workload], kinds: list[str],
                      headers: dict[str, str], concurrency: int) -> list[Result]:
    queue = list(reversed(list(enumerate(kinds))))
    results: list[Result] = []

    async def client_task() -> None:
        while queue:
            i, kind = queue.pop()
            results.append(await one_request(client, url, model, works[kind], headers, i))

    await asyncio.gather(*(client_task() for _ in range(concurrency)))
    return results


# ---- report -----------------------------------------------------------------------------------------------

def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def fmt(v: float | None, scale: float = 1e3, digits: int = 0) -> str:
    return "–" if v is None else f"{v * scale:.{digits}f}"


def report(results: list[Result], duration: float) -> tuple[list[str], dict[str, Any]]:
    done = [r for r in results if r.ok]
    tpots = [(r.latency - r.ttft) / (r.completion_tokens - 1) for r in done
             if r.ttft is not None and r.latency is not None and r.completion_tokens > 1]
    tokens = sum(r.completion_tokens for r in done)
    summary = {
        "requests": len(results), "completed": len(done), "failed": len(results) - len(done),
        "duration_s": duration, "request_throughput": len(done) / duration, "output_tok_s": tokens / duration,
        "completion_tokens": tokens, "reasoning_tokens": sum(r.reasoning_tokens for r in done),
        "ttft_p50": pct([r.ttft for r in done if r.ttft is not None], 50),
        "ttft_p99": pct([r.ttft for r in done if r.ttft is not None], 99),
        "ttfa_p50": pct([r.ttfa for r in done if r.ttfa is not None], 50),
        "tpot_p50": pct(tpots, 50), "tpot_p99": pct(tpots, 99),
        "latency_p50": pct([r.latency for r in done], 50), "latency_p99": pct([r.latency for r in done], 99),
    }
    constrained = [r for r in done if r.valid is not None]
    summary["constrained"] = len(constrained)
    summary["constrained_valid"] = sum(bool(r.valid) for r in constrained)
    summary["invalid_with_stop"] = sum(r.valid is False and r.finish_reason == "stop" for r in constrained)
    s = summary
    lines = [
        "| requests (ok / sent) | duration (s) | req/s | output tok/s | TTFT p50 / p99 (ms) | first answer token p50 (ms) "
        "| TPOT p50 / p99 (ms) | latency p50 / p99 (s) | constrained answers valid |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {s['completed']} / {s['requests']} | {duration:.1f} | {s['request_throughput']:.2f} | {s['output_tok_s']:.1f} "
        f"| {fmt(s['ttft_p50'])} / {fmt(s['ttft_p99'])} | {fmt(s['ttfa_p50'])} | {fmt(s['tpot_p50'], digits=1)} / "
        f"{fmt(s['tpot_p99'], digits=1)} | {fmt(s['latency_p50'], 1, 2)} / {fmt(s['latency_p99'], 1, 2)} "
        f"| {s['constrained_valid']} / {s['constrained']} ({100 * s['constrained_valid'] / max(1, s['constrained']):.0f}%) |",
        "",
        "| kind | requests (ok / sent) | valid | invalid with finish stop | finish reasons | completion tokens (mean) "
        "| reasoning tokens (mean) | latency p50 (s) | example answer |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind in KINDS:
        rs = [r for r in results if r.kind == kind]
        if not rs:
            continue
        ok = [r for r in rs if r.ok]
        valid = "–" if kind == "plain" else f"{sum(bool(r.valid) for r in ok)} / {len(ok)}"
        bad_stop = "–" if kind == "plain" else str(sum(r.valid is False and r.finish_reason == "stop" for r in ok))
        reasons: dict[str, int] = {}
        for r in ok:
            reasons[str(r.finish_reason)] = reasons.get(str(r.finish_reason), 0) + 1
        mean = (lambda xs: statistics.mean(xs) if xs else 0.0)
        example = ok[0].content[:60].replace("|", "\\|").replace("\n", " ") if ok else ""
        lines.append(f"| {kind} | {len(ok)} / {len(rs)} | {valid} | {bad_stop} | {', '.join(f'{k} {v}' for k, v in sorted(reasons.items()))} "
                     f"| {mean([r.completion_tokens for r in ok]):.1f} | {mean([r.reasoning_tokens for r in ok]):.1f} "
                     f"| {fmt(pct([r.latency for r in ok], 50), 1, 2)} | `{example}` |")
    failures = [r for r in results if not r.ok][:5] + [r for r in results if r.ok and r.valid is False][:5]
    if failures:
        lines += ["", "Failed or invalid (first few):", ""]
        lines += [f"- {r.kind}: {r.error or 'invalid'} content={r.content[:120]!r} finish={r.finish_reason}"
                  for r in failures]
    return lines, summary


# ---- --launch -----------------------------------------------------------------------------------------------

def launch(args: argparse.Namespace, workdir: Path) -> tuple[Any, str]:
    from thinkform.utils import launch_server_cmd, wait_for_server

    if args.launch == "tiny":
        from thinkform.testing.models import make_tiny_model_dir
        from thinkform.testing.qwen_vocab import build_qwen_tokenizer

        model = make_tiny_model_dir(workdir / "tiny-qwen", "qwen2", build_qwen_tokenizer(reasoning=True),
                                    vocab_size=151_936)
        model_arg = f"--model-path {model}"
    else:
        model_arg = ""
    cmd = (f"python -m thinkform.launch_server {model_arg} --reasoning-parser deepseek-r1 "
           f"--grammar-backend {args.grammar_backend} --log-level warning {args.server_args}")
    print(f"launching: {cmd}", file=sys.stderr, flush=True)
    process, port = launch_server_cmd(cmd)
    base_url = f"http://127.0.0.1:{port}"
    wait_for_server(base_url, timeout=600, process=process)
    return process, base_url


def parse_mix(items: list[str]) -> dict[str, float]:
    mix = {}
    for item in items:
        kind, _, weight = item.partition("=")
        if kind not in KINDS:
            raise SystemExit(f"--mix {item!r}: kind must be one of {', '.join(KINDS)}")
        try:
            mix[kind] = float(weight)
        except ValueError:
            raise SystemExit(f"--mix {item!r}: expected KIND=WEIGHT") from None
    return mix


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", default=None, help="server to load (required unless --launch)")
    ap.add_argument("--launch", choices=["tiny", "default"], default=None)
    ap.add_argument("--grammar-backend", default="xgrammar", help="with --launch")
    ap.add_argument("--server-args", default="", help="extra launch_server flags, with --launch")
    ap.add_argument("--model", default="default")
    ap.add_argument("--api-key", default=None)
    load = ap.add_mutually_exclusive_group()
    load.add_argument("--request-rate", type=float, default=math.inf, help="Poisson arrivals per second (inf: all at once)")
    load.add_argument("--concurrency", type=int, default=None, help="closed loop of this many clients")
    ap.add_argument("--num-requests", type=int, default=64)
    ap.add_argument("--mix", nargs="+", default=["json=1", "regex=1", "ebnf=1", "plain=1"], metavar="KIND=WEIGHT")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--max-reasoning-tokens", type=int, default=None,
                    help="per-request thinking budget (a random model needs one; default: none)")
    ap.add_argument("--request-timeout", type=float, default=600.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args()
    args.mix = parse_mix(args.mix)
    if (args.base_url is None) == (args.launch is None):
        raise SystemExit("give exactly one of --base-url and --launch")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    process = None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            if args.launch:
                process, base_url = launch(args, Path(tmp))
            else:
                base_url = args.base_url
            results, duration = asyncio.run(run_load(args, base_url, args.model))
        finally:
            if process is not None:
                from thinkform.utils import terminate_process

                terminate_process(process)
    lines, summary = report(results, duration)
    load_desc = f"concurrency {args.concurrency}" if args.concurrency else f"request rate {args.request_rate}/s"
    header = [f"Run {started} on {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs); {load_desc}, "
              f"{args.num_requests} requests, mix {args.mix}, max_tokens {args.max_tokens}, "
              f"max_reasoning_tokens {args.max_reasoning_tokens}.", "", "Command: `" + " ".join(sys.argv) + "`", ""]
    print("\n".join(header + lines))
    if args.json_out:
        args.json_out.write_text(json.dumps({"summary": summary, "results": [asdict(r) for r in results]}, indent=1))


if __name__ == "__main__":
    main()
