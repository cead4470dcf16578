"""Builds what an engine is made of from its arguments: model, tokenizer, KV cache, grammar machinery."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from thinkform.args import EngineArgs
from thinkform.engine.kv_cache import KVCache, PagePool
from thinkform.engine.sampling_params import SamplingParams
from thinkform.models.config import ModelConfig
from thinkform.models.decoder import DecoderLM
from thinkform.models.loader import load_model
from thinkform.reasoning import ReasoningMarkers, get_markers
from thinkform.structured.backends import create_backend
from thinkform.structured.backends.base import BackendContext, GrammarBackend
from thinkform.structured.bitmask import CombinedKeeps
from thinkform.structured.cache import GrammarCache
from thinkform.structured.closing import ClosingRules
from thinkform.structured.ending import EndingSearch
from thinkform.structured.runaway import NumberRules
from thinkform.structured.utf8 import Utf8Rules
from thinkform.structured.spec import GrammarOptions
from thinkform.structured.vocab import special_token_ids, TokenVocab

logger = logging.getLogger("thinkform")

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
           "half": torch.float16, "float": torch.float32}  # the last two: SGLang's and vLLM's spellings
# SGLang's attention kernels: each is a faster way to the same attention, so its scripts start here with ours
_SGLANG_ATTENTION_BACKENDS = {"torch_native": "torch", "flex_attention": "torch", **{name: "auto" for name in (
    "flashinfer", "fa3", "fa4", "flashmla", "cutlass_mla", "trtllm_mha", "trtllm_mla", "aiter", "wave",
    "dual_chunk_flash_attn", "intel_amx", "ascend", "nsa")}}
_CPU_DEFAULT_KV_TOKENS = 16384  # tokens at least, where memory allows; a longer context gets its own length


@dataclass
class EngineParts:
    model: torch.nn.Module
    tokenizer: Any
    chat_template: str | None
    markers: ReasoningMarkers | None
    model_name: str
    model_dir: str  # where the weights were read from (the safetensors copy for a GGUF)
    context_length: int
    device: torch.device
    eos_token_ids: tuple[int, ...]
    vocab_size: int
    vocab: TokenVocab
    number_rules: NumberRules  # per-vocabulary tables of the JSON number guard
    utf8_rules: Utf8Rules  # per-vocabulary masks that keep constrained answers well-formed UTF-8
    closing_rules: ClosingRules  # per-vocabulary tiers that steer a JSON answer to its end near the budget
    ending_search: EndingSearch  # finds a regex / EBNF answer's ending near the budget
    combined_keeps: CombinedKeeps  # the guards' keep masks ANDed per combination of states, for all requests
    hidden_ids: frozenset[int]  # special tokens hidden from text (reasoning markers are never hidden)
    markup_ids: frozenset[int]  # special tokens of the family's markup (reasoning, tool calls): never inside JSON
    tool_markup_ids: frozenset[int]  # special tokens of the tool-call format: shown where a request may call tools
    grammar_options: GrammarOptions
    grammar_backend: GrammarBackend
    grammar_cache: GrammarCache
    kv: KVCache
    pool: PagePool
    small_steps: Any = None  # CudaStepRunner on CUDA with the Triton backend, else None
    # what a request's unset sampling params default to: the model's generation_config.json (unless
    # --sampling-defaults openai), then --preferred-sampling-params
    sampling_defaults: dict[str, Any] = field(default_factory=dict)
    model_type: str = ""  # the HF config's, for /get_model_info
    architectures: tuple[str, ...] = ()
    tool_chat_template: str | None = None  # the tokenizer's "tool_use" template, where it names templates


def _sampling_defaults(args: EngineArgs, model_defaults: dict[str, Any]) -> dict[str, Any]:
    preferred = args.preferred_params()
    try:
        SamplingParams.from_dict(preferred)  # a bad preferred value fails the start, not every request
    except ValueError as e:
        raise ValueError(f"preferred_sampling_params: {e}") from None
    defaults = {**(_valid_model_defaults(model_defaults) if args.sampling_defaults == "model" else {}), **preferred}
    if defaults:
        logger.info("sampling defaults for requests that do not set them: %s", defaults)
    return defaults


def _valid_model_defaults(model_defaults: dict[str, Any]) -> dict[str, Any]:
    """The generation config's values a request could have given; another (top_p 0) is left out with a
    warning: a model file must not make the model unservable."""
    kept = {}
    for key, value in model_defaults.items():
        try:
            SamplingParams.from_dict({key: value})
        except ValueError as e:
            logger.warning("generation_config.json: %s=%r is not used as a default (%s)", key, value, e)
            continue
        kept[key] = value
    return kept


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype | None:
    if name == "auto":
        return None  # the loader picks: float32 on CPU, bfloat16 (or float16) on CUDA
    if name not in _DTYPES:
        raise ValueError(f"dtype: unknown dtype {name!r} (choose from auto, {', '.join(_DTYPES)})")
    return _DTYPES[name]


def build_engine_parts(args: EngineArgs) -> EngineParts:
    device = resolve_device(args.device)
    if device.type == "cuda" and device.index is not None:
        # this (the engine's) thread's current device: events, streams and graph captures that name none go
        # there, and the step's reads wait on them (on cuda:1 they went to cuda:0's idle stream)
        torch.cuda.set_device(device)
    loaded = load_model(args.model_path, resolve_dtype(args.dtype, device), str(device), args.quantization)
    tok = loaded.tokenizer
    if args.tokenizer_path:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(args.tokenizer_path)
    cfg = loaded.config
    markers = get_markers(args.reasoning_parser) if args.reasoning_parser else None
    context = served_context(args.context_length, cfg)
    options = GrammarOptions(any_whitespace=args.json_any_whitespace, max_number_digits=args.max_number_digits,
                             compile_timeout_s=args.grammar_compile_timeout)
    vocab = TokenVocab.from_tokenizer(tok, cfg.vocab_size, loaded.eos_token_ids)
    backend = create_backend(args.grammar_backend, BackendContext(tok, cfg.vocab_size, loaded.eos_token_ids, options))
    ending_search = EndingSearch(vocab)
    kv, pool = _build_kv(args, loaded.model, cfg, device, context)
    small_steps = _cuda_kernels(args, loaded.model, kv, device, context)
    given_template = _chat_template(args.chat_template)
    return EngineParts(
        model=loaded.model, tokenizer=tok, chat_template=given_template or loaded.chat_template,
        tool_chat_template=None if given_template else loaded.tool_chat_template, markers=markers,
        model_name=loaded.served_name, model_dir=loaded.model_path, context_length=context, device=device,
        eos_token_ids=tuple(loaded.eos_token_ids), vocab_size=cfg.vocab_size, vocab=vocab,
        number_rules=NumberRules.from_options(vocab.token_bytes, options), utf8_rules=Utf8Rules(vocab.token_bytes),
        closing_rules=ClosingRules(vocab.token_bytes, vocab.eos_token_ids), ending_search=ending_search,
        combined_keeps=CombinedKeeps(),
        **markup_id_sets(tok, markers, loaded.eos_token_ids),
        grammar_options=options, grammar_backend=backend,
        grammar_cache=GrammarCache(backend, before_handout=ending_search.measure), kv=kv, pool=pool,
        sampling_defaults=_sampling_defaults(args, loaded.generation_defaults),
        model_type=cfg.model_type, architectures=(cfg.arch,),
        small_steps=small_steps)


def attention_backend(name: str, device: torch.device) -> str:
    if name in _SGLANG_ATTENTION_BACKENDS:
        logger.info("attention_backend %r is SGLang's kernel; thinkform's %s serves it", name,
                    _SGLANG_ATTENTION_BACKENDS[name])
        name = _SGLANG_ATTENTION_BACKENDS[name]
    if name not in ("auto", "triton", "torch"):
        raise ValueError(f"attention_backend: unknown backend {name!r} (choose from auto, triton, torch)")
    if name == "triton" and device.type != "cuda":
        raise ValueError(f"attention_backend: triton needs a CUDA device, not {device.type}")
    if name == "auto":
        return "triton" if device.type == "cuda" else "torch"
    return name


def _cuda_kernels(args: EngineArgs, model: torch.nn.Module, kv: KVCache, device: torch.device,
                  context: int) -> Any:
    """On CUDA: Triton kernels in the layers, and small steps through CUDA graphs. Imported only here."""
    if attention_backend(args.attention_backend, device) != "triton" or not isinstance(model, DecoderLM):
        return None
    from thinkform.engine.graph_runner import CudaStepRunner
    from thinkform.kernels.ops import TritonOps

    # the GEMV's tilings are timed (and only pay off) as graph replays: eager steps keep cuBLAS
    model.ops = TritonOps(gemv=not (args.disable_gemv or args.disable_cuda_graph))
    model.rotary.cache_positions(context, next(model.parameters()).dtype, device)
    return CudaStepRunner(model, kv, device, max_tokens=args.cuda_graph_max_bs,
                          max_pages=-(-context // args.page_size), max_seqs=args.max_running_requests,
                          use_graphs=not args.disable_cuda_graph)


def _build_kv(args: EngineArgs, model: torch.nn.Module, cfg: Any, device: torch.device,
              context: int) -> tuple[KVCache, PagePool]:
    dtype = next(model.parameters()).dtype
    per_token = KVCache.bytes_per_token(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, dtype)
    tokens = args.max_total_tokens or _auto_kv_tokens(args, device, per_token, context)
    pages = max(1, tokens // args.page_size)
    held = pages * args.page_size
    logger.info("KV cache: %d pages x %d tokens (%.1f MiB)", pages, args.page_size, held * per_token / 2**20)
    if held < context:
        logger.warning("the KV cache holds %d tokens, fewer than the context length %d: longer requests are "
                       "refused (raise --max-total-tokens)", held, context)
    kv = KVCache(cfg.num_layers, pages, args.page_size, cfg.num_kv_heads, cfg.head_dim, dtype, device)
    return kv, PagePool(pages, args.page_size, prefix_caching=not args.disable_radix_cache)


def _auto_kv_tokens(args: EngineArgs, device: torch.device, per_token: int, context: int) -> int:
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        budget = free - total * (1 - args.mem_fraction_static)
        return max(context, int(budget // per_token))
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        ram = 8 * 2**30
    # one whole context (a 32k reasoning model's prompt and thinking) where a tenth of the memory holds it
    return max(min(context, 8192), min(max(context, _CPU_DEFAULT_KV_TOKENS), int(ram * 0.1 // per_token)))


LONGER_CONTEXT_ENV = "SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN"  # SGLang's: serve past the model's positions


def model_positions(cfg: ModelConfig) -> int:
    """The positions the model serves, as SGLang counts them: max_position_embeddings, times a rope scaling's
    factor where the scaling does not name its original length (linear, dynamic; not Llama 3's)."""
    scaling = cfg.rope_scaling or {}
    factor = scaling.get("factor")
    if isinstance(factor, (int, float)) and factor > 1 and "original_max_position_embeddings" not in scaling \
            and cfg.rope_type != "llama3":
        return int(cfg.max_position_embeddings * factor)
    return cfg.max_position_embeddings


def served_context(given: int | None, cfg: ModelConfig) -> int:
    """The context length served: --context-length, else the model's; no longer than a sliding attention
    window, over which thinkform attends in full (exact only up to the window: past it the output would
    differ from the model's)."""
    window, wanted = cfg.sliding_window, given or cfg.max_position_embeddings
    positions = model_positions(cfg)
    if given and given > positions and os.environ.get(LONGER_CONTEXT_ENV, "").lower() not in ("1", "true"):
        raise ValueError(f"context_length: {given} is longer than the model's {positions} positions "
                         f"(max_position_embeddings and its rope scaling): its outputs past them would be wrong; "
                         f"give at most {positions}, or set {LONGER_CONTEXT_ENV}=1 as in SGLang")
    if window is None or wanted <= window:
        return wanted
    if given:
        raise ValueError(f"context_length: {given} is longer than the model's sliding attention window ({window} "
                         "tokens); thinkform attends over the full context, which matches the model only up to the "
                         f"window: give at most {window}")
    logger.warning("%s: sliding attention window of %d tokens: the context is served up to it (thinkform attends "
                   "in full, exact only within the window)", cfg.arch, window)
    return window


def _chat_template(value: str | None) -> str | None:
    """--chat-template: a Jinja file, or the template's text (vLLM's rule: text has a brace or a line break;
    anything else is a path that does not exist, which became every prompt's whole text)."""
    if not value:
        return None
    if os.path.isfile(value):
        if value.endswith(".json"):
            raise ValueError(f"chat_template: {value!r} is a JSON file (SGLang's conversation-template format, "
                             "not supported); give a Jinja chat template file")
        with open(value, encoding="utf-8") as f:
            return f.read()
    if not any(c in value for c in "{}\n"):
        raise ValueError(f"chat_template: {value!r} is neither a file nor a Jinja template (built-in template "
                         "names such as SGLang's are not supported; give a Jinja chat template file)")
    return value


def markup_id_sets(tok: Any, markers: ReasoningMarkers | None, eos_token_ids: Any,
                   tool_markup: tuple[str, ...] = ()) -> dict[str, frozenset[int]]:
    """EngineParts' `hidden_ids`, `tool_markup_ids` and `markup_ids`. skip_special_tokens hides the special
    tokens but those of the model's markup: its reasoning markers' always (gpt-oss: a hidden `<|start|>` left
    "assistant" in the reasoning text), its tool-call format's (`tool_markup`, the strings the server's parser
    reads) where the request may call tools (Kimi-K2: a hidden `<|tool_call_begin|>` left the parser a call it
    could not read). Every special token stays out of JSON values and grammar answers (`markup_ids`): the
    markup's would frame them wrong, and a hidden one leaves the text short of what the grammar counted
    (audit 30: xgrammar spells `<|im_start|>` as its text, so `{"tag": "<|im_start|>"}` for `^<[a-z_|]+>$`
    came back as `{"tag": ""}` with constraint_satisfied true)."""
    special = special_token_ids(tok)
    reasoning = _markup_ids(tok, special, markers.spellings if markers is not None else ())
    tools = _markup_ids(tok, special, tool_markup) - reasoning
    return {"hidden_ids": frozenset(special - reasoning), "tool_markup_ids": tools,
            "markup_ids": _json_banned_markup(tok, markers, frozenset(special), eos_token_ids)}


def _markup_ids(tok: Any, special: set[int], spellings: tuple[str, ...]) -> frozenset[int]:
    """Special tokens that spell part of the markup's strings (a marker, gpt-oss's `<|channel|>`)."""
    return frozenset(tid for tid in special if (text := tok.convert_ids_to_tokens(tid))
                     and any(text in spelled for spelled in spellings))


def _json_banned_markup(tok: Any, markers: ReasoningMarkers | None, markup: frozenset[int],
                        eos_token_ids: Any) -> frozenset[int]:
    """Of the `markup` tokens, those an answer must be kept from by a guard: not EOS, and not a one-token
    start or end marker, which the gate keeps out of every answer itself (deepseek-r1's `<think>`: no guard
    at all)."""
    own = {markers.start, markers.end} if markers is not None else set()
    return frozenset(t for t in markup - set(eos_token_ids) if tok.convert_ids_to_tokens(t) not in own)
