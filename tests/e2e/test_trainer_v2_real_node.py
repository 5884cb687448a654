"""A TrainJob that runs for real on the real node: Kubeflow Trainer v2 makes the JobSet, JobSet its
headless Service and Job, the kubelet runs the 2 pods from the CPU trainer image in a namespace
enforcing Pod Security `restricted`, and torchrun, configured only by the PET_* variables Trainer's
torch plugin sets, rendezvouses through the master's JobSet DNS name (CoreDNS) and all-reduces
over gloo. Nothing is simulated."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = [pytest.mark.k8s, pytest.mark.image, pytest.mark.slow]

NODE = "tac2sol-node"
# One rank per pod; rank r contributes r + 1, so both print the sum 3.
ALL_REDUCE = (
    "import torch, torch.distributed as dist; "
    "dist.init_process_group('gloo'); "
    "t = torch.tensor([dist.get_rank() + 1.0]); dist.all_reduce(t); "
    "print('rank', dist.get_rank(), 'of', dist.get_world_size(), 'sum', t.item(), flush=True)"
)


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for cond in obj.get("status", {}).get("conditions") or []:
        if cond["type"] == kind and cond["status"] == "True":
            return dict(cond)
    return None


def _real_node_runtime(name: str, image: str) -> dict[str, Any]:
    """A torch runtime whose pods go to the real node and pass `restricted`."""
    pod_spec = {
        "nodeSelector": {"tac2sol.dev/node": "real"},
        "tolerations": [{"key": "tac2sol.dev/real-node", "operator": "Exists", "effect": "NoSchedule"}],
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "node",
                "image": image,
                "imagePullPolicy": "Never",
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            }
        ],
    }
    node_job = {
        "name": "node",
        "template": {
            "metadata": {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}},
            "spec": {"backoffLimit": 0, "template": {"spec": pod_spec}},
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


@pytest.fixture
def real_node_runtime(trainer_v2: Any, namespace: str, trainer_image: str) -> Iterator[str]:
    name = f"torch-real-{namespace}"
    trainer_v2.apply(_real_node_runtime(name, trainer_image))
    yield name
    trainer_v2.kubectl("delete", "clustertrainingruntime", name, "--ignore-not-found", check=False)


def test_trainjob_all_reduces_over_jobset_dns_on_the_real_node(
    trainer_v2: Any, namespace: str, real_node_runtime: str, wait: Any
) -> None:
    cp = trainer_v2
    cp.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    trainjob = {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": "ddp"},
        "spec": {
            "runtimeRef": {"name": real_node_runtime},
            "trainer": {
                "command": ["torchrun", "--no-python", "python3", "-c", ALL_REDUCE],
                "numNodes": 2,
                "numProcPerNode": 1,
                "resourcesPerNode": {"requests": {"cpu": "100m", "memory": "512Mi"}},
            },
        },
    }
    cp.apply(trainjob, namespace)

    def finished() -> dict[str, Any] | None:
        got = cp.get_json("-n", namespace, "trainjob", "ddp")
        return got if _condition(got, "Complete") or _condition(got, "Failed") else None

    done = wait("TrainJob ddp to finish", finished, timeout=300, interval=1)
    pods = cp.get_json("-n", namespace, "pods", "-l", "jobset.sigs.k8s.io/jobset-name=ddp")["items"]
    names = [p["metadata"]["name"] for p in pods]
    logs = {name: cp.kubectl("-n", namespace, "logs", name).stdout for name in names}
    assert _condition(done, "Complete"), (done["status"], logs)
    assert len(pods) == 2
    assert {p["spec"]["nodeName"] for p in pods} == {NODE}
    env = {e["name"]: e.get("value") for e in pods[0]["spec"]["containers"][0]["env"]}
    assert env["PET_MASTER_ADDR"] == "ddp-node-0-0.ddp"  # the JobSet's headless Service, via CoreDNS
    lines = sorted(line for text in logs.values() for line in text.splitlines() if line.startswith("rank "))
    assert lines == ["rank 0 of 2 sum 3.0", "rank 1 of 2 sum 3.0"], logs
