"""The images for a dev cluster's real node, built from the one Dockerfile by hack/images.sh with
buildah on an offline mmdebstrap Debian base and streamed into the node's containerd through a FIFO
(no ~7 GB archive on disk):
- the CPU trainer image (`--target trainer`, `TRAINER_DEVICE=cpu`; base: python3 and openmpi-bin),
  for the tests' `trainer_image` fixture and `make cluster-demo`;
- the operator image (`--target operator`; base: python3), which the tests install with the chart.

buildah keeps its layers in ~/.cache/tac2sol/containers (overlay, `--layers`): an unchanged tree
rebuilds nothing, a change to the sources reuses the layer of the dependencies (requirements.lock,
~7 GB: torch is the lock's PyPI build with the CUDA libraries it loads at import; it runs on CPUs).

    python -m tac2sol.devimage load     build (cached) and load it into the cluster of
                                        TAC2SOL_CLUSTER_DIR (hack/cluster.sh's default otherwise)
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tac2sol import devtools

TRAINER_IMAGE = "localhost/tac2sol/trainer:cpu"  # what the node's pods run (runs/tiny-cluster/)
BUILT_IMAGE = "localhost/tac2sol-test/tac2sol-trainer:cpu"  # what hack/images.sh tags
OPERATOR_IMAGE = "localhost/tac2sol/operator:e2e"  # the chart's image.repository:tag in the tests
BUILT_OPERATOR_IMAGE = "localhost/tac2sol-test/tac2sol-operator:e2e"
BUILD_TIMEOUT_S = 1800
# The node's peak while `ctr images import` unpacks the trainer image: its ~7 GB layer archive and
# the ~7.5 GB snapshot (the archive goes afterwards: DevCluster.import_image).
TRAINER_IMPORT_GIB = 16.0
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")  # the trust store this machine's pip uses


@dataclass(frozen=True)
class Timings:
    build_s: float
    load_s: float


def _run(*cmd: str, env: dict[str, str], timeout: float = 600) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr)[-5000:]
        raise devtools.DevToolsError(f"{' '.join(cmd)} exited {proc.returncode}:\n{output}")
    return proc.stdout


def storage_env() -> dict[str, str]:
    """buildah's storage: overlay in the cache, so that the dependency layers survive the session."""
    root = devtools.cache_dir() / "containers"
    root.mkdir(parents=True, exist_ok=True)
    conf = root / "storage.conf"
    conf.write_text(f'[storage]\ndriver = "overlay"\ngraphroot = "{root}/graph"\nrunroot = "{root}/run"\n')
    return {**os.environ, "CONTAINERS_STORAGE_CONF": str(conf), "PYTHONSAFEPATH": "1"}


def _build(env: dict[str, str], target: str = "trainer") -> str:
    """hack/images.sh with buildah: the Dockerfile's trainer target (TRAINER_DEVICE=cpu) or its
    operator target; returns the built image's name."""
    trainer = target == "trainer"
    built = BUILT_IMAGE if trainer else BUILT_OPERATOR_IMAGE
    if trainer:
        base = devtools.debian_base_tarball(devtools.TRAINER_DEBIAN_PACKAGES)
    else:
        base = devtools.debian_base_tarball()
    base_image = f"localhost/tac2sol-test-base:{base.stem}"  # one import per base: the layer cache keys on it
    if subprocess.run(["podman", "image", "exists", base_image], env=env).returncode != 0:
        _run("podman", "import", str(base), base_image, env=env)
    # A build killed mid-RUN (a machine restart) leaves its working container and its layer
    # (up to ~7 GB) behind; builds hold build.lock, so none of them is in use now.
    subprocess.run(["buildah", "rm", "--all"], capture_output=True, env=env)
    images = ["buildah", "images", "--quiet", built]
    old = subprocess.run(images, capture_output=True, text=True, env=env)
    build_env = {
        **env,
        "IMAGE_BUILDER": "buildah",
        "BUILD_FLAGS": "--isolation chroot --layers",
        "TARGETS": target,
        "REGISTRY": built.rsplit("/", 1)[0],
        "TAG": built.rsplit(":", 1)[1],
        "PYTHON_BASE": base_image,
        "CUDA_DEVEL_BASE": base_image,
        "CUDA_RUNTIME_BASE": base_image,
        "TRAINER_DEVICE": "cpu",
    }
    if CA_BUNDLE.exists():
        build_env["PIP_CERT"] = str(CA_BUNDLE)
    _run("bash", str(devtools.HACK / "images.sh"), env=build_env, timeout=BUILD_TIMEOUT_S)
    new = _run(*images, env=env).strip()
    if old.stdout.strip() and old.stdout.strip() != new:  # the last sources' image: drop it, keep the deps
        subprocess.run(["buildah", "rmi", old.stdout.strip()], capture_output=True, env=env)
    return built


def _need_free_disk(path: Path, gib: float) -> None:
    """Fail before an import that cannot fit, naming what to free, rather than halfway through."""
    free = shutil.disk_usage(path).free / 2**30
    if free < gib:
        raise devtools.DevToolsError(
            f"importing the trainer image into the real node ({path}) needs ~{gib:.0f} GiB free there "
            f"while it unpacks; {free:.1f} GiB is: free some space (old runs' /tmp/pytest-of-*, "
            f"images of buildah/podman) and run again"
        )


def build_and_load(cluster: devtools.DevCluster, fifo_dir: Path, target: str = "trainer") -> Timings:
    """Build the image (layers cached) and import it into the cluster's real node as
    TRAINER_IMAGE (or OPERATOR_IMAGE); pods run it with imagePullPolicy Never/IfNotPresent. One
    build per machine at a time."""
    name = TRAINER_IMAGE if target == "trainer" else OPERATOR_IMAGE
    env = storage_env()
    with open(devtools.cache_dir() / "containers" / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        start = time.monotonic()
        image = _build(env, target)
        built = time.monotonic()
        if target == "trainer":
            _need_free_disk(cluster.containerd_socket.parent, TRAINER_IMPORT_GIB)
        fifo = fifo_dir / f"{target}.tar"
        os.mkfifo(fifo)
        push = subprocess.Popen(
            ["buildah", "push", "--quiet", image, f"docker-archive:{fifo}:{name}"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            cluster.import_image(fifo, timeout=BUILD_TIMEOUT_S)
        finally:
            _, err = push.communicate(timeout=120)
            fifo.unlink(missing_ok=True)
        if push.returncode != 0:
            raise devtools.DevToolsError(f"buildah push exited {push.returncode}: {err.decode()[-3000:]}")
    return Timings(build_s=built - start, load_s=time.monotonic() - built)


def main(argv: list[str]) -> int:
    if argv != ["load"]:
        print("usage: python -m tac2sol.devimage load", file=sys.stderr)
        return 2
    state = Path(os.environ.get("TAC2SOL_CLUSTER_DIR") or devtools.cache_dir() / "cluster")
    if not (state / "node" / "containerd.sock").exists():
        print(f"tac2sol.devimage: no real node in {state}: start it with `make cluster-up`", file=sys.stderr)
        return 2
    print(f"building {BUILT_IMAGE} (layers cached; ~15 min cold), loading it as {TRAINER_IMAGE}", flush=True)
    try:
        t = build_and_load(devtools.DevCluster(state, dict(os.environ)), state)
    except devtools.DevToolsError as exc:
        print(f"tac2sol.devimage: {exc}", file=sys.stderr)
        return 1
    print(f"trainer image: build {t.build_s:.0f} s, export + import {t.load_s:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
