"""TrainingRun + Plan -> the trainer's ``TrainConfig`` (what the operator's ConfigMap carries).

One mapping used by both the operator (rendered into the ConfigMap) and the local tour
(``tac2sol run``). Rendering is pure: the result depends only on the run, the plan and the
overrides, never on the ``TAC2SOL_*`` environment of the process that renders it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource
from tac2sol.operator.plan import Plan
from tac2sol.operator.resolve import resolve_model, resolved_lora_targets
from tac2sol.operator.spec import TrainingRun
from tac2sol.trainer.config import TrainConfig

DEFAULT_EPOCHS = 3.0


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


def to_train_config(run: TrainingRun, plan: Plan, **overrides: Any) -> TrainConfig:
    """The trainer config for ``run`` as planned. ``overrides`` are merged section-wise, e.g.
    ``output_dir="/output/run"``, ``data={"path": "/data/x.jsonl"}`` (the operator's mount paths).

    A run whose data is a ``dataset.uri`` carries ``data.uri`` and no path: the trainer downloads it
    to ``<output_dir>/data/source/`` (``tac2sol.trainer.fetch``).
    """
    values = train_config_values(run, plan)
    _merge(values, overrides)
    return _Rendered(**values)


def train_config_values(run: TrainingRun, plan: Plan) -> dict[str, Any]:
    """The plain dict behind :func:`to_train_config` (snake_case, JSON types)."""
    s = run.spec
    facts = resolve_model(s.model)
    t = s.training
    targets: list[str] | str = (
        "all-linear" if s.lora.target_modules == ["all-linear"] else resolved_lora_targets(s, facts)
    )
    trust = s.model.trust_remote_code if s.model.trust_remote_code is not None else facts.trust_remote_code
    return {
        "run_name": run.metadata.name,
        "output_dir": str(Path(s.output.path)),
        "quantization": s.quantization,
        "model": {
            "name_or_path": facts.id or s.model.name,
            "revision": s.model.revision,
            "family": facts.family,
            "target_modules": targets,
            "trust_remote_code": trust,
        },
        "data": {
            "path": s.dataset.path,
            "uri": s.dataset.uri,
            "validation_ratio": s.dataset.validation_ratio,
            "split_seed": s.dataset.split_seed,
            "drop_artifact_rows": s.dataset.drop_artifact_rows,
            "on_bad_line": s.dataset.on_bad_line,
            "max_seq_length": t.max_seq_length,
            "max_rows": s.dataset.max_rows,
        },
        "training": {
            "epochs": t.epochs if t.epochs is not None else DEFAULT_EPOCHS,
            "max_steps": t.max_steps if t.max_steps is not None else -1,
            "learning_rate": t.learning_rate,
            "lr_scheduler": t.scheduler,
            "warmup_ratio": t.warmup_ratio,
            "weight_decay": t.weight_decay,
            "max_grad_norm": t.max_grad_norm,
            "per_device_batch_size": plan.per_device_batch_size,
            "gradient_accumulation_steps": plan.gradient_accumulation_steps,
            "gradient_checkpointing": t.gradient_checkpointing,
            "seed": t.seed,
            "logging_steps": t.logging_steps,
            "eval_steps": t.eval_steps,
            "save_steps": t.save_steps,
            "save_total_limit": t.save_total_limit,
        },
        "lora": {"r": s.lora.r, "alpha": s.lora.alpha, "dropout": s.lora.dropout},
        "distributed": {
            "strategy": plan.strategy,
            "zero_stage": plan.zero_stage if plan.strategy == "deepspeed" else None,
            "offload_optimizer": plan.offload_optimizer,
            "offload_params": plan.offload_params,
            "precision": plan.precision,
            "gpu_type": plan.gpu_type,
            "expected_world_size": plan.world_size,
            "per_gpu_memory_bytes": plan.per_gpu_memory_bytes,
            "model_hidden_size": facts.hidden,
        },
        "evaluation": {
            "enabled": s.evaluation.enabled,
            "max_new_tokens": s.evaluation.max_new_tokens,
            "batch_size": s.evaluation.batch_size,
            "max_samples": s.evaluation.max_samples,
            "num_beams": s.evaluation.num_beams,
        },
        "metrics": {"enabled": True, "port": s.metrics_port},
    }


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
