"""ModelRunner: a scheduled batch → logits of the sequences that sample next, on the device."""
from __future__ import annotations

import torch

from thinkform.engine.attention import PagedAttention, StepLayout
from thinkform.engine.graph_runner import CudaStepRunner
from thinkform.engine.kv_cache import KVCache
from thinkform.engine.scheduler import ScheduledBatch


class ModelRunner:
    def __init__(self, model: torch.nn.Module, kv: KVCache, device: torch.device,
                 small_steps: CudaStepRunner | None = None) -> None:
        self.model = model
        self.kv = kv
        self.device = device
        self.small_steps = small_steps  # CUDA: steps it fits run on Triton kernels through CUDA graphs

    @torch.inference_mode()
    def forward(self, batch: ScheduledBatch) -> tuple[torch.Tensor | None, list[int]]:
        """Returns (logits [M, V], rows): logits for the M sequences whose step reached their last token."""
        if self.small_steps is not None and self.small_steps.fits(batch):
            return self.small_steps.forward(batch)
        ids, positions = [], []
        for b, (seq, n) in enumerate(zip(batch.seqs, batch.num_tokens)):
            start = seq.num_computed
            ids.extend(batch.step_tokens(b))
            positions.extend(range(start, start + n))
        layout = StepLayout.build([s.num_computed for s in batch.seqs], batch.num_tokens,
                                  [s.block_table for s in batch.seqs], self.kv.page_size, self.device)
        input_ids = torch.tensor(ids, dtype=torch.long, device=self.device)
        pos = torch.tensor(positions, dtype=torch.long, device=self.device)
        hidden = self.model(input_ids, pos, PagedAttention(self.kv, layout))
        rows = [i for i, need in enumerate(batch.needs_logits()) if need]
        if not rows:
            return None, rows
        ends = torch.tensor(batch.num_tokens, device=self.device).cumsum(0) - 1
        last = hidden[ends[torch.tensor(rows, device=self.device)]]
        return self.model.compute_logits(last), rows
