"""penalties → bias → grammar bitmask → temperature / top-k / top-p / min-p → token (+ logprobs)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import torch

from thinkform.engine.sequence import Sequence
from thinkform.engine.transfer import HostReadback, device_tensor
from thinkform.structured.bitmask import apply_bitmask_cpu, argmax_allowed_cpu, argmax_rows, set_bits, token_allowed

logger = logging.getLogger("thinkform")


@dataclass
class SampleOutput:
    tokens: list[int]
    logprobs: list[float | None] = field(default_factory=list)
    top_logprobs: list[list[tuple[float, int]] | None] = field(default_factory=list)
    id_logprobs: list[list[tuple[float, int]] | None] = field(default_factory=list)  # token_ids_logprob's
    fed: bool = False  # the device-side ids went to `on_tokens` before the host read them
    logp: torch.Tensor | None = None  # the rows' log-softmax where logprobs were asked for

    def logprob_of(self, row: int, token_id: int) -> float:
        """Another id's logprob in a row (the loop may append a different id than the one sampled)."""
        return float(self.logp[row, token_id])


class Sampler:
    def __init__(self, tokenizer_size: int, vocab_size: int, eos_token_ids: tuple[int, ...]) -> None:
        self.tokenizer_size = tokenizer_size  # ids at or past this are embedding padding: never sampled
        self.vocab_size = vocab_size
        self.eos_token_ids = list(eos_token_ids)
        # where logits live: the EOS ids, copied up once, and -inf as a 0-d tensor of the logits' dtype
        self._eos_on: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}
        self._readback = HostReadback()

    @torch.inference_mode()
    def sample(self, logits: torch.Tensor, seqs: list[Sequence], bitmask: torch.Tensor | None = None,
               masked_rows: list[int] | None = None,
               on_tokens: Callable[[torch.Tensor], None] | None = None) -> SampleOutput:
        """`logits` are this step's own (changed in place); `bitmask` rows (CPU) for `masked_rows`.

        `on_tokens` gets the chosen ids while they are still on the device, before the host waits for them,
        where nothing after that reads the logits (no logprobs, no host-side greedy fix-up): the overlap
        schedule launches the next step from them, and the device never waits for this step's host work."""
        logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        raw = logits
        wants_logprobs = any(s.return_logprob for s in seqs)
        if wants_logprobs:
            logits = logits.clone()
        masked_rows = masked_rows if bitmask is not None and masked_rows else []
        self._penalize(logits, seqs, frozenset(masked_rows))
        if self.tokenizer_size < logits.shape[1]:
            if masked_rows or wants_logprobs or not all(s.params.greedy for s in seqs):
                logits[:, self.tokenizer_size:] = float("-inf")
            else:  # plain greedy rows: their argmax looks at the tokenizer's ids only (no write, no kernel)
                logits = logits[:, : self.tokenizer_size]
        for r in masked_rows:
            if seqs[r].params.bad_word_ids:
                _ban_bad_words_in_mask(bitmask, r, seqs[r].params.bad_word_ids, seqs[r].output_ids)
        # sampled rows need the whole masked distribution; greedy rows on a CPU only the best allowed token
        # (one bit test when the model agrees with the grammar). On a GPU one kernel masks every row at
        # once, cheaper than a second round trip for the rows whose argmax was banned.
        on_cpu = logits.device.type == "cpu"
        sampled = [r for r in masked_rows if not (on_cpu and seqs[r].params.greedy)]
        if sampled:
            apply_bitmask(logits, bitmask, sampled)
        chosen = self._choose(logits, seqs)
        greedy = [r for r in masked_rows if on_cpu and seqs[r].params.greedy]
        fed = on_tokens is not None and not greedy and not wants_logprobs
        tokens = self._readback.fed_then_read(chosen, on_tokens) if fed else chosen.tolist()
        if greedy:
            best_allowed(logits, bitmask, greedy, tokens)
        out = SampleOutput(tokens, fed=fed)
        if wants_logprobs:
            self._logprobs(raw, seqs, tokens, out)
        return out

    def _penalize(self, logits: torch.Tensor, seqs: list[Sequence], masked: frozenset[int] = frozenset()) -> None:
        self._ban_stops(logits, seqs)
        for i, seq in enumerate(seqs):
            p = seq.params
            if p.allowed_token_ids is not None:
                _keep_only(logits[i], p.allowed_token_ids)
            if p.bad_word_ids and i not in masked:  # a masked row bans them in its mask (sample)
                _ban_bad_words(logits[i], p.bad_word_ids, seq.output_ids, give_way=_grammar_active(seq))
            if p.logit_bias:
                kept = [t for t in p.logit_bias if t < logits.shape[1]]
                if kept:
                    ids = device_tensor(kept, logits.device)
                    bias = device_tensor([p.logit_bias[t] for t in kept], logits.device, logits.dtype)
                    logits[i].index_add_(0, ids, bias)
            if not (p.frequency_penalty or p.presence_penalty or p.repetition_penalty != 1.0):
                continue
            if p.repetition_penalty != 1.0:
                seen = device_tensor(sorted(set(seq.tokens)), logits.device)
                row = logits[i, seen]
                logits[i, seen] = torch.where(row > 0, row / p.repetition_penalty, row * p.repetition_penalty)
            if seq.output_ids and (p.frequency_penalty or p.presence_penalty):
                out_ids = device_tensor(seq.output_ids, logits.device)
                counts = torch.bincount(out_ids, minlength=logits.shape[1])[: logits.shape[1]]
                counts = counts.to(logits.dtype)
                logits[i] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(logits.dtype)

    def _ban_stops(self, logits: torch.Tensor, seqs: list[Sequence]) -> None:
        """EOS and the request's stop_token_ids off for rows that have not reached min_new_tokens (unless a
        grammar decides the end), as SGLang's and vLLM's min-tokens processors: EOS with one indexed write
        for all rows, not one per row (each a kernel launch on a GPU). `ignore_eos` only keeps EOS from
        ending a request (the loop): the model may still sample it, as in SGLang and vLLM."""
        rows = [i for i, s in enumerate(seqs)
                if not _grammar_active(s) and len(s.output_ids) < s.params.min_new_tokens]
        for i in rows:
            # ids past the logits are never sampled anyway (a request may name them: no error, as before)
            stops = sorted(t for t in seqs[i].params.stop_token_ids if t < logits.shape[1])
            if stops:
                logits[i, device_tensor(stops, logits.device)] = float("-inf")
        if not rows or not self.eos_token_ids:
            return
        key = (logits.device, logits.dtype)
        if key not in self._eos_on:
            self._eos_on[key] = (device_tensor(self.eos_token_ids, logits.device), _minus_inf(logits))
        eos, minus_inf = self._eos_on[key]
        # every row (a benchmark's ignore_eos batch): a column write, no row list to copy up each step
        row_ids = slice(None) if len(rows) == logits.shape[0] else device_tensor(rows, logits.device)[:, None]
        logits[row_ids, eos] = minus_inf

    def _choose(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        """Each row's token id, where the logits live (nothing waits for the device here)."""
        tokens = argmax_rows(logits)
        # a row taking a forced id (forced_queue) draws no noise: its seed's stream stays the one it has without
        # logprobs
        rows = [i for i, s in enumerate(seqs) if not s.params.greedy and not s.forced_queue]
        if not rows:
            return tokens
        idx = device_tensor(rows, logits.device)
        sub = logits[idx]
        # a temperature past the logits' dtype (1e308 in float32) would be inf, and -inf / inf NaN: the largest
        # finite one is as flat a distribution
        top = torch.finfo(sub.dtype).max
        temps = device_tensor([min(seqs[i].params.temperature, top) for i in rows], sub.device, sub.dtype)
        sub = sub / temps[:, None]
        sub = _top_k(sub, [seqs[i].params.top_k for i in rows])
        probs = torch.softmax(sub, dim=-1)
        probs = _top_p(probs, [seqs[i].params.top_p for i in rows])
        probs = _min_p(probs, [seqs[i].params.min_p for i in rows])
        # Gumbel-max through exponential noise: each row's own generator (a seeded request repeats itself on
        # the same device), drawn where the logits live, then one division and one argmax for all rows
        noise = torch.empty_like(probs)
        for j, i in enumerate(rows):
            noise[j].exponential_(generator=seqs[i].generator)
        tokens[idx] = argmax_rows(probs / noise)
        return tokens

    def _logprobs(self, raw: torch.Tensor, seqs: list[Sequence], tokens: list[int], out: SampleOutput) -> None:
        """One gather and one top-k for the whole batch, read back once (a GPU would sync per call)."""
        logp = log_probs(raw, self.tokenizer_size)
        out.logp = logp
        chosen = logp.gather(1, torch.tensor(tokens, device=logp.device)[:, None])[:, 0].tolist()
        k = max((s.top_logprobs_num for s in seqs if s.return_logprob), default=0)
        top_vals, top_ids = [], []
        if k:
            vals, ids = logp.topk(k, dim=-1)
            top_vals, top_ids = vals.tolist(), ids.tolist()
        for i, seq in enumerate(seqs):
            wanted = seq.return_logprob
            out.logprobs.append(chosen[i] if wanted else None)
            n = seq.top_logprobs_num if wanted else 0
            out.top_logprobs.append(list(zip(top_vals[i][:n], top_ids[i][:n])) if n else None)
            ids = seq.token_ids_logprob if wanted else None
            out.id_logprobs.append(list(zip(logp[i, ids].tolist(), ids)) if ids else None)


def log_probs(logits: torch.Tensor, tokenizer_size: int | None) -> torch.Tensor:
    """Log-softmax over the ids the tokenizer has (changes `logits`): the embedding's padding rows are never
    sampled and take no share (a padding id headed a random model's top logprobs). Clamped, as SGLang does,
    so a padding id that token_ids_logprob asks for is a finite number in JSON."""
    logits = logits.float()
    if tokenizer_size is not None and tokenizer_size < logits.shape[1]:
        logits[:, tokenizer_size:] = float("-inf")
    return torch.log_softmax(logits, dim=-1).clamp_(min=torch.finfo(torch.float32).min)


def _minus_inf(like: torch.Tensor) -> torch.Tensor:
    """-inf as a 0-d tensor where `like` lives: an index assignment of a Python number copies it from the
    host first, and on CUDA that copy waits for the stream's queued work."""
    return like.new_full((), float("-inf"))


def _keep_only(row: torch.Tensor, ids: list[int]) -> None:
    allowed = device_tensor([t for t in ids if t < row.shape[0]], row.device)
    kept = row[allowed].clone()
    row.fill_(float("-inf"))
    row[allowed] = kept


def _banned_now(words: list[list[int]], output_ids: list[int]) -> list[int]:
    """The last tokens of the bad words the output now ends with the rest of (a one-token word: always)."""
    return [w[-1] for w in words if len(w) == 1 or output_ids[len(output_ids) - len(w) + 1:] == w[:-1]]


def _ban_bad_words(row: torch.Tensor, words: list[list[int]], output_ids: list[int], give_way: bool = False) -> None:
    """`give_way`: a grammar's row whose logits hold only its allowed tokens (sparse logits) keeps them where
    the bad words would leave none."""
    banned = _banned_now(words, output_ids)
    if not banned:
        return
    ids = device_tensor(banned, row.device)
    kept = row[ids].clone() if give_way else None
    row[ids] = _minus_inf(row)
    if kept is not None and not bool(torch.isfinite(row).any()):
        row[ids] = kept


def _ban_bad_words_in_mask(bitmask: torch.Tensor, row: int, words: list[list[int]], output_ids: list[int]) -> None:
    """Under a grammar, bad words leave its mask, unless that leaves nothing: where the grammar allows only a
    bad word, it is written (the answer must stay a sentence of the grammar; vLLM's sampler would have had
    no token left at all)."""
    banned = _banned_now(words, output_ids)
    if not banned:
        return
    before = bitmask[row].clone()
    set_bits(bitmask, row, banned, False)
    if not bool(bitmask[row].any()):
        bitmask[row] = before


def _grammar_active(seq: Sequence) -> bool:
    return seq.gate is not None and seq.gate.constrained


def best_allowed(logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int], tokens: list[int]) -> None:
    """Greedy under a mask, CPU logits: tokens[r] already holds row r's argmax; where the mask bans it, the
    best allowed token is searched (the usual case under a confident model costs one bit test)."""
    for r in rows:
        if not token_allowed(bitmask, r, tokens[r]):
            tokens[r] = argmax_allowed_cpu(logits[r], bitmask, r)


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int]) -> None:
    """Grammar mask on the constrained rows only (ours on the CPU, xgrammar's Triton kernel on CUDA)."""
    if logits.device.type == "cpu":
        apply_bitmask_cpu(logits, bitmask, rows)
        return
    import xgrammar

    # every row: no index list (xgrammar would copy it from pageable memory); else one copied without a wait
    indices = None if rows == list(range(logits.shape[0])) else device_tensor(rows, logits.device, torch.int32)
    xgrammar.apply_token_bitmask_inplace(logits, bitmask.to(logits.device, non_blocking=True), indices=indices)


