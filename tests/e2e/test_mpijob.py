"""The MPIJob path on the real node: runs/tiny-cluster.yaml with ``launcher: mpijob``, applied with
`kubectl apply`; the operator (out of cluster, in the node's network namespace, where the pods'
/metrics are) makes the MPIJob; training-operator v1.9 makes 2 worker pods and a launcher whose
init container is the kubectl-delivery image built here (hack/node/kubectl-delivery.go, passed by
hack/cluster.sh as --mpi-kubectl-delivery-image); the launcher's mpirun starts one rank in each
worker through `kubectl exec` (kubexec.sh) and orted; the ranks rendezvous at worker 0's pod IP.
On CPUs the planner picks DDP over gloo for these ranks (it refuses DeepSpeed without GPUs);
DeepSpeed under mpirun is tests/trainer/test_distributed_ranks.py's zero0 case.

Pod Security: training-operator v1.9 adds the kubectl-delivery init container to the launcher
without a securityContext, so `restricted` rejects the launcher pod whatever the TrainingRun says;
the run's namespace enforces `baseline` (and warns at `restricted`), and a test pins exactly
that: the workers and the launcher's own container pass `restricted`, only that init container fails.

Both ranks serve /metrics on their worker pod's address: a real Prometheus in the node's network
namespace (tests/e2e/conftest.py's `node_prometheus`) discovers both worker pods through
kubernetes_sd_configs as the chart's PodMonitor selects them and scrapes tac2sol_train_steps_total
from each rank.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tac2sol import devtools
from tac2sol.devprometheus import NodePrometheus

pytestmark = [pytest.mark.k8s, pytest.mark.image, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
TAC2SOL = Path(sys.executable).with_name("tac2sol")
NODE = "tac2sol-node"
RUN = "tiny-mpi"
TRAINER_IMAGE = "localhost/tac2sol/trainer:cpu"  # tests/e2e/conftest.py imports it as this
DELIVERY_IMAGE = "localhost/tac2sol/kubectl-delivery:1"  # hack/cluster.sh's KUBECTL_DELIVERY_IMAGE


def _node_exec(*command: str) -> list[str]:
    return ["bash", str(REPO / "hack" / "cluster.sh"), "node-exec", *command]


@pytest.fixture
def mpi_namespace(control_plane: Any, namespace: str) -> str:
    """The run's namespace: Pod Security `baseline` enforced (the launcher's init container needs
    it), `restricted` reported as warnings."""
    control_plane.kubectl(
        "label",
        "namespace",
        namespace,
        "pod-security.kubernetes.io/enforce=baseline",
        "pod-security.kubernetes.io/warn=restricted",
    )
    return namespace


@pytest.fixture
def mpi_operator(control_plane: Any, mpi_namespace: str, tmp_path: Path) -> Iterator[Path]:
    """`tac2sol operator` for the namespace, in the node's network namespace; yields its log."""
    cp = control_plane
    crd = REPO / "manifests" / "crds" / "trainingruns.tac2sol.dev.yaml"
    cp.kubectl("apply", "--server-side", "-f", str(crd))
    cp.kubectl("wait", "--for=condition=Established", "crd/trainingruns.tac2sol.dev", "--timeout=30s")
    log = tmp_path / "operator.log"
    command = _node_exec(str(TAC2SOL), "operator", "--namespace", mpi_namespace, "--metrics-port", "0")
    command += ["--trainer-image", TRAINER_IMAGE, "--progress-interval", "2"]
    with devtools.background(command, {**cp.env, "PYTHONSAFEPATH": "1"}, log):
        yield log


def _tiny_mpi_run() -> dict[str, Any]:
    run = yaml.safe_load((REPO / "runs" / "tiny-cluster.yaml").read_text())
    run["metadata"]["name"] = RUN
    run["spec"]["launcher"] = "mpijob"
    run["spec"]["output"]["path"] = RUN
    run["spec"]["resources"]["cpu"] = "750m"  # 2 workers and the launcher (250m) on the node's 2 CPUs
    return dict(run)


