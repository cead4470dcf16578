"""GET /metrics: the server's and the engine's counters in the Prometheus text format (0.0.4).

Written by hand: a few dozen numbers do not need a client library. The engine side comes from
`engine.server_info()` (scheduler counters, queue, KV pages, grammar cache); the HTTP side (responses by
route and status, rejected constraints) is counted here. The engine's numbers are given twice: as
`thinkform_*`, and under SGLang's `sglang:*` and vLLM's `vllm:*` names (with their latency histograms) for
their dashboards.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OTHER_ROUTE = "other"  # unknown paths share one label, so scanners cannot blow up the series count

router = APIRouter()


@dataclass
class ServerMetrics:
    """Counters the HTTP layer keeps (touched only from the event loop)."""

    responses: Counter[tuple[str, str]] = field(default_factory=Counter)  # (route, status) -> count
    invalid_constraints: int = 0

    def count_response(self, route: str, status: int) -> None:
        self.responses[(route, str(status))] += 1


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str  # counter | gauge | histogram
    help: str
    samples: tuple[tuple[dict[str, str], float], ...]
    suffixes: tuple[str, ...] = ()  # a histogram's per sample: _bucket, _sum, _count


def _one(name: str, kind: str, help: str, value: float | None) -> list[Metric]:
    return [] if value is None else [Metric(name, kind, help, (({}, float(value)),))]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(int(value)) if value == int(value) and abs(value) < 2**53 else repr(value)


def _bound(value: float) -> str:
    """A bucket's `le` as Prometheus' own clients write it (`1.0`, `1.0e+06`): exact-match selectors copied
    from SGLang and vLLM setups match it on Prometheus 2."""
    text = repr(float(value))
    dot = text.find(".")
    if value > 0 and dot > 6:
        return f"{text[0]}.{text[1:dot]}".rstrip("0").rstrip(".") + f"e+0{dot - 1}"
    return text


def render(metrics: Iterable[Metric]) -> str:
    lines = []
    for m in metrics:
        lines += [f"# HELP {m.name} {m.help}", f"# TYPE {m.name} {m.kind}"]
        for i, (labels, value) in enumerate(m.samples):
            name = m.name + (m.suffixes[i] if m.suffixes else "")
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            lines.append(f"{name}{{{label_text}}} {_number(value)}" if label_text else f"{name} {_number(value)}")
    return "\n".join(lines) + "\n"


def server_side(metrics: ServerMetrics, healthy: bool) -> list[Metric]:
    responses = tuple(({"route": route, "status": status}, float(n))
                      for (route, status), n in sorted(metrics.responses.items()))
    out = [Metric("thinkform_http_responses_total", "counter", "HTTP responses by route and status code.",
                  responses)] if responses else []
    out += _one("thinkform_invalid_constraints_total", "counter",
                "Requests refused for a bad, too large or too deep constraint, or a failed/timed-out compile.",
                metrics.invalid_constraints)
    out += _one("thinkform_engine_healthy", "gauge", "1 while the engine loop runs, else 0.", 1 if healthy else 0)
    return out


def engine_side(info: dict[str, Any]) -> list[Metric]:
    """Metrics from Engine.server_info(); keys a given engine does not report are left out."""
    reasons = tuple(({"reason": r}, float(info[f"finished_{r}"])) for r in ("stop", "length", "abort")
                    if f"finished_{r}" in info)
    out = [Metric("thinkform_requests_finished_total", "counter",
                  "Finished samples by finish reason (abort: client gone, aborted, or failed).", reasons)] \
        if reasons else []
    out += [m for name, kind, help, key in _ENGINE_SCALARS for m in _one(name, kind, help, info.get(key))]
    out += _one("thinkform_kv_usage_ratio", "gauge", "Fraction of KV cache pages in use.", _kv_usage(info))
    return out + _grammar(info.get("grammar_cache") or {})


def _kv_usage(info: dict[str, Any]) -> float | None:
    """The fraction of the KV cache's pages in use (None where the engine reports no pool)."""
    return info.get("kv_pages_used", 0) / info["kv_pages_total"] if info.get("kv_pages_total") else None


def _grammar(stats: dict[str, Any]) -> list[Metric]:
    return [m for name, kind, help, key in _GRAMMAR_SCALARS for m in _one(name, kind, help, stats.get(key))]


