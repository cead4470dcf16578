"""What one budget-closing search costs the engine loop, this tree's ending.py against an earlier one's, and
whether the two find the same ending.

    python bench/ending_search_cost.py [--baseline cd0def0] [--repeats 3] [--walks 6]
        [--schemas-dir ../shared/data/jsonschemabench --limit 40]

The ending search (thinkform/structured/ending.py) runs on the engine loop's thread when a constrained
answer nears max_new_tokens; at batch 32 many rows get there on one decode step, and the whole batch waits
for their searches. This times EndingSearch.ending_tokens with the real Qwen vocabulary (151,936 tokens)
from realistic states, for the ending.py of `--baseline` (a git revision, loaded as a module of its own)
and for this tree's, one after the other on the same matcher (the order alternates from state to state):
- capital: the seed's CapitalInfo schema (xgrammar, as `auto` compiles it), at every token of answers in
  the seed's shape, compact and indented, and deep inside a long name;
- grammars: bench/ending_search.py's regex, EBNF and JSON-schema grammars, each backend, from random walks;
- jsonschemabench (with --schemas-dir): each schema's shortest answer from its start, as the grammar cache
  measures it after a compile (MEASURE_LIMITS), and the search from a random walk into it.

Each search runs `--repeats` times a side; a state's time is its best (the first, cold, is reported apart:
this tree's EndingSearch keeps what it learns, shared by the rows of a vocabulary, so a fresh one per call
is timed too, `new cold`). Every call's token ids must equal the baseline's: any state where they differ is
listed, and the run fails.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch

from thinkform.structured.backends import BackendContext, create_backend
from thinkform.structured.ending import EndingSearch
from thinkform.structured.literals import grammar_literals
from thinkform.structured.spec import GrammarOptions, constraint_from_fields
from thinkform.structured.vocab import TokenVocab
from thinkform.testing.qwen_vocab import build_qwen_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ending_search import BACKENDS, GRAMMARS, random_walk  # noqa: E402
from grammar_overhead import load_schemas, pct  # noqa: E402
from seed_cases import CAPITAL_INFO_SCHEMA  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CAPITAL_ANSWERS = ('{"name": "Paris", "population": 2148000}',
                   '{\n  "name": "Tokyo",\n  "population": 13960000\n}',
                   '{"name": "' + "Llanfairpwllgwyngyll" * 3)


def load_baseline(revision: str) -> ModuleType:
    """ending.py as it was at `revision`, as a module of its own (its imports are this tree's)."""
    source = subprocess.run(["git", "show", f"{revision}:thinkform/structured/ending.py"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader("thinkform.structured._ending_baseline", loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    exec(compile(source, f"{revision}:ending.py", "exec"), module.__dict__)  # noqa: S102 - our own file
    return module


@dataclass
class State:
    """A matcher where a search starts, and how the engine would search from there."""

    group: str
    name: str
    matcher: object
    literals: tuple[bytes, ...]
    empty_ok: bool = True
    measure: bool = False  # the grammar cache's shortest-answer measure (its limits, from the start)


@dataclass
class Timings:
    best: list[float] = field(default_factory=list)  # ms a state, best of the repeats
    cold: list[float] = field(default_factory=list)  # ms a state, first call


def capital_states(vocab: TokenVocab, tok, backend) -> list[State]:
    constraint = constraint_from_fields(json_schema=json.dumps(CAPITAL_INFO_SCHEMA))
    compiled, literals = backend.compile(constraint), grammar_literals(constraint)
    states = []
    for n, answer in enumerate(CAPITAL_ANSWERS):
        ids = tok.encode(answer, add_special_tokens=False)
        for written in range(1, len(ids)):
            matcher = compiled.new_matcher()
            if all(matcher.accept_token(t) for t in ids[:written]):
                states.append(State("capital", f"answer {n} token {written}", matcher, literals))
    return states


def grammar_states(vocab: TokenVocab, tok, walks: int, seed: int) -> list[State]:
    scratch = torch.empty((1, (vocab.vocab_size + 31) // 32), dtype=torch.int32)
    states = []
    for backend_name in BACKENDS:
        backend = create_backend(backend_name, BackendContext(tok, vocab.vocab_size, vocab.eos_token_ids,
                                                              GrammarOptions()))
        for name, (kind, source) in GRAMMARS.items():
            constraint = constraint_from_fields(**{kind: source})
            try:
                backend.check_kind(constraint)
                compiled = backend.compile(constraint)
            except Exception:  # noqa: BLE001 - outlines compiles no EBNF
                continue
            rng = random.Random(seed)
            for walk in range(walks):
                matcher = compiled.new_matcher()
                walked = random_walk(matcher, vocab, rng, rng.randint(1, 60), scratch)
                states.append(State("grammars", f"{name} {backend_name} walk {walk}", matcher,
                                    grammar_literals(constraint), empty_ok=walked > 0))
    return states


def schema_states(vocab: TokenVocab, tok, schemas_dir: Path, limit: int, seed: int) -> list[State]:
    backend = create_backend("xgrammar", BackendContext(tok, vocab.vocab_size, vocab.eos_token_ids, GrammarOptions()))
    scratch = torch.empty((1, (vocab.vocab_size + 31) // 32), dtype=torch.int32)
    rng = random.Random(seed)
    states = []
    for name, source in load_schemas(schemas_dir, limit):
        constraint = constraint_from_fields(json_schema=source)
        try:
            compiled = backend.compile(constraint)
        except Exception:  # noqa: BLE001 - a schema xgrammar refuses has nothing to search
            continue
        literals = grammar_literals(constraint)
        states.append(State("jsonschemabench measure", name, compiled.new_matcher(), literals,
                            empty_ok=False, measure=True))
        matcher = compiled.new_matcher()
        walked = random_walk(matcher, vocab, rng, rng.randint(1, 60), scratch)
        states.append(State("jsonschemabench walk", name, matcher, literals, empty_ok=walked > 0))
    return states


def search_call(search, state: State) -> Callable[[], list[int] | None]:
    limits = search.measure_limits if state.measure else None
    return lambda: search.ending_tokens(state.matcher, empty_ok=state.empty_ok, limits=limits,
                                        literals=state.literals)


def timed(call: Callable[[], list[int] | None]) -> tuple[float, list[int] | None]:
    start = time.perf_counter()
    ids = call()
    return (time.perf_counter() - start) * 1e3, ids


def compare(states: list[State], vocab: TokenVocab, baseline: ModuleType, repeats: int) -> bool:
    old_search, new_search = baseline.EndingSearch(vocab), EndingSearch(vocab)
    groups = dict.fromkeys(s.group for s in states)
    timings = {(g, side): Timings() for g in groups for side in ("old", "new", "new cold")}
    differ: list[str] = []
    for n, state in enumerate(states):
        sides = [("old", search_call(old_search, state)), ("new", search_call(new_search, state))]
        if n % 2:
            sides.reverse()
        results: dict[str, list[tuple[float, list[int] | None]]] = {side: [] for side, _ in sides}
        for _ in range(repeats):
            for side, call in sides:
                results[side].append(timed(call))
        # a fresh EndingSearch each time: what this tree's search costs with nothing learned before it
        results["new cold"] = [timed(search_call(EndingSearch(vocab), state)) for _ in range(repeats)]
        want = results["old"][0][1]
        for side, runs in results.items():
            timings[(state.group, side)].best.append(min(ms for ms, _ in runs))
            timings[(state.group, side)].cold.append(runs[0][0])
            if any(ids != want for _, ids in runs):
                differ.append(f"{state.group} / {state.name} ({side}): {want} != {[ids for _, ids in runs]}")

    print(f"| states | side | ms a search: mean / p50 / p90 / max (best of {repeats}) | first call mean / max "
          f"| total ms (best) | speed-up |")
    print("| --- | --- | --- | --- | --- | --- |")
    for group in groups:
        old_total = sum(timings[(group, "old")].best)
        for side in ("old", "new", "new cold"):
            t = timings[(group, side)]
            total = sum(t.best)
            print(f"| {group} ({len(t.best)}) | {side} | {statistics.fmean(t.best):.3f} / {pct(t.best, 50):.3f} / "
                  f"{pct(t.best, 90):.3f} / {max(t.best):.3f} | {statistics.fmean(t.cold):.3f} / {max(t.cold):.3f} "
                  f"| {total:.1f} | {old_total / total:.2f}x |")
    print(f"\nidentical token ids: {len(states) - len({d.split(' (')[0] for d in differ})} of {len(states)} states "
          f"({len(states) * 3 * repeats} calls)")
    for line in differ:
        print("DIFFERS:", line)
    return not differ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="cd0def0", help="git revision of the ending.py to compare with")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--walks", type=int, default=6, help="random walks a grammar and backend")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--schemas-dir", type=Path, default=None, help="JSONSchemaBench's folder")
    parser.add_argument("--limit", type=int, default=40, help="with --schemas-dir: schemas, a share per subset")
    args = parser.parse_args()
    baseline = load_baseline(args.baseline)
    tok = build_qwen_tokenizer()
    vocab = TokenVocab.from_tokenizer(tok, len(tok))
    xgrammar = create_backend("xgrammar", BackendContext(tok, vocab.vocab_size, vocab.eos_token_ids, GrammarOptions()))
    states = capital_states(vocab, tok, xgrammar) + grammar_states(vocab, tok, args.walks, args.seed)
    if args.schemas_dir is not None:
        states += schema_states(vocab, tok, args.schemas_dir, args.limit, args.seed)
    if not compare(states, vocab, baseline, args.repeats):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
