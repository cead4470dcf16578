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


# ---- audit 32: conversations as agent loops send them --------------------------------------------------

def test_chat_template_flag_refuses_what_is_neither_a_file_nor_a_template(tmp_path):
    """A mistyped path, or one of SGLang's built-in names (`chatml`), became every prompt's whole text."""
    from thinkform.engine.setup import _chat_template
    for value in ("chatml", str(tmp_path / "qwen3_typo.jinja")):
        with pytest.raises(ValueError, match="chat_template: .* neither a file nor a Jinja template"):
            _chat_template(value)
    sglang_json = tmp_path / "conv.json"
    sglang_json.write_text('{"name": "my_model", "system": "<|im_start|>system"}')
    with pytest.raises(ValueError, match="chat_template: .*JSON"):
        _chat_template(str(sglang_json))
    jinja = tmp_path / "t.jinja"
    jinja.write_text("{{ messages[0].content }}")
    assert _chat_template(str(jinja)) == "{{ messages[0].content }}"
    assert _chat_template("{{ messages[0].content }}!") == "{{ messages[0].content }}!"


def test_named_templates_render_tool_requests_with_tool_use():
    """Hermes-2-Pro / Command-R tokenizers ship `default` and `tool_use`: the server failed to start
    (a dict is no template); transformers renders a request with tools by `tool_use`."""
    from types import SimpleNamespace

    from thinkform.models.loader import chat_templates
    tok = SimpleNamespace(chat_template={"default": "plain:{{ messages[0].content }}",
                                         "tool_use": "tools:{{ tools|length }}:{{ messages[0].content }}"})
    default, tool_use = chat_templates(tok)
    renderer = ChatRenderer(default, tool_template=tool_use)
    msgs = [{"role": "user", "content": "Hi"}]
    assert renderer.render(msgs) == "plain:Hi"
    assert renderer.render(msgs, tools=[{"type": "function", "function": {"name": "f"}}]) == "tools:1:Hi"
    assert renderer.uses_tools
    assert chat_templates(SimpleNamespace(chat_template="x")) == ("x", None)
    # a request without tools renders with `default`: whether that one writes earlier calls is what counts
    assert not renderer.renders_calls(False)


def test_developer_messages_reach_templates_without_that_role():
    """Qwen's and DeepSeek's templates render system, user, assistant and tool only: a developer message
    (Codex-style agents, the Responses API) vanished from the prompt."""
    msgs = [{"role": "developer", "content": "Answer in French."}, {"role": "user", "content": "Hi"}]
    assert "Answer in French." in ChatRenderer(None).render(msgs)
    assert "<|im_start|>system\nAnswer in French." in ChatRenderer(None).render(msgs)
    harmony_like = ChatRenderer("{% for m in messages %}{{ m.role }}:{{ m.content }};{% endfor %}{# developer #}")
    assert harmony_like.render(msgs) == "developer:Answer in French.;user:Hi;"


def test_an_empty_tool_call_list_keeps_the_message_on_the_text_path():
    """DeepSeek-R1's template tests for the key: `tool_calls: []` took the calls' branch and dropped "Paris."."""
    renderer = ChatRenderer("{% for m in messages %}{% if 'tool_calls' in m %}CALLS{% else %}{{ m.content }}"
                            "{% endif %};{% endfor %}")
    msgs = [{"role": "user", "content": "Capital?"}, {"role": "assistant", "content": "Paris.", "tool_calls": []}]
    assert renderer.render(msgs) == "Capital?;Paris.;"


@pytest.mark.parametrize("arguments", ["", "  ", "null", None])
def test_missing_tool_call_arguments_render_as_an_empty_object(arguments):
    """Qwen3's template wrote `"arguments": }` for an empty arguments string."""
    renderer = ChatRenderer("{% for m in messages %}{% for c in m.tool_calls or [] %}"
                            "{{ c.function.arguments | tojson }}{% endfor %}{% endfor %}")
    call = {"type": "function", "function": {"name": "now", "arguments": arguments}}
    assert renderer.render([{"role": "assistant", "content": None, "tool_calls": [call]}]) == "{}"


@pytest.mark.parametrize("final", ["The answer is ", "Answer:\n", "  Lead", "Plain"])
def test_continue_final_message_keeps_the_whitespace_the_template_kept(tiny_renderer, final):
    """transformers keeps a prefill's trailing space or newline where the template does; it was stripped,
    so the model wrote the space again (`is  Paris`)."""
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": final}]
    assert tiny_renderer.render(msgs, continue_final_message=True).endswith("<|im_start|>assistant\n" + final)
    stripping = ChatRenderer("{% for m in messages %}[{{ m.content | trim }}]{% endfor %}")
    assert stripping.render(msgs, continue_final_message=True).endswith("[" + final.strip())


QWEN3_LIKE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.mark.parametrize("where", ["user", "tool"])
def test_a_think_tag_written_in_the_history_opens_no_reasoning(where):
    """A question about the `<think>` tag (or a tool result holding one) put the output in reasoning: the
    prompt was searched whole for an opened marker. Only what follows the history counts."""
    renderer = ChatRenderer(QWEN3_LIKE)
    markers = get_markers("qwen3")
    msgs = [{"role": "user", "content": "What does the <think> tag mean?"}]
    if where == "tool":
        msgs = [{"role": "user", "content": "Search"}, {"role": "tool", "content": "found: <think> is a tag"}]
    prompt = renderer.render(msgs)
    tail = renderer.generation_prompt(prompt, msgs)
    assert tail == "<|im_start|>assistant\n"
    assert decide_reasoning_start(tail, markers) == "open"
    r1 = ChatRenderer(R1_TEMPLATE)
    prompt = r1.render(msgs)
    assert decide_reasoning_start(r1.generation_prompt(prompt, msgs), get_markers("qwen3")) == "reasoning"
    continued = [*msgs, {"role": "assistant", "content": "<think>\nHmm"}]
    prompt = renderer.render(continued, continue_final_message=True)
    assert decide_reasoning_start(renderer.generation_prompt(prompt, continued, continue_final_message=True),
                                  markers) == "reasoning"


def test_a_template_that_cannot_render_calls_gets_them_as_text_and_the_tools_in_its_system_message():
    """ChatML without tools (SmolLM2's, the fallback): the assistant turn that called a tool rendered empty,
    so the model never saw what it had called, and the tool list came as a second system turn."""
    from fake_engine import FakeEngine

    from thinkform.server.openai_api import render_chat
    from thinkform.server.protocol import ChatCompletionRequest
    from thinkform.server.state import ServerState

    state = ServerState.from_engine(FakeEngine(reasoning_parser=None))
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    body = ChatCompletionRequest(tools=tools, messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}])
    prompt, _ = render_chat(state, body, tools, None)
    assert prompt.count("<|im_start|>system") == 1
    assert "You may call these tools" in prompt and "Be brief." in prompt
    assert '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' \
        in prompt
