"""GrammarCache: hits and misses, cached failures, LRU eviction, time-outs that fail only their request."""
from __future__ import annotations

import threading
import time
from typing import Any, ClassVar

import pytest

from thinkform.engine.errors import EngineOverloaded
from thinkform.structured.backends import BackendContext, CompiledGrammar, GrammarBackend, GrammarMatcher
from thinkform.structured.cache import GrammarCache
from thinkform.structured.spec import Constraint, ConstraintError, GrammarOptions, constraint_from_fields


class FakeCompiled(CompiledGrammar):
    def __init__(self, source: str) -> None:
        self.source = source

    def new_matcher(self) -> GrammarMatcher:
        return AnyTextMatcher()  # type: ignore[return-value]

    def memory_bytes(self) -> int:
        return 100 * len(self.source)  # "aaa": 300 bytes


class AnyTextMatcher:
    """All the cache asks of a fresh matcher (that the grammar has some answer): every token allowed."""

    def fill_bitmask(self, bitmask: Any, row: int) -> None:
        bitmask[row] = -1

    def can_terminate(self) -> bool:
        return True


class FakeBackend(GrammarBackend):
    """Compiles regexes instantly; "slow…" waits for `release`; "bad…" is a compile error."""

    name: ClassVar[str] = "fake"
    kinds: ClassVar[frozenset[str]] = frozenset({"regex"})

    def __init__(self, ctx: BackendContext) -> None:
        super().__init__(ctx)
        self.calls: list[str] = []
        self.release = threading.Event()

    def compile(self, constraint: Constraint) -> CompiledGrammar:
        self.calls.append(constraint.source)
        self.check_kind(constraint)
        if constraint.source.startswith("slow"):
            self.release.wait(10)
        if constraint.source.startswith("bad"):
            raise ConstraintError(f"invalid regex: cannot parse {constraint.source!r}", field="regex")
        return FakeCompiled(constraint.source)


def make_cache(timeout_s: float = 5.0, **kwargs: Any) -> tuple[GrammarCache, FakeBackend]:
    ctx = BackendContext(tokenizer=None, vocab_size=8, eos_token_ids=(0,),
                         options=GrammarOptions(compile_timeout_s=timeout_s))
    backend = FakeBackend(ctx)
    return GrammarCache(backend, **kwargs), backend


def regex(source: str) -> Constraint:
    return constraint_from_fields(regex=source)


def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition never became true"
        time.sleep(0.01)


def test_second_request_is_a_hit_with_the_same_grammar() -> None:
    cache, backend = make_cache()
    first = cache.get(regex("a+"))
    second = cache.get(regex("a+"))
    assert first is second and backend.calls == ["a+"]
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries, stats.failures) == (1, 1, 1, 0)
    assert stats.compile_seconds >= 0.0


def test_compiles_run_off_the_callers_thread() -> None:
    cache, backend = make_cache()
    future = cache.submit(regex("slow-1"))
    assert not future.done()  # submit returned while the compile still waits
    backend.release.set()
    assert future.result(5).source == "slow-1"


def test_identical_requests_in_flight_share_one_compile() -> None:
    cache, backend = make_cache()
    a, b = cache.submit(regex("slow-x")), cache.submit(regex("slow-x"))
    assert a is b
    backend.release.set()
    a.result(5)
    assert backend.calls == ["slow-x"] and cache.stats().hits == 1


def test_failures_are_cached_and_fail_fast() -> None:
    cache, backend = make_cache()
    for _ in range(2):
        with pytest.raises(ConstraintError, match="cannot parse 'bad") as e:
            cache.get(regex("bad("))
        assert e.value.field == "regex"
    assert backend.calls == ["bad("]
    assert cache.stats().failures == 1


def test_a_cached_failure_keeps_no_request_alive() -> None:
    """Audit 32: the cached failure was the exception raised into each request that asked, and each raise's
    traceback kept that request's frames (prompt, params) alive for as long as the failure stayed cached."""
    import gc
    import weakref

    class Request:  # what a request's frames hold
        pass

    def ask(cache: GrammarCache, request: Request) -> None:
        try:
            cache.get(regex("bad("))
        except ConstraintError:
            pass

    cache, _ = make_cache()
    for _ in range(2):  # the compile's waiter, then a hit
        request = Request()
        alive = weakref.ref(request)
        ask(cache, request)
        del request
        gc.collect()
        assert alive() is None
    with pytest.raises(ConstraintError, match="cannot parse") as e:
        cache.get(regex("bad("))
    assert e.value.field == "regex"


def test_evictions_give_the_freed_memory_back() -> None:
    """Audit 32: RSS grew wave after wave of new schemas past the cache's bound (freed masks stayed in
    glibc's per-thread arenas); an eviction now trims them, at most once per interval."""
    cache, _ = make_cache(max_entries=1)
    cache._trim.interval_s = 0.0
    cache.get(regex("a"))
    cache.get(regex("b"))  # evicts a; the trim follows on a timer thread
    wait_until(lambda: cache._trim.count == int(cache._trim.available))  # glibc's only


