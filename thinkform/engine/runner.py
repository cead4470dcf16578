"""ModelRunner: a scheduled batch → logits of the sequences that sample next, on the device."""
from __future__ import annotations

import numpy as np
import torch

from thinkform.engine.attention import PagedAttention, step_groups
from thinkform.engine.graph_runner import CudaStepRunner
from thinkform.engine.kv_cache import KVCache
from thinkform.engine.prompt_logprobs import prompt_logprob_rows, record_prompt_logprobs
from thinkform.engine.scheduler import ScheduledBatch
from thinkform.engine.transfer import device_tensor
from thinkform.models.layers import logits_dtype


class ModelRunner:
    def __init__(self, model: torch.nn.Module, kv: KVCache, device: torch.device,
                 small_steps: CudaStepRunner | None = None, tokenizer_size: int | None = None) -> None:
        self.model = model
        self.tokenizer_size = tokenizer_size  # prompt logprobs are over the tokenizer's ids (None: every row)
        self.kv = kv
        self.device = device
        self.small_steps = small_steps  # CUDA: steps it fits run on Triton kernels through CUDA graphs
        self._logits: torch.Tensor | None = None  # see _logits_buffer

    @torch.inference_mode()
    def forward(self, batch: ScheduledBatch,
                allowed: dict[int, torch.Tensor] | None = None) -> tuple[torch.Tensor | None, list[int]]:
        """Returns (logits [M, V], rows): logits for the M sequences whose step reached their last token.

        `allowed` maps some of those M rows to the only token ids their grammar allows: such a row gets
        logits at those ids and -inf elsewhere (already masked), computed from just those rows of the
        output matrix. Only the eager path takes it (a CPU device: the masks are known before the forward).

        Prompt tokens a request scores (prompt logprobs) are recorded on its sequence; such a step runs on
        the eager path, which keeps every token's hidden state."""
        if allowed:
            assert self.small_steps is None, "allowed-token logits need the eager path"
        scored = prompt_logprob_rows(batch)
        if self.small_steps is not None and not scored and self.small_steps.fits(batch):
            return self.small_steps.forward(batch)
        ids, positions = [], []
        for b, (seq, n) in enumerate(zip(batch.seqs, batch.num_tokens)):
            start = seq.num_computed
            ids.extend(batch.step_tokens(b))
            positions.extend(range(start, start + n))
        groups = step_groups([s.num_computed for s in batch.seqs], batch.num_tokens,
                             [s.block_table for s in batch.seqs], self.kv.page_size, self.device)
        input_ids = batch.fed if batch.fed is not None else device_tensor(ids, self.device)
        pos = device_tensor(positions, self.device)
        hidden = self.model(input_ids, pos, PagedAttention(self.kv, groups))
        if scored:
            record_prompt_logprobs(hidden, scored, self.model.compute_logits, self.tokenizer_size)
        rows = [i for i, need in enumerate(batch.needs_logits()) if need]
        if not rows:
            return None, rows
        ends = device_tensor(batch.num_tokens, self.device).cumsum(0) - 1
        last = hidden[ends[device_tensor(rows, self.device)]]
        if not allowed:
            return self.model.compute_logits(last), rows
        return self._logits_at_allowed(last, allowed), rows

    def _logits_at_allowed(self, last: torch.Tensor, allowed: dict[int, torch.Tensor]) -> torch.Tensor:
        """Full logits for the other rows; for rows in `allowed`, -inf but at their allowed ids. On a CPU
        with a large vocabulary the output matmul is most of a small model's step: a JSON answer between
        fields allows a dozen tokens out of 152k, so its row costs a dozen dot products."""
        logits = self._logits_buffer(last.shape[0], logits_dtype(last.dtype))
        full = [i for i in range(last.shape[0]) if i not in allowed]
        if full:
            logits[full] = self.model.compute_logits(last[full])
        sparse = list(allowed)
        logits.numpy()[sparse] = -np.inf  # numpy: torch's fill wakes its thread team for each row
        rows = torch.cat([torch.full_like(allowed[i], i) for i in sparse])
        ids = torch.cat([allowed[i] for i in sparse])
        logits[rows, ids] = self.model.compute_logits_at(last, rows, ids)
        return logits

    def _logits_buffer(self, rows: int, dtype: torch.dtype) -> torch.Tensor:
        """One [rows, vocab] buffer reused every step: a fresh 600 KB row a step costs its page faults.
        The sampler is done with a step's logits before the next forward."""
        vocab = self.model.config.vocab_size
        if self._logits is None or self._logits.shape[0] < rows or self._logits.dtype != dtype:
            self._logits = torch.empty(max(rows, 8), vocab, dtype=dtype)
        return self._logits[:rows]
