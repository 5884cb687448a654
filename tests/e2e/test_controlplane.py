"""The test control plane is a real one: apiserver, RBAC, controllers, scheduler, training-operator
and kwok's fake GPU nodes each do their part (nothing here is mocked)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tac2sol import devtools

pytestmark = pytest.mark.k8s

REPO = Path(__file__).resolve().parents[2]


def _pinned_kubernetes_version() -> str:
    text = (REPO / "hack" / "k8s" / "go.mod").read_text()
    match = re.search(r"^(?:require)?\s*k8s\.io/kubernetes (v\S+)", text, re.M)
    assert match, "hack/k8s/go.mod does not require k8s.io/kubernetes"
    return match.group(1)


def _pod(name: str, gpus: int = 0, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    resources = {"limits": {"nvidia.com/gpu": str(gpus)}} if gpus else {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "tac2sol/never-pulled:test", "resources": resources}],
        },
    }


def _pytorchjob(name: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    def replica() -> dict[str, Any]:
        return {
            "replicas": 1,
            "restartPolicy": "Never",
            "template": {
                "metadata": {"annotations": annotations or {}},
                "spec": {
                    "containers": [
                        {
                            "name": "pytorch",
                            "image": "tac2sol/never-pulled:test",
                            "resources": {"limits": {"nvidia.com/gpu": "4"}},
                        }
                    ]
                },
            },
        }

    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name},
        "spec": {
            "runPolicy": {"backoffLimit": 0, "cleanPodPolicy": "None"},
            "pytorchReplicaSpecs": {"Master": replica(), "Worker": replica()},
        },
    }


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for cond in obj.get("status", {}).get("conditions") or []:
        if cond["type"] == kind and cond["status"] == "True":
            return dict(cond)
    return None


def test_server_is_the_pinned_release_with_two_fake_gpu_nodes(control_plane: Any) -> None:
    info = control_plane.kubectl("version", "-o", "json").stdout
    assert f'"gitVersion": "{_pinned_kubernetes_version()}"' in info
    assert control_plane.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    nodes = control_plane.get_json("nodes", "-l", "type=kwok")["items"]
    assert sorted(n["metadata"]["name"] for n in nodes) == ["gpu-node-0", "gpu-node-1"]
    for node in nodes:
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == "4"
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "Quadro-RTX-8000"
        assert _condition(node, "Ready"), f"{node['metadata']['name']} is not Ready"


def _of_cluster(pid: str, state: str) -> bool:
    """Whether process `pid` names the cluster's state dir in its command line or environment."""
    try:
        return any(
            state in Path(f"/proc/{pid}/{f}").read_bytes().decode(errors="replace")
            for f in ("cmdline", "environ")
        )
    except OSError:
        return False


def test_nothing_listens_beyond_loopback_in_the_host_namespace(control_plane: Any) -> None:
    """The network rule: every TCP/UDP listener of the cluster's processes (or on its ports) in the
    host's network namespace is on 127.0.0.1, with or without the real node. training-operator
    v1.9's webhook server binds ":PORT" (no host flag): it runs in a network namespace of its own,
    where that port listens instead."""
    state = str(control_plane.state_dir)
    ports = {control_plane.env[name] for name in devtools.CLUSTER_PORTS}
    out = subprocess.run(["ss", "-Hlntup"], capture_output=True, text=True, check=True).stdout
    ours: list[tuple[str, str]] = []
    for line in out.splitlines():
        fields = line.split()
        local, procs = fields[4], " ".join(fields[6:])
        host, port = local.rsplit(":", 1)
        pids = re.findall(r"pid=(\d+)", procs)
        if port in ports or any(_of_cluster(pid, state) for pid in pids):
            ours.append((host.split("%")[0], line))
    assert any(
        host == "127.0.0.1" and f":{control_plane.env['TAC2SOL_APISERVER_PORT']} " in line
        for host, line in ours
    )
    beyond = [line for host, line in ours if host != "127.0.0.1"]
    assert not beyond, f"listening beyond 127.0.0.1 in the host's network namespace: {beyond}"
    webhook = control_plane.env["TAC2SOL_TRAINING_OPERATOR_WEBHOOK_PORT"]
    assert not [line for _, line in ours if f":{webhook} " in line]
    pid = (control_plane.state_dir / "pids" / "training-operator.pid").read_text().strip()
    # Unprivileged, its namespaces belong to a user namespace of its own (hack/cluster.sh to_exec).
    userns = [] if os.geteuid() == 0 else ["--user", "--preserve-credentials"]
    inside = subprocess.run(
        ["nsenter", "--target", pid, *userns, "--net", "--", "ss", "-Hltnp"], capture_output=True, text=True
    )
    assert re.search(rf"\*:{webhook} .*training-operat", inside.stdout), inside.stdout + inside.stderr


