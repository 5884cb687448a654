"""Shared pytest fixtures and hooks.

- Paths: the repository, and the real data in ../shared (tests that need it skip, saying so,
  only where it is absent: CI has it, a user's clone does not).
- Tools: `tool_bin` runs hack/install-tools.sh once and returns its bin folder; every test that
  needs it (through `helm`, `render`, `control_plane`, `kubeflow_crds`, ...) or carries the
  k8s, prom or image marker is marked `tools`, which `make test-fast` leaves out.
- The real test control plane (mark those tests `k8s`): `control_plane` (session) starts the
  cluster of hack/cluster.sh once, in a state directory of its own and on free ports
  (tac2sol.devtools.start_cluster), and stops it at the end of the session. `namespace` gives
  each test a fresh namespace, deleted after it. kwok runs the pods on 2 fake nodes x 4
  `nvidia.com/gpu`; pod annotations steer them: `kwok.tac2sol.dev/outcome:
  fail|run-forever|config-error`, `kwok.tac2sol.dev/run-seconds: "N"`,
  `kwok.tac2sol.dev/exit-code: "N"` (see hack/kwok/stages.yaml). Beside them runs one real node
  (hack/node.sh: kubelet, containerd, CoreDNS), `tac2sol-node`, labelled `tac2sol.dev/node: real`
  and tainted `tac2sol.dev/real-node=true:NoSchedule`: pods that tolerate the taint and select the
  label run for real there, from images imported with `control_plane.dev.import_image()`.
  `trainer_v2` (session) is the same control plane with Kubeflow Trainer v2 and JobSet added
  (TrainJob -> JobSet -> Jobs -> pods on kwok's nodes), started the first time a test asks.
- Skips: a run fails when a test skipped for any reason but a GPU one (or the absent shared
  data), so that a green run never checked less than it claims. A skip that is allowed carries
  the `gpu` marker, names a GPU or CUDA in its reason, or starts with SHARED_DATA_REASON.
"""

from __future__ import annotations

import copy
import json
import os
import re
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tac2sol import devtools

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]
DATASET_500 = REPO.parent / "shared" / "datasets" / "tac2sol-500.jsonl"
SHARED_DATA_REASON = "needs the real data in ../shared"
GPU_REASON = re.compile(r"\b(GPU|CUDA)s?\b")
# What every cluster test needs from hack/install-tools.sh.
CLUSTER_TOOLS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "training-operator",
    "kwok",
)
# What `trainer_v2` adds: Kubeflow Trainer v2's controller and the JobSet controller.
TRAINER_V2_TOOLS = ("trainer-controller-manager", "jobset")
TOOL_MARKERS = ("k8s", "prom", "image")


# --- paths ---------------------------------------------------------------------------------------


