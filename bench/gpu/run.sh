#!/usr/bin/env bash
# The prepared GPU benchmark: run on a machine with one CUDA GPU and the trainer extra installed
# (`pip install -e '.[trainer]'`, or the trainer image), or on a bare machine with torch,
# transformers and peft plus the wheels bench/gpu/wheels.sh put in .whl/. Each part fits 10 minutes:
#   bash bench/gpu/run.sh [planner] [ARGS]  the memory planner against the GPU: peak allocated memory
#       per point of a grid of the planner's own runs, estimate vs measured (planner_sweep.py ARGS);
#   bash bench/gpu/run.sh zero   single process vs DeepSpeed ZeRO-0/2/3 on one GPU (gpu_bench.py),
#       then the trainer's GPU memory metrics against nvidia-smi (memory_check.py).
# Nothing is downloaded. Environment: PYTHON (default .venv/bin/python, else python3).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONSAFEPATH=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c 'import torch, transformers, peft, bitsandbytes; print("torch", torch.__version__, "transformers",
transformers.__version__, "peft", peft.__version__, "bitsandbytes", bitsandbytes.__version__)'
part=planner
case "${1:-}" in planner | zero) part=$1; shift ;; esac
if [ "$part" = planner ]; then
  exec timeout 540 "$PY" bench/gpu/planner_sweep.py --budget-s 420 "$@"
fi
timeout 480 "$PY" bench/gpu/gpu_bench.py "$@"
timeout 120 "$PY" bench/gpu/memory_check.py
