"""Answers the budget's ending changed although they fitted: how often, under real-world schemas.

    python bench/budget_distortion.py --schemas-dir ../shared/data/jsonschemabench [--per-subset 4] [--seeds 8]

The budget's ending (gate.py) writes a short ending of the grammar when an answer nears `max_new_tokens`. It
must save answers that would not fit, and leave alone those that would. A tiny random qwen2 model with the
real Qwen vocabulary answers each schema (default `auto` backend, no reasoning) greedy and sampled with a few
seeds, first with room (`--roomy` tokens). Where that answer ended by itself ("stop", no ending written for it)
after L tokens (its EOS included), it is asked again with `max_new_tokens` L + spare for each spare: decoding is deterministic per seed,
so each of those answers must be the same text; one that differs is an answer the ending replaced (the spares
put the answer's end inside the closing reserve, where the ending is looked for). Each must also be valid.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import jsonschema

from thinkform import Engine
from thinkform.structured.spec import constraint_from_fields
from thinkform.testing.models import make_tiny_model_dir
from thinkform.testing.qwen_vocab import build_qwen_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from budget_validity import sample_schemas  # noqa: E402  (the same schemas for the same seed)

PROMPT = "Give the answer as JSON."


def valid(schema: dict, content: str) -> bool:
    try:
        jsonschema.validate(json.loads(content), schema)
    except (ValueError, jsonschema.ValidationError, jsonschema.SchemaError):
        return False
    return True


def decodings(seeds: int) -> list[dict]:
    return [{"temperature": 0}] + [{"temperature": 1, "seed": s} for s in range(1, seeds)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--schemas-dir", type=Path, required=True)
    ap.add_argument("--per-subset", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=8, help="decodings per schema: greedy and seeds-1 sampled")
    ap.add_argument("--spares", type=int, nargs="+", default=[0, 1, 2, 4, 8, 16])
    ap.add_argument("--roomy", type=int, default=160)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args()

    tok = build_qwen_tokenizer()
    model = make_tiny_model_dir(Path(tempfile.mkdtemp()) / "qwen", "qwen2", tok, vocab_size=151936, seed=0)
    rows: list[dict] = []
    with Engine(model_path=str(model), max_total_tokens=8192) as engine:
        for path in sample_schemas(args.schemas_dir, args.per_subset, args.seed):
            text = path.read_text()
            try:
                engine.parts.grammar_cache.get(constraint_from_fields(json_schema=text))
            except Exception:  # noqa: BLE001 - refused up front: not run
                continue
            for decoding in decodings(args.seeds):
                params = {**decoding, "json_schema": text}
                roomy = engine.generate(PROMPT, {**params, "max_new_tokens": args.roomy})
                own = roomy["meta_info"]
                if own["finish_reason"]["type"] != "stop" or own["closed_by_budget"]:  # its own end only
                    continue
                for spare in args.spares:
                    budget = own["completion_tokens"] + spare
                    tight = engine.generate(PROMPT, {**params, "max_new_tokens": budget})
                    rows.append({"schema": str(path), "decoding": json.dumps(decoding), "spare": spare,
                                 "budget": budget, "changed": tight["text"] != roomy["text"],
                                 "valid": valid(json.loads(text), tight["text"]),
                                 "finish": tight["meta_info"]["finish_reason"]["type"],
                                 "roomy": roomy["text"], "tight": tight["text"]})
                    if rows[-1]["changed"]:
                        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=1))
    report(rows)


def report(rows: list[dict]) -> None:
    print(f"{len({r['schema'] for r in rows})} schemas, {len({(r['schema'], r['decoding']) for r in rows})} "
          f"answers that ended by themselves, {len(rows)} asked again")
    print("| tokens to spare | asked again | changed | invalid | finish not stop |")
    print("| --- | --- | --- | --- | --- |")
    by_spare: dict[int, list[dict]] = defaultdict(list)
    for r in rows:
        by_spare[r["spare"]].append(r)
    for spare, group in sorted(by_spare.items()):
        print(f"| {spare} | {len(group)} | {sum(r['changed'] for r in group)} | {sum(not r['valid'] for r in group)} "
              f"| {sum(r['finish'] != 'stop' for r in group)} |")


if __name__ == "__main__":
    main()
