"""JSON string `pattern`s on real schemas: does every answer a backend admits parse, and keep its patterns?

    python bench/json_string_patterns.py --schemas-dir ../shared/data/jsonschemabench [--walks 12]
        [--backends xgrammar llguidance outlines] [--ids-out ids.json | --ids-in ids.json]

Takes the JSONSchemaBench schemas with a `pattern` (or patternProperties key) — with --only-escaped,
only those whose character sets hold a character JSON must escape (`.`, `[^…]`, `\\S`, `[ -~]`, a literal
`"` or `\\`: json_string_pattern) — compiles each with each backend (Qwen vocabulary), and walks it at
random: half the steps take a token holding `"` or `\\` where the mask allows one, as a model that wants a
quote would. Every walk that ends (EOS) is parsed with json.loads (strict: no raw control characters) and
validated with jsonschema against the schema (its patterns in ECMA meaning); a violation of `pattern`,
`patternProperties` or `propertyNames` counts. --ids-out / --ids-in carry the selection to a run of an
older tree (its thinkform first on PYTHONPATH), which may lack json_string_pattern.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grammar_overhead import QWEN_LOGITS_WIDTH, load_schemas  # noqa: E402


def selected(schemas: list[tuple[str, str]], only_escaped: bool) -> list[str]:
    """The schemas with a pattern; with only_escaped, one whose JSON text differs from the pattern."""
    from thinkform.structured.ecma_regex import ecma_schema, map_patterns
    from thinkform.structured.json_string_pattern import json_text_pattern

    out = []
    for schema_id, text in schemas:
        found: list[bool] = []

        def seen(pattern: str) -> str:
            try:
                found.append(not only_escaped or json_text_pattern(pattern) != pattern)
            except ValueError:  # a pattern the rewriter refuses is not measured here
                pass
            return pattern

        map_patterns(ecma_schema(json.loads(text)), seen)
        if any(found):
            out.append(schema_id)
    return out


class Walker:
    def __init__(self, tok: Any, vocab_size: int, max_tokens: int, rng: random.Random) -> None:
        import numpy as np
        import xgrammar as xgr

        self.np, self.tok, self.rng, self.max_tokens = np, tok, rng, max_tokens
        self.eos = tok.eos_token_id
        decoded = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab_size).decoded_vocab
        self.escaping = np.array([b'"' in d or b"\\" in d for d in decoded] + [False] * (vocab_size - len(decoded)))
        self.bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        self.vocab_size = vocab_size

    def walk(self, matcher: Any) -> tuple[str | None, str | None]:
        """(answer text if the walk ended, error if the mask and matcher disagreed)."""
        np = self.np
        tokens: list[int] = []
        for _ in range(self.max_tokens):
            matcher.fill_bitmask(self.bitmask, 0)
            bits = np.unpackbits(self.bitmask[0].numpy().view(np.uint8), bitorder="little")[: self.vocab_size]
            allowed = bits.astype(bool)
            eos_ok = bool(allowed[self.eos])
            allowed[self.eos] = False
            risky = np.flatnonzero(allowed & self.escaping)
            pool = risky if len(risky) and self.rng.random() < 0.5 else np.flatnonzero(allowed)
            if eos_ok and (not len(pool) or self.rng.random() < 0.3):
                return (self.tok.decode(tokens), None) if matcher.accept_token(self.eos) else (None, "EOS rejected")
            if not len(pool):
                return None, "nothing allowed"
            token = int(pool[self.rng.randrange(len(pool))])
            if not matcher.accept_token(token):
                return None, "allowed token rejected"
            tokens.append(token)
        return None, None


def measure(backend_name: str, ids: list[str], texts: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    import jsonschema

    from thinkform.structured.backends import BackendContext, create_backend
    from thinkform.structured.ecma_regex import ecma_schema
    from thinkform.structured.spec import ConstraintError, GrammarOptions, constraint_from_fields
    from thinkform.testing.qwen_vocab import build_qwen_tokenizer

    tok = build_qwen_tokenizer()
    backend = create_backend(backend_name, BackendContext(tok, QWEN_LOGITS_WIDTH, (tok.eos_token_id,), GrammarOptions()))
    walker = Walker(tok, QWEN_LOGITS_WIDTH, args.walk_tokens, random.Random(args.seed))
    row = {"backend": backend_name, "schemas": len(ids), "compiled": 0, "refused": 0, "walks_ended": 0,
           "invalid_json": 0, "schema_violations": 0, "walk_errors": 0, "examples": [], "reasons": {}}
    t0 = time.perf_counter()
    for schema_id in ids:
        try:
            compiled = backend.compile(constraint_from_fields(json_schema=texts[schema_id]))
        except ConstraintError as e:
            row["refused"] += 1
            reason = re.sub(r"[0-9]+|'[^']*'|\"[^\"]*\"", "_", str(e))[:90]
            row["reasons"][reason] = row["reasons"].get(reason, 0) + 1
            continue
        row["compiled"] += 1
        validator = jsonschema.Draft202012Validator(ecma_schema(json.loads(texts[schema_id])))
        for _ in range(args.walks):
            text, error = walker.walk(compiled.new_matcher())
            if error is not None:
                row["walk_errors"] += 1
                row["reasons"][error] = row["reasons"].get(error, 0) + 1
            if text is None:
                continue
            row["walks_ended"] += 1
            try:
                value = json.loads(text)
            except ValueError:
                row["invalid_json"] += 1
                row["examples"].append((schema_id, text[:160]))
                continue
            try:
                bad = next(iter(validator.iter_errors(value)), None)
            except Exception:  # noqa: BLE001 - jsonschema cannot read the schema: not this bench's question
                bad = None
            if bad is not None and bad.validator in ("pattern", "patternProperties", "propertyNames"):
                row["schema_violations"] += 1
                row["examples"].append((schema_id, f"{bad.validator}: {text[:140]}"))
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schemas-dir", type=Path, required=True)
    parser.add_argument("--backends", nargs="+", default=["xgrammar", "llguidance", "outlines"])
    parser.add_argument("--walks", type=int, default=12)
    parser.add_argument("--walk-tokens", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only-escaped", action="store_true",
                        help="only schemas with a pattern whose JSON text differs from it (quote, backslash, `.`)")
    parser.add_argument("--ids-out", type=Path)
    parser.add_argument("--ids-in", type=Path)
    args = parser.parse_args()

    schemas = load_schemas(args.schemas_dir, None)
    texts = dict(schemas)
    ids = json.loads(args.ids_in.read_text()) if args.ids_in else selected(schemas, args.only_escaped)
    if args.ids_out:
        args.ids_out.write_text(json.dumps(ids))
    print(f"{len(ids)} of {len(schemas)} schemas{' with a pattern whose JSON text differs' if args.only_escaped else ' with a pattern'}; "
          f"{args.walks} walks each, at most {args.walk_tokens} tokens; {platform.node()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| backend | schemas | compiled | refused | walks ended | invalid JSON | pattern broken | walk errors | wall (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for name in args.backends:
        r = measure(name, ids, texts, args)
        rows.append(r)
        print(f"| {r['backend']} | {r['schemas']} | {r['compiled']} | {r['refused']} | {r['walks_ended']} | "
              f"{r['invalid_json']} | {r['schema_violations']} | {r['walk_errors']} | {r['wall_s']} |", flush=True)
    for r in rows:
        for reason, count in sorted(r["reasons"].items(), key=lambda kv: -kv[1])[:6]:
            print(f"  {r['backend']}: {count} x {reason}")
        for schema_id, text in r["examples"][:4]:
            print(f"  {r['backend']} {schema_id}: {text!r}")


if __name__ == "__main__":
    main()
