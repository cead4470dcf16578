"""EngineLoop: the scheduler thread. Each step: schedule → forward (masks filled meanwhile) → sample → advance."""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from functools import partial
from typing import Any, Callable

import torch

from thinkform.args import EngineArgs
from thinkform.engine.detokenizer import StopRegexTimeout, find_stop, find_stop_regex
from thinkform.engine.errors import EngineDead
from thinkform.engine.histogram import SHARED_HISTOGRAMS, VLLM_HISTOGRAMS, RequestHistograms
from thinkform.engine.jump_forward import SpecialPrefixes, eos_only_mask, forced_end, jump_forward
from thinkform.engine.runner import ModelRunner
from thinkform.engine.sampler import SampleOutput, Sampler, warm_up_mask_kernel
from thinkform.engine.scheduler import ScheduledBatch, Scheduler
from thinkform.engine.sequence import FinishReason, Sequence
from thinkform.engine.throughput import ThroughputWindow
from thinkform.engine.transfer import device_tensor
from thinkform.structured.bitmask import sparse_allowed_ids
from thinkform.structured.gate import Phase, ReasoningGate
from thinkform.structured.vocab import added_token_ids

logger = logging.getLogger("thinkform")


@dataclass
class StepMasks:
    """A step's grammar masks: `bitmask` rows for the sampler to apply at `rows`; `allowed` rows (CPU
    only) are masked already: the forward computes their logits at these token ids alone."""
    bitmask: torch.Tensor | None
    rows: list[int]
    allowed: dict[int, torch.Tensor] = field(default_factory=dict)


