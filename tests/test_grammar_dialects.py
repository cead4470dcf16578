"""Grammar dialects (GBNF, Lark, structural tags) under each backend: what they admit, how an answer in them
is closed near the token limit, and the 400s they give (audit of grammar dialects)."""
from __future__ import annotations

import json
import re

import httpx
import pytest

from server_fixtures import running_server

UNENDING_LARK = 'start: "a" start'
LIST_LARK = 'start: NUM ("," NUM)*\nNUM: /[0-9]{1,3}/'
IMPORT_LARK = '%import common.NUMBER\n%import common.WS\n%ignore WS\nstart: NUMBER "+" NUMBER'
# llama.cpp's grammars/json.gbnf (its `\U0010FFFF` and the `\u` of its escapes), as llama.cpp ships it
JSON_GBNF = r'''root  ::= object
value ::= object | array | string | number | boolean
object ::=
  "{" ws (
            string ":" ws value
    ("," ws string ":" ws value)*
  )? "}"
array  ::=
  "[" ws (
            value
    ("," ws value)*
  )? "]"
string  ::=
  "\"" (
    [\x20\x21\x23-\x5b\x5d-\U0010FFFF] | # any code point except " (\x22) and \ (\x5c)
    "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F]) # escapes
  )* "\""
number  ::= "-"? [0-9]+ ws
boolean ::= ("true" | "false") ws
ws ::= ([ \t\n] ws)?
'''


@pytest.fixture(scope="module")
def engines(qwen_vocab_model):
    from thinkform import Engine

    model, tok = qwen_vocab_model
    made = {name: Engine(model_path=str(model), grammar_backend=name, max_total_tokens=2048)
            for name in ("auto", "llguidance")}
    yield made
    for eng in made.values():
        eng.shutdown()


@pytest.fixture(scope="module")
def backends(qwen_vocab_model):
    import thinkform.structured.backends  # noqa: F401 - registers them
    from thinkform.structured.backends.base import BackendContext
    from thinkform.structured.backends.registry import create_backend
    from thinkform.structured.spec import GrammarOptions

    _, tok = qwen_vocab_model
    ctx = BackendContext(tok, len(tok) + 64, (tok.eos_token_id,), GrammarOptions())
    return {name: create_backend(name, ctx) for name in ("xgrammar", "llguidance")}


def _chat(base: str, **body) -> httpx.Response:
    return httpx.post(f"{base}/v1/chat/completions", timeout=120, json={
        "model": "x", "max_tokens": 12, "messages": [{"role": "user", "content": "hi"}], **body})


def _error(r: httpx.Response, param: str) -> str:
    assert r.status_code == 400, (r.status_code, r.text)
    err = r.json()["error"]
    assert err["param"] == param, err
    return err["message"]


@pytest.mark.parametrize("backend", ["auto", "llguidance"])
def test_an_unending_lark_grammar_is_a_400_naming_its_own_start_rule(engines, backend):
    """Finding 1: `start: "a" start` in SGLang's `ebnf` field went to llguidance (xgrammar reads that field as
    GBNF), whose unending check read it with xgrammar's GBNF reader, failed, and gave no verdict: the request
    failed later, a 500 (GateError: EOS where the grammar cannot end). It is a 400 up front, as the same grammar
    in GBNF is, naming the field and the user's rule `start` (vLLM's `guided_grammar` said `root`: finding 6)."""
    with running_server(engines[backend]) as base:
        for body, param in (({"ebnf": UNENDING_LARK}, "ebnf"), ({"guided_grammar": UNENDING_LARK}, "guided_grammar"),
                            ({"ebnf": 'root ::= "a" root'}, "ebnf")):
            message = _error(_chat(base, **body), param)
            assert "no finite answer" in message, message
            rule = "'root'" if "::=" in body.get("ebnf", "") else "'start'"
            assert rule in message and ("'root'" not in message or rule == "'root'"), message
        r = httpx.post(f"{base}/generate", timeout=120,
                       json={"text": "hi", "sampling_params": {"max_new_tokens": 8, "ebnf": UNENDING_LARK}})
        assert r.status_code == 400 and "'start'" in r.text, r.text


TEXT_TAGS = {
    "tag of any_text": {"type": "tag", "begin": "<a>", "content": {"type": "any_text"}, "end": "</a>"},
    "sequence of const strings and any_text": {"type": "sequence", "elements": [
        {"type": "const_string", "value": "<a>"}, {"type": "any_text"}, {"type": "const_string", "value": "</a>"}]},
}


