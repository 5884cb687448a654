"""The DeepSpeed config generated from the plan: precision per GPU, stages, buckets, offload.

The catalog cases go through the real planner (``tac2sol.operator.planner.make_plan``) and the
real bridge (``tac2sol.operator.trainconfig.to_train_config``), as the operator does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tac2sol.errors import InvalidInput
from tac2sol.trainer.config import DistributedSection, TrainConfig
from tac2sol.trainer.deepspeed_config import (
    FP16_LOSS_SCALING,
    bucket_sizes,
    build_deepspeed_config,
    write_deepspeed_config,
)

REPO = Path(__file__).resolve().parents[2]
# The GPU runs of runs/ (the tiny CPU runs, tiny-local and tiny-cluster, plan no GPU).
CATALOG_RUNS = sorted(
    p
    for p in (REPO / "runs").glob("*.yaml")
    if yaml.safe_load(p.read_text())["spec"].get("resources", {}).get("gpuType", "rtx8000") != "cpu"
)


def _plan_config(run_yaml: Path, **spec_changes: Any) -> tuple[Any, TrainConfig | None]:
    from tac2sol.operator.planner import make_plan
    from tac2sol.operator.resolve import resolve
    from tac2sol.operator.specfile import load_training_run
    from tac2sol.operator.trainconfig import to_train_config

    run = load_training_run(run_yaml)
    if spec_changes:
        run = run.model_copy(update={"spec": run.spec.model_copy(update=spec_changes)})
    plan = make_plan(resolve(run))
    if not plan.fits:
        return plan, None
    return plan, to_train_config(resolve(run), plan, data={"path": "/data/rows.jsonl"})


def _check_matches_plan(plan: Any, cfg: TrainConfig, tmp_path: Path) -> dict[str, Any]:
    path = write_deepspeed_config(cfg, tmp_path, on_gpu=True)
    assert path == tmp_path / "ds_config.json"
    ds = json.loads(path.read_text())
    assert ds["fp16"] == {"enabled": True, **FP16_LOSS_SCALING}, "Turing: fp16 + dynamic loss scaling"
    assert ds["bf16"] == {"enabled": False}
    assert ds["zero_optimization"]["stage"] == plan.zero_stage
    assert ("offload_optimizer" in ds["zero_optimization"]) == plan.offload_optimizer
    assert ("offload_param" in ds["zero_optimization"]) == plan.offload_params
    return ds


def test_catalog_runs_are_there() -> None:
    assert len(CATALOG_RUNS) >= 10, CATALOG_RUNS


@pytest.mark.parametrize("run_yaml", CATALOG_RUNS, ids=lambda p: p.stem)
def test_catalog_run_on_rtx8000_as_planned(run_yaml: Path, tmp_path: Path) -> None:
    plan, cfg = _plan_config(run_yaml)
    assert (plan.gpu_type, plan.world_size) == ("rtx8000", 4)
    assert plan.precision == "fp16"
    if cfg is None:  # DeepSeek-V3: the planner refuses it; there is nothing to configure
        assert not plan.fits
        return
    if plan.strategy == "deepspeed":
        _check_matches_plan(plan, cfg, tmp_path)
    else:
        assert write_deepspeed_config(cfg, tmp_path, on_gpu=True) is None
        assert not (tmp_path / "ds_config.json").exists()


@pytest.mark.parametrize("stage", ["auto", 2, 3])
@pytest.mark.parametrize("run_yaml", CATALOG_RUNS, ids=lambda p: p.stem)
def test_catalog_run_on_rtx8000_under_deepspeed(run_yaml: Path, stage: str | int, tmp_path: Path) -> None:
    """The same models with ``strategy: deepspeed`` (stage picked by the planner, or asked for):
    the file has the plan's stage and fp16."""
    from tac2sol.operator.specfile import load_training_run

    spec = load_training_run(run_yaml).spec
    plan, cfg = _plan_config(
        run_yaml, strategy="deepspeed", deepspeed=spec.deepspeed.model_copy(update={"stage": stage})
    )
    if cfg is None:
        assert not plan.fits
        return
    assert plan.strategy == "deepspeed"
    if stage != "auto":
        assert plan.zero_stage == stage
    ds = _check_matches_plan(plan, cfg, tmp_path)
    hidden = cfg.distributed.model_hidden_size
    assert hidden is not None
    if plan.zero_stage:
        assert ds["zero_optimization"]["reduce_bucket_size"] == hidden * hidden
    if plan.zero_stage == 3:
        assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
        assert ds["zero_optimization"]["stage3_param_persistence_threshold"] == 10 * hidden