def test_rbac_denies_an_unprivileged_service_account(control_plane: Any, namespace: str) -> None:
    control_plane.kubectl("-n", namespace, "create", "serviceaccount", "nobody")
    token = control_plane.kubectl("-n", namespace, "create", "token", "nobody").stdout.strip()
    # A kubeconfig-free kubectl: only the token authenticates (no admin client certificate).
    as_nobody = [
        "--kubeconfig=/dev/null",
        f"--server={control_plane.server}",
        f"--certificate-authority={control_plane.ca_cert}",
        f"--token={token}",
    ]
    whoami = control_plane.kubectl(*as_nobody, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
    assert whoami.stdout == f"system:serviceaccount:{namespace}:nobody"
    denied = control_plane.kubectl(*as_nobody, "-n", "kube-system", "get", "secrets", check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr
    assert f"system:serviceaccount:{namespace}:nobody" in denied.stderr
    # The admin, by contrast, may.
    control_plane.kubectl("-n", "kube-system", "get", "secrets")


def test_namespace_deletion_removes_its_content(control_plane: Any, wait: Any) -> None:
    ns = "doomed-namespace"
    control_plane.kubectl("create", "namespace", ns)
    control_plane.kubectl("-n", ns, "create", "configmap", "content", "--from-literal=k=v")
    control_plane.kubectl("delete", "namespace", ns, "--wait=false")
    # Only the namespace controller (kube-controller-manager) empties it and removes its finalizer.
    wait(
        f"namespace {ns} to be gone",
        lambda: not control_plane.exists("namespace", ns),
    )


def test_garbage_collector_deletes_an_owned_configmap(control_plane: Any, namespace: str, wait: Any) -> None:
    control_plane.kubectl("-n", namespace, "create", "configmap", "owner")
    uid = control_plane.get_json("-n", namespace, "configmap", "owner")["metadata"]["uid"]
    owned = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "owned",
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}],
        },
        "data": {"k": "v"},
    }
    control_plane.apply(owned, namespace)
    control_plane.kubectl("-n", namespace, "delete", "configmap", "owner")
    wait(
        "the garbage collector to delete configmap owned",
        lambda: not control_plane.exists("-n", namespace, "configmap", "owned"),
    )


def test_kwok_annotations_steer_pod_outcomes(control_plane: Any, namespace: str, wait: Any) -> None:
    control_plane.apply(_pod("quick", annotations={"kwok.tac2sol.dev/run-seconds": "1"}), namespace)
    control_plane.apply(_pod("forever", annotations={"kwok.tac2sol.dev/outcome": "run-forever"}), namespace)
    control_plane.apply(
        _pod("oom", annotations={"kwok.tac2sol.dev/outcome": "fail", "kwok.tac2sol.dev/exit-code": "137"}),
        namespace,
    )

    def phase(name: str) -> str:
        return str(control_plane.get_json("-n", namespace, "pod", name).get("status", {}).get("phase"))

    wait("pod quick to succeed", lambda: phase("quick") == "Succeeded", timeout=30)
    wait("pod oom to fail", lambda: phase("oom") == "Failed", timeout=30)
    terminated = control_plane.get_json("-n", namespace, "pod", "oom")["status"]["containerStatuses"][0]
    assert terminated["state"]["terminated"]["exitCode"] == 137
    assert terminated["state"]["terminated"]["reason"] == "Error"
    # Well past the default run time (3 s) it still runs.
    time.sleep(4)
    assert phase("forever") == "Running"


def test_pytorchjob_runs_on_fake_gpu_nodes_and_succeeds(
    control_plane: Any, namespace: str, wait: Any
) -> None:
    control_plane.apply(_pytorchjob("ok"), namespace)
    job = wait(
        "PyTorchJob ok to succeed",
        lambda: _condition(control_plane.get_json("-n", namespace, "pytorchjob", "ok"), "Succeeded"),
    )
    assert job["reason"] == "PyTorchJobSucceeded"
    selector = "training.kubeflow.org/job-name=ok"

    def pods_done() -> list[dict[str, Any]] | None:
        # The job succeeds with its Master; the Worker, started after its init container, may
        # finish a moment later.
        pods: list[dict[str, Any]] = control_plane.get_json("-n", namespace, "pods", "-l", selector)["items"]
        return pods if all(p["status"].get("phase") == "Succeeded" for p in pods) else None

    pods = wait("both pods of PyTorchJob ok to succeed", pods_done, timeout=30)
    assert sorted(p["metadata"]["labels"]["training.kubeflow.org/replica-type"] for p in pods) == [
        "master",
        "worker",
    ]
    for pod in pods:
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "PyTorchJob"  # made by training-operator
        assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"
    # Placed by kube-scheduler: 4 GPUs each on 4-GPU nodes means one pod per node.
    assert sorted(p["spec"]["nodeName"] for p in pods) == ["gpu-node-0", "gpu-node-1"]


def test_pytorchjob_with_a_failing_pod_fails(control_plane: Any, namespace: str, wait: Any) -> None:
    # backoffLimit 0 and restartPolicy Never: the first failed pod fails the job.
    control_plane.apply(_pytorchjob("bad", annotations={"kwok.tac2sol.dev/outcome": "fail"}), namespace)
    job = wait(
        "PyTorchJob bad to fail",
        lambda: _condition(control_plane.get_json("-n", namespace, "pytorchjob", "bad"), "Failed"),
    )
    assert job["reason"] == "PyTorchJobFailed"
    assert "bad has failed because it has reached the specified backoff limit" in job["message"]
    assert not _condition(control_plane.get_json("-n", namespace, "pytorchjob", "bad"), "Succeeded")


def test_pod_asking_for_five_gpus_stays_pending(control_plane: Any, namespace: str, wait: Any) -> None:
    control_plane.apply(_pod("greedy", gpus=5), namespace)

    def unschedulable() -> dict[str, Any] | None:
        pod = control_plane.get_json("-n", namespace, "pod", "greedy")
        for cond in pod.get("status", {}).get("conditions") or []:
            if cond["type"] == "PodScheduled" and cond.get("reason") == "Unschedulable":
                return dict(cond)
        return None

    cond = wait("the scheduler to mark pod greedy Unschedulable", unschedulable, timeout=30)
    assert "Insufficient nvidia.com/gpu" in cond["message"]
    pod = control_plane.get_json("-n", namespace, "pod", "greedy")
    assert pod["status"]["phase"] == "Pending"
    assert not pod["spec"].get("nodeName")
