"""The real node's shared parts for the e2e tests (fixtures: test modules cannot import conftest).

- Images: the CPU trainer image and the operator image (tac2sol/devimage.py builds them, their
  layers cached, and streams them into the test cluster's real node).
- `node_prometheus`: a real Prometheus that discovers the node's pods as the chart's monitors say
  (tac2sol/devprometheus.py).
- Runs of runs/tiny-cluster.yaml on the real node: `tiny_run(name, changes)` builds one,
  `runs_in(ns)` gives the `Runs` helpers for a namespace (the data Job, a run's status, pods and
  output folder), and `chart_release` (one per test module) is `helm install` of charts/tac2sol
  with the operator as a pod on the real node, watching a namespace of its own that enforces Pod
  Security `restricted`, with the tiny-cluster claims in it.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tac2sol import devimage, devprometheus, devtools

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "tac2sol"
TINY = "tiny-cluster"  # runs/tiny-cluster.yaml, and its data in runs/tiny-cluster/data.yaml
NODE = "tac2sol-node"  # hack/cluster.sh's NODE_NAME
JOB_LABEL = "training.kubeflow.org/job-name"
RELEASE = "e2e"
REAL_NODE = {
    "nodeSelector": {"tac2sol.dev/node": "real"},
    "tolerations": [{"key": "tac2sol.dev/real-node", "operator": "Exists", "effect": "NoSchedule"}],
}
# How often the tests' Prometheus scrapes (the chart's monitors default to 15 s and 30 s).
SCRAPE_INTERVAL = "2s"


# --- images --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def trainer_image(control_plane: Any, tool_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The CPU trainer image in the real node's containerd; pods run it with imagePullPolicy
    Never/IfNotPresent."""
    try:
        t = devimage.build_and_load(control_plane.dev, tmp_path_factory.mktemp("image"))
    except devtools.DevToolsError as exc:
        pytest.fail(str(exc), pytrace=False)
    print(f"\ntrainer image: build {t.build_s:.0f} s, export + import {t.load_s:.0f} s")
    return devimage.TRAINER_IMAGE


@pytest.fixture(scope="session")
def operator_image(control_plane: Any, tool_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The operator image in the real node's containerd, for `helm install` of the chart."""
    try:
        t = devimage.build_and_load(control_plane.dev, tmp_path_factory.mktemp("image"), target="operator")
    except devtools.DevToolsError as exc:
        pytest.fail(str(exc), pytrace=False)
    print(f"\noperator image: build {t.build_s:.0f} s, export + import {t.load_s:.0f} s")
    return devimage.OPERATOR_IMAGE


# --- Prometheus ----------------------------------------------------------------------------------


@pytest.fixture
def node_prometheus(
    control_plane: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., devprometheus.NodePrometheus]]:
    """`node_prometheus(namespace, release="e2e", values=None)`: a real Prometheus in the node's
    network namespace scraping, every 2 s, what the chart's PodMonitor (trainer pods) and
    ServiceMonitor (the operator of `release`) select in `namespace`, found by
    kubernetes_sd_configs against the test apiserver; stopped when the test ends. `values`: the
    release's values file, so that the rendered selectors match the installed release."""
    with ExitStack() as stack:

        def start(
            namespace: str, release: str = "e2e", values: Path | None = None
        ) -> devprometheus.NodePrometheus:
            sets = {"operator.watchNamespace": namespace}
            sets |= {f"monitoring.{m}.interval": SCRAPE_INTERVAL for m in ("podMonitor", "serviceMonitor")}
            try:
                monitors = devprometheus.chart_monitors(release, namespace, values, **sets)
                workdir = tmp_path_factory.mktemp("prometheus")
                return stack.enter_context(devprometheus.start(control_plane.dev, monitors, workdir))
            except devtools.DevToolsError as exc:
                pytest.fail(str(exc), pytrace=False)

        yield start


