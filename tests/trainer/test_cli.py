"""The trainer's commands as a user runs them (a subprocess each: exit codes and output)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

TAC2SOL = Path(sys.executable).parent / "tac2sol"


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONSAFEPATH": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [str(TAC2SOL), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )


def test_preflight_json_on_the_500_rows(dataset_500: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    rejects = tmp_path / "rejects.jsonl"
    done = _run(
        "data", "preflight", str(dataset_500), "--tokenizer", str(tiny_model_dir), "--max-seq-length", "2048",
        "--drop-artifact-rows", "--rejects", str(rejects), "-o", "json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    rows = [json.loads(line) for line in dataset_500.read_text().splitlines()]
    markers = ("stack_underflow", "<unknown>", "None(")
    artifact_rows = sum(any(m in r["input"] for m in markers) for r in rows)
    assert report["rows"] == report["valid"] == 500
    assert report["artifactRows"] == artifact_rows
    assert report["artifacts"]["stack_underflow"] == sum("stack_underflow" in r["input"] for r in rows) == 249
    assert report["rejected"]["lifter_artifact"] == artifact_rows
    assert 0 < report["fitRatio"] <= 1 and report["tokenLengths"]["count"] == 500
    written = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert len(written) == report["rejectedRows"] == sum(report["rejected"].values())
    assert all({"line", "reason", "detail", "row"} <= set(r) for r in written)


def test_preflight_malformed_line_exits_2_naming_the_line(write_jsonl: Any, make_row: Any) -> None:
    path = write_jsonl([make_row(1), make_row(2), '{"input": "x", "output": ', make_row(4)])
    done = _run("data", "preflight", str(path))
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {path}:3: not valid JSON")
    assert "Traceback" not in done.stderr
    skipped = _run("data", "preflight", str(path), "--on-bad-line", "skip", "-o", "json")
    assert skipped.returncode == 0
    assert json.loads(skipped.stdout)["rejected"] == {"bad_json": 1}


def test_preflight_text_output_and_sample_command(tmp_path: Path) -> None:
    made = _run("data", "sample", "-o", str(tmp_path / "s.jsonl"), "--contracts", "5")
    assert made.returncode == 0 and "synthetic" in made.stdout
    done = _run("data", "preflight", str(tmp_path / "s.jsonl"))
    assert done.returncode == 0
    assert "lifter artefacts:" in done.stdout and "pass --tokenizer PATH" in done.stdout


def test_train_with_a_bad_config_field_names_it(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model: {name_or_path: x}\ndata: {path: y, validation_ratio: 2}\n")
    done = _run("train", "--config", str(cfg))
    assert done.returncode == 2
    assert "data.validation_ratio" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["train", "--max-steps", "0"], "training.max_steps"),  # used to train 1 step
        (["train", "--max-steps", "-5"], "training.max_steps"),  # used to train 3 epochs
        (["train", "--metrics-port", "70000"], "metrics.port"),
        (["evaluate", "--max-samples", "0"], "evaluation.max_samples"),
        (["evaluate", "--batch-size", "0"], "evaluation.batch_size"),
        (["evaluate", "--max-new-tokens", "-3"], "evaluation.max_new_tokens"),
    ],
    ids=["max-steps-0", "max-steps-negative", "metrics-port", "max-samples", "batch-size", "max-new-tokens"],
)
def test_a_bad_override_exits_2_naming_the_field(tmp_path: Path, args: list[str], field: str) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"model: {{name_or_path: x}}\ndata: {{path: y}}\noutput_dir: {tmp_path / 'out'}\n")
    done = _run(args[0], "--config", str(cfg), *args[1:])
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("error: ") and f": {field}: " in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
