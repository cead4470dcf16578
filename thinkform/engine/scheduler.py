"""Continuous batching: waiting → running → finished; chunked prefill; preemption by recompute; abort."""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from thinkform.engine.kv_cache import PagePool, page_hash
from thinkform.engine.sequence import Sequence, Status

if TYPE_CHECKING:
    import torch

SMALL_EXTEND = 16  # extends up to this many tokens (forced markers, jump-forward) ride along with decodes


@dataclass
class ScheduledBatch:
    seqs: list[Sequence]
    num_tokens: list[int]  # tokens each sequence computes in this step
    # decode-ahead: one token per sequence that is not in it yet (just sampled; the loop appends it while
    # this step runs on the device)
    ahead_tokens: list[int] | None = None
    # decode-ahead fed from the device: the sampled ids, not yet read by the host (ahead_tokens follow)
    fed: torch.Tensor | None = None

    @property
    def ahead(self) -> bool:
        return self.ahead_tokens is not None or self.fed is not None

    def needs_logits(self) -> list[bool]:
        """A sequence samples after this step when the step reaches the end of its tokens."""
        if self.ahead:
            return [True] * len(self.seqs)
        return [s.num_computed + n == s.num_tokens for s, n in zip(self.seqs, self.num_tokens)]

    def step_tokens(self, b: int) -> list[int]:
        """The token ids sequence b computes in this step."""
        if self.ahead:  # fed from the device: a stand-in the runner writes over there
            return [self.ahead_tokens[b] if self.ahead_tokens is not None else 0]
        start = self.seqs[b].num_computed
        return self.seqs[b].token_slice(start, start + self.num_tokens[b])

    @property
    def total_tokens(self) -> int:
        return sum(self.num_tokens)


