"""ReasoningGate with a real xgrammar matcher, a tiny byte-level BPE tokenizer and a scripted model."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import xgrammar as xgr

from thinkform.reasoning import get_markers, split_reasoning
from thinkform.server.harmony_tools import GptOssParser
from thinkform.server.tools import KimiK2Parser
from thinkform.structured.backends.base import BackendContext, CompiledGrammar
from thinkform.structured.backends.xgrammar import XGrammarBackend
from thinkform.structured.bitmask import keep_mask, only_mask, set_bits
from thinkform.structured.gate import GateError, Phase, ReasoningGate, default_answer_reserve, initial_phase
from thinkform.structured.spec import GrammarOptions, constraint_from_fields
from thinkform.structured.vocab import TokenVocab
from thinkform.testing.tokenizers import build_harmony_tokenizer, build_tiny_tokenizer

PADDING = 13  # logits rows past the tokenizer
QWEN3 = get_markers("qwen3")
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["name", "population"],
}
ANSWER = '{"name": "Paris", "population": 2147000}'
WEATHER_TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


@dataclass
class Env:
    """The gate over the project's own xgrammar backend (compact JSON, as served)."""

    tok: object
    vocab: TokenVocab
    backend: XGrammarBackend
    compiled: CompiledGrammar = field(init=False)

    def __post_init__(self) -> None:
        self.compiled = self.backend.compile(constraint_from_fields(json_schema=SCHEMA))

    @property
    def eos(self) -> int:
        return self.vocab.eos_token_ids[0]

    def ids(self, text: str) -> list[int]:
        return self.vocab.encode_text(text)

    def text(self, ids: list[int]) -> str:
        return self.vocab.bytes_of(ids).decode()

    def gate(self, phase: Phase, constrained: bool = True, **kw) -> ReasoningGate:
        matcher = self.compiled.new_matcher() if constrained else None
        return ReasoningGate(self.vocab, QWEN3, phase, matcher, **kw)


def _env(marker_is_special: bool) -> Env:
    tok = build_tiny_tokenizer(marker_is_special=marker_is_special)
    # Tokens a BPE model could well have: the end marker's tail glued to the answer's first characters.
    tok.add_tokens(['>{"', ">oops", "so</think>~"])
    vocab_size = len(tok) + PADDING
    vocab = TokenVocab.from_tokenizer(tok, vocab_size)
    ctx = BackendContext(tok, vocab_size, tuple(vocab.eos_token_ids), GrammarOptions())
    return Env(tok, vocab, XGrammarBackend(ctx))


@pytest.fixture(scope="module")
def special() -> Env:
    return _env(marker_is_special=True)


@pytest.fixture(scope="module")
def plain() -> Env:
    return _env(marker_is_special=False)


def allowed(bitmask: torch.Tensor, vocab_size: int) -> set[int]:
    words = bitmask[0].numpy().view(np.uint32)
    bits = (words[:, None] >> np.arange(32, dtype=np.uint32)) & 1
    return set(np.flatnonzero(bits.reshape(-1)[:vocab_size]).tolist())


@dataclass
class Trace:
    out: list[int]
    masked: list[bool]  # per sampling step: was the row masked


def run(env: Env, gate: ReasoningGate, think: list[int], answer: list[int], max_new_tokens: int = 200) -> Trace:
    """A scripted model: it wants its `think` tokens while reasoning, then EOS; its `answer` tokens once
    the gate is in the answer. A masked-off wish becomes the lowest allowed id."""
    think, answer = list(think), list(answer)
    out: list[int] = []
    masked: list[bool] = []
    bitmask = xgr.allocate_token_bitmask(1, env.vocab.vocab_size)
    while len(out) < max_new_tokens and not gate.finished:
        forced = gate.forced_tokens(len(out))
        if forced:
            out += forced
            gate.accept_forced(forced)
            continue
        if gate.phase in (Phase.OPEN, Phase.REASONING) and think:
            want = think.pop(0)
        elif gate.phase is Phase.ANSWER and answer:
            want = answer.pop(0)
        else:
            want = env.eos
        masked.append(gate.fill_bitmask(bitmask, 0))
        if masked[-1]:
            ok = allowed(bitmask, env.vocab.vocab_size)
            want = want if want in ok else min(ok)
        out += gate.accept(want)
        if out[-1] == env.eos and gate.may_stop():
            break
    return Trace(out, masked)


