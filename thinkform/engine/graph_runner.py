"""CudaStepRunner: small steps (decodes, the extends riding with them, short prefills) on CUDA through
captured CUDA graphs, one per token-count bucket.

A graph replays a whole forward (embedding, every layer, the LM head of the rows that sample) as one
launch, so a decode step costs its kernels' time and not their launches'. The inputs live in static
device buffers, written each step from one pinned host staging area (the token columns and the page tables
in one block: one copy a step); padding tokens write their k/v to the cache's scratch page and attend to nothing.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from thinkform.engine.kv_cache import KVCache
from thinkform.engine.scheduler import ScheduledBatch

logger = logging.getLogger("thinkform")

_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512)
# A step whose longest context passes LONG_CONTEXT runs attention in LONG_SPLITS runs per (token, head):
# a batch-1 decode at 4k context is otherwise 12-32 programs walking 4k keys each (~250 µs a layer on an
# H100). Runs are whole 128-key chunks, so a shorter context leaves the extra programs idle.
LONG_CONTEXT = 1024
LONG_SPLITS = 16
# rows of the int64 staging block: one per token column
_IDS, _POS, _SLOT, _SEQ, _LEN, _LOGIT = range(6)


@dataclass
class StepTokens:
    """One step, flattened to tokens, as host arrays (columns of `ints`) plus the sequences' page tables."""

    ints: np.ndarray  # [6, T] int64: ids, positions, cache slots, sequence row, keys attended, logit rows
    tables: list[list[int]]
    rows: list[int]  # which sequences of the batch sample after this step
    longest: int  # the longest context a token of this step attends to

    @property
    def num_tokens(self) -> int:
        return self.ints.shape[1]


def flatten_step(batch: ScheduledBatch, page_size: int) -> StepTokens:
    """Plain Python lists, one numpy conversion: a decode row costs a few list appends (~1 µs), where
    numpy calls per row would cost ~10."""
    if batch.ahead:
        return _flatten_ahead(batch, page_size)
    return _flatten_rows(batch, page_size)


