"""DeepSpeed configuration generated from the plan (``TrainConfig.distributed``), never hand-kept.

The planner decides stage, offload and precision; this module turns those decisions into the
``ds_config.json`` that the Hugging Face integration reads. Values the integration fills from
``TrainingArguments`` are left as ``"auto"`` (batch sizes, accumulation, clipping, optimizer
parameters) so the plan and the Trainer can never disagree.

Precision: fp16 with dynamic loss scaling on Turing (no bf16 there), bf16 on sm_80+, fp32 on CPU.

Bucket sizes scale with the model's hidden size ``h`` (the rule the transformers integration uses
for its ``"auto"`` values, written out so the file is complete before the model is loaded):
``reduce_bucket_size = allgather_bucket_size = h²``, ``stage3_prefetch_bucket_size = 0.9·h²``,
``stage3_param_persistence_threshold = 10·h``. When ``h`` is unknown they stay ``"auto"`` and
the integration fills them from ``model.config.hidden_size``.

No torch import here: the operator renders the same file into the run's ConfigMap.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tac2sol.trainer.config import DistributedSection, TrainConfig

DS_CONFIG_FILENAME = "ds_config.json"

# fp16 dynamic loss scaling (loss_scale 0 = dynamic): start at 2**16, halve after `hysteresis`
# consecutive overflows, double after `loss_scale_window` clean steps, never below 1.
FP16_LOSS_SCALING: dict[str, Any] = {
    "loss_scale": 0,
    "initial_scale_power": 16,
    "loss_scale_window": 1000,
    "hysteresis": 2,
    "min_loss_scale": 1,
}

# Quiet: DeepSpeed prints its own step log every `steps_per_print` steps; the Trainer logs already.
_STEPS_PER_PRINT = 1_000_000


def bucket_sizes(hidden_size: int | None, stage: int) -> dict[str, Any]:
    """ZeRO bucket sizes for a model with this hidden size (see the module docstring)."""
    if stage == 0:
        return {}
    h = hidden_size
    sizes: dict[str, Any] = {"reduce_bucket_size": h * h if h else "auto"}
    if stage in (1, 2):
        # Not an HF "auto" key: fall back to DeepSpeed's own default when h is unknown.
        sizes["allgather_bucket_size"] = h * h if h else int(5e8)
    if stage == 3:
        sizes["stage3_prefetch_bucket_size"] = int(0.9 * h * h) if h else "auto"
        sizes["stage3_param_persistence_threshold"] = 10 * h if h else "auto"
    return sizes


def build_deepspeed_config(
    dist: DistributedSection, *, hidden_size: int | None = None, on_gpu: bool = True
) -> dict[str, Any] | None:
    """The DeepSpeed config for this plan, or None when the plan does not use DeepSpeed.

    ``on_gpu`` False (a CPU run) turns off pinned memory for offload.
    """
    from tac2sol.errors import InvalidInput

    if dist.strategy != "deepspeed":
        return None
    stage = dist.zero_stage
    assert stage is not None  # guaranteed by DistributedSection's validator
    if dist.offload_params and stage != 3:
        raise InvalidInput(
            f"distributed.offload_params needs distributed.zero_stage 3 (got {stage}); "
            "turn parameter offload off or use stage 3"
        )
    if dist.offload_optimizer and stage == 0:
        raise InvalidInput(
            "distributed.offload_optimizer needs distributed.zero_stage 1, 2 or 3 (got 0); "
            "turn optimizer offload off or raise the stage"
        )

    zero: dict[str, Any] = {"stage": stage}
    if stage >= 1:
        zero.update(
            {
                "overlap_comm": True,
                "contiguous_gradients": True,
                "reduce_scatter": True,
                **bucket_sizes(hidden_size, stage),
            }
        )
    if stage == 3:
        # Save whole 16-bit weights from rank 0, so the LoRA adapter is saved unpartitioned.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if dist.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    if dist.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}

    fp16 = dist.precision == "fp16"
    config: dict[str, Any] = {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "fp16": {"enabled": fp16, **(FP16_LOSS_SCALING if fp16 else {})},
        "bf16": {"enabled": dist.precision == "bf16"},
        "zero_optimization": zero,
        # The Trainer's torch AdamW is not on DeepSpeed's tested list; it is fine for LoRA.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": _STEPS_PER_PRINT,
        "wall_clock_breakdown": False,
    }
    if dist.offload_optimizer:
        # An offloaded optimizer steps on the CPU: let DeepSpeed build its CPU Adam, with the
        # Trainer's hyper-parameters filled in by the integration.
        config["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
        }
    return config


def write_deepspeed_config(cfg: TrainConfig, run_dir: Path, *, on_gpu: bool) -> Path | None:
    """Write ``ds_config.json`` into ``run_dir`` and return its path; None without DeepSpeed.

    The file named by ``distributed.deepspeed_config`` (the operator's rendering) is copied as it
    is; without one, the config is generated here. ``on_gpu`` False turns off pinned memory.
    Record the returned path in ``run.json``.
    """
    given = cfg.distributed.deepspeed_config
    if cfg.distributed.strategy != "deepspeed":
        return None
    config: dict[str, Any] | None
    if given is not None:
        config = _read_config(given)
    else:
        config = build_deepspeed_config(
            cfg.distributed, hidden_size=cfg.distributed.model_hidden_size, on_gpu=on_gpu
        )
    assert config is not None  # a DeepSpeed plan always has one
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / DS_CONFIG_FILENAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def _read_config(path: Path) -> dict[str, Any]:
    from tac2sol.errors import InvalidInput

    try:
        config = json.loads(path.read_text())
    except OSError as exc:
        raise InvalidInput(
            f"distributed.deepspeed_config: cannot read {path} ({exc.strerror}); check the path"
        ) from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"distributed.deepspeed_config: {path} is not JSON ({exc.msg}, line {exc.lineno})"
        ) from None
    if not isinstance(config, dict) or "zero_optimization" not in config:
        raise InvalidInput(f"distributed.deepspeed_config: {path} has no zero_optimization section")
    return config