@pytest.mark.parametrize("name", list(TEXT_TAGS))
def test_a_structural_tag_of_free_text_is_closed_before_the_token_limit(engines, name):
    """Finding 2: a structural tag whose content is `any_text` ran to max_new_tokens ("length", constraint not
    satisfied), where the regex `<a>.*</a>` got its `</a>`: a tag of text only is one grammar, closed as one, its
    fixed strings (`</a>`) tried whole by the budget's ending search."""
    tag = json.dumps({"type": "structural_tag", "format": TEXT_TAGS[name]})
    for seed in (0, 1):
        out = engines["auto"].generate("Write:", {"structural_tag": tag, "max_new_tokens": 24, "temperature": 1.0,
                                                  "seed": seed})
        meta = out["meta_info"]
        assert meta["finish_reason"]["type"] == "stop" and meta["constraint_satisfied"], (out["text"], meta)
        assert out["text"].startswith("<a>") and out["text"].endswith("</a>"), out["text"]


def test_vllm_lark_grammars_reach_llguidance_as_lark(engines):
    """Finding 3: under --grammar-backend llguidance, a Lark grammar in vLLM's `guided_grammar` or
    `structured_outputs.grammar` was turned into xgrammar's printed EBNF, which llguidance's GBNF converter
    cannot read (`{0, -1}`, `\\f`): a 400 quoting text the user never wrote. The constraint carries the Lark as
    written; llguidance reads it as Lark, xgrammar (auto) through its Lark reader as before."""
    from thinkform.server.params import _vllm_value
    from thinkform.structured.spec import constraint_from_fields

    field, ebnf = _vllm_value("guided_grammar", "ebnf", LIST_LARK)
    constraint = constraint_from_fields(**{field: ebnf})
    assert (ebnf, constraint.source, constraint.dialect) == (LIST_LARK, LIST_LARK, "lark")
    assert constraint_from_fields(ebnf='root ::= "a" # b: c').dialect is None  # GBNF, a colon in a comment
    for backend in ("llguidance", "auto"):
        with running_server(engines[backend]) as base:
            for body, answer in (({"guided_grammar": LIST_LARK}, r"[0-9]{1,3}(,[0-9]{1,3})*"),
                                 ({"structured_outputs": {"grammar": IMPORT_LARK}}, None)):
                r = _chat(base, **body, temperature=1.0, seed=0)
                assert r.status_code == 200, (backend, r.text)
                choice = r.json()["choices"][0]
                if answer is not None and choice["finish_reason"] == "stop":
                    assert re.fullmatch(answer, choice["message"]["content"]), choice


def _accepts(backends, backend: str, grammar: str, text: str) -> bool:
    from thinkform.structured.spec import constraint_from_fields

    m = backends[backend].compile(constraint_from_fields(ebnf=grammar)).new_matcher()
    return m.accept_string(text) and m.can_terminate()


@pytest.mark.parametrize("grammar, good, bad", [
    (r'root ::= [\u0400-\u04FF]+', ["Ѐ", "ӿЖ"], ["䀀", "a"]),
    (r'root ::= "\u00e9"', ["é"], ["e"]),
    (r'root ::= [\x20\x23-\x5b\x5d-\U0010FFFF]+', ["a", "é😀"], ['"', "\\"]),
    (r'root ::= [\U0001F600-\U0001F64F]', ["😀"], ["a", "é"]),
    # escapes of characters a class or string must not take raw: `]`, `-`, `"`, `\`; and `\\` then `u0041`
    (r'root ::= [\u005d\u002d] "\u0022\u005c" "\\u0041"', ['-"\\\\u0041', ']"\\\\u0041'], ['a"\\\\u0041', '-"\\A']),
    ('root ::= "a" "b" # "\\u00e9" [\\u0041]\nx ::= "c"', ["ab"], ["a", "abA"]),  # a comment is left as it is
])
def test_gbnf_unicode_escapes_under_llguidance(backends, grammar, good, bad):
    """Finding 4: llguidance's GBNF converter drops the leading zeros of `\\uXXXX` / `\\UXXXXXXXX` (`\\u00e9` became
    `\\ue9`, a lexer error; `\\U0010FFFF` `\\U10FFFF`): such grammars, llama.cpp's json.gbnf among them, were a
    400 under --grammar-backend llguidance. Both libraries now read them alike."""
    for backend in ("xgrammar", "llguidance"):
        assert [_accepts(backends, backend, grammar, t) for t in good + bad] == [True] * len(good) + [False] * len(bad)


def test_llamacpp_json_gbnf_under_llguidance(engines, backends):
    assert _accepts(backends, "llguidance", JSON_GBNF, '{"a": ["é😀", -1, true]}')
    with running_server(engines["llguidance"]) as base:
        assert _chat(base, ebnf=JSON_GBNF).status_code == 200


