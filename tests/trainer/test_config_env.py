"""Environment variables and the trainer config: a local run may override, a planned run may not."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from tac2sol.operator.planner import make_plan
from tac2sol.operator.render import RenderOptions, config_data
from tac2sol.operator.resolve import resolve
from tac2sol.operator.specfile import load_training_run
from tac2sol.trainer.config import TrainConfig

REPO = Path(__file__).resolve().parents[2]
# What a Secret named in spec.dataset.credentialsSecret could hold besides its credentials.
STEERING = {
    "TAC2SOL_DISTRIBUTED__STRATEGY": "single",
    "TAC2SOL_TRAINING__LEARNING_RATE": "0.05",
    "TAC2SOL_QUANTIZATION": "none",
}


def _rendered_config(tmp_path: Path) -> Path:
    """train.yaml as the operator puts it in the ConfigMap of a run with a credentials Secret."""
    run = load_training_run(REPO / "runs" / "qwen32b.yaml")
    data = run.model_dump(by_alias=True, exclude_none=True)
    data["metadata"].update(uid="uid-1", namespace="ml")
    data["spec"]["dataset"] = {"uri": "s3://bucket/rows.jsonl", "credentialsSecret": "s3-creds"}
    run = type(run).model_validate(data)
    rr = resolve(run)
    files = config_data(rr, make_plan(rr), RenderOptions(trainer_image="t:1"))
    path = tmp_path / "train.yaml"
    path.write_text(files["train.yaml"])
    return path


def test_a_pods_environment_cannot_change_the_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = _rendered_config(tmp_path)
    planned = yaml.safe_load(path.read_text())
    assert planned["env_overrides"] is False
    for key, value in STEERING.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-TEST")  # the Secret's real purpose stays untouched
    with caplog.at_level(logging.WARNING, logger="tac2sol.trainer.config"):
        cfg = TrainConfig.from_file(path)
    assert cfg.distributed.strategy == planned["distributed"]["strategy"] == "ddp"
    assert cfg.training.learning_rate == planned["training"]["learning_rate"]
    assert cfg.quantization == "nf4"
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert all(key in warning for key in STEERING) and "AWS_ACCESS_KEY_ID" not in warning


def test_flags_still_override_a_planned_config(tmp_path: Path) -> None:
    cfg = TrainConfig.from_file(_rendered_config(tmp_path), training={"max_steps": 7})
    assert cfg.training.max_steps == 7


def test_a_local_config_takes_environment_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump({"model": {"name_or_path": "m"}, "data": {"path": "d.jsonl"}}))
    monkeypatch.setenv("TAC2SOL_TRAINING__LEARNING_RATE", "0.05")
    assert TrainConfig.from_file(path).training.learning_rate == 0.05
