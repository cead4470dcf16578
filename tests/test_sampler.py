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
                           output_ids=[], tokens=[1, 2], forced_queue=[], return_logprob=False, top_logprobs_num=0,
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


def test_eos_and_stop_ids_banned_below_min_new_tokens_only():
    """Below min_new_tokens EOS and the request's stop_token_ids are off (audit 31: a stop id came first
    and was written into the output); ignore_eos does not ban EOS, it only keeps it from ending the request
    (the model's distribution is left as SGLang and vLLM leave it)."""
    sampler = Sampler(TOKENIZER_SIZE, VOCAB, (EOS,))
    assert sampler.sample(_logits(2), [_row(temperature=0, min_new_tokens=2)] * 2).tokens == [3, 3]
    rows = [_row(temperature=0, ignore_eos=True), _row(temperature=0), _row(temperature=0, min_new_tokens=2)]
    assert sampler.sample(_logits(3), rows).tokens == [EOS, EOS, 3]
    stop_first = _logits(2)
    stop_first[:, 5] = 45.0
    rows = [_row(temperature=0, min_new_tokens=2, stop_token_ids=[5, 10**6]), _row(temperature=0, stop_token_ids=[5])]
    assert sampler.sample(stop_first, rows).tokens == [3, 5]  # an id past the vocabulary is no error (review)


def test_logprobs_are_over_the_tokenizer_ids():
    """Audit 31: the padding rows took a share of the softmax, and a padding id headed the top logprobs above
    the greedy token it can never be."""
    row = _row(temperature=0)
    row.return_logprob, row.top_logprobs_num, row.token_ids_logprob = True, 2, [3, 12]
    out = Sampler(TOKENIZER_SIZE, VOCAB, (EOS,)).sample(_logits(1), [row])
    assert out.tokens == [EOS] and out.top_logprobs[0][0][1] == EOS
    assert abs(out.logprobs[0] - torch.log_softmax(_logits(1)[0, :TOKENIZER_SIZE], 0)[EOS].item()) < 1e-4
    assert out.top_logprobs[0][0][0] == out.logprobs[0]
    padding = dict((t, v) for v, t in out.id_logprobs[0])[12]
    assert padding < -1e30 and padding > float("-inf")


def test_temperature_is_finite_and_any_finite_one_samples():
    """Audit 35: `Infinity` was taken, and 1e308 became inf in float32 (-inf / inf: NaN), so every row drew
    token 0 and a constrained one failed its request."""
    import pytest

    from thinkform.engine.sampling_params import SamplingParamError

    with pytest.raises(SamplingParamError, match="temperature: must be a finite number"):
        SamplingParams.from_dict({"temperature": float("inf")})
    sampler, drawn = Sampler(TOKENIZER_SIZE, VOCAB, (EOS,)), set()
    for seed in range(40):
        row = _row(temperature=1e308)
        row.generator = torch.Generator().manual_seed(seed)
        drawn.add(sampler.sample(_logits(1), [row]).tokens[0])
    assert len(drawn) > 3 and all(t < TOKENIZER_SIZE for t in drawn)  # as flat as it gets, no padding id
