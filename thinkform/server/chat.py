"""Chat templates (rendered in a sandboxed Jinja2 environment, as Hugging Face does) and where the
model's output starts: inside reasoning, free to open it, or straight in the answer."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Mapping

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from thinkform.reasoning.markers import ReasoningMarkers

logger = logging.getLogger(__name__)

ReasoningStart = Literal["reasoning", "open", "answer"]

# Used when a model ships no chat template: ChatML, which most small instruct models know.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] if message['content'] is string else '' }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class ChatTemplateError(ValueError):
    """The template refused the conversation (raise_exception) or failed to render."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.field = "messages"


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(f"chat template error: {message}")


def _tojson(value: Any, indent: int | None = None, separators: tuple[str, str] | None = None,
            sort_keys: bool = False, ensure_ascii: bool = False) -> str:
    # Hugging Face's tojson: keeps non-ASCII and does not HTML-escape, unlike Jinja's builtin
    return json.dumps(value, indent=indent, separators=separators, sort_keys=sort_keys, ensure_ascii=ensure_ascii)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def make_environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _compile(source: str) -> jinja2.Template:
    try:
        return make_environment().from_string(source)
    except jinja2.TemplateError as e:
        raise ValueError(f"chat template does not compile: {e}") from e


@dataclass
class ChatRenderer:
    """Compiles one chat template once; renders conversations into prompt text. `tool_template`: a
    tokenizer's named "tool_use" template (Hermes-2-Pro, Command-R), which renders requests with tools, as
    transformers picks it."""

    template_source: str | None
    special_tokens: Mapping[str, str] = field(default_factory=dict)  # bos_token, eos_token, …
    tool_template: str | None = None

    def __post_init__(self) -> None:
        source = self.template_source or DEFAULT_CHAT_TEMPLATE
        if not self.template_source:
            logger.warning("the model has no chat template; using ChatML")
        self._sources = {False: source, True: self.tool_template or source}  # by whether a request has tools
        self._templates = {False: _compile(source)}
        self._templates[True] = _compile(self.tool_template) if self.tool_template else self._templates[False]
        self.uses_tools = "tools" in self._sources[True]

    def renders_calls(self, tools: bool) -> bool:
        """Whether the template a request renders with (by whether it has tools) writes earlier tool calls."""
        return "tool_calls" in self._sources[tools]

    def _normalized(self, messages: list[dict[str, Any]], tools: bool) -> list[dict[str, Any]]:
        # a template that never names the developer role drops its messages (Qwen, DeepSeek): they go in as
        # system instructions, as vLLM's Responses path and llama.cpp map them
        developer = "developer" in self._sources[tools]
        return [normalize_message(m, developer) for m in messages]

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
               add_generation_prompt: bool = True, continue_final_message: bool = False,
               chat_template_kwargs: Mapping[str, Any] | None = None) -> str:
        """The prompt text. A final assistant message starts a new assistant turn unless
        `continue_final_message`, which ends the prompt right after that message's text."""
        if continue_final_message and (not messages or messages[-1].get("role") != "assistant"):
            raise ChatTemplateError("continue_final_message needs a final assistant message")
        messages = self._normalized(messages, bool(tools))
        text = self._render(messages, tools, add_generation_prompt and not continue_final_message,
                            chat_template_kwargs)
        if continue_final_message:
            text = _cut_after_final(text, messages[-1].get("content") or "")
        return text

    def generation_prompt(self, prompt: str, messages: list[dict[str, Any]],
                          tools: list[dict[str, Any]] | None = None, continue_final_message: bool = False,
                          chat_template_kwargs: Mapping[str, Any] | None = None) -> str:
        """What `prompt` (this conversation's rendering) holds after its history: the generation prompt, or
        the continued final message. Where the output starts is read there only: a `<think>` a user or a
        tool result wrote is no reasoning opened. The whole prompt where the template renders the history
        differently without it."""
        history = messages[:-1] if continue_final_message else messages
        try:
            head = self._render(self._normalized(history, bool(tools)), tools, False,
                                chat_template_kwargs)
        except ChatTemplateError:
            return prompt
        return prompt[len(head):] if prompt.startswith(head) else prompt

    def _render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                add_generation_prompt: bool, chat_template_kwargs: Mapping[str, Any] | None) -> str:
        context = {**self.special_tokens, **dict(chat_template_kwargs or {}),
                   "messages": messages, "tools": tools or None, "add_generation_prompt": add_generation_prompt}
        template = self._templates[bool(tools)]
        try:
            return template.render(**context)
        except ChatTemplateError:
            raise
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError) as e:
            raise ChatTemplateError(f"chat template failed to render these messages: {e}") from e


def _cut_after_final(text: str, final: str) -> str:
    """The prompt up to the end of the final message's text, its trailing whitespace kept where the
    template kept it (transformers' continue_final_message: `"The answer is "` ends the prompt with the space)."""
    final = final if isinstance(final, str) else ""
    stripped = final.strip()
    at = text.rfind(stripped) if stripped else -1
    if at < 0:
        raise ChatTemplateError("continue_final_message: the template does not echo the final message")
    kept = final.lstrip()
    if text[at:at + len(kept)] == kept:
        return text[:at + len(kept)]
    return text[:at + len(stripped)]


