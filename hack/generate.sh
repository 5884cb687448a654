#!/usr/bin/env bash
# Regenerates every generated file. Each step is independent: add yours as a function and list it
# in STEPS. Tests regenerate into a temporary copy and fail on drift.
#   bash hack/generate.sh            all steps
#   bash hack/generate.sh crd        one step
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONSAFEPATH=1
TAC2SOL="${TAC2SOL:-.venv/bin/tac2sol}"

# The TrainingRun CRD, from the pydantic models (operator/spec.py, operator/status.py).
crd() {
  local file=trainingruns.tac2sol.dev.yaml
  mkdir -p manifests/crds charts/tac2sol/crds
  "$TAC2SOL" crd > "manifests/crds/$file.tmp"
  mv "manifests/crds/$file.tmp" "manifests/crds/$file"
  cp "manifests/crds/$file" "charts/tac2sol/crds/$file"
  echo "generate: manifests/crds/$file, charts/tac2sol/crds/$file"
}

# Grafana dashboards (chart) and alert rules (chart + plain rules file), from observability/.
observability() {
  .venv/bin/python -m tac2sol.observability.generate --root .
}

STEPS=(crd observability)

if [[ $# -gt 0 ]]; then
  for step in "$@"; do "$step"; done
else
  for step in "${STEPS[@]}"; do "$step"; done
fi
