"""A scripted stand-in for thinkform.Engine with the same contract, for fast routing / error tests.

Each request's output text comes from `reply(call) -> str` (call: the keyword arguments of
async_generate plus `index`); streams cut it into 3-character pieces (cumulative, as the engine sends).
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from thinkform.args import EngineArgs
from thinkform.engine.errors import EngineOverloaded
from thinkform.reasoning import get_markers, split_reasoning
from thinkform.structured.spec import constraint_from_fields
from thinkform.testing.tokenizers import build_tiny_tokenizer


def default_reply(call: dict[str, Any]) -> str:
    start = call.get("reasoning_start") or ("reasoning" if call.get("require_reasoning") else "answer")
    return ("Let me think.</think>\n\nParis" if start == "reasoning" else "Paris")


@dataclass
class FakeEngine:
    reasoning_parser: str | None = "deepseek-r1"
    reply: Callable[[dict[str, Any]], str] = default_reply
    finish_reason: dict[str, Any] = field(default_factory=lambda: {"type": "stop", "matched": None})
    chunk_delay_s: float = 0.0
    chunk_chars: int = 3  # characters of text each streamed chunk adds
    overloaded: bool = False
    healthy: bool = True
    tool_call_parser: str | None = None
    api_key: str | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    busy: bool = False  # requests in flight: flush_cache refuses, as the engine's
    flushes: int = 0  # flush_cache calls that flushed

    def __post_init__(self) -> None:
        self.args = EngineArgs(reasoning_parser=self.reasoning_parser, tool_call_parser=self.tool_call_parser,
                               api_key=self.api_key, max_n=8)
        self.tokenizer = build_tiny_tokenizer()
        self.chat_template = self.tokenizer.chat_template
        self.tool_chat_template = None
        self.markers = get_markers(self.reasoning_parser) if self.reasoning_parser else None
        self.served_model_name = "fake-model"
        self.context_length = 512

    def reset(self) -> None:
        """Back to the scripted defaults between tests that share one server."""
        self.reply, self.overloaded, self.healthy, self.busy, self.chunk_delay_s = default_reply, False, True, False, 0.0
        self.chunk_chars = 3
        self.context_length = 512
        self.calls.clear()
        self.aborted.clear()

    def is_healthy(self) -> bool:
        return self.healthy

    def token_bytes(self, token_id: int) -> bytes:
        return self.tokenizer.decode([token_id]).encode()

    def set_tool_markup(self, spellings: Any) -> None:
        self.tool_markup = tuple(spellings)  # the engine's: its tags' special tokens stay in the text

    def server_info(self) -> dict[str, Any]:
        return {"model_name": self.served_model_name, "num_running": 0, "running": 2 if self.busy else 0,
                "waiting": 1 if self.busy else 0, "kv_pages_used": 3, "page_size": 16,
                "served_model_name": self.served_model_name, "context_length": self.context_length,
                "reasoning_parser": self.reasoning_parser}

    def get_server_info(self) -> dict[str, Any]:
        return self.server_info()

    def get_model_info(self) -> dict[str, Any]:
        return {"model_path": "fake/model-path", "tokenizer_path": "fake/model-path", "is_generation": True}

    def abort(self, rid: str) -> bool:
        self.aborted.append(rid)
        return True

    def abort_request(self, rid: str = "", abort_all: bool = False) -> bool:
        """As the engine: one request, or every one in flight ("*" recorded for all)."""
        return self.abort("*" if abort_all else rid)

    def flush_cache(self) -> bool:
        if self.busy:
            return False
        self.flushes += 1
        return True

    async def async_generate(self, prompt: Any = None, sampling_params: Any = None, input_ids: Any = None,
                             require_reasoning: bool = False, reasoning_start: str | None = None,
                             stream: bool = False, rid: Any = None, return_logprob: bool = False,
                             top_logprobs_num: int = 0, logprob_start_len: Any = -1,
                             return_text_in_logprobs: bool = False, token_ids_logprob: Any = None) -> Any:
        call = dict(prompt=prompt, sampling_params=sampling_params, input_ids=input_ids,
                    require_reasoning=require_reasoning, reasoning_start=reasoning_start, stream=stream, rid=rid,
                    return_logprob=return_logprob, top_logprobs_num=top_logprobs_num,
                    logprob_start_len=logprob_start_len, return_text_in_logprobs=return_text_in_logprobs)
        self.calls.append(call)
        if self.overloaded:
            raise EngineOverloaded("too many pending requests", retry_after_s=2)
        params = sampling_params or {}
        for p in params if isinstance(params, list) else [params]:
            constraint_from_fields(**{k: p.get(k) for k in ("json_schema", "regex", "ebnf", "structural_tag")})
        single = isinstance(prompt, str) or (input_ids is not None and input_ids and isinstance(input_ids[0], int))
        num_prompts = 1 if single else len(prompt if prompt is not None else input_ids)
        n = (params if isinstance(params, dict) else params[0]).get("n", 1)
        outs = [self._output({**call, "index": i}, rid, i) for i in range(num_prompts * n)]
        if stream:
            return self._stream(outs)
        if self.chunk_delay_s:
            await asyncio.sleep(self.chunk_delay_s * 20)
        finals = [{k: v for k, v in o.items() if k != "index"} for o in outs]
        return finals[0] if single and n == 1 else finals

    def _output(self, call: dict[str, Any], rid: Any, index: int) -> dict[str, Any]:
        text = self.reply(call)
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        start = call.get("reasoning_start") or ("reasoning" if call.get("require_reasoning") else "answer")
        meta: dict[str, Any] = {
            "id": rid if isinstance(rid, str) else f"fake-{index}",
            "finish_reason": dict(self.finish_reason), "prompt_tokens": 7,
            "completion_tokens": len(ids), "cached_tokens": 2, "reasoning_tokens": 0, "e2e_latency": 0.01,
            "constraint_satisfied": None}
        if self.markers is not None and start != "answer":
            params = call.get("sampling_params") or {}
            tagged = any(p.get("structural_tag") for p in (params if isinstance(params, list) else [params]))
            reasoning, content = split_reasoning(text, self.markers.for_answer(tagged), start == "reasoning")
            meta.update(reasoning_content=reasoning, content=content, reasoning_tokens=3 if reasoning else 0)
        if call.get("return_logprob"):
            # a value per position, so a test sees entries out of order or twice
            meta["output_token_logprobs"] = [(-0.5 - k / 64, t, None) for k, t in enumerate(ids)]
            meta["output_top_logprobs"] = [[(-0.5 - k / 64, t, None)] * call["top_logprobs_num"]
                                           for k, t in enumerate(ids)]
            meta.update(self._prompt_logprobs(call, index))
        return {"index": index, "text": text, "output_ids": ids, "meta_info": meta}

    def _prompt_logprobs(self, call: dict[str, Any], index: int) -> dict[str, Any]:
        """As the engine: the prompt's tokens from logprob_start_len (-1: the last), the first one unscored."""
        prompts = call["prompt"] if call["prompt"] is not None else call["input_ids"]
        single = isinstance(prompts, str) or (prompts and isinstance(prompts[0], int))
        prompt = prompts if single else prompts[index % len(prompts)]
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        start = call["logprob_start_len"]
        start = len(ids) - 1 if start in (-1, None) else start
        scored = [(None, ids[start], None)] + [(-2.0 - k / 64, t, None) for k, t in enumerate(ids[start + 1:])]
        top = [None] + [[(-1.0, 7, None)] * call["top_logprobs_num"] for _ in ids[start + 1:]]
        return {"input_token_logprobs": scored, "input_top_logprobs": top}

    def _shown_logprobs(self, meta: dict[str, Any], out: dict[str, Any], shown: int) -> None:
        """As the engine: a streamed event carries the logprobs of the tokens whose text it shows (cumulative)."""
        ids, count = out["output_ids"], 0
        while count < len(ids) and len(self.tokenizer.decode(ids[:count + 1])) <= shown:
            count += 1
        meta["output_token_logprobs"] = out["meta_info"]["output_token_logprobs"][:count]
        meta["output_top_logprobs"] = out["meta_info"]["output_top_logprobs"][:count]
        meta["input_token_logprobs"] = out["meta_info"]["input_token_logprobs"]
        meta["input_top_logprobs"] = out["meta_info"]["input_top_logprobs"]

    def _running_meta(self, out: dict[str, Any], shown: str) -> dict[str, Any]:
        """As the engine: an unfinished event carries the counts so far (cumulative)."""
        whole = out["meta_info"]
        return {"id": whole["id"], "finish_reason": None, "prompt_tokens": whole["prompt_tokens"],
                "completion_tokens": len(self.tokenizer.encode(shown, add_special_tokens=False)),
                "cached_tokens": whole["cached_tokens"], "reasoning_tokens": 0}

    async def _stream(self, outs: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
        for out in outs:
            text = out["text"]
            step = self.chunk_chars
            for end in range(step, len(text) + step, step):
                if self.chunk_delay_s:
                    await asyncio.sleep(self.chunk_delay_s)
                last = end >= len(text)
                meta = dict(out["meta_info"]) if last else self._running_meta(out, text[:end])
                if not last and "output_token_logprobs" in out["meta_info"]:
                    self._shown_logprobs(meta, out, end)
                yield {"index": out["index"], "text": text[:end], "output_ids": out["output_ids"], "meta_info": meta}
