"""Compiled-grammar cache: LRU of compile results (failures too), compiled off the caller's thread.

Why a daemon thread per in-flight compile, plus one watchdog thread: a native compile (xgrammar,
llguidance, outlines-core) cannot be interrupted from Python. A fixed pool would let a few runaway
schemas occupy every worker and starve everyone else; a worker process would have to rebuild the
tokenizer tables and ship compiled grammars back, which not every library can serialise. So each
compile gets its own thread and starts at once; the watchdog fails a request whose compile runs past
`compile_timeout_s` and abandons that thread. Abandoned threads still burn CPU, so at most
`max_abandoned` of them may exist; beyond that, new compiles are refused (EngineOverloaded: a 503 with Retry-After) until
they finish (cached grammars keep being served).
"""
from __future__ import annotations

import copy
import heapq
import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import torch

from thinkform.engine.errors import EngineOverloaded
from thinkform.structured.backends.base import CompiledGrammar, GrammarBackend
from thinkform.structured.bitmask import set_bits
from thinkform.structured.literals import grammar_literals
from thinkform.structured.memory_trim import MemoryTrim
from thinkform.structured.spec import Constraint, ConstraintError, call_openings, ending_may_grow, wrapper_tags

CacheKey = tuple[str, str, str]  # (backend name, constraint kind, canonical source)


@dataclass(frozen=True)
class CacheStats:
    hits: int  # served from the cache or joined an identical compile in flight
    misses: int  # compiles started (or refused while busy)
    failures: int  # compiles that ended in an error, time-outs included
    timeouts: int
    compile_seconds: float  # total time spent inside backend.compile
    entries: int
    in_flight: int
    abandoned: int  # timed-out compiles still running
    bytes: int = 0  # what the cached grammars hold (as their backends tell: xgrammar's token masks)


@dataclass(eq=False)
class _Job:
    key: CacheKey
    constraint: Constraint
    future: Future[CompiledGrammar] | None  # let go once resolved (the deadline heap may hold a job a while)
    deadline: float
    finished: bool = False
    timed_out: bool = False