def _dist(**kw: Any) -> DistributedSection:
    return DistributedSection(strategy="deepspeed", **kw)


@pytest.mark.parametrize(
    ("precision", "fp16", "bf16"),
    [("fp16", True, False), ("bf16", False, True), ("fp32", False, False)],
    ids=["turing-fp16", "ampere-bf16", "cpu-fp32"],
)
def test_precision(precision: str, fp16: bool, bf16: bool) -> None:
    ds = build_deepspeed_config(_dist(zero_stage=2, precision=precision))
    assert ds is not None
    assert ds["fp16"]["enabled"] is fp16
    assert ds["bf16"]["enabled"] is bf16
    assert ("loss_scale" in ds["fp16"]) is fp16  # dynamic loss scaling only where fp16 is on


def test_hf_fills_what_the_trainer_knows() -> None:
    ds = build_deepspeed_config(_dist(zero_stage=3))
    assert ds is not None
    for key in (
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "gradient_clipping",
    ):
        assert ds[key] == "auto", key
    assert ds["zero_allow_untested_optimizer"] is True
    assert "optimizer" not in ds and "scheduler" not in ds  # the Trainer's AdamW and schedule


@pytest.mark.parametrize(
    ("hidden", "stage", "expected"),
    [
        (5120, 2, {"reduce_bucket_size": 26_214_400, "allgather_bucket_size": 26_214_400}),
        (
            8192,
            3,
            {
                "reduce_bucket_size": 67_108_864,
                "stage3_prefetch_bucket_size": 60_397_977,
                "stage3_param_persistence_threshold": 81_920,
            },
        ),
        (
            None,
            3,
            {
                "reduce_bucket_size": "auto",
                "stage3_prefetch_bucket_size": "auto",
                "stage3_param_persistence_threshold": "auto",
            },
        ),
        (4096, 0, {}),
    ],
    ids=["qwen32b-zero2", "llama70b-zero3", "unknown-hidden", "zero0-no-buckets"],
)
def test_bucket_sizes_scale_with_hidden_size(
    hidden: int | None, stage: int, expected: dict[str, Any]
) -> None:
    assert bucket_sizes(hidden, stage) == expected


def test_zero0_has_no_zero_tuning() -> None:
    ds = build_deepspeed_config(_dist(zero_stage=0))
    assert ds is not None
    assert ds["zero_optimization"] == {"stage": 0}


def test_offload() -> None:
    ds = build_deepspeed_config(_dist(zero_stage=3, offload_optimizer=True, offload_params=True))
    assert ds is not None
    z = ds["zero_optimization"]
    assert z["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert z["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert ds["optimizer"]["type"] == "AdamW"  # DeepSpeed's CPU Adam steps the offloaded state
    assert set(ds["optimizer"]["params"].values()) == {"auto"}


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ({"zero_stage": 2, "offload_params": True}, "offload_params needs distributed.zero_stage 3"),
        ({"zero_stage": 0, "offload_optimizer": True}, "offload_optimizer needs distributed.zero_stage 1"),
    ],
    ids=["param-offload-below-3", "optimizer-offload-at-0"],
)
def test_refuses_offload_the_stage_cannot_do(plan: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        build_deepspeed_config(_dist(**plan))


def test_no_deepspeed_no_file(tmp_path: Path) -> None:
    cfg = TrainConfig(model={"name_or_path": "m"}, data={"path": "d.jsonl"}, distributed={"strategy": "ddp"})
    assert build_deepspeed_config(cfg.distributed) is None
    assert write_deepspeed_config(cfg, tmp_path, on_gpu=True) is None
    assert list(tmp_path.iterdir()) == []


def test_deepspeed_accepts_the_generated_config() -> None:
    """DeepSpeed's own parser reads every stage's file (with the "auto" values filled in)."""
    from deepspeed.runtime.config import DeepSpeedConfig

    for stage in (0, 2, 3):
        ds = build_deepspeed_config(_dist(zero_stage=stage, precision="fp16"), hidden_size=1024)
        assert ds is not None
        filled = {k: v for k, v in ds.items() if v != "auto"}
        filled.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=4, gradient_clipping=1.0)
        parsed = DeepSpeedConfig(filled)  # no process group here: DeepSpeed assumes world size 1
        assert parsed.zero_optimization_stage == stage
        assert parsed.float16_config.enabled and parsed.float16_config.loss_scale == 0
