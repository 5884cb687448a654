"""Fixtures for the API, planner, CRD and CLI tests: a valid base run and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RUNS = REPO / "runs"
TAC2SOL = Path(sys.executable).parent / "tac2sol"


@dataclass
class CliResult:
    rc: int
    stdout: str
    stderr: str


def run_cli(*args: str, cwd: Path = REPO) -> CliResult:
    """Run the installed ``tac2sol`` script as a user would (a real process, real exit code)."""
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    env.pop("TAC2SOL_LOG_FORMAT", None)
    proc = subprocess.run(
        [str(TAC2SOL), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="session")
def cli() -> Callable[..., CliResult]:
    return run_cli


BASE_RUN: dict[str, Any] = {
    "apiVersion": "tac2sol.dev/v1alpha1",
    "kind": "TrainingRun",
    "metadata": {"name": "base"},
    "spec": {
        "model": {"name": "qwen2.5-coder-32b"},
        "dataset": {"pvc": "tac2sol-data", "path": "tac2sol-500.jsonl"},
        "training": {"epochs": 1, "maxSeqLength": 4096, "perDeviceBatchSize": 1, "globalBatchSize": 16},
        "resources": {"gpuType": "rtx8000", "gpusPerNode": 4},
    },
}


@pytest.fixture(scope="session")
def make_run(edit_run: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """BASE_RUN with dotted-path changes: ``make_run(**{"spec.training.maxSeqLength": 2048})``."""
    return lambda **changes: edit_run(BASE_RUN, changes)


@pytest.fixture
def write_run(tmp_path: Path) -> Callable[[Any], Path]:
    """Write a dict (as YAML) or raw text to a file and return its path."""
    counter = iter(range(10_000))

    def write(content: Any) -> Path:
        path = tmp_path / f"run-{next(counter)}.yaml"
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
        return path

    return write
