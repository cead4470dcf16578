"""The main job on the embedded default model: the seed's offline examples, answers always valid.

    python -m thinkform.demo [--model-path PATH] [--max-new-tokens N]
"""
from __future__ import annotations

import argparse
import json
import time

from thinkform.testing.seed import SEED_EBNF, SEED_REGEX, SEED_SCHEMA, SEED_TAG


def main() -> None:
    import thinkform

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    args = ap.parse_args()
    t0 = time.perf_counter()
    llm = thinkform.Engine(model_path=args.model_path, reasoning_parser="deepseek-r1")
    print(f"loaded {llm.served_model_name} in {time.perf_counter() - t0:.1f}s")
    tok = llm.tokenizer
    chat = tok.apply_chat_template([{"role": "user", "content": "Give me the information and population of the "
                                     "capital of France in the JSON format."}], tokenize=False,
                                   add_generation_prompt=True)
    cases = [
        ("JSON schema", {"json_schema": json.dumps(SEED_SCHEMA)}),
        ("EBNF", {"ebnf": SEED_EBNF}),
        ("regex", {"regex": SEED_REGEX}),
        ("structural tag", {"structural_tag": json.dumps(SEED_TAG)}),
    ]
    with llm:
        free = llm.generate(chat, {"temperature": 0, "max_new_tokens": args.max_new_tokens})
        print(f"\n=== free text ===\n{free['text']}")
        for name, constraint in cases:
            params = {"temperature": 0, "max_new_tokens": args.max_new_tokens, **constraint}
            out = llm.generate(chat, params, require_reasoning=True)
            meta = out["meta_info"]
            print(f"\n=== {name} (reasoning first, thinking budget = max_new_tokens - answer reserve) ===")
            print(f"reasoning_content: {meta.get('reasoning_content')!r}")
            print(f"content: {meta.get('content')!r}")
            print(f"finish: {meta['finish_reason']}, constraint satisfied: {meta['constraint_satisfied']}, "
                  f"{meta['completion_tokens']} tokens in {meta['e2e_latency']:.1f}s")


if __name__ == "__main__":
    main()