class Scheduler:
    def __init__(self, pool: PagePool, max_running: int, chunk_size: int) -> None:
        self.pool = pool
        self.max_running = max_running
        self.chunk_size = chunk_size
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.preemptions = 0  # sequences sent back to waiting for room (vllm:num_preemptions_total)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def schedule(self) -> ScheduledBatch | None:
        batch = self._schedule_prefill()
        if batch is None:
            batch = self._schedule_decode()
        return batch

    # -- prefill: new sequences, preempted ones, and long extends, in chunks -----------------------------
    def _schedule_prefill(self) -> ScheduledBatch | None:
        seqs, counts, budget = [], [], self.chunk_size
        for seq in list(self.running):
            if seq.status is Status.RUNNING and seq.num_pending > SMALL_EXTEND and budget > 0:
                n = self._fit(seq, min(seq.num_pending, budget), seqs, counts, partial=True)
                if n:
                    seqs.append(seq), counts.append(n)
                    budget -= n
        while self.waiting and budget > 0 and len(self.running) < self.max_running:
            seq = self.waiting[0]
            if self._sibling_prefilling(seq, seqs) or not self._admit(seq):
                break
            self.waiting.popleft()
            self.running.append(seq)
            n = self._grow(seq, min(seq.num_pending, budget))
            if n:
                seqs.append(seq), counts.append(n)
                budget -= n
        return ScheduledBatch(seqs, counts) if seqs else None

    def _sibling_prefilling(self, seq: Sequence, batch: list[Sequence]) -> bool:
        """The n samples of one prompt share its token list: while one prefills it, the others wait a
        step and then find its pages in the prefix cache instead of computing the prompt again."""
        if not self.pool.prefix_caching or len(seq.prompt_ids) <= self.pool.page_size:
            return False
        return any(other.prompt_ids is seq.prompt_ids for other in batch)

    def _admit(self, seq: Sequence) -> bool:
        tokens = seq.tokens
        scored_from = seq.next_prompt_logprob_position
        if scored_from is not None:  # positions the request scores are computed, not taken from the cache
            tokens = tokens[:scored_from + 1]
        match = self.pool.match_prefix(tokens)
        need_pages = -(-(seq.num_tokens + 1) // self.pool.page_size) - match.num_pages
        reclaimable = sum(1 for p in match.pages if self.pool.refcount[p] == 0)
        if need_pages > self.pool.num_available - reclaimable:
            return False
        self.pool.retain(match.pages)
        seq.block_table = list(match.pages)
        seq.page_hashes = list(match.hashes)
        seq.num_computed = match.num_pages * self.pool.page_size
        if seq.admissions == 0:  # prompt tokens the cache served; a re-admission's hits are its own pages
            seq.num_cached = min(seq.num_computed, len(seq.prompt_ids))
            seq.scheduled_time = time.perf_counter()
        seq.admissions += 1
        seq.status = Status.RUNNING
        return True

    # -- decode: every running sequence with a few pending tokens -------------------------------------------
    def _schedule_decode(self) -> ScheduledBatch | None:
        seqs, counts = [], []
        for seq in list(self.running):
            if seq.status is not Status.RUNNING or not 0 < seq.num_pending <= SMALL_EXTEND:
                continue
            if self._fit(seq, seq.num_pending, seqs, counts, partial=False):
                seqs.append(seq), counts.append(seq.num_pending)
        return ScheduledBatch(seqs, counts) if seqs else None

    def _fit(self, seq: Sequence, n: int, seqs: list[Sequence], counts: list[int], partial: bool) -> int:
        """Pages for n more computed tokens of seq (with `partial`, for as many of them as the pool holds);
        while there is no room at all, the latest-running other sequence is preempted (and leaves this
        step's batch). Returns the tokens seq computes now: 0 when seq itself had to be preempted.

        An extend longer than a decode's (grammar-forced text) takes what room there is rather than waiting
        for all of it: when every running sequence waits like that, nothing frees pages and nothing runs."""
        while True:
            fits = min(n, self._room(seq)) if partial else (n if self._pages_short(seq, n) <= self.pool.num_available else 0)
            if fits > 0:
                return self._grow(seq, fits)
            victim = self._pick_victim(exclude=seq)
            if victim is None:
                self._preempt(seq)
                return 0
            self._preempt(victim)
            if victim in seqs:
                i = seqs.index(victim)
                del seqs[i], counts[i]

    def _room(self, seq: Sequence) -> int:
        """Tokens seq could compute now: its own pages' free slots plus every page the pool has."""
        return (len(seq.block_table) + self.pool.num_available) * self.pool.page_size - seq.num_computed

    def schedule_ahead(self, seqs: list[Sequence], tokens: list[int] | None,
                       fed: torch.Tensor | None = None) -> ScheduledBatch | None:
        """The next decode step of `seqs` (each fed its just-sampled token: `tokens` read by the host, or
        `fed` still on the device), when they are all that runs, nothing waits and the pool has their
        pages; else None (the loop then schedules as usual)."""
        if self.waiting or len(seqs) != len(self.running) or any(s.num_pending for s in seqs):
            return None
        if sum(max(0, self._pages_short(s, 1)) for s in seqs) > self.pool.num_available:
            return None
        for seq in seqs:
            self._grow(seq, 1)
        return ScheduledBatch(list(seqs), [1] * len(seqs), None if tokens is None else list(tokens), fed)

    def commit_ahead(self, batch: ScheduledBatch) -> list[bool]:
        """After the loop appended what it sampled: a decode-ahead row counts where its sequence still runs
        and holds the fed token at that position (a jump-forward re-tokenization may have replaced it;
        that position is then computed again, over the same slot)."""
        kept = []
        for seq, token in zip(batch.seqs, batch.ahead_tokens or []):
            ok = not seq.finished and seq.token_slice(seq.num_computed, seq.num_computed + 1) == [token]
            if ok:
                seq.num_computed += 1
                self._register_full_pages(seq)
            kept.append(ok)
        return kept

    def _grow(self, seq: Sequence, n: int) -> int:
        """Make room for n more computed tokens; returns n, or 0 when the pool is short."""
        need = self._pages_short(seq, n)
        if need > 0:
            if need > self.pool.num_available:
                return 0
            seq.block_table.extend(self.pool.allocate(need))
        return n

    def _pages_short(self, seq: Sequence, n: int) -> int:
        """Pages seq's table lacks for n more computed tokens (negative: pages to spare)."""
        return -(-(seq.num_computed + n) // self.pool.page_size) - len(seq.block_table)

    def _pick_victim(self, exclude: Sequence) -> Sequence | None:
        for seq in reversed(self.running):
            if seq is not exclude and seq.status is Status.RUNNING:
                return seq
        return None

    def _preempt(self, seq: Sequence) -> None:
        """Free a sequence's pages and requeue it at the front; it is recomputed (prefix cache helps)."""
        self._free(seq)
        self.preemptions += 1
        seq.retractions += 1
        seq.status = Status.WAITING
        self.running.remove(seq)
        self.waiting.appendleft(seq)

    # -- after the forward ------------------------------------------------------------------------------
    def commit(self, batch: ScheduledBatch) -> None:
        for seq, n in zip(batch.seqs, batch.num_tokens):
            seq.num_computed += n
            self._register_full_pages(seq)

    def _register_full_pages(self, seq: Sequence) -> None:
        size = self.pool.page_size
        tokens = None
        while len(seq.page_hashes) < seq.num_computed // size:
            tokens = tokens or seq.tokens
            i = len(seq.page_hashes)
            h = page_hash(seq.page_hashes[-1] if seq.page_hashes else None, tuple(tokens[i * size:(i + 1) * size]))
            self.pool.register(seq.block_table[i], h)
            seq.page_hashes.append(h)

    def finish(self, seq: Sequence) -> None:
        """Remove a sequence wherever it is and free its pages."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self._free(seq)
        seq.status = Status.FINISHED

    def _free(self, seq: Sequence) -> None:
        self.pool.release(seq.block_table)
        seq.block_table = []
        seq.page_hashes = []
        seq.num_computed = 0
