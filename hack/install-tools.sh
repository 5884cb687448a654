#!/usr/bin/env bash
# Installs (once, cached under ~/.cache/tac2sol by version) the tools the test suite uses.
set -euo pipefail
echo "install-tools: nothing to install yet"
