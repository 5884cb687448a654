"""Progress pushed by the trainer, end to end with Trainer v2's TrainJobStatus gate on
(`TAC2SOL_TRAINER_STATUS=1 hack/cluster.sh trainer-up`: the trainer-controller-manager and its
status server in the real node's network namespace).

The status server alone: a TrainJob's pod on kwok gets the server's address and credentials from
Trainer; a POST from the node's network namespace with a token the apiserver issues for that pod
and audience (as the kubelet does for the pod's projected volume) lands in the TrainJob's
status.trainerStatus; a token for another TrainJob is refused; nothing listens on the status port
in the host's network namespace. The one stand-in: kwok runs no container, so curl pushes what the
pod's trainer would.

The whole path, with the CPU trainer image: a TrainingRun with `backend: trainjob` (the tiny model,
one pod on the real node) -> the operator makes the TrainJob on the chart's ClusterTrainingRuntime
-> Trainer v2.3 injects KUBEFLOW_TRAINER_SERVER_URL/_CA_CERT/_TOKEN and the projected token -> the
kubelet runs tac2sol's trainer -> transformers' Kubeflow callback POSTs progress to the status
server (through the Service, CoreDNS and kube-proxy) -> Trainer verifies the token and writes
status.trainerStatus -> the operator shows it in the run's status.progress, `source:
trainerStatus`. The operator runs out of cluster in the host's network namespace, where the pods'
addresses do not exist: it cannot read their /metrics, so all the progress it shows comes from
trainerStatus. Nothing is simulated."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tac2sol import devtools

pytestmark = pytest.mark.k8s

REPO = Path(__file__).resolve().parents[2]
TAC2SOL = Path(sys.executable).with_name("tac2sol")
NODE = "tac2sol-node"
RUN = "tiny-status"
RELEASE = "tac2sol-status"  # its runtime is <release>-torch: cluster-scoped, so unique to this test
STEPS = 30
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


@pytest.fixture
def runtime(trainer_status: Any) -> Iterator[str]:
    """The chart's ClusterTrainingRuntime, rendered by the real helm; the node has the image."""
    cp = trainer_status
    rendered = subprocess.run(
        [str(cp.bin_dir / "helm"), "template", RELEASE, str(REPO / "charts" / "tac2sol"),
         "--show-only", "templates/trainingruntime.yaml",
         "--api-versions", "trainer.kubeflow.org/v1alpha1/ClusterTrainingRuntime",
         "--set", "trainer.image.pullPolicy=Never"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    doc = yaml.safe_load(rendered)
    cp.apply(doc)
    yield doc["metadata"]["name"]
    cp.kubectl("delete", "clustertrainingruntime", doc["metadata"]["name"], "--ignore-not-found", check=False)


@pytest.fixture
def operator_log(
    trainer_status: Any, namespace: str, runtime: str, trainer_image: str, tmp_path: Path
) -> Iterator[Path]:
    """`tac2sol operator --namespace NS`, out of cluster in the host's network namespace."""
    cp, ns = trainer_status, namespace
    crd = REPO / "manifests" / "crds" / "trainingruns.tac2sol.dev.yaml"
    cp.kubectl("apply", "--server-side", "-f", str(crd))
    cp.kubectl("wait", "--for=condition=Established", "crd/trainingruns.tac2sol.dev", "--timeout=30s")
    log_path = tmp_path / "operator.log"
    command = [str(TAC2SOL), "operator", "--namespace", ns, "--metrics-port", "0"]
    command += ["--trainer-image", trainer_image, "--progress-interval", "2"]
    env = {**cp.env, "PYTHONSAFEPATH": "1", "TAC2SOL_TRAINJOB_RUNTIME": runtime}
    with devtools.background(command, env, log_path):
        yield log_path


@pytest.mark.image
@pytest.mark.slow
def test_progress_pushed_by_the_trainer_reaches_the_run_through_trainer_status(
    trainer_status: Any, namespace: str, operator_log: Path, wait: Any
) -> None:
    cp, ns = trainer_status, namespace
    cp.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
    start = time.monotonic()
    cp.kubectl("-n", ns, "apply", "-f", str(REPO / "runs" / "tiny-cluster" / "data.yaml"))
    done = cp.kubectl("-n", ns, "wait", "--for=condition=Complete", "job/tiny-cluster-data",
                      "--timeout=600s", check=False, timeout=620)  # fmt: skip
    data_logs = cp.kubectl("-n", ns, "logs", "job/tiny-cluster-data", check=False).stdout
    assert done.returncode == 0, f"the data Job did not complete: {done.stderr}\n{data_logs[-3000:]}"
    data_s = time.monotonic() - start

    run = yaml.safe_load((REPO / "runs" / "tiny-cluster.yaml").read_text())
    run["metadata"]["name"] = RUN
    spec = run["spec"]
    spec["backend"] = "trainjob"
    spec["resources"]["nodes"] = 1
    spec["training"].update(maxSteps=STEPS, saveSteps=STEPS, loggingSteps=5)
    spec["evaluation"] = {"enabled": False}
    start = time.monotonic()
    cp.apply(run, ns)

    def trainjob() -> dict[str, Any]:
        got = cp.kubectl("-n", ns, "get", "trainjob", RUN, "-o", "json", "--show-managed-fields", check=False)
        return json.loads(got.stdout) if got.returncode == 0 else {}

    def diagnosis() -> str:
        pods = cp.kubectl("-n", ns, "get", "pods", "-o", "wide", check=False).stdout
        logs = cp.kubectl(
            "-n", ns, "logs", "-l", f"jobset.sigs.k8s.io/jobset-name={RUN}", "--tail=40", check=False
        )
        trainer_log = (cp.state_dir / "logs" / "trainer-controller-manager.log").read_text(errors="replace")
        return (
            f"trainjob status: {json.dumps(trainjob().get('status'))[:3000]}\npods:\n{pods}\n"
            f"trainer pod logs:\n{logs.stdout}{logs.stderr}\n"
            f"trainer-controller-manager log:\n{trainer_log[-3000:]}\n"
            f"operator log:\n{operator_log.read_text(errors='replace')[-3000:]}"
        )

    # Trainer's TrainJobStatus plugin put the status server's address and credentials in the pod.
    def trainer_pods() -> list[dict[str, Any]]:
        return list(cp.get_json("-n", ns, "pods", "-l", f"jobset.sigs.k8s.io/jobset-name={RUN}")["items"])

    (pod,) = wait(
        "the trainer pod on a node", lambda: [p for p in trainer_pods() if p["spec"].get("nodeName")]
    )
    assert pod["spec"]["nodeName"] == NODE
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0].get("env") or []}
    assert env.get("KUBEFLOW_TRAINER_SERVER_URL") == _status_url(ns, RUN), env

    seen: list[dict[str, Any]] = []

    def finished() -> dict[str, Any] | None:
        status = cp.get_json("-n", ns, "trainingrun", RUN).get("status") or {}
        if status.get("progress") and status["progress"] not in seen:
            seen.append(status["progress"])
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    try:
        status = wait("the run to finish", finished, timeout=900, interval=1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnosis()}") from None
    took = time.monotonic() - start
    assert status["phase"] == "Succeeded", f"{status}\n{diagnosis()}"

    # The TrainJob's trainerStatus was written by the status server (its field manager), from
    # the trainer's pushes: 100 % at the end of training.
    job = trainjob()
    pushed = job["status"]["trainerStatus"]
    managers = [
        m for m in job["metadata"]["managedFields"] if "f:trainerStatus" in json.dumps(m.get("fieldsV1"))
    ]
    assert "trainer-status" in [m["manager"] for m in managers], managers
    assert pushed["progressPercentage"] == 100 and pushed.get("estimatedRemainingSeconds", 0) == 0, pushed
    metrics = {m["name"]: m["value"] for m in pushed["metrics"]}
    assert float(metrics["train_loss"]) > 0, metrics

    # The run shows it as its progress, saying where it came from; nothing else filled progress.
    assert seen and all(p["source"] == "trainerStatus" for p in seen), seen
    assert status["progress"]["source"] == "trainerStatus", (status["progress"], pushed)
    assert status["progress"]["percent"] == 100, status["progress"]
    assert status["progress"]["updatedAt"] == pushed["lastUpdatedTime"], (status["progress"], pushed)
    losses = [round(float(metrics[k]), 6) for k in ("loss", "train_loss") if k in metrics]
    assert status["progress"]["loss"] in losses, (status["progress"], metrics)
    print(
        f"\ntrainer status: data Job {data_s:.0f} s, apply -> Succeeded {took:.0f} s, "
        f"progress seen: {[p.get('percent') for p in seen]}"
    )
