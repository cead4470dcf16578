"""Budget closing: a JSON answer near the end of max_new_tokens is steered to a valid end instead of cut."""
from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from thinkform.structured.closing import ClosingRules, closing_reserve

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "pattern": "^\\w+$"},
                                           "population": {"type": "integer"}},
          "required": ["name", "population"]}
TOKENS = [b"abc", b'"', b"}", b'"}', b" ", b",", b":", b"0", b"1", b"<eos>", b'", "']
EOS = 9


def _allowed(mask: torch.Tensor) -> set[bytes]:
    return {TOKENS[i] for i in range(len(TOKENS)) if (int(mask[0, i // 32]) >> (i % 32)) & 1}


def _after(rules: ClosingRules, allowed: set[bytes], may_end: bool) -> set[bytes]:
    mask = torch.zeros((1, 1), dtype=torch.int32)
    for i, t in enumerate(TOKENS):
        if t in allowed:
            mask[0, 0] |= 1 << i
    rules.restrict(mask.numpy()[0], may_end)
    return _allowed(mask)


def test_the_first_allowed_tier_wins() -> None:
    rules = ClosingRules(TOKENS, [EOS])
    everything = set(TOKENS)
    assert _after(rules, everything, may_end=True) == {b"<eos>"}
    assert _after(rules, everything, may_end=False) == {b'"', b"}", b'"}'}
    assert _after(rules, {b"abc", b"0", b"1", b",", b'", "'}, may_end=False) == {b"0", b",", b'", "'}
    assert _after(rules, {b"abc", b"1"}, may_end=False) == {b"abc", b"1"}  # nothing to close with: unchanged


def test_inside_a_string_closing_begins_with_its_quote() -> None:
    """Audit 29: inside a string its `}` and `]` are text, so the closers' tier let the steered answer write
    them into it (`"b": "]`) instead of closing it; there the tokens that begin with `"` come first."""
    rules = ClosingRules(TOKENS, [EOS])
    mask = torch.zeros((1, 1), dtype=torch.int32)
    for i, t in enumerate(TOKENS):
        if t != b"<eos>":
            mask[0, 0] |= 1 << i
    rules.restrict(mask.numpy()[0], False, in_string=True)
    assert _allowed(mask) == {b'"', b'"}'}
    assert _after(rules, {b"abc", b"}"}, may_end=False) == {b"}"}  # no quote to begin with: the closers' tier


def test_the_reserve_is_a_quarter_of_the_budget_up_to_32() -> None:
    assert [closing_reserve(n) for n in (8, 64, 128, 2048)] == [2, 16, 32, 32]


def test_a_gate_near_its_budget_lets_only_closing_tokens_through(tiny_tokenizer) -> None:
    from thinkform.structured.backends import BackendContext, create_backend
    from thinkform.structured.gate import Phase, ReasoningGate
    from thinkform.structured.spec import GrammarOptions, constraint_from_fields
    from thinkform.structured.vocab import TokenVocab

    vocab = TokenVocab.from_tokenizer(tiny_tokenizer, len(tiny_tokenizer))
    backend = create_backend("xgrammar", BackendContext(tiny_tokenizer, vocab.vocab_size, vocab.eos_token_ids,
                                                        GrammarOptions()))
    compiled = backend.compile(constraint_from_fields(json_schema=SCHEMA))
    rules = ClosingRules(vocab.token_bytes, vocab.eos_token_ids)
    prefix = vocab.encode_text('{"name": "abc')

    def allowed(written: int) -> set[bytes]:
        """Allowed next tokens after `written` tokens of a 64-token budget (closing reserve: 16)."""
        gate = ReasoningGate(vocab, None, Phase.ANSWER, compiled.new_matcher(), max_new_tokens=64, closing=rules)
        gate.accept_forced(prefix)
        for _ in range(written - len(prefix)):
            gate.accept_forced(vocab.encode_text("a"))
        mask = torch.zeros((1, (vocab.vocab_size + 31) // 32), dtype=torch.int32)
        gate.fill_bitmask(mask, 0)
        ids = [i for i in range(vocab.vocab_size) if (int(mask[0, i // 32]) >> (i % 32)) & 1]
        return {vocab.token_bytes[i] for i in ids}

    far = allowed(47)
    assert b"a" in far  # 17 tokens left: the string may go on
    near = allowed(48)
    assert near and all(t.strip(b'"}], :0') == b"" for t in near), near
    assert all(t.lstrip().startswith(b'"') for t in near), near  # inside the string: its quote first


@pytest.mark.parametrize("jump_forward", [True, False])
def test_random_models_answer_in_valid_json_within_a_small_budget(tiny_model_dirs, jump_forward) -> None:
    """A random model never closes a free string by itself; every answer must still arrive whole."""
    from thinkform import Engine

    params = [{"temperature": 1.0, "seed": i, "max_new_tokens": 64, "json_schema": json.dumps(SCHEMA)}
              for i in range(12)]
    with Engine(model_path=str(tiny_model_dirs["qwen2"]), max_total_tokens=4096,
                disable_jump_forward=not jump_forward) as engine:
        outs = engine.generate(["Name and population?"] * len(params), params)
    for out in outs:
        assert out["meta_info"]["finish_reason"]["type"] == "stop", out
        assert out["meta_info"]["completion_tokens"] <= 64
        jsonschema.validate(json.loads(out["text"]), SCHEMA)
    assert sum(o["meta_info"]["closed_by_budget"] for o in outs) >= len(outs) // 2  # random models rarely end


def test_the_fallback_closes_an_open_string_with_its_quote(tiny_model_dirs, monkeypatch) -> None:
    """Audit 29: where the ending search finds nothing (its time guard ran out under load), the fallback let
    a random model write `}` and `]` into the open string (`"b": "]`). Free strings, no search: each value
    the model left open is closed by its quote, never filled with brackets."""
    from thinkform import Engine
    from thinkform.structured.ending import EndingSearch

    monkeypatch.setattr(EndingSearch, "ending_tokens", lambda self, *a, **k: None)
    two = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}}, "required": ["a", "b"]}
    params = [{"temperature": 1.0, "seed": i, "max_new_tokens": 40, "json_schema": json.dumps(two)} for i in range(8)]
    with Engine(model_path=str(tiny_model_dirs["qwen2"]), max_total_tokens=4096) as engine:
        outs = engine.generate(["Two words?"] * len(params), params)
    ended = [json.loads(o["text"]) for o in outs if o["meta_info"]["finish_reason"]["type"] == "stop"]
    assert len(ended) >= 6, [o["text"] for o in outs]
    for value in ended:
        assert not any(v.strip() and not v.strip("}] ") for v in value.values()), value  # brackets, not spaces


def test_an_answer_that_ends_on_its_own_is_not_marked_closed(tiny_model_dirs) -> None:
    from thinkform import Engine

    with Engine(model_path=str(tiny_model_dirs["qwen2"]), max_total_tokens=4096) as engine:
        out = engine.generate("Yes or no?", {"temperature": 0, "max_new_tokens": 64,
                                             "json_schema": json.dumps({"enum": ["yes", "no"]})})
    assert json.loads(out["text"]) in ("yes", "no")
    assert out["meta_info"]["closed_by_budget"] is False


# --- regex and EBNF answers: the grammar's shortest ending, appended near the budget -------------------------

ENDING_CASES = [  # (constraint kind, source, a Python regex of the same language, answer so far)
    ("regex", r"[a-z]+@[a-z]+\.com", r"[a-z]+@[a-z]+\.com", "abc"),
    ("regex", r"\d{3}-\d{4}", r"\d{3}-\d{4}", "12"),
    ("regex", r"[a-z]{40}", r"[a-z]{40}", "abc"),
    ("regex", r"(yes|no)", r"(yes|no)", ""),
    ("regex", r"[A-Z][a-z]+ [A-Z]Z", r"[A-Z][a-z]+ [A-Z]Z", "Ab"),
    ("regex", r"(x+x+)+y", r"(x+x+)+y", "xxxxxx"),  # ambiguous: xgrammar slows down with every x
    ("regex", r"[A-Z][a-z]+( [a-z]+){3,20}\.", r"[A-Z][a-z]+( [a-z]+){3,20}\.", "Abc de"),  # counted words
    # loops whose mask no single byte changes until the answer may end (audit 14): a domain whose class takes
    # the dot, dotted names where `.` and `@` lead to the same mask, a URL's host
    ("regex", r"[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,4}", r"[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,4}", "ab@cd"),
    ("regex", r"[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,4}", r"[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,4}", "ab"),
    ("regex", r"[a-z]+(\.[a-z]+)*@[a-z]+(\.[a-z]+)*\.[a-z]{2,4}", r"[a-z]+(\.[a-z]+)*@[a-z]+(\.[a-z]+)*\.[a-z]{2,4}",
     "ab.c"),
    ("regex", r"https?://[a-z0-9.-]+\.[a-z]{2,6}(/[a-z0-9]*)*", r"https?://[a-z0-9.-]+\.[a-z]{2,6}(/[a-z0-9]*)*",
     "https://ab"),
    # a fixed closing text whose letters the loop before it takes too: the grammar's literals, tried whole
    ("regex", r"<answer>.*</answer>", r"<answer>.*</answer>", "<answer>ab"),
    ("regex", r"(\w+=\"[^\"]*\"; )+end", r"(\w+=\"[^\"]*\"; )+end", "a"),
    ("regex", r"(\w+ )+done", r"(\w+ )+done", "ab "),
    ("regex", r"<a>.*</a><b>.*</b>", r"<a>.*</a><b>.*</b>", "<a>ab"),
    # literal alternatives after a loop, and a URL's path and query after a host whose class takes the dot
    ("regex", r"[a-z0-9.]+@[a-z0-9.-]+\.(com|org|net)", r"[a-z0-9.]+@[a-z0-9.-]+\.(com|org|net)", "ab@cd"),
    ("regex", r"https?://[a-z0-9.-]+\.[a-z]{2,4}/[a-z/]*\?q=[a-z]+", r"https?://[a-z0-9.-]+\.[a-z]{2,4}/[a-z/]*\?q=[a-z]+",
     "http://ab.cd"),
    ("ebnf", 'root ::= "<a>" t* "</a>" "<b>" t* "</b>"\nt ::= [a-z<>/ ]', r"<a>[a-z<>/ ]*</a><b>[a-z<>/ ]*</b>", "<a>ab"),
    ("ebnf", 'root ::= "(" item ("," item)* ")"\nitem ::= [a-z]+', r"\([a-z]+(,[a-z]+)*\)", "(ab,cd"),
    ("ebnf", 'root ::= expr\nexpr ::= term ("+" term)*\nterm ::= "(" expr ")" | [0-9]+', None, "((1+(2+((3"),
    # keywords after a name: the way out is a space, where a comma (another column) also changes the state
    ("ebnf", 'root ::= "SELECT " cols " FROM " name ";"\ncols ::= "*" | name (", " name)*\nname ::= [a-z_]+',
     r"SELECT (\*|[a-z_]+(, [a-z_]+)*) FROM [a-z_]+;", "SELECT ab"),
    # the same loops as a JSON string's pattern: its literal runs, tried where the string cannot close yet
    # (the search wrote `\"` for ever under llguidance, and nothing under xgrammar)
    *(("json_schema", json.dumps({"type": "object", "properties": {"x": {"type": "string", "pattern": pattern}},
                                  "required": ["x"]}), '\\{"x": "' + language + '"\\}', '{"x": "' + prefix)
      for pattern, language, prefix in ((r"^.*END$", r".*END", "abc"), (r"^<answer>.*</answer>$", r"<answer>.*</answer>",
                                                                         "<answer>ab"),
                                        (r"^(\w+ )+done$", r"(\w+ )+done", "ab "))),
]


def _balanced_sum(text: str) -> bool:
    """The second EBNF case's language: sums of numbers and parenthesised sums."""
    import re

    while re.search(r"\(\d+(\+\d+)*\)", text):
        text = re.sub(r"\(\d+(\+\d+)*\)", "0", text)
    return re.fullmatch(r"\d+(\+\d+)*", text) is not None


def test_a_schemas_patterns_are_found_under_properties_of_any_name() -> None:
    """Audit 24: the walk skipped the data keywords' values (`enum`, `pattern`, ...) and with them properties
    named so, whose patterns' literals the search then lacked. A property map is walked by value."""
    from thinkform.structured.literals import grammar_literals
    from thinkform.structured.spec import constraint_from_fields

    schema = {"type": "object", "properties": {"pattern": {"type": "string", "pattern": "^.*END$"},
                                               "enum": {"type": "string", "pattern": "^.*STOP$"}},
              "enum": [{"pattern": "^.*DATA$"}]}
    assert grammar_literals(constraint_from_fields(json_schema=json.dumps(schema))) == (b"END", b"STOP")


@pytest.mark.parametrize("backend,kind,source,language,prefix",
                         [(b, *case) for b in ("xgrammar", "llguidance", "outlines") for case in ENDING_CASES
                          if b != "outlines" or case[0] == "regex"])  # outlines compiles no EBNF
def test_the_ending_search_completes_a_sentence_of_the_grammar(tiny_tokenizer, backend, kind, source, language,
                                                              prefix) -> None:
    import re

    from thinkform.structured.backends import BackendContext, create_backend
    from thinkform.structured.ending import EndingSearch
    from thinkform.structured.literals import grammar_literals
    from thinkform.structured.spec import GrammarOptions, constraint_from_fields
    from thinkform.structured.vocab import TokenVocab

    vocab = TokenVocab.from_tokenizer(tiny_tokenizer, len(tiny_tokenizer))
    compiled = create_backend(backend, BackendContext(tiny_tokenizer, vocab.vocab_size, vocab.eos_token_ids,
                                                      GrammarOptions())).compile(constraint_from_fields(**{kind: source}))
    matcher = compiled.new_matcher()
    for t in vocab.encode_text(prefix):
        assert matcher.accept_token(t)
    literals = grammar_literals(constraint_from_fields(**{kind: source}))  # as the grammar cache gives them
    ids = EndingSearch(vocab).ending_tokens(matcher, empty_ok=bool(prefix), literals=literals)
    assert ids is not None and ids[-1] in vocab.eos_token_ids
    answer = prefix + vocab.bytes_of(ids[:-1]).decode()
    assert (re.fullmatch(language, answer) is not None) if language else _balanced_sum(answer), answer
    assert not matcher.can_terminate() or not prefix  # the search left the matcher where it was
    for t in ids:
        assert matcher.accept_token(t), answer
    assert matcher.is_terminated()


EMAIL_PATTERN = r"^[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,4}$"


@pytest.mark.parametrize("backend", ["xgrammar", "llguidance"])
@pytest.mark.parametrize("email, prefix", [
    # audit 12: `}` and `'` are legal in an address's name and leave its mask as it was, so the greedy way took
    # them as closers again and again (budget closing appended `}}}}…`); a closer now counts only where
    # writing it (in a run) changes something, and the way goes on to `@`
    *(({"format": "email"}, p) for p in ('{"email": "ab', '{"email": "ab}}', '{"email": "a.b')),
    # audit 14: under a pattern whose domain class takes the dot, every byte of the domain leaves the mask as
    # it was, so the search never reached the closing quote (a random model wrote `0000…` until "length"); a
    # few bytes looked ahead (`.aa`, then `"`) find the way out
    *(({"pattern": EMAIL_PATTERN}, p) for p in ('{"email": "ab', '{"email": "ab@cd', '{"email": "ab@cd.e')),
])
def test_an_email_address_in_json_is_ended(tiny_tokenizer, backend, email, prefix) -> None:
    import re

    from thinkform.structured.backends import BackendContext, create_backend
    from thinkform.structured.ending import EndingSearch
    from thinkform.structured.spec import GrammarOptions, constraint_from_fields
    from thinkform.structured.vocab import TokenVocab

    schema = {"type": "object", "properties": {"email": {"type": "string", **email}}, "required": ["email"]}
    vocab = TokenVocab.from_tokenizer(tiny_tokenizer, len(tiny_tokenizer))
    ctx = BackendContext(tiny_tokenizer, vocab.vocab_size, vocab.eos_token_ids, GrammarOptions())
    matcher = create_backend(backend, ctx).compile(constraint_from_fields(json_schema=json.dumps(schema))).new_matcher()
    for t in vocab.encode_text(prefix):
        assert matcher.accept_token(t)
    ids = EndingSearch(vocab).ending_tokens(matcher)
    assert ids is not None and len(ids) <= 12, ids
    answer = prefix + vocab.bytes_of(ids[:-1]).decode()
    address = json.loads(answer)["email"]
    assert "@" in address and re.fullmatch(email.get("pattern", ".*"), address), answer
    assert all(matcher.accept_token(t) for t in ids) and matcher.is_terminated()


@pytest.mark.parametrize("backend", ["xgrammar", "llguidance"])
def test_the_look_ahead_costs_little_where_it_finds_nothing(tiny_tokenizer, backend) -> None:
    """A first version looked ahead at every step of a string that must reach 40 characters (every byte
    keeps the mask there, and no way of 4 bytes leads out): 2,048 accepts a step, and the 0.2 s guard ran out
    before the ending it had found before. A look that found nothing from a mask is not repeated."""
    from thinkform.structured.backends import BackendContext, create_backend
    from thinkform.structured.ending import EndingSearch
    from thinkform.structured.spec import GrammarOptions, constraint_from_fields
    from thinkform.structured.vocab import TokenVocab

    class Counting:
        def __init__(self, matcher):
            self.matcher, self.accepts = matcher, 0

        def accept_token(self, token_id):
            self.accepts += 1
            return self.matcher.accept_token(token_id)

        def __getattr__(self, name):
            return getattr(self.matcher, name)

    schema = {"type": "object", "properties": {"a": {"type": "string", "minLength": 40}}, "required": ["a"]}
    vocab = TokenVocab.from_tokenizer(tiny_tokenizer, len(tiny_tokenizer))
    ctx = BackendContext(tiny_tokenizer, vocab.vocab_size, vocab.eos_token_ids, GrammarOptions())
    matcher = create_backend(backend, ctx).compile(constraint_from_fields(json_schema=json.dumps(schema))).new_matcher()
    assert matcher.accept_string('{"a": "x')
    counting = Counting(matcher)
    ids = EndingSearch(vocab).ending_tokens(counting)
    assert ids is not None and len(json.loads('{"a": "x' + vocab.bytes_of(ids[:-1]).decode())["a"]) >= 40
    assert counting.accepts < 6000, counting.accepts  # ~3,300 without any look-ahead, ~4,300 with one


def test_a_search_cut_short_leaves_the_matcher_as_it_was(tiny_tokenizer) -> None:
    """Audit 17: the 0.2 s guard firing deep in a look-ahead left its bytes accepted: the request's own matcher
    went on a few bytes ahead of the text, and a minLength string came out 1-2 characters short. Whatever
    the search accepted is undone however it ends (slow accepts make the guard fire here)."""
    import time

    from thinkform.structured.backends import BackendContext, create_backend
    from thinkform.structured.ending import EndingSearch, SearchLimits
    from thinkform.structured.spec import GrammarOptions, constraint_from_fields
    from thinkform.structured.vocab import TokenVocab

    class Slow:
        def __init__(self, matcher):
            self.matcher, self.net = matcher, 0

        def accept_token(self, token_id):
            busy = time.thread_time() + 0.0005  # CPU time: the guard counts the search's own work
            while time.thread_time() < busy:
                pass
            ok = self.matcher.accept_token(token_id)
            self.net += ok
            return ok

        def rollback(self, num_tokens):
            self.net -= num_tokens
            self.matcher.rollback(num_tokens)

        def __getattr__(self, name):
            return getattr(self.matcher, name)

    full = {"type": "object", "properties": {"a": {"type": "string", "minLength": 200}}, "required": ["a"]}
    vocab = TokenVocab.from_tokenizer(tiny_tokenizer, len(tiny_tokenizer))
    ctx = BackendContext(tiny_tokenizer, vocab.vocab_size, vocab.eos_token_ids, GrammarOptions())
    matcher = create_backend("xgrammar", ctx).compile(constraint_from_fields(json_schema=json.dumps(full))).new_matcher()
    assert matcher.accept_string('{"a": "xy')
    for seconds in (0.2, 0.3, 0.4):  # past the first steps: the guard fires inside the look-ahead
        slow = Slow(matcher)
        EndingSearch(vocab, SearchLimits(max_seconds=seconds)).ending_tokens(slow)
        assert slow.net == 0, (seconds, slow.net)


def json_answer_ended(tokenizer, backend: str, schema: dict, prefix: str) -> str:
    """`prefix` and the ending the search finds for it under `schema` (EOS left off)."""
    from thinkform.structured.backends import BackendContext, create_backend
    from thinkform.structured.ending import EndingSearch
    from thinkform.structured.spec import GrammarOptions, constraint_from_fields
    from thinkform.structured.vocab import TokenVocab

    vocab = TokenVocab.from_tokenizer(tokenizer, len(tokenizer))
    ctx = BackendContext(tokenizer, vocab.vocab_size, vocab.eos_token_ids, GrammarOptions())
    matcher = create_backend(backend, ctx).compile(constraint_from_fields(json_schema=json.dumps(schema))).new_matcher()
    for t in vocab.encode_text(prefix):
        assert matcher.accept_token(t)
    ids = EndingSearch(vocab).ending_tokens(matcher)
    return prefix + vocab.bytes_of(ids[:-1]).decode()


@pytest.mark.parametrize("backend", ["xgrammar", "llguidance"])
def test_a_number_the_ending_writes_is_a_plain_zero(tiny_tokenizer, backend) -> None:
    """Audit 13: preferring masks the way had not seen anywhere on it wrote `-0.0e+0` (the comma's mask had
    been seen after an earlier field), 5 tokens more: the budget's ending no longer fit, and answers that
    ended "stop" before ended "length". Only a loop of the last few steps counts now."""
    props = {"name": "string", "age": "integer", "email": "string", "ok": "boolean", "score": "number", "city": "string"}
    schema = {"type": "object", "properties": {k: {"type": t} for k, t in props.items()}, "required": list(props)}
    text = json_answer_ended(tiny_tokenizer, backend, schema, '{"name": "ab')
    answer = json.loads(text)
    # audit 18: xgrammar's ending wrote `-1` for a required integer (the minus sign came first in class order)
    assert set(answer) == set(props) and answer["age"] == 0 and answer["score"] == 0 and "-" not in text, text


@pytest.mark.parametrize("backend", ["xgrammar", "llguidance"])
def test_the_ending_takes_null_and_one_letter_over_another_propertys_text(tiny_tokenizer, backend) -> None:
    """Audit 29: at `anyOf [^https?:// string, null]` the quote came first in class order, so the ending wrote
    `"http://"` (7 tokens more than `null`), and a `^[a-z]+$` string was closed with the grammar literal
    `http` rather than one letter: the ending (38 tokens where 28 would do) did not fit the budget when closing
    began, and the answer was cut ("length") at max_new_tokens 33-42, where a valid one fitted."""
    schema = {"type": "object", "properties": {
        "a": {"type": "string"}, "b": {"type": "string", "pattern": "^[a-z]+$"},
        "u": {"anyOf": [{"type": "string", "pattern": "^https?://"}, {"type": "null"}]}}, "required": ["a", "b", "u"]}
    answer = json.loads(json_answer_ended(tiny_tokenizer, backend, schema, '{"a": "x'))
    assert answer["u"] is None and len(answer["b"]) == 1, answer


def test_the_greedy_way_takes_the_space_before_a_keyword(tiny_tokenizer) -> None:
    """After a name, a comma (another column) and a space (the FROM) both lead somewhere: the greedy way must
    take the space, which comes first in class order, or it lists columns until the breadth-first search (far
    dearer over a real vocabulary) has to find the way."""
    from thinkform.structured.backends import BackendContext, create_backend
    from thinkform.structured.ending import EndingSearch, SearchLimits
    from thinkform.structured.spec import GrammarOptions, constraint_from_fields
    from thinkform.structured.vocab import TokenVocab

    vocab = TokenVocab.from_tokenizer(tiny_tokenizer, len(tiny_tokenizer))
    sql = 'root ::= "SELECT " cols " FROM " name ";"\ncols ::= "*" | name (", " name)*\nname ::= [a-z_]+'
    compiled = create_backend("xgrammar", BackendContext(tiny_tokenizer, vocab.vocab_size, vocab.eos_token_ids,
                                                         GrammarOptions())).compile(constraint_from_fields(ebnf=sql))
    matcher = compiled.new_matcher()
    assert matcher.accept_string("SELECT ab")
    path = EndingSearch(vocab, limits=SearchLimits(max_width=1, max_fills=64)).find(matcher)
    assert path is not None and vocab.bytes_of(path).startswith(b" FROM ")


def test_the_ending_search_gives_up_within_its_limits(tiny_tokenizer) -> None:
    from thinkform.structured.backends import BackendContext, create_backend
    from thinkform.structured.ending import EndingSearch, SearchLimits
    from thinkform.structured.spec import GrammarOptions, constraint_from_fields
    from thinkform.structured.vocab import TokenVocab

    vocab = TokenVocab.from_tokenizer(tiny_tokenizer, len(tiny_tokenizer))
    compiled = create_backend("xgrammar", BackendContext(tiny_tokenizer, vocab.vocab_size, vocab.eos_token_ids,
                                                         GrammarOptions())).compile(
        constraint_from_fields(regex=r"[a-z]{40}"))
    matcher = compiled.new_matcher()
    assert EndingSearch(vocab, SearchLimits(max_length=20)).ending_tokens(matcher) is None
    assert EndingSearch(vocab, SearchLimits(max_fills=10)).ending_tokens(matcher) is None
    assert EndingSearch(vocab, SearchLimits(max_seconds=0)).ending_tokens(matcher) is None
    # and each search that gave up left the matcher where it was: the whole way is still 40 letters
    assert len(vocab.bytes_of(EndingSearch(vocab).find(matcher))) == 40


@pytest.mark.parametrize("backend", ["xgrammar", "llguidance"])
@pytest.mark.parametrize("jump_forward", [True, False])
def test_random_models_finish_regex_and_ebnf_answers_within_a_small_budget(tiny_model_dirs, backend,
                                                                           jump_forward) -> None:
    """Letters and commas forever, left alone: every answer must still be a whole sentence of its grammar."""
    import re

    from thinkform import Engine

    grammars = [({"regex": r"[a-z]+@[a-z]+\.com"}, r"[a-z]+@[a-z]+\.com"),
                ({"ebnf": 'root ::= "(" item ("," item)* ")"\nitem ::= [a-z]+'}, r"\([a-z]+(,[a-z]+)*\)")]
    params = [{"temperature": 1.0, "seed": i, "max_new_tokens": 48, **grammars[i % 2][0]} for i in range(8)]
    with Engine(model_path=str(tiny_model_dirs["qwen2"]), max_total_tokens=4096, grammar_backend=backend,
                disable_jump_forward=not jump_forward) as engine:
        outs = engine.generate(["Write it."] * len(params), params)
    for i, out in enumerate(outs):
        assert re.fullmatch(grammars[i % 2][1], out["text"]), out
        assert out["meta_info"]["finish_reason"]["type"] == "stop", out
        assert out["meta_info"]["completion_tokens"] <= 48
    assert sum(o["meta_info"]["closed_by_budget"] for o in outs) >= len(outs) // 2  # random models rarely end


def test_an_answer_after_long_thinking_still_ends_as_a_sentence_of_its_grammar(tiny_model_dirs) -> None:
    """The answer reserve ends the thinking; the closing reserve then completes the EBNF answer it leaves."""
    import re

    from thinkform import Engine

    ebnf = 'root ::= "(" item ("," item)* ")"\nitem ::= [a-z]+'
    params = [{"temperature": 1.0, "seed": i, "max_new_tokens": 40, "ebnf": ebnf} for i in range(4)]
    with Engine(model_path=str(tiny_model_dirs["qwen2"]), reasoning_parser="deepseek-r1",
                max_total_tokens=4096) as engine:
        outs = engine.generate(["Think, then write it."] * len(params), params, require_reasoning=True)
    for out in outs:
        meta = out["meta_info"]
        assert meta["reasoning_content"] and out["text"].count("</think>") == 1, out
        assert re.fullmatch(r"\([a-z]+(,[a-z]+)*\)", meta["content"]), out
        assert meta["finish_reason"]["type"] == "stop" and meta["closed_by_budget"], out
        assert meta["completion_tokens"] <= 40


def test_a_long_ending_is_appended_early_enough_to_fit(tiny_model_dirs) -> None:
    """Eight required strings, or a timestamp after a free word: their endings are longer than the closing
    reserve, so they are looked for earlier and appended while they still fit — but not at the first look:
    the model writes its own values until the ending (and a margin for growth) would barely fit (audit 12:
    appended at once, the engine filled in every value after the first token with budget left over)."""
    import re

    from thinkform import Engine

    schema = {"type": "object", "properties": {k: {"type": "string"} for k in "abcdefgh"}, "required": list("abcdefgh")}
    stamp = r"[a-z]+ \d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z"
    params = ([{"temperature": 1.0, "seed": i, "max_new_tokens": 160, "json_schema": json.dumps(schema)}
               for i in range(6)] +
              [{"temperature": 1.0, "seed": i, "max_new_tokens": 64, "regex": stamp} for i in range(4)])
    with Engine(model_path=str(tiny_model_dirs["qwen2"]), max_total_tokens=8192) as engine:
        outs = engine.generate(["Fill it in."] * len(params), params)
    for p, out in zip(params, outs):
        meta = out["meta_info"]
        assert meta["finish_reason"]["type"] == "stop", out
        if "json_schema" in p:
            jsonschema.validate(json.loads(out["text"]), schema)
            # appended with at most its margin left over (the ending is ~33 tokens: half of it, and required
            # strings cannot make it grow, so no more is kept back)
            assert not meta["closed_by_budget"] or meta["completion_tokens"] >= p["max_new_tokens"] - 20, out
        else:
            assert re.fullmatch(stamp, out["text"]), out


def test_answers_under_loop_heavy_regexes_end_valid_at_their_budget(engine64) -> None:
    """Audit 14 and after: a random model under an email pattern whose domain class takes the dot, or a tag
    whose content `.*` takes the letters of its closing tag, wrote on until "length" and matched nothing (the
    search found no ending: 150-200 ms lost on the loop at each look). The look-ahead and the grammar's
    literals (given by the grammar cache to the engine's gate) end them valid."""
    import re

    patterns = [r"[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,4}", r"<answer>.*</answer>", r"(\w+=\"[^\"]*\"; )+end"]
    params = [{"temperature": 1.0, "seed": i, "max_new_tokens": 40, "regex": rx} for rx in patterns for i in range(3)]
    outs = engine64.generate(["Answer."] * len(params), params)
    for p, out in zip(params, outs):
        assert out["meta_info"]["finish_reason"]["type"] == "stop", out
        assert re.fullmatch(p["regex"], out["text"], re.DOTALL) is not None, out["text"]


def test_a_structural_tag_of_one_grammar_or_regex_is_closed_at_its_budget(engine64) -> None:
    """Audit 18: a structural tag whose whole format is a grammar or a regex (how pythonic tool calls are
    constrained under tool_choice required) got no budget closing at all: 1 answer in 6 came out valid at 24
    tokens, and pythonic calls never came. They are closed as a regex or EBNF answer is."""
    import re

    from thinkform.server.tools import get_tool_call_parser

    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "n": {"type": "number"}},
        "required": ["city", "n"]}}}
    pythonic = get_tool_call_parser("pythonic")
    tags = [({"type": "structural_tag", "format": {"type": "grammar", "grammar": 'root ::= "[" [a-z]+ "]"'}}, 24),
            ({"type": "structural_tag", "format": {"type": "regex", "pattern": r"\[[a-z]+\]"}}, 24),
            (pythonic.structural_tag([weather], "required"), 40)]
    for tag, budget in tags:
        params = [{"temperature": 1.2, "seed": s, "max_new_tokens": budget, "structural_tag": json.dumps(tag)}
                  for s in range(4)]
        for out in engine64.generate(["x"] * len(params), params):
            assert out["meta_info"]["finish_reason"]["type"] == "stop", out
            if tag["format"]["type"] == "regex":
                assert re.fullmatch(r"\[[a-z]+\]", out["text"]), out["text"]
            elif "get_weather" in tag["format"]["grammar"]:
                calls = pythonic.parse(out["text"])[1]
                assert [c.name for c in calls] == ["get_weather"] and "n" in json.loads(calls[0].arguments), out


def test_an_ending_that_starts_inside_a_character_is_spelled_in_few_tokens(tiny_tokenizer) -> None:
    from thinkform.structured.backends import BackendContext, create_backend
    from thinkform.structured.ending import EndingSearch
    from thinkform.structured.spec import GrammarOptions, constraint_from_fields
    from thinkform.structured.vocab import TokenVocab

    vocab = TokenVocab.from_tokenizer(tiny_tokenizer, len(tiny_tokenizer))
    compiled = create_backend("xgrammar", BackendContext(tiny_tokenizer, vocab.vocab_size, vocab.eos_token_ids,
                                                         GrammarOptions())).compile(
        constraint_from_fields(json_schema={"type": "object", "properties": {"note": {"type": "string"}},
                                            "required": ["note"]}))
    matcher = compiled.new_matcher()
    for t in vocab.encode_text('{"note": "caf') + [vocab.byte_ids[0xC3]]:  # the first byte of é
        assert matcher.accept_token(t)
    ids = EndingSearch(vocab).ending_tokens(matcher)
    ending = vocab.bytes_of(ids[:-1])
    assert json.loads(b'{"note": "caf\xc3' + ending) == {"note": "caf" + (b"\xc3" + ending[:1]).decode()}
    # the stray continuation byte alone, the rest as the tokenizer spells text (not one token a byte)
    assert ids[:-1] == [vocab.byte_ids[ending[0]]] + vocab.encode_text(ending[1:].decode())


def test_answers_that_end_on_their_own_cost_no_search(tiny_model_dirs, monkeypatch) -> None:
    """The seed's schema has a short answer: it is looked for only at the reserve, which an answer that
    ends on its own never reaches; a schema whose shortest answer is longer than the reserve is looked at
    earlier."""
    from thinkform import Engine
    from thinkform.structured.spec import constraint_from_fields

    long_schema = {"type": "object", "properties": {k: {"type": "string"} for k in "abcdefgh"},
                   "required": list("abcdefgh")}
    with Engine(model_path=str(tiny_model_dirs["qwen2"]), max_total_tokens=4096) as engine:
        search = engine.parts.ending_search
        calls = []
        ending_tokens = search.ending_tokens
        monkeypatch.setattr(search, "ending_tokens", lambda *a, **k: calls.append(1) or ending_tokens(*a, **k))
        short = json.dumps({"enum": ["yes", "no"]})
        assert search.wait_measured(engine.parts.grammar_cache.get(constraint_from_fields(json_schema=short)))
        calls.clear()
        out = engine.generate("Yes or no?", {"temperature": 0, "max_new_tokens": 64, "json_schema": short})
        assert out["meta_info"]["finish_reason"]["type"] == "stop" and calls == []
        engine.generate("Fill it in.", {"temperature": 1.0, "seed": 0, "max_new_tokens": 160,
                                        "json_schema": json.dumps(long_schema)})
        compiled = engine.parts.grammar_cache.get(constraint_from_fields(json_schema=json.dumps(long_schema)))
        assert search.wait_measured(compiled) and search.shortest_answer(compiled) > closing_reserve(160)
    assert len(calls) >= 3  # measured after its compile, and looked for before the reserve


def test_logprobs_keep_one_entry_per_token_through_forced_text(tiny_model_dirs) -> None:
    """The forced end marker, jump-forward text and a budget's ending are output tokens too: each gets an
    entry (0.0, no alternatives), so tokens and logprobs still line up."""
    from thinkform import Engine

    with Engine(model_path=str(tiny_model_dirs["qwen2"]), reasoning_parser="deepseek-r1",
                max_total_tokens=4096) as engine:
        out = engine.generate("Think, then write it.", {"temperature": 1.0, "seed": 1, "max_new_tokens": 40,
                                                        "regex": r"[a-z]+@[a-z]+\.com"},
                              require_reasoning=True, return_logprob=True, top_logprobs_num=2)
    meta = out["meta_info"]
    assert meta["closed_by_budget"] and "</think>" in out["text"]
    assert [t for _, t, _ in meta["output_token_logprobs"]] == out["output_ids"]
    assert len(meta["output_top_logprobs"]) == len(out["output_ids"])
    sampled = [lp for lp, _, _ in meta["output_token_logprobs"] if lp != 0.0]
    assert sampled and all(lp < 0 for lp in sampled)


def test_the_answer_reserve_grows_to_the_grammars_shortest_answer(tiny_model_dirs) -> None:
    """Twelve required strings need more than the default answer reserve (a quarter of max_new_tokens) just
    to be written: the thinking is closed early enough for the whole answer to arrive."""
    from thinkform import Engine
    from thinkform.structured.spec import constraint_from_fields

    schema = {"type": "object", "properties": {f"field{i}": {"type": "string"} for i in range(12)},
              "required": [f"field{i}" for i in range(12)]}
    params = [{"temperature": 1.0, "seed": i, "max_new_tokens": 200, "json_schema": json.dumps(schema)}
              for i in range(4)]
    with Engine(model_path=str(tiny_model_dirs["qwen2"]), reasoning_parser="deepseek-r1",
                max_total_tokens=8192) as engine:
        compiled = engine.parts.grammar_cache.get(constraint_from_fields(json_schema=json.dumps(schema)))
        assert engine.parts.ending_search.wait_measured(compiled)  # measured after its compile, off the requests
        outs = engine.generate(["Think, then fill it in."] * len(params), params, require_reasoning=True)
    for out in outs:
        meta = out["meta_info"]
        assert meta["reasoning_content"] and meta["finish_reason"]["type"] == "stop", out
        jsonschema.validate(json.loads(meta["content"]), schema)


def test_a_stop_string_inside_an_appended_ending_does_not_cut_it(tiny_model_dirs) -> None:
    """Stop strings count only where the grammar may end, in an ending the engine appends as anywhere."""
    import re

    from thinkform import Engine

    regex = r"[a-z]+@[a-z]+\.com"
    params = [{"temperature": 1.0, "seed": i, "max_new_tokens": 32, "regex": regex, "stop": ["."]}
              for i in range(4)]
    with Engine(model_path=str(tiny_model_dirs["qwen2"]), max_total_tokens=4096) as engine:
        outs = engine.generate(["Write it."] * len(params), params)
    for out in outs:
        assert re.fullmatch(regex, out["text"]) and out["meta_info"]["closed_by_budget"], out


def test_a_new_grammars_first_seeded_request_answers_as_every_later_one(tiny_model_dirs) -> None:
    """The grammar's shortest answer (which sizes the answer reserve) is measured before the grammar is
    handed out: the first request of a new grammar is not shaped differently from the next ones."""
    from thinkform import Engine

    schema = {"type": "object", "properties": {f"field{i}": {"type": "string", "minLength": 3} for i in range(24)},
              "required": [f"field{i}" for i in range(24)]}
    params = {"temperature": 1.0, "seed": 7, "max_new_tokens": 200, "json_schema": json.dumps(schema)}
    with Engine(model_path=str(tiny_model_dirs["qwen2"]), reasoning_parser="deepseek-r1",
                max_total_tokens=8192, disable_radix_cache=True) as engine:
        first, second = (engine.generate("Think, then fill it in.", params, require_reasoning=True)
                         for _ in range(2))
    assert first["output_ids"] == second["output_ids"]


def test_a_tool_call_near_its_budget_keeps_room_for_its_end_tag(tiny_model_dirs) -> None:
    """The server's named-tool shape after forced thinking, with a budget a few tokens over the shortest
    call: the ending is appended while it still fits with room to spare (a longer enum value begun after a
    look used to push the end tag `}\\n</tool_call>` past max_new_tokens)."""
    from thinkform import Engine
    from thinkform.testing.seed import WEATHER_SCHEMA

    tag = {"type": "tag", "begin": '<tool_call>\n{"name": "get_weather", "arguments": ',
           "content": {"type": "json_schema", "json_schema": WEATHER_SCHEMA}, "end": "}\n</tool_call>"}
    named = {"type": "structural_tag", "format": {"type": "tags_with_separator", "tags": [tag], "separator": "\n",
                                                  "at_least_one": True, "stop_after_first": True}}
    cut = []
    with Engine(model_path=str(tiny_model_dirs["qwen2"]), reasoning_parser="deepseek-r1",
                max_total_tokens=8192) as engine:
        for max_new, seed in [(m, s) for m in (78, 82, 90) for s in range(6)]:
            out = engine.generate("Answer:", {"temperature": 2.0, "min_p": 0.05, "seed": seed,
                                              "max_new_tokens": max_new, "structural_tag": json.dumps(named)},
                                  require_reasoning=True)
            meta = out["meta_info"]
            if not (meta["finish_reason"]["type"] == "stop" and meta["content"].endswith("}\n</tool_call>")):
                cut.append((max_new, seed, meta["content"][-30:]))
    assert not cut


def test_every_spelling_of_a_json_tag_gets_closing_and_number_bounds(tiny_model_dirs) -> None:
    """Audit 12: xgrammar's structural tags may leave out a tag's "type", list several end strings, or be one
    JSON schema as a whole; those answers ran to "length" (no budget closing) with integers of 150 digits (no
    number bound). Each now ends "stop" within the README's 17 digits."""
    import re

    from thinkform import Engine

    city = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    number = {"type": "object", "properties": {"n": {"type": "integer"}, "x": {"type": "number"}}, "required": ["n", "x"]}

    def tagged(schema, **tag):
        tag = {"begin": "<f>", "content": {"type": "json_schema", "json_schema": schema}, "end": "</f>", **tag}
        return {"type": "structural_tag", "format": {"type": "triggered_tags", "triggers": ["<f>"], "tags": [tag],
                                                      "at_least_one": True, "stop_after_first": True}}

    forms = [tagged(city), tagged(city, end=["</f>", "</g>"]), tagged(number),
             {"type": "structural_tag", "format": {"type": "json_schema", "json_schema": number}}]
    params = [{"max_new_tokens": 64, "temperature": 1.0, "seed": seed, "structural_tag": json.dumps(form)}
              for form in forms for seed in range(3)]
    with Engine(model_path=str(tiny_model_dirs["qwen2"]), max_total_tokens=8192) as engine:
        outs = engine.generate(["Answer:"] * len(params), params)
    for out in outs:
        assert out["meta_info"]["finish_reason"]["type"] == "stop", out["text"]
        assert all(len(n.lstrip("-")) <= 17 for n in re.findall(r'"n": ?(-?\d+)', out["text"])), out["text"]


def test_an_ending_that_may_grow_is_appended_while_there_is_room_for_growth(tiny_model_dirs) -> None:
    """Audit 14: a waiting ending of a list (`dddd-dd-dd.` and EOS) grew by a whole date when the model wrote
    `, `; with a quarter of its length to spare it no longer fit and 8 of 20 answers were cut. A grammar
    that repeats keeps about its shortest answer to spare."""
    import re

    from thinkform import Engine

    rx = r"(\d{4}-\d{2}-\d{2}, )*\d{4}-\d{2}-\d{2}\."
    params = [{"temperature": 1.0, "seed": seed, "max_new_tokens": budget, "regex": rx}
              for budget in (28, 32) for seed in range(12)]
    with Engine(model_path=str(tiny_model_dirs["qwen2"]), max_total_tokens=8192) as engine:
        outs = engine.generate(["Dates:"] * len(params), params)
    assert all(re.fullmatch(rx, o["text"]) and o["meta_info"]["finish_reason"]["type"] == "stop" for o in outs), \
        [o["text"] for o in outs if not re.fullmatch(rx, o["text"])]


def test_a_step_whose_forced_text_leaves_the_ending_no_room_gives_way_to_it(tiny_model_dirs) -> None:
    """Audit (JSONSchemaBench under tight budgets): after `{` with a few tokens left the model wrote `"`, and
    jump-forward wrote the only key the schema has after it, up to where its ending (`]}`) no longer fit:
    the answer was cut off invalid. Such a step is undone and the ending from before it written instead."""
    from thinkform import Engine

    key = "a_property_name_long_enough_to_fill_the_budget"
    schema = {"type": "object", "properties": {key: {"type": "array", "items": {"type": "integer"}}},
              "additionalProperties": False}
    with Engine(model_path=str(tiny_model_dirs["qwen2"]), max_total_tokens=8192) as engine:
        quote = engine.tokenizer.encode('"', add_special_tokens=False)
        assert len(quote) == 1
        outs = engine.generate(["Fill it in."] * 10, [  # the key is 35 tokens
            {"temperature": 0, "max_new_tokens": budget, "json_schema": json.dumps(schema),
             "logit_bias": {str(quote[0]): 100.0}} for budget in range(30, 60, 3)])
    for out in outs:
        assert out["meta_info"]["constraint_satisfied"], out
        jsonschema.validate(json.loads(out["text"]), schema)
    assert any(key in out["text"] for out in outs)  # where the key and its ending fit, the model's step stands


def test_a_step_that_grows_a_waiting_ending_past_the_budget_gives_way_to_it(tiny_model_dirs) -> None:
    """Audit (JSONSchemaBench under tight budgets): a found ending waits while the model writes on, with a
    margin for growth; one key (`"spec"`, an object of eight required strings) grew it past that margin in a
    step, and 13 of 14 answers were cut off. Once an ending that fits is found, every step is checked, and one
    that leaves no room for the ending gives way to the ending from before it (with room for its EOS)."""
    from thinkform import Engine

    inner = {"type": "object", "properties": {k: {"type": "string"} for k in "bcdefghi"}, "required": list("bcdefghi"),
             "additionalProperties": False}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "spec": inner}, "additionalProperties": False}
    with Engine(model_path=str(tiny_model_dirs["qwen2"]), max_total_tokens=8192) as engine:
        bias = {str(engine.tokenizer.encode(text, add_special_tokens=False)[0]): value
                for text, value in (("s", 100.0), ('"', 50.0))}  # toward `{"spec": {"b": "sss...`
        outs = engine.generate(["Fill it in."] * 14, [
            {"temperature": 0, "max_new_tokens": budget, "json_schema": json.dumps(schema), "logit_bias": bias}
            for budget in range(20, 62, 3)])
    for out in outs:
        assert out["meta_info"]["finish_reason"]["type"] == "stop", out
        jsonschema.validate(json.loads(out["text"]), schema)
    assert any('"spec"' in out["text"] for out in outs)


def test_a_forced_step_some_steps_after_a_look_is_checked_too(qwen_vocab_model) -> None:
    """Review: the step check watched only the step right after a look; a forced step two steps later
    (`, "spec": {"b": "`: eight required strings) grew the ending past the tokens left, and answers were cut."""
    from thinkform import Engine

    inner = {"type": "object", "properties": {k: {"type": "string"} for k in "bcdefghi"}, "required": list("bcdefghi"),
             "additionalProperties": False}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "spec": inner}, "additionalProperties": False}
    budgets = list(range(14, 30))
    with Engine(model_path=str(qwen_vocab_model[0]), max_total_tokens=65536, reasoning_parser="deepseek-r1") as engine:
        bias = {str(engine.tokenizer.encode(text, add_special_tokens=False)[0]): value
                for text, value in (("a", 60.0), ("1", 50.0), (",", 40.0))}
        outs = engine.generate(["Fill it in."] * len(budgets), [
            {"temperature": 0, "max_new_tokens": 80, "max_reasoning_tokens": r, "json_schema": json.dumps(schema),
             "logit_bias": bias} for r in budgets], require_reasoning=True)
    for out in outs:
        jsonschema.validate(json.loads(out["meta_info"]["content"]), schema)


