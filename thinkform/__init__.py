"""thinkform: structured outputs from reasoning models, served the way SGLang serves them."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Engine", "FunctionCallParser", "ReasoningParser", "SamplingParams", "__version__"]

if TYPE_CHECKING:
    from thinkform.engine.engine import Engine
    from thinkform.engine.sampling_params import SamplingParams
    from thinkform.parsers import FunctionCallParser, ReasoningParser


def __getattr__(name: str) -> Any:
    # torch and the model code load only when the engine is actually used
    if name == "Engine":
        from thinkform.engine.engine import Engine
        return Engine
    if name == "SamplingParams":
        from thinkform.engine.sampling_params import SamplingParams
        return SamplingParams
    if name in ("ReasoningParser", "FunctionCallParser"):  # SGLang's offline parsers (thinkform/parsers.py)
        from thinkform import parsers
        return getattr(parsers, name)
    raise AttributeError(f"module 'thinkform' has no attribute {name!r}")
