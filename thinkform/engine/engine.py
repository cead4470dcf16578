"""Engine: owns the model, tokenizer, scheduler loop (a thread) and the sync, async and streaming APIs."""
from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import dataclasses
import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Iterable, Iterator

from thinkform.args import SECRET_ARGS, EngineArgs
from thinkform.engine.errors import DuplicateRequestId, EngineDead, EngineOverloaded, RequestFieldError
from thinkform.engine.heap import freeze_startup_heap
from thinkform.engine.loop import EngineLoop
from thinkform.engine.output import OutputEvent
from thinkform.engine.requests import LogprobOptions, PreparedRequest, RequestBuilder, naming_item
from thinkform.engine.sequence import Sequence
from thinkform.engine.setup import EngineParts, build_engine_parts, markup_id_sets

logger = logging.getLogger("thinkform")


# SGLang's Engine.generate keywords for what thinkform does not do (images, LoRA, custom logit processors,
# hidden states, disaggregation), each with the value that asks for none of it: code that passes them
# explicitly at such a value runs unchanged
SGLANG_NEUTRAL_KEYWORDS: dict[str, tuple[Any, ...]] = {
    "image_data": (None,), "audio_data": (None,), "video_data": (None,), "lora_path": (None,),
    "custom_logit_processor": (None,), "return_hidden_states": (False,), "return_routed_experts": (False,),
    "session_params": (None,), "external_trace_header": (None,), "bootstrap_host": (None,),
    "bootstrap_port": (None,), "bootstrap_room": (None,), "input_embeds": (None,), "cache_salt": (None,),
    # one engine, one data-parallel rank: rank 0 is this one (sgl-model-gateway's dp-aware mode sends it on
    # every request)
    "data_parallel_rank": (None, 0), "routed_dp_rank": (None, 0), "disagg_prefill_dp_rank": (None, 0),
    "session_id": (None,), "mm_hashes": (None,), "mm_content_hashes": (None,), "routed_experts_start_len": (None,),
    "kv_router_hint": (None,), "return_entropy": (False, None), "return_prompt_token_ids": (False, None),
}
# taken and ignored, as SGLang ignores them with its defaults (priority scheduling off)
SGLANG_IGNORED_KEYWORDS = frozenset({"priority"})


def check_sglang_keywords(method: str, given: dict[str, Any]) -> None:
    """A keyword SGLang's `method` does not take is a TypeError, as Python's own."""
    unexpected = next((name for name in given if name not in SGLANG_NEUTRAL_KEYWORDS
                       and name not in SGLANG_IGNORED_KEYWORDS), None)
    if unexpected is not None:
        raise TypeError(f"{method}() got an unexpected keyword argument {unexpected!r}")


def refuse_sglang_only(given: dict[str, Any]) -> None:
    """SGLang's generate keywords (SGLANG_NEUTRAL_KEYWORDS) pass at a value that asks for nothing, or a list
    of such (SGLang takes them per prompt too); any other value is a RequestFieldError naming the keyword: a
    request must not be answered silently without what it asked for."""
    for name, value in given.items():
        if name in SGLANG_IGNORED_KEYWORDS:
            continue
        neutral = SGLANG_NEUTRAL_KEYWORDS[name]
        if value not in neutral and not (isinstance(value, list) and all(v in neutral for v in value)):
            raise RequestFieldError(f"{name}: not supported by thinkform (leave it out or pass "
                                    f"{' or '.join(map(repr, neutral))}, or a list of it per prompt)", field=name)


@dataclass(frozen=True)
class TokenizerManagerView:
    tokenizer: Any
    server_args: EngineArgs


def _shutdown_at_exit(engine: "weakref.ref[Engine]") -> Callable[[], None]:
    def shutdown() -> None:
        live = engine()
        if live is not None:
            live.shutdown()
    return shutdown


@dataclass
class _Delivery:
    seq: Sequence
    event: OutputEvent
    finished: bool

    @property
    def output(self) -> dict[str, Any]:
        """The output dict, built on the reading thread (see OutputEvent)."""
        return self.event.build()


