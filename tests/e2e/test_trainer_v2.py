"""Kubeflow Trainer v2 in the test cluster, with hand-written objects (no tac2sol operator): a
TrainJob on a torch ClusterTrainingRuntime becomes a JobSet, the JobSet Jobs, the Jobs pods on
kwok's GPU nodes, and the TrainJob ends Complete, or Failed when a pod fails. Real controllers
(trainer-controller-manager v2.3.0, JobSet, kube-controller-manager's Job controller, the
scheduler) and their admission webhooks; only the containers are simulated (kwok)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.k8s

IMAGE = "tac2sol/never-pulled:test"  # kwok runs no container: never pulled


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for cond in obj.get("status", {}).get("conditions") or []:
        if cond["type"] == kind and cond["status"] == "True":
            return dict(cond)
    return None


def _torch_runtime(name: str) -> dict[str, Any]:
    """A torch runtime as Trainer's own torch-distributed one, with `backoffLimit: 0`: a failed pod
    fails its Job at once (the Job default retries 6 times with back-off)."""
    node_job = {
        "name": "node",
        "template": {
            "metadata": {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}},
            "spec": {
                "backoffLimit": 0,
                "template": {"spec": {"containers": [{"name": "node", "image": IMAGE}]}},
            },
        },
    }
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "ClusterTrainingRuntime",
        "metadata": {"name": name, "labels": {"trainer.kubeflow.org/framework": "torch"}},
        "spec": {
            "mlPolicy": {"numNodes": 1, "torch": {}},
            "template": {"spec": {"replicatedJobs": [node_job]}},
        },
    }


def _trainjob(name: str, runtime: str, pod_annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """2 nodes x 4 nvidia.com/gpu; `pod_annotations` reach the pods through runtimePatches."""
    spec: dict[str, Any] = {
        "runtimeRef": {"name": runtime},
        "trainer": {
            "image": IMAGE,
            "command": ["torchrun", "train.py"],
            "numNodes": 2,
            "resourcesPerNode": {"limits": {"nvidia.com/gpu": "4"}, "requests": {"nvidia.com/gpu": "4"}},
        },
    }
    if pod_annotations:
        pod = {"metadata": {"annotations": pod_annotations}}
        node_job = {"name": "node", "template": {"spec": {"template": pod}}}
        patch = {"template": {"spec": {"replicatedJobs": [node_job]}}}
        spec["runtimePatches"] = [{"manager": "tac2sol.dev/tests", "trainingRuntimeSpec": patch}]
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": name},
        "spec": spec,
    }


@pytest.fixture
def runtime(trainer_v2: Any, namespace: str) -> Iterator[str]:
    """A ClusterTrainingRuntime of this test's own (runtimes are cluster-scoped)."""
    name = f"torch-{namespace}"
    trainer_v2.apply(_torch_runtime(name))
    yield name
    trainer_v2.kubectl("delete", "clustertrainingruntime", name, "--ignore-not-found", check=False)


def test_trainjob_runs_as_jobset_on_fake_gpu_nodes_and_completes(
    trainer_v2: Any, namespace: str, runtime: str, wait: Any
) -> None:
    cp = trainer_v2
    cp.apply(_trainjob("ok", runtime), namespace)
    # The trainer made a JobSet of the same name, owned by the TrainJob.
    wait("JobSet ok", lambda: cp.exists("-n", namespace, "jobset", "ok"), timeout=30)
    jobset = cp.get_json("-n", namespace, "jobset", "ok")
    assert jobset["metadata"]["ownerReferences"][0]["kind"] == "TrainJob"
    node_job = next(r for r in jobset["spec"]["replicatedJobs"] if r["name"] == "node")
    assert node_job["template"]["spec"]["parallelism"] == 2  # numNodes
    done = wait(
        "TrainJob ok to complete",
        lambda: _condition(cp.get_json("-n", namespace, "trainjob", "ok"), "Complete"),
        timeout=90,
    )
    assert done["reason"] == "AllJobsCompleted"
    pods = cp.get_json("-n", namespace, "pods", "-l", "jobset.sigs.k8s.io/jobset-name=ok")["items"]
    assert len(pods) == 2
    for pod in pods:
        assert pod["status"]["phase"] == "Succeeded"
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "Job"  # made by the Job controller
        container = next(c for c in pod["spec"]["containers"] if c["name"] == "node")
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
        assert container["command"] == ["torchrun", "train.py"]
        env = {e["name"]: e.get("value") for e in container.get("env") or []}
        assert env["PET_NNODES"] == "2"  # the torch plugin's torchrun settings
    # Placed by kube-scheduler on the 4-GPU kwok nodes (both may land on one node in turn: kwok ends
    # the first pod before the scheduler places the second when the machine is quiet).
    assert {p["spec"]["nodeName"] for p in pods} <= {"gpu-node-0", "gpu-node-1"}
    assert not _condition(cp.get_json("-n", namespace, "trainjob", "ok"), "Failed")


def test_trainjob_with_a_failing_pod_fails(trainer_v2: Any, namespace: str, runtime: str, wait: Any) -> None:
    cp = trainer_v2
    failing = {"kwok.tac2sol.dev/outcome": "fail", "kwok.tac2sol.dev/run-seconds": "1"}
    cp.apply(_trainjob("bad", runtime, pod_annotations=failing), namespace)
    failed = wait(
        "TrainJob bad to fail",
        lambda: _condition(cp.get_json("-n", namespace, "trainjob", "bad"), "Failed"),
        timeout=90,
    )
    assert failed["reason"] == "FailedJobs"
    assert "job failures" in failed["message"]
    assert not _condition(cp.get_json("-n", namespace, "trainjob", "bad"), "Complete")
    pods = cp.get_json("-n", namespace, "pods", "-l", "jobset.sigs.k8s.io/jobset-name=bad")["items"]
    assert any(p["status"]["phase"] == "Failed" for p in pods)


def test_webhooks_reject_a_trainjob_on_a_missing_runtime(trainer_v2: Any, namespace: str) -> None:
    """Trainer's validating webhook answers (by URL on 127.0.0.1): an unknown runtime is refused
    at admission, and nothing is created."""
    proc = trainer_v2.kubectl(
        "apply", "--server-side", "-n", namespace, "-f", "-",
        input=json.dumps(_trainjob("orphan", "no-such-runtime")), check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "validator.trainjob.trainer.kubeflow.org" in proc.stderr
    assert not trainer_v2.exists("-n", namespace, "trainjob", "orphan")
