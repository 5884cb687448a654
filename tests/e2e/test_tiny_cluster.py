"""runs/tiny-cluster.yaml end to end on the real node, with the operator as a pod: `helm install` of
charts/tac2sol (tests/e2e/conftest.py's `chart_release`: the operator pod on the real node, in a
namespace enforcing Pod Security `restricted`); `kubectl apply` of the data claims and Job
(runs/tiny-cluster/data.yaml) and of the TrainingRun; the operator makes the PyTorchJob; the
training-operator makes 2 pods that the kubelet runs from the CPU trainer image; `tac2sol torchrun`
starts one rank each, DDP over gloo, the master found through CoreDNS; progress comes from the
pods' real /metrics; the job and the run succeed; the adapter, run.json and the evaluation report
are on the output claim's local volume. A real Prometheus (tests/e2e/conftest.py's
`node_prometheus`) discovers both trainer pods through kubernetes_sd_configs as the chart's
PodMonitor selects them and scrapes tac2sol_train_steps_total from both ranks.

Then the faults, on the same release, data and node, one run at a time (the node has 2 CPUs):
- a worker pod and then the operator pod deleted mid-run (one run: the training-operator re-creates
  the trainer pods, which resume from the last checkpoint; the Deployment re-creates the operator,
  which adopts the run: one job, exactly the planned steps, one adapter);
- a memory limit too small: OOMKilled, which pod, the limit and what to change, in the run's
  status, and it stays while the training-operator re-creates the pod.
The missing-image fault is tests/e2e/test_helm_operator.py's (it needs no trainer image).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tac2sol.devprometheus import NodePrometheus

# The first test waits for both images (a cold trainer build is ~20 min) and each run takes minutes.
pytestmark = [pytest.mark.k8s, pytest.mark.image, pytest.mark.slow, pytest.mark.timeout(3600)]

REPO = Path(__file__).resolve().parents[2]
NODE = "tac2sol-node"  # hack/cluster.sh's NODE_NAME
RUN = "tiny-cluster"

# The fault runs: shorter than tiny-cluster (minutes each on 2 busy cores), a checkpoint every 4 steps.
FAULT_STEPS = 24
FAULT_RUN = {
    "spec.training.maxSteps": FAULT_STEPS,
    "spec.training.saveSteps": 4,
    "spec.evaluation.maxSamples": 2,
    "spec.evaluation.maxNewTokens": 16,
}
OOM_LIMIT = "300Mi"  # below what one rank needs to import torch and load the model


@pytest.fixture(scope="module")
def release(chart_release: Any, trainer_image: str) -> Iterator[Any]:
    """The chart's release with the CPU trainer image on the node and the tiny-cluster data on its
    claim (the data Job done); the timings are printed at the end of the module."""
    chart_release.make_data()
    yield chart_release


def _adapters(out: Path) -> list[Path]:
    """The adapters a run wrote, checkpoints left out."""
    found = out.rglob("adapter_config.json")
    return [p for p in found if not any(s.startswith("checkpoint-") for s in p.relative_to(out).parts)]


def test_tiny_cluster_trains_with_the_operator_pod(
    release: Any, trainer_image: str, node_prometheus: Callable[..., NodePrometheus]
) -> None:
    cp, ns = release.cp, release.ns
    prom = node_prometheus(ns, "e2e", release.values)  # conftest's chart_release is release "e2e"
    start = time.monotonic()
    cp.kubectl("-n", ns, "apply", "-f", str(REPO / "runs" / f"{RUN}.yaml"))
    job_name = release.job_of(RUN)
    job = cp.get_json("-n", ns, "pytorchjob", job_name)
    assert job["metadata"]["ownerReferences"][0]["name"] == RUN

    def two_running() -> list[dict[str, Any]] | None:
        got = release.pods(job_name)
        running = [p for p in got if p["status"].get("phase") in ("Running", "Succeeded")]
        return got if len(got) == 2 and len(running) == 2 else None

    placed = release.wait("2 trainer pods running", two_running, timeout=300)
    for pod in placed:
        assert pod["spec"]["nodeName"] == NODE
        (container,) = pod["spec"]["containers"]
        assert container["image"] == trainer_image
        assert container["command"][:2] == ["tac2sol", "torchrun"], container["command"]
        assert pod["status"]["containerStatuses"][0]["imageID"], pod["status"]

    def progressed() -> dict[str, Any] | None:
        progress = release.status(RUN).get("progress") or {}
        return progress if progress.get("step", 0) > 0 else None

    progress = release.wait("status.progress from the pods' /metrics", progressed, timeout=600)
    release.timings["first_progress_s"] = time.monotonic() - start
    status = release.finished(RUN)
    release.timings["apply_to_succeeded_s"] = time.monotonic() - start
    logs = release.logs(f"{job_name}-master-0")
    assert status["phase"] == "Succeeded", release.diagnose(RUN)
    job = cp.get_json("-n", ns, "pytorchjob", job_name)
    assert any(c["type"] == "Succeeded" and c["status"] == "True" for c in job["status"]["conditions"])
    planned = yaml.safe_load((REPO / "runs" / f"{RUN}.yaml").read_text())["spec"]["training"]["maxSteps"]
    assert progress["step"] <= status["progress"]["step"] == planned, status["progress"]
    # Prometheus found both trainer pods as the chart's PodMonitor selects them and scraped each rank.
    scraped = prom.train_steps(ns, RUN)
    assert set(scraped) == {p["metadata"]["name"] for p in placed}, scraped
    assert sorted(scraped.values()) == [("0", float(planned)), ("1", float(planned))], scraped
    assert "step" in logs and "loss" in logs, logs[-3000:]

    out = release.output_dir(RUN)
    assert (out / "adapter" / "adapter_config.json").is_file(), sorted(os.listdir(out))
    assert json.loads((out / "run.json").read_text()), "run.json is empty"
    assert (out / "eval" / "eval.md").is_file(), sorted(os.listdir(out))
    assert release.operator_restarts() == 0, release.operator_log()
    release.delete_run(RUN)


# --- faults ---------------------------------------------------------------------------------------


def test_worker_and_operator_pods_deleted_mid_run(
    release: Any, tiny_run: Callable[..., dict[str, Any]]
) -> None:
    """Mid-run, `kubectl delete pod` of the trainer's worker after a checkpoint, then of the operator.

    The deleted worker's ranks and the master's (told by the all-reduce) checkpoint on SIGTERM and
    exit 143; `tac2sol torchrun` exits 143 (torchrun said 1, which the ExitCode policy treats as
    permanent); the training-operator re-creates the pods and training resumes from the volume's
    last checkpoint. While the new pods start, the Deployment replaces the deleted operator pod,
    and the new operator adopts the run (no second job) and follows it to the end. The run finishes
    once: exactly the planned steps, one job, one adapter. (The worker goes first: on an idle
    machine, ~1.3 s a step, the run would end while the operator pod is being replaced.)"""
    cp, ns, name = release.cp, release.ns, "tiny-pods-deleted"
    release.apply(tiny_run(name, FAULT_RUN))
    job = release.job_of(name)
    (job_uid,) = (j["metadata"]["uid"] for j in release.jobs_of(name))
    out = release.output_dir(name)

    release.wait(
        "a checkpoint on the volume, and 2 steps past it",
        lambda: release.step(name) >= 6 and list(out.glob("checkpoint-*")),
        timeout=900,
        interval=1,
    )
    worker = f"{job}-worker-0"
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in release.pods(job)}
    cp.kubectl("-n", ns, "delete", "pod", worker, "--wait=false")

    def replaced() -> bool:
        now = {p["metadata"]["name"]: p["metadata"]["uid"] for p in release.pods(job)}
        return now.get(worker, before[worker]) != before[worker]

    release.wait("the worker pod re-created", replaced, timeout=300)

    (old,) = release.operator_pods()
    cp.kubectl("-n", ns, "delete", "pod", old["metadata"]["name"], "--wait=false")

    def new_operator() -> bool:
        got = [p for p in release.operator_pods() if p["metadata"]["uid"] != old["metadata"]["uid"]]
        statuses = got[0]["status"].get("containerStatuses") or [] if len(got) == 1 else []
        return bool(statuses) and all(c["ready"] for c in statuses)

    release.wait("a new operator pod, ready", new_operator, timeout=180)
    status = release.finished(name)
    assert status["phase"] == "Succeeded", release.diagnose(name)
    assert status["progress"]["step"] == FAULT_STEPS, status["progress"]
    assert [j["metadata"]["uid"] for j in release.jobs_of(name)] == [job_uid]
    assert len(_adapters(out)) == 1, sorted(map(str, out.rglob("*")))
    (master,) = release.pods(job, "master")
    assert master["metadata"]["uid"] != before[f"{job}-master-0"], "the master pod was not re-created"
    logs = "".join(release.logs(p["metadata"]["name"]) for p in release.pods(job))
    assert "resume: from" in logs, logs[-4000:]
    assert len(release.operator_pods()) == 1
    release.delete_run(name)


def test_memory_limit_too_small_says_oomkilled(release: Any, tiny_run: Callable[..., dict[str, Any]]) -> None:
    """spec.resources.memory too small: the kernel kills the trainer at its limit; the run's
    PodsReady condition and message say OOMKilled, which pod, the limit and what to change, and
    keep saying it while the training-operator re-creates the pod (exit 137)."""
    name = "tiny-oom"
    release.apply(tiny_run(name, {"spec.resources.memory": OOM_LIMIT}))
    job = release.job_of(name)

    def oom() -> dict[str, Any] | None:
        cond = release.condition(name, "PodsReady")
        return cond if cond and cond.get("reason") == "OOMKilled" else None

    cond = release.wait("PodsReady to say OOMKilled", oom, timeout=600, interval=0.5)
    message = cond["message"]
    assert cond["status"] == "False", cond
    assert f"pod {job}-" in message and "OOMKilled" in message, message
    assert f"memory limit of {OOM_LIMIT}" in message and "spec.resources.memory" in message, message
    assert release.status(name).get("message") == message

    # The killed pod comes back (a new uid) and runs: the condition stays.
    killed = {p["metadata"]["name"]: p["metadata"]["uid"] for p in release.pods(job)}

    def recreated() -> list[dict[str, Any]] | None:
        got = release.pods(job)
        return got if any(killed.get(p["metadata"]["name"]) != p["metadata"]["uid"] for p in got) else None

    release.wait("the OOMKilled pod re-created", recreated, timeout=300)
    for _ in range(5):
        time.sleep(2)  # the operator looks every 2 s (progressIntervalSeconds)
        assert (release.condition(name, "PodsReady") or {}).get("reason") == "OOMKilled", release.status(name)
    assert release.operator_restarts() == 0, release.operator_log()
    release.delete_run(name)