def answer_of(env: Env, out: list[int], in_reasoning: bool) -> tuple[str | None, str]:
    text = env.text([t for t in out if t != env.eos])
    return split_reasoning(text, QWEN3, in_reasoning)


# --- TokenVocab ---------------------------------------------------------------------------------

def test_vocab_bytes_and_marker_ids(special: Env, plain: Env) -> None:
    v = special.vocab
    assert v.vocab_size == len(special.tok) + PADDING
    assert all(v.token_bytes[i] == b"" for i in v.padding_ids)
    assert v.token_bytes[special.tok.convert_tokens_to_ids("Ġ\"")] == b' "'  # GPT-2 byte map undone
    assert v.encode_text("</think>") == [special.tok.convert_tokens_to_ids("</think>")]
    assert v.bytes_of(v.encode_text("<|im_end|>")) == b"<|im_end|>"
    assert v.eos_token_ids == (special.tok.convert_tokens_to_ids("<|im_end|>"),)
    ids = plain.vocab.encode_text("</think>")
    assert len(ids) > 1 and plain.vocab.bytes_of(ids) == b"</think>"
    assert plain.vocab.encode_bytes("é".encode()[:1]) == [plain.vocab.byte_ids[0xC3]]


def test_too_small_vocab_size_is_an_error(special: Env) -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        TokenVocab.from_tokenizer(special.tok, len(special.tok) - 1)


# --- the grammar waits for the end marker ---------------------------------------------------------

def test_reasoning_is_free_and_answer_constrained(special: Env) -> None:
    env = special
    think = env.ids("<think>The JSON is {broken: [1, 2 and not closed</think>")
    gate = env.gate(Phase.OPEN)
    trace = run(env, gate, think, env.ids(ANSWER))
    assert trace.out[:len(think)] == think  # nothing in the reasoning was masked away
    reasoning, content = answer_of(env, trace.out, in_reasoning=False)
    assert reasoning == "The JSON is {broken: [1, 2 and not closed"
    assert json.loads(content) == {"name": "Paris", "population": 2147000}
    assert gate.finished and gate.constraint_satisfied is True and trace.out[-1] == env.eos
    assert gate.reasoning_tokens == len(think)  # markers included
    # the row was masked only for the OPEN step and the answer steps
    assert trace.masked[0] and not any(trace.masked[1:len(think)]) and all(trace.masked[len(think):])


def test_multi_token_end_marker_switches_on_the_grammar(plain: Env) -> None:
    env = plain
    end_ids = env.ids("</think>")
    assert len(end_ids) > 1
    think = env.ids("not json: {oops") + end_ids
    gate = env.gate(Phase.REASONING)
    trace = run(env, gate, think, env.ids(ANSWER))
    assert trace.out[:len(think)] == think
    assert trace.masked[:len(think)] == [False] * len(think) and all(trace.masked[len(think):])
    reasoning, content = answer_of(env, trace.out, in_reasoning=True)
    assert reasoning == "not json: {oops" and json.loads(content)["name"] == "Paris"
    assert gate.constraint_satisfied is True


def test_answer_text_in_the_marker_token_reaches_the_grammar(plain: Env) -> None:
    env = plain
    glued = env.tok.convert_tokens_to_ids('>{"')
    think = env.ids("ok </think")  # the last marker byte comes with the answer's first bytes
    gate = env.gate(Phase.REASONING)
    gate.accept_forced(think)
    assert gate.phase is Phase.REASONING
    assert gate.accept(glued) == [glued]
    assert gate.phase is Phase.ANSWER
    assert gate.jump_forward() == b'name": "'  # the grammar already took '{"'
    rest = env.ids('name": "Paris", "population": 1}')
    for t in rest:
        assert gate.accept(t) == [t]
    assert gate.accept(env.eos) == [env.eos] and gate.finished


