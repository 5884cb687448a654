"""charts/tac2sol installed with `helm install` onto the test cluster runs the operator as a pod on
the real node: the operator image (tac2sol/devimage.py, imported, never pulled), the chart's
ServiceAccount and RBAC, a namespace enforcing Pod Security `restricted`, in-cluster config (the
`kubernetes` Service through kube-proxy). The operator watches that namespace only; a run whose
image the node does not have is named in PodsReady and the operator pod keeps running. A real
Prometheus finds the operator pod through the chart's ServiceMonitor (kubernetes_sd_configs).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tac2sol import devprometheus

# The first test waits for the operator image (another session may hold the build lock for minutes).
pytestmark = [pytest.mark.k8s, pytest.mark.image, pytest.mark.slow, pytest.mark.timeout(3600)]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "tac2sol"
NODE = "tac2sol-node"
RUN = "tiny-cluster"
RELEASE = "e2e"
TRAINER_IMAGE = "localhost/tac2sol/trainer:cpu"  # tac2sol/devimage.py imports it as this
JOB_LABEL = "training.kubeflow.org/job-name"
REAL_NODE = {
    "nodeSelector": {"tac2sol.dev/node": "real"},
    "tolerations": [{"key": "tac2sol.dev/real-node", "operator": "Exists", "effect": "NoSchedule"}],
}


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == kind), None)


def _tiny_run(name: str, **spec: Any) -> dict[str, Any]:
    """runs/tiny-cluster.yaml as `name`, writing to an output path of its own, `spec` merged in."""
    run = yaml.safe_load((REPO / "runs" / f"{RUN}.yaml").read_text())
    run["metadata"]["name"] = name
    run["spec"]["output"]["path"] = name
    for key, value in spec.items():
        run["spec"][key] = {**run["spec"][key], **value} if isinstance(value, dict) else value
    return dict(run)


@dataclass
class Cluster:
    """The test namespace with the chart installed in it (the operator watching only it), and the
    tiny-cluster data on its claims."""

    cp: Any
    ns: str
    wait: Callable[..., Any]
    timings: dict[str, float]
    values: Path  # the values file of the release

    def run(self, name: str) -> dict[str, Any]:
        return dict(self.cp.get_json("-n", self.ns, "trainingrun", name))

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.run(name).get("status") or {})

    def pods(self, job: str) -> list[dict[str, Any]]:
        return list(self.cp.get_json("-n", self.ns, "pods", "-l", f"{JOB_LABEL}={job}")["items"])

    def operator_pods(self) -> list[dict[str, Any]]:
        selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/name=tac2sol"
        return list(self.cp.get_json("-n", self.ns, "pods", "-l", selector)["items"])

    def operator_log(self) -> str:
        proc = self.cp.kubectl("-n", self.ns, "logs", f"deploy/{RELEASE}-tac2sol", "--tail=200", check=False)
        return str(proc.stdout + proc.stderr)

    def output_dir(self, name: str) -> Path:
        claim = self.cp.get_json("-n", self.ns, "pvc", "tiny-cluster-output")
        volume = Path(self.cp.get_json("pv", claim["spec"]["volumeName"])["spec"]["local"]["path"])
        return volume / name

    def job_of(self, name: str, timeout: float = 120) -> str:
        ref = self.wait(
            f"the job of {name}", lambda: (self.status(name).get("jobRef") or {}).get("name"), timeout
        )
        return str(ref)

    def step(self, name: str) -> int:
        return int((self.status(name).get("progress") or {}).get("step", 0))

    def finished(self, name: str, timeout: float = 1200) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            status = self.status(name)
            return status if status.get("phase") in ("Succeeded", "Failed") else None

        return dict(self.wait(f"{name} to finish", done, timeout=timeout, interval=2))

    def delete_run(self, name: str) -> None:
        """Delete the run and wait until its pods are gone (the next run needs the node's CPUs)."""
        self.cp.kubectl(
            "-n", self.ns, "delete", "trainingrun", name, "--ignore-not-found", "--wait=true", timeout=120
        )
        self.wait(f"the pods of {name} to go", lambda: not self.pods(name), timeout=180)

    def diagnose(self, name: str) -> str:
        """What to print when a run went wrong: its status, the master's log, the operator's log."""
        logs = self.cp.kubectl("-n", self.ns, "logs", f"{name}-master-0", "--tail=60", check=False).stdout
        status = json.dumps(self.status(name), indent=1)[-3000:]
        return f"{status}\nmaster:\n{logs[-3000:]}\noperator:\n{self.operator_log()[-3000:]}"


def _helm(cp: Any, home: Path, *args: str, timeout: float = 600) -> str:
    env = {
        **cp.env,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    cmd = [str(cp.bin_dir / "helm"), "--kubeconfig", str(cp.kubeconfig), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc.stdout


@pytest.fixture(scope="module")
def release(
    control_plane: Any,
    operator_image: str,
    wait: Callable[..., Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    """`helm install` into a fresh namespace enforcing Pod Security `restricted`: the operator pod on
    the real node from the imported image (never pulled), watching that namespace only; the
    claims of runs/tiny-cluster/data.yaml."""
    cp = control_plane
    ns = f"tiny-cluster-{secrets.token_hex(3)}"
    cp.kubectl("create", "namespace", ns)
    cp.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
    tmp = tmp_path_factory.mktemp("helm")
    repository, tag = operator_image.rsplit(":", 1)
    trainer_repository, trainer_tag = TRAINER_IMAGE.rsplit(":", 1)
    values = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "operator": {"watchNamespace": ns, "progressIntervalSeconds": 2, "logFormat": "text", **REAL_NODE},
        "trainer": {"image": {"repository": trainer_repository, "tag": trainer_tag, "pullPolicy": "Never"}},
    }
    (tmp / "values.yaml").write_text(yaml.safe_dump(values))
    timings: dict[str, float] = {}
    start = time.monotonic()
    try:
        install = ["install", RELEASE, str(CHART), "-n", ns, "--values", str(tmp / "values.yaml")]
        _helm(cp, tmp, *install, "--wait", "--timeout", "5m")
        timings["helm_install_to_operator_ready_s"] = time.monotonic() - start
        data = yaml.safe_load_all((REPO / "runs" / "tiny-cluster" / "data.yaml").read_text())
        claims = [d for d in data if d and d["kind"] == "PersistentVolumeClaim"]
        cp.kubectl("-n", ns, "apply", "-f", "-", input=yaml.safe_dump_all(claims))
        yield Cluster(cp, ns, wait, timings, tmp / "values.yaml")
    finally:
        print(f"\ntiny-cluster timings: {json.dumps({k: round(v, 1) for k, v in timings.items()})}")
        try:
            _helm(cp, tmp, "uninstall", RELEASE, "-n", ns, "--wait", "--timeout", "2m")
        finally:
            cp.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found", check=False)


def test_operator_runs_as_a_pod_of_the_chart(release: Cluster) -> None:
    """The operator pod: the real node, the imported image, the chart's ServiceAccount, admitted
    under `restricted`, ready (it reached the apiserver by in-cluster config)."""
    (pod,) = release.operator_pods()
    assert pod["spec"]["nodeName"] == NODE
    assert pod["spec"]["serviceAccountName"] == f"{RELEASE}-tac2sol"
    (status,) = pod["status"]["containerStatuses"]
    assert status["ready"] and status["imageID"], status
    env = {e["name"] for e in pod["spec"]["containers"][0].get("env") or []}
    assert "KUBECONFIG" not in env


def test_missing_image_is_named_in_pods_ready(release: Cluster) -> None:
    """An image the node does not have (and may not pull): the kubelet says ErrImageNeverPull, the
    run's PodsReady condition names it and the pod, and the operator keeps running."""
    cp, ns, name = release.cp, release.ns, "absent-image"
    cp.apply(_tiny_run(name, image="localhost/tac2sol/absent:none", imagePullPolicy="Never"), ns)

    def pods_ready() -> dict[str, Any] | None:
        cond = _condition(release.run(name), "PodsReady")
        return cond if cond and "ErrImageNeverPull" in cond.get("message", "") else None

    cond = release.wait("PodsReady to name ErrImageNeverPull", pods_ready, timeout=180)
    assert cond["status"] == "False"
    assert f"{name}-master-0" in cond["message"] or f"{name}-worker-0" in cond["message"], cond
    assert release.status(name).get("message") == cond["message"]
    assert all(p["spec"]["nodeName"] == NODE for p in release.pods(name))
    (operator,) = release.operator_pods()
    status = operator["status"]["containerStatuses"][0]
    assert status["ready"] and status["restartCount"] == 0, release.operator_log()
    release.delete_run(name)


def test_prometheus_discovers_the_operator_through_the_chart_servicemonitor(
    release: Cluster, node_prometheus: Callable[..., devprometheus.NodePrometheus]
) -> None:
    """Prometheus in the node's network namespace, with the chart's ServiceMonitor as its scrape
    config (kubernetes_sd_configs, role endpointslice, against the test apiserver as a
    ServiceAccount that may only list and watch in the namespace), scrapes the operator pod."""
    (pod,) = release.operator_pods()
    name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
    prom = node_prometheus(release.ns, RELEASE, release.values)
    found = release.wait(
        "Prometheus to scrape the operator pod",
        lambda: prom.query(f'tac2sol_build_info{{pod="{name}", namespace="{release.ns}"}}'),
        timeout=90,
        interval=1,
    )
    assert found[0]["metric"]["component"] == "operator", found
    (target,) = [t for t in prom.active_targets() if t["labels"].get("pod") == name]
    assert target["health"] == "up", target
    assert target["scrapeUrl"].startswith(f"http://{ip}:"), target
    assert target["scrapePool"] == f"serviceMonitor/{release.ns}/{RELEASE}-tac2sol/0", target
