#!/usr/bin/env bash
# Install the Solidity compiler that evaluation parses predictions with: npm's solc package at the
# version pinned in trainer/solc.py (SOLC_VERSION), into $TAC2SOL_SOLC_DIR or
# ~/.cache/tac2sol/solc-<version>. Needs node and npm. Does nothing when it is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/^SOLC_VERSION = "\(.*\)"$/\1/p' trainer/solc.py)
[ -n "$version" ] || { echo "install-solc: no SOLC_VERSION in trainer/solc.py" >&2; exit 1; }
dir=${TAC2SOL_SOLC_DIR:-$HOME/.cache/tac2sol/solc-$version}
installed=$(sed -n 's/^ *"version": "\(.*\)",*$/\1/p' "$dir/node_modules/solc/package.json" 2>/dev/null | head -1 || true)
if [ "$installed" = "$version" ]; then
  echo "solc $version already in $dir"
  exit 0
fi
command -v npm >/dev/null || { echo "install-solc: npm is not on PATH; install Node.js and npm" >&2; exit 1; }
mkdir -p "$dir"
npm install --no-audit --no-fund --prefix "$dir" "solc@$version" >&2
echo "solc $version installed in $dir"