def test_rejected_text_after_marker_is_replaced(plain: Env) -> None:
    env = plain
    gate = env.gate(Phase.REASONING)
    gate.accept_forced(env.ids("hmm </think"))
    oops = env.tok.convert_tokens_to_ids(">oops")
    replaced = gate.accept(oops)
    assert env.text(replaced) == ">" and gate.phase is Phase.ANSWER
    whole = env.tok.convert_tokens_to_ids("so</think>~")
    gate2 = env.gate(Phase.REASONING)
    replaced = gate2.accept(whole)
    assert env.text(replaced) == "so</think>" and gate2.phase is Phase.ANSWER
    assert gate2.reasoning_tokens == len(replaced)


# --- thinking budget and answer reserve ---------------------------------------------------------

def test_thinking_budget_forces_the_end_marker(plain: Env) -> None:
    env = plain
    gate = env.gate(Phase.REASONING, max_reasoning_tokens=5)
    think = env.ids("let me think step by step about the capital of France " * 3)
    trace = run(env, gate, think, env.ids(ANSWER))
    end_ids = env.ids("</think>")
    assert trace.out[:5] == think[:5] and trace.out[5:5 + len(end_ids)] == end_ids
    assert gate.reasoning_tokens == 5 + len(end_ids)
    assert json.loads(answer_of(env, trace.out, True)[1])["population"] == 2147000


@pytest.mark.parametrize("constrained", [True, False])
def test_answer_reserve_keeps_room_for_the_answer(special: Env, constrained: bool) -> None:
    env = special
    max_new = 80
    assert default_answer_reserve(max_new) == 20 and default_answer_reserve(10_000) == 128
    gate = env.gate(Phase.REASONING, constrained, max_new_tokens=max_new)
    think = env.ids("the capital of France is Paris " * 30)
    trace = run(env, gate, think, env.ids(ANSWER), max_new_tokens=max_new)
    cut = max_new - 20 - len(gate._close_ids)  # the reserve is the answer's; the marker's tokens come on top
    assert trace.out[:cut] == think[:cut] and trace.out[cut] == env.ids("</think>")[0]
    assert json.loads(answer_of(env, trace.out, True)[1])["name"] == "Paris"
    assert gate.constraint_satisfied is (True if constrained else None)


def test_a_marker_of_many_tokens_still_leaves_the_answer_its_reserve(plain: Env) -> None:
    """`</think>` spelled in several tokens: forced early enough that the marker and the reserve both fit
    (the marker was cut by max_new_tokens and no answer came)."""
    env = plain
    assert len(env.ids("</think>")) > 1
    gate = env.gate(Phase.REASONING, max_new_tokens=40, answer_reserve_tokens=3)
    trace = run(env, gate, env.ids("the capital of France is Paris " * 30), env.ids(ANSWER), max_new_tokens=40)
    assert len(trace.out) <= 40 and gate.phase is not Phase.REASONING
    assert trace.out.count(env.ids("</think>")[0]) >= 1 and 40 - trace.out.index(env.ids("</think>")[0]) >= 3


@pytest.mark.parametrize("env_name", ["special", "plain"])
def test_a_budget_that_falls_inside_a_character_lets_it_finish(request, env_name: str) -> None:
    """A thinking budget reached after the first byte of a character (CJK, emoji: several byte tokens) cut it,
    and reasoning_content ended in U+FFFD. The end marker now waits for the character (a few tokens at most)."""
    env = request.getfixturevalue(env_name)
    think = env.ids("ab 东西南北 🙂 " * 8)
    cuts = [k for k in range(1, len(think)) if env.vocab.bytes_of(think[:k]).decode("utf-8", "replace").endswith("\ufffd")]
    assert cuts  # the reasoning has budgets that fall inside a character
    end = env.ids("</think>")
    for budget in cuts[:6]:
        gate = env.gate(Phase.REASONING, max_reasoning_tokens=budget)
        trace = run(env, gate, think, env.ids(ANSWER))
        at = next(i for i in range(len(trace.out)) if trace.out[i:i + len(end)] == end)
        assert budget < at <= budget + 3, (budget, at)
        env.vocab.bytes_of(trace.out[:at]).decode("utf-8")  # whole characters only
        assert json.loads(answer_of(env, trace.out, True)[1])["population"] == 2147000


