"""Turns a Sequence into SGLang's output dict: text, output_ids, meta_info."""
from __future__ import annotations

import bisect
import time
from dataclasses import dataclass
from typing import Any, Callable

from thinkform.engine.detokenizer import StopRegexTimeout, partial_stop_len, partial_stop_regex_len
from thinkform.engine.sequence import FinishReason, Sequence
from thinkform.reasoning import ReasoningMarkers, split_reasoning


def shown_text(seq: Sequence, finished: bool) -> str:
    """The text an event may show: until the end, the start of a stop string that may still complete is held
    back, so a stream never sends text the stop then cuts (streamed pieces join to the final text)."""
    text = seq.detok.text
    p = seq.params
    if finished or not (p.stop or p.stop_patterns) or p.no_stop_trim:
        return text
    try:
        held_regex = partial_stop_regex_len(text, p.stop_patterns) if p.stop_patterns else 0
    except StopRegexTimeout as e:  # the loop ends the request at its next token; nothing more is shown
        seq.stop_regex_error = seq.stop_regex_error or str(e)
        held_regex = len(text)
    held = max(partial_stop_len(text, p.stop) if p.stop else 0, held_regex)
    return text[: len(text) - held] if held else text


def _shown_tokens(seq: Sequence, finished: bool, shown: int) -> int:
    """How many output tokens' text the event shows (all at the end): a streamed event carries their logprobs."""
    if finished or not seq.stream:
        return len(seq.token_logprobs)
    marks = seq.text_marks
    i = bisect.bisect_right(marks, shown, key=lambda m: m[0])
    return marks[i - 1][1] if i else 0


@dataclass
class OutputEvent:
    """One output of a sequence as the loop saw it. What may change later is taken now (counts, the text: a
    str, immutable); what costs in proportion to the output's length is left to `build`, on the caller's
    thread: the output ids (kept as a length: the list only grows) and the reasoning split. Built on the loop
    for every streamed token, they cost it in proportion to the output's length (bench/stream_cost.py)."""

    seq: Sequence
    out: dict[str, Any]  # index, text, output_ids and meta_info, the deferred values None
    num_ids: int | None = None  # the output ids the event shows (None: `out` is whole)
    split: tuple[ReasoningMarkers, bool, bool] | None = None  # (markers, starts in reasoning, exact answer)

    def build(self) -> dict[str, Any]:
        """The output dict (once: later calls return the same)."""
        if self.num_ids is not None:
            self.out["output_ids"] = self.seq.output_ids[: self.num_ids]
            if self.split is not None:
                markers, in_reasoning, exact = self.split
                meta = self.out["meta_info"]
                meta["reasoning_content"], meta["content"] = split_reasoning(
                    self.out["text"], markers, in_reasoning=in_reasoning, exact_answer=exact)
            self.num_ids = None
        return self.out


def output_event(seq: Sequence, finished: bool, markers: ReasoningMarkers | None) -> OutputEvent:
    text = shown_text(seq, finished)
    gate = seq.gate
    meta: dict[str, Any] = {
        "id": seq.output_id or seq.rid,
        "finish_reason": seq.finish.to_dict() if finished and seq.finish else None,
        "prompt_tokens": len(seq.prompt_ids),
        "weight_version": "default",  # SGLang's: the weights are never updated in place here
        "total_retractions": seq.retractions,  # preempted, recomputed or not yet (SGLang's name)
        "completion_tokens": len(seq.output_ids),
        "cached_tokens": seq.num_cached,
        "cached_tokens_details": None,
        "reasoning_tokens": gate.reasoning_tokens_of(len(seq.output_ids)) if gate is not None else 0,
        "constraint_satisfied": gate.constraint_satisfied if gate is not None else None,
        "closed_by_budget": gate.closed_by_budget if gate is not None else False,
        "e2e_latency": time.perf_counter() - seq.arrival,
    }
    if seq.first_token_time is not None:
        meta["ttft"] = seq.first_token_time - seq.arrival
    split = None
    if seq.reasoning and markers is not None:
        meta["reasoning_content"] = meta["content"] = None  # by build(), in this place
        split = (markers, seq.reasoning_start == "reasoning", seq.exact_answer)
    if seq.return_logprob:
        meta.update(_logprobs(seq, _shown_tokens(seq, finished, len(text))))
    out = {"index": seq.index, "text": text, "output_ids": None, "meta_info": meta}
    return OutputEvent(seq, out, len(seq.output_ids), split)


def _logprobs(seq: Sequence, count: int) -> dict[str, Any]:
    """SGLang's four lists of (logprob, token id, text) entries: the prompt's from logprob_start_len (the
    first one's logprob None), the output's first `count` tokens; the text only with return_text_in_logprobs."""
    named = _with_text(seq.detok.tokenizer) if seq.return_text_in_logprobs else (lambda entries: entries)
    out = {"input_token_logprobs": named(seq.input_token_logprobs), "input_token_ranks": seq.input_token_ranks,
           "output_token_logprobs": named(seq.token_logprobs[:count])}
    if seq.top_logprobs_num:
        out["input_top_logprobs"] = [named(top) if top is not None else None for top in seq.input_top_logprobs]
        out["output_top_logprobs"] = [named(top) for top in seq.top_logprobs[:count]]
    if seq.token_ids_logprob:
        out["input_token_ids_logprobs"] = [named(e) if e is not None else None for e in seq.input_token_ids_logprobs]
        out["output_token_ids_logprobs"] = [named(e) if e is not None else None for e in seq.token_ids_logprobs[:count]]
    return out


def _with_text(tokenizer: Any) -> Callable[[list[tuple]], list[tuple]]:
    def named(entries: list[tuple]) -> list[tuple]:
        return [(value, tid, tokenizer.decode([tid])) for value, tid, _ in entries]
    return named


def failed_output(seq: Sequence, error: BaseException) -> dict[str, Any]:
    """The final output of a sequence whose output could not be built: the error, so its caller is answered
    (with status 500 on the OpenAI routes) instead of waiting forever."""
    meta = {"id": seq.output_id or seq.rid,
            "finish_reason": FinishReason.failed(error).to_dict(), "prompt_tokens": len(seq.prompt_ids),
            "completion_tokens": len(seq.output_ids), "e2e_latency": time.perf_counter() - seq.arrival}
    return {"index": seq.index, "text": "", "output_ids": list(seq.output_ids), "meta_info": meta}
