"""What the check for rules that can never end (thinkform/structured/unending.py) costs a compile, and what it
flags, on real-world schemas: each schema's xgrammar grammar printed and read, against xgrammar's conversion
of the schema to that grammar (the compile cache runs the check once per grammar, off the engine loop; the
compile with the vocabulary that follows a conversion costs more: `bench/grammar_overhead.py`).

    python bench/unending_check.py --schemas-dir ../shared/data/jsonschemabench
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from xgrammar_refusals import schemas  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--schemas-dir", type=Path, required=True)
    args = ap.parse_args()

    import xgrammar as xgr

    from thinkform.structured.unending import unending_rules

    check_ms, compile_ms, flagged, sizes = [], [], [], []
    for subset, schema in schemas(args.schemas_dir):
        source = json.dumps(schema)
        try:
            t0 = time.perf_counter()
            grammar = xgr.Grammar.from_json_schema(source)
            t1 = time.perf_counter()
        except Exception:  # noqa: BLE001 - a schema xgrammar does not take: not this check's business
            continue
        text = str(grammar)
        found = unending_rules(text)
        t2 = time.perf_counter()
        unending_rules(str(grammar))
        check_ms.append((time.perf_counter() - t2) * 1e3)
        compile_ms.append((t1 - t0) * 1e3)
        sizes.append(len(text))
        if found:
            flagged.append((subset, found[:3]))

    def q(values: list[float], p: float) -> float:
        return sorted(values)[min(len(values) - 1, int(p * len(values)))]

    print(f"Run {time.strftime('%Y-%m-%d %H:%M %Z')}; command: `{' '.join(sys.argv)}`\n")
    print("| schemas read | flagged | check p50 / p99 / max ms | xgrammar conversion p50 / p99 ms | check ÷ conversion (sums) "
          "| grammar text mean / max KB |")
    print("|---|---|---|---|---|---|")
    print(f"| {len(check_ms)} | {len(flagged)} | {q(check_ms, .5):.2f} / {q(check_ms, .99):.1f} / {max(check_ms):.0f} "
          f"| {q(compile_ms, .5):.1f} / {q(compile_ms, .99):.0f} | {sum(check_ms) / sum(compile_ms):.2f} "
          f"| {statistics.mean(sizes) / 1e3:.0f} / {max(sizes) / 1e3:.0f} |")
    for subset, names in flagged:
        print(f"- flagged: {subset} {names}")


if __name__ == "__main__":
    main()
