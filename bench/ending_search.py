"""What budget closing costs for regex and EBNF answers: the ending search, timed from random answer states.

    python bench/ending_search.py [--walks 40] [--max-walk 60] [--seed 0]

When a regex or EBNF answer reaches the closing reserve, the gate searches once for a short way to an end
of its grammar (thinkform/structured/ending.py) on the engine loop's thread: every request in the batch
waits for it. This walks each grammar at random (`--walks` times, up to `--max-walk` tokens, each a random
allowed token of the real Qwen vocabulary), then times the search from where the walk stopped, for every
backend that compiles the grammar. It reports the search's time (median, p99, max), the share of walks it
found an ending for, and the ending's length in tokens (median, max); every ending found is checked by
feeding it to the matcher, which must then terminate.

    python bench/ending_search.py --schemas-dir ../shared/data/jsonschemabench [--limit 200]

times instead what the grammar cache does after each compile: measuring the schema's shortest answer
(which decides the answer reserve and when the ending is first looked for), against the compile itself.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from thinkform.structured.backends import BackendContext, create_backend
from thinkform.structured.ending import EndingSearch
from thinkform.structured.literals import grammar_literals
from thinkform.structured.spec import GrammarOptions, constraint_from_fields
from thinkform.structured.vocab import TokenVocab
from thinkform.testing.qwen_vocab import build_qwen_tokenizer
from thinkform.testing.seed import SEED_SCHEMA

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grammar_overhead import load_schemas, pct  # noqa: E402

GRAMMARS: dict[str, tuple[str, str]] = {
    "email": ("regex", r"[a-z0-9._]+@[a-z0-9-]+(\.[a-z]{2,6})+"),
    # a domain whose class takes the dot too: no single byte changes the mask until the answer may end
    "email-domain": ("regex", r"[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,4}"),
    "email-dotted": ("regex", r"[a-z]+(\.[a-z]+)*@[a-z]+(\.[a-z]+)*\.[a-z]{2,4}"),
    "url": ("regex", r"https?://[a-z0-9.-]+\.[a-z]{2,6}(/[a-z0-9]*)*"),
    # a fixed closing text whose letters the loop before it takes too: no byte tells it apart
    "answer-tag": ("regex", r"<answer>.*</answer>"),
    "key-values": ("regex", r"(\w+=\"[^\"]*\"; )+end"),
    "two-sections": ("ebnf", 'root ::= "<a>" t* "</a>" "<b>" t* "</b>"\nt ::= [a-z<>/ ]'),
    "phone": ("regex", r"\(\d{3}\) \d{3}-\d{4}"),
    "iso-datetime": ("regex", r"\d{4}-[01]\d-[0-3]\dT[0-2]\d:[0-5]\d:[0-5]\d(\.\d{1,6})?(Z|[+-][0-2]\d:[0-5]\d)"),
    "sentence": ("regex", r"[A-Z][a-z]+( [a-z]+){3,20}\."),
    "list": ("ebnf", 'root ::= "(" item ("," item)* ")"\nitem ::= [a-z]+'),
    "arithmetic": ("ebnf", 'root ::= expr\nexpr ::= term (("+" | "-") term)*\nterm ::= factor (("*" | "/") factor)*\n'
                           'factor ::= "(" expr ")" | [0-9]+'),
    "sql": ("ebnf", 'root ::= "SELECT " cols " FROM " name (" WHERE " cond)? ";"\ncols ::= "*" | name (", " name)*\n'
                    'name ::= [a-z_]+\ncond ::= name " " op " " value (" AND " cond)?\nop ::= "=" | "<" | ">"\n'
                    'value ::= [0-9]+ | "\'" [a-z ]* "\'"'),
    "json-like": ("ebnf", 'root ::= obj\nobj ::= "{" (pair ("," pair)*)? "}"\npair ::= str ":" val\n'
                          'val ::= str | num | obj | "[" (val ("," val)*)? "]"\nstr ::= "\\"" [a-z]* "\\""\n'
                          'num ::= "-"? [0-9]+'),
    "json-seed": ("json_schema", json.dumps(SEED_SCHEMA)),
    "json-email-pattern": ("json_schema", json.dumps({"type": "object", "properties": {"email": {
        "type": "string", "pattern": "^[a-z0-9._%+-]+@[a-z0-9.-]+\\.[a-z]{2,4}$"}}, "required": ["email"]})),
    # the same loops as a JSON string's pattern: its literal runs, where the string cannot close yet
    **{f"json-pattern-{name}": ("json_schema", json.dumps({"type": "object", "properties": {"x": {
        "type": "string", "pattern": pattern}}, "required": ["x"]}))
       for name, pattern in (("end", r"^.*END$"), ("answer-tag", r"^<answer>.*</answer>$"), ("words", r"^(\w+ )+done$"))},
    "json-8-strings": ("json_schema", json.dumps({"type": "object", "properties": {k: {"type": "string"} for k in "abcdefgh"},
                                                  "required": list("abcdefgh")})),
}
BACKENDS = ("xgrammar", "llguidance", "outlines")


def random_walk(matcher, vocab: TokenVocab, rng: random.Random, steps: int, scratch: torch.Tensor) -> int:
    """Accept up to `steps` random allowed tokens (never EOS); returns how many were taken."""
    eos = set(vocab.eos_token_ids)
    taken = 0
    for _ in range(steps):
        matcher.fill_bitmask(scratch, 0)
        words = scratch.numpy()[0]
        bits = np.unpackbits(words.view(np.uint8), bitorder="little")[: vocab.vocab_size]
        allowed = [int(t) for t in np.flatnonzero(bits) if int(t) not in eos and vocab.token_bytes[int(t)]]
        if not allowed or not matcher.accept_token(rng.choice(allowed)):
            break
        taken += 1
    return taken


def measure(backend_name: str, kind: str, source: str, vocab: TokenVocab, tok, args) -> dict | None:
    backend = create_backend(backend_name, BackendContext(tok, vocab.vocab_size, vocab.eos_token_ids, GrammarOptions()))
    constraint = constraint_from_fields(**{kind: source})
    try:
        backend.check_kind(constraint)
    except Exception:  # noqa: BLE001 - outlines compiles no EBNF: no row
        return None
    compiled = backend.compile(constraint)
    literals = grammar_literals(constraint)  # as the grammar cache gives them to the engine's search
    search = EndingSearch(vocab)
    scratch = torch.empty((1, (vocab.vocab_size + 31) // 32), dtype=torch.int32)
    rng = random.Random(args.seed)
    times, lengths, found = [], [], 0
    for _ in range(args.walks):
        matcher = compiled.new_matcher()
        walked = random_walk(matcher, vocab, rng, rng.randint(1, args.max_walk), scratch)
        start = time.perf_counter()
        ids = search.ending_tokens(matcher, empty_ok=walked > 0, literals=literals)
        times.append((time.perf_counter() - start) * 1e3)
        if ids is not None:
            found += 1
            lengths.append(len(ids))
            assert all(matcher.accept_token(t) for t in ids) and matcher.is_terminated(), (backend_name, source)
    times.sort()
    return {"ms_p50": statistics.median(times), "ms_p99": pct(times, 99),
            "ms_max": times[-1], "found": found / args.walks,
            "tokens_p50": statistics.median(lengths) if lengths else None, "tokens_max": max(lengths, default=None)}


def measure_schemas(schemas_dir: Path, limit: int, vocab: TokenVocab, tok) -> None:
    """Compile each JSONSchemaBench schema with xgrammar, then measure its shortest answer as the grammar
    cache does after every compile, before the grammar is handed out: times against the compile's."""
    backend = create_backend("xgrammar", BackendContext(tok, vocab.vocab_size, vocab.eos_token_ids, GrammarOptions()))
    search = EndingSearch(vocab)
    compile_ms, measure_ms, lengths, unknown = [], [], [], 0
    for _, source in load_schemas(schemas_dir, limit):
        try:
            start = time.perf_counter()
            compiled = backend.compile(constraint_from_fields(json_schema=source))
        except Exception:  # noqa: BLE001 - a schema xgrammar refuses has nothing to measure
            continue
        compiled_at = time.perf_counter()
        search.measure(compiled)
        compile_ms.append((compiled_at - start) * 1e3)
        measure_ms.append((time.perf_counter() - compiled_at) * 1e3)
        length = search.shortest_answer(compiled)
        unknown += length is None
        lengths += [] if length is None else [length]

    print(f"| schemas | compile ms p50 / p90 / p99 | measure (before hand-out) ms p50 / p90 / p99 / max "
          f"| shortest answer tokens p50 / p90 / max | not found |\n"
          f"| --- | --- | --- | --- | --- |\n| {len(compile_ms)} | "
          f"{pct(compile_ms, 50):.1f} / {pct(compile_ms, 90):.1f} / {pct(compile_ms, 99):.1f} | "
          f"{pct(measure_ms, 50):.1f} / {pct(measure_ms, 90):.1f} / {pct(measure_ms, 99):.1f} / {max(measure_ms):.1f} | "
          f"{pct(lengths, 50)} / {pct(lengths, 90)} / {max(lengths)} | {unknown} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--walks", type=int, default=40)
    parser.add_argument("--max-walk", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grammars", nargs="+", default=list(GRAMMARS), choices=list(GRAMMARS))
    parser.add_argument("--schemas-dir", type=Path, default=None,
                        help="JSONSchemaBench's folder: time measuring each schema's shortest answer instead")
    parser.add_argument("--limit", type=int, default=200, help="with --schemas-dir: schemas, an equal share per subset")
    args = parser.parse_args()
    tok = build_qwen_tokenizer()
    vocab = TokenVocab.from_tokenizer(tok, len(tok))
    if args.schemas_dir is not None:
        measure_schemas(args.schemas_dir, args.limit, vocab, tok)
        return
    print("| grammar | backend | search ms p50 / p99 / max | ending found | ending tokens p50 / max |")
    print("| --- | --- | --- | --- | --- |")
    for name in args.grammars:
        kind, source = GRAMMARS[name]
        for backend in BACKENDS:
            row = measure(backend, kind, source, vocab, tok, args)
            if row is not None:
                print(f"| {name} ({kind}) | {backend} | {row['ms_p50']:.1f} / {row['ms_p99']:.1f} / {row['ms_max']:.1f} "
                      f"| {row['found']:.0%} | {row['tokens_p50']} / {row['tokens_max']} |", flush=True)


if __name__ == "__main__":
    main()
