#!/usr/bin/env bash
# Builds DeepSpeed's CPU ops once and caches them, so no rank of a distributed CPU job JIT-builds
# (a JIT build inside a 2-rank job aborts at exit):
#   - deepspeed_shm_comm: loaded by deepspeed.init_distributed on DS_ACCELERATOR=cpu;
#   - cpu_adam (only with --cpu-adam; ~10 min to compile on 2 cores): DeepSpeed's optimizer when
#     the plan offloads the optimizer (not needed on a CPU, where nothing is offloaded).
# Cache: ~/.cache/tac2sol/deepspeed-ops/<key>, the key naming the DeepSpeed, torch and Python
# versions, the CPU (cpu_adam is compiled with -march=native) and where torch and DeepSpeed are
# installed: the build records absolute include paths, and a second virtualenv sharing the
# directory would make ninja rebuild the op inside a job. Prints that directory on
# stdout (the only stdout line): export it as TORCH_EXTENSIONS_DIR for the job. ~2 min cold.
# Usage: bash hack/prebuild-deepspeed-ops.sh [--cpu-adam]
# Environment: TAC2SOL_CACHE (default ~/.cache/tac2sol), PYTHON (default .venv/bin/python).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
CACHE=${TAC2SOL_CACHE:-$HOME/.cache/tac2sol}
export PYTHONSAFEPATH=1 DS_ACCELERATOR=cpu

ops=ShareMemCommBuilder
[[ ${1:-} == --cpu-adam ]] && ops+=" CPUAdamBuilder"

say() { echo "prebuild-deepspeed-ops: $*" >&2; }

versions=$("$PY" -c '
import hashlib, importlib.util, sys, sysconfig
from importlib.metadata import version
where = [importlib.util.find_spec(m).origin for m in ("torch", "deepspeed")] + [sysconfig.get_paths()["include"]]
print("ds" + version("deepspeed"), "torch" + version("torch"), "py%d%d" % sys.version_info[:2],
      hashlib.sha256("|".join(where).encode()).hexdigest()[:8], sep="-")')
cpu=$( (uname -m; grep -m1 -E "^(model name|flags)" /proc/cpuinfo; grep -m1 "^flags" /proc/cpuinfo) \
    | sha256sum | cut -c1-10)
dir=$CACHE/deepspeed-ops/${versions//+/_}-$(uname -m)-$cpu
done_file=$dir/.done-${ops// /-}
if [[ -f $done_file ]]; then
    echo "$dir"
    exit 0
fi

mkdir -p "$dir" "$CACHE/logs"
exec 9>"$dir.lock"
flock 9
if [[ ! -f $done_file ]]; then
    log=$CACHE/logs/deepspeed-ops.log
    say "building DeepSpeed CPU ops ($ops) into $dir (log: $log)"
    start=$SECONDS
    if ! TORCH_EXTENSIONS_DIR=$dir "$PY" -c '
import sys
from deepspeed.ops.op_builder import cpu
for name in sys.argv[1:]:
    builder = getattr(cpu, name)()
    builder.load(verbose=False)
    print("built", builder.absolute_name())
' $ops >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        say "ERROR: building the ops failed (full log: $log)"
        exit 1
    fi
    touch "$done_file"
    say "done in $((SECONDS - start)) s"
fi
echo "$dir"
