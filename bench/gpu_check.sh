#!/usr/bin/env bash
# Issue 6's device check, one call: install the carried wheels, then bench/gpu_bench.py, results to $OUT.
#   Here, once: bash bench/gpu_wheels.sh        (Python 3.12 wheels the GPU image lacks, into .whl/)
#   Device:     run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=360)   (~5 min with every part)
#   Of record:  GPU_CHECK_ARGS='--parts thinkform transformers --transformers-modes static' (~280 s
#               on an H200: model 20 s, thinkform 60 s, transformers 110-170 s; add `check` 40 s, `profile` 25 s)
#   CPU try:    OUT=/tmp/gpu-out GPU_CHECK_ARGS="--config tiny --batch-sizes 1 4 --max-new-tokens 16 --no-compile" \
#               GPU_CHECK_PYTHON=.venv/bin/python bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check-out}
mkdir -p "$OUT"
PY=${GPU_CHECK_PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
else
  export PYTHONPATH=${PYTHONPATH:-}:$PWD
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  # the host's CPUs as the libraries count them, and as this process may use them (thinkform.cpus)
  "$PY" -c "import os, torch; from thinkform.cpus import cgroup_cpu_quota, usable_cpus; print('cpus: os.cpu_count', os.cpu_count(), 'affinity', len(os.sched_getaffinity(0)), 'cgroup quota', cgroup_cpu_quota(), 'usable', usable_cpus(), 'torch threads', torch.get_num_threads())"
} | tee "$OUT/machine.txt"
timeout 330 "$PY" bench/gpu_bench.py --out "$OUT" ${GPU_CHECK_ARGS:-} 2>&1 | tee "$OUT/log.txt"