@pytest.mark.parametrize("constrained", [True, False])
def test_a_reserve_of_zero_lets_reasoning_run_to_max_new_tokens(special: Env, constrained: bool) -> None:
    """Audit 16: `answer_reserve_tokens: 0` still replaced the last token with `</think>`; 0 keeps nothing,
    so the model's own reasoning runs to max_new_tokens as in SGLang and vLLM (a thinking budget still acts)."""
    env = special
    gate = env.gate(Phase.REASONING, constrained, max_new_tokens=40, answer_reserve_tokens=0)
    think = env.ids("the capital of France is Paris " * 30)
    trace = run(env, gate, think, env.ids(ANSWER), max_new_tokens=40)
    assert trace.out == think[:40] and gate.phase is Phase.REASONING
    gate = env.gate(Phase.REASONING, constrained, max_new_tokens=40, answer_reserve_tokens=0, max_reasoning_tokens=5)
    trace = run(env, gate, think, env.ids(ANSWER), max_new_tokens=40)
    assert trace.out[5] == env.ids("</think>")[0] and gate.phase is not Phase.REASONING


# --- EOS guard ----------------------------------------------------------------------------------

def test_eos_while_reasoning_becomes_the_end_marker_and_no_empty_answer(special: Env) -> None:
    env = special
    gate = env.gate(Phase.OPEN)
    bitmask = xgr.allocate_token_bitmask(1, env.vocab.vocab_size)
    gate.accept_forced(env.ids("<think>done"))
    assert not gate.may_stop()  # stop strings / stop ids do not act inside constrained reasoning
    assert env.text(gate.accept(env.eos)) == "</think>" and gate.phase is Phase.ANSWER
    assert gate.fill_bitmask(bitmask, 0) and env.eos not in allowed(bitmask, env.vocab.vocab_size)
    assert not gate.may_stop() and gate.constraint_satisfied is False
    gate.accept_forced(env.ids('{"name": "Paris"'))
    gate.fill_bitmask(bitmask, 0)
    assert env.eos not in allowed(bitmask, env.vocab.vocab_size)  # the grammar cannot end here
    gate.accept_forced(env.ids(', "population": 3}'))
    gate.fill_bitmask(bitmask, 0)
    ok = allowed(bitmask, env.vocab.vocab_size)
    assert env.eos in ok and gate.may_stop()
    assert not ok & set(env.vocab.padding_ids)
    assert gate.accept(env.eos) == [env.eos] and gate.finished


def test_eos_guard_only_under_a_constraint(special: Env) -> None:
    gate = special.gate(Phase.REASONING, constrained=False)
    assert gate.accept(special.eos) == [special.eos] and gate.may_stop()
    assert gate.constraint_satisfied is None


def test_cut_answer_is_reported(special: Env) -> None:
    env = special
    gate = env.gate(Phase.REASONING, answer_reserve_tokens=0)
    run(env, gate, env.ids("x</think>"), env.ids(ANSWER), max_new_tokens=6)
    assert gate.phase is Phase.ANSWER and gate.constraint_satisfied is False


# --- rollback -----------------------------------------------------------------------------------