def normalize_message(message: Mapping[str, Any], developer_role: bool = True) -> dict[str, Any]:
    """OpenAI message -> what templates expect: text parts joined, tool-call arguments as dicts, a developer
    message a system one where the template has no developer role, no empty tool-call list (templates that
    test for the key took the calls' branch and dropped the message's text)."""
    out = {k: v for k, v in message.items() if v is not None}
    if out.get("role") == "developer" and not developer_role:
        out["role"] = "system"
    if out.get("tool_calls") == []:
        del out["tool_calls"]
    content = out.get("content")
    if isinstance(content, list):
        # one space between parts, as SGLang joins them for string templates ("Hello" + "world" is no word)
        out["content"] = " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    elif content is None:
        out["content"] = ""
    calls = out.get("tool_calls")
    if calls:
        out["tool_calls"] = [_normalize_call(c) for c in calls]
        # gpt-oss's template reads a call's reasoning as `thinking` (and refuses it beside content): the
        # analysis before a call goes back to the model as harmony asks
        if out.get("reasoning_content") and not out["content"]:
            out.setdefault("thinking", out["reasoning_content"])
    return out


def _normalize_call(call: Mapping[str, Any]) -> dict[str, Any]:
    call = dict(call)
    fn = dict(call.get("function") or {})
    arguments = fn.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else None
        except json.JSONDecodeError:
            pass  # the template gets the text as it is (SGLang's reading)
    # no arguments (empty, missing, `null`) are an empty object, as vLLM renders them: Qwen3's template
    # wrote `"arguments": }`
    fn["arguments"] = {} if arguments is None else arguments
    call["function"] = fn
    return call


def thinking_enabled(markers: ReasoningMarkers, chat_template_kwargs: Mapping[str, Any] | None) -> bool:
    """Whether the family's thinking switch is on for this request."""
    if markers.thinking_switch is None:
        return True
    value = (chat_template_kwargs or {}).get(markers.thinking_switch, markers.switch_default)
    return bool(value)


def decide_reasoning_start(prompt: str, markers: ReasoningMarkers | None,
                           chat_template_kwargs: Mapping[str, Any] | None = None,
                           continues_answer: bool = False) -> ReasoningStart:
    """Where generation starts: "reasoning" when the prompt ends inside an opened reasoning section
    or the family always thinks; "open" when the model may choose to think; else "answer".
    `continues_answer`: the request continues a final assistant message whose reasoning is closed
    (continued_reasoning_closed): the output is its answer's rest, however the template wrote it."""
    if markers is None:
        return "answer"
    if ends_inside_reasoning(prompt, markers):
        return "reasoning"
    if continues_answer:
        return "answer"
    if not thinking_enabled(markers, chat_template_kwargs) or ends_after_reasoning(prompt, markers):
        return "answer"
    return "reasoning" if markers.always_thinks else "open"


def continued_reasoning_closed(message: Mapping[str, Any], markers: ReasoningMarkers | None) -> bool:
    """Whether a final assistant message that a request continues (continue_final_message) has closed its
    reasoning: it carries `reasoning_content`, or its text has an end marker after its last start (as SGLang's
    reasoning parsers read `previous_content`)."""
    if markers is None:
        return False
    content = message.get("content")
    if isinstance(content, list):  # content parts: their text
        content = "".join(part.get("text") or "" for part in content if isinstance(part, dict))
    text = content if isinstance(content, str) else ""
    closed = markers.first_end(text) is not None and not ends_inside_reasoning(text, markers)
    return closed or bool(message.get("reasoning_content"))


def ends_inside_reasoning(prompt: str, markers: ReasoningMarkers) -> bool:
    start = prompt.rfind(markers.start)
    return start >= 0 and markers.first_end(prompt, start + len(markers.start)) is None


def ends_after_reasoning(prompt: str, markers: ReasoningMarkers) -> bool:
    """The prompt closed a reasoning section last (`<think>\n\n</think>\n\n` where a Qwen3-style template turns
    thinking off, or a prefilled reasoning continued): the output is the answer, even for a family that
    always thinks."""
    tail = prompt.rstrip()
    return any(tail.endswith(end) for end in (markers.end, *markers.alt_ends, markers.close_text))


def with_system_text(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """`text` at the head of the conversation's system message (one is made where there is none: a second
    system turn ahead of the user's own was two system turns)."""
    if messages and messages[0].get("role") == "system":
        first = normalize_message(messages[0])
        return [{**first, "content": f"{text}\n\n{first['content']}" if first["content"] else text}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def tools_system_prompt(tools: list[dict[str, Any]], example: str) -> str:
    """For templates that do not render tools: a short system text listing them and the call format."""
    lines = ["You may call these tools:"]
    lines += [json.dumps(t.get("function", t), ensure_ascii=False) for t in tools]
    lines.append(f"To call a tool, answer exactly in this format: {example}")
    return "\n".join(lines)