# (metric, type, help, key in Engine.server_info()); a key an engine does not report is left out
_ENGINE_SCALARS = (
    ("thinkform_prompt_tokens_total", "counter", "Prompt tokens of finished samples.", "prompt_tokens"),
    ("thinkform_generation_tokens_total", "counter", "Tokens generated (sampled and forced).", "generated_tokens"),
    ("thinkform_reasoning_tokens_total", "counter", "Tokens generated inside reasoning sections.",
     "reasoning_tokens"),
    ("thinkform_forced_tokens_total", "counter",
     "Reasoning end markers forced by the thinking budget or the answer reserve (tokens).", "forced_tokens"),
    ("thinkform_jump_forward_tokens_total", "counter",
     "Grammar-forced tokens appended without a sampling step (forward passes saved).", "jump_tokens"),
    ("thinkform_sparse_logit_rows_total", "counter",
     "Constrained decode rows whose logits were computed at the grammar's few allowed tokens only (CPU).",
     "sparse_logit_rows"),
    ("thinkform_num_requests_waiting", "gauge", "Samples queued, not yet running.", "waiting"),
    ("thinkform_num_requests_running", "gauge", "Samples in the running batch.", "running"),
    ("thinkform_kv_pages_used", "gauge", "KV cache pages held by requests.", "kv_pages_used"),
    ("thinkform_kv_pages_total", "gauge", "KV cache pages in the pool.", "kv_pages_total"),
)
# the same, for Engine.server_info()["grammar_cache"]
_GRAMMAR_SCALARS = (
    ("thinkform_grammar_compile_seconds_total", "counter", "Seconds spent compiling grammars.",
     "compile_seconds"),
    ("thinkform_grammar_cache_hits_total", "counter", "Grammar requests served from the cache.", "hits"),
    ("thinkform_grammar_cache_misses_total", "counter", "Grammar requests that needed a compile.", "misses"),
    ("thinkform_grammar_compile_failures_total", "counter", "Grammar compiles that failed.", "failures"),
    ("thinkform_grammar_compile_timeouts_total", "counter", "Grammar compiles past the time-out.", "timeouts"),
    ("thinkform_grammar_cache_entries", "gauge", "Compiled grammars held.", "entries"),
    ("thinkform_grammar_cache_bytes", "gauge", "Bytes the held grammars take (their token masks).", "bytes"),
)


def sglang_side(info: dict[str, Any], model_name: str) -> list[Metric]:
    """The same numbers under SGLang's names and model_name label, so its dashboards and alerts read them."""
    label = {"model_name": model_name}
    extra = [("num_used_tokens", "gauge", "KV cache tokens in use.",
              info.get("kv_pages_used", 0) * info.get("page_size", 1) if info.get("kv_pages_total") else None),
             ("cache_hit_rate", "gauge", "The cache hit rate (prompt tokens served from the prefix cache).",
              info.get("cached_tokens", 0) / info["prompt_tokens"] if info.get("prompt_tokens") else None),
             ("gen_throughput", "gauge", "The generation throughput (token/s).", info.get("last_gen_throughput")),
             ("max_total_num_tokens", "gauge", "Maximum total number of tokens in the KV cache.",
              info.get("max_total_num_tokens"))]
    return _named("sglang", _SGLANG_SCALARS, ("token_usage", "The token usage (fraction of the KV cache in use)."),
                  info, label, extra)


def vllm_side(info: dict[str, Any], model_name: str) -> list[Metric]:
    """The main numbers under vLLM's names, for its dashboards, autoscalers and routers (its older
    gpu_cache_usage_perc too, which older dashboards query)."""
    label = {"model_name": model_name}
    extra = [("gpu_cache_usage_perc", "gauge", "GPU KV-cache usage. 1 means 100 percent usage.", _kv_usage(info))]
    out = _named("vllm", _VLLM_SCALARS, ("kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage."),
                 info, label, extra)
    reasons = tuple(({**label, "finished_reason": r}, float(info[f"finished_{r}"])) for r in ("stop", "length", "abort")
                    if f"finished_{r}" in info)
    if reasons:
        out.append(Metric("vllm:request_success_total", "counter", "Count of successfully processed requests.",
                          reasons))
    for name, snapshot in (info.get("request_histograms") or {}).items():
        out.append(_histogram(f"vllm:{name}", _VLLM_HISTOGRAM_HELP.get(name, name), snapshot, label))
    return out