def test_rollback_across_the_end_marker(plain: Env) -> None:
    env = plain
    gate = env.gate(Phase.REASONING)
    before = env.ids("I think")
    marker_and_answer = env.ids("</think>") + env.ids('{"name": "Pa')
    gate.accept_forced(before + marker_and_answer)
    assert gate.phase is Phase.ANSWER
    gate.rollback(len(marker_and_answer) - 1)  # back inside the marker: reasoning again
    assert gate.phase is Phase.REASONING and gate.reasoning_tokens == len(before) + 1
    assert not gate.fill_bitmask(xgr.allocate_token_bitmask(1, env.vocab.vocab_size), 0)
    # replaying must work from the grammar's start: the matcher was rolled back too
    gate.accept_forced(marker_and_answer[1:] + env.ids('ris", "population": 5}'))
    assert gate.constraint_satisfied is True
    gate.rollback(3)
    assert gate.constraint_satisfied is False
    gate.accept_forced(env.ids('ris", "population": 5}')[-3:])
    assert gate.accept(env.eos) == [env.eos] and gate.finished


def test_rollback_undoes_text_taken_with_the_marker(plain: Env) -> None:
    env = plain
    gate = env.gate(Phase.REASONING)
    glued = env.tok.convert_tokens_to_ids('>{"')
    gate.accept_forced(env.ids("a </think") + [glued])
    gate.rollback(1)
    assert gate.phase is Phase.REASONING
    gate.accept_forced(env.ids('>{"name": "X", "population": 1}'))
    assert gate.constraint_satisfied is True
    with pytest.raises(GateError):
        gate.rollback(1000)


# --- OPEN: the model may or may not open reasoning ----------------------------------------------

def test_open_mask_is_grammar_plus_start_marker(special: Env) -> None:
    env = special
    gate = env.gate(Phase.OPEN)
    bitmask = xgr.allocate_token_bitmask(1, env.vocab.vocab_size)
    assert gate.fill_bitmask(bitmask, 0)
    ok = allowed(bitmask, env.vocab.vocab_size)
    assert env.ids("<think>")[0] in ok and env.ids('{"')[0] in ok
    assert env.tok.convert_tokens_to_ids("Paris") not in ok and env.eos not in ok


def test_open_answering_directly(special: Env) -> None:
    env = special
    gate = env.gate(Phase.OPEN)
    trace = run(env, gate, [], env.ids(ANSWER))
    assert answer_of(env, trace.out, False) == (None, ANSWER)
    assert gate.reasoning_tokens == 0 and gate.finished


def test_open_multi_token_start_marker_is_completed(plain: Env) -> None:
    env = plain
    start = env.ids("<think>")
    gate = env.gate(Phase.OPEN)
    assert gate.accept(start[0]) == start and gate.phase is Phase.REASONING
    trace = run(env, gate, env.ids("why not</think>"), env.ids(ANSWER))
    assert answer_of(env, start + trace.out, False) == ("why not", ANSWER)


def test_open_unconstrained_detects_a_spelled_start_marker(plain: Env) -> None:
    env = plain
    gate = env.gate(Phase.OPEN, constrained=False)
    gate.accept_forced(env.ids("\n<think>x"))
    assert gate.phase is Phase.REASONING
    other = env.gate(Phase.OPEN, constrained=False)
    other.accept_forced(env.ids("<tab"))
    assert other.phase is Phase.ANSWER and other.reasoning_tokens == 0


def test_initial_phase() -> None:
    assert initial_phase(QWEN3, {}) is Phase.OPEN
    assert initial_phase(QWEN3, {"enable_thinking": False}) is Phase.ANSWER
    assert initial_phase(get_markers("deepseek-r1")) is Phase.REASONING
    assert initial_phase(get_markers("deepseek-v3")) is Phase.ANSWER
    assert initial_phase(None) is Phase.ANSWER


# --- anti-runaway guard hook --------------------------------------------------------------------

