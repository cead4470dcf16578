from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thinkform.reasoning import (REASONING_PARSERS, RawAnswerSplitter, StreamingReasoningParser, get_markers,
                                 split_reasoning)


def stream(text: str, family: str, in_reasoning: bool, cuts: list[int]) -> tuple[str, str]:
    parser = StreamingReasoningParser(get_markers(family), in_reasoning)
    reasoning, content = [], []
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(text)), len(text)]
    for lo, hi in zip(bounds, bounds[1:]):
        r, c = parser.feed(text[lo:hi])
        reasoning.append(r)
        content.append(c)
    r, c = parser.flush()
    return "".join(reasoning) + r, "".join(content) + c


# --- registry ------------------------------------------------------------------------------------

def test_registry_has_sglang_parser_names() -> None:
    for name in ("deepseek-r1", "deepseek-v3", "qwen3", "qwen3-thinking", "qwq", "glm45", "kimi",
                 "kimi_k2", "interns1", "mistral", "gpt-oss", "minimax", "step3", "step3p5", "mimo", "nemotron_3",
                 "nano_v3", "olmo3"):
        assert get_markers(name).name == name


@pytest.mark.parametrize("family", ["qwen3", "qwen3-thinking", "glm45", "interns1"])
def test_a_tool_call_begun_inside_the_reasoning_ends_it(family: str) -> None:
    """Qwen3 and GLM-4.5 may open `<tool_call>` without `</think>` (SGLang's detectors split there): the call is
    the answer's, where the tool-call parser reads it."""
    m = get_markers(family)
    call = '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'
    assert split_reasoning(f"<think>Need f.\n{call}", m, in_reasoning=False) == ("Need f.", call)
    assert split_reasoning(f"Need f.\n{call}", m, in_reasoning=True) == ("Need f.", call)
    assert split_reasoning(f"Need f.\n{call}", m.for_answer(False), in_reasoning=True) == (f"Need f.\n{call}", "")


def test_kimi_k2_reasoning_ends_at_a_tool_call_section_too() -> None:
    """Kimi-K2-Thinking may begin its calls without `</think>` (SGLang and vLLM split there as well); the
    section stays the answer's, where the kimi_k2 tool-call parser reads it."""
    m = get_markers("kimi_k2")
    call = "<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0<|tool_call_argument_begin|>{}"
    assert split_reasoning(f"<think>Need f.{call}", m, in_reasoning=False) == ("Need f.", call)
    assert split_reasoning("<think>Plain.</think>Answer", m, in_reasoning=False) == ("Plain.", "Answer")
    assert not m.thinking_enabled({"thinking": False})


def test_unknown_parser_lists_known_names() -> None:
    with pytest.raises(ValueError, match="deepseek-r1.*qwen3"):
        get_markers("nope")


def test_thinking_switches() -> None:
    qwen3, v3, r1 = get_markers("qwen3"), get_markers("deepseek-v3"), get_markers("deepseek-r1")
    assert qwen3.thinking_enabled({}) and not qwen3.thinking_enabled({"enable_thinking": False})
    assert not qwen3.starts_in_reasoning({})  # the model writes <think> itself
    assert not v3.thinking_enabled(None) and v3.thinking_enabled({"thinking": True})
    assert v3.starts_in_reasoning({"thinking": True}) and not v3.starts_in_reasoning({})
    assert r1.starts_in_reasoning({"enable_thinking": False})  # always thinks
    assert get_markers("qwen3-thinking").starts_in_reasoning()


# --- whole-text split, per family -------------------------------------------------------------

@pytest.mark.parametrize("text", ["<think>\nplan\n</think>\n\n{\"a\": 1}", "plan</think>{\"a\": 1}",
                                  "  <think>plan  </think>  {\"a\": 1}"])
def test_deepseek_r1_with_or_without_start_marker(text: str) -> None:
    assert split_reasoning(text, get_markers("deepseek-r1"), in_reasoning=True) == ("plan", '{"a": 1}')


def test_qwen3_model_writes_start() -> None:
    m = get_markers("qwen3")
    assert split_reasoning("<think>\nhmm\n</think>\n\nHi", m, in_reasoning=False) == ("hmm", "Hi")
    assert split_reasoning("Hi there", m, in_reasoning=False) == (None, "Hi there")
    # a marker later in the text is not a reasoning section
    assert split_reasoning("Hi <think>x</think>", m, in_reasoning=False) == (None, "Hi <think>x</think>")


def test_truncated_reasoning_is_all_reasoning() -> None:
    m = get_markers("qwen3-thinking")
    assert split_reasoning("still thinking ", m, in_reasoning=True) == ("still thinking ", "")
    assert split_reasoning("<think>still", get_markers("qwen3"), in_reasoning=False) == ("still", "")