def test_error_texts_say_what_is_wrong_in_the_users_terms(engines):
    """Finding 6: a structural tag's format error under auto carried xgrammar's C++ assertion (`Check failed:
    (std::holds_alternative<Grammar>(result)) is false`) and advised `--grammar-backend xgrammar`, the backend
    that refused it; a Lark regex xgrammar cannot read quoted its log prefix (`[06:10:45]
    /project/cpp/regex_converter.cc:83:`); llguidance's errors on a GBNF grammar quoted its Lark translation
    (`%llguidance {}`, `start:`, `FOO_BAR`) instead of naming the user's rule. Each stays a 400 naming the field."""
    with running_server(engines["auto"]) as base:
        for fmt, reason in (({"type": "nonsense"}, "Format type not recognized: nonsense"),
                            ({"type": "tag", "begin": "<a>", "end": "</a>"}, "must have a content field")):
            message = _error(_chat(base, structural_tag={"type": "structural_tag", "format": fmt}), "structural_tag")
            assert reason in message and "Check failed" not in message and "holds_alternative" not in message, message
            assert "--grammar-backend xgrammar" not in message, message
        message = _error(_chat(base, guided_grammar="start: /(?i:yes|no)/"), "guided_grammar")
        assert "Group modifier" in message and ".cc:" not in message and not re.search(r"\[\d\d:\d\d", message), message
    with running_server(engines["llguidance"]) as base:
        message = _error(_chat(base, structural_tag={"type": "structural_tag", "format": {"type": "nonsense"}}),
                         "structural_tag")
        assert "Format type not recognized: nonsense" in message and "--grammar-backend xgrammar" not in message
        for grammar, rule, reason in (('root ::= "a" foo-bar\nfoo-bar ::= [\\u00e9-\\u00e0]', "foo-bar",
                                       "invalid character class range"),
                                      ('root ::= "a"{0}', "root", "cannot be 0")):
            message = _error(_chat(base, ebnf=grammar), "ebnf")
            assert f"rule {rule!r}" in message and reason in message, message
            assert "%llguidance" not in message and "FOO_BAR" not in message and "start:" not in message, message


def test_free_text_beside_text_only_tags_is_never_cut_short(tiny_model_dirs):
    """Review: a text-only structural tag was closed as one grammar even where free text stands beside its tags
    (triggered_tags): the free text ended with EOS at the closing reserve (31 of 40 tokens, finish stop)."""
    from thinkform import Engine

    fmt = {"type": "structural_tag", "format": {"type": "triggered_tags", "triggers": ["<a>"],
           "tags": [{"begin": "<a>", "content": {"type": "any_text"}, "end": "</a>"}]}}
    with Engine(model_path=str(tiny_model_dirs["qwen2"]), max_total_tokens=4096) as engine:
        for budget in (40, 64):
            meta = engine.generate("Hello", {"temperature": 0, "max_new_tokens": budget,
                                             "structural_tag": json.dumps(fmt)})["meta_info"]
            assert meta["completion_tokens"] == budget and not meta["closed_by_budget"], meta


def test_a_text_only_tag_writes_its_own_added_tokens(qwen_vocab_model):
    """Review: closed as a grammar, a text-only tag whose strings are added tokens (Qwen's `<tool_call>`) had
    them spelled out in plain characters, text the model never sees; they are written as the model writes them."""
    from thinkform import Engine

    model, tok = qwen_vocab_model
    fmt = {"type": "structural_tag", "format": {"type": "tag", "begin": "<tool_call>", "content": {"type": "any_text"},
                                                "end": "</tool_call>"}}
    with Engine(model_path=str(model), max_total_tokens=8192) as engine:
        out = engine.generate("Call:", {"temperature": 0, "max_new_tokens": 40, "structural_tag": json.dumps(fmt),
                                        "skip_special_tokens": False})
    ids = [tok.convert_tokens_to_ids(t) for t in ("<tool_call>", "</tool_call>")]
    assert out["output_ids"][0] == ids[0] and ids[1] in out["output_ids"], out
    assert out["meta_info"]["constraint_satisfied"] and out["meta_info"]["finish_reason"]["type"] == "stop"


def test_a_text_tag_followed_by_free_text_is_still_closed_inside_its_tag(tiny_model_dirs):
    """Review: a text-only format that may end in free text (`<a>` + any_text + `</a>`, then any_text) was no
    longer closed at all: answers ran into max_new_tokens inside `<a>`. Closing reaches inside the tag only."""
    from thinkform import Engine

    fmt = {"type": "sequence", "elements": [
        {"type": "tag", "begin": "<a>", "content": {"type": "any_text"}, "end": "</a>"}, {"type": "any_text"}]}
    tag = json.dumps({"type": "structural_tag", "format": fmt})
    with Engine(model_path=str(tiny_model_dirs["qwen2"]), max_total_tokens=4096) as engine:
        outs = engine.generate(["Write:"] * 6, [{"structural_tag": tag, "max_new_tokens": 40, "temperature": 1.0,
                                                  "seed": seed} for seed in range(6)])
    assert all(o["meta_info"]["constraint_satisfied"] and "</a>" in o["text"] for o in outs), [o["text"] for o in outs]
