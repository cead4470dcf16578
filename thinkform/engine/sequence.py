"""Sequence: the state of one generated sample (one of the n of a request) as the scheduler sees it."""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from thinkform.engine.detokenizer import IncrementalDetokenizer
from thinkform.engine.sampling_params import SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class FinishReason:
    type: str  # stop | length | abort
    matched: int | str | None = None
    message: str | None = None
    length: int | None = None  # for "length": the limit that was reached (SGLang reports it)
    status_code: int | None = None  # for "abort": 500 when the engine failed the request (as SGLang's)

    @classmethod
    def failed(cls, error: BaseException) -> "FinishReason":
        """How a request the engine failed ends: an abort with the error and status 500 (the routes answer
        it as an error, not as a cut answer)."""
        return cls("abort", message=f"internal error: {type(error).__name__}: {error}", status_code=500)

    def to_dict(self) -> dict[str, Any]:
        # SGLang's shapes: `matched` on a stop only ({"type": "length", "length": 5}, no `matched: null`)
        out: dict[str, Any] = {"type": self.type}
        if self.type == "stop":
            out["matched"] = self.matched
        if self.message is not None:
            out["message"] = self.message
        if self.length is not None:
            out["length"] = self.length
        if self.status_code is not None:
            out["status_code"] = self.status_code
        return out


@dataclass(eq=False)  # one request's sequence is itself only: compared by identity (list.remove, `in`)
class Sequence:
    rid: str  # its prompt's request id (abort by it)
    index: int  # which of the request's samples (prompts × n, flat)
    prompt_ids: list[int]
    params: SamplingParams
    detok: IncrementalDetokenizer
    generator: torch.Generator | None
    sink: Callable[["Sequence", bool], None]  # (seq, finished) → deliver an output event
    output_id: str = ""  # meta_info id: the rid, or rid-k for the k-th of n samples
    stream: bool = False
    gate: Any = None  # ReasoningGate or None
    reasoning: bool = False  # reasoning parser active for this request (split text in meta_info)
    reasoning_start: str = "answer"
    # the answer is a grammar's text to the byte (a JSON, regex or EBNF constraint): its content keeps its
    # leading whitespace where the reasoning split strips it
    exact_answer: bool = False
    return_logprob: bool = False
    top_logprobs_num: int = 0
    return_text_in_logprobs: bool = False
    token_ids_logprob: list[int] | None = None  # SGLang's: these tokens' logprobs at every position too
    logprob_start: int = 0  # the first prompt token with an entry in input_token_logprobs (its own is None)
    output_ids: list[int] = field(default_factory=list)
    # with return_logprob: forced ids the gate took that wait for a step each (the loop's _emit), so each is
    # scored by the model; the gate counts them as generated. (id, whether it ends the ids appended together)
    forced_queue: list[tuple[int, bool]] = field(default_factory=list)
    status: Status = Status.WAITING
    num_computed: int = 0
    num_cached: int = 0  # prompt tokens the prefix cache served at admission
    admissions: int = 0  # 1 + the times it was preempted and admitted again (recomputed)
    retractions: int = 0  # the times it was preempted (SGLang's total_retractions; counted when it happens)
    block_table: list[int] = field(default_factory=list)
    page_hashes: list[int] = field(default_factory=list)
    finish: FinishReason | None = None
    token_logprobs: list[tuple[float, int, None]] = field(default_factory=list)
    top_logprobs: list[list[tuple[float, int, None]]] = field(default_factory=list)
    # with return_logprob: prompt tokens logprob_start.. (the first one None: nothing before it is scored);
    # filled by the prefill, kept across a preemption's recompute
    input_token_logprobs: list[tuple[float | None, int, None]] = field(default_factory=list)
    input_top_logprobs: list[list[tuple[float, int, None]] | None] = field(default_factory=list)
    input_token_ranks: list[int | None] = field(default_factory=list)  # each scored token's rank in its row
    # with token_ids_logprob: per position, (logprob, id, None) of each of those ids (None where not scored)
    input_token_ids_logprobs: list[list[tuple[float, int, None]] | None] = field(default_factory=list)
    token_ids_logprobs: list[list[tuple[float, int, None]] | None] = field(default_factory=list)
    arrival: float = field(default_factory=time.perf_counter)  # when generate was called (its request's)
    scheduled_time: float | None = None  # first admitted to the running batch
    first_token_time: float | None = None
    last_token_time: float | None = None  # of the last step that appended to it (token gaps for /metrics)
    streamed_tokens: int = 0  # output tokens when its last streamed event went out (stream_interval)
    num_sampled: int = 0  # tokens that came out of a sampling step (the rest were forced / jumped)
    # streamed with logprobs: (len(detok.text), len(output_ids)) each time the text grew, so an event gives
    # the logprobs of the tokens whose text it shows
    text_marks: list[tuple[int, int]] = field(default_factory=list)
    # a stop regex that ran out of time on this output (detokenizer.StopRegexTimeout): the request ends
    stop_regex_error: str | None = None

    @property
    def tokens(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    def token_slice(self, start: int, end: int) -> list[int]:
        """tokens[start:end] without building the whole list (a decode step reads one output token)."""
        p = len(self.prompt_ids)
        if start >= p:
            return self.output_ids[start - p:end - p]
        return self.prompt_ids[start:end] + self.output_ids[: max(0, end - p)]

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def num_pending(self) -> int:
        return self.num_tokens - self.num_computed

    @property
    def next_prompt_logprob_position(self) -> int | None:
        """The position whose logits give the next prompt token's logprob (None: all are in, or none asked)."""
        if not self.return_logprob:
            return None
        position = self.logprob_start + len(self.input_token_logprobs) - 1
        return position if position < len(self.prompt_ids) - 1 else None

    def prompt_logprob_span(self, start: int, n: int) -> range:
        """The positions among [start, start + n) whose logits score a prompt token not scored yet."""
        first = self.next_prompt_logprob_position
        if first is None:
            return range(0)
        return range(max(start, first), min(start + n, len(self.prompt_ids) - 1))

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED

