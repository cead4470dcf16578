"""Is every answer a backend admits valid against its whole schema, or found by the answer check?

    python bench/answer_validity.py --schemas-dir ../shared/data/jsonschemabench [--walks 12]
        [--walk-tokens 200] [--backends auto llguidance xgrammar] [--jsonl rows.jsonl]

Compiles each JSONSchemaBench schema with each backend (Qwen vocabulary) and walks it at random inside the
mask (bench/json_string_patterns' Walker: half the steps favour a quote or backslash). Every walk that ends
(EOS) is parsed (strict JSON, numbers as written) and validated with jsonschema under the schema's own draft (2020-12 where it
names none; patterns in ECMA meaning; formats by that draft's checkers in jsonschema, counted apart: `format` is an
annotation unless a schema opts in), then given to the compiled grammar's answer check, which sets
`constraint_satisfied`. Counted: answers that are invalid JSON, answers the check found (constraint_satisfied
false), and silent violations (invalid against the schema, check satisfied): the promise is none.
"""
from __future__ import annotations

import argparse
import collections
import json
import platform
import random
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grammar_overhead import QWEN_LOGITS_WIDTH, load_schemas  # noqa: E402
from json_string_patterns import Walker  # noqa: E402


def validator_for(schema: Any) -> Any:
    """The schema's own draft's validator (2020-12 where it names none), formats checked."""
    import jsonschema
    import referencing

    from thinkform.structured.ecma_regex import ecma_schema

    draft = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return draft(ecma_schema(schema), format_checker=draft.FORMAT_CHECKER, registry=referencing.Registry())


def first_error(validator: Any, value: Any) -> str | None:
    """The keyword of the first error (a format's name with it), or None; "?" where jsonschema cannot judge."""
    from jsonschema.exceptions import best_match

    try:
        error = next(iter(validator.iter_errors(value)), None)
    except Exception:  # noqa: BLE001 - a pattern Python's re cannot read, a remote $ref: no verdict
        return "?"
    if error is None:
        return None
    while error.context:  # through anyOf / oneOf to the branch that came closest
        error = best_match(error.context) or error
        if not error.context:
            break
    return f"format {error.validator_value}" if error.validator == "format" else str(error.validator)


def measure(backend_name: str, schemas: list[tuple[str, str]], args: argparse.Namespace) -> dict[str, Any]:
    from thinkform.structured.backends import BackendContext, create_backend
    from thinkform.structured.spec import ConstraintError, GrammarOptions, constraint_from_fields
    from thinkform.testing.qwen_vocab import build_qwen_tokenizer

    tok = build_qwen_tokenizer()
    backend = create_backend(backend_name, BackendContext(tok, QWEN_LOGITS_WIDTH, (tok.eos_token_id,), GrammarOptions()))
    walker = Walker(tok, QWEN_LOGITS_WIDTH, args.walk_tokens, random.Random(args.seed))
    row: dict[str, Any] = {"backend": backend_name, "compiled": 0, "refused": 0, "ended": 0, "invalid_json": 0,
                           "checked_false": 0, "silent": collections.Counter(), "formats": collections.Counter(),
                           "unjudged": 0, "examples": []}
    t0 = time.perf_counter()
    for schema_id, text in schemas:
        try:
            compiled = backend.compile(constraint_from_fields(json_schema=text))
        except ConstraintError:
            row["refused"] += 1
            continue
        row["compiled"] += 1
        try:  # numbers as written (Decimal): jsonschema divides floats, and 274.9 broke multipleOf 0.01
            validator = validator_for(json.loads(text, parse_float=Decimal))
        except Exception:  # noqa: BLE001 - jsonschema cannot read the schema: not this bench's question
            validator = None
        walker.rng = random.Random(f"{args.seed}:{schema_id}")  # the same walks whichever schemas run
        for _ in range(args.walks):
            answer, _ = walker.walk(compiled.new_matcher())
            if answer is None:
                continue
            row["ended"] += 1
            satisfied = compiled.answer_check is None or compiled.answer_check(answer.encode())
            try:
                value = json.loads(answer, parse_float=Decimal)
            except ValueError:
                row["invalid_json"] += 1
                continue
            except ArithmeticError:  # an exponent past Decimal's (the engine's number guard bounds it): no verdict
                row["unjudged"] += 1
                continue
            if not satisfied:
                row["checked_false"] += 1
                continue
            error = first_error(validator, value) if validator is not None else "?"
            if error == "?":
                row["unjudged"] += 1
            elif error and error.startswith("format "):
                row["formats"][error] += 1
            elif error:
                row["silent"][error] += 1
                row["examples"].append((schema_id, error, answer[:120]))
        if args.jsonl:
            with args.jsonl.open("a") as out:
                out.write(json.dumps({"backend": backend_name, "schema": schema_id}) + "\n")
    row["wall_s"] = round(time.perf_counter() - t0)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schemas-dir", type=Path, required=True)
    parser.add_argument("--backends", nargs="+", default=["auto", "llguidance", "xgrammar"])
    parser.add_argument("--walks", type=int, default=12)
    parser.add_argument("--walk-tokens", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, help="only the first N schemas")
    parser.add_argument("--jsonl", type=Path, help="append each schema done (progress)")
    args = parser.parse_args()

    schemas = load_schemas(args.schemas_dir, None)[:args.limit]
    print(f"{len(schemas)} schemas, {args.walks} walks each of at most {args.walk_tokens} tokens; "
          f"{platform.node()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| backend | compiled | refused | walks ended | invalid JSON | found by the check | silent violations "
          "| format misses | unjudged | wall (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for name in args.backends:
        r = measure(name, schemas, args)
        rows.append(r)
        silent = ", ".join(f"{k} {v}" for k, v in r["silent"].most_common()) or "0"
        formats = ", ".join(f"{k.removeprefix('format ')} {v}" for k, v in r["formats"].most_common()) or "0"
        print(f"| {name} | {r['compiled']} | {r['refused']} | {r['ended']} | {r['invalid_json']} | "
              f"{r['checked_false']} | {silent} | {formats} | {r['unjudged']} | {r['wall_s']} |", flush=True)
    for r in rows:
        for schema_id, error, answer in r["examples"][:6]:
            print(f"  {r['backend']} {schema_id} ({error}): {answer!r}")


if __name__ == "__main__":
    main()