class EngineLoop:
    def __init__(self, parts: Any, args: EngineArgs) -> None:
        self.parts = parts
        self.args = args
        # -1: no chunking (SGLang's): a step may prefill as many tokens as the KV cache holds
        chunk = args.chunked_prefill_size if args.chunked_prefill_size > 0 else parts.pool.token_capacity
        self.scheduler = Scheduler(parts.pool, args.max_running_requests, chunk)
        self.runner = ModelRunner(parts.model, parts.kv, parts.device, parts.small_steps, len(parts.tokenizer))
        self.sampler = Sampler(len(parts.tokenizer), parts.vocab_size, parts.eos_token_ids)
        warm_up_mask_kernel(parts.device, parts.vocab_size)
        self.eos = frozenset(parts.eos_token_ids)
        # re-entrant: a stream dropped unread ends its request from __del__, which the garbage collector may run
        # on a thread that holds this lock already
        self._lock = threading.RLock()
        self._inbox: list[Sequence] = []
        self._aborts: list[tuple[str | None, Sequence | None]] = []
        self._flushes: list[Future] = []  # flush_prefix_cache callers waiting for the loop
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._mask_pool = ThreadPoolExecutor(1, thread_name_prefix="thinkform-mask")
        self.error: str | None = None
        self._closed = False  # set once the thread has failed what it held: submit() refuses from then on
        self.counters = {"steps": 0, "forward_tokens": 0, "finished": 0, "aborted": 0, "generated_tokens": 0,
                         "forced_tokens": 0, "jump_tokens": 0, "sparse_logit_rows": 0, "prompt_tokens": 0,
                         "reasoning_tokens": 0, "finished_stop": 0, "finished_length": 0, "finished_abort": 0,
                         "cached_tokens": 0, "constrained_finished": 0}
        self.histograms = RequestHistograms()
        self.throughput = ThroughputWindow()
        self.jump_enabled = not args.disable_jump_forward
        self._eos_only = eos_only_mask(parts.vocab_size, parts.eos_token_ids)
        # every added token (special tokens, EOS and one-token markers included): a jump stops short of its
        # spelling, which the tokenizer would encode as that token (jumped, `x<|im_start|>y` came back `xy`)
        self._specials = SpecialPrefixes(parts.vocab.token_bytes[t] for t in added_token_ids(parts.tokenizer)
                                         if t < len(parts.vocab.token_bytes))
        self._masks: torch.Tensor | None = None  # the step's bitmask rows (pinned for a GPU), reused
        # overlap schedule: on an accelerator the next decode step is launched before the CPU appends the
        # sampled tokens (on a CPU both would share the same cores: nothing to gain)
        self.overlap = parts.device.type != "cpu" and not args.disable_overlap_schedule
        # CPU: rows whose grammar allows few tokens get logits at those tokens only (StepMasks.allowed)
        self.sparse_logits = parts.device.type == "cpu" and not args.disable_sparse_logits
        self._ahead: tuple[ScheduledBatch, torch.Tensor] | None = None
        # outputs of this step (streamed and final), handed to their requests together at its end: a consumer
        # woken per token would take the GIL back at every grammar call that releases it (a hand-off each)
        self._outbox: list[tuple[Sequence, bool]] = []
        self.on_delivered: Callable[[], None] | None = None  # after each step's outputs (Engine: hands them over)

    # -- control (any thread) -------------------------------------------------------------------------------
    @classmethod
    def start_with(cls, build: Callable[[], Any], args: EngineArgs) -> "EngineLoop":
        """Build the engine's parts on the loop's own thread, then run the loop there.

        All of the model's torch work then happens on one thread: a second thread with an OpenMP team
        (loading in the caller, decoding here) makes libgomp throttle its spin-waits once it manages more
        threads than there are cores, and every matmul pays a wake-up (20 % of a decode step on 2 cores)."""
        ready, abandoned = threading.Event(), threading.Event()
        box: dict[str, Any] = {}

        def main() -> None:
            try:
                loop = cls(build(), args)
            except BaseException as e:  # noqa: BLE001 - handed to the caller below
                box["error"] = e
                ready.set()
                return
            loop._thread = threading.current_thread()
            box["loop"] = loop
            ready.set()
            if not abandoned.is_set():
                loop._run()

        threading.Thread(target=main, name="thinkform-engine", daemon=True).start()
        try:
            while not ready.wait(0.1):  # woken now and then: an interrupt_main (an IDE's stop) gets through
                pass
        except BaseException:  # Ctrl-C while it loads: nobody will hold this engine, it must not run on unseen
            abandoned.set()
            if "loop" in box:
                box["loop"].stop(timeout=0)
            raise
        if "error" in box:
            raise box["error"]
        return box["loop"]

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._mask_pool.shutdown(wait=False)

    @property
    def alive(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive() and not self._stopping and self.error is None

    @property
    def num_pending(self) -> int:
        return len(self._inbox) + len(self.scheduler.waiting) + len(self.scheduler.running)

    def submit(self, seqs: list[Sequence]) -> None:
        with self._lock:
            if self._closed:  # the thread is gone: nobody would ever drain the inbox
                raise EngineDead(f"the engine is not running: {self.error or 'shut down'}")
            self._inbox.extend(seqs)
        self._wake.set()

    def abort(self, rid: str) -> None:
        with self._lock:
            self._aborts.append((rid, None))
        self._wake.set()

    def abort_seq(self, seq: Sequence) -> None:
        with self._lock:
            self._aborts.append((None, seq))
        self._wake.set()

    def flush_prefix_cache(self, timeout: float = 10.0) -> bool:
        """Empty the prefix cache on the loop's thread (which owns the page pool) when nothing runs there;
        False when something does, or the loop did not get to it in time."""
        done: Future = Future()
        with self._lock:
            if self._closed:
                return False
            self._flushes.append(done)
        self._wake.set()
        try:
            return done.result(timeout)
        except Exception:  # noqa: BLE001 - a stopped loop never answers
            return False

    def stats(self) -> dict[str, Any]:
        pool = self.parts.pool
        return {**self.counters, "latency": self.histograms.snapshot(SHARED_HISTOGRAMS),
                "request_histograms": self.histograms.snapshot(VLLM_HISTOGRAMS),
                "preemptions": self.scheduler.preemptions,
                "last_gen_throughput": round(self.throughput.last, 3),
                "waiting": len(self.scheduler.waiting), "running": len(self.scheduler.running),
                "kv_pages_total": pool.num_pages, "kv_pages_used": pool.num_used, "page_size": pool.page_size}

    # -- the thread -----------------------------------------------------------------------------------------
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        try:
            while not self._stopping:
                self._drain()
                if self._ahead is not None:
                    self._finish_ahead()
                else:
                    batch = self.scheduler.schedule() if self.scheduler.has_work else None
                    if batch is None:
                        self._deliver()
                        self._wake.wait(0.05 if self.scheduler.has_work else 1.0)
                        self._wake.clear()
                        continue
                    self._step(batch)
                self._deliver()
        except Exception as e:  # noqa: BLE001 - a crashed loop must fail every request, not hang them
            logger.exception("engine loop crashed")
            self.error = f"{type(e).__name__}: {e}"
        finally:
            self._fail_all(self.error or "the engine shut down")
            self._deliver()

    def _deliver(self) -> None:
        """This step's outputs to their requests, in order; a streamed event of a sequence that has finished
        since is left out (its final output follows)."""
        outbox, self._outbox = self._outbox, []
        for seq, finished in outbox:
            if finished or not seq.finished:
                seq.sink(seq, finished)
        if outbox and self.on_delivered is not None:
            try:
                self.on_delivered()
            except Exception as e:  # noqa: BLE001 - the hand-over must not stop the loop
                logger.error("outputs could not be handed over: %s: %s", type(e).__name__, e)

    def _drain(self) -> None:
        with self._lock:
            new, self._inbox = self._inbox, []
            aborts, self._aborts = self._aborts, []
            flushes, self._flushes = self._flushes, []
        for seq in new:
            self._force_at_start(seq)
            if not seq.finished:
                self.scheduler.add(seq)
        for rid, seq in aborts:
            targets = [seq] if seq is not None else [
                s for s in list(self.scheduler.running) + list(self.scheduler.waiting) if s.rid == rid]
            for s in targets:
                if not s.finished:
                    self._finish(s, FinishReason("abort", message="aborted by request"))
        for done in flushes:
            idle = not self.scheduler.has_work and self._ahead_finished()
            if idle:
                self._ahead = None  # nothing of it is kept (see _finish_ahead): its rows have all finished
                self.parts.pool.reset_prefix_cache()
            done.set_result(idle)

    def _ahead_finished(self) -> bool:
        """No decode-ahead step, or one whose rows have all finished since it was launched (the last step of
        a run launches one before its tokens end the requests)."""
        return self._ahead is None or all(seq.finished for seq in self._ahead[0].seqs)

    def _step(self, batch: ScheduledBatch) -> None:
        sampling = [s for s, need in zip(batch.seqs, batch.needs_logits()) if need]
        failed: dict[int, BaseException] = {}
        masks = self._start_masks(sampling, failed, self.sparse_logits, beside_forward=True)
        allowed = masks.result().allowed if self.sparse_logits and masks is not None else None
        logits, rows = self.runner.forward(batch, allowed)
        self.counters["sparse_logit_rows"] += len(allowed or ())
        self.scheduler.commit(batch)
        self._count(batch)
        if logits is not None:
            self._sample_and_advance(logits, sampling, masks, failed)
        elif masks is not None:
            masks.result()

    def _finish_ahead(self) -> None:
        """The decode-ahead step launched last time: its rows whose sequences went on as fed sample now
        (their masks are filled while the device still computes); the others' logits are dropped."""
        batch, logits = self._ahead
        self._ahead = None
        kept = self.scheduler.commit_ahead(batch)
        rows = [i for i, ok in enumerate(kept) if ok and batch.seqs[i].num_pending == 0]
        if not rows:
            return
        sampling = [batch.seqs[i] for i in rows]
        failed: dict[int, BaseException] = {}
        masks = self._start_masks(sampling, failed, sparse=False)
        logits = logits if len(rows) == len(batch.seqs) else logits[device_tensor(rows, logits.device)]
        self._sample_and_advance(logits, sampling, masks, failed)

    def _sample_and_advance(self, logits: torch.Tensor, sampling: list[Sequence], masks: Future | None,
                            failed: dict[int, BaseException]) -> None:
        step_masks = masks.result() if masks is not None else StepMasks(None, [])
        ahead = self.overlap and not failed
        feed = (lambda ids: self._launch_ahead(sampling, None, ids)) if ahead else None
        out = self.sampler.sample(logits, sampling, step_masks.bitmask, step_masks.rows, on_tokens=feed)
        self._take_queued(sampling, out)
        if out.fed and self._ahead is not None:
            self._ahead[0].ahead_tokens = out.tokens  # the step launched from device ids: now the host has them
        elif ahead and not out.fed:
            self._launch_ahead(sampling, out.tokens)
        for j, seq in enumerate(sampling):
            if j in failed:
                self._fail(seq, failed[j])
                continue
            lp = (out.logprobs[j], out.top_logprobs[j], out.id_logprobs[j]) if seq.return_logprob else None
            try:
                self._advance(seq, out.tokens[j], lp, partial(out.logprob_of, j) if lp is not None else None)
            except Exception as e:  # noqa: BLE001 - one request's failure must not stop the batch
                self._fail(seq, e)

    def _launch_ahead(self, sampling: list[Sequence], tokens: list[int] | None,
                      fed: torch.Tensor | None = None) -> None:
        """Overlap: the next decode step goes to the device now, fed the tokens just sampled, and the CPU
        appends them (grammar, detokenizer, stop rules, streaming) while it runs. Fed from the device
        (`fed`, the sampler's ids before the host has read them) it is queued behind this step's sampling:
        the device goes from one step to the next without waiting for the host."""
        with self._lock:
            if self._inbox or self._aborts:
                return  # new work or aborts first: the usual schedule takes them
        if all(len(seq.output_ids) + 1 >= seq.params.max_new_tokens for seq in sampling):
            return  # this token ends every row by length: a step ahead would be computed for nobody
        batch = self.scheduler.schedule_ahead(sampling, tokens, fed)
        if batch is not None:
            logits, _ = self.runner.forward(batch)
            self._count(batch)
            self._ahead = (batch, logits)

    def _count(self, batch: ScheduledBatch) -> None:
        self.counters["steps"] += 1
        self.counters["forward_tokens"] += batch.total_tokens
        self.throughput.step(self.counters["steps"], self.counters["generated_tokens"])

    def _start_masks(self, seqs: list[Sequence], failed: dict[int, BaseException], sparse: bool = False,
                     beside_forward: bool = False) -> Future | None:
        """On an accelerator the CPU fills the masks on the mask thread while this one launches the forward
        pass (`beside_forward`); on a CPU device both would compete for the same cores, so the masks are
        filled before the forward (and `sparse` rows, see `StepMasks.allowed`, can spare it work). Where the
        caller only waits for them (a decode-ahead step, launched already) they are filled here: a hand-off
        to the thread and back costs two wake-ups a step and nothing runs beside it."""
        if not any(s.gate is not None and s.gate.constrained and not s.gate.in_reasoning for s in seqs):
            return None  # nothing to mask: no constraint, or all still thinking (no mask work at all)
        if beside_forward and self.parts.device.type != "cpu":
            return self._mask_pool.submit(self._fill_masks, seqs, failed)
        done: Future = Future()
        done.set_result(self._fill_masks(seqs, failed, sparse))
        return done

    def _fail(self, seq: Sequence, error: BaseException) -> None:
        logger.error("request %s-%d failed: %s: %s", seq.rid, seq.index, type(error).__name__, error,
                     exc_info=error)
        self._finish(seq, FinishReason.failed(error))

    def _fill_masks(self, seqs: list[Sequence], failed: dict[int, BaseException],
                    sparse: bool = False) -> StepMasks:
        """Runs on the mask thread while the forward pass runs (torch releases the GIL): the grammar
        matchers of all rows in one batched fill, then each gate's own rules. A row whose matcher raises
        goes into `failed`: that request fails after sampling, the batch goes on."""
        bitmask = self._new_bitmask(len(seqs))
        # a row whose next id the gate took already (forced_queue) takes it whatever it samples: no mask
        pending = [(i, s.gate.matcher_to_fill()) for i, s in enumerate(seqs) if s.gate is not None and not s.forced_queue]
        pending = [(i, m) for i, m in pending if m is not None]
        try:
            self.parts.grammar_backend.fill_bitmasks(bitmask, pending)
        except Exception:  # noqa: BLE001 - find the row that broke: fill one by one
            for i, m in pending:
                try:
                    m.fill_bitmask(bitmask, i)
                except Exception as e:  # noqa: BLE001
                    failed[i] = e
        rows = []
        words = bitmask.numpy()
        for i, s in enumerate(seqs):
            try:
                if i not in failed and s.gate is not None and not s.forced_queue and s.gate.finish_bitmask(words, i):
                    rows.append(i)
            except Exception as e:  # noqa: BLE001
                failed[i] = e
        if not rows:
            return StepMasks(None, [])
        allowed = self._sparse_rows(bitmask, rows, seqs) if sparse else {}
        return StepMasks(bitmask, [r for r in rows if r not in allowed], allowed)

    def _sparse_rows(self, bitmask: torch.Tensor, rows: list[int], seqs: list[Sequence]) -> dict[int, torch.Tensor]:
        """The masked rows whose grammar allows few tokens, with those ids (rows that return logprobs
        need the whole distribution)."""
        allowed = {}
        for r in rows:
            if not seqs[r].return_logprob:
                ids = sparse_allowed_ids(bitmask, r, self.parts.vocab_size)
                if ids is not None and ids.shape[0]:
                    allowed[r] = torch.from_numpy(ids)
        return allowed

    def _new_bitmask(self, rows: int) -> torch.Tensor:
        """Rows to fill, in one buffer reused every step (a fresh 600 KB allocation a step costs page faults).
        Not cleared: a row is masked only where its matcher filled it whole (every backend writes every
        word, tests/test_backends.py) or its gate wrote it whole. For a GPU it is pinned, so the copy to the
        device runs asynchronously; each step's sampling waits for its tokens, so the next step's fill finds
        that copy done."""
        if self._masks is None:
            import xgrammar

            self._masks = xgrammar.allocate_token_bitmask(self.args.max_running_requests, self.parts.vocab_size)
            if self.parts.device.type != "cpu":
                self._masks = self._masks.pin_memory()
        return self._masks[:rows]

    # -- one sampled token ----------------------------------------------------------------------------------
    def _advance(self, seq: Sequence, token: int, logprob: tuple | None,
                 rescore: Callable[[int], float] | None = None) -> None:
        """Append a step's token (and what the gate forces after it). `rescore(id)`: the logprob another id
        has in the row `token` came from (the gate may append a different id at its place)."""
        if seq.finished:
            return
        now = time.perf_counter()
        if seq.first_token_time is None:
            seq.first_token_time = now
        if seq.forced_queue:  # a forced id's own step (see _take_queued): the gate took it already
            finish, appended = self._append_queued(seq, logprob), 1
        else:
            finish, appended = self._advance_sampled(seq, token, logprob, rescore)
        if seq.last_token_time is not None:
            self.histograms.tokens_appended(now - seq.last_token_time, appended)
        seq.last_token_time = now
        if finish is None and len(seq.output_ids) >= seq.params.max_new_tokens:
            finish = FinishReason("length", None, length=seq.params.max_new_tokens)
        if finish is not None:
            self._finish(seq, finish)
        elif seq.stream and self._stream_due(seq):
            seq.streamed_tokens = len(seq.output_ids)
            self._outbox.append((seq, False))

    def _advance_sampled(self, seq: Sequence, token: int, logprob: tuple | None,
                         rescore: Callable[[int], float] | None) -> tuple[FinishReason | None, int]:
        """The gate takes a sampled token; jump-forward, a forced marker or ending follow. (finish, ids
        appended)."""
        seq.num_sampled += 1
        gate = seq.gate
        answering = gate is not None and gate.phase is Phase.ANSWER
        ids = gate.accept(token) if gate is not None else [token]
        if answering and len(ids) == 1 and self.jump_enabled:
            jumped, replaced = jump_forward(gate, self.parts.vocab, token, self._room(seq) - 1, self._specials)
            ids = jumped if replaced else ids + jumped
            self.counters["jump_tokens"] += len(jumped) - replaced
        if answering and (ending := gate.ending_instead(ids, self._generated(seq))) is not None:
            ids = ending  # the step would have left its answer's ending no room: the ending instead
            self.counters["forced_tokens"] += len(ending)
        if logprob is not None and ids and ids[0] != token and rescore is not None:
            logprob = (rescore(ids[0]), *logprob[1:])  # the id at the sampled place is scored by the same row
        before = len(seq.output_ids)
        finish = self._emit(seq, ids, (ids[0], logprob) if logprob is not None and ids else None)
        if finish is None and gate is not None:
            forced = gate.forced_tokens(self._generated(seq))
            if forced:
                finish = self._append_forced(seq, forced) or self._append_jump(seq)
        if finish is None and answering and self.jump_enabled:
            if forced_end(gate, self._eos_only):
                eos = self.parts.eos_token_ids[0]
                gate.accept_forced([eos])
                # counted where it is kept: at max_new_tokens the length limit takes it back
                self.counters["jump_tokens"] += self._room(seq) > 0
                finish = self._emit(seq, [eos])
        return finish, len(seq.output_ids) - before

    def _stream_due(self, seq: Sequence) -> bool:
        """A streamed event now: the first token's at once, then every stream_interval tokens (the
        request's, else the engine's); the final output always goes."""
        interval = seq.params.stream_interval or self.args.stream_interval
        return not seq.streamed_tokens or len(seq.output_ids) - seq.streamed_tokens >= interval

    def _force_at_start(self, seq: Sequence) -> None:
        """What the gate forces before anything is sampled goes in before the prefill: the end marker where
        the thinking budget is 0 (or the token budget leaves no room to think), then an answer's forced
        start (`{"name": "`). (Not a budget's ending: the model writes some of its answer first.)"""
        if seq.gate is None or seq.output_ids:
            return
        try:
            forced = seq.gate.forced_tokens(0) if seq.gate.phase is not Phase.ANSWER else []
            finish = (self._append_forced(seq, forced) if forced else None) or self._append_jump(seq)
        except Exception as e:  # noqa: BLE001 - a grammar failure ends this request only
            self._fail(seq, e)
            return
        if finish is None and len(seq.output_ids) >= seq.params.max_new_tokens:  # the jump took the whole budget
            finish = FinishReason("length", None, length=seq.params.max_new_tokens)
        if finish is not None:
            self._finish(seq, finish)

    def _append_forced(self, seq: Sequence, forced: list[int]) -> FinishReason | None:
        """Append what the gate forces instead of sampling (a marker, a budget's ending)."""
        seq.gate.accept_forced(forced)
        self.counters["forced_tokens"] += len(forced)
        return self._emit(seq, forced)

    def _append_jump(self, seq: Sequence) -> FinishReason | None:
        """Append the text the grammar forces now (nothing was just sampled: no boundary to re-tokenize)."""
        if not self.jump_enabled:
            return None
        jumped, _ = jump_forward(seq.gate, self.parts.vocab, None, self._room(seq), self._specials)
        self.counters["jump_tokens"] += len(jumped)
        return self._emit(seq, jumped)

    def _emit(self, seq: Sequence, ids: list[int], sampled: tuple[int, tuple] | None = None) -> FinishReason | None:
        """Append ids the gate took. A request that returns logprobs appends only the sampled one now: the
        rest wait in `forced_queue` for a step each, so every token gets the model's own logprob (the same
        ids as without logprobs: asking for them does not change the answer)."""
        if not seq.return_logprob or not ids:
            return self._append(seq, ids, sampled)
        room = self._room(seq)
        if len(ids) > room:  # as _append: the gate must not describe tokens the output has no room for
            if seq.gate is not None:
                seq.gate.rollback(len(ids) - room)
            ids = ids[:room]
            if not ids:  # the queued ids fill the output: the last of them ends it by length
                return None if seq.forced_queue else FinishReason("length", None, length=seq.params.max_new_tokens)
        if sampled is None or seq.forced_queue:
            seq.forced_queue.extend(_run(ids))
            return None
        seq.forced_queue.extend(_run(ids[1:]))
        return self._append(seq, ids[:1], sampled, more=len(ids) > 1)

    def _append_queued(self, seq: Sequence, logprob: tuple | None) -> FinishReason | None:
        tid, ends_run = seq.forced_queue.pop(0)
        return self._append(seq, [tid], (tid, logprob) if logprob is not None else None, more=not ends_run)

    @staticmethod
    def _take_queued(sampling: list[Sequence], out: SampleOutput) -> None:
        """Rows with a forced id waiting take it instead of the token they sampled, with its logprob from
        the same row (before a step ahead is launched from these tokens)."""
        for j, seq in enumerate(sampling):
            if seq.forced_queue and not seq.finished:
                out.tokens[j] = seq.forced_queue[0][0]
                out.logprobs[j] = out.logprob_of(j, out.tokens[j])

    @staticmethod
    def _generated(seq: Sequence) -> int:
        """Output tokens as the gate counts them: the appended ones and those waiting for their step."""
        return len(seq.output_ids) + len(seq.forced_queue)

    def _room(self, seq: Sequence) -> int:
        return seq.params.max_new_tokens - self._generated(seq)

    def _append(self, seq: Sequence, ids: list[int], sampled: tuple[int, tuple] | None = None,
                more: bool = False) -> FinishReason | None:
        """Append ids one by one, checking every stop rule; returns the finish reason, if any. `sampled`:
        (the sampled token, its logprobs) when the request returns logprobs. `more`: forced ids the gate took
        with these follow in later steps (no place to end before the last of them)."""
        p = seq.params
        gate = seq.gate
        last = -1 if more else len(ids) - 1
        for i, tid in enumerate(ids):
            if len(seq.output_ids) >= p.max_new_tokens:
                if gate is not None:  # it took all of ids: it must not describe tokens the output has no room for
                    gate.rollback(len(ids) - i)
                return FinishReason("length", None, length=p.max_new_tokens)
            seq.output_ids.append(tid)
            if seq.stop_regex_error is not None:  # found while a stream held text back (output.shown_text)
                return FinishReason("abort", message=seq.stop_regex_error)
            if seq.return_logprob:
                self._record_logprob(seq, tid, sampled)
                sampled = None if sampled is not None and sampled[0] == tid else sampled  # its value once
            self.counters["generated_tokens"] += 1
            # the gate took all of ids at once; where it may end is known after the last of them only, and
            # text the grammar forced (jump-forward, a budget's ending) passes no place it could end before.
            # The gate is asked only where a stop rule matches (most tokens match none)
            may_stop = i == last and len(seq.output_ids) >= p.min_new_tokens
            # the gate took all of ids (a forced ending), and none wait in the queue (it is past them too)
            if gate is not None and gate.finished and i == last and not seq.forced_queue:
                matched = tid if tid in self.eos else None
                if matched is None:
                    seq.detok.push([tid])
                return FinishReason("stop", matched)
            if tid in self.eos and not p.ignore_eos and may_stop and _gate_may_stop(gate):
                if p.no_stop_trim or p.include_stop_str_in_output:  # its text stays (a special token's is hidden)
                    seq.detok.push([tid])
                return FinishReason("stop", tid)
            if tid in p.stop_token_ids and may_stop and _gate_may_stop(gate):
                # its text stays where asked, and under a grammar where the answer without it is not complete
                if p.no_stop_trim or p.include_stop_str_in_output or not _complete_without(seq, 1, b""):
                    seq.detok.push([tid])
                return FinishReason("stop", tid)
            new = seq.detok.push([tid])
            if new and seq.stream and seq.return_logprob:
                seq.text_marks.append((len(seq.detok.text), len(seq.output_ids)))
            if new and (p.stop or p.stop_patterns) and may_stop and _gate_may_stop(gate):
                try:
                    hit = _earliest_stop(seq.detok.text, len(new), p)
                except StopRegexTimeout as e:  # this request's pattern, not the loop, pays for its backtracking
                    logger.warning("request %s-%d: %s", seq.rid, seq.index, e)
                    return FinishReason("abort", message=str(e))
                if hit is not None:
                    start, end, stop = hit
                    # SGLang's no_stop_trim keeps it all; vLLM's include_stop_str_in_output the stop string. Under
                    # a constraint the answer is complete here, with the stop string and the rest of its token:
                    # it is cut only where what is left is complete too (_cut_keeps_answer)
                    cut = end if p.include_stop_str_in_output else start
                    if not p.no_stop_trim and _cut_keeps_answer(seq, cut):
                        seq.detok.text = seq.detok.text[:cut]
                    return FinishReason("stop", stop)
        return None

    @staticmethod
    def _record_logprob(seq: Sequence, tid: int, sampled: tuple[int, tuple] | None) -> None:
        """One entry per output token, the model's logprob of it in the row it was appended from (forced
        ids each get a step of their own: `_emit`)."""
        value, top, by_id = sampled[1] if sampled is not None and sampled[0] == tid else (0.0, None, None)
        seq.token_logprobs.append((value, tid, None))
        if seq.top_logprobs_num:
            seq.top_logprobs.append([(v, t, None) for v, t in (top or [])])
        if seq.token_ids_logprob:
            seq.token_ids_logprobs.append([(v, t, None) for v, t in by_id] if by_id else None)

    def _finish(self, seq: Sequence, reason: FinishReason) -> None:
        if seq.finished:
            return
        seq.finish = reason
        if seq.forced_queue:  # ended before its forced ids' steps (a stop string, an abort): the gate forgets them
            if seq.gate is not None and not reason.status_code:
                seq.gate.rollback(len(seq.forced_queue))
            seq.forced_queue.clear()
        if reason.type != "stop" or not isinstance(reason.matched, str):
            try:
                seq.detok.flush()
            except Exception as e:  # noqa: BLE001 - a broken detokenizer fails its request, not the loop
                logger.error("request %s-%d: detokenizer failed: %s", seq.rid, seq.index, e)
                seq.finish = reason = FinishReason.failed(e)
        self.scheduler.finish(seq)
        self.counters["finished"] += 1
        self.counters[f"finished_{reason.type}"] = self.counters.get(f"finished_{reason.type}", 0) + 1
        self.counters["prompt_tokens"] += len(seq.prompt_ids)
        self.counters["reasoning_tokens"] += seq.gate.reasoning_tokens if seq.gate is not None else 0
        self.counters["cached_tokens"] += seq.num_cached
        self.counters["constrained_finished"] += seq.gate is not None and seq.gate.matcher is not None
        self.histograms.finished(seq, time.perf_counter())
        if reason.type == "abort":
            self.counters["aborted"] += 1
        logger.info("request %s-%d finished: %s, prompt %d, completion %d tokens", seq.rid, seq.index,
                    reason.type, len(seq.prompt_ids), len(seq.output_ids))
        self._outbox.append((seq, True))
        if self.args.log_requests and self.args.log_requests_level > 0:
            try:  # a log line never changes a request's outcome
                logger.info("request %s-%d %s", seq.rid, seq.index, self._request_details(seq))
            except Exception as e:  # noqa: BLE001
                logger.warning("request %s-%d: its details could not be logged: %s", seq.rid, seq.index, e)

    def _request_details(self, seq: Sequence) -> str:
        """--log-requests (SGLang's): the sampling params the request set, and at level 2 its prompt and output,
        each value cut to 2048 characters below level 3 (as SGLang's); at 3 all of them."""
        whole = self.args.log_requests_level == 3
        shown = (lambda text: text) if whole else (lambda text: _cut(text, _LOGGED_CHARS))
        params = [f"{f.name}={shown(repr(value))}" for f in fields(seq.params) if f.init
                  and (value := getattr(seq.params, f.name)) not in (None, [], {}) and value != f.default]
        details = f"sampling_params=({', '.join(params)})"
        if self.args.log_requests_level >= 2:
            tokenizer = self.parts.tokenizer
            for name, ids in (("prompt", seq.prompt_ids), ("output", seq.output_ids)):
                # no more tokens decoded than the characters shown could need
                text = tokenizer.decode(ids if whole else ids[:_LOGGED_CHARS], skip_special_tokens=False)
                details += f" {name}={shown(text)!r}"
        return details

    def _fail_all(self, message: str) -> None:
        with self._lock:
            self._closed = True
            pending = self._inbox
            self._inbox = []
            flushes, self._flushes = self._flushes, []
        for done in flushes:
            done.set_result(False)
        for seq in pending + list(self.scheduler.running) + list(self.scheduler.waiting):
            if not seq.finished:
                self._finish(seq, FinishReason("abort", message=message))


def _run(ids: list[int]) -> list[tuple[int, bool]]:
    """forced_queue entries of ids appended together: the stop rules look at the last of them only, as where
    they are appended at once."""
    return [(tid, i == len(ids) - 1) for i, tid in enumerate(ids)]


def _gate_may_stop(gate: ReasoningGate | None) -> bool:
    """Whether the stop rules may end the request here as far as its gate is concerned."""
    return gate is None or gate.may_stop()


def _cut_keeps_answer(seq: Sequence, cut: int) -> bool:
    """Whether the output's text may be cut at `cut` (a stop string's): always without a constraint; never for a
    JSON, regex or EBNF answer (it keeps the stop string: a stop can never cut it short); for a structural tag's
    (tool calls, free text beside them), where the answer that is left is complete (free text, or after a call:
    cut as without tools; never inside a call)."""
    gate = seq.gate
    text = seq.detok.text
    if gate is None or gate.matcher is None or cut >= len(text):
        return True
    if seq.exact_answer:
        return False
    # the last tokens that hold the text after the cut: the answer's bytes from them up to the cut are kept
    after = text[cut:].encode("utf-8")
    hidden = seq.detok.hidden_ids
    taken, count = 0, 0
    for tid in reversed(seq.output_ids):
        if tid in hidden:  # its bytes are the grammar's but not the text's: the two cannot be matched up
            return False
        taken += 1
        count += len(gate.vocab.token_bytes[tid])
        if count >= len(after):
            break
    tail = b"".join(gate.vocab.token_bytes[tid] for tid in seq.output_ids[len(seq.output_ids) - taken:])
    if not tail.endswith(after):  # the text is not those tokens' bytes (a tokenizer's clean-up): kept whole
        return False
    return _complete_without(seq, taken, tail[: len(tail) - len(after)])


def _complete_without(seq: Sequence, count: int, kept: bytes) -> bool:
    """Whether the answer with its last `count` output tokens replaced by `kept` (their bytes up to a stop) is a
    complete answer of its grammar: True without a grammar, False for a JSON, regex or EBNF answer (see
    _cut_keeps_answer); else the gate's verdict (those tokens and any forced ones queued after them taken back
    and taken again: the gate ends as it was)."""
    gate = seq.gate
    if gate is None or gate.matcher is None:
        return True
    if seq.exact_answer or count > len(seq.output_ids):
        return False
    return gate.complete_without(seq.output_ids[len(seq.output_ids) - count:] + [t for t, _ in seq.forced_queue],
                                 kept)


def _earliest_stop(text: str, new_len: int, p: Any) -> tuple[int, int, str] | None:
    """The earliest stop string or stop regex match ending in the newest text: (start, end, what matched)."""
    hits = []
    plain = find_stop(text, new_len, p.stop) if p.stop else None
    if plain is not None:
        hits.append((plain[0], plain[0] + len(plain[1]), plain[1]))
    pattern = find_stop_regex(text, new_len, p.stop_patterns) if p.stop_patterns else None
    if pattern is not None:
        hits.append(pattern)
    return min(hits, key=lambda h: h[0]) if hits else None


_LOGGED_CHARS = 2048  # --log-requests below level 3: each value cut to this, as SGLang's


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"
