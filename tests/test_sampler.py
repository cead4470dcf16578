"""The sampler on plain logits: what a row may never get (embedding padding ids, EOS where it is banned)."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from thinkform.engine.sampler import Sampler
from thinkform.engine.sampling_params import SamplingParams

TOKENIZER_SIZE, VOCAB, EOS = 10, 16, 9  # ids 10..15: the embedding's padding rows, no token of the tokenizer


def _row(**params) -> SimpleNamespace:
    """What the sampler reads of a sequence."""
    return SimpleNamespace(params=SamplingParams.from_dict({"max_new_tokens": 8, **params}), gate=None,
                           output_ids=[], tokens=[1, 2], return_logprob=False, top_logprobs_num=0,
                           token_ids_logprob=None, generator=torch.Generator().manual_seed(0))


def _logits(rows: int) -> torch.Tensor:
    logits = torch.zeros(rows, VOCAB)
    logits[:, 12] = 50.0  # a padding column: the highest logit of every row
    logits[:, EOS] = 40.0
    logits[:, 3] = 30.0
    return logits


def test_greedy_rows_never_get_a_padding_id():
    out = Sampler(TOKENIZER_SIZE, VOCAB, (EOS,)).sample(_logits(3), [_row(temperature=0) for _ in range(3)])
    assert out.tokens == [EOS, EOS, EOS]


def test_sampled_and_greedy_rows_together_never_get_a_padding_id():
    rows = [_row(temperature=0), _row(temperature=0.01, seed=1)]
    assert Sampler(TOKENIZER_SIZE, VOCAB, (EOS,)).sample(_logits(2), rows).tokens == [EOS, EOS]


def test_eos_banned_for_every_row_or_some():
    sampler = Sampler(TOKENIZER_SIZE, VOCAB, (EOS,))
    assert sampler.sample(_logits(2), [_row(temperature=0, ignore_eos=True)] * 2).tokens == [3, 3]
    rows = [_row(temperature=0, ignore_eos=True), _row(temperature=0), _row(temperature=0, min_new_tokens=2)]
    assert sampler.sample(_logits(3), rows).tokens == [3, EOS, 3]
