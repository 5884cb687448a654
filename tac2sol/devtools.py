"""Development helpers shared by the tests, the benchmarks and the hack/ scripts: free ports on
127.0.0.1, the tool cache of hack/install-tools.sh, and the dev control plane of hack/cluster.sh.

They run scripts under hack/, so they work from a checkout (an editable install) only.
`python -m tac2sol.devtools cluster-env` prints what hack/cluster.sh reads: the control plane's
port variables (defaults below, overridden by the environment) and the Kubeflow CRDs folders.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HACK = REPO / "hack"
# Below pytest's per-test timeout (900 s), so that a fixture's message wins over a bare timeout.
INSTALL_TIMEOUT_S = 840
# The dev control plane's ports on 127.0.0.1 (`make cluster-up`); tests and benchmarks start
# their own clusters with every one of them on a free port instead.
CLUSTER_PORTS = {
    "TAC2SOL_ETCD_PORT": 23790,
    "TAC2SOL_ETCD_PEER_PORT": 23800,
    "TAC2SOL_APISERVER_PORT": 26443,
    "TAC2SOL_TRAINING_OPERATOR_METRICS_PORT": 28080,
    "TAC2SOL_TRAINING_OPERATOR_HEALTH_PORT": 28081,
    "TAC2SOL_TRAINING_OPERATOR_WEBHOOK_PORT": 29443,
    # Kubeflow Trainer v2 and JobSet (`hack/cluster.sh trainer-up`): health probes and webhooks.
    "TAC2SOL_TRAINER_HEALTH_PORT": 28091,
    "TAC2SOL_TRAINER_WEBHOOK_PORT": 29453,
    "TAC2SOL_JOBSET_HEALTH_PORT": 28101,
    "TAC2SOL_JOBSET_WEBHOOK_PORT": 29463,
}


class DevToolsError(RuntimeError):
    """A tool is missing or a hack/ script failed; the message says what to run."""


def cache_dir() -> Path:
    """Where hack/install-tools.sh caches the tools by version (TAC2SOL_CACHE)."""
    return Path(os.environ.get("TAC2SOL_CACHE") or Path.home() / ".cache" / "tac2sol")


def bin_dir() -> Path:
    return cache_dir() / "bin"


def crds_dir() -> Path:
    """The Kubeflow training-operator CRDs, copied by hack/install-tools.sh from the Go module of
    the training-operator it builds (so they match the controller's version)."""
    return cache_dir() / "crds" / "training-operator"


def trainer_crds_dir() -> Path:
    """The CRDs of Kubeflow Trainer v2 (trainer.kubeflow.org_*.yaml) and of JobSet
    (jobset.x-k8s.io_jobsets.yaml), copied by hack/install-tools.sh from the Go modules of the
    controllers it builds."""
    return cache_dir() / "crds" / "trainer"


# --- free ports ----------------------------------------------------------------------------------


@contextmanager
def _bound(ports: Iterable[int]) -> Iterator[list[socket.socket]]:
    """Sockets bound to each of `ports` on 127.0.0.1 (0: any), all closed on exit; OSError if taken."""
    socks: list[socket.socket] = []
    try:
        for port in ports:
            socks.append(socket.socket())
            socks[-1].bind(("127.0.0.1", port))
        yield socks
    finally:
        for s in socks:
            s.close()


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 right now."""
    with _bound([0] * count) as socks:
        return [int(s.getsockname()[1]) for s in socks]


def free_port(consecutive: int = 1) -> int:
    """A port p such that p .. p+consecutive-1 are all free on 127.0.0.1 right now."""
    for _ in range(100):
        base = free_ports(1)[0]
        try:
            with _bound(range(base + 1, base + consecutive)):
                return base
        except (OSError, OverflowError):  # taken, or past port 65535
            continue
    raise DevToolsError(f"no {consecutive} consecutive free ports on 127.0.0.1")


# --- tools ---------------------------------------------------------------------------------------


@functools.cache
def _run_installer() -> None:
    """Run hack/install-tools.sh once per process (silent and ~0.2 s when everything is cached)."""
    try:
        proc = subprocess.run(
            ["bash", str(HACK / "install-tools.sh")],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise DevToolsError(
            f"hack/install-tools.sh did not finish within {INSTALL_TIMEOUT_S} s: run `make tools` once "
            "before the tests (a cold build of all the tools takes about an hour on 2 busy cores)"
        ) from None
    if proc.returncode != 0:
        raise DevToolsError(f"`bash hack/install-tools.sh` failed:\n{proc.stderr[-4000:]}")


def ensure_tools(*names: str) -> Path:
    """Install the tools (hack/install-tools.sh) and return the folder holding `names`."""
    _run_installer()
    missing = [n for n in names if not os.access(bin_dir() / n, os.X_OK)]
    if missing:
        raise DevToolsError(f"{', '.join(missing)} missing from {bin_dir()} after hack/install-tools.sh")
    return bin_dir()


# --- images ----------------------------------------------------------------------------------------

DEBIAN_SUITE = "bookworm"
DEBIAN_PACKAGES = ("python3", "python3-venv", "ca-certificates", "passwd")
# The CPU trainer's base adds Open MPI: an MPIJob's launcher runs mpirun, its workers orted.
TRAINER_DEBIAN_PACKAGES = (*DEBIAN_PACKAGES, "openmpi-bin")


def _check(cmd: list[str], timeout: float) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr)[-5000:]
        raise DevToolsError(f"{' '.join(cmd)} exited {proc.returncode}:\n{output}")
    return proc.stdout


def debian_base_tarball(packages: tuple[str, ...] = DEBIAN_PACKAGES) -> Path:
    """A Debian bookworm root filesystem with `packages` (python3 at least) made by mmdebstrap (the
    images' offline base), built once per (suite, packages, mirror, mmdebstrap version) under the
    cache's images/."""
    mirror = os.environ.get("TAC2SOL_DEBIAN_MIRROR", "http://deb.debian.org/debian")
    version = _check(["mmdebstrap", "--version"], 60).strip()
    inputs = "\n".join([DEBIAN_SUITE, mirror, version, *packages])
    key = hashlib.sha256(inputs.encode()).hexdigest()[:12]
    out = cache_dir() / "images" / f"debian-{DEBIAN_SUITE}-python3-{key}.tar"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{out}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two sessions must not write the same tarball
        if not out.exists():
            tmp = out.with_suffix(".tmp.tar")
            _check(["mmdebstrap", "--quiet", "--variant=minbase", f"--include={','.join(packages)}",
                    DEBIAN_SUITE, str(tmp), mirror], 900)  # fmt: skip
            tmp.rename(out)
    return out


# --- the dev control plane -----------------------------------------------------------------------


def cluster_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """hack/cluster.sh's settings: each port from the environment or its default, and the CRDs."""
    env = {
        "TAC2SOL_CRDS_DIR": environ.get("TAC2SOL_CRDS_DIR") or str(crds_dir()),
        "TAC2SOL_TRAINER_CRDS_DIR": environ.get("TAC2SOL_TRAINER_CRDS_DIR") or str(trainer_crds_dir()),
    }
    for name, default in CLUSTER_PORTS.items():
        value = environ.get(name) or str(default)
        if not value.isdigit() or not 0 < int(value) < 65536:
            raise DevToolsError(f"{name}={value!r} is not a port: give a number from 1 to 65535")
        env[name] = value
    return env


@dataclass(frozen=True)
class DevCluster:
    """A control plane that hack/cluster.sh started; `env` is for the processes that talk to it."""

    state_dir: Path
    env: dict[str, str]  # os.environ + KUBECONFIG, the cluster's ports, PYTHONSAFEPATH=1

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.env['TAC2SOL_APISERVER_PORT']}"

    @property
    def ca_cert(self) -> Path:
        return self.state_dir / "pki" / "ca.crt"

    @property
    def containerd_socket(self) -> Path:
        """The real node's containerd (hack/node.sh): `ctr --address` it to import images."""
        return self.state_dir / "node" / "containerd.sock"

    def import_image(self, tarball: Path, timeout: float = 600) -> None:
        """Import an image archive (docker-archive or OCI) into the real node's containerd, where
        the kubelet finds it (`imagePullPolicy: Never`); nothing is ever pulled."""
        cmd = ["ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io"]
        proc = subprocess.run(
            [*cmd, "images", "import", str(tarball)], capture_output=True, text=True, timeout=timeout
        )
        if proc.returncode != 0:
            raise DevToolsError(
                f"importing {tarball} into the node's containerd failed: {proc.stderr[-2000:]}"
            )
        for digest in re.findall(r"^unpacking \S+ \((sha256:[0-9a-f]{64})\)", proc.stdout, re.MULTILINE):
            self._drop_layer_blobs(cmd, digest, timeout)

    @staticmethod
    def _drop_layer_blobs(ctr: list[str], digest: str, timeout: float) -> None:
        """Delete an unpacked image's layer archives from the content store, as the CRI plugin's
        discard_unpacked_layers does for pulled images: pods run from the unpacked snapshots, so
        the trainer image takes ~7 GB of the node's disk instead of ~15 GB."""
        get = subprocess.run([*ctr, "content", "get", digest], capture_output=True, timeout=timeout)
        if get.returncode != 0:
            raise DevToolsError(f"ctr content get {digest} failed: {get.stderr.decode()[-2000:]}")
        document = json.loads(get.stdout)
        for manifest in document.get("manifests", []):  # an index: each platform's manifest
            DevCluster._drop_layer_blobs(ctr, manifest["digest"], timeout)
        layers = [layer["digest"] for layer in document.get("layers", [])]
        if layers:
            rm = subprocess.run(
                [*ctr, "content", "rm", *layers], capture_output=True, text=True, timeout=timeout
            )
            if rm.returncode != 0:
                raise DevToolsError(f"ctr content rm failed: {rm.stderr[-2000:]}")

    def node_exec(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run `cmd` in the real node's network namespace (pod and node addresses exist only there)."""
        return subprocess.run(
            ["bash", str(HACK / "cluster.sh"), "node-exec", *cmd],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
        )


def start_trainer_v2(cluster: DevCluster, timeout: float = 180, *, status: bool = False) -> None:
    """`hack/cluster.sh trainer-up`: add Kubeflow Trainer v2 and JobSet (CRDs, controllers and
    webhooks) to a running cluster; returns at once when they already run as asked. `status`:
    Trainer's TrainJobStatus gate on (its status server in the real node's network namespace);
    without it, off. Switching restarts only the trainer-controller-manager."""
    proc = subprocess.run(
        ["bash", str(HACK / "cluster.sh"), "trainer-up"],
        capture_output=True,
        text=True,
        env={**cluster.env, "TAC2SOL_TRAINER_STATUS": "1" if status else "0"},
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise DevToolsError(f"`hack/cluster.sh trainer-up` failed:\n{proc.stderr[-6000:]}")


def _cluster_script_env(state_dir: Path) -> dict[str, str]:
    """What hack/cluster.sh runs with for the cluster in `state_dir`: this interpreter for its
    `cluster-env` (TAC2SOL_PYTHON)."""
    return {
        **os.environ,
        "TAC2SOL_CLUSTER_DIR": str(state_dir),
        "PYTHONSAFEPATH": "1",
        "TAC2SOL_PYTHON": sys.executable,
    }


def reap_stale_clusters(root: Path) -> list[Path]:
    """`hack/cluster.sh reap` each test cluster under `root` (pytest's pytest-of-<user>) that still
    has a real node's data: one whose test run, watchdog and processes all died at once (a machine
    restart) keeps its images (GBs) on disk. Live clusters are left alone. Returns those reaped."""
    reaped = []
    for node in sorted(root.glob("pytest-*/cluster*/node")):
        state = node.parent
        proc = subprocess.run(
            ["bash", str(HACK / "cluster.sh"), "reap"],
            capture_output=True,
            text=True,
            env=_cluster_script_env(state),
            timeout=180,
        )
        if proc.returncode != 0:
            raise DevToolsError(f"`hack/cluster.sh reap` of {state} failed:\n{proc.stderr[-3000:]}")
        if not node.exists():
            reaped.append(state)
    return reaped


@contextmanager
def start_cluster(
    state_dir: Path, *, owner_pid: int | None = None, timeout: float = 300
) -> Iterator[DevCluster]:
    """`hack/cluster.sh up` in `state_dir` on free ports, so it never collides with a developer's
    `make cluster-up`; `down` when the block ends. With `owner_pid`, the cluster also stops once
    that process is gone (a killed test run leaves nothing behind)."""
    env = _cluster_script_env(state_dir)
    env.update(zip(CLUSTER_PORTS, map(str, free_ports(len(CLUSTER_PORTS))), strict=True))
    if owner_pid is not None:
        env["TAC2SOL_CLUSTER_OWNER_PID"] = str(owner_pid)
    script = ["bash", str(HACK / "cluster.sh")]
    try:
        up = subprocess.run([*script, "up"], capture_output=True, text=True, env=env, timeout=timeout)
        if up.returncode != 0:
            raise DevToolsError(f"`hack/cluster.sh up` failed:\n{up.stderr[-6000:]}")
        yield DevCluster(state_dir, {**env, "KUBECONFIG": str(state_dir / "kubeconfig")})
    finally:
        subprocess.run([*script, "down"], capture_output=True, text=True, env=env, timeout=120)


@contextmanager
def background(command: list[str], env: Mapping[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` in a session of its own, its output to ``log``; on exit SIGTERM its whole
    process group (e.g. ``cluster.sh node-exec``'s nsenter and what it runs), SIGKILL after 30 s."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        stop_group(proc, timeout=30)


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGTERM the process group ``proc`` leads (started with ``start_new_session``), then SIGKILL."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


def main(argv: list[str]) -> int:
    if argv != ["cluster-env"]:
        print("usage: python -m tac2sol.devtools cluster-env", file=sys.stderr)
        return 2
    try:
        env = cluster_env()
    except DevToolsError as exc:
        print(f"tac2sol.devtools: {exc}", file=sys.stderr)
        return 2
    print("\n".join(f"{name}={shlex.quote(value)}" for name, value in env.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
