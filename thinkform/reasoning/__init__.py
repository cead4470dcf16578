"""Reasoning markers per model family and the text splitter (reasoning_content / content). No torch."""
from __future__ import annotations

from thinkform.reasoning.markers import REASONING_PARSERS, ReasoningMarkers, get_markers
from thinkform.reasoning.parser import StreamingReasoningParser, split_reasoning

__all__ = ["REASONING_PARSERS", "ReasoningMarkers", "StreamingReasoningParser", "get_markers", "split_reasoning"]
