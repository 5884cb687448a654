"""Trainer's status server in the test cluster, with Trainer v2's TrainJobStatus gate on
(`TAC2SOL_TRAINER_STATUS=1 hack/cluster.sh trainer-up`: the trainer-controller-manager and its
status server in the real node's network namespace): a TrainJob's pod on kwok gets the server's
address and credentials from Trainer; a POST from the node's network namespace with a token the
apiserver issues for that pod and audience (as the kubelet does for the pod's projected volume)
lands in the TrainJob's status.trainerStatus; a token for another TrainJob is refused; nothing
listens on the status port in the host's network namespace. The one stand-in: kwok runs no
container, so curl pushes what the pod's trainer would."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tac2sol import devtools

pytestmark = pytest.mark.k8s

STATUS_SERVICE = "kubeflow-trainer-controller-manager.kubeflow-system.svc"
STATUS_PORT = 10443


@pytest.fixture(scope="module")
def trainer_status(trainer_v2: Any) -> Iterator[Any]:
    """The session's Trainer v2 with the TrainJobStatus gate on for this module; off again after
    (only the trainer-controller-manager restarts, each way)."""
    try:
        devtools.start_trainer_v2(trainer_v2.dev, status=True)
    except devtools.DevToolsError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield trainer_v2
    devtools.start_trainer_v2(trainer_v2.dev)


def _kwok_runtime(name: str) -> dict[str, Any]:
    """A torch runtime whose pods kwok keeps running (no image is ever pulled)."""
    pod = {
        "metadata": {"annotations": {"kwok.tac2sol.dev/outcome": "run-forever"}},
        "spec": {"containers": [{"name": "node", "image": "tac2sol/never-pulled:test"}]},
    }
    node_job = {
        "name": "node",
        "template": {
            "metadata": {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}},
            "spec": {"template": pod},
        },
    }
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "ClusterTrainingRuntime",
        "metadata": {"name": name},
        "spec": {
            "mlPolicy": {"numNodes": 1, "torch": {}},
            "template": {"spec": {"replicatedJobs": [node_job]}},
        },
    }


def _status_url(ns: str, name: str) -> str:
    """Where Trainer tells the pods of TrainJob `name` to push (Service, port and path)."""
    path = f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{ns}/trainjobs/{name}/status"
    return f"https://{STATUS_SERVICE}:{STATUS_PORT}{path}"


def _push(cp: Any, url: str, ca: Path, token: str, percent: int) -> str:
    """POST a trainerStatus as the pod would, from the node's network namespace, to the Service's
    ClusterIP (kube-proxy sends it to the status server; curl is told the name, as CoreDNS would);
    returns the HTTP status code."""
    service = cp.get_json("-n", "kubeflow-system", "service", STATUS_SERVICE.split(".")[0])
    body = {"trainerStatus": {"progressPercentage": percent, "lastUpdatedTime": "2026-01-02T03:04:05Z"}}
    out = cp.dev.node_exec(
        "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(ca),
        "--resolve", f"{STATUS_SERVICE}:{STATUS_PORT}:{service['spec']['clusterIP']}",
        "-H", f"Authorization: Bearer {token}", "-H", "Content-Type: application/json",
        "-d", json.dumps(body), url,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return str(out.stdout)


def test_the_status_server_takes_a_pods_push_into_the_trainjob(
    trainer_status: Any, namespace: str, wait: Any
) -> None:
    cp, ns, name = trainer_status, namespace, "pushed"
    runtime = f"kwok-{ns}"
    cp.apply(_kwok_runtime(runtime))
    try:
        trainjob = {
            "apiVersion": "trainer.kubeflow.org/v1alpha1",
            "kind": "TrainJob",
            "metadata": {"name": name},
        }
        cp.apply({**trainjob, "spec": {"runtimeRef": {"name": runtime}}}, ns)
        selector = f"jobset.sigs.k8s.io/jobset-name={name}"
        (pod,) = wait("the TrainJob's pod", lambda: cp.get_json("-n", ns, "pods", "-l", selector)["items"])
        # What Trainer's TrainJobStatus plugin gave the trainer container and its projected volume.
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0].get("env") or []}
        assert env["KUBEFLOW_TRAINER_SERVER_URL"] == _status_url(ns, name)
        (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "kubeflow-trainer-token"]
        token_source, ca_source = volume["projected"]["sources"]
        audience = token_source["serviceAccountToken"]["audience"]
        ca = cp.state_dir / f"{ns}-status-ca.crt"
        config_map = ca_source["configMap"]["name"]
        ca.write_text(
            wait("the CA", lambda: cp.get_json("-n", ns, "configmap", config_map)["data"]["ca.crt"])
        )

        def token(audience: str) -> str:  # as the kubelet asks for the projected volume's
            bound = ["--bound-object-kind=Pod", f"--bound-object-name={pod['metadata']['name']}"]
            got = cp.kubectl("-n", ns, "create", "token", "default", f"--audience={audience}", *bound)
            return str(got.stdout.strip())

        assert _push(cp, env["KUBEFLOW_TRAINER_SERVER_URL"], ca, token(audience), 42) == "200"
        pushed = cp.get_json("-n", ns, "trainjob", name)["status"]["trainerStatus"]
        assert pushed == {"progressPercentage": 42, "lastUpdatedTime": "2026-01-02T03:04:05Z"}
        # A token for another TrainJob's status is refused; the status stays.
        other = token(audience.replace(f"/trainjobs/{name}/", "/trainjobs/another/"))
        assert _push(cp, env["KUBEFLOW_TRAINER_SERVER_URL"], ca, other, 99) == "403"
        assert cp.get_json("-n", ns, "trainjob", name)["status"]["trainerStatus"] == pushed
    finally:
        cp.kubectl("delete", "clustertrainingruntime", runtime, "--ignore-not-found", check=False)
    # The status server binds ":10443", all interfaces, but only in the node's network namespace.
    host = subprocess.run(
        ["ss", "-Hltn", f"sport = :{STATUS_PORT}"], capture_output=True, text=True, check=True
    )
    assert host.stdout.strip() == "", host.stdout
    node = cp.dev.node_exec("ss", "-Hltn", f"sport = :{STATUS_PORT}")
    assert f":{STATUS_PORT}" in node.stdout, node