def test_empty_reasoning_section() -> None:
    assert split_reasoning("</think>\n\n42", get_markers("qwq"), in_reasoning=True) == ("", "42")


@pytest.mark.parametrize("family,start,end", [("kimi", "◁think▷", "◁/think▷"), ("mistral", "[THINK]", "[/THINK]"),
                                              ("glm45", "<think>", "</think>"), ("minimax", "<think>", "</think>"),
                                              ("step3", "<think>", "</think>"),
                                              ("deepseek-v3", "<think>", "</think>")])
def test_other_families(family: str, start: str, end: str) -> None:
    m = get_markers(family)
    assert split_reasoning(f"{start}why{end}answer", m, in_reasoning=False) == ("why", "answer")
    assert split_reasoning(f"why{end} answer", m, in_reasoning=True) == ("why", "answer")


def test_gpt_oss_harmony() -> None:
    m = get_markers("gpt-oss")
    text = ("<|channel|>analysis<|message|>Need capital.<|end|><|start|>assistant"
            "<|channel|>final<|message|>{\"name\": \"Paris\"}")
    assert split_reasoning(text, m, in_reasoning=True) == ("Need capital.", '{"name": "Paris"}')
    two = ("<|channel|>analysis<|message|>one<|end|><|start|>assistant<|channel|>analysis<|message|> two"
           "<|end|><|start|>assistant<|channel|>final<|message|>ok")
    assert split_reasoning(two, m, in_reasoning=True) == ("one\n two", "ok")  # a newline between messages
    assert split_reasoning("<|channel|>analysis<|message|>cut off", m, True) == ("cut off", "")


_HEADER_CASES = {  # gpt-oss, the output starting where the template wrote `<|start|>assistant`
    # the output's first header: its recipient is a call
    " to=functions.f<|channel|>commentary json<|message|>{}": ("", "to=functions.f<|channel|>commentary json<|message|>{}"),
    # in an analysis message's text: a mention, reasoning
    "<|channel|>analysis<|message|>ask to=functions.f?<|end|><|start|>assistant<|channel|>final<|message|>No.":
        ("ask to=functions.f?", "No."),
    "<|channel|>analysis<|message|>ask to=functions.f?": ("ask to=functions.f?", ""),
    # a message's text after a header that the model wrote without the start marker
    "<|channel|>commentary<|message|>x to=functions.f": ("x to=functions.f", ""),
    # a later header (after `<|start|>`, before its `<|message|>`): a call again
    "<|channel|>analysis<|message|>a to=functions.f<|end|><|start|>assistant<|channel|>commentary json to=functions.f"
    "<|message|>{}": ("a to=functions.f", "to=functions.f<|message|>{}"),
}


@pytest.mark.parametrize("text", sorted(_HEADER_CASES))
def test_a_gpt_oss_recipient_ends_reasoning_only_in_a_header(text: str) -> None:
    """Audit: gpt-oss's bare ` to=functions.` (the recipient of the output's first header, which the template
    opened) ended the reasoning wherever it stood, in an analysis message's text too. It counts only in a
    message's header, as SGLang's and vLLM's harmony parsers read a recipient: whole, and streamed cut at every
    place (a header's `<|message|>` or `<|start|>` split over two pieces too)."""
    m = get_markers("gpt-oss")
    expected = _HEADER_CASES[text]
    assert split_reasoning(text, m, in_reasoning=True) == expected
    for cut in range(len(text) + 1):
        assert stream(text, "gpt-oss", True, [cut]) == expected, cut
        assert stream(text, "gpt-oss", True, [cut, cut + 3, cut + 7]) == expected, cut
    assert stream(text, "gpt-oss", True, list(range(len(text)))) == expected
    # the same mention without the template's header: the start marker the model wrote closes it
    assert split_reasoning("<|channel|>analysis<|message|> to=functions.f", m, in_reasoning=False) == (
        "to=functions.f", "")
    # the search over a rolling buffer: text already searched, and the state after it, are the caller's
    assert m.find_end("xx to=functions.f", in_header=True, seen=3) == ((2, " to=functions."), True)
    assert m.find_end("|>x to=functions.f", in_header=False, seen=2) == (None, False)
    assert m.find_end("<|message|> to=functions.f", in_header=True, seen=5) == (None, False)  # a closer across `seen`
    assert m.find_end("<|mess", in_header=True, seen=0) == (None, True)
    assert m.find_end("<|message|>a<|start|>assistant", in_header=True, seen=6) == (None, True)
    assert m.first_end(" to=functions.f") is None and m.first_end(" to=functions.f", in_header=True) == (
        0, " to=functions.")
    assert m.without_answer_ends.first_end(" to=functions.f", in_header=True) is None


