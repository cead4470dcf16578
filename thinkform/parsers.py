"""Offline parsers with SGLang's names and signatures, over thinkform's own reasoning and tool-call parsers, so
the offline cells of SGLang's "Reasoning Parser" and "Tool Parser" pages run with the import changed:

    from thinkform import ReasoningParser, FunctionCallParser

- `ReasoningParser(model_type, stream_reasoning=True, force_reasoning=None)`: `parse_non_stream(text)` ->
  `(reasoning_text, normal_text)`; `parse_stream_chunk(delta)` -> `(reasoning_delta, normal_delta)`, and
  `parse_stream_end()` for what a stream held back. The split is the server's (/separate_reasoning,
  `reasoning_content`): markers and the whitespace around them stripped; a family whose prompt opens the
  reasoning (deepseek-r1, qwen3-thinking, ...) reads text without a start marker as reasoning up to the end
  marker, `force_reasoning` says so for any family.
- `FunctionCallParser(tools, tool_call_parser)`: `has_tool_call(text)`, `parse_non_stream(text)` ->
  `(normal_text, calls)`, `parse_stream_chunk(delta)` -> `(normal_delta, calls)` and `parse_stream_end()`; each
  call a `ToolCallItem` with `tool_index`, `name` and `parameters` (JSON text). Whole: `tool_index` is the
  function's place in `tools` (as /parse_function_call gives it), `parameters` its whole arguments. Streamed
  (as SGLang streams them): `tool_index` is the call's place among the calls, a call's first item carries its
  name with empty parameters and the next ones carry pieces of its arguments (name None). Tools are OpenAI
  dicts or objects with `model_dump()` (SGLang's `Tool`); a call of a function they do not declare is left out.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from pydantic import BaseModel

from thinkform.reasoning import StreamingReasoningParser, get_markers, split_reasoning

__all__ = ["FunctionCallParser", "ReasoningParser", "ToolCallItem"]


class ReasoningParser:
    """A model family's reasoning split out of its output, whole or streamed (SGLang's ReasoningParser)."""

    def __init__(self, model_type: Optional[str] = None, stream_reasoning: bool = True,
                 force_reasoning: Optional[bool] = None, request: Any = None, tokenizer: Any = None) -> None:
        """`model_type`: a `--reasoning-parser` name. `stream_reasoning` false: a stream gives the reasoning in
        one piece when it ends. `force_reasoning`: whether the output starts inside the reasoning (default: as
        the family's chat template leaves it, with `request`'s chat_template_kwargs where given, e.g.
        qwen3's enable_thinking). `tokenizer` is taken for SGLang's signature and not needed."""
        if not model_type:
            raise ValueError("Model type must be specified")
        try:
            self.markers = get_markers(model_type)
        except ValueError:
            raise ValueError(f"Unsupported model type: {model_type}") from None
        kwargs = getattr(request, "chat_template_kwargs", None)
        if kwargs is None and isinstance(request, Mapping):
            kwargs = request.get("chat_template_kwargs")
        self.in_reasoning = (self.markers.starts_in_reasoning(kwargs) if force_reasoning is None
                             else bool(force_reasoning))
        self.stream_reasoning = stream_reasoning
        self._stream: StreamingReasoningParser | None = None
        self._held: list[str] = []  # stream_reasoning false: the reasoning so far
        self._prefix_sent = False  # minimax-append-think: the template's start marker, before a stream's text

    def parse_non_stream(self, full_text: str) -> tuple[str, str]:
        """(reasoning_text, normal_text) of a whole output; reasoning "" where there was none."""
        if self.markers.reasoning_in_content:  # minimax-append-think: nothing separated, the template's <think> kept
            return "", self.markers.start + full_text
        reasoning, text = split_reasoning(full_text, self.markers, self.in_reasoning)
        return reasoning or "", text

    def parse_stream_chunk(self, chunk_text: str) -> tuple[str, str]:
        """(reasoning_delta, normal_delta) of the next piece of a streamed output; text that may still become a
        marker waits for the next piece. All the deltas (with parse_stream_end's) add up to parse_non_stream's."""
        if self.markers.reasoning_in_content:
            prefix = "" if self._prefix_sent or not chunk_text else self.markers.start
            self._prefix_sent = self._prefix_sent or bool(chunk_text)
            return "", prefix + chunk_text
        if self._stream is None:
            self._stream = StreamingReasoningParser(self.markers, self.in_reasoning)
        return self._held_back(*self._stream.feed(chunk_text))

    def parse_stream_end(self) -> tuple[str, str]:
        """What a stream held back, when it has ended: the rest of its reasoning or text."""
        if self._stream is None:
            return "", ""
        reasoning, text = self._held_back(*self._stream.flush())
        if self._held:
            reasoning, self._held = reasoning + "".join(self._held), []
        return reasoning, text

    def _held_back(self, reasoning: str, text: str) -> tuple[str, str]:
        if self.stream_reasoning:
            return reasoning, text
        if reasoning:
            self._held.append(reasoning)
        if self._held and (text or not self._stream.in_reasoning):  # the reasoning ended: all of it at once
            reasoning, self._held = "".join(self._held), []
            return reasoning, text
        return "", text


class ToolCallItem(BaseModel):
    """One parsed call, or a streamed piece of one (SGLang's ToolCallItem)."""

    tool_index: int
    name: Optional[str] = None
    parameters: str  # JSON text: the whole arguments, or (streamed) the next piece of them


def _tool_dict(tool: Any) -> dict[str, Any]:
    """An OpenAI tool dict from a dict or a pydantic tool (SGLang's `Tool`, thinkform's protocol Tool)."""
    if isinstance(tool, Mapping):
        return dict(tool)
    dump = getattr(tool, "model_dump", None)
    if callable(dump):
        return dump(exclude_none=True)
    function = getattr(tool, "function", None)
    if function is not None:
        return {"type": getattr(tool, "type", "function"),
                "function": {k: getattr(function, k) for k in ("name", "description", "parameters")
                             if getattr(function, k, None) is not None}}
    raise TypeError(f"tools: expected OpenAI tool dicts or Tool objects, got {type(tool).__name__}")


class FunctionCallParser:
    """Tool calls read out of a model's answer, whole or streamed (SGLang's FunctionCallParser)."""

    def __init__(self, tools: list[Any], tool_call_parser: str, tokenizer: Any = None) -> None:
        """`tools`: the request's tools; `tool_call_parser`: a `--tool-call-parser` name (qwen25, llama3,
        mistral, deepseekv3, kimi_k2, qwen3_coder, glm45, gpt-oss, pythonic, ...). `tokenizer` is taken for
        SGLang's signature and not needed."""
        from thinkform.server.tools import get_tool_call_parser, tool_name

        try:
            parser = get_tool_call_parser(tool_call_parser)
        except ValueError:
            raise ValueError(f"Unsupported tool_call_parser: {tool_call_parser}") from None
        self.tools = [_tool_dict(t) for t in tools or []]
        self.parser = parser.for_tools(self.tools)
        # a function's place in tools (the first where two share a name)
        self._index = {tool_name(t): i for i, t in reversed(list(enumerate(self.tools)))}
        self._stream = self.parser.streaming()

    def has_tool_call(self, text: str) -> bool:
        """Whether `text` holds the start of a tool call in this format (never without tools)."""
        return bool(self.tools) and self.parser._section_start(text) >= 0

    def parse_non_stream(self, full_text: str) -> tuple[str, list[ToolCallItem]]:
        """(normal_text, calls) of a whole answer; without calls the text comes back as it was."""
        if not self.tools:
            return full_text, []
        read = self.parser.read(full_text)
        if read is None:
            return full_text, []
        normal, calls = read
        return normal, [ToolCallItem(tool_index=self._index[c.name], name=c.name, parameters=c.arguments)
                        for c in calls if c.name in self._index]

    def parse_stream_chunk(self, chunk_text: str) -> tuple[str, list[ToolCallItem]]:
        """(normal_delta, call items) of the next piece of a streamed answer: text that may begin a call waits
        for the next piece."""
        if not self.tools:
            return chunk_text, []
        normal, deltas = self._stream.feed(chunk_text)
        return normal, self._items(deltas)

    def parse_stream_end(self) -> tuple[str, list[ToolCallItem]]:
        """What a stream held back, when it has ended: text that began no call, and the calls (or the rest of
        their arguments) only the whole answer shows."""
        if not self.tools:
            return "", []
        normal, deltas, _ = self._stream.finish()
        return normal, self._items(deltas)

    @staticmethod
    def _items(deltas: list[dict[str, Any]]) -> list[ToolCallItem]:
        items = []
        for delta in deltas:
            function = delta.get("function") or {}
            items.append(ToolCallItem(tool_index=delta["index"], name=function.get("name"),
                                      parameters=function.get("arguments") or ""))
        return items
