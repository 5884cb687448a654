#!/usr/bin/env bash
# The prepared GPU benchmark: run on a machine with one CUDA GPU and the trainer extra installed
# (`pip install -e '.[trainer]'`, or the trainer image). Within ~10 minutes it prints
#   1. single process vs DeepSpeed ZeRO-0/2/3 on one GPU: step time, tokens/s, peak memory
#      against the planner's estimate (bench/gpu/gpu_bench.py);
#   2. the trainer's GPU memory metrics against nvidia-smi (bench/gpu/memory_check.py).
# Nothing is downloaded. Environment: PYTHON (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
export PYTHONSAFEPATH=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout 480 "$PY" bench/gpu/gpu_bench.py "$@"
timeout 120 "$PY" bench/gpu/memory_check.py