SCORE = {"type": "object", "properties": {"note": {"type": "string"}, "score": {"type": "integer"},
                                          "ok": {"type": "boolean"}}, "required": ["note", "score", "ok"]}


def _gate_for(engine, fields: dict, max_new_tokens: int):
    """The gate the engine builds for a request (no model run: the test writes the model's tokens)."""
    from thinkform.engine.requests import LogprobOptions

    req = engine._prepare("hi", {**fields, "max_new_tokens": max_new_tokens}, None, False, None, None,
                          False, LogprobOptions(False, 0, -1, False, None), {})
    engine._compile_sync(req)
    assert all(engine.parts.ending_search.wait_measured(c, 60) for c in req.compiled.values())
    return engine.builder.sequences(req, lambda *_: None)[0].gate


def _write(engine, gate, script: list[int]) -> list[int]:
    """Drive `gate` as the engine does with a model that writes `script` (each token must be in its mask):
    forced ids are taken instead of sampling, and a step the gate replaces (ending_instead) ends the script."""
    bitmask = torch.zeros((1, (engine.parts.vocab_size + 31) // 32), dtype=torch.int32)
    out: list[int] = []
    for token in script:
        if gate.finished or len(out) >= gate.max_new_tokens:
            break
        forced = gate.forced_tokens(len(out))
        if forced:
            gate.accept_forced(forced)
            out += forced
            continue
        engine.parts.grammar_backend.fill_bitmasks(bitmask, [(0, gate.matcher_to_fill())])
        gate.finish_bitmask(bitmask, 0)
        assert bitmask[0, token // 32] >> (token % 32) & 1, (engine.tokenizer.decode(out), token)
        step = gate.accept(token)
        ending = gate.ending_instead(step, len(out))
        out += ending if ending is not None else step
        if ending is not None:
            break
    return out[:gate.max_new_tokens]


@pytest.mark.parametrize("fields, answer", [
    ({"json_schema": json.dumps(SCORE)}, '{"note": "w1 w2 w3 w4 w5 w6 w7 w8 w9", "score": 987654, "ok": true}'),
    ({"regex": r"(\d+,)*\d+"}, "1,22,333,4444,55555,666666"),
    ({"ebnf": 'root ::= "(" item ("," item)* ")"\nitem ::= [a-z]+'}, "(ab,cd,efgh,ijkl,mnop,qrs,tuv,wxyz)"),
])
def test_an_answer_that_fits_its_budget_is_never_cut_or_replaced(qwen_vocab_model, fields, answer):
    """Audit (over-restriction): at the closing reserve's look the ending was appended whenever it fitted, and the
    reserve's steering narrowed the mask, so a model whose own answer fitted lost its last tokens: `"score":
    987654, "ok": true}` came back `"score": 0, "ok": false}` with 24 tokens unused, `666666` as `66666`. Each
    of the model's tokens is allowed and taken as it is, for every budget from the answer's own length (its EOS
    included) up."""
    from thinkform import Engine

    model, tok = qwen_vocab_model
    ids = tok.encode(answer, add_special_tokens=False) + [tok.convert_tokens_to_ids("<|im_end|>")]
    with Engine(model_path=str(model), max_total_tokens=8192, disable_jump_forward=True) as engine:
        for spare in (0, 1, 2, 3, 5, 8, 13, 21):
            gate = _gate_for(engine, fields, len(ids) + spare)
            out = _write(engine, gate, ids)
            assert tok.decode(out[:len(ids) - 1]) == answer, (spare, tok.decode(out))
            assert gate.finished and not gate.closed_by_budget and gate.constraint_satisfied, spare


def test_a_waiting_ending_checks_each_token_that_commits_to_a_long_piece(qwen_vocab_model) -> None:
    """Review of an earlier try at the above: while the found ending waited, one-token steps went unchecked until
    the ending's margin, and one token (`y`, after which `(x|y[0-9]{8};)+` wants 8 digits) committed the answer to more
    than the tokens left: cut off invalid. Every step is checked while an ending waits: the `y` that cannot fit
    gives way to the ending from before it; one that fits is the model's. (Before the reserve such a token is
    still taken unchecked, as it was: checking every step from the first look would cost a search each.)"""
    import re

    from thinkform import Engine

    rx = r"(x|y[0-9]{8};)+"
    model, tok = qwen_vocab_model
    x, y, digit, semicolon = (tok.encode(t, add_special_tokens=False) for t in ("x", "y", "7", ";"))
    assert len(x) == len(y) == len(digit) == len(semicolon) == 1
    eos = [tok.convert_tokens_to_ids("<|im_end|>")]
    with Engine(model_path=str(model), max_total_tokens=8192, disable_jump_forward=True) as engine:
        whole = 0
        for budget in range(24, 72, 4):
            reserve = closing_reserve(budget)
            for lead in range(budget - reserve, budget):  # `x` tokens, then `y` inside the closing reserve
                gate = _gate_for(engine, {"regex": rx}, budget)
                out = _write(engine, gate, x * lead + y + digit * 8 + semicolon + eos)
                text = tok.decode(out)
                assert re.fullmatch(rx, text.removesuffix("<|im_end|>")), (budget, lead, text)
                whole += "y" in text
    assert whole  # where the digits fit, the model's `y` stands


def test_an_answer_that_may_end_anywhere_ends_with_eos_at_its_budget(qwen_vocab_model) -> None:
    """Review: while the ending waits, a model that writes on under `\\d+` (the answer complete at every token) ran
    to max_new_tokens and ended "length"; room for EOS is kept, so the answer ends "stop" within its budget."""
    from thinkform import Engine

    model, tok = qwen_vocab_model
    digit = tok.encode("7", add_special_tokens=False)
    with Engine(model_path=str(model), max_total_tokens=8192, disable_jump_forward=True) as engine:
        for budget in (24, 25, 64, 65):
            gate = _gate_for(engine, {"regex": r"\d+"}, budget)
            out = _write(engine, gate, digit * budget)
            assert gate.finished and len(out) <= budget, (budget, tok.decode(out))
            assert tok.decode(out[:-1]) == "7" * (len(out) - 1)


@pytest.mark.parametrize("backend", ["xgrammar", "llguidance"])
def test_an_ending_kept_from_before_a_step_never_goes_on_with_the_models_item(qwen_vocab_model, backend) -> None:
    """Review: a step whose earlier ending still ended the answer kept it without a search, and where a later step
    gave way, that ending was written: from there its first bytes went on with the model's item (`(ab,cd` ended
    `(ab,cda)`, `1,22,3` as `1,22,30`, `1e99` as `1e990`). A search from the step's state writes the ending; one
    kept is written only where none found fits. The answer is what the model wrote, cut, and closed."""
    import re

    from thinkform import Engine

    model, tok = qwen_vocab_model
    cases = [(r"\(([a-z]+,)*[a-z]+\)", ["(", "ab", ",", "cd", ",", "ef", ")"]),
             (r"(\d+,)*\d+", ["1", ",", "2", "2", ",", "3", ",", "4"])]
    with Engine(model_path=str(model), max_total_tokens=8192, disable_jump_forward=True,
                grammar_backend=backend) as engine:
        for rx, pieces in cases:
            script = [tok.encode(p, add_special_tokens=False)[0] for p in pieces]
            for budget in range(4, 24):
                gate = _gate_for(engine, {"regex": rx}, budget)
                text = tok.decode(_write(engine, gate, script)).removesuffix("<|im_end|>")
                assert re.fullmatch(rx, text) and "".join(pieces).startswith(text.rstrip(")")), (budget, text)