def warm_up_mask_kernel(device: torch.device, vocab_size: int) -> None:
    """Compile xgrammar's Triton mask kernel now, at start, for each variant a step may take: every row
    masked (no index list) or some (an index list), each for 1 row, a multiple of 16 and any other count
    (the kernel specialises on both). Each compile takes about a second; paid lazily it fell into the first
    batch of constrained requests (their JSON ÷ free ratio 0.62 on an H100, where the warm repeat gave 0.95)."""
    if device.type != "cuda":
        return
    import xgrammar

    rows = 16
    try:
        logits = torch.zeros(rows + 1, vocab_size, dtype=torch.float32, device=device)  # the sampler masks float32
        bitmask = xgrammar.allocate_token_bitmask(rows + 1, vocab_size)
        for n in (1, 3, rows):
            apply_bitmask(logits[:n], bitmask[:n], list(range(n)))  # every row
            apply_bitmask(logits[:n + 1], bitmask[:n + 1], list(range(n)))  # all but the last
        torch.cuda.synchronize(device)
    except Exception as e:  # noqa: BLE001 - a warm-up must not stop the engine: the first use compiles instead
        logger.warning("grammar mask kernel warm-up failed (%s: %s); it compiles on first use", type(e).__name__, e)


def _top_k(logits: torch.Tensor, ks: list[int]) -> torch.Tensor:
    if all(k <= 0 or k >= logits.shape[1] for k in ks):
        return logits
    k_t = device_tensor([k if 0 < k < logits.shape[1] else logits.shape[1] for k in ks], logits.device)
    sorted_vals = logits.sort(dim=-1, descending=True).values
    kth = sorted_vals.gather(1, (k_t - 1)[:, None])
    return logits.masked_fill(logits < kth, float("-inf"))


def _top_p(probs: torch.Tensor, ps: list[float]) -> torch.Tensor:
    if all(p >= 1.0 for p in ps):
        return probs
    p_t = device_tensor(ps, probs.device, probs.dtype)[:, None]
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    drop = sorted_probs.cumsum(dim=-1) - sorted_probs > p_t  # keep the token that crosses p
    sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    return torch.zeros_like(probs).scatter_(1, order, sorted_probs)


def _min_p(probs: torch.Tensor, ms: list[float]) -> torch.Tensor:
    if all(m <= 0.0 for m in ms):
        return probs
    m_t = device_tensor(ms, probs.device, probs.dtype)[:, None]
    return probs.masked_fill(probs < m_t * probs.max(dim=-1, keepdim=True).values, 0.0)
