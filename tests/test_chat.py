"""Chat rendering (sandboxed Jinja, HF-compatible helpers) and where generation starts."""
from __future__ import annotations

import pytest

from thinkform.reasoning import get_markers
from thinkform.server.chat import ChatRenderer, ChatTemplateError, decide_reasoning_start
from thinkform.testing.tokenizers import build_tiny_tokenizer

R1_TEMPLATE = (  # DeepSeek-R1-Distill style: the generation prompt opens <think>
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}<｜User｜>{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}<｜Assistant｜>{{ m['content'] }}<｜end▁of▁sentence｜>"
    "{% else %}{{ m['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<｜Assistant｜><think>\n{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_renderer():
    tok = build_tiny_tokenizer()
    return ChatRenderer(tok.chat_template, {"eos_token": tok.eos_token})


def test_final_assistant_message_starts_a_new_turn(tiny_renderer):
    msgs = [{"role": "assistant", "content": "What is the capital of France?"}]
    text = tiny_renderer.render(msgs)
    assert text.endswith("What is the capital of France?<|im_end|>\n<|im_start|>assistant\n")


def test_continue_final_message_ends_inside_it(tiny_renderer):
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "The capital is"}]
    assert tiny_renderer.render(msgs, continue_final_message=True).endswith("<|im_start|>assistant\nThe capital is")
    with pytest.raises(ChatTemplateError):
        tiny_renderer.render([{"role": "user", "content": "Hi"}], continue_final_message=True)


def test_chat_template_kwargs_reach_the_template(tiny_renderer):
    msgs = [{"role": "user", "content": "Hi"}]
    assert tiny_renderer.render(msgs, chat_template_kwargs={"enable_thinking": False}).endswith(
        "<think>\n\n</think>\n\n")
    assert not tiny_renderer.render(msgs).endswith("</think>\n\n")


def test_content_parts_are_joined_by_a_space_and_tool_arguments_become_objects():
    """Parts are joined as SGLang joins them for string templates: "Hello" and "world" were "Helloworld"."""
    renderer = ChatRenderer("{% for m in messages %}{{ m.content }}|{% for c in m.tool_calls or [] %}"
                            "{{ c.function.arguments | tojson }}{% endfor %}{% endfor %}")
    msgs = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "é"}]},
            {"role": "assistant", "content": None,
             "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": '{"x": "ü"}'}}]}]
    assert renderer.render(msgs) == 'a é||{"x": "ü"}'


def test_a_calls_reasoning_reaches_templates_that_read_thinking():
    """gpt-oss's template renders the analysis before a call from `thinking` (harmony keeps it for the next
    turn); clients send it back as reasoning_content or reasoning. Beside content it stays out (that template
    refuses both)."""
    renderer = ChatRenderer("{% for m in messages %}[{{ m.thinking or '' }}]{% endfor %}")
    call = {"type": "function", "function": {"name": "f", "arguments": "{}"}}
    msgs = [{"role": "assistant", "content": None, "reasoning_content": "Need f.", "tool_calls": [call]},
            {"role": "assistant", "content": "Done.", "reasoning_content": "Easy.", "tool_calls": [call]},
            {"role": "assistant", "content": "Hi", "reasoning_content": "Plain."}]
    assert renderer.render(msgs) == "[Need f.][][]"


def test_tools_and_helpers_available_like_hugging_face():
    renderer = ChatRenderer("{% if tools %}{% for t in tools %}{{ t.function.name }};{% endfor %}{% endif %}"
                            "{{ strftime_now('%Y')|length }}")
    tools = [{"type": "function", "function": {"name": "get_weather"}}]
    assert renderer.render([{"role": "user", "content": "x"}], tools=tools) == "get_weather;4"
    assert renderer.uses_tools


def test_raise_exception_becomes_a_request_error():
    renderer = ChatRenderer("{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}")
    with pytest.raises(ChatTemplateError, match="first must be user"):
        renderer.render([{"role": "system", "content": "x"}])


def test_template_is_sandboxed():
    renderer = ChatRenderer("{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(ChatTemplateError):
        renderer.render([{"role": "user", "content": "x"}])
    mutating = ChatRenderer("{% set _ = messages.append(1) %}{{ messages|length }}")
    with pytest.raises(ChatTemplateError):
        mutating.render([{"role": "user", "content": "x"}])


def test_template_without_source_falls_back_to_chatml():
    text = ChatRenderer(None).render([{"role": "user", "content": "Hi"}])
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_reasoning_start_when_the_template_opens_think():
    renderer = ChatRenderer(R1_TEMPLATE, {"bos_token": "<s>"})
    prompt = renderer.render([{"role": "assistant", "content": "Capital of France?"}])
    assert prompt.endswith("<｜Assistant｜><think>\n")
    assert decide_reasoning_start(prompt, get_markers("deepseek-r1")) == "reasoning"
    assert decide_reasoning_start(prompt, None) == "answer"


@pytest.mark.parametrize("parser, kwargs, expected", [
    ("deepseek-r1", None, "reasoning"),           # always thinks
    ("qwen3", None, "open"),                      # may think, switch on by default
    ("qwen3", {"enable_thinking": True}, "open"),
    ("qwen3", {"enable_thinking": False}, "answer"),
    ("kimi", None, "open"),                       # no switch, may think
])
def test_reasoning_start_by_family_and_switch(parser, kwargs, expected):
    prompt = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert decide_reasoning_start(prompt, get_markers(parser), kwargs) == expected


def test_closed_think_block_in_prompt_is_not_reasoning():
    prompt = "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert decide_reasoning_start(prompt, get_markers("qwen3"), {"enable_thinking": False}) == "answer"


@pytest.mark.parametrize("parser", ["deepseek-r1", "qwq", "qwen3-thinking", "qwen3"])
@pytest.mark.parametrize("kwargs", [None, {"enable_thinking": False}])
def test_a_prompt_that_closed_its_reasoning_starts_the_answer_even_for_a_family_that_always_thinks(parser, kwargs):
    """Audit 16: thinking turned off by a Qwen3-style template (`<think>\\n\\n</think>\\n\\n`), or a prefilled
    reasoning continued, was read as reasoning under deepseek-r1: the engine then wrote a `</think>` the model
    never did, and the answer went to reasoning_content. A reasoning section closed earlier in the
    conversation does not count: the new turn still starts inside reasoning."""
    closed = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\nok\n</think>\n\n"
    assert decide_reasoning_start(closed, get_markers(parser), kwargs) == "answer"
    earlier = closed + "Hello<|im_end|>\n<|im_start|>user\nAgain<|im_end|>\n<|im_start|>assistant\n"
    expected = "answer" if kwargs and parser == "qwen3" else ("reasoning" if parser != "qwen3" else "open")
    assert decide_reasoning_start(earlier, get_markers(parser), kwargs) == expected
