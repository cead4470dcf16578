"""One dataclass of engine/server arguments and its argparse; nothing else parses flags."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("thinkform")

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
# The values a choice flag takes, checked when the arguments are built (the command line's, through argparse's
# `choices` as SGLang's; Engine(...)'s keywords in __post_init__): a typo fails the start, naming the flag, instead
# of failing the model's load minutes later or being ignored. They mirror what the engine reads
# (engine/setup.py's dtypes and attention backends, models/quant.py's QUANTIZATIONS; a test keeps them equal).
DTYPES = ("auto", "float32", "float16", "bfloat16", "float64", "half", "float")  # half, float: SGLang's spellings
# ours, then SGLang's kernels, each served by ours (engine/setup.py maps them)
ATTENTION_BACKENDS = ("auto", "triton", "torch", "torch_native", "flex_attention", "flashinfer", "fa3", "fa4",
                      "flashmla", "cutlass_mla", "trtllm_mha", "trtllm_mla", "aiter", "wave", "dual_chunk_flash_attn",
                      "intel_amx", "ascend", "nsa")
QUANTIZATIONS = ("auto", "none", "int4")
SAMPLING_DEFAULTS = ("model", "openai")
DEVICES = ("auto", "cpu", "cuda", "cuda:N")
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
# SGLang's own choices for flags that change nothing here (its server_args.py, every value of its versions)
SCHEDULE_POLICIES = ("lpm", "random", "fcfs", "dfs-weight", "lof", "priority", "routing-key")
SAMPLING_BACKENDS = ("flashinfer", "pytorch", "ascend")
SECRET_ARGS = ("api_key", "admin_api_key")  # never shown in server info
# SGLang's other spellings of our flags
FLAG_ALIASES = {"model_path": ("--model",)}


@dataclass
class EngineArgs:
    model_path: str | None = field(default=None, metadata={"help": "HF directory or .gguf file; default: the embedded SmolLM2-135M-Instruct"})
    tokenizer_path: str | None = field(default=None, metadata={"help": "tokenizer directory (default: the model's)"})
    served_model_name: str | None = field(default=None, metadata={"help": "model name reported by /v1/models (default: the model path)"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind"})
    port: int = field(default=30000, metadata={"help": "port to bind"})
    reasoning_parser: str | None = field(default=None, metadata={"help": "reasoning family: deepseek-r1, qwen3, qwen3-thinking, qwq, deepseek-v3, glm45, kimi, kimi_k2, interns1, mistral, gpt-oss, minimax, step3, step3p5, mimo, nemotron_3, nano_v3, olmo3, minimax-append-think"})
    grammar_backend: str = field(default="auto", metadata={"help": "auto (xgrammar, falling back to llguidance where xgrammar would not enforce a constraint) | xgrammar | llguidance | outlines | none"})
    tool_call_parser: str | None = field(default=None, metadata={"help": "qwen25 | qwen | hermes | llama3 | deepseekv3 | deepseekv31 | deepseekv32 | deepseekv4 | kimi_k2 | qwen3_coder | step3p5 | mimo | glm45 | glm | glm47 | minimax-m2 | interns1 | gpt-oss | mistral | pythonic (default: guessed from the chat template)"})
    max_reasoning_tokens: int | None = field(default=None, metadata={"help": "default thinking budget per request (tokens); the end marker is forced when reached"})
    api_key: str | None = field(default=None, metadata={"help": "require 'Authorization: Bearer KEY' on every route but /health (the admin routes take --admin-api-key instead, where it is set)"})
    admin_api_key: str | None = field(default=None, metadata={"help": "as SGLang's: the admin routes (/flush_cache, /abort_request, SGLang's weight-update and memory routes) require this key instead of --api-key; the other routes keep --api-key's rule"})
    log_level: str = field(default="info", metadata={"help": "debug | info | warning | error"})
    log_requests: bool = field(default=False, metadata={"help": "log each finished request's details at info, as SGLang's (see --log-requests-level)"})
    log_requests_level: int = field(default=2, metadata={"help": "with --log-requests: 0 = id, finish reason, token counts; 1 = and the sampling params; 2 = and the prompt and output, up to 2048 characters each; 3 = all of them"})
    context_length: int | None = field(default=None, metadata={"help": "max prompt + output tokens (default: the model's)"})
    dtype: str = field(default="auto", metadata={"help": "auto | float32 | float16 | bfloat16 | float64 (half, float: SGLang's names of float16, float32)", "choices": DTYPES, "what": "dtype"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})
    quantization: str = field(default="auto", metadata={"help": "auto | none | int4: weight-only int4 (groups of 32) on a CPU in bfloat16; auto = int4 where the GGUF's layer weights are Q4_1 (int4 holds them exactly) and the CPU runs bfloat16, else none", "choices": QUANTIZATIONS, "what": "value"})
    attention_backend: str = field(default="auto", metadata={"help": "auto | triton | torch: triton = thinkform's Triton kernels (paged attention, fused norm/rotary/activation; CUDA only); torch = SDPA and plain torch ops; auto = triton on CUDA, torch elsewhere", "choices": ATTENTION_BACKENDS, "what": "backend"})
    disable_cuda_graph: bool = field(default=False, metadata={"help": "run every CUDA step eagerly instead of replaying captured CUDA graphs"})
    cuda_graph_max_bs: int = field(default=256, metadata={"help": "largest step, in tokens (decodes plus the extends riding with them), run through a CUDA graph"})
    disable_gemv: bool = field(default=False, metadata={"help": "GPU: one-token linear layers always on cuBLAS (by default each weight shape takes the faster of cuBLAS and a Triton GEMV, timed at start; with CUDA graphs only)"})
    disable_overlap_schedule: bool = field(default=False, metadata={"help": "GPU: wait for the CPU to append each step's tokens before launching the next decode step (by default the next step runs while it does)"})
    disable_gc_freeze: bool = field(default=False, metadata={"help": "leave the objects alive at the engine's start in the garbage collector's full walks (by default they are frozen once it has started: a walk of them paused every thread for 0.14-0.19 s and reclaimed nothing)"})
    disable_sparse_logits: bool = field(default=False, metadata={"help": "CPU: compute every constrained row's full logits, even where the grammar allows a few tokens (by default only those tokens' logits are computed)"})
    max_running_requests: int = field(default=64, metadata={"help": "max requests decoded together"})
    max_total_tokens: int | None = field(default=None, metadata={"help": "KV cache capacity in tokens (default: from memory)"})
    mem_fraction_static: float = field(default=0.85, metadata={"help": "GPU: fraction of memory for weights + KV cache"})
    page_size: int = field(default=16, metadata={"help": "tokens per KV cache page"})
    chunked_prefill_size: int = field(default=512, metadata={"help": "max prompt tokens prefilled in one step (-1: no chunking, a whole prompt at once, as SGLang's -1)"})
    chat_template: str | None = field(default=None, metadata={"help": "Jinja chat template file or string (default: the model's)"})
    max_queued_requests: int = field(default=1024, metadata={"help": "pending requests before the server answers 503"})
    stream_interval: int = field(default=1, metadata={"help": "a stream sends its text every this many tokens (the first token's at once, and the end); a request's sampling_params.stream_interval overrides it"})
    max_n: int = field(default=16, metadata={"help": "largest n (parallel samples) per request"})
    max_new_tokens_limit: int = field(default=32768, metadata={"help": "largest max_new_tokens / max_tokens a request may ask for (larger: 400)"})
    allowed_origins: str = field(default='["*"]', metadata={"help": "JSON list of the web origins a browser may call this server from (CORS), as vLLM's; \"[]\": none (default: any, as SGLang and vLLM)"})
    max_request_body_bytes: int = field(default=8 * 2**20, metadata={"help": "largest HTTP request body in bytes (larger: 413)"})
    max_constraint_bytes: int = field(default=512 * 2**10, metadata={"help": "largest json_schema / regex / ebnf / structural_tag, in UTF-8 bytes (larger: 400)"})
    max_constraint_depth: int = field(default=64, metadata={"help": "deepest nesting of a constraint: JSON levels of a schema or tag, brackets of a regex or grammar (deeper: 400)"})
    max_constraint_repeat: int = field(default=100000, metadata={"help": "largest text a constraint may force through repetition counts (regex/EBNF {n,m}, JSON schema minItems/minLength), nested counts multiplied (larger: 400)"})
    answer_reserve_tokens: int | None = field(default=None, metadata={"help": "tokens kept for the answer (default min(128, max_new_tokens/4), raised to the grammar's shortest answer plus the closing reserve where that is longer)"})
    json_any_whitespace: bool = field(default=False, metadata={"help": "allow flexible (bounded) whitespace in JSON answers"})
    max_number_digits: int = field(default=17, metadata={"help": "max significant digits of a JSON number in constrained answers"})
    grammar_compile_timeout: float = field(default=30.0, metadata={"help": "seconds before a grammar compile fails its request"})
    disable_jump_forward: bool = field(default=False, metadata={"help": "turn off jump-forward decoding of grammar-forced text"})
    disable_radix_cache: bool = field(default=False, metadata={"help": "turn off prefix caching"})
    graceful_shutdown_timeout: float = field(default=30.0, metadata={"help": "seconds in-flight requests may take to finish on SIGTERM / Ctrl-C before they are aborted"})
    health_generate_timeout: float = field(default=20.0, metadata={"help": "seconds /health_generate waits for its one-token request (or for the engine to take a step, when busy) before it answers 503 (SGLang's default)"})
    random_seed: int | None = field(default=None, metadata={"help": "seeds the seeds of requests without one, in the order they come (default: fresh random seeds)"})
    sampling_defaults: str = field(default="model", metadata={"help": "model | openai: where a request's unset temperature, top_p, top_k, min_p and repetition_penalty come from: the model's generation_config.json (as SGLang and vLLM), or the OpenAI defaults", "choices": SAMPLING_DEFAULTS, "what": "value"})
    preferred_sampling_params: str | None = field(default=None, metadata={"help": "JSON object of sampling params that every request gets unless it sets them (over the model's defaults)"})

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_choice(f.name, getattr(self, f.name), f.metadata.get("choices"), f.metadata.get("what", "value"))
        if not _DEVICE.fullmatch(str(self.device)):  # a torch.device reads as its name
            raise ValueError(f"device: unknown device {self.device!r} (choose from {', '.join(DEVICES)})")
        if not isinstance(self.stream_interval, int) or isinstance(self.stream_interval, bool) \
                or self.stream_interval < 1:
            raise ValueError(f"stream_interval: must be an integer >= 1, got {self.stream_interval!r}")
        if self.max_running_requests < 1:
            raise ValueError(f"max_running_requests: must be >= 1, got {self.max_running_requests}")
        if self.log_level.lower() not in LOG_LEVELS:
            raise ValueError(f"log_level: {self.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
        if self.log_requests_level not in (0, 1, 2, 3):
            raise ValueError(f"log_requests_level: must be 0, 1, 2 or 3, got {self.log_requests_level!r}")
        if self.page_size < 1:
            raise ValueError(f"page_size: must be >= 1, got {self.page_size}")
        if self.context_length is not None and self.context_length < 1:
            raise ValueError(f"context_length: must be >= 1 (or left out for the model's), got {self.context_length}")
        if self.chunked_prefill_size < 1 and self.chunked_prefill_size != -1:
            raise ValueError(f"chunked_prefill_size: must be >= 1, or -1 for no chunking, got {self.chunked_prefill_size}")
        self.preferred_params()
        self.origins()

    def origins(self) -> list[str]:
        """--allowed-origins as a list (checked: a JSON list of strings)."""
        try:
            value = json.loads(self.allowed_origins)
        except (TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"allowed_origins: not JSON ({e})") from None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError('allowed_origins: must be a JSON list of origins, e.g. ["https://ui.example.com"]')
        return value

    def preferred_params(self) -> dict[str, Any]:
        """--preferred-sampling-params as a dict (checked: a JSON object)."""
        if not self.preferred_sampling_params:
            return {}
        try:
            value = json.loads(self.preferred_sampling_params)
        except json.JSONDecodeError as e:
            raise ValueError(f"preferred_sampling_params: not JSON ({e})") from None
        if not isinstance(value, dict):
            raise ValueError("preferred_sampling_params: must be a JSON object of sampling params")
        return value

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        for f in SGLANG_ONLY:
            flag = "--" + f.name.replace("_", "-")
            extra = [f"--{alias}" for alias in f.aliases]
            if f.flag:
                parser.add_argument(flag, *extra, dest=f.name, action="store_true", default=None, help=argparse.SUPPRESS)
            else:
                parser.add_argument(flag, *extra, dest=f.name, default=None, help=argparse.SUPPRESS,
                                    **_argparse_choices(f.name, f.choices))
        for f in dataclasses.fields(EngineArgs):
            flags = ["--" + f.name.replace("_", "-"), *FLAG_ALIASES.get(f.name, ())]
            help_text = f.metadata.get("help", "")
            if f.type in ("bool",) or isinstance(f.default, bool):
                parser.add_argument(*flags, action="store_true", default=f.default, help=help_text)
                continue
            kind = _arg_type(f)
            # a help that says its default in its own words keeps them ("SGLang's default" is no such text)
            suffix = "" if "(default" in help_text or f.default is None else f" (default: {f.default})"
            parser.add_argument(*flags, type=kind, default=f.default, help=help_text + suffix,
                                **_argparse_choices(f.name, f.metadata.get("choices")))

    @classmethod
    def from_cli_args(cls, ns: argparse.Namespace) -> "EngineArgs":
        accept_sglang_only({f.name: getattr(ns, f.name) for f in SGLANG_ONLY if getattr(ns, f.name) is not None})
        return cls(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)})

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "EngineArgs":
        """SGLang's keyword arguments. `None` is SGLang's "choose for me" (launchers forward a ServerArgs
        whose unset fields are None): an argument given as None takes thinkform's default."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        sglang_only = {f.name for f in SGLANG_ONLY}
        unknown = sorted(set(kwargs) - set(fields) - sglang_only)
        if unknown:
            raise ValueError(f"unknown engine argument(s): {', '.join(unknown)}")
        accept_sglang_only({k: kwargs.pop(k) for k in list(kwargs) if k in sglang_only})
        return cls(**{k: v for k, v in kwargs.items() if v is not None or fields[k].default is None})


