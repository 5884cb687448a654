#!/usr/bin/env bash
# mypy cannot follow setuptools' package-dir mapping (operator/ -> tac2sol.operator), so check
# the package through a tree of symlinks laid out the way Python imports it.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=build/mypy-src
rm -rf "$tree" && mkdir -p "$tree/tac2sol"
for f in tac2sol/*.py; do ln -s "$PWD/$f" "$tree/tac2sol/$(basename "$f")"; done
ln -s "$PWD/operator" "$tree/tac2sol/operator"
ln -s "$PWD/trainer" "$tree/tac2sol/trainer"
ln -s "$PWD/observability" "$tree/tac2sol/observability"
cd "$tree"
exec "$OLDPWD/.venv/bin/mypy" --config-file "$OLDPWD/pyproject.toml" -p tac2sol "$@"