def _named(prefix: str, scalars: tuple[tuple[str, str, str, str], ...], usage: tuple[str, str],
           info: dict[str, Any], label: dict[str, str],
           extra: list[tuple[str, str, str, float | None]]) -> list[Metric]:
    """One serving engine's spelling of the engine's numbers: `scalars` read from server_info, the KV cache's
    usage as a fraction, `extra` values, and the latency histograms (the names SGLang and vLLM share)."""
    values = [(name, kind, help, info.get(key)) for name, kind, help, key in scalars]
    values.append((usage[0], "gauge", usage[1], _kv_usage(info)))
    out = [Metric(f"{prefix}:{name}", kind, help, ((label, float(value)),))
           for name, kind, help, value in values + extra if value is not None]
    for name, snapshot in (info.get("latency") or {}).items():
        out.append(_histogram(f"{prefix}:{name}", _LATENCY_HELP.get(name, name), snapshot, label))
    return out


def _histogram(name: str, help: str, snap: dict[str, Any], label: dict[str, str]) -> Metric:
    bounds = [*(_bound(b) for b in snap["bounds"]), "+Inf"]
    samples = [({"le": le, **label}, float(n)) for le, n in zip(bounds, snap["cumulative"])]
    samples += [(label, float(snap["sum"])), (label, float(snap["count"]))]
    return Metric(name, "histogram", help, tuple(samples), ("_bucket",) * len(bounds) + ("_sum", "_count"))


# (SGLang's name, type, help, key in Engine.server_info())
_SGLANG_SCALARS = (
    ("prompt_tokens_total", "counter", "Number of prefill tokens processed.", "prompt_tokens"),
    ("generation_tokens_total", "counter", "Number of generation tokens processed.", "generated_tokens"),
    ("cached_tokens_total", "counter", "Number of cached tokens (prefix cache hits).", "cached_tokens"),
    ("num_requests_total", "counter", "Number of requests processed.", "finished"),
    ("num_so_requests_total", "counter", "Number of structured output requests processed.", "constrained_finished"),
    ("num_aborted_requests_total", "counter", "Number of requests aborted.", "aborted"),
    ("num_running_reqs", "gauge", "The number of running requests.", "running"),
    ("num_queue_reqs", "gauge", "The number of requests in the waiting queue.", "waiting"),
)
_VLLM_SCALARS = (
    ("num_requests_running", "gauge", "Number of requests in model execution batches.", "running"),
    ("num_requests_waiting", "gauge", "Number of requests waiting to be processed.", "waiting"),
    ("prompt_tokens_total", "counter", "Number of prefill tokens processed.", "prompt_tokens"),
    ("generation_tokens_total", "counter", "Number of generation tokens processed.", "generated_tokens"),
    ("num_preemptions_total", "counter", "Cumulative number of preemption from the engine.", "preemptions"),
    ("prefix_cache_queries_total", "counter", "Prefix cache queries, in terms of number of queried tokens.",
     "prompt_tokens"),
    ("prefix_cache_hits_total", "counter", "Prefix cache hits, in terms of number of cached tokens.",
     "cached_tokens"),
)
_VLLM_HISTOGRAM_HELP = {
    "request_time_per_output_token_seconds": "Histogram of time_per_output_token_seconds per request.",
    "request_queue_time_seconds": "Histogram of time spent in WAITING phase for request.",
    "request_prefill_time_seconds": "Histogram of time spent in PREFILL phase for request.",
    "request_decode_time_seconds": "Histogram of time spent in DECODE phase for request.",
    "request_inference_time_seconds": "Histogram of time spent in RUNNING phase for request.",
    "request_prompt_tokens": "Number of prefill tokens processed.",
    "request_generation_tokens": "Number of generation tokens processed.",
    "request_max_num_generation_tokens": "Histogram of maximum number of requested generation tokens.",
}
_LATENCY_HELP = {
    "time_to_first_token_seconds": "Histogram of time to first token in seconds.",
    "e2e_request_latency_seconds": "Histogram of end-to-end request latency in seconds.",
    "inter_token_latency_seconds": "Histogram of inter-token latency in seconds.",
}


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> PlainTextResponse:
    state = request.app.state.thinkform
    engine = state.engine
    info = engine.server_info()
    text = render(server_side(state.metrics, engine.is_healthy()) + engine_side(info) +
                  sglang_side(info, state.model_name) + vllm_side(info, state.model_name))
    return PlainTextResponse(text, media_type=CONTENT_TYPE)


class ResponseCounter:
    """ASGI middleware counting every response by route and status (401s and 413s included)."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics, routes: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        route = path if path in self.routes else OTHER_ROUTE

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.count_response(route, message["status"])
            await send(message)

        await self.app(scope, receive, counting_send)