# --- tiny-cluster runs on the real node -------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_run(edit_run: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """`tiny_run(name, {"spec.resources.memory": "300Mi"})`: runs/tiny-cluster.yaml as `name`,
    writing to an output folder of its own (its name), with dotted-path changes."""
    base = yaml.safe_load((REPO / "runs" / f"{TINY}.yaml").read_text())

    def build(name: str, changes: dict[str, Any] | None = None) -> dict[str, Any]:
        named = {"metadata.name": name, "spec.output.path": name}
        return edit_run(base, {**named, **(changes or {})})

    return build


@dataclass
class Runs:
    """TrainingRuns of a namespace on the real node: their status, job, pods and output folder."""

    cp: Any
    ns: str
    wait: Callable[..., Any]
    timings: dict[str, float] = field(default_factory=dict)

    def make_data(self) -> None:
        """runs/tiny-cluster/data.yaml: the claims, and the Job that puts the tiny model and the
        sample on the data claim (timed as data_job_s)."""
        start = time.monotonic()
        self.cp.kubectl("-n", self.ns, "apply", "-f", str(REPO / "runs" / TINY / "data.yaml"))
        done = self.cp.kubectl(
            "-n", self.ns, "wait", "--for=condition=Complete", f"job/{TINY}-data", "--timeout=600s",
            check=False, timeout=620,
        )  # fmt: skip
        logs = self.cp.kubectl("-n", self.ns, "logs", f"job/{TINY}-data", check=False).stdout
        assert done.returncode == 0, f"the data Job did not complete: {done.stderr}\n{logs[-3000:]}"
        self.timings["data_job_s"] = time.monotonic() - start

    def apply(self, run: dict[str, Any]) -> None:
        self.cp.apply(run, self.ns)

    def run(self, name: str) -> dict[str, Any]:
        return dict(self.cp.get_json("-n", self.ns, "trainingrun", name))

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.run(name).get("status") or {})

    def condition(self, name: str, kind: str) -> dict[str, Any] | None:
        return next((c for c in self.status(name).get("conditions") or [] if c["type"] == kind), None)

    def job_of(self, name: str, timeout: float = 120) -> str:
        """The name of the run's job, once the operator made it."""
        ref = self.wait(
            f"the job of {name}", lambda: (self.status(name).get("jobRef") or {}).get("name"), timeout
        )
        return str(ref)

    def jobs_of(self, name: str, kind: str = "pytorchjobs") -> list[dict[str, Any]]:
        """Every job of `kind` the run owns (one, unless something made a duplicate)."""
        jobs = self.cp.get_json("-n", self.ns, kind)["items"]
        return [j for j in jobs if any(o["name"] == name for o in j["metadata"].get("ownerReferences") or [])]

    def pods(self, job: str, role: str | None = None) -> list[dict[str, Any]]:
        """The job's pods (of one replica type: master, worker, launcher)."""
        selector = f"{JOB_LABEL}={job}" + (f",training.kubeflow.org/replica-type={role}" if role else "")
        return list(self.cp.get_json("-n", self.ns, "pods", "-l", selector)["items"])

    def logs(self, pod: str, tail: int = -1) -> str:
        return str(self.cp.kubectl("-n", self.ns, "logs", pod, f"--tail={tail}", check=False).stdout)

    def step(self, name: str) -> int:
        return int((self.status(name).get("progress") or {}).get("step", 0))

    def finished(self, name: str, timeout: float = 1200) -> dict[str, Any]:
        """The run's status once it Succeeded or Failed."""

        def done() -> dict[str, Any] | None:
            status = self.status(name)
            return status if status.get("phase") in ("Succeeded", "Failed") else None

        return dict(self.wait(f"{name} to finish", done, timeout=timeout, interval=2))

    def output_dir(self, name: str) -> Path:
        """The run's output folder on the output claim's local volume (as the pods wrote it)."""
        claim = self.cp.get_json("-n", self.ns, "pvc", f"{TINY}-output")
        volume = Path(self.cp.get_json("pv", claim["spec"]["volumeName"])["spec"]["local"]["path"])
        return volume / str(self.run(name)["spec"]["output"]["path"])

    def delete_run(self, name: str) -> None:
        """Delete the run and wait until its pods are gone (the next run needs the node's CPUs)."""
        self.cp.kubectl(
            "-n", self.ns, "delete", "trainingrun", name, "--ignore-not-found", "--wait=true", timeout=120
        )
        self.wait(f"the pods of {name} to go", lambda: not self.pods(name), timeout=180)


