"""Shared fixtures: tiny random-weight models (a few MB) and engines over them. No network."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from thinkform.testing.tokenizers import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory, tiny_tokenizer):
    """One tiny model directory per architecture, vocab padded past the tokenizer (padding never sampled)."""
    from thinkform.testing.models import make_tiny_model_dir

    root = tmp_path_factory.mktemp("models")
    return {arch: make_tiny_model_dir(root / arch, arch, tiny_tokenizer, vocab_size=len(tiny_tokenizer) + 40, seed=i)
            for i, arch in enumerate(("llama", "qwen2", "qwen3"))}


@pytest.fixture(scope="module")
def fake():
    """A server over the scripted FakeEngine, one per test module."""
    from fake_engine import FakeEngine
    from server_fixtures import running_server

    engine = FakeEngine()
    with running_server(engine) as base:
        yield engine, base


@pytest.fixture
def served(fake):
    engine, base = fake
    engine.reset()
    return engine, base


@pytest.fixture(scope="session")
def engine64(tiny_model_dirs):
    """float64 engine: greedy equality tests must not flip on near-ties."""
    from thinkform import Engine

    eng = Engine(model_path=str(tiny_model_dirs["qwen2"]), dtype="float64", max_total_tokens=4096, page_size=4,
                 chunked_prefill_size=64)
    yield eng
    eng.shutdown()


@pytest.fixture(scope="session")
def qwen_vocab_model(tmp_path_factory):
    """A tiny qwen2 model with Qwen's real vocabulary (151,643 tokens, its special tokens): (model dir, tokenizer)."""
    from thinkform.testing.models import make_tiny_model_dir
    from thinkform.testing.qwen_vocab import build_qwen_tokenizer

    tok = build_qwen_tokenizer()
    model = make_tiny_model_dir(tmp_path_factory.mktemp("qwen_vocab") / "qwen2", "qwen2", tok,
                                vocab_size=len(tok) + 64, seed=1)
    return model, tok


@pytest.fixture(scope="session")
def reasoning_engine(tiny_model_dirs):
    from thinkform import Engine

    eng = Engine(model_path=str(tiny_model_dirs["llama"]), reasoning_parser="deepseek-r1", max_total_tokens=8192)
    yield eng
    eng.shutdown()


def _interpret_triton_library(mp: pytest.MonkeyPatch) -> None:
    """Give tl's jit'd library functions interpreted twins for the duration of `mp` (they were decorated
    when triton was first imported, which in a full run may be long before, without TRITON_INTERPRET)."""
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    for name, value in list(vars(tl).items()):
        if isinstance(value, JITFunction):
            mp.setattr(tl, name, InterpretedFunction(value.fn))


def _drop_kernel_modules() -> dict:
    import sys

    import thinkform.kernels as package

    dropped = {name: sys.modules.pop(name) for name in list(sys.modules) if name.startswith("thinkform.kernels.")}
    for name in dropped:
        vars(package).pop(name.rsplit(".", 1)[1], None)
    return dropped


@pytest.fixture(scope="module")
def triton_interpreter():
    """thinkform.kernels imported fresh under TRITON_INTERPRET=1 (`@triton.jit` reads it when it decorates), so
    the Triton kernels run on CPU tensors; afterwards the modules are dropped again and nothing leaks."""
    import importlib

    _drop_kernel_modules()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        _interpret_triton_library(mp)
        yield importlib.import_module("thinkform.kernels.triton_ops")
        _drop_kernel_modules()
