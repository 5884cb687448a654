"""TrainingRun + Plan -> TrainConfig: the contract between the operator and the trainer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from tac2sol.operator.planner import make_plan
from tac2sol.operator.specfile import load_training_run, parse_training_run
from tac2sol.operator.trainconfig import to_train_config
from tac2sol.trainer.config import TrainConfig

REPO = Path(__file__).resolve().parents[2]
MakeRun = Callable[..., dict[str, Any]]


def test_qwen32b_maps_plan_and_spec(make_run: MakeRun) -> None:
    run = parse_training_run(
        make_run(**{"spec.training.learningRate": 1e-4, "spec.dataset.dropArtifactRows": True})
    )
    plan = make_plan(run)
    cfg = to_train_config(run, plan)
    assert isinstance(cfg, TrainConfig)
    assert cfg.run_name == "base" and cfg.quantization == "nf4"
    assert cfg.model.name_or_path == "Qwen/Qwen2.5-Coder-32B" and cfg.model.family == "qwen2"
    assert cfg.model.target_modules == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    assert cfg.data.max_seq_length == 4096 and cfg.data.drop_artifact_rows is True
    assert cfg.training.learning_rate == 1e-4 and cfg.training.epochs == 1 and cfg.training.max_steps == -1
    assert cfg.training.gradient_accumulation_steps == plan.gradient_accumulation_steps == 4
    d = cfg.distributed
    assert (d.strategy, d.zero_stage, d.precision, d.gpu_type, d.expected_world_size) == (
        "ddp",
        None,
        "fp16",
        "rtx8000",
        4,
    )
    assert d.per_gpu_memory_bytes == plan.per_gpu_memory_bytes and d.model_hidden_size == 5120
    assert cfg.metrics.port == 9400


def test_deepspeed_plan_carries_the_stage(make_run: MakeRun) -> None:
    run = parse_training_run(make_run(**{"spec.model.name": "llama-3.1-70b"}))
    cfg = to_train_config(run, make_plan(run))
    assert (cfg.distributed.strategy, cfg.distributed.zero_stage) == ("deepspeed", 3)


def test_all_linear_passes_through(make_run: MakeRun) -> None:
    run = parse_training_run(make_run(**{"spec.lora": {"targetModules": ["all-linear"]}}))
    assert to_train_config(run, make_plan(run)).model.target_modules == "all-linear"


def test_overrides_merge_per_section(make_run: MakeRun) -> None:
    run = parse_training_run(make_run())
    cfg = to_train_config(run, make_plan(run), output_dir="/output/base", data={"path": "/data/x.jsonl"})
    assert str(cfg.output_dir) == "/output/base" and str(cfg.data.path) == "/data/x.jsonl"
    assert cfg.data.max_seq_length == 4096  # the rest of the section is kept


def test_environment_does_not_leak_into_the_rendering(
    make_run: MakeRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TAC2SOL_RUN_NAME", "from-env")
    monkeypatch.setenv("TAC2SOL_TRAINING__LEARNING_RATE", "0.5")
    run = parse_training_run(make_run())
    cfg = to_train_config(run, make_plan(run))
    assert cfg.run_name == "base" and cfg.training.learning_rate == 2e-4


def test_uri_dataset_is_downloaded_by_the_trainer_under_the_output(make_run: MakeRun) -> None:
    uri = "https://example.org/sets/x.jsonl"
    run = parse_training_run(make_run(**{"spec.dataset": {"uri": uri, "credentialsSecret": "s3-creds"}}))
    cfg = to_train_config(run, make_plan(run), output_dir="/output/base")
    assert cfg.data.uri == uri and cfg.data.file == Path("/output/base/data/source/x.jsonl")
    dumped = yaml.safe_load(cfg.dump_yaml())
    assert dumped["data"]["uri"] == uri and "path" not in dumped["data"]
    assert "s3-creds" not in cfg.dump_yaml()  # a Secret's name and keys never reach the config
    local = to_train_config(run, make_plan(run), data={"path": "/data/x.jsonl"})  # the download target
    assert local.data.file == Path("/data/x.jsonl") and local.data.uri == uri


def test_tiny_local_round_trips_through_a_file(tmp_path: Path) -> None:
    run = load_training_run(REPO / "runs" / "tiny-local.yaml")
    cfg = to_train_config(run, make_plan(run))
    assert cfg.training.max_steps == 200 and cfg.distributed.strategy == "single"
    assert cfg.distributed.precision == "fp32" and cfg.model.name_or_path == ".cache/tiny-model"
    path = tmp_path / "config.yaml"
    path.write_text(cfg.dump_yaml())
    assert TrainConfig.from_file(path) == TrainConfig.model_validate(cfg.model_dump())
