"""runs/tiny-cluster.yaml end to end on the real node: `kubectl apply` of the data claims and Job
(runs/tiny-cluster/data.yaml) and of the TrainingRun, in a namespace enforcing Pod Security
`restricted`; the operator (out of cluster, in the node's network namespace so that it reads the
pods' /metrics as it would in a pod) makes the PyTorchJob; the training-operator makes 2 pods that
the kubelet runs from the CPU trainer image; torchrun starts one rank each, DDP over gloo, the
master found through CoreDNS; progress comes from the pods' real /metrics; the job and the run
succeed; the adapter, run.json and the evaluation report are on the output claim's local volume.
A real Prometheus (tests/e2e/conftest.py's `node_prometheus`) discovers both trainer pods through
kubernetes_sd_configs as the chart's PodMonitor selects them and scrapes
tac2sol_train_steps_total from both ranks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tac2sol.devprometheus import NodePrometheus

pytestmark = [pytest.mark.k8s, pytest.mark.image, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
TAC2SOL = Path(sys.executable).with_name("tac2sol")
NODE = "tac2sol-node"
RUN = "tiny-cluster"
TRAINER_IMAGE = "localhost/tac2sol/trainer:cpu"  # tests/e2e/conftest.py imports it as this


def _condition(obj: dict[str, Any], kind: str) -> bool:
    return any(
        c["type"] == kind and c["status"] == "True" for c in obj.get("status", {}).get("conditions") or []
    )


@dataclass
class NodeOperator:
    """`tac2sol operator --namespace NS` run in the real node's network namespace, where the pods'
    /metrics are (as the operator's pod would be); its output goes to a log file."""

    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def node_operator(control_plane: Any, namespace: str, tmp_path: Path) -> Iterator[NodeOperator]:
    cp, ns = control_plane, namespace
    cp.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
    crd = REPO / "manifests" / "crds" / "trainingruns.tac2sol.dev.yaml"
    cp.kubectl("apply", "--server-side", "-f", str(crd))
    cp.kubectl("wait", "--for=condition=Established", "crd/trainingruns.tac2sol.dev", "--timeout=30s")
    log_path = tmp_path / "operator.log"
    command = ["bash", str(REPO / "hack" / "cluster.sh"), "node-exec", str(TAC2SOL), "operator"]
    command += ["--namespace", ns, "--metrics-port", "0", "--trainer-image", TRAINER_IMAGE]
    command += ["--progress-interval", "2"]
    env = {**cp.env, "PYTHONSAFEPATH": "1"}
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield NodeOperator(proc, log_path)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_tiny_cluster_trains_on_the_real_node(
    control_plane: Any,
    namespace: str,
    trainer_image: str,
    node_operator: NodeOperator,
    node_prometheus: Callable[..., NodePrometheus],
    wait: Any,
) -> None:
    cp, ns = control_plane, namespace
    prom = node_prometheus(ns)
    timings: dict[str, float] = {}
    start = time.monotonic()
    cp.kubectl("-n", ns, "apply", "-f", str(REPO / "runs" / "tiny-cluster" / "data.yaml"))
    done = cp.kubectl(
        "-n",
        ns,
        "wait",
        "--for=condition=Complete",
        "job/tiny-cluster-data",
        "--timeout=600s",
        check=False,
        timeout=620,
    )
    data_logs = cp.kubectl("-n", ns, "logs", "job/tiny-cluster-data", check=False)
    assert done.returncode == 0, f"the data Job did not complete: {done.stderr}\n{data_logs.stdout[-3000:]}"
    timings["data_job_s"] = time.monotonic() - start

    start = time.monotonic()
    cp.kubectl("-n", ns, "apply", "-f", str(REPO / "runs" / "tiny-cluster.yaml"))

    def run() -> dict[str, Any]:
        return dict(cp.get_json("-n", ns, "trainingrun", RUN))

    job_name = wait("the PyTorchJob", lambda: (run().get("status") or {}).get("jobRef", {}).get("name"), 120)
    job = cp.get_json("-n", ns, "pytorchjob", job_name)
    assert job["metadata"]["ownerReferences"][0]["name"] == RUN

    def pods() -> list[dict[str, Any]]:
        selector = f"training.kubeflow.org/job-name={job_name}"
        return list(cp.get_json("-n", ns, "pods", "-l", selector)["items"])

    def two_running() -> list[dict[str, Any]] | None:
        got = pods()
        running = [p for p in got if p["status"].get("phase") in ("Running", "Succeeded")]
        return got if len(got) == 2 and len(running) == 2 else None

    placed = wait("2 trainer pods running", two_running, timeout=300)
    for pod in placed:
        assert pod["spec"]["nodeName"] == NODE
        (container,) = pod["spec"]["containers"]
        assert container["image"] == trainer_image
        assert pod["status"]["containerStatuses"][0]["imageID"], pod["status"]

    def progressed() -> dict[str, Any] | None:
        progress = (run().get("status") or {}).get("progress") or {}
        return progress if progress.get("step", 0) > 0 else None

    progress = wait("status.progress from the pods' /metrics", progressed, timeout=600)
    timings["first_progress_s"] = time.monotonic() - start

    def finished() -> dict[str, Any] | None:
        status = run().get("status") or {}
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status = wait("the run to finish", finished, timeout=1200, interval=2)
    timings["apply_to_succeeded_s"] = time.monotonic() - start
    master = next(p["metadata"]["name"] for p in pods() if "master" in p["metadata"]["name"])
    logs = cp.kubectl("-n", ns, "logs", master, check=False).stdout
    assert status["phase"] == "Succeeded", (
        f"{status}\n{logs[-4000:]}\noperator:\n{node_operator.log()[-3000:]}"
    )
    assert _condition(cp.get_json("-n", ns, "pytorchjob", job_name), "Succeeded")
    assert progress["step"] <= status["progress"]["step"] == 40, status["progress"]
    # Prometheus found both trainer pods as the chart's PodMonitor selects them and scraped each rank.
    scraped = prom.train_steps(ns, RUN)
    assert set(scraped) == {p["metadata"]["name"] for p in placed}, scraped
    assert sorted(scraped.values()) == [("0", 40.0), ("1", 40.0)], scraped
    assert "step" in logs and "loss" in logs, logs[-3000:]

    claim = cp.get_json("-n", ns, "pvc", "tiny-cluster-output")
    volume = Path(cp.get_json("pv", claim["spec"]["volumeName"])["spec"]["local"]["path"])
    out = volume / yaml.safe_load((REPO / "runs" / f"{RUN}.yaml").read_text())["spec"]["output"]["path"]
    assert (out / "adapter" / "adapter_config.json").is_file(), sorted(os.listdir(out))
    manifest = json.loads((out / "run.json").read_text())
    assert manifest, "run.json is empty"
    assert (out / "eval" / "eval.md").is_file(), sorted(os.listdir(out))
    print(f"\ntiny-cluster timings: {json.dumps({k: round(v, 1) for k, v in timings.items()})}")


def test_missing_image_is_named_in_pods_ready(
    control_plane: Any, namespace: str, node_operator: NodeOperator, wait: Any
) -> None:
    """An image the node does not have (and may not pull): the kubelet says ErrImageNeverPull, the
    run's PodsReady condition names it and the pod, and the operator keeps running."""
    cp, ns = control_plane, namespace
    claims = [d for d in yaml.safe_load_all((REPO / "runs" / "tiny-cluster" / "data.yaml").read_text())]
    for claim in (d for d in claims if d["kind"] == "PersistentVolumeClaim"):
        cp.apply(claim, ns)
    run = yaml.safe_load((REPO / "runs" / f"{RUN}.yaml").read_text())
    run["metadata"]["name"] = "absent-image"
    run["spec"]["image"] = "localhost/tac2sol/absent:none"
    run["spec"]["imagePullPolicy"] = "Never"
    cp.apply(run, ns)

    def pods_ready() -> dict[str, Any] | None:
        status = cp.get_json("-n", ns, "trainingrun", "absent-image").get("status") or {}
        cond = next((c for c in status.get("conditions") or [] if c["type"] == "PodsReady"), None)
        return cond if cond and "ErrImageNeverPull" in cond.get("message", "") else None

    cond = wait("PodsReady to name ErrImageNeverPull", pods_ready, timeout=180)
    assert cond["status"] == "False"
    assert "absent-image-master-0" in cond["message"] or "absent-image-worker-0" in cond["message"], cond
    pods = cp.get_json("-n", ns, "pods", "-l", "training.kubeflow.org/job-name=absent-image")["items"]
    assert pods and all(p["spec"]["nodeName"] == NODE for p in pods)
    assert node_operator.proc.poll() is None, node_operator.log()[-3000:]
