#!/usr/bin/env bash
# Wheels a bare GPU machine (torch, transformers and peft installed; no network) needs for
# bench/gpu/run.sh, fetched here into .whl/ (git-ignored through .git/info/exclude): this project's
# own wheel and what the trainer imports beyond that image, at the versions requirements.lock pins.
# run.sh installs them into /tmp/site before anything runs. Carry .whl with the working tree.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >>.git/info/exclude
mkdir -p .whl
pin() { grep -m1 "^$1==" requirements.lock | cut -d' ' -f1; }
.venv/bin/python -m pip wheel -q --no-deps --no-build-isolation -w .whl .
for name in bitsandbytes pydantic-settings python-dotenv transformers peft; do
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl "$(pin "$name")"
done
du -sh .whl
