"""The generated TrainingRun CRD on the real apiserver: it installs, takes the runs in runs/, and
rejects invalid runs by its OpenAPI schema and CEL rules with the field in the message (the
apiserver itself answers: `kubectl apply --dry-run=server`, nothing is stored)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.k8s

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "manifests" / "crds" / "trainingruns.tac2sol.dev.yaml"
EditRun = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]
QWEN = yaml.safe_load((REPO / "runs" / "qwen32b.yaml").read_text())


@pytest.fixture(scope="module")
def crd(control_plane: Any) -> Any:
    control_plane.kubectl("apply", "--server-side", "-f", str(CRD))
    control_plane.kubectl(
        "wait", "--for=condition=Established", "crd/trainingruns.tac2sol.dev", "--timeout=30s"
    )
    return control_plane


def _dry_run(cp: Any, namespace: str, run: dict[str, Any]) -> Any:
    return cp.kubectl(
        "apply",
        "--dry-run=server",
        "--validate=strict",
        "-n",
        namespace,
        "-f",
        "-",
        input=yaml.safe_dump(run),
        check=False,
    )


def test_the_crd_is_established_with_its_printer_columns(crd: Any) -> None:
    obj = crd.get_json("crd", "trainingruns.tac2sol.dev")
    established = {c["type"]: c["status"] for c in obj["status"]["conditions"]}
    assert established["Established"] == "True" and established["NamesAccepted"] == "True"
    columns = [c["name"] for c in obj["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns[:2] == ["Phase", "Model"]


@pytest.mark.parametrize("file", sorted(p.name for p in (REPO / "runs").glob("*.yaml")))
def test_every_run_in_runs_is_accepted(crd: Any, namespace: str, file: str) -> None:
    proc = crd.kubectl(
        "apply",
        "--dry-run=server",
        "--validate=strict",
        "-n",
        namespace,
        "-f",
        str(REPO / "runs" / file),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_a_uri_run_with_credentials_is_accepted(crd: Any, namespace: str, edit_run: EditRun) -> None:
    run = edit_run(
        QWEN, {"spec.dataset": {"uri": "s3://bucket/sets/x.jsonl", "credentialsSecret": "s3-creds"}}
    )
    proc = _dry_run(crd, namespace, run)
    assert proc.returncode == 0, proc.stderr


INVALID = [
    pytest.param(
        {"spec.training.maxSteps": 100},
        "spec.training",
        "give training.epochs or training.maxSteps, not both",
        id="epochs-and-maxsteps",
    ),
    pytest.param(
        {"spec.dataset.uri": "https://example.com/x.jsonl"},
        "spec.dataset",
        "give exactly one of dataset.path or dataset.uri",
        id="path-and-uri",
    ),
    pytest.param(
        {"spec.dataset.path": ..., "spec.dataset.uri": "s3://b/x.jsonl"},
        "spec.dataset.pvc",
        "dataset.pvc needs dataset.path",
        id="pvc-without-path",
    ),
    pytest.param(
        {"spec.dataset.credentialsSecret": "s3-creds"},
        "spec.dataset.credentialsSecret",
        "dataset.credentialsSecret needs dataset.uri",
        id="credentials-without-uri",
    ),
    pytest.param(
        {"spec.strategy": "ddp", "spec.deepspeed": {"stage": 3}},
        "spec.deepspeed.stage",
        "deepspeed.stage needs strategy deepspeed or auto",
        id="ddp-with-zero-stage",
    ),
    pytest.param(
        {"spec.deepspeed": {"stage": 2, "offloadParams": True}},
        "spec.deepspeed.offloadParams",
        "deepspeed.offloadParams needs ZeRO stage 3",
        id="param-offload-on-zero2",
    ),
    pytest.param(
        {"spec.deepspeed": {"stage": 0, "offloadOptimizer": True}},
        "spec.deepspeed.offloadOptimizer",
        "deepspeed.offloadOptimizer needs ZeRO stage 2 or 3",
        id="optimizer-offload-on-zero0",
    ),
    pytest.param(
        {"spec.strategy": "ddp", "spec.launcher": "mpijob"},
        "spec.launcher",
        "launcher mpijob runs DeepSpeed, not ddp",
        id="mpijob-with-ddp",
    ),
    pytest.param(
        {"spec.training.globalBatchSize": 10},
        "spec.training.globalBatchSize",
        "must be a multiple of perDeviceBatchSize x gpusPerNode x nodes",
        id="global-batch-not-multiple",
    ),
    pytest.param(
        {"spec.resources.gpuType": "cpu", "spec.strategy": "deepspeed"},
        "spec.strategy",
        "strategy deepspeed needs GPUs",
        id="deepspeed-on-cpu",
    ),
    pytest.param(
        {"spec.resources.gpusPerNode": 16},
        "spec.resources.gpusPerNode",
        "exceeds what one node of this gpuType holds",
        id="too-many-gpus-per-node",
    ),
    pytest.param(
        {"spec.training.learningRate": 0.5},
        "spec.training.learningRate",
        "should be less than or equal to 0.1",
        id="learning-rate-too-high",
    ),
    pytest.param(
        {"spec.resources.gpuType": "h200"},
        "spec.resources.gpuType",
        "Unsupported value",
        id="unknown-gpu-type",
    ),
    pytest.param(
        {"spec.quantization": "int3"}, "spec.quantization", "Unsupported value", id="bad-quantization"
    ),
    pytest.param({"spec.model": ...}, "spec.model", "Required value", id="no-model"),
    pytest.param({"spec.training.lr": 1e-4}, "spec.training.lr", "unknown field", id="unknown-field"),
    pytest.param(
        {"metadata.name": "x" * 51}, "metadata.name", "must be at most 50 characters", id="long-name"
    ),
    pytest.param(
        {"spec.resources.shmSize": "lots"}, "spec.resources.shmSize", "should match", id="bad-quantity"
    ),
]


@pytest.mark.parametrize(("changes", "field", "message"), INVALID)
def test_invalid_runs_are_rejected_naming_the_field(
    crd: Any, namespace: str, edit_run: EditRun, changes: dict[str, Any], field: str, message: str
) -> None:
    proc = _dry_run(crd, namespace, edit_run(QWEN, changes))
    assert proc.returncode != 0, f"the apiserver accepted {changes}"
    assert field in proc.stderr and message in proc.stderr, proc.stderr