@pytest.mark.timeout(2400)  # the image's build (cached) and import may fall to this test: minutes each
def test_tiny_mpijob_trains_on_the_real_node(
    control_plane: Any,
    mpi_namespace: str,
    trainer_image: str,
    mpi_operator: Path,
    node_prometheus: Callable[..., NodePrometheus],
    wait: Any,
) -> None:
    cp, ns = control_plane, mpi_namespace
    timings: dict[str, float] = {}
    prom = node_prometheus(ns)
    cp.kubectl("-n", ns, "apply", "-f", str(REPO / "runs" / "tiny-cluster" / "data.yaml"))
    done = cp.kubectl(
        "-n", ns, "wait", "--for=condition=Complete", "job/tiny-cluster-data", "--timeout=600s",
        check=False, timeout=620,
    )  # fmt: skip
    assert done.returncode == 0, cp.kubectl("-n", ns, "logs", "job/tiny-cluster-data", check=False).stdout[
        -3000:
    ]

    start = time.monotonic()
    cp.kubectl("-n", ns, "apply", "-f", "-", input=yaml.safe_dump(_tiny_mpi_run()))

    def run() -> dict[str, Any]:
        return dict(cp.get_json("-n", ns, "trainingrun", RUN))

    job_ref = wait("the MPIJob", lambda: (run().get("status") or {}).get("jobRef"), 120)
    assert job_ref["kind"] == "MPIJob", job_ref

    def pods(role: str) -> list[dict[str, Any]]:
        selector = f"training.kubeflow.org/job-name={RUN},training.kubeflow.org/replica-type={role}"
        return list(cp.get_json("-n", ns, "pods", "-l", selector)["items"])

    def launcher_started() -> dict[str, Any] | None:
        got = pods("launcher")
        return got[0] if got and got[0]["status"].get("phase") in ("Running", "Succeeded", "Failed") else None

    launcher = wait("the launcher to start (after kubectl-delivery)", launcher_started, timeout=300)
    timings["launcher_running_s"] = time.monotonic() - start
    (init,) = launcher["spec"]["initContainers"]
    assert init["name"] == "kubectl-delivery" and init["image"] == DELIVERY_IMAGE
    assert launcher["spec"]["nodeName"] == NODE
    workers = pods("worker")
    assert len(workers) == 2 and all(w["spec"]["nodeName"] == NODE for w in workers)
    assert all(w["spec"]["containers"][0]["image"] == trainer_image for w in workers)

    # Both ranks, found by Prometheus as the chart's PodMonitor selects them, each on its worker pod.
    def both_ranks() -> dict[str, tuple[str, float]] | None:
        scraped = prom.train_steps(ns, RUN)
        return scraped if sorted(rank for rank, _ in scraped.values()) == ["0", "1"] else None

    scraped = wait("Prometheus to scrape both ranks", both_ranks, timeout=600, interval=2)
    timings["both_ranks_metrics_s"] = time.monotonic() - start
    assert set(scraped) == {w["metadata"]["name"] for w in workers}, scraped

    def finished() -> dict[str, Any] | None:
        status = run().get("status") or {}
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status = wait("the run to finish", finished, timeout=1200, interval=2)
    timings["apply_to_succeeded_s"] = time.monotonic() - start
    logs = cp.kubectl("-n", ns, "logs", f"{RUN}-launcher", check=False).stdout
    assert status["phase"] == "Succeeded", (
        f"{status}\n{logs[-4000:]}\noperator:\n{mpi_operator.read_text()[-3000:]}"
    )
    job = cp.get_json("-n", ns, "mpijob", RUN)
    assert any(c["type"] == "Succeeded" and c["status"] == "True" for c in job["status"]["conditions"])
    assert status["progress"]["step"] == 40, status["progress"]
    assert "step" in logs and "loss" in logs, logs[-3000:]  # mpirun forwards the ranks' output

    claim = cp.get_json("-n", ns, "pvc", "tiny-cluster-output")
    volume = Path(cp.get_json("pv", claim["spec"]["volumeName"])["spec"]["local"]["path"])
    out = volume / RUN
    assert (out / "adapter" / "adapter_config.json").is_file(), sorted(os.listdir(out))
    assert json.loads((out / "run.json").read_text())
    _pin_pod_security(cp, ns, launcher, workers[0])
    print(f"\ntiny-mpi timings: {json.dumps({k: round(v, 1) for k, v in timings.items()})}")


def _pin_pod_security(cp: Any, ns: str, launcher: dict[str, Any], worker: dict[str, Any]) -> None:
    """Why the namespace is `baseline`: `restricted` refuses the launcher pod that training-operator
    v1.9 made, for its kubectl-delivery init container alone; the workers and the launcher's own
    container pass (server-side dry runs of the pods' own specs, after the run)."""
    cp.kubectl("label", "namespace", ns, "--overwrite", "pod-security.kubernetes.io/enforce=restricted")

    def dry_run(pod: dict[str, Any], name: str, drop_init: bool = False) -> subprocess.CompletedProcess[str]:
        spec = json.loads(json.dumps(pod["spec"]))
        spec.pop("priority", None)  # set by Priority admission: a new pod may not carry it
        if drop_init:
            spec.pop("initContainers")
        copy = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}
        return cp.kubectl(
            "-n", ns, "create", "--dry-run=server", "-f", "-", input=json.dumps(copy), check=False
        )

    refused = dry_run(launcher, "launcher-copy")
    assert refused.returncode != 0 and 'violates PodSecurity "restricted' in refused.stderr, refused.stderr
    assert 'container "kubectl-delivery"' in refused.stderr, refused.stderr
    assert 'container "mpi"' not in refused.stderr, refused.stderr
    for name, pod, drop in (("launcher-without-init", launcher, True), ("worker-copy", worker, False)):
        admitted = dry_run(pod, name, drop)
        assert admitted.returncode == 0, f"{name}: {admitted.stderr}"