class RecordingGuard:
    def __init__(self, banned: int, vocab_size: int) -> None:
        self.seen = b""
        self._keep = keep_mask(vocab_size, (vocab_size + 31) // 32, [banned]).numpy()

    def reset(self) -> None:
        self.seen = b""

    def observe(self, data: bytes) -> None:
        self.seen += data

    def keep(self) -> np.ndarray:
        return self._keep


def test_guard_sees_answer_only_and_restricts(special: Env) -> None:
    env = special
    digit = env.ids("2")[0]
    guard = RecordingGuard(digit, env.vocab.vocab_size)
    gate = ReasoningGate(env.vocab, QWEN3, Phase.REASONING, env.compiled.new_matcher(), guards=[guard])
    answer = env.ids('{"name": "P", "population": ')
    gate.accept_forced(env.ids("thinking 123</think>") + answer)
    assert guard.seen == b'{"name": "P", "population": '
    bitmask = xgr.allocate_token_bitmask(1, env.vocab.vocab_size)
    gate.fill_bitmask(bitmask, 0)
    ok = allowed(bitmask, env.vocab.vocab_size)
    assert digit not in ok and env.ids("1")[0] in ok
    gate.rollback(2)
    assert gate.guards == (guard,) and guard.seen == env.text(answer[:-2]).encode()  # replayed after the rollback


class FixedGuard(RecordingGuard):
    """Keeps exactly `kept` (or everything but `banned`)."""

    def __init__(self, vocab_size: int, kept: list[int] | None = None, banned: list[int] | None = None) -> None:
        super().__init__(0, vocab_size)
        words = (vocab_size + 31) // 32
        self._keep = (only_mask(vocab_size, words, kept) if kept is not None
                      else keep_mask(vocab_size, words, banned)).numpy()


def test_guards_that_disagree_apply_one_by_one(special: Env) -> None:
    """Two guards whose keeps together leave no token: the first one that leaves something wins, the
    other one stands aside, and the gate's own rule (no reasoning marker inside the answer) still holds,
    even over a grammar mask that allowed the marker."""
    env = special
    size = env.vocab.vocab_size
    one, two = env.ids("1")[0], env.ids("2")[0]
    end_marker = env.ids("</think>")[0]
    for guards, expect in (
        ([FixedGuard(size, kept=[one, end_marker]), FixedGuard(size, banned=[one])], {one}),
        ([FixedGuard(size, kept=[end_marker]), FixedGuard(size, kept=[two])], {two}),
    ):
        gate = env.gate(Phase.ANSWER, guards=guards)
        gate.accept_forced(env.ids('{"name": "P", "population": '))
        bitmask = xgr.allocate_token_bitmask(1, size)
        gate.matcher_to_fill().fill_bitmask(bitmask, 0)
        set_bits(bitmask, 0, [end_marker], True)
        assert gate.finish_bitmask(bitmask, 0)
        assert allowed(bitmask, size) == expect


def test_an_answer_end_the_grammar_begins_with_is_the_grammars(plain: Env) -> None:
    """Kimi-K2-Thinking may begin its tool calls without `</think>`: the call section's opening tag ends the
    reasoning and heads the answer. The tool calls' grammar begins with that tag too; it was not fed it, so
    the grammar asked for it again (the scripted model's `[` was masked off, the answer spelled the tag
    twice) and, under `auto`, the calls after it went unconstrained. Now the grammar takes it."""
    kimi = get_markers("kimi_k2")
    section = "<|tool_calls_section_begin|>"
    compiled = plain.backend.compile(constraint_from_fields(ebnf=f'root ::= "{section}" "[" [a-z]+ "]"'))
    gate = ReasoningGate(plain.vocab, kimi, Phase.REASONING, compiled.new_matcher())
    trace = run(plain, gate, plain.ids("plan: call it" + section), plain.ids("[ab]"))
    text = plain.text([t for t in trace.out if t != plain.eos])
    assert text.endswith(f"it{section}[ab]") and text.count(section) == 1, text
    assert gate.finished and gate.constraint_satisfied
    # the same with Kimi-K2's own tool-call tags, required and auto
    call = ('<|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{"city": "Paris"}'
            '<|tool_call_end|><|tool_calls_section_end|>')
    for mode in ("required", "auto"):
        tag = KimiK2Parser().structural_tag(WEATHER_TOOLS, mode)
        compiled = plain.backend.compile(constraint_from_fields(structural_tag=json.dumps(tag)))
        gate = ReasoningGate(plain.vocab, kimi, Phase.REASONING, compiled.new_matcher())
        trace = run(plain, gate, plain.ids("I will look" + section), plain.ids(call))
        text = plain.text([t for t in trace.out if t != plain.eos])
        assert text.endswith(section + call) and text.count(section) == 1, (mode, text)
        assert gate.constraint_satisfied, mode
    # audit 22: a token that ends the tag and carries text no call begins with (`>oops`): under `auto` the
    # text alone was taken as free text, the tag never fed, and the call after it went unconstrained (an
    # integer city passed). The token becomes the tag's own; the call is the grammar's.
    oops = plain.tok.convert_tokens_to_ids(">oops")
    for mode, answer in (("required", call), ("auto", call), ("auto", call.replace('"Paris"', "5"))):
        tag = KimiK2Parser().structural_tag(WEATHER_TOOLS, mode)
        compiled = plain.backend.compile(constraint_from_fields(structural_tag=json.dumps(tag)))
        gate = ReasoningGate(plain.vocab, kimi, Phase.REASONING, compiled.new_matcher())
        trace = run(plain, gate, plain.ids("I will look" + section[:-1]) + [oops], plain.ids(answer))
        text = plain.text([t for t in trace.out if t != plain.eos])
        assert "oops" not in text and text.count(section) == 1 and '"city": 5' not in text, (mode, text)
        assert gate.constraint_satisfied or answer != call, (mode, text)
    # a grammar that rejects the tag (a JSON schema: no tools) gets what follows it
    json_gate = ReasoningGate(plain.vocab, kimi, Phase.REASONING, plain.compiled.new_matcher())
    trace = run(plain, json_gate, plain.ids("so" + section), plain.ids(ANSWER))
    assert plain.text([t for t in trace.out if t != plain.eos]).endswith(section + ANSWER)
    assert json_gate.constraint_satisfied


def test_a_call_header_that_ends_gpt_oss_reasoning_stays_outside_its_grammar(plain: Env) -> None:
    """gpt-oss's calls' grammar begins after a call's header, and under `auto` reads other text as free
    text that cannot hold `<|message|>`: fed the header, it would have taken it as free text and then
    refused the call's own `<|message|>`. The header is the answer's head, the grammar gets the call."""
    tag = GptOssParser().structural_tag(WEATHER_TOOLS, "auto")
    compiled = plain.backend.compile(constraint_from_fields(structural_tag=json.dumps(tag)))
    gate = ReasoningGate(plain.vocab, get_markers("gpt-oss"), Phase.REASONING, compiled.new_matcher())
    call = 'get_weather <|constrain|>json<|message|>{"city": "Paris"}'
    trace = run(plain, gate, plain.ids("I will look it up to=functions."), plain.ids(call))
    assert plain.text([t for t in trace.out if t != plain.eos]).endswith(" to=functions." + call)
    assert gate.constraint_satisfied


@pytest.fixture(scope="module")
def harmony() -> Env:
    """gpt-oss's own framing tokens (`<|start|>`, `<|message|>`, … one token each)."""
    tok = build_harmony_tokenizer()
    vocab_size = len(tok) + PADDING
    vocab = TokenVocab.from_tokenizer(tok, vocab_size)
    ctx = BackendContext(tok, vocab_size, tuple(vocab.eos_token_ids), GrammarOptions())
    return Env(tok, vocab, XGrammarBackend(ctx))


def _gpt_oss_gate(env: Env, mode: str = "auto") -> ReasoningGate:
    tag = GptOssParser().structural_tag(WEATHER_TOOLS, mode)
    compiled = env.backend.compile(constraint_from_fields(structural_tag=json.dumps(tag)))
    return ReasoningGate(env.vocab, get_markers("gpt-oss"), Phase.REASONING, compiled.new_matcher())


GPT_OSS_MENTION = "<|channel|>analysis<|message|>I could send it to=functions.get_weather but no.<|end|><|start|>assistant"


@pytest.mark.parametrize("env_name", ["plain", "harmony"])
@pytest.mark.parametrize("mode", ["auto", "required"])
def test_a_recipient_mentioned_in_gpt_oss_analysis_does_not_start_the_call_grammar(request, env_name: str,
                                                                                  mode: str) -> None:
    """Audit: `to=functions.NAME` written in the analysis message's text ended the reasoning there, and the
    calls' grammar took over mid-sentence. Only a header's recipient is a call (SGLang's and vLLM's harmony
    parsers): the mention is reasoning, unmasked, and the real call header after it starts the grammar."""
    env: Env = request.getfixturevalue(env_name)
    gate = _gpt_oss_gate(env, mode)
    header = "<|channel|>commentary to=functions."
    call = 'get_weather <|constrain|>json<|message|>{"city": "Paris"}'
    think = env.ids(GPT_OSS_MENTION + header)
    trace = run(env, gate, think, env.ids(call))
    assert env.text([t for t in trace.out if t != env.eos]) == GPT_OSS_MENTION + header + call
    assert trace.masked[:len(think)] == [False] * len(think)  # the whole analysis ran free
    assert gate.constraint_satisfied


@pytest.mark.parametrize("env_name", ["plain", "harmony"])
def test_a_mention_then_the_final_channel_answers_in_text(request, env_name: str) -> None:
    env: Env = request.getfixturevalue(env_name)
    gate = _gpt_oss_gate(env)
    think = env.ids(GPT_OSS_MENTION + "<|channel|>final<|message|>")
    trace = run(env, gate, think, env.ids("Sunny."))
    assert env.text([t for t in trace.out if t != env.eos]) == GPT_OSS_MENTION + "<|channel|>final<|message|>Sunny."
    assert gate.constraint_satisfied


@pytest.mark.parametrize("env_name", ["plain", "harmony"])
def test_a_recipient_in_a_later_gpt_oss_header_still_starts_the_call(request, env_name: str) -> None:
    """The bare ` to=functions.` counts in any header, not only the output's first: after `<|start|>`, before
    the header's `<|message|>`."""
    env: Env = request.getfixturevalue(env_name)
    gate = _gpt_oss_gate(env, "required")
    # (`<|start|>assistant to=functions.` and `<|channel|>commentary to=functions.` are ends of their own)
    think = env.ids("<|channel|>analysis<|message|>Look it up.<|end|><|start|>assistant<|channel|>commentary json"
                    " to=functions.")
    trace = run(env, gate, think, env.ids('get_weather <|constrain|>json<|message|>{"city": "Paris"}'))
    assert env.text([t for t in trace.out if t != env.eos]).endswith(' json to=functions.get_weather <|constrain|>'
                                                                    'json<|message|>{"city": "Paris"}')
    assert gate.constraint_satisfied


@pytest.mark.parametrize("env_name", ["plain", "harmony"])
def test_rollback_restores_whether_gpt_oss_is_inside_a_header(request, env_name: str) -> None:
    """The header state follows rollback: undoing a `<|message|>` puts the output back in its header (a
    recipient there is a call), undoing a `<|start|>` puts it back in a message's text (a mention)."""
    env: Env = request.getfixturevalue(env_name)
    # the output's first header: a call
    assert _recipient_after_undoing(env, "", "<|channel|>analysis<|message|>") is Phase.ANSWER
    # back in the analysis text: a mention
    assert _recipient_after_undoing(env, "<|channel|>analysis<|message|>Hm.<|end|>", "<|start|>") is Phase.REASONING


def _recipient_after_undoing(env: Env, before: str, undone: str) -> Phase:
    """The gate's phase after `before`, then `undone` written and rolled back, then a bare recipient."""
    gate = _gpt_oss_gate(env)
    for t in env.ids(before):
        gate.accept(t)
    written = env.ids(undone)
    for t in written:
        gate.accept(t)
    gate.rollback(len(written))
    for t in env.ids(" to=functions."):
        gate.accept(t)
    return gate.phase