class _LiveRids:
    """Request ids in flight. A second request may not take one while it is (SGLang refuses duplicates
    too): an abort by rid would end both, and their outputs could not be told apart. Requests are prepared
    (tokenized, rendered) on a worker thread before they claim their ids: an abort that comes meanwhile, by
    the id the request gave or for all, is kept for the claim."""

    def __init__(self) -> None:
        self._unfinished: dict[str, int] = {}
        self._aborted: set[str] = set()  # asked to abort, maybe before the loop had its sequences
        self._preparing: dict[str, int] = {}  # ids given by requests still being prepared (how many)
        self._early: set[str] = set()  # of those, aborted before their claim
        self._epoch = 0  # abort_all calls so far: a request prepared across one is aborted at its claim
        self._lock = threading.Lock()

    def preparing(self, rids: list[str]) -> int:
        """A request giving these ids is being prepared; returns the abort_all epoch it began in."""
        with self._lock:
            for rid in rids:
                self._preparing[rid] = self._preparing.get(rid, 0) + 1
            return self._epoch

    def prepared(self, rids: list[str]) -> None:
        """The request that gave these ids claimed them, or failed before it could."""
        with self._lock:
            for rid in rids:
                left = self._preparing.get(rid, 0) - 1
                if left > 0:
                    self._preparing[rid] = left
                else:
                    self._preparing.pop(rid, None)
                    self._early.discard(rid)

    def claim(self, counts: dict[str, int], epoch: int | None = None) -> None:
        """Take each rid for its number of samples: all of them, or none. Ids aborted while their request was
        prepared (by id, or all since `epoch`) are in flight aborted."""
        with self._lock:
            taken = next((rid for rid in counts if rid in self._unfinished), None)
            if taken is not None:
                raise DuplicateRequestId(f"rid: {taken!r} is already the id of a request in flight")
            self._unfinished.update(counts)
            everything = epoch is not None and epoch != self._epoch
            self._aborted.update(rid for rid in counts if everything or rid in self._early)

    def __contains__(self, rid: str) -> bool:
        with self._lock:
            return rid in self._unfinished

    def mark_aborted(self, rid: str) -> bool:
        """Remember an abort of `rid` for its whole flight; False where no request of that id is in flight or
        being prepared."""
        with self._lock:
            if rid in self._unfinished:
                self._aborted.add(rid)
                return True
            if rid in self._preparing:
                self._early.add(rid)
                return True
            return False

    def abort_all(self) -> None:
        """Requests being prepared now are aborted at their claim (those in flight are aborted by id)."""
        with self._lock:
            self._epoch += 1

    def aborted(self, rid: str) -> bool:
        with self._lock:
            return rid in self._aborted

    def snapshot(self) -> list[str]:
        with self._lock:
            return list(self._unfinished)

    def release(self, rid: str, num_seqs: int = 1) -> None:
        with self._lock:
            left = self._unfinished.get(rid, 0) - num_seqs
            if left > 0:
                self._unfinished[rid] = left
            else:
                self._unfinished.pop(rid, None)
                self._aborted.discard(rid)