def _flatten_ahead(batch: ScheduledBatch, page_size: int) -> StepTokens:
    """A decode-ahead step (every row one token, and every row samples), by columns: 12 µs for 32 rows
    here, where the row by row walk took 37 (on a GPU host, on the way to each step's launch)."""
    seqs = batch.seqs
    pos = [s.num_computed for s in seqs]
    slots = [s.block_table[p // page_size] * page_size + p % page_size for s, p in zip(seqs, pos)]
    ints = np.empty((6, len(seqs)), dtype=np.int64)
    ints[_IDS] = batch.ahead_tokens if batch.ahead_tokens is not None else 0  # fed: written on the device
    ints[_POS], ints[_SLOT] = pos, slots
    ints[_SEQ] = np.arange(len(seqs))
    ints[_LEN] = ints[_POS] + 1
    ints[_LOGIT] = ints[_SEQ]
    return StepTokens(ints, [s.block_table for s in seqs], list(range(len(seqs))), max(pos) + 1)


def _flatten_rows(batch: ScheduledBatch, page_size: int) -> StepTokens:
    ids: list[int] = []
    slots: list[int] = []
    pos: list[int] = []
    seq_of: list[int] = []
    rows, logit_at = [], []
    needs = batch.needs_logits()
    for b, (seq, n) in enumerate(zip(batch.seqs, batch.num_tokens)):
        start, table = seq.num_computed, seq.block_table
        ids += batch.step_tokens(b)
        positions = range(start, start + n)
        pos += positions
        slots += [table[p // page_size] * page_size + p % page_size for p in positions]
        seq_of += [b] * n
        if needs[b]:
            rows.append(b)
            logit_at.append(len(ids) - 1)
    total = len(ids)
    ints = np.empty((6, total), dtype=np.int64)
    ints[_IDS], ints[_POS], ints[_SLOT], ints[_SEQ] = ids, pos, slots, seq_of
    ints[_LEN] = ints[_POS] + 1
    ints[_LOGIT] = 0
    ints[_LOGIT, :len(logit_at)] = logit_at
    return StepTokens(ints, [s.block_table for s in batch.seqs], rows, max(pos) + 1)


class CudaStepRunner:
    """Runs steps of up to `max_tokens` tokens; graphs are captured at start (unless disabled)."""

    def __init__(self, model: torch.nn.Module, kv: KVCache, device: torch.device, max_tokens: int,
                 max_pages: int, max_seqs: int, use_graphs: bool) -> None:
        from thinkform.kernels.attention import TokenAttention  # CUDA only: never imported on a CPU engine

        self._attention = TokenAttention
        self.model, self.kv, self.device = model, kv, device
        self.buckets = [b for b in _BUCKETS if b <= max_tokens] or [1]
        self.max_tokens = self.buckets[-1]
        self.max_pages = max_pages
        self.max_seqs = max_seqs  # rows that sample in one step: the LM head runs on at most these
        size = self.max_tokens
        pinned = device.type == "cuda"  # (a CPU device runs this class only in tests, through Triton's interpreter)
        # the token columns (int64) then the page tables (int32) in one block, host and device: one copy a step
        self._ints_bytes = 6 * size * 8
        self._row_bytes = max_pages * 4
        total = self._ints_bytes + size * self._row_bytes
        self._host_block = torch.zeros(total, dtype=torch.uint8, pin_memory=pinned)
        self._device_block = torch.zeros(total, dtype=torch.uint8, device=device)
        self.staging, self.table_staging = self._views(self._host_block, size, max_pages)
        self.ints, self.tables = self._views(self._device_block, size, max_pages)
        self._staged: list[tuple[list[int] | None, int]] = [(None, 0)] * size  # per table row: (table, pages)
        # the staging area may be rewritten once its last copy is done
        self._copied = torch.cuda.Event() if pinned else None
        # looked up once: torch.cuda.current_stream() is a dozen Python calls, and an event's record() with no
        # stream makes them every step (a thread's current stream is the default one unless it sets another)
        self._stream = torch.cuda.current_stream(device) if pinned else None
        # keyed by (tokens, attention splits); long-context variants only up to max_seqs tokens: wider steps
        # have programs enough in one pass
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self.outputs: dict[tuple[int, int], torch.Tensor] = {}
        if use_graphs:
            self._capture_all()

    def fits(self, batch: ScheduledBatch) -> bool:
        return batch.total_tokens <= self.max_tokens and \
            all(len(s.block_table) <= self.max_pages for s in batch.seqs)

    @torch.inference_mode()
    def forward(self, batch: ScheduledBatch) -> tuple[torch.Tensor | None, list[int]]:
        step = flatten_step(batch, self.kv.page_size)
        width = self._bucket(step.num_tokens)
        key = (width, LONG_SPLITS if step.longest > LONG_CONTEXT else 1)
        if key not in self.graphs and (width, 1) in self.graphs:
            key = (width, 1)  # a wide step: one pass has programs enough
        self._load(step, width)
        if batch.fed is not None:  # a decode-ahead's ids, sampled on the device: one token per sequence
            self.ints[_IDS, : batch.fed.shape[0]].copy_(batch.fed)
        if key in self.graphs:
            self.graphs[key].replay()
            logits = self.outputs[key]
        else:
            logits = self._forward(*key)
        return (logits[: len(step.rows)], step.rows) if step.rows else (None, [])

    # -- inputs -------------------------------------------------------------------------------------------
    def _load(self, step: StepTokens, width: int) -> None:
        """Host arrays → pinned staging → the static device buffers, padding up to `width` tokens. One
        contiguous prefix of the block is copied (the token columns whole, the tables' rows in use): a
        strided slice of pinned memory would be staged through pageable memory, and the copy would no
        longer be asynchronous."""
        t = step.num_tokens
        if self._copied is not None:
            self._copied.synchronize()
        host = self.staging.numpy()
        host[:, :t] = step.ints
        host[:, t:width] = 0
        host[_SLOT, t:width] = self.kv.scratch_slot
        used = self._ints_bytes + self._stage_tables(step.tables) * self._row_bytes
        self._device_block[:used].copy_(self._host_block[:used], non_blocking=True)
        if self._copied is not None:
            self._copied.record(self._stream)

    def _views(self, block: torch.Tensor, size: int, max_pages: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(ints [6, size] int64, tables [size, max_pages] int32) over one byte block."""
        ints = block[: self._ints_bytes].view(torch.int64).view(6, size)
        return ints, block[self._ints_bytes:].view(torch.int32).view(size, max_pages)

    def _stage_tables(self, tables: list[list[int]]) -> int:
        """Write each sequence's page table into its staging row, only the pages added since that row last
        held the same table (block tables only grow; a freed or re-admitted sequence gets a new list)."""
        host = self.table_staging.numpy()
        for b, table in enumerate(tables):
            owner, done = self._staged[b]
            if owner is not table or done > len(table):
                done = 0
            if done < len(table):
                host[b, done:len(table)] = table[done:]
            self._staged[b] = (table, len(table))
        return len(tables)

    def load_padding(self) -> None:
        """Every token slot padding (the state graphs are captured in): scratch page, nothing attended."""
        self.ints.zero_()
        self.ints[_SLOT].fill_(self.kv.scratch_slot)

    def _forward(self, width: int, splits: int) -> torch.Tensor:
        """The forward over the first `width` tokens of the static buffers (what a graph captures)."""
        ints = self.ints[:, :width]
        tables = self.tables[ints[_SEQ]]  # each token's sequence's pages
        attn = self._attention(self.kv.k, self.kv.v, ints[_SLOT], tables, ints[_LEN], self.kv.page_size, splits)
        hidden = self.model(ints[_IDS], ints[_POS], attn)
        return self.model.compute_logits(hidden[ints[_LOGIT, : min(width, self.max_seqs)]])

    def _bucket(self, tokens: int) -> int:
        return next(b for b in self.buckets if b >= tokens)

    # -- capture ------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def _capture_all(self) -> None:
        t0 = time.perf_counter()
        self.load_padding()
        pool = torch.cuda.graph_pool_handle()
        keys = [(w, 1) for w in self.buckets] + [(w, LONG_SPLITS) for w in self.buckets if w <= self.max_seqs]
        for key in sorted(keys, reverse=True):  # largest first: the shared pool is sized once
            self.outputs[key] = self._capture(key, pool)
        torch.cuda.synchronize(self.device)
        logger.info("CUDA graphs: %d captured (steps of 1..%d tokens) in %.1f s", len(self.graphs),
                    self.max_tokens, time.perf_counter() - t0)

    def _capture(self, key: tuple[int, int], pool: tuple) -> torch.Tensor:
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):  # warm-up off the capture: Triton compiles, cuBLAS picks kernels
            for _ in range(2):
                self._forward(*key)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            out = self._forward(*key)
        self.graphs[key] = graph
        return out
