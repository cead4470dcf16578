"""Turns a Sequence into SGLang's output dict: text, output_ids, meta_info."""
from __future__ import annotations

import time
from typing import Any

from thinkform.engine.sequence import Sequence
from thinkform.reasoning import ReasoningMarkers, split_reasoning


def sequence_output(seq: Sequence, finished: bool, markers: ReasoningMarkers | None, single: bool) -> dict[str, Any]:
    text = seq.detok.text
    gate = seq.gate
    meta: dict[str, Any] = {
        "id": seq.rid if single else f"{seq.rid}-{seq.index}",
        "finish_reason": seq.finish.to_dict() if finished and seq.finish else None,
        "prompt_tokens": len(seq.prompt_ids),
        "completion_tokens": len(seq.output_ids),
        "cached_tokens": seq.num_cached,
        "reasoning_tokens": gate.reasoning_tokens if gate is not None else 0,
        "constraint_satisfied": gate.constraint_satisfied if gate is not None else None,
        "closed_by_budget": gate.closed_by_budget if gate is not None else False,
        "e2e_latency": time.perf_counter() - seq.arrival,
    }
    if seq.first_token_time is not None:
        meta["ttft"] = seq.first_token_time - seq.arrival
    if seq.reasoning and markers is not None:
        meta["reasoning_content"], meta["content"] = split_reasoning(
            text, markers, in_reasoning=seq.reasoning_start == "reasoning")
    if seq.return_logprob:
        meta["output_token_logprobs"] = list(seq.token_logprobs)
        if seq.top_logprobs_num:
            meta["output_top_logprobs"] = list(seq.top_logprobs)
    return {"index": seq.index, "text": text, "output_ids": list(seq.output_ids), "meta_info": meta}
