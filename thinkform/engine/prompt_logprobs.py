"""Prompt logprobs (SGLang's input_token_logprobs from logprob_start_len): each prompt token's logprob given
the tokens before it, read off the prefill's hidden states where a request asks for them."""
from __future__ import annotations

from typing import Callable

import torch

from thinkform.engine.sampler import log_probs
from thinkform.engine.scheduler import ScheduledBatch
from thinkform.engine.sequence import Sequence

# positions scored per output matmul: a [64, 152k] float32 block is 39 MB
CHUNK = 64


def prompt_logprob_rows(batch: ScheduledBatch) -> list[tuple[Sequence, range, int]]:
    """(sequence, positions it scores in this step, the step's flat row of the first of them)."""
    if batch.ahead:
        return []
    wanted, offset = [], 0
    for seq, n in zip(batch.seqs, batch.num_tokens):
        span = seq.prompt_logprob_span(seq.num_computed, n)
        if span:
            wanted.append((seq, span, offset + span.start - seq.num_computed))
        offset += n
    return wanted


def record_prompt_logprobs(hidden: torch.Tensor, wanted: list[tuple[Sequence, range, int]],
                           compute_logits: Callable[[torch.Tensor], torch.Tensor], tokenizer_size: int | None) -> None:
    """Append each scored prompt token's logprob (and its top alternatives) to its sequence: the logits at
    position p score token p + 1, the log-softmax over the tokenizer's ids as for output tokens."""
    for seq, span, row in wanted:
        targets = seq.prompt_ids[span.start + 1:span.stop + 1]
        k = seq.top_logprobs_num
        for at in range(0, len(span), CHUNK):
            rows = hidden[row + at:row + min(at + CHUNK, len(span))]
            logp = log_probs(compute_logits(rows), tokenizer_size)
            ids = targets[at:at + rows.shape[0]]
            chosen = logp.gather(1, torch.tensor(ids, device=logp.device)[:, None])
            ranks = ((logp > chosen).sum(dim=-1) + 1).tolist()  # vLLM's rank: 1 where the token was the likeliest
            values = chosen[:, 0].tolist()
            seq.input_token_logprobs.extend((v, t, None) for v, t in zip(values, ids))
            seq.input_token_ranks.extend(ranks)
            if seq.token_ids_logprob:
                asked = seq.token_ids_logprob
                rows_of_ids = logp[:, asked].tolist()
                seq.input_token_ids_logprobs.extend([(v, t, None) for v, t in zip(vs, asked)] for vs in rows_of_ids)
            if k:
                top_vals, top_ids = (x.tolist() for x in logp.topk(k, dim=-1))
                seq.input_top_logprobs.extend([(v, t, None) for v, t in zip(vs, ts)]
                                              for vs, ts in zip(top_vals, top_ids))
