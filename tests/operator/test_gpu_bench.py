"""bench/gpu/planner_sweep.py on CPU: the grid, the planner's estimates, the report, the dry run.

The CUDA part (loading the model the trainer's way, two steps, torch's peak) runs only on a GPU
machine; everything it prints is built by the functions tested here.
"""

from __future__ import annotations

import importlib.util
import itertools
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tac2sol.operator.planner import make_plan
from tac2sol.operator.resolve import resolve
from tac2sol.operator.specfile import parse_training_run

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu" / "planner_sweep.py"
GiB = 1024**3


@pytest.fixture(scope="module")
def sweep() -> ModuleType:
    spec = importlib.util.spec_from_file_location("planner_sweep", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["planner_sweep"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_cpu_side_imports_no_torch() -> None:
    code = (
        f"import importlib.util, sys; s = importlib.util.spec_from_file_location('m', {str(SCRIPT)!r}); "
        "m = importlib.util.module_from_spec(s); sys.modules['m'] = m; s.loader.exec_module(m); "
        "m.dry_run(m.grid(), m.planner_gpu('h100-80')); assert 'torch' not in sys.modules, 'torch imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_default_grid_covers_the_issue_and_groups_loads(sweep: ModuleType) -> None:
    points = sweep.grid()
    assert len(points) == 3 * 2 * 2 * 3 * 2 == len(set(points))
    assert {p.seq for p in points} == {512, 2048, 8192} and {p.batch for p in points} == {1, 4}
    assert {p.quantization for p in points} == {"nf4", "none"} and {p.checkpointing for p in points} == {
        True,
        False,
    }
    loads = [(p.model, p.quantization, p.checkpointing) for p in points]
    changes = sum(a != b for a, b in itertools.pairwise(loads))
    assert changes + 1 == len(set(loads))  # one model load per (model, quantization, checkpointing)


def test_estimate_is_the_planners_own_run(sweep: ModuleType, make_run: Any) -> None:
    # The same run as a TrainingRun on one RTX 8000: the planner's plan and the sweep's estimate agree.
    point = sweep.Point("qwen2.5-coder-7b", "nf4", True, 1, 8192)
    est = sweep.plan_point(point, sweep.planner_gpu("rtx8000"))
    run = make_run(
        **{
            "spec.model": {"name": "qwen2.5-coder-7b"},
            "spec.lora": {"r": 16, "alpha": 32, "dropout": 0.1, "targetModules": ["auto"]},
            "spec.training": {"maxSeqLength": 8192, "perDeviceBatchSize": 1},
            "spec.resources": {"gpuType": "rtx8000", "gpusPerNode": 1},
            "spec.strategy": "ddp",
        }
    )
    plan = make_plan(resolve(parse_training_run(run)))
    assert (est.peak_allocated, est.per_gpu) == (plan.peak_allocated_bytes, plan.per_gpu_memory_bytes)
    assert est.attention_kernel == "math"


def test_device_memory_decides_what_is_run(sweep: ModuleType) -> None:
    point = sweep.Point("qwen2.5-coder-7b", "nf4", True, 4, 8192)
    small, h200 = sweep.planner_gpu("h100-80"), sweep.planner_gpu("h100-80", 139 * GiB, "NVIDIA H200")
    est = sweep.plan_point(point, h200)
    assert est.per_gpu > 0.9 * 80 * GiB  # refused on 80 GiB, run on an H200's 139 GiB
    assert not sweep.planner_accepts(est, small) and sweep.planner_accepts(est, h200)
    assert h200.name == "NVIDIA H200" and h200.flash_attention2


@pytest.mark.parametrize(
    ("name", "major", "minor", "memory_gib", "key"),
    [
        ("NVIDIA H200", 9, 0, 141, "h100-80"),
        ("Quadro RTX 8000", 7, 5, 48, "rtx8000"),
        ("NVIDIA A100-SXM4-40GB", 8, 0, 40, "a100-40"),
        ("NVIDIA A100-SXM4-80GB", 8, 0, 80, "a100-80"),
        ("Some Future GPU", 10, 0, 200, "h100-80"),
        ("Tesla T4", 7, 5, 16, "t4"),
    ],
)
def test_catalog_key_of_a_device(
    sweep: ModuleType, name: str, major: int, minor: int, memory_gib: int, key: str
) -> None:
    assert sweep.catalog_key(name, major, minor, memory_gib * GiB) == key


def test_report_errors_and_unmeasured_points(sweep: ModuleType) -> None:
    gpu = sweep.planner_gpu("rtx8000")
    ok, oom, skipped = (sweep.Point("qwen2.5-coder-7b", "nf4", True, b, 8192) for b in (1, 2, 4))
    est_ok = sweep.plan_point(ok, gpu)
    measured = round(est_ok.peak_allocated / 1.10)  # the estimate is 10 % over
    rows = [
        (ok, est_ok, sweep.Measurement("ok", measured, measured + GiB)),
        (oom, sweep.plan_point(oom, gpu), sweep.Measurement("oom")),
        (skipped, sweep.plan_point(skipped, gpu), sweep.Measurement("skipped", note="planner refuses")),
    ]
    text = sweep.report(rows, gpu)
    lines = {line.split("  ")[0].strip(): line for line in text.splitlines()}
    assert "+10.0%" in lines[ok.label()] and f"{measured / GiB:.2f}" in lines[ok.label()]
    for p in (oom, skipped):
        assert lines[p.label()].count("not measured") == 3 and " 0.00 " not in lines[p.label()]
    assert "1 points measured: median error +10.0%, worst +10.0%, 1 within +-15%" in text
    assert "contradicted" not in text  # b2 at 8192 is refused on 48 GB, and it went out of memory
    wrong = sweep.report([(ok, est_ok, sweep.Measurement("oom"))], gpu)
    assert f"contradicted by the GPU: {ok.label()}" in wrong


def test_dry_run_prints_every_point(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--models", "qwen2.5-coder-1.5b", "--seqs", "512", "8192"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("qwen2.5-coder-1.5b ")]
    assert len(rows) == 2 * 2 * 2 * 2 and all("skipped (dry run)" in r for r in rows)
    assert "dry run: 16 points" in done.stdout and "NVIDIA H100" in done.stdout


def test_unknown_model_is_refused_by_name() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--models", "gpt-9"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "--models: 'gpt-9'" in done.stderr


@pytest.mark.parametrize("model", ["tiny", "qwen2.5-coder-1.5b", "qwen2.5-coder-7b"])
def test_random_model_has_the_catalog_shape(sweep: ModuleType, model: str) -> None:
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    facts = sweep.facts_for(model)
    with torch.device("meta"):
        net = AutoModelForCausalLM.from_config(sweep.hf_config(facts, 8192))
    count = sum(p.numel() for p in net.parameters())
    norms = (
        2 * facts.layers + 1
    ) * facts.hidden  # RMSNorm weights: in the hub's count, not in the computed one
    assert count == facts.total_params or (facts.params is None and count == facts.total_params + norms)
