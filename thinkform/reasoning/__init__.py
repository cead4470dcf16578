"""Reasoning markers per model family and the text splitter (reasoning_content / content). No torch."""
from __future__ import annotations

from thinkform.reasoning.markers import REASONING_PARSERS, ReasoningMarkers, get_markers
from thinkform.reasoning.parser import RawAnswerSplitter, StreamingReasoningParser, partial_suffix, split_reasoning

__all__ = ["REASONING_PARSERS", "RawAnswerSplitter", "ReasoningMarkers", "StreamingReasoningParser", "get_markers",
           "partial_suffix", "split_reasoning"]
