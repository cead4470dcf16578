"""Run any other transformers causal LM with thinkform's paged attention plugged in.

transformers calls `ALL_ATTENTION_FUNCTIONS[config._attn_implementation]` in every attention layer and
passes the forward's extra kwargs through; we register one function under "thinkform" and hand our
AttentionBackend down as the `thinkform_attention` kwarg. No mask function is registered, so
transformers builds no mask: the backend knows each sequence's history.

A short probe at load time proves the routing works for this model: every layer must call the backend
exactly once, the split forward/compute_logits must equal the model's own logits, and decoding one token
on top of a cached prefix must equal the full forward (no token mixing outside attention).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from thinkform.models.config import ModelConfig
from thinkform.models.dense_attention import DenseAttention
from thinkform.models.layers import AttentionBackend, CausalLM, logits_dtype

ATTN_IMPLEMENTATION = "thinkform"
BACKEND_KWARG = "thinkform_attention"


def _thinkform_attention(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """transformers attention function: [1, heads, N, dim] in, [1, N, heads, dim] out."""
    backend = kwargs.get(BACKEND_KWARG)
    if backend is None:
        raise RuntimeError(f"attn_implementation={ATTN_IMPLEMENTATION!r} needs the {BACKEND_KWARG!r} forward kwarg")
    if kwargs.get("softcap"):
        raise ValueError(f"{type(module).__name__}: attention logit soft-capping cannot run on thinkform's attention")
    if query.shape[0] != 1:
        raise ValueError("thinkform attention expects the flattened batch layout (batch dimension 1)")
    q = query[0].transpose(0, 1)
    head_dim = q.shape[-1]
    if scaling is not None and abs(scaling * head_dim**0.5 - 1.0) > 1e-12:
        q = q * (scaling * head_dim**0.5)  # the backend scales by 1/sqrt(head_dim)
    out = backend(module.layer_idx, q, key[0].transpose(0, 1), value[0].transpose(0, 1))
    return out.unsqueeze(0), None


def register_attention() -> None:
    """Make attn_implementation="thinkform" known to transformers (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, _thinkform_attention)


class HFFallbackLM(CausalLM):
    """A transformers *ForCausalLM behind thinkform's CausalLM interface."""

    def __init__(self, hf_model: torch.nn.Module, config: ModelConfig):
        super().__init__()
        self.hf = hf_model
        self.config = config
        hf_config = hf_model.config
        # the few ways *ForCausalLM post-process lm_head output; the probe checks nothing else happens
        self.logit_multiplier = float(getattr(hf_config, "logit_scale", None) or 1.0)
        self.logit_divisor = float(getattr(hf_config, "logits_scaling", None) or 1.0)
        self.logit_softcap = getattr(hf_config, "final_logit_softcapping", None)

    def forward(self, input_ids: Tensor, positions: Tensor, attn: AttentionBackend) -> Tensor:
        kwargs = {BACKEND_KWARG: attn}
        out = self.hf.base_model(input_ids=input_ids[None], position_ids=positions[None], use_cache=False, **kwargs)
        return out.last_hidden_state[0]

    def compute_logits(self, hidden: Tensor) -> Tensor:
        logits = self.hf.get_output_embeddings()(hidden)
        if self.logit_multiplier != 1.0:
            logits = logits * self.logit_multiplier
        if self.logit_divisor != 1.0:
            logits = logits / self.logit_divisor
        if self.logit_softcap:
            logits = torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        return logits.to(logits_dtype(hidden.dtype))


