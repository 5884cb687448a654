"""A resolved TrainingRun + its Plan -> the trainer's ``TrainConfig`` (the ConfigMap's train.yaml).

The one mapping, used by both the operator (rendered into the ConfigMap) and the local tour
(``tac2sol run``). Rendering is pure: the result depends only on the run, the plan and the
overrides, never on the ``TAC2SOL_*`` environment of the process that renders it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from tac2sol.operator.plan import Plan
from tac2sol.operator.resolve import ResolvedRun
from tac2sol.operator.spec import TestSetSpec
from tac2sol.trainer.config import EvalSection, LoraSection, TrainConfig
from tac2sol.trainer.hparams import DEFAULT_EPOCHS


class _Rendered(TrainConfig):
    """A TrainConfig built from init values only (no environment, no file)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def to_train_config(rr: ResolvedRun, plan: Plan, **overrides: Any) -> TrainConfig:
    """The trainer config for ``rr`` as planned. ``overrides`` are merged section-wise, e.g.
    ``output_dir="/output/run"``, ``data={"path": "/data/x.jsonl"}`` (the operator's mount paths).

    A run whose data is a ``dataset.uri`` carries ``data.uri`` and no path: the trainer downloads it
    to ``<output_dir>/data/source/`` (``tac2sol.trainer.fetch``).
    """
    values = train_config_values(rr, plan)
    _merge(values, overrides)
    return _Rendered(**values)


def train_config_values(rr: ResolvedRun, plan: Plan) -> dict[str, Any]:
    """The plain dict behind :func:`to_train_config` (snake_case, JSON types).

    Sections shared with the API are copied field by field under the trainer's names; the test
    ``tests/operator/test_spec_trainconfig.py`` checks that no spec field is left behind.
    """
    s = rr.spec
    t = s.training
    targets: list[str] | str = (
        "all-linear" if s.lora.target_modules == ["all-linear"] else list(rr.lora_targets)
    )
    metrics: dict[str, Any] = {"enabled": True, "port": s.metrics_port}
    if rr.gpu.peak_fp16_tflops and plan.precision in ("fp16", "bf16"):
        metrics["gpu_peak_flops"] = rr.gpu.peak_fp16_tflops * 1e12  # enables the MFU estimate
    return {
        "run_name": rr.name,
        "output_dir": str(Path(s.output.path)),
        "quantization": s.quantization,
        "model": {
            "name_or_path": rr.model_id,
            "revision": s.model.revision,
            "gguf_file": s.model.gguf_file,
            "family": rr.facts.family,
            "target_modules": targets,
            "trust_remote_code": rr.trust_remote_code,
        },
        "data": {
            **s.dataset.model_dump(include=_SHARED_DATA),
            "max_seq_length": t.max_seq_length,
        },
        "training": {
            **t.model_dump(include=_SHARED_TRAINING),
            "epochs": t.epochs if t.epochs is not None else DEFAULT_EPOCHS,
            "max_steps": t.max_steps if t.max_steps is not None else -1,
            "lr_scheduler": t.scheduler,
            "per_device_batch_size": plan.per_device_batch_size,
            "gradient_accumulation_steps": plan.gradient_accumulation_steps,
        },
        "lora": s.lora.model_dump(include=set(LoraSection.model_fields)),
        "distributed": {
            "strategy": plan.strategy,
            "zero_stage": plan.zero_stage if plan.strategy == "deepspeed" else None,
            "offload_optimizer": plan.offload_optimizer,
            "offload_params": plan.offload_params,
            "precision": plan.precision,
            "gpu_type": plan.gpu_type,
            "expected_world_size": plan.world_size,
            "per_gpu_memory_bytes": plan.per_gpu_memory_bytes,
            "model_hidden_size": rr.facts.hidden,
        },
        "evaluation": {
            **s.evaluation.model_dump(include=set(EvalSection.model_fields) - _TEST_SET_FIELDS),
            **_test_set(s.evaluation.test_set),
        },
        "metrics": metrics,
    }


# Spec fields copied under the same name (the rest are renamed, planned or API-only above).
_SHARED_DATA = {
    "path",
    "uri",
    "validation_ratio",
    "split_seed",
    "drop_artifact_rows",
    "on_bad_line",
    "max_rows",
}
_SHARED_TRAINING = {
    "learning_rate", "warmup_ratio", "weight_decay", "max_grad_norm", "gradient_checkpointing", "seed",
    "logging_steps", "eval_steps", "save_steps", "save_total_limit", "batching", "fused_cross_entropy",
}  # fmt: skip


_TEST_SET_FIELDS = {"test_set", "test_set_uri"}


def _test_set(ts: TestSetSpec | None) -> dict[str, Any]:
    """evaluation.testSet: a path (inside its claim: the renderer points it at the mount) or a uri."""
    if ts is None:
        return {}
    return {"test_set": ts.path, "test_set_uri": ts.uri}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
