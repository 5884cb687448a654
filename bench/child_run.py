"""One measured side of a benchmark, run in a process of its own (the benches' shared helper)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

# Offline, quiet tokenizers, and the repository's top-level ``operator/`` kept off sys.path.
CHILD_ENV = {"PYTHONSAFEPATH": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_child(cmd: list[str], mode: str) -> dict[str, Any]:
    """Run ``cmd``; its last stdout line is a JSON object of its figures. Exits with its stderr's
    tail when it fails, naming ``mode``."""
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **CHILD_ENV})
    if done.returncode != 0:
        sys.exit(f"{mode} run failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))