@dataclass(frozen=True)
class SGLangOnlyArg:
    """An SGLang server argument with no counterpart here. Scripts written for SGLang pass them: the value
    that means what thinkform does anyway is accepted (a note in the log); any other is refused by name."""
    name: str
    neutral: Any  # the value that asks for nothing thinkform lacks; ANY: every value is harmless here
    note: str
    aliases: tuple[str, ...] = ()
    flag: bool = False  # given without a value on SGLang's command line
    choices: tuple[str, ...] | None = None  # SGLang's own values: any other is a typo, refused as SGLang refuses it


ANY = object()

SGLANG_ONLY = (
    SGLangOnlyArg("trust_remote_code", ANY, "no model code is downloaded or run: architectures are built in", flag=True),
    SGLangOnlyArg("tp_size", 1, "one device per engine", ("tp", "tensor-parallel-size")),
    SGLangOnlyArg("dp_size", 1, "one device per engine", ("dp", "data-parallel-size")),
    SGLangOnlyArg("pp_size", 1, "one device per engine", ("pipeline-parallel-size",)),
    SGLangOnlyArg("nnodes", 1, "one device per engine"),
    SGLangOnlyArg("enable_metrics", ANY, "/metrics is always served", flag=True),
    SGLangOnlyArg("enable_cache_report", ANY, "cached_tokens is always reported", flag=True),
    SGLangOnlyArg("skip_server_warmup", ANY, "the server needs no warm-up request", flag=True),
    SGLangOnlyArg("skip_tokenizer_init", False, "requests and outputs go through the tokenizer", flag=True),
    SGLangOnlyArg("is_embedding", False, "generation models only", flag=True),
    SGLangOnlyArg("kv_cache_dtype", "auto", "the KV cache is kept in the model's dtype"),
    SGLangOnlyArg("load_format", "auto", "safetensors directories and GGUF files are read as they are"),
    SGLangOnlyArg("tokenizer_mode", "auto", "the model's fast tokenizer is used"),
    SGLangOnlyArg("enable_strict_thinking", ANY, "thinking budgets (custom_params.thinking_budget) are always honoured", flag=True),
    SGLangOnlyArg("schedule_policy", ANY, "requests are scheduled first come, first served",
                  choices=SCHEDULE_POLICIES),
    SGLangOnlyArg("max_prefill_tokens", ANY, "--chunked-prefill-size bounds a prefill step"),
    SGLangOnlyArg("enable_torch_compile", ANY, "CUDA graphs and Triton kernels serve a GPU instead", flag=True),
    SGLangOnlyArg("watchdog_timeout", ANY, "no watchdog: a failed step fails its requests"),
    SGLangOnlyArg("show_time_cost", ANY, "timings are in each output's meta_info", flag=True),
    SGLangOnlyArg("download_dir", ANY, "nothing is downloaded: model paths are local"),
    SGLangOnlyArg("revision", ANY, "nothing is downloaded: model paths are local"),
    SGLangOnlyArg("base_gpu_id", 0, "one device per engine: --device names it"),
    SGLangOnlyArg("gpu_id_step", 1, "one device per engine"),
    SGLangOnlyArg("ep_size", 1, "one device per engine", ("ep", "expert-parallel-size")),
    SGLangOnlyArg("enable_dp_attention", False, "one device per engine", flag=True),
    SGLangOnlyArg("nccl_port", ANY, "one device per engine: no collective communication"),
    SGLangOnlyArg("disable_custom_all_reduce", ANY, "one device per engine: no all-reduce", flag=True),
    SGLangOnlyArg("enable_p2p_check", ANY, "one device per engine", flag=True),
    SGLangOnlyArg("enable_lora", False, "no LoRA adapters are served", flag=True),
    SGLangOnlyArg("lora_paths", None, "no LoRA adapters are served"),
    SGLangOnlyArg("max_loras_per_batch", ANY, "no LoRA adapters are served"),
    SGLangOnlyArg("speculative_algorithm", None, "no speculative decoding (jump-forward skips forced text)"),
    SGLangOnlyArg("cpu_offload_gb", 0, "weights stay on the device"),
    SGLangOnlyArg("enable_memory_saver", False, "the KV cache and weights are never released while serving",
                  flag=True),
    SGLangOnlyArg("enable_hierarchical_cache", False, "the prefix cache lives on the device only", flag=True),
    SGLangOnlyArg("allow_auto_truncate", False, "a prompt past the context is refused, never cut", flag=True),
    SGLangOnlyArg("enable_custom_logit_processor", False, "no custom logit processors", flag=True),
    SGLangOnlyArg("enable_return_hidden_states", False, "hidden states are not returned", flag=True),
    SGLangOnlyArg("enable_deterministic_inference", False,
                  "greedy decoding is deterministic for a given batch, not across batch compositions", flag=True),
    SGLangOnlyArg("constrained_json_whitespace_pattern", None, "JSON is compact; --json-any-whitespace loosens it"),
    SGLangOnlyArg("json_model_override_args", "{}", "the model's config is read as it is"),
    SGLangOnlyArg("sampling_backend", ANY, "the engine's own sampler (greedy, temperature, top-k/p, min-p)",
                  choices=SAMPLING_BACKENDS),
    SGLangOnlyArg("enable_mixed_chunk", ANY, "prefill chunks and decodes are batched as the scheduler sees fit",
                  flag=True),
    SGLangOnlyArg("schedule_conservativeness", ANY, "requests are admitted while their pages fit"),
    SGLangOnlyArg("triton_attention_reduce_in_fp32", ANY, "the Triton attention kernel reduces in float32",
                  flag=True),
    SGLangOnlyArg("disable_cuda_graph_padding", ANY, "steps are padded to the next captured size", flag=True),
    SGLangOnlyArg("log_level_http", ANY, "--log-level covers the HTTP server too"),
    SGLangOnlyArg("weight_version", "default", "the weights are never swapped in place"),
    SGLangOnlyArg("stream_output", False, "a stream's chunks carry the whole output so far, as SGLang's default",
                  flag=True),
    SGLangOnlyArg("incremental_streaming_output", False, "a /generate stream's chunks carry the whole output so "
                  "far, as SGLang's default", flag=True),
    SGLangOnlyArg("torch_compile_max_bs", ANY, "CUDA graphs and Triton kernels serve a GPU instead"),
    SGLangOnlyArg("sleep_on_idle", ANY, "the engine loop waits on its queue when idle", flag=True),
    SGLangOnlyArg("file_storage_path", ANY, "no files are stored (no file or batch APIs)"),
    SGLangOnlyArg("prefill_max_requests", ANY, "--chunked-prefill-size bounds a prefill step"),
    SGLangOnlyArg("enable_request_time_stats_logging", ANY, "timings are in each output's meta_info and /metrics",
                  flag=True),
    SGLangOnlyArg("crash_dump_folder", ANY, "no crash dumps: a failed step fails its requests, with its error"),
    SGLangOnlyArg("model_impl", ANY, "llama, qwen2 and qwen3 are built in; other architectures run through "
                  "transformers"),
    SGLangOnlyArg("decode_log_interval", ANY, "throughput is in /metrics and get_server_info"),
    SGLangOnlyArg("num_continuous_decode_steps", ANY, "one decode step per scheduling round"),
    SGLangOnlyArg("dist_init_addr", None, "one device per engine: no distributed setup"),
    SGLangOnlyArg("node_rank", 0, "one device per engine"),
    SGLangOnlyArg("tokenizer_worker_num", 1, "one tokenizer, on worker threads"),
    SGLangOnlyArg("mm_attention_backend", None, "text models only"),
    SGLangOnlyArg("disable_chunked_prefix_cache", ANY, "the prefix cache serves chunked prefills as any other",
                  flag=True),
    SGLangOnlyArg("constrained_json_disable_any_whitespace", ANY, "JSON is compact unless --json-any-whitespace",
                  flag=True),
    SGLangOnlyArg("lora_backend", ANY, "no LoRA adapters are served"),
    SGLangOnlyArg("max_lora_rank", ANY, "no LoRA adapters are served"),
)