@dataclass
class _Recorder:
    """Wraps a backend, recording which layers called it with what shapes."""

    inner: AttentionBackend
    calls: list[tuple[int, tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    def __call__(self, layer_id: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        self.calls.append((layer_id, tuple(q.shape), tuple(k.shape), tuple(v.shape)))
        return self.inner(layer_id, q, k, v)


def _dense_backend() -> AttentionBackend:
    return DenseAttention()


def _close(a: Tensor, b: Tensor, dtype: torch.dtype) -> bool:
    tol = 5e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-3
    return bool((a.double() - b.double()).abs().max() <= tol * (1.0 + b.double().abs().max()))


def _not_routable(arch: str, why: str) -> ValueError:
    return ValueError(f"architecture {arch!r} cannot run on thinkform's attention: {why}")


@torch.no_grad()
def _probe(model: HFFallbackLM, arch: str, vocab_size: int, device: torch.device) -> tuple[int, int, int, int]:
    """Check routing on 3 tokens; return (num_layers, num_heads, num_kv_heads, head_dim)."""
    ids = torch.tensor([1, 2, 3], device=device) % vocab_size
    pos = torch.arange(3, device=device)
    recorder = _Recorder(_dense_backend())
    kwargs = {BACKEND_KWARG: recorder}
    try:
        full = model.hf(input_ids=ids[None], position_ids=pos[None], use_cache=False, **kwargs).logits[0]
    except (TypeError, RuntimeError) as exc:  # a forward that drops or rejects the backend kwarg
        raise _not_routable(arch, f"its forward does not hand attention kwargs to its layers ({exc})") from exc
    layer_ids = [call[0] for call in recorder.calls]
    if not layer_ids:
        raise _not_routable(arch, "its layers do not use transformers' attention interface")
    if sorted(layer_ids) != list(range(len(layer_ids))):
        raise _not_routable(arch, f"layers call attention with ids {layer_ids}, not each of 0..n-1 once")
    shapes = {call[1:] for call in recorder.calls}
    if len(shapes) != 1:
        raise _not_routable(arch, f"attention shapes differ between layers: {sorted(shapes)}")
    (q_shape, k_shape, v_shape), = shapes
    if not (q_shape[2] == k_shape[2] == v_shape[2] and k_shape == v_shape and q_shape[1] % k_shape[1] == 0):
        raise _not_routable(arch, f"q/k/v shapes {q_shape}/{k_shape}/{v_shape} are not grouped-query attention")
    dtype = full.dtype
    split = model.compute_logits(model(ids, pos, _dense_backend()))
    if not _close(split, full, dtype):
        raise _not_routable(arch, "its causal-LM head does more than lm_head (logits differ)")
    incremental = _dense_backend()
    model(ids[:2], pos[:2], incremental)
    last = model.compute_logits(model(ids[2:], pos[2:], incremental))
    if not _close(last[-1], full[-1], dtype):
        raise _not_routable(arch, "tokens interact outside attention (cached decoding differs from the full forward)")
    return len(layer_ids), q_shape[1], k_shape[1], k_shape[2]


def _check_causal_lm(raw: dict[str, Any]) -> str:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    archs = raw.get("architectures") or []
    model_type = str(raw.get("model_type", ""))
    arch = str(archs[0]) if archs else model_type or "<unknown>"
    expected = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    if expected is None:
        raise ValueError(f"architecture {arch!r} (model_type={model_type!r}) is not a causal language model "
                         "transformers can load")
    if archs and expected not in archs:
        raise ValueError(f"architecture {arch!r} is not a causal language model (expected {expected!r})")
    if raw.get("is_encoder_decoder"):
        raise ValueError(f"architecture {arch!r} is an encoder-decoder model, not a decoder-only causal LM")
    return arch


def load_hf_fallback(model_dir: str | Path, raw: dict[str, Any], dtype: torch.dtype, device: str) -> HFFallbackLM:
    """Load a transformers causal LM from a safetensors directory and verify it runs on our attention."""
    from transformers import AutoModelForCausalLM

    arch = _check_causal_lm(raw)
    register_attention()
    try:
        hf = AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=dtype, attn_implementation=ATTN_IMPLEMENTATION, use_safetensors=True,
            trust_remote_code=False, device_map={"": device},
        )
    except (ValueError, KeyError, OSError) as exc:
        raise ValueError(f"architecture {arch!r}: transformers could not load it with thinkform attention: {exc}") from exc
    hf.eval()
    vocab = int(hf.get_output_embeddings().weight.shape[0])
    # transformers' reading of which layers slide (Gemma-3 spells it by a pattern), for ModelConfig.sliding_window
    layer_types = getattr(hf.config, "layer_types", None)
    raw = {**raw, "layer_types": list(layer_types)} if layer_types else raw
    placeholder = ModelConfig(arch=arch, model_type=str(raw.get("model_type", "")), vocab_size=vocab,
                              hidden_size=0, intermediate_size=0, num_layers=0, num_heads=0, num_kv_heads=0,
                              head_dim=0, dtype=dtype, extra=dict(raw))
    model = HFFallbackLM(hf, placeholder)
    num_layers, num_heads, num_kv_heads, head_dim = _probe(model, arch, vocab, torch.device(device))
    eos = raw.get("eos_token_id")
    model.config = ModelConfig(
        arch=arch,
        model_type=placeholder.model_type,
        vocab_size=vocab,
        hidden_size=int(hf.get_output_embeddings().weight.shape[1]),
        intermediate_size=int(raw.get("intermediate_size") or 0),
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        max_position_embeddings=int(raw.get("max_position_embeddings") or raw.get("n_positions") or 2048),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        bos_token_id=raw.get("bos_token_id") if isinstance(raw.get("bos_token_id"), int) else None,
        eos_token_ids=tuple(eos) if isinstance(eos, list) else ((eos,) if isinstance(eos, int) else ()),
        dtype=dtype,
        extra=dict(raw),
    )
    return model
