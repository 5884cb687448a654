"""TrainingRun + Plan -> TrainConfig: the contract between the operator and the trainer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tac2sol.operator.planner import make_plan
from tac2sol.operator.resolve import resolve
from tac2sol.operator.specfile import load_training_run, parse_training_run
from tac2sol.operator.trainconfig import to_train_config
from tac2sol.trainer.config import TrainConfig

REPO = Path(__file__).resolve().parents[2]
MakeRun = Callable[..., dict[str, Any]]


def test_qwen32b_maps_plan_and_spec(make_run: MakeRun) -> None:
    run = parse_training_run(
        make_run(**{"spec.training.learningRate": 1e-4, "spec.dataset.dropArtifactRows": True})
    )
    plan = make_plan(resolve(run))
    cfg = to_train_config(resolve(run), plan)
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
    cfg = to_train_config(resolve(run), make_plan(resolve(run)))
    assert (cfg.distributed.strategy, cfg.distributed.zero_stage) == ("deepspeed", 3)


def test_all_linear_passes_through(make_run: MakeRun) -> None:
    run = parse_training_run(make_run(**{"spec.lora": {"targetModules": ["all-linear"]}}))
    assert to_train_config(resolve(run), make_plan(resolve(run))).model.target_modules == "all-linear"


def test_overrides_merge_per_section(make_run: MakeRun) -> None:
    run = parse_training_run(make_run())
    cfg = to_train_config(
        resolve(run), make_plan(resolve(run)), output_dir="/output/base", data={"path": "/data/x.jsonl"}
    )
    assert str(cfg.output_dir) == "/output/base" and str(cfg.data.path) == "/data/x.jsonl"
    assert cfg.data.max_seq_length == 4096  # the rest of the section is kept


def test_environment_does_not_leak_into_the_rendering(
    make_run: MakeRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TAC2SOL_RUN_NAME", "from-env")
    monkeypatch.setenv("TAC2SOL_TRAINING__LEARNING_RATE", "0.5")
    run = parse_training_run(make_run())
    cfg = to_train_config(resolve(run), make_plan(resolve(run)))
    assert cfg.run_name == "base" and cfg.training.learning_rate == 2e-4


def test_uri_dataset_is_downloaded_by_the_trainer_under_the_output(make_run: MakeRun) -> None:
    uri = "https://example.org/sets/x.jsonl"
    run = parse_training_run(make_run(**{"spec.dataset": {"uri": uri, "credentialsSecret": "s3-creds"}}))
    cfg = to_train_config(resolve(run), make_plan(resolve(run)), output_dir="/output/base")
    assert cfg.data.uri == uri and cfg.data.file == Path("/output/base/data/source/x.jsonl")
    dumped = yaml.safe_load(cfg.dump_yaml())
    assert dumped["data"]["uri"] == uri and "path" not in dumped["data"]
    assert "s3-creds" not in cfg.dump_yaml()  # a Secret's name and keys never reach the config
    local = to_train_config(
        resolve(run), make_plan(resolve(run)), data={"path": "/data/x.jsonl"}
    )  # the download target
    assert local.data.file == Path("/data/x.jsonl") and local.data.uri == uri


def test_tiny_local_round_trips_through_a_file(tmp_path: Path) -> None:
    run = load_training_run(REPO / "runs" / "tiny-local.yaml")
    cfg = to_train_config(resolve(run), make_plan(resolve(run)))
    assert cfg.training.max_steps == 200 and cfg.distributed.strategy == "single"
    assert cfg.distributed.precision == "fp32" and cfg.model.name_or_path == ".cache/tiny-model"
    path = tmp_path / "config.yaml"
    path.write_text(cfg.dump_yaml())
    assert TrainConfig.from_file(path) == TrainConfig.model_validate(cfg.model_dump())


# --- every spec field reaches the trainer ------------------------------------------------------
# For each field of the spec sections that shape training: a valid non-default value and where the
# trainer config carries it (a dotted path), or why it does not reach train.yaml. A field added to
# the API without an entry here fails test_every_section_field_is_mapped.
_SECTION_FIELDS: dict[str, tuple[Any, str]] = {
    "dataset.path": ("rows/other.jsonl", "data.path"),
    "dataset.validation_ratio": (0.2, "data.validation_ratio"),
    "dataset.split_seed": (7, "data.split_seed"),
    "dataset.drop_artifact_rows": (True, "data.drop_artifact_rows"),
    "dataset.max_rows": (99, "data.max_rows"),
    "dataset.on_bad_line": ("skip", "data.on_bad_line"),
    "training.max_steps": (321, "training.max_steps"),
    "training.learning_rate": (3e-5, "training.learning_rate"),
    "training.scheduler": ("linear", "training.lr_scheduler"),
    "training.warmup_ratio": (0.1, "training.warmup_ratio"),
    "training.weight_decay": (0.01, "training.weight_decay"),
    "training.max_grad_norm": (0.5, "training.max_grad_norm"),
    "training.max_seq_length": (1024, "data.max_seq_length"),
    "training.gradient_checkpointing": (False, "training.gradient_checkpointing"),
    "training.batching": ("random", "training.batching"),
    "training.fused_cross_entropy": (True, "training.fused_cross_entropy"),
    "training.seed": (5, "training.seed"),
    "training.logging_steps": (3, "training.logging_steps"),
    "training.eval_steps": (40, "training.eval_steps"),
    "training.save_steps": (50, "training.save_steps"),
    "training.save_total_limit": (2, "training.save_total_limit"),
    "lora.r": (8, "lora.r"),
    "lora.alpha": (64, "lora.alpha"),
    "lora.dropout": (0.1, "lora.dropout"),
    "lora.target_modules": (["q_proj", "v_proj"], "model.target_modules"),
    "evaluation.enabled": (False, "evaluation.enabled"),
    "evaluation.max_new_tokens": (64, "evaluation.max_new_tokens"),
    "evaluation.batch_size": (2, "evaluation.batch_size"),
    "evaluation.max_samples": (10, "evaluation.max_samples"),
    "evaluation.num_beams": (2, "evaluation.num_beams"),
    "evaluation.base_model": (True, "evaluation.base_model"),
}
# Fields that reach the trainer another way, each tested elsewhere in this file or in test_render.py.
_NOT_IN_TRAIN_YAML = {
    "dataset.pvc": "mounted at /data by the pod; data.path points into it",
    "dataset.uri": "data.uri (path and uri are exclusive: test_dataset_uri_run_maps_to_data_uri)",
    "dataset.credentials_secret": "envFrom on the pod, never in the ConfigMap",
    "training.epochs": "training.epochs (exclusive with maxSteps: test_qwen32b_maps_plan_and_spec)",
    "training.per_device_batch_size": "the plan's per_device_batch_size",
    "training.global_batch_size": "the plan's gradient_accumulation_steps",
    "evaluation.test_set": "evaluation.test_set / test_set_uri (tests/operator/test_testset_spec.py)",
}


def _at(values: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        values = values[part]
    return values


def test_every_section_field_is_mapped() -> None:
    from tac2sol.operator.spec import TrainingRunSpec

    fields = {
        f"{section}.{name}"
        for section in ("dataset", "training", "lora", "evaluation")
        for name in TrainingRunSpec.model_fields[section].annotation.model_fields  # type: ignore[union-attr]
    }
    assert fields == set(_SECTION_FIELDS) | set(_NOT_IN_TRAIN_YAML)


@pytest.mark.parametrize("field", sorted(_SECTION_FIELDS))
def test_spec_field_reaches_the_trainer_config(field: str, make_run: MakeRun) -> None:
    value, target = _SECTION_FIELDS[field]
    section, name = field.split(".")
    data = make_run()
    spec_section = parse_training_run(data).spec.model_dump(by_alias=True)[section]
    alias = next(
        a for n, a in ((n, f.alias) for n, f in _section_model(section).model_fields.items()) if n == name
    )
    assert spec_section[alias] != value, f"{field}: pick a value that differs from the default"
    if field == "training.max_steps":
        data["spec"]["training"].pop("epochs")
    data["spec"].setdefault(section, {})[alias] = value
    rr = resolve(parse_training_run(data))
    rendered = to_train_config(rr, make_plan(rr)).model_dump(mode="json")
    assert _at(rendered, target) == value


def _section_model(section: str) -> Any:
    from tac2sol.operator.spec import TrainingRunSpec

    return TrainingRunSpec.model_fields[section].annotation


def _bounds(field: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"default": field.default}
    for meta in field.metadata:
        for key in ("ge", "gt", "le", "lt", "min_length", "max_length", "pattern"):
            if getattr(meta, key, None) is not None:
                out[key] = getattr(meta, key)
    return out


# The same fact in two forms on purpose; both forms come from trainer/hparams.py or are checked here.
_TWO_FORMS = {
    "dataset.path": "a path inside the claim vs the pod's local file",
    "training.max_steps": "unset vs -1 (what transformers takes): hparams.MaxStepsGiven / MaxSteps",
    "lora.target_modules": "[auto] or names vs the resolved names",
}


@pytest.mark.parametrize("field", sorted(set(_SECTION_FIELDS) - set(_TWO_FORMS)))
def test_spec_and_trainer_bounds_agree(field: str) -> None:
    """What the apiserver accepts is what the trainer accepts: one definition (trainer/hparams.py)."""
    section, name = field.split(".")
    target_section, target_name = _SECTION_FIELDS[field][1].split(".")
    spec_field = _section_model(section).model_fields[name]
    trainer_section = TrainConfig.model_fields[target_section].annotation
    trainer_field = trainer_section.model_fields[target_name]  # type: ignore[union-attr]
    assert _bounds(spec_field) == _bounds(trainer_field)


def test_max_steps_forms_accept_the_same_counts() -> None:
    from tac2sol.operator.spec import TrainingSpec
    from tac2sol.trainer.config import TrainingSection

    for steps in (1, 10_000_000):
        assert TrainingSpec(max_steps=steps).max_steps == TrainingSection(max_steps=steps).max_steps
    for bad in (0, 10_000_001):
        with pytest.raises(ValueError):
            TrainingSpec(max_steps=bad)
        with pytest.raises(ValueError):
            TrainingSection(max_steps=bad)