@pytest.fixture(scope="session")
def runs_in(control_plane: Any, wait: Callable[..., Any]) -> Callable[[str], Runs]:
    """`runs_in(namespace)`: the `Runs` helpers there."""
    return lambda ns: Runs(control_plane, ns, wait)


@dataclass
class Release(Runs):
    """`Runs` in the chart release's namespace, and the operator pod the chart runs there."""

    values: Path | None = None  # the release's values file (what `node_prometheus` renders with)

    def operator_pods(self) -> list[dict[str, Any]]:
        selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/name=tac2sol"
        return list(self.cp.get_json("-n", self.ns, "pods", "-l", selector)["items"])

    def operator_restarts(self) -> int:
        (pod,) = self.operator_pods()
        return int(pod["status"]["containerStatuses"][0]["restartCount"])

    def operator_log(self) -> str:
        proc = self.cp.kubectl("-n", self.ns, "logs", f"deploy/{RELEASE}-tac2sol", "--tail=200", check=False)
        return str(proc.stdout + proc.stderr)

    def diagnose(self, name: str) -> str:
        """What to print when a run went wrong: its status, the master's log, the operator's log."""
        status = json.dumps(self.status(name), indent=1)[-3000:]
        master = self.logs(f"{name}-master-0", tail=60)[-3000:]
        return f"{status}\nmaster:\n{master}\noperator:\n{self.operator_log()[-3000:]}"


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
def chart_release(
    control_plane: Any,
    operator_image: str,
    wait: Callable[..., Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Release]:
    """`helm install` into a fresh namespace enforcing Pod Security `restricted` (one per test
    module, uninstalled after it: the node's 2 CPUs are needed by the next module's pods): the
    operator pod on the real node from the imported image (never pulled), watching that namespace
    only, trainer pods from the CPU trainer image; the claims of runs/tiny-cluster/data.yaml."""
    cp = control_plane
    ns = f"{RELEASE}-{secrets.token_hex(3)}"
    cp.kubectl("create", "namespace", ns)
    cp.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
    tmp = tmp_path_factory.mktemp("helm")
    repository, tag = operator_image.rsplit(":", 1)
    trainer_repository, trainer_tag = devimage.TRAINER_IMAGE.rsplit(":", 1)
    values = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "operator": {"watchNamespace": ns, "progressIntervalSeconds": 2, "logFormat": "text", **REAL_NODE},
        "trainer": {"image": {"repository": trainer_repository, "tag": trainer_tag, "pullPolicy": "Never"}},
    }
    (tmp / "values.yaml").write_text(yaml.safe_dump(values))
    release = Release(cp, ns, wait, values=tmp / "values.yaml")
    start = time.monotonic()
    try:
        install = ["install", RELEASE, str(CHART), "-n", ns, "--values", str(tmp / "values.yaml")]
        _helm(cp, tmp, *install, "--wait", "--timeout", "5m")
        release.timings["helm_install_to_operator_ready_s"] = time.monotonic() - start
        data = yaml.safe_load_all((REPO / "runs" / TINY / "data.yaml").read_text())
        claims = [d for d in data if d and d["kind"] == "PersistentVolumeClaim"]
        cp.kubectl("-n", ns, "apply", "-f", "-", input=yaml.safe_dump_all(claims))
        yield release
    finally:
        print(f"\nrelease {ns} timings: {json.dumps({k: round(v, 1) for k, v in release.timings.items()})}")
        try:
            _helm(cp, tmp, "uninstall", RELEASE, "-n", ns, "--wait", "--timeout", "2m")
        finally:
            cp.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found", check=False)