def accept_sglang_only(given: dict[str, Any]) -> None:
    """Check SGLang-only arguments: a neutral value is noted in the log, any other is a ValueError."""
    by_name = {f.name: f for f in SGLANG_ONLY}
    for name, value in given.items():
        arg = by_name[name]
        _check_choice(name, value, arg.choices)
        if arg.neutral is not ANY and value is not None and not _same(value, arg.neutral):
            raise ValueError(f"{name}: {value!r} is not supported by thinkform ({arg.note}); "
                             f"leave it out or pass {arg.neutral!r}")
        logger.info("%s=%r accepted for SGLang compatibility; it changes nothing here: %s", name, value, arg.note)


def _check_choice(name: str, value: Any, choices: tuple[str, ...] | None, what: str = "value") -> None:
    """A ValueError naming the argument and its values where `value` is not one of `choices` (None: unset)."""
    if choices is not None and value is not None and value not in choices:
        raise ValueError(f"{name}: unknown {what} {value!r} (choose from {', '.join(choices)})")


def _argparse_choices(name: str, choices: tuple[str, ...] | None) -> dict[str, Any]:
    """argparse's `choices` (its error names the flag and lists them, as SGLang's), with a short metavar: the
    help text lists the values in its own words."""
    return {} if choices is None else {"choices": choices, "metavar": name.upper()}


def _same(value: Any, neutral: Any) -> bool:
    """A CLI value arrives as text: "1" is 1."""
    return value == neutral or str(value).lower() == str(neutral).lower()


def _arg_type(f: dataclasses.Field) -> type:
    text = str(f.type)
    if "int" in text:
        return int
    if "float" in text:
        return float
    return str