# --- streaming ------------------------------------------------------------------------------

def test_stream_holds_back_split_end_marker() -> None:
    parser = StreamingReasoningParser(get_markers("qwen3"), in_reasoning=False)
    assert parser.feed("<thi") == ("", "")
    assert parser.feed("nk>abc </th") == ("abc", "")
    assert parser.feed("ink>\n") == ("", "")
    assert parser.feed("{}") == ("", "{}")
    assert parser.flush() == ("", "")


def test_stream_releases_false_alarm() -> None:
    parser = StreamingReasoningParser(get_markers("deepseek-r1"), in_reasoning=True)
    assert parser.feed("a </t") == ("a", "")
    assert parser.feed("able") == (" </table", "")
    assert parser.flush() == ("", "")


def test_stream_flush_keeps_partial_marker_as_reasoning() -> None:
    parser = StreamingReasoningParser(get_markers("deepseek-r1"), in_reasoning=True)
    assert parser.feed("x</thi") == ("x", "")
    assert parser.flush() == ("</thi", "")


_PIECES = {
    family: [m.start, m.end, *m.framing, *(m.header or ()), m.start[:3], m.end[:4], m.end[2:], " ", "\n",
             "a", "b c", "{\"k\": 1}", "final", "<", "|", *m.answer_ends,
             # a header end and its delimiters, whole and in parts (gpt-oss: ` to=functions.` counts in a header)
             *(("<|start|>", "<|st", " to=", "functions.", "to=functions.x") if family == "gpt-oss" else ())]
    for family, m in REASONING_PARSERS.items()
}


@st.composite
def _case(draw: st.DrawFn) -> tuple[str, str, bool, list[int]]:
    family = draw(st.sampled_from(sorted(REASONING_PARSERS)))
    text = "".join(draw(st.lists(st.sampled_from(_PIECES[family]), max_size=12)))
    cuts = draw(st.lists(st.integers(0, max(len(text), 1)), max_size=12))
    return family, text, draw(st.booleans()), cuts


@settings(max_examples=400, deadline=None)
@given(_case())
def test_stream_equals_whole_split(case: tuple[str, str, bool, list[int]]) -> None:
    family, text, in_reasoning, cuts = case
    reasoning, content = split_reasoning(text, get_markers(family), in_reasoning)
    assert stream(text, family, in_reasoning, cuts) == (reasoning or "", content)


@settings(max_examples=100, deadline=None)
@given(_case())
def test_stream_char_by_char(case: tuple[str, str, bool, list[int]]) -> None:
    family, text, in_reasoning, _ = case
    reasoning, content = split_reasoning(text, get_markers(family), in_reasoning)
    assert stream(text, family, in_reasoning, list(range(len(text)))) == (reasoning or "", content)


@settings(max_examples=400, deadline=None)
@given(_case())
def test_raw_answer_splitter_keeps_every_character_and_finds_split_reasonings_answer(
        case: tuple[str, str, bool, list[int]]) -> None:
    """separate_reasoning false with tools: the text goes out whole; the part it calls the answer (where
    tool calls may be parsed) is split_reasoning's content, but for the whitespace that strips."""
    family, text, in_reasoning, cuts = case
    splitter = RawAnswerSplitter(get_markers(family), in_reasoning)
    before, answer = "", ""
    bounds = sorted(set(cuts) | {0, len(text)})
    for lo, hi in zip(bounds, bounds[1:]):
        b, a = splitter.feed(text[lo:hi])
        assert not (answer and b)  # nothing before the answer comes after it
        before, answer = before + b, answer + a
    b, a = splitter.flush()
    before, answer = before + b, answer + a
    reasoning, content = split_reasoning(text, get_markers(family), in_reasoning)
    assert before + answer == text
    assert answer.strip() == content.strip() or (reasoning is not None and not content and not answer)


@pytest.mark.parametrize("step", [1, 3])
def test_a_constrained_answer_keeps_its_leading_whitespace(step: int) -> None:
    """Audit 36: `guided_choice: [" yes", " no"]` came back as `"yes"`, which is no choice: the split strips the
    content's leading whitespace (as SGLang's), and a grammar's answer is its text to the byte."""
    m = get_markers("deepseek-r1")
    text = "Hm.</think> yes"
    assert split_reasoning(text, m, in_reasoning=True) == ("Hm.", "yes")
    assert split_reasoning(text, m, in_reasoning=True, exact_answer=True) == ("Hm.", " yes")
    parser = StreamingReasoningParser(m, True, exact_answer=True)
    parts = [parser.feed(text[i:i + step]) for i in range(0, len(text), step)] + [parser.flush()]
    assert "".join(c for _, c in parts) == " yes"
