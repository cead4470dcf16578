"""A mixed HTTP load against a thinkform server, shared by tests/test_load.py and bench/load.py.

Requests cycle through a mix: chat plain / regex (streaming) / JSON schema, completions streaming,
native /generate with EBNF and with a JSON schema (streaming); every `disconnect_every`-th request hangs
up early (streams after two events, plain requests on a short read time-out). Each finished answer is
checked: status 200, and a constrained answer that stopped matches its constraint.
"""
from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx
import jsonschema

QUESTION = [{"role": "user", "content": "Give me the capital of France in the JSON format."}]
SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "pattern": "^[A-Za-z]{1,8}$"},
                                           "population": {"type": "integer"}}, "required": ["name", "population"]}
CITY = "(Paris|London|Rome)"


def _schema_ok(text: str) -> bool:
    try:
        jsonschema.validate(json.loads(text), SCHEMA)
        return True
    except (ValueError, jsonschema.ValidationError):
        return False


@dataclass(frozen=True)
class Kind:
    name: str
    path: str
    body: Callable[[int], dict[str, Any]]
    stream: bool
    check: Callable[[str], bool] | None  # validator of the answer text (constrained kinds)


def request_mix(max_tokens: int) -> list[Kind]:
    def chat(**extra: Any) -> Callable[[int], dict[str, Any]]:
        return lambda i: {"messages": QUESTION, "max_tokens": max_tokens, "seed": i, **extra}

    return [
        Kind("chat", "/v1/chat/completions", chat(), False, None),
        Kind("chat-regex-stream", "/v1/chat/completions", chat(regex=CITY, stream=True), True,
             lambda t: re.fullmatch(CITY, t) is not None),
        Kind("chat-json", "/v1/chat/completions", chat(response_format={
            "type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA}}), False, _schema_ok),
        Kind("completions-stream", "/v1/completions",
             lambda i: {"prompt": "The capital of France is", "max_tokens": max_tokens, "stream": True, "seed": i},
             True, None),
        Kind("generate-ebnf", "/generate", lambda i: {"text": "Capital?", "require_reasoning": True, "sampling_params": {
            "max_new_tokens": max_tokens, "ebnf": 'root ::= "Paris" | "Rome"', "seed": i}}, False,
             lambda t: t in ("Paris", "Rome")),
        Kind("generate-json-stream", "/generate", lambda i: {
            "text": "Capital?", "stream": True, "sampling_params": {
                "max_new_tokens": max_tokens, "json_schema": json.dumps(SCHEMA), "seed": i}}, True, _schema_ok),
    ]


@dataclass
class Outcome:
    kind: str
    status: int | None  # None: we hung up on purpose
    latency_s: float
    completion_tokens: int = 0
    finish: str | None = None
    valid: bool | None = None  # None: unconstrained or cut by length
    error: str | None = None


@dataclass
class LoadReport:
    outcomes: list[Outcome] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def completed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status is not None]

    @property
    def failures(self) -> list[Outcome]:
        """Requests we did not abort that did not come back 200 with a valid answer."""
        return [o for o in self.completed if o.status != 200 or o.valid is False or o.error]

    def summary(self) -> dict[str, Any]:
        done = self.completed
        lat = sorted(o.latency_s for o in done) or [0.0]
        tokens = sum(o.completion_tokens for o in done)

        def pct(q: float) -> float:
            return round(lat[min(len(lat) - 1, int(q * len(lat)))], 3)

        return {"requests": len(self.outcomes), "completed": len(done),
                "aborted_by_client": len(self.outcomes) - len(done), "failures": len(self.failures),
                "statuses": dict(Counter(str(o.status) for o in done)),
                "finish": dict(Counter(str(o.finish) for o in done)),
                "constrained_valid": sum(1 for o in done if o.valid), "constrained_invalid":
                    sum(1 for o in done if o.valid is False),
                "wall_s": round(self.wall_s, 2), "req_per_s": round(len(done) / self.wall_s, 2) if self.wall_s else 0,
                "completion_tokens": tokens, "tok_per_s": round(tokens / self.wall_s, 1) if self.wall_s else 0,
                "latency_p50_s": pct(0.5), "latency_p90_s": pct(0.9), "latency_p99_s": pct(0.99),
                "latency_mean_s": round(statistics.fmean(lat), 3)}


def _answer(kind: Kind, payload: Any) -> tuple[str, str | None, int]:
    """(answer text, finish reason, completion tokens) of a plain response."""
    if kind.path == "/generate":
        meta = payload["meta_info"]
        return meta.get("content", payload["text"]), meta["finish_reason"]["type"], meta["completion_tokens"]
    choice = payload["choices"][0]
    text = choice["message"]["content"] if "message" in choice else choice["text"]
    return text or "", choice["finish_reason"], payload["usage"]["completion_tokens"]


def _stream_answer(kind: Kind, events: list[Any]) -> tuple[str, str | None, int]:
    data = [e for e in events if isinstance(e, dict)]
    if kind.path == "/generate":
        last = data[-1]
        meta = last["meta_info"]
        return meta.get("content", last["text"]), (meta.get("finish_reason") or {}).get("type"), \
            meta.get("completion_tokens", 0)
    text, finish = "", None
    for e in data:
        for c in e.get("choices", []):
            delta = c.get("delta", {})
            text += (delta.get("content") or "") if "delta" in c else c.get("text", "")
            finish = c.get("finish_reason") or finish
    return text, finish, sum(1 for e in data for c in e.get("choices", []) if c.get("delta", c).get("content")
                             or c.get("text"))


def _judge(kind: Kind, text: str, finish: str | None) -> bool | None:
    if kind.check is None or finish != "stop":
        return None
    return kind.check(text)


async def _one(http: httpx.AsyncClient, base: str, kind: Kind, i: int, hang_up: bool) -> Outcome:
    start = time.perf_counter()
    body = kind.body(i)
    try:
        if kind.stream:
            events: list[Any] = []
            async with http.stream("POST", base + kind.path, json=body) as r:
                if r.status_code != 200:
                    await r.aread()
                    return Outcome(kind.name, r.status_code, time.perf_counter() - start, error=r.text[:200])
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        payload = line[6:]
                        events.append(payload if payload == "[DONE]" else json.loads(payload))
                        if hang_up and len(events) >= 2:
                            return Outcome(kind.name, None, time.perf_counter() - start)
            if events[-1:] != ["[DONE]"]:
                return Outcome(kind.name, 200, time.perf_counter() - start, error="stream ended without [DONE]")
            text, finish, tokens = _stream_answer(kind, events)
        else:
            timeout = httpx.Timeout(0.3) if hang_up else http.timeout
            try:
                r = await http.post(base + kind.path, json=body, timeout=timeout)
            except httpx.ReadTimeout:
                if hang_up:
                    return Outcome(kind.name, None, time.perf_counter() - start)
                raise
            if r.status_code != 200:
                return Outcome(kind.name, r.status_code, time.perf_counter() - start, error=r.text[:200])
            text, finish, tokens = _answer(kind, r.json())
    except (httpx.HTTPError, ValueError, KeyError, IndexError) as e:
        return Outcome(kind.name, -1, time.perf_counter() - start, error=f"{type(e).__name__}: {e}")
    return Outcome(kind.name, 200, time.perf_counter() - start, tokens, finish, _judge(kind, text, finish))


async def run_load(base: str, num_requests: int, concurrency: int, max_tokens: int = 48,
                   disconnect_every: int = 0, timeout_s: float = 600.0, api_key: str | None = None) -> LoadReport:
    """Send `num_requests` of the mix, at most `concurrency` at a time; every `disconnect_every`-th
    (0: none) hangs up early."""
    mix = request_mix(max_tokens)
    gate = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    report = LoadReport()

    async with httpx.AsyncClient(timeout=timeout_s, limits=limits, headers=headers) as http:
        async def task(i: int) -> Outcome:
            async with gate:
                hang_up = disconnect_every > 0 and i % disconnect_every == disconnect_every - 1
                return await _one(http, base, mix[i % len(mix)], i, hang_up)

        start = time.perf_counter()
        report.outcomes = list(await asyncio.gather(*(task(i) for i in range(num_requests))))
        report.wall_s = time.perf_counter() - start
    return report