def test_least_recently_used_entry_is_evicted() -> None:
    cache, backend = make_cache(max_entries=2)
    cache.get(regex("a"))
    cache.get(regex("b"))
    cache.get(regex("a"))  # a is now the most recent
    cache.get(regex("c"))  # evicts b
    cache.get(regex("a"))
    cache.get(regex("b"))
    assert backend.calls == ["a", "b", "c", "b"]
    assert cache.stats().entries == 2


def test_what_the_grammars_hold_is_bounded_too() -> None:
    """Audit 29: a server taking new schemas grew by ~2.4 MB a grammar for good (xgrammar's own cache was
    unbounded, and 256 of the engine's held 600 MB): the least recently used grammars go past max_bytes,
    the newest always stays, and clear() forgets what they held."""
    cache, backend = make_cache(max_bytes=1000)
    for source in ("aaa", "bbb", "ccc"):
        cache.get(regex(source))
    assert cache.stats().entries == 3 and cache.stats().bytes == 900
    cache.get(regex("dddd"))  # 1,300 bytes: the oldest goes
    assert cache.stats().entries == 3 and cache.stats().bytes == 1000
    cache.get(regex("bbb"))
    assert backend.calls == ["aaa", "bbb", "ccc", "dddd"]  # bbb still held
    cache.get(regex("x" * 20))  # 2,000 bytes alone: it stays, the rest goes
    assert cache.stats().entries == 1 and cache.stats().bytes == 2000
    cache.clear()
    assert cache.stats().entries == 0 and cache.stats().bytes == 0


def test_xgrammars_own_cache_is_bounded() -> None:
    from thinkform.structured.backends.xgrammar import XGRAMMAR_CACHE_BYTES, XGrammarBackend
    from thinkform.testing.tokenizers import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    backend = XGrammarBackend(BackendContext(tok, len(tok), (tok.eos_token_id,), GrammarOptions()))
    compiled = backend.compile(constraint_from_fields(json_schema={"type": "object", "properties": {"p": {}}}))
    assert compiled.memory_bytes() > 0
    assert backend._compiler.cache_limit_bytes == XGRAMMAR_CACHE_BYTES > 0


def test_a_runaway_compile_times_out_alone_and_its_late_result_is_kept() -> None:
    cache, backend = make_cache(timeout_s=0.3)
    slow = cache.submit(regex("slow-runaway"))
    started = time.monotonic()
    assert cache.get(regex("fast")).source == "fast"  # not starved by the runaway (which blocks 10 s)
    assert time.monotonic() - started < 3  # generous: a busy machine may be slow to start a thread
    with pytest.raises(ConstraintError, match=r"grammar compile timed out after 0.3s") as e:
        slow.result(5)
    assert e.value.field == "regex"
    stats = cache.stats()
    assert (stats.timeouts, stats.abandoned, stats.in_flight) == (1, 1, 0)
    with pytest.raises(ConstraintError, match="timed out"):  # the same constraint fails fast meanwhile
        cache.get(regex("slow-runaway"), timeout=1)
    backend.release.set()
    wait_until(lambda: cache.stats().abandoned == 0)
    assert cache.get(regex("slow-runaway")).source == "slow-runaway"  # the late result is served
    assert backend.calls.count("slow-runaway") == 1


def test_too_many_abandoned_compiles_refuse_new_ones_but_serve_cached() -> None:
    cache, backend = make_cache(timeout_s=0.2, max_abandoned=1)
    cache.get(regex("cached"))
    with pytest.raises(ConstraintError, match="timed out"):
        cache.get(regex("slow-a"))
    # the caller's wait and the watchdog's deadline are both 0.2 s: on a busy machine the watchdog may count
    # the abandoned compile a moment after the caller gave up
    wait_until(lambda: cache.stats().abandoned == 1)
    misses = cache.stats().misses
    # the server's state, not the request's fault: a 503 with Retry-After (clients retry it; a 400 they do not)
    with pytest.raises(EngineOverloaded, match="busy: 1 earlier compiles ran past the 0.2s time-out") as busy:
        cache.get(regex("new"))
    assert busy.value.retry_after_s >= 1 and cache.stats().misses == misses  # no compile started
    assert "new" not in backend.calls
    assert cache.get(regex("cached")).source == "cached"
    backend.release.set()
    wait_until(lambda: cache.stats().abandoned == 0)
    assert cache.get(regex("new")).source == "new"  # not cached as a failure


def test_get_timeout_bounds_only_the_wait() -> None:
    cache, backend = make_cache(timeout_s=5)
    with pytest.raises(ConstraintError, match="timed out after 0.05s"):
        cache.get(regex("slow-wait"), timeout=0.05)
    backend.release.set()
    assert cache.get(regex("slow-wait")).source == "slow-wait"
    assert cache.stats().timeouts == 0


def test_unsupported_kind_is_a_cached_constraint_error() -> None:
    cache, backend = make_cache()
    for _ in range(2):
        with pytest.raises(ConstraintError, match="'fake' does not support ebnf"):
            cache.get(constraint_from_fields(ebnf='root ::= "a"'))
    assert len(backend.calls) == 1
