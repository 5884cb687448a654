"""Fixtures for tests against the real test control plane (mark those tests `k8s`).

`control_plane` (session) starts the cluster of `hack/cluster.sh` once, in a state directory of
its own and on free ports, so it never collides with a developer's `make cluster-up`; it stops
it at the end of the session. `namespace` gives each test a fresh namespace, deleted after it.
kwok runs the pods on 2 fake nodes x 4 `nvidia.com/gpu`; pod annotations steer them:
`kwok.tac2sol.dev/outcome: fail|run-forever|config-error`, `kwok.tac2sol.dev/run-seconds: "N"`,
`kwok.tac2sol.dev/exit-code: "N"` (see hack/kwok/stages.yaml).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("TAC2SOL_CACHE", Path.home() / ".cache" / "tac2sol"))
BIN = CACHE / "bin"
REQUIRED_TOOLS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "training-operator",
    "kwok",
)
# Below pytest's per-test timeout (900 s), so that our message wins over a bare timeout.
INSTALL_TIMEOUT_S = 840
PORT_VARS = (
    "TAC2SOL_ETCD_PORT",
    "TAC2SOL_ETCD_PEER_PORT",
    "TAC2SOL_APISERVER_PORT",
    "TAC2SOL_TRAINING_OPERATOR_METRICS_PORT",
    "TAC2SOL_TRAINING_OPERATOR_HEALTH_PORT",
    "TAC2SOL_TRAINING_OPERATOR_WEBHOOK_PORT",
)


@dataclass(frozen=True)
class ControlPlane:
    """A running test cluster: where its kubeconfig is, and helpers to talk to it."""

    kubeconfig: Path
    server: str
    state_dir: Path
    ca_cert: Path
    bin_dir: Path  # kubectl, helm, kwok, ... as hack/install-tools.sh installed them
    env: dict[str, str]  # os.environ + KUBECONFIG + PYTHONSAFEPATH=1, for subprocesses

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl as cluster admin; on failure (with check) raise with its stderr."""
        proc = subprocess.run(
            [str(BIN / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
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


def _free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _ensure_tools() -> None:
    """Run the (idempotent, silent when cached) installer; fail with the command to run by hand."""
    try:
        proc = subprocess.run(
            ["bash", str(REPO / "hack" / "install-tools.sh")],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(
            "hack/install-tools.sh did not finish within "
            f"{INSTALL_TIMEOUT_S} s: run `make tools` (bash hack/install-tools.sh) once before the "
            "tests; a cold build of all the tools took 71 min on 2 busy cores",
            pytrace=False,
        )
    if proc.returncode != 0:
        pytest.fail(f"`bash hack/install-tools.sh` failed:\n{proc.stderr[-4000:]}", pytrace=False)
    missing = [t for t in REQUIRED_TOOLS if not os.access(BIN / t, os.X_OK)]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing from {BIN} after hack/install-tools.sh", pytrace=False)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    _ensure_tools()
    state = tmp_path_factory.mktemp("cluster")
    env = {
        **os.environ,
        "TAC2SOL_CLUSTER_DIR": str(state),
        "TAC2SOL_CLUSTER_OWNER_PID": str(os.getpid()),  # a killed pytest takes its cluster along
        "PYTHONSAFEPATH": "1",
    }
    env.update(zip(PORT_VARS, map(str, _free_ports(len(PORT_VARS))), strict=True))
    script = ["bash", str(REPO / "hack" / "cluster.sh")]
    try:
        up = subprocess.run([*script, "up"], capture_output=True, text=True, env=env, timeout=300)
        if up.returncode != 0:
            pytest.fail(f"`hack/cluster.sh up` failed:\n{up.stderr[-6000:]}", pytrace=False)
        kubeconfig = state / "kubeconfig"
        yield ControlPlane(
            kubeconfig=kubeconfig,
            server=f"https://127.0.0.1:{env['TAC2SOL_APISERVER_PORT']}",
            state_dir=state,
            ca_cert=state / "pki" / "ca.crt",
            bin_dir=BIN,
            env={**env, "KUBECONFIG": str(kubeconfig)},
        )
    finally:
        subprocess.run([*script, "down"], capture_output=True, text=True, env=env, timeout=120)


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