class GrammarCache:
    def __init__(self, backend: GrammarBackend, max_entries: int = 256, max_abandoned: int = 2,
                 before_handout: Callable[[CompiledGrammar], None] | None = None,
                 max_bytes: int = 256 * 2**20) -> None:
        """before_handout: extra work on each newly compiled grammar, on its compile thread, before its
        requests get it (its errors are ignored: what it computes is an extra). The least recently used
        grammars go past `max_entries` or `max_bytes` (the newest always stays): with Qwen's vocabulary a
        JSON schema's grammar holds ~2.4 MB of token masks, so 256 of them held 600 MB."""
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self.backend = backend
        self.before_handout = before_handout
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._bytes: dict[CacheKey, int] = {}
        self._trim = MemoryTrim()
        self.max_abandoned = max_abandoned
        self.timeout_s = backend.ctx.options.compile_timeout_s
        self._cond = threading.Condition()
        self._done: OrderedDict[CacheKey, Future[CompiledGrammar]] = OrderedDict()
        self._pending: dict[CacheKey, _Job] = {}
        self._deadlines: list[tuple[float, int, _Job]] = []
        self._seq = itertools.count()
        self._watchdog: threading.Thread | None = None
        self._closed = False
        self._hits = self._misses = self._failures = self._timeouts = self._abandoned = 0
        self._compile_seconds = 0.0

    # ---- public API -------------------------------------------------------------------------------

    def submit(self, constraint: Constraint) -> Future[CompiledGrammar]:
        """A future of the compiled grammar; fails with ConstraintError on a bad constraint or time-out."""
        key = (self.backend.name, constraint.kind, constraint.source)
        with self._cond:
            if self._closed:
                raise RuntimeError("grammar cache is closed")
            if key in self._done:
                self._done.move_to_end(key)
                self._hits += 1
                return _handed_out(self._done[key])
            if key in self._pending:
                self._hits += 1
                return self._pending[key].future  # type: ignore[return-value]  # pending: not resolved yet
            if self._abandoned >= self.max_abandoned:  # the server's state, not the request's fault: a 503
                return _failed(EngineOverloaded(
                    f"grammar compiler is busy: {self._abandoned} earlier compiles ran past the "
                    f"{self.timeout_s:g}s time-out and are still running; try again later",
                    retry_after_s=max(1, round(self.timeout_s))))
            self._misses += 1
            future = _running_future()
            job = _Job(key, constraint, future, time.monotonic() + self.timeout_s)
            self._pending[key] = job
            heapq.heappush(self._deadlines, (job.deadline, next(self._seq), job))
            self._start_watchdog()
            self._cond.notify_all()
        threading.Thread(target=self._compile, args=(job,), name="grammar-compile", daemon=True).start()
        return future

    def get(self, constraint: Constraint, timeout: float | None = None) -> CompiledGrammar:
        """Compile (or fetch) synchronously; `timeout` bounds this wait only (default: the compile time-out)."""
        wait = self.timeout_s if timeout is None else timeout
        try:
            return self.submit(constraint).result(wait)
        except FutureTimeout:
            raise ConstraintError(f"grammar compile timed out after {wait:g}s", field=constraint.field) from None

    def stats(self) -> CacheStats:
        with self._cond:
            return CacheStats(self._hits, self._misses, self._failures, self._timeouts,
                              self._compile_seconds, len(self._done), len(self._pending), self._abandoned,
                              sum(self._bytes.values()))

    def clear(self) -> None:
        """Forget every finished compile (compiles in flight still land); the next request compiles anew."""
        with self._cond:
            self._done.clear()
            self._bytes.clear()
            self._trim.request()

    def close(self) -> None:
        """Stop the watchdog; compiles still running finish on their daemon threads unobserved."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # ---- compile thread ---------------------------------------------------------------------------

    def _compile(self, job: _Job) -> None:
        start = time.monotonic()
        result: CompiledGrammar | None = None
        error: BaseException | None = None
        try:
            result = self.backend.compile(job.constraint)
            result.ending_grows = ending_may_grow(job.constraint)  # once per grammar, off the request path
            result.closing_literals = grammar_literals(job.constraint)
            if job.constraint.kind == "structural_tag":
                tag = job.constraint.data()
                result.call_openings = tuple(tuple(group) for group in call_openings(tag))
                # a section's end, tried whole by the search (the measure's and each request's): between two
                # calls it closes the answer, where the bytes alone lead on to one more call (Kimi-K2's
                # `<|tool_call_begin|>` and `<|tool_calls_section_end|>` part late; byte by byte the measure ran
                # on through every call the section allows)
                result.closing_literals += tuple(end.encode() for _, end in wrapper_tags(tag))
            _check_has_answers(result, job.constraint, self.backend.ctx.vocab_size, self.backend.ctx.eos_token_ids)
            _extra(self.before_handout, result)
        except BaseException as e:  # noqa: BLE001 - handed to the waiting request, never swallowed
            error = e
        with self._cond:
            self._compile_seconds += time.monotonic() - start
            if job.timed_out:  # its request already failed; keep the late outcome for the next asker
                self._abandoned -= 1
                if error is None or isinstance(error, ConstraintError):
                    self._store(job.key, _finished(result, error), _held_bytes(result))
                return
            job.finished = True
            del self._pending[job.key]
            if error is not None:
                self._failures += 1
            if error is None or isinstance(error, ConstraintError):  # other errors may be transient
                self._store(job.key, _finished(result, error), _held_bytes(result))
            # its waiters hold the future; the job (in the deadline heap until the watchdog pops it) lets go:
            # the error each waiter raises carries that waiter's frames
            future, job.future = job.future, None
        # Resolved outside the lock: done-callbacks may call back into the cache.
        assert future is not None
        if error is None:
            future.set_result(result)  # type: ignore[arg-type]
        else:
            future.set_exception(error)

    def _store(self, key: CacheKey, future: Future[CompiledGrammar], nbytes: int = 0) -> None:
        self._done[key] = future
        self._done.move_to_end(key)
        self._bytes[key] = nbytes
        while len(self._done) > self.max_entries or (
                len(self._done) > 1 and sum(self._bytes.values()) > self.max_bytes):
            old, _ = self._done.popitem(last=False)
            self._bytes.pop(old, None)
            self._trim.request()

    # ---- watchdog ---------------------------------------------------------------------------------

    def _start_watchdog(self) -> None:
        if self._watchdog is None:
            self._watchdog = threading.Thread(target=self._watch, name="grammar-watchdog", daemon=True)
            self._watchdog.start()

    def _watch(self) -> None:
        while True:
            with self._cond:
                expired = self._wait_for_expired()
            if expired is None:
                return
            for future, error in expired:
                future.set_exception(error)

    def _wait_for_expired(self) -> list[tuple[Future[CompiledGrammar], ConstraintError]] | None:
        """Under the lock: block until some compile passes its deadline; None once closed."""
        while not self._closed:
            while self._deadlines and self._deadlines[0][2].finished:
                heapq.heappop(self._deadlines)
            if not self._deadlines:
                self._cond.wait()
                continue
            now = time.monotonic()
            if self._deadlines[0][0] > now:
                self._cond.wait(self._deadlines[0][0] - now)
                continue
            expired = []
            while self._deadlines and self._deadlines[0][0] <= now:
                _, _, job = heapq.heappop(self._deadlines)
                if not job.finished:
                    expired.append(self._expire(job))
            return expired
        return None

    def _expire(self, job: _Job) -> tuple[Future[CompiledGrammar], ConstraintError]:
        job.timed_out = True
        del self._pending[job.key]
        self._abandoned += 1
        self._timeouts += 1
        self._failures += 1
        error = ConstraintError(f"grammar compile timed out after {self.timeout_s:g}s", field=job.constraint.field)
        self._store(job.key, _failed(error))  # the same constraint fails fast until the compile ends
        future, job.future = job.future, None
        assert future is not None
        return future, error


def _held_bytes(result: CompiledGrammar | None) -> int:
    return result.memory_bytes() if result is not None else 0


def _check_has_answers(compiled: CompiledGrammar, constraint: Constraint, vocab_size: int,
                       eos_token_ids: Iterable[int]) -> None:
    """A grammar that allows no first token (`root ::= root`, or llguidance's reading of the regex `\\`: the
    empty string only) has no answer: an answer is never empty (EOS is not its first token). A 400 now,
    rather than a request that can only fail later."""
    matcher = compiled.new_matcher()
    mask = torch.zeros((1, (vocab_size + 31) // 32), dtype=torch.int32)
    matcher.fill_bitmask(mask, 0)
    set_bits(mask, 0, eos_token_ids, False)
    if not bool(mask.any()):
        what = "only the empty answer" if matcher.can_terminate() else "no text at all"
        raise ConstraintError(f"{constraint.field}: the constraint has no valid answer (it allows {what})",
                              field=constraint.field)
    # a rule that can never end (`root ::= "a" root`, an object that requires itself) has no finite answer
    # through it: xgrammar's jump-forward would follow its forced text until memory ran out (audit 29)
    unending = compiled.unending_rules()
    if unending:
        raise ConstraintError(
            f"{constraint.field}: the constraint has no finite answer through its grammar's rule(s) "
            f"{', '.join(map(repr, unending[:3]))}: every expansion needs one of them again (a rule or schema "
            "that requires itself?)",
            field=constraint.field)


def _extra(work: Callable[[CompiledGrammar], None] | None, result: CompiledGrammar) -> None:
    if work is not None:
        try:
            work(result)
        except Exception:  # noqa: BLE001 - an extra; the grammar itself compiled
            pass


def _running_future() -> Future[CompiledGrammar]:
    fut: Future[CompiledGrammar] = Future()
    fut.set_running_or_notify_cancel()  # a caller's cancel() must not break our set_result
    return fut


def _failed(error: BaseException) -> Future[CompiledGrammar]:
    """A failed future of a copy of `error` without its traceback: a cached failure is raised into each
    request that asks, and the traceback each raise adds kept that request's frames (its prompt, its
    params) alive for as long as the failure stayed cached."""
    fut = _running_future()
    fresh = copy.copy(error)
    fresh.__traceback__ = None
    fut.set_exception(fresh)
    return fut


def _handed_out(cached: Future[CompiledGrammar]) -> Future[CompiledGrammar]:
    error = cached.exception()
    return cached if error is None else _failed(error)


def _finished(result: CompiledGrammar | None, error: BaseException | None) -> Future[CompiledGrammar]:
    if error is not None:
        return _failed(error)
    fut = _running_future()
    fut.set_result(result)  # type: ignore[arg-type]
    return fut
