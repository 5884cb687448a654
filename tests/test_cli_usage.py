"""Usage errors of every command, through the installed ``tac2sol`` script: exit 2, one line, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TAC2SOL = str(Path(sys.executable).parent / "tac2sol")
RUN = "runs/tiny-local.yaml"

# (id, arguments, words the one stderr line must hold: the command, the option or argument, the choices)
USAGE_ERRORS: list[tuple[str, list[str], list[str]]] = [
    ("root-unknown-command", ["bogus"], ["tac2sol:", "'bogus'", "commands: plan, crd, validate"]),
    ("root-unknown-option", ["--bogus"], ["tac2sol:", "--bogus"]),
    ("root-bad-log-level", ["--log-level", "LOUD", "crd"], ["'--log-level'", "'debug', 'info', 'warning'"]),
    ("root-option-needs-value", ["--log-level"], ["tac2sol:", "'--log-level' requires an argument"]),
    ("plan-bad-choice", ["plan", "-o", "yaml", RUN], ["tac2sol plan:", "'--output'", "'table', 'json'"]),
    ("plan-not-an-int", ["plan", RUN, "--gpus-per-node", "abc"], ["'--gpus-per-node'", "integer", "'abc'"]),
    ("plan-float-for-int", ["plan", RUN, "--nodes", "1.5"], ["'--nodes'", "integer", "'1.5'"]),
    ("plan-unknown-option", ["plan", RUN, "--bogus"], ["tac2sol plan:", "--bogus"]),
    ("plan-missing-argument", ["plan"], ["tac2sol plan:", "missing argument 'file'"]),
    ("plan-option-needs-value", [*["plan", RUN], "-o"], ["tac2sol plan:", "'-o' requires an argument"]),
    ("crd-bad-choice", ["crd", "-o", "toml"], ["tac2sol crd:", "'--output'", "'yaml', 'json'"]),
    ("crd-extra-argument", ["crd", "extra"], ["tac2sol crd:", "extra"]),
    ("validate-missing-argument", ["validate"], ["tac2sol validate:", "missing argument 'files'"]),
    ("validate-unknown-option", ["validate", "--bogus", RUN], ["tac2sol validate:", "--bogus"]),
    ("catalog-bad-kind", ["catalog", "foo"], ["tac2sol catalog:", "'kind'", "'models', 'gpus', 'all'"]),
    ("catalog-bad-choice", ["catalog", "-o", "yaml"], ["tac2sol catalog:", "'--output'", "'table', 'json'"]),
    ("catalog-extra-argument", ["catalog", "models", "extra"], ["tac2sol catalog:", "extra"]),
    (
        "operator-port-not-int",
        ["operator", "--metrics-port", "abc"],
        ["'--metrics-port'", "integer", "'abc'"],
    ),
    ("operator-interval-not-number", ["operator", "--progress-interval", "soon"], ["'--progress-interval'"]),
    ("operator-unknown-option", ["operator", "--bogus"], ["tac2sol operator:", "--bogus"]),
    ("train-option-needs-value", ["train", "-c"], ["tac2sol train:", "'-c' requires an argument"]),
    ("train-missing-option", ["train"], ["tac2sol train:", "missing option", "'--config'"]),
    ("train-steps-not-int", ["train", "-c", "x.yaml", "--max-steps", "abc"], ["'--max-steps'", "'abc'"]),
    ("train-port-not-int", ["train", "-c", "x.yaml", "--metrics-port", "abc"], ["'--metrics-port'"]),
    ("train-unknown-option", ["train", "-c", "x.yaml", "--bogus"], ["tac2sol train:", "--bogus"]),
    ("evaluate-missing-option", ["evaluate"], ["tac2sol evaluate:", "'--config'"]),
    ("evaluate-samples-not-int", ["evaluate", "-c", "x.yaml", "--max-samples", "abc"], ["'--max-samples'"]),
    (
        "evaluate-batch-float",
        ["evaluate", "-c", "x.yaml", "--batch-size", "2.5"],
        ["'--batch-size'", "'2.5'"],
    ),
    ("data-unknown-command", ["data", "bogus"], ["tac2sol data:", "'bogus'", "commands: preflight, sample"]),
    ("preflight-missing-argument", ["data", "preflight"], ["tac2sol data preflight:", "'file'"]),
    (
        "preflight-length-not-int",
        ["data", "preflight", "x", "--max-seq-length", "abc"],
        ["'--max-seq-length'"],
    ),
    (
        "preflight-length-zero",
        ["data", "preflight", "x", "--max-seq-length", "0"],
        ["'--max-seq-length'", "1"],
    ),
    (
        "preflight-unknown-option",
        ["data", "preflight", "x", "--bogus"],
        ["tac2sol data preflight:", "--bogus"],
    ),
    ("sample-contracts-not-int", ["data", "sample", "--contracts", "abc"], ["'--contracts'", "'abc'"]),
    ("sample-contracts-negative", ["data", "sample", "--contracts", "-1"], ["'--contracts'", "'-1'"]),
    ("run-missing-argument", ["run"], ["tac2sol run:", "'run_yaml'"]),
    ("run-steps-not-int", ["run", RUN, "--max-steps", "abc"], ["tac2sol run:", "'--max-steps'", "'abc'"]),
    ("run-port-not-int", ["run", RUN, "--metrics-port", "abc"], ["tac2sol run:", "'--metrics-port'"]),
    ("run-unknown-option", ["run", RUN, "--bogus"], ["tac2sol run:", "--bogus"]),
]


def _tac2sol(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    repo = Path(__file__).resolve().parents[1]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TAC2SOL_")} | env
    return subprocess.run([TAC2SOL, *args], cwd=repo, env=environ, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("args", "words"), [pytest.param(a, w, id=i) for i, a, w in USAGE_ERRORS])
def test_usage_error_is_one_line_and_exit_2(args: list[str], words: list[str]) -> None:
    proc = _tac2sol(*args)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: tac2sol"), lines[0]
    assert "--help'" in lines[0], "the line says where to look"
    for word in words:
        assert word in lines[0], f"{word!r} not in: {lines[0]}"
    assert proc.stdout == ""


@pytest.mark.parametrize(("args", "commands"), [([], "plan, crd"), (["data"], "preflight, sample")])
def test_a_bare_group_prints_its_help_and_one_error_line(args: list[str], commands: str) -> None:
    proc = _tac2sol(*args)
    assert proc.returncode == 2
    assert "Usage:" in proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(
        f"error: {' '.join(['tac2sol', *args])}: a command is required; commands: {commands}"
    )


def test_help_and_version_still_exit_0() -> None:
    assert _tac2sol("--version").returncode == 0
    proc = _tac2sol("plan", "--help")
    assert proc.returncode == 0
    assert "--gpus-per-node" in proc.stdout


def test_a_bad_log_level_in_the_environment_names_the_variable() -> None:
    proc = _tac2sol("crd", TAC2SOL_LOG_LEVEL="LOUD")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "error: tac2sol: invalid value for '--log-level' (env var: 'TAC2SOL_LOG_LEVEL'): 'LOUD' is not one "
        "of 'debug', 'info', 'warning', 'error' (see 'tac2sol --help')"
    ]