class Engine:
    """SGLang-shaped offline engine: `Engine(model_path=None, reasoning_parser=None, grammar_backend=...)`."""

    def __init__(self, model_path: str | None = None, reasoning_parser: str | None = None,
                 grammar_backend: str = "auto", **kwargs: Any) -> None:
        args = kwargs.pop("args", None) or EngineArgs.from_kwargs(
            model_path=model_path, reasoning_parser=reasoning_parser, grammar_backend=grammar_backend, **kwargs)
        self.args = args
        self._pid = os.getpid()
        self.loop = EngineLoop.start_with(lambda: build_engine_parts(args), args)
        try:
            self._set_up(args)
        except BaseException:  # Ctrl-C here too: no engine may run on that nobody holds
            self.loop.stop(timeout=0)
            raise

    def _set_up(self, args: EngineArgs) -> None:
        """What the engine keeps of its loop's parts, the hand-over of outputs, the heap freeze, the exit hook."""
        self.parts: EngineParts = self.loop.parts
        self.tokenizer = self.parts.tokenizer
        self.markers = self.parts.markers
        self.chat_template = self.parts.chat_template
        self.tool_chat_template = self.parts.tool_chat_template
        self.served_model_name = args.served_model_name or self.parts.model_name
        self.context_length = self.parts.context_length
        self.eos_token_ids = tuple(self.parts.eos_token_ids)
        self.builder = RequestBuilder(self.parts, args)
        self._live_rids = _LiveRids()
        # one engine step's outputs, handed over once all are built: to each event loop in one call, to
        # blocking callers' queues one by one (a consumer woken per output took the GIL back at the next
        # grammar call that releases it: a hand-off per token and request). Only the loop thread touches
        # them: the sinks and on_delivered both run there
        self._async_outbox: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, _Delivery]]] = {}
        self._sync_outbox: list[tuple[_Mailbox, _Delivery]] = []
        self.loop.on_delivered = self._hand_over
        self._heap = None if args.disable_gc_freeze else freeze_startup_heap(self)
        # as SGLang's engine: a script that ends without shutdown() stops the loop first (its daemon thread,
        # killed inside torch at interpreter exit, aborted the process: "terminate called without an active
        # exception", exit 134)
        self._at_exit = _shutdown_at_exit(weakref.ref(self))
        atexit.register(self._at_exit)

    @property
    def server_args(self) -> EngineArgs:
        """SGLang's name for the engine's arguments."""
        return self.args

    @property
    def tokenizer_manager(self) -> "TokenizerManagerView":
        """What SGLang scripts read through `engine.tokenizer_manager`: its tokenizer and server_args."""
        return TokenizerManagerView(self.tokenizer, self.args)

    @classmethod
    def from_args(cls, args: EngineArgs) -> "Engine":
        return cls(args=args)

    def token_bytes(self, token_id: int) -> bytes:
        """A token's own bytes (a character split over tokens: each token's part of it, where decoding the
        token alone gives U+FFFD): OpenAI's logprob `bytes`."""
        return self.parts.vocab.token_bytes[token_id]

    def set_tool_markup(self, spellings: Iterable[str]) -> None:
        """The strings of the tool-call format that reads this model's answers (the server's parser: tags such
        as Kimi-K2's `<|tool_call_begin|>`). The special tokens that spell them are markup: in a request that
        may call tools (a structural tag) they stay in the text under skip_special_tokens, where the parser
        must find them (elsewhere they stay hidden, as vLLM and SGLang hide them), and no constrained JSON
        value or call's arguments ever holds one, where the next turn would read it as markup. Applies to
        requests made after the call."""
        sets = markup_id_sets(self.tokenizer, self.markers, self.eos_token_ids, tuple(spellings))
        self.parts.tool_markup_ids, self.parts.markup_ids = sets["tool_markup_ids"], sets["markup_ids"]

    # -- lifecycle -------------------------------------------------------------------------------------------
    def shutdown(self) -> None:
        atexit.unregister(self._at_exit)
        self.loop.stop()
        self.parts.grammar_cache.close()
        if self._heap is not None:
            self._heap()  # unfreeze (once): the engine's startup objects may be collected again

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def is_healthy(self) -> bool:
        return self.loop.alive

    def abort(self, rid: str) -> bool:
        """Abort the request `rid`; False when no request of that id is in flight."""
        live = self._live_rids.mark_aborted(rid)  # one still compiling its grammar ends when it is submitted
        if live:  # an id no request holds now is no abort: sent on, it ended the next request to take that id
            self.loop.abort(rid)
        return live

    def abort_request(self, rid: str = "", abort_all: bool = False) -> bool:
        """SGLang's spelling: one request by rid, or with abort_all every request in flight."""
        if not abort_all:
            return self.abort(rid)
        self._live_rids.abort_all()
        rids = self._live_rids.snapshot()
        for live in rids:
            self.abort(live)
        return bool(rids)

    def flush_cache(self) -> bool:
        """Empty the prefix cache and the compiled-grammar cache (as SGLang's flush_cache); refused (False)
        while requests are in flight, whose pages and grammars are in use."""
        if self._live_rids.snapshot():
            return False
        if not self.loop.flush_prefix_cache():
            return False
        self.parts.grammar_cache.clear()
        return True

    def get_server_info(self) -> dict[str, Any]:
        return self.server_info()

    def get_model_info(self) -> dict[str, Any]:
        args = self.args
        # SGLang's keys, no others (its docs' example checks the set): the rest is in get_server_info
        return {"model_path": args.model_path or self.parts.model_name,
                "tokenizer_path": args.tokenizer_path or args.model_path or self.parts.model_name,
                "is_generation": True,
                # the weights are never swapped in place; the model's config
                "weight_version": "default", "preferred_sampling_params": args.preferred_sampling_params,
                "model_type": self.parts.model_type, "architectures": list(self.parts.architectures),
                "has_image_understanding": False, "has_audio_understanding": False}

    def server_info(self) -> dict[str, Any]:
        """The arguments (resolved where they were left to defaults), the loop's counters, and the keys SGLang
        clients read from /get_server_info (version, max_total_num_tokens, max_req_input_len, and
        internal_states: one entry per scheduler, whose last_gen_throughput SGLang's benchmarks print)."""
        from thinkform import __version__

        pool = self.parts.pool
        model = self.get_model_info()
        stats = self.loop.stats()
        internal = {"last_gen_throughput": stats["last_gen_throughput"],
                    "memory_usage": {"token_capacity": pool.token_capacity,
                                     "tokens_used": stats["kv_pages_used"] * pool.page_size}}
        return {**{k: v for k, v in vars(self.args).items() if k not in SECRET_ARGS}, **stats, "internal_states": [internal],
                "grammar_cache": dataclasses.asdict(self.parts.grammar_cache.stats()),
                "model_path": model["model_path"], "tokenizer_path": model["tokenizer_path"],
                "served_model_name": self.served_model_name, "model_name": self.served_model_name,
                "context_length": self.context_length, "version": __version__, "tp_size": 1, "dp_size": 1,
                "max_total_num_tokens": pool.token_capacity,
                "max_req_input_len": min(self.context_length, pool.token_capacity) - 1}

    # -- offline API ----------------------------------------------------------------------------------------
    def generate(self, prompt: str | list[str] | None = None, sampling_params: dict | list[dict] | None = None,
                 input_ids: list[int] | list[list[int]] | None = None, require_reasoning: bool = False,
                 stream: bool = False, rid: str | list[str] | None = None,
                 return_logprob: bool | list[bool] | None = False, top_logprobs_num: int | list[int] | None = 0,
                 reasoning_start: str | None = None,
                 logprob_start_len: int | list[int] | None = -1, return_text_in_logprobs: bool = False,
                 token_ids_logprob: list[int] | list[list[int]] | None = None, **sglang_only: Any) -> Any:
        """One prompt with n = 1 → a dict; otherwise a flat list grouped by prompt. stream=True → an iterator.

        As SGLang, return_logprob, top_logprobs_num and logprob_start_len are one value for all prompts or a
        list of one per prompt (not with n > 1), token_ids_logprob one list of ids or one list per prompt.

        An offline batch of any size is taken whole; `max_queued_requests` is backpressure for concurrent
        callers of async_generate (the servers). SGLang's other keywords (image_data, lora_path, ...) are
        accepted at the value that asks for nothing (None / False)."""
        check_sglang_keywords("generate", sglang_only)
        arrival = time.perf_counter()  # time to first token counts tokenizing and compiling the grammar too
        req = self._prepare(prompt, sampling_params, input_ids, require_reasoning, reasoning_start, rid, stream,
                            LogprobOptions(return_logprob, top_logprobs_num, logprob_start_len,
                                           return_text_in_logprobs, token_ids_logprob), sglang_only)
        req.arrival = arrival
        inbox = _Mailbox()
        self._check_alive()  # before the grammar compiles (its cache is closed too)
        with self._claimed(req):
            self._compile_sync(req)
            self._submit(req, lambda d: self._sync_outbox.append((inbox, d)), limit_queue=False)
        if stream:
            return _SyncStream(self, req, inbox)
        finals = []
        try:
            while len(finals) < req.num_seqs:
                d = inbox.get()
                if d.finished:
                    finals.append(d)
        except BaseException:  # Ctrl-C: nobody will read the rest, end the request
            self._abort_request(req)
            raise
        return self._shape(req, finals)

    async def async_generate(self, prompt: str | list[str] | None = None,
                             sampling_params: dict | list[dict] | None = None,
                             input_ids: list[int] | list[list[int]] | None = None, require_reasoning: bool = False,
                             stream: bool = False, rid: str | list[str] | None = None,
                             return_logprob: bool | list[bool] | None = False,
                             top_logprobs_num: int | list[int] | None = 0,
                             reasoning_start: str | None = None, logprob_start_len: int | list[int] | None = -1,
                             return_text_in_logprobs: bool = False,
                             token_ids_logprob: list[int] | list[list[int]] | None = None, **sglang_only: Any) -> Any:
        """As generate; with stream=True returns an async iterator of cumulative chunks. The request is prepared
        (tokenized, its stop patterns compiled, its constraint checked) on a worker thread: a large one must not
        hold up the event loop's other requests."""
        check_sglang_keywords("async_generate", sglang_only)
        arrival = time.perf_counter()
        given = [rid] if isinstance(rid, str) else [r for r in rid if isinstance(r, str)] if isinstance(rid, list) \
            else []
        epoch = self._live_rids.preparing(given)  # an abort meanwhile is kept for the claim (_claimed)
        try:
            req = await asyncio.to_thread(
                self._prepare, prompt, sampling_params, input_ids, require_reasoning, reasoning_start, rid, stream,
                LogprobOptions(return_logprob, top_logprobs_num, logprob_start_len, return_text_in_logprobs,
                               token_ids_logprob), sglang_only)
            req.arrival = arrival
        except BaseException:
            self._live_rids.prepared(given)
            raise
        req.given_rids, req.abort_epoch = given, epoch
        aloop = asyncio.get_running_loop()
        inbox: asyncio.Queue[_Delivery] = asyncio.Queue()

        def deliver(d: _Delivery) -> None:
            self._async_outbox.setdefault(aloop, []).append((inbox, d))

        self._check_alive()
        with self._claimed(req):
            await self._compile_async(req)
            self._submit(req, deliver)
        if stream:
            return self._stream_async(req, inbox)
        try:
            finals = []
            while len(finals) < req.num_seqs:
                d = await inbox.get()
                if d.finished:
                    finals.append(d)
        except BaseException:
            self._abort_request(req)
            raise
        return self._shape(req, finals)

    # -- internals ------------------------------------------------------------------------------------------
    def _hand_over(self) -> None:
        """This step's outputs to their callers (on the engine loop's thread): each event loop's in one call."""
        ready, self._sync_outbox = self._sync_outbox, []
        for inbox, d in ready:
            inbox.put(d)
        batches, self._async_outbox = self._async_outbox, {}
        for aloop, items in batches.items():
            try:
                aloop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # the callers' event loop is closed: nobody will read, end their requests
                for _, d in items:
                    if not d.finished:
                        self.loop.abort_seq(d.seq)

    def _prepare(self, prompt: Any, sampling_params: Any, input_ids: Any, require_reasoning: bool,
                 reasoning_start: str | None, rid: Any, stream: bool, logprobs: LogprobOptions,
                 sglang_only: dict[str, Any]) -> PreparedRequest:
        refuse_sglang_only(sglang_only)
        return self.builder.build(prompt, sampling_params, input_ids, require_reasoning, reasoning_start, rid,
                                  logprobs, stream)

    def _compile_sync(self, req: PreparedRequest) -> None:
        for item, c in req.constraints():
            with naming_item(item):
                req.compiled[c.key] = self.parts.grammar_cache.get(c)

    async def _compile_async(self, req: PreparedRequest) -> None:
        for item, c in req.constraints():
            with naming_item(item):
                req.compiled[c.key] = await asyncio.wrap_future(self.parts.grammar_cache.submit(c))

    def _check_alive(self) -> None:
        if os.getpid() != self._pid:  # a fork's copy has no loop thread (a data pipeline's worker pool)
            raise EngineDead(f"this engine belongs to process {self._pid}, and this is a fork of it: create the "
                             "Engine in the process that uses it")
        if not self.loop.alive:
            raise EngineDead(f"the engine is not running: {self.loop.error or 'shut down'}")

    def __reduce__(self) -> Any:
        raise TypeError("an Engine cannot be pickled (it holds a model, a thread and their state): create one in "
                        "the process that uses it")

    def _submit(self, req: PreparedRequest, deliver: Callable[[_Delivery], None], limit_queue: bool = True) -> None:
        self._check_alive()
        if limit_queue and self.loop.num_pending + req.num_seqs > self.args.max_queued_requests:
            raise EngineOverloaded(f"too many pending requests (max_queued_requests={self.args.max_queued_requests})")

        def sink(seq: Sequence, event: OutputEvent, finished: bool) -> None:
            if finished:
                self._live_rids.release(seq.rid)
            deliver(_Delivery(seq, event, finished))

        seqs = self.builder.sequences(req, sink)
        req.seqs = seqs
        self.loop.submit(seqs)
        for seq in seqs:  # aborted while its grammar compiled: the loop had nothing to end then
            if self._live_rids.aborted(seq.rid):
                self.loop.abort_seq(seq)

    @contextlib.contextmanager
    def _claimed(self, req: PreparedRequest) -> Iterator[None]:
        """The request's ids are in flight from before its grammars compile (an abort must find them), and
        free again if it never reaches the loop; once there, each finished sequence frees its own."""
        claims = {rid: p.n for rid, p in zip(req.rids, req.params)}
        try:
            self._live_rids.claim(claims, req.abort_epoch)
        finally:
            self._live_rids.prepared(req.given_rids)
        try:
            yield
        except BaseException:
            for rid, count in claims.items():
                self._live_rids.release(rid, count)
            raise

    def _abort_request(self, req: PreparedRequest) -> None:
        for seq in req.seqs:
            if not seq.finished:
                self.loop.abort_seq(seq)

    def _shape(self, req: PreparedRequest, finals: list[_Delivery]) -> Any:
        outputs = [d.output for d in sorted(finals, key=lambda d: d.seq.index)]
        for out in outputs:
            out.pop("index", None)
        return outputs[0] if req.single else outputs

    async def _stream_async(self, req: PreparedRequest, inbox: "asyncio.Queue[_Delivery]") -> AsyncIterator[dict]:
        done = 0
        try:
            while done < req.num_seqs:
                d = await inbox.get()
                done += d.finished
                yield _chunk(req, d)
        finally:
            if done < req.num_seqs:
                self._abort_request(req)


