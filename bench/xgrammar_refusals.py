"""How many real-world schemas xgrammar would compile without enforcing (keywords beside anyOf / oneOf /
allOf, an allOf of several schemas, an enum against its type): thinkform refuses those under
`--grammar-backend xgrammar`, and `auto` (the default) hands them to llguidance; and how many hold keywords
no grammar enforces (uniqueItems, not, if/then/else, ...), whose answers are checked against the schema
when they finish. Static analysis only (no compiling).

    python bench/xgrammar_refusals.py --schemas-dir ../shared/data/jsonschemabench
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from thinkform.structured.schema_support import (check_xgrammar_enforces, complete_required,  # noqa: E402
                                                 unenforced_keywords)
from thinkform.structured.spec import ConstraintError  # noqa: E402


def schemas(root: Path):
    for path in sorted(root.rglob("*.json")):
        data = json.loads(path.read_text())
        for item in data if isinstance(data, list) else [data]:
            schema = item.get("schema", item) if isinstance(item, dict) else item
            yield path.parent.name, json.loads(schema) if isinstance(schema, str) else schema


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--schemas-dir", type=Path, required=True)
    args = ap.parse_args()
    total, refused, checked = collections.Counter(), collections.Counter(), collections.Counter()
    reasons: collections.Counter[str] = collections.Counter()
    for subset, schema in schemas(args.schemas_dir):
        total[subset] += 1
        checked[subset] += bool(unenforced_keywords(schema))
        try:
            check_xgrammar_enforces(complete_required(schema))  # as the xgrammar backend does
        except ConstraintError as e:
            refused[subset] += 1
            reasons[str(e).split("enforce ")[1].split(" at ")[0]] += 1
    print("| subset | schemas | refused for xgrammar | answers checked after |\n|---|---|---|---|")
    for subset in sorted(total):
        print(f"| {subset} | {total[subset]} | {refused[subset]} | {checked[subset]} |")
    print(f"| all | {sum(total.values())} | {sum(refused.values())} | {sum(checked.values())} |\n")
    for reason, count in reasons.most_common(8):
        print(f"- {reason}: {count}")


if __name__ == "__main__":
    main()
