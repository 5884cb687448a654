"""The CPU trainer image for the real node: built from the one Dockerfile (`--target trainer`,
`TRAINER_DEVICE=cpu`) by hack/images.sh with buildah on the offline mmdebstrap Debian base, and
streamed into the test cluster's real node. buildah keeps its layers in ~/.cache/tac2sol/containers
(overlay, `--layers`): an unchanged tree rebuilds nothing, a change to the sources reuses the layer
of the dependencies (requirements.lock, ~7 GB: torch is the lock's PyPI build with the CUDA
libraries it loads at import; it runs on CPUs).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tac2sol import devtools

REPO = Path(__file__).resolve().parents[2]
TRAINER_IMAGE = "localhost/tac2sol/trainer:cpu"  # what runs/tiny-cluster/data.yaml names
BUILT_IMAGE = "localhost/tac2sol-test/tac2sol-trainer:cpu"  # what hack/images.sh tags
BUILD_TIMEOUT_S = 1800


def _run(*cmd: str, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr)[-5000:]
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{output}")
    return proc.stdout


def _storage_env() -> dict[str, str]:
    """buildah's storage: overlay in the cache, so that the dependency layers survive the session."""
    root = devtools.cache_dir() / "containers"
    root.mkdir(parents=True, exist_ok=True)
    conf = root / "storage.conf"
    conf.write_text(f'[storage]\ndriver = "overlay"\ngraphroot = "{root}/graph"\nrunroot = "{root}/run"\n')
    return {**os.environ, "CONTAINERS_STORAGE_CONF": str(conf), "PYTHONSAFEPATH": "1"}


def _build(env: dict[str, str]) -> None:
    """hack/images.sh with buildah: the Dockerfile's trainer target, TRAINER_DEVICE=cpu."""
    base = devtools.debian_base_tarball()
    base_image = f"localhost/tac2sol-test-base:{base.stem}"  # one import per base: the layer cache keys on it
    if subprocess.run(["podman", "image", "exists", base_image], env=env).returncode != 0:
        _run("podman", "import", str(base), base_image, env=env)
    images = ["buildah", "images", "--quiet", BUILT_IMAGE]
    old = subprocess.run(images, capture_output=True, text=True, env=env)
    build_env = {
        **env,
        "IMAGE_BUILDER": "buildah",
        "BUILD_FLAGS": "--isolation chroot --layers",
        "TARGETS": "trainer",
        "REGISTRY": "localhost/tac2sol-test",
        "TAG": "cpu",
        "PYTHON_BASE": base_image,
        "CUDA_DEVEL_BASE": base_image,
        "CUDA_RUNTIME_BASE": base_image,
        "TRAINER_DEVICE": "cpu",
    }
    ca = Path("/etc/ssl/certs/ca-certificates.crt")  # the trust store this machine's pip uses
    if ca.exists():
        build_env["PIP_CERT"] = str(ca)
    _run("bash", str(REPO / "hack" / "images.sh"), env=build_env, timeout=BUILD_TIMEOUT_S)
    new = _run(*images, env=env).strip()
    if old.stdout.strip() and old.stdout.strip() != new:  # the last sources' image: drop it, keep the deps
        subprocess.run(["buildah", "rmi", old.stdout.strip()], capture_output=True, env=env)


@pytest.fixture(scope="session")
def trainer_image(control_plane: Any, tool_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The CPU trainer image, built (its layers cached) and streamed into the real node's containerd
    through a FIFO (no ~7 GB archive on disk); pods run it with imagePullPolicy Never/IfNotPresent."""
    env = _storage_env()
    with open(devtools.cache_dir() / "containers" / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time per machine
        start = time.monotonic()
        _build(env)
        built = time.monotonic()
        fifo = tmp_path_factory.mktemp("image") / "trainer.tar"
        os.mkfifo(fifo)
        push = subprocess.Popen(
            ["buildah", "push", "--quiet", BUILT_IMAGE, f"docker-archive:{fifo}:{TRAINER_IMAGE}"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            control_plane.dev.import_image(fifo, timeout=BUILD_TIMEOUT_S)
        finally:
            _, err = push.communicate(timeout=120)
        assert push.returncode == 0, f"buildah push exited {push.returncode}: {err.decode()[-3000:]}"
    print(f"\ntrainer image: build {built - start:.0f} s, export + import {time.monotonic() - built:.0f} s")
    return TRAINER_IMAGE