def edited(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with dotted-path changes (``{"spec.training.maxSeqLength": 2048}``).

    A value of ``...`` (Ellipsis) deletes the key.
    """
    data = copy.deepcopy(base)
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        if value is ...:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return data


@pytest.fixture(scope="session")
def edit_run() -> Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]:
    """:func:`edited`, for the test folders' run builders."""
    return edited


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def dataset_500() -> Path:
    """The 500 real rows (../shared/datasets/tac2sol-500.jsonl)."""
    if not DATASET_500.is_file():
        pytest.skip(f"{SHARED_DATA_REASON}: {DATASET_500} is absent (CI has it)")
    return DATASET_500


# --- tools ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tool_bin() -> Path:
    """The folder of hack/install-tools.sh's binaries, after running it (silent when cached)."""
    try:
        return devtools.ensure_tools()
    except devtools.DevToolsError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def kubeflow_crds(tool_bin: Path) -> Path:
    """The Kubeflow training-operator CRDs (kubeflow.org_pytorchjobs.yaml, _mpijobs.yaml)."""
    crds = devtools.crds_dir()
    if not (crds / "kubeflow.org_pytorchjobs.yaml").is_file():
        pytest.fail(f"no Kubeflow CRDs in {crds} after hack/install-tools.sh", pytrace=False)
    return crds


@pytest.fixture(scope="session")
def trainer_crds(tool_bin: Path) -> Path:
    """Kubeflow Trainer v2's CRDs (trainer.kubeflow.org_trainjobs.yaml, _clustertrainingruntimes.yaml),
    copied by hack/install-tools.sh from the trainer's Go module."""
    crds = devtools.trainer_crds_dir()
    if not (crds / "trainer.kubeflow.org_trainjobs.yaml").is_file():
        pytest.fail(f"no Kubeflow Trainer CRDs in {crds} after hack/install-tools.sh", pytrace=False)
    return crds


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        uses_tools = "tool_bin" in getattr(item, "fixturenames", ())
        if uses_tools or any(item.get_closest_marker(m) for m in TOOL_MARKERS):
            item.add_marker(pytest.mark.tools)


# --- the test control plane ----------------------------------------------------------------------


@dataclass(frozen=True)
class ControlPlane:
    """A running test cluster: where its kubeconfig is, and helpers to talk to it."""

    kubeconfig: Path
    server: str
    state_dir: Path
    ca_cert: Path
    bin_dir: Path  # kubectl, helm, kwok, ... as hack/install-tools.sh installed them
    env: dict[str, str]  # os.environ + KUBECONFIG + PYTHONSAFEPATH=1, for subprocesses
    dev: devtools.DevCluster  # the real node: import_image(), node_exec(), containerd_socket

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl as cluster admin; on failure (with check) raise with its stderr."""
        proc = subprocess.run(
            [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def get_json(self, *args: str) -> Any:
        """`kubectl get ARGS -o json`, parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def exists(self, *args: str) -> bool:
        """Whether `kubectl get ARGS` finds the object (False on NotFound, error otherwise)."""
        proc = self.kubectl("get", *args, "-o", "name", check=False)
        if proc.returncode == 0:
            return True
        if "NotFound" in proc.stderr:
            return False
        raise AssertionError(f"kubectl get {' '.join(args)}: {proc.stderr.strip()}")

    def apply(self, manifest: dict[str, Any] | str, namespace: str | None = None) -> None:
        """Server-side apply one manifest (a dict or YAML/JSON text)."""
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        ns = ["-n", namespace] if namespace else []
        self.kubectl("apply", "--server-side", "--field-manager=tac2sol-tests", *ns, "-f", "-", input=text)


def wait_until(what: str, probe: Callable[[], Any], timeout: float = 60, interval: float = 0.25) -> Any:
    """Poll `probe` until it returns something truthy and return it; fail naming `what`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last seen: {last!r})")


@pytest.fixture(scope="session")
def wait() -> Callable[..., Any]:
    """`wait(what, probe, timeout=60)`: poll until probe() is truthy (tests get it as a fixture,
    since test modules cannot import from conftest under --import-mode=importlib)."""
    return wait_until


@pytest.fixture(scope="session")
def control_plane(tool_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    try:
        devtools.ensure_tools(*CLUSTER_TOOLS)
        for stale in devtools.reap_stale_clusters(tmp_path_factory.getbasetemp().parent):
            print(f"\nreaped the stale cluster {stale} (its test run died with the machine)")
        # The owner pid: a killed pytest takes its cluster along.
        with devtools.start_cluster(tmp_path_factory.mktemp("cluster"), owner_pid=os.getpid()) as cluster:
            yield ControlPlane(
                kubeconfig=cluster.kubeconfig,
                server=cluster.server,
                state_dir=cluster.state_dir,
                ca_cert=cluster.ca_cert,
                bin_dir=tool_bin,
                env=cluster.env,
                dev=cluster,
            )
    except devtools.DevToolsError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def trainer_v2(control_plane: ControlPlane) -> ControlPlane:
    """The shared control plane with Kubeflow Trainer v2 (v2.3.0) and JobSet (v0.12.0) running:
    their CRDs, controllers and admission webhooks (`hack/cluster.sh trainer-up`, once per session;
    tests that do not ask for it never start them). No ClusterTrainingRuntime is installed: each
    test (or the chart) applies its own. JobSet pods run on kwok's GPU nodes like any other pod."""
    try:
        devtools.ensure_tools(*TRAINER_V2_TOOLS)
        devtools.start_trainer_v2(control_plane.dev)
    except devtools.DevToolsError as exc:
        pytest.fail(str(exc), pytrace=False)
    return control_plane


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test, ready for pods (its default ServiceAccount exists)."""
    stem = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].rstrip("-")
    name = f"{stem}-{secrets.token_hex(3)}"
    control_plane.kubectl("create", "namespace", name)
    wait_until(
        f"ServiceAccount default in {name}",
        lambda: control_plane.exists("-n", name, "serviceaccount", "default"),
        timeout=30,
    )
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


# --- skips ---------------------------------------------------------------------------------------

_bad_skips: list[str] = []


def _record_skip(report: pytest.CollectReport | pytest.TestReport) -> None:
    if not report.skipped or hasattr(report, "wasxfail") or not report.nodeid:
        return
    longrepr = report.longrepr
    reason = (longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)).removeprefix("Skipped: ")
    gpu_only = "gpu" in getattr(report, "keywords", {}) or GPU_REASON.search(reason)
    if not gpu_only and not reason.startswith(SHARED_DATA_REASON):
        _bad_skips.append(f"{report.nodeid}: {reason}")


def pytest_configure(config: pytest.Config) -> None:
    _bad_skips.clear()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _record_skip(report)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    _record_skip(report)  # a module-level skip (importorskip) skips every test in it


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _bad_skips and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _bad_skips:
        terminalreporter.section("skips that fail the run: only GPU-only tests may skip", red=True)
        for line in _bad_skips:
            terminalreporter.line(line, red=True)