class _Mailbox:
    """A sync caller's deliveries. A reader that keeps up gets every chunk; one that falls behind by more than
    BACKLOG chunks of a sequence (a stream read late, or the second of two read one after the other) loses
    the oldest of them: chunks are cumulative, and each holds the text so far (one unread 16,000-token
    stream queued 1 GB of snapshots; SGLang's reader keeps only the newest). Finals always stay. The wait
    wakes every 0.1 s, so an interrupt (`_thread.interrupt_main`, an IDE's stop) gets through."""

    BACKLOG = 64

    def __init__(self) -> None:
        # in arrival order, each in a one-item list that a dropped chunk empties to [None]: a hand-over costs
        # O(1) on the engine's thread (a scan of the queue per chunk cost a 256-prompt stream 100 ms a step)
        self._items: collections.deque[list] = collections.deque()
        self._unread: dict[int, collections.deque[list]] = {}  # by id(seq): its unread non-final entries
        self._cond = threading.Condition()

    def put(self, d: _Delivery) -> None:
        with self._cond:
            entry = [d]
            if not d.finished:
                unread = self._unread.setdefault(id(d.seq), collections.deque())
                if len(unread) >= self.BACKLOG:
                    unread.popleft()[0] = None  # the oldest unread chunk of this sequence is dropped
                unread.append(entry)
            self._items.append(entry)
            self._cond.notify()

    def get(self) -> _Delivery:
        with self._cond:
            while True:
                while not self._items:
                    self._cond.wait(0.1)
                d = self._items.popleft()[0]
                if d is None:
                    continue
                if not d.finished:
                    unread = self._unread[id(d.seq)]
                    unread.popleft()
                    if not unread:
                        del self._unread[id(d.seq)]
                else:
                    self._unread.pop(id(d.seq), None)
                return d


class _SyncStream:
    """generate(stream=True)'s iterator of cumulative chunks. Dropped before its end, read half-way or never
    (a generator never started runs no `finally`), it ends its request: an unread stream ran to max_new_tokens."""

    def __init__(self, engine: Engine, req: PreparedRequest, inbox: _Mailbox) -> None:
        self._engine, self._req, self._inbox, self._done = engine, req, inbox, 0

    def __iter__(self) -> _SyncStream:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._done >= self._req.num_seqs:
            raise StopIteration
        try:
            d = self._inbox.get()
        except BaseException:
            self.close()
            raise
        self._done += d.finished
        return _chunk(self._req, d)

    def close(self) -> None:
        if self._done < self._req.num_seqs:
            self._done = self._req.num_seqs
            self._engine._abort_request(self._req)

    def __del__(self) -> None:
        self.close()


def _put_all(items: list[tuple[asyncio.Queue, _Delivery]]) -> None:
    for inbox, d in items:
        inbox.put_nowait(d)


def _chunk(req: PreparedRequest, d: _Delivery) -> dict[str, Any]:
    out = dict(d.output)
    if req.single:
        out.pop("index", None)
    return out

