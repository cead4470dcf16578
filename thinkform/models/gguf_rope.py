"""The RoPE scaling a GGUF file keeps, read back for the HF config transformers' GGUF reader writes.

llama.cpp's converter keeps Llama-3.1/3.2's `llama3` scaling (DeepSeek-R1-Distill-Llama's too) as a
`rope_freqs.weight` tensor, each rotary frequency's divisor, and linear or YaRN scaling as
`{arch}.rope.scaling.*` metadata. transformers reads neither for these architectures: the model ran with plain
RoPE (logits off by 4.3 on a 40-token prompt). The `llama3` parameters are read back from the divisors, which
depend on them only through the factor and the line `smooth = a / wavelength + b` between the two plateaus;
they are checked against the file by recomputing every divisor."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

_LLAMA3_LOW_FREQ_FACTOR = 1.0  # one of the equivalent spellings; Llama 3.1/3.2 use it


def gguf_rope_scaling(reader: Any, theta: float, head_dim: int) -> dict[str, Any] | None:
    """HF `rope_scaling` fields for the GGUF file `reader` reads (a gguf.GGUFReader), None for plain RoPE."""
    metadata = {key: field.contents() for key, field in reader.fields.items()
                if key == "general.architecture" or ".rope.scaling." in key}
    divisors = next((t.data for t in reader.tensors if t.name == "rope_freqs.weight"), None)
    return rope_scaling_from_metadata(metadata, divisors, theta, head_dim)


def rope_scaling_from_metadata(metadata: dict[str, Any], divisors: Any, theta: float,
                               head_dim: int) -> dict[str, Any] | None:
    """HF `rope_scaling` fields from a GGUF's metadata (key -> value) and its `rope_freqs.weight` values (float32,
    None where the file has none); None for plain RoPE."""
    arch = metadata.get("general.architecture") or "llama"
    kind = metadata.get(f"{arch}.rope.scaling.type")
    factor = metadata.get(f"{arch}.rope.scaling.factor")
    original = metadata.get(f"{arch}.rope.scaling.original_context_length")
    if divisors is not None:
        return llama3_scaling(np.asarray(divisors, dtype=np.float64).reshape(-1), theta, head_dim, original)
    if kind in (None, "none") or factor in (None, 0.0, 1.0):
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": float(factor)}
    if kind == "yarn":
        scaling = {"rope_type": "yarn", "factor": float(factor)}
        if original:
            scaling["original_max_position_embeddings"] = int(original)
        for key, name in (("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow")):
            value = metadata.get(f"{arch}.rope.scaling.{key}")
            if value:
                scaling[name] = float(value)
        return scaling
    raise ValueError(f"GGUF rope scaling {kind!r} ({arch}.rope.scaling.type) is not supported")


def llama3_scaling(divisors: np.ndarray, theta: float, head_dim: int, original: int | None) -> dict[str, Any]:
    """Llama 3's rope_scaling whose divisors are `divisors` (one per rotary frequency). Between the plateaus
    1 / divisor = (1 - smooth) / factor + smooth with smooth = (original / wavelength - low) / (high - low):
    a line in 1 / wavelength, fitted; where no frequency lies between, any line through the gap will do."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if len(divisors) != len(inv_freq):
        raise ValueError(f"GGUF rope_freqs.weight has {len(divisors)} values for {len(inv_freq)} rotary frequencies")
    factor = float(divisors.max())
    if factor <= 1.0 + 1e-6:
        return {"rope_type": "default"} if np.allclose(divisors, 1.0) else _refuse()
    wavelength = 2 * math.pi / inv_freq
    one, top = divisors <= 1.0 + 1e-6, divisors >= factor - 1e-6
    between = ~one & ~top
    low = _LLAMA3_LOW_FREQ_FACTOR
    if between.sum() >= 2:
        smooth = (1.0 / divisors - 1.0 / factor) / (1.0 - 1.0 / factor)
        slope, intercept = np.polyfit(1.0 / wavelength[between], smooth[between], 1)
        span = -low / intercept if intercept < 0 else 0.0  # high - low
        context = original or round(slope * span)
        low, span = low * context / (slope * span or 1.0), context / slope
    elif one.any() and top.any() and wavelength[one].max() < wavelength[top].min():
        last_one, first_top = wavelength[one].max(), wavelength[top].min()
        context = original if original and last_one < original <= first_top else math.floor(first_top)
        span = context / last_one - low
    else:
        _refuse()
    scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": float(low),
               "high_freq_factor": float(low + span), "original_max_position_embeddings": int(context)}
    if span <= 0 or not np.allclose(llama3_divisors(scaling, inv_freq), divisors, rtol=1e-4):
        _refuse()
    return scaling


def llama3_divisors(scaling: dict[str, Any], inv_freq: np.ndarray) -> np.ndarray:
    """Each frequency's divisor under Llama 3's rope scaling (as llama.cpp's converter writes rope_freqs)."""
    factor, original = scaling["factor"], scaling["original_max_position_embeddings"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    wavelength = 2 * math.pi / inv_freq
    smooth = np.clip((original / wavelength - low) / (high - low), 0.0, 1.0)
    return 1.0 / ((1.0 - smooth) / factor + smooth)


def _refuse() -> dict[str, Any]:
    raise ValueError("GGUF rope_freqs.weight does not follow Llama 3's rope scaling (thinkform reads no other)")
