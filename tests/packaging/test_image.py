"""Build the `operator` image with buildah and run it with podman (runc), without any registry:
the base is a Debian bookworm + python3 root filesystem made by mmdebstrap (cached under
~/.cache/tac2sol/images/ by its inputs), imported as a local image; hack/images.sh builds the
Dockerfile's `operator` target on it (chroot isolation, vfs storage in a scratch directory), then
the image runs `tac2sol --version` and `tac2sol crd` read-only, as its non-root user, with no
network and no capabilities.

buildah, podman, runc and mmdebstrap are Debian packages that hack/install-tools.sh installs; the
test fails, naming the missing ones, where they are not. Cold: ~4 min for the base (downloads),
~4 min for the build; warm: the build and the two runs (~5 min on 2 busy cores).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
from pathlib import Path

import pytest

from tac2sol import __version__, devtools
from tac2sol.operator.crd import render_crd_yaml

pytestmark = [pytest.mark.image, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = "localhost/tac2sol-test-base:bookworm"
TOOLS = ("buildah", "podman", "runc", "mmdebstrap")


def _missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


def _run(
    *cmd: str, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-5000:]}"
        )
    return proc


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for buildah/podman: vfs storage in a scratch directory (nothing left behind)."""
    missing = _missing_tools()
    if missing:
        pytest.fail(
            f"the image build test needs {', '.join(missing)}: `bash hack/install-tools.sh` installs them "
            "(on Debian: apt-get install buildah podman runc mmdebstrap)",
            pytrace=False,
        )
    root = tmp_path_factory.mktemp("containers")
    conf = root / "storage.conf"
    conf.write_text(f'[storage]\ndriver = "vfs"\ngraphroot = "{root}/graph"\nrunroot = "{root}/run"\n')
    return {**os.environ, "CONTAINERS_STORAGE_CONF": str(conf), "PYTHONSAFEPATH": "1"}


@pytest.fixture(scope="module")
def operator_image(storage: dict[str, str]) -> str:
    _run("podman", "import", str(devtools.debian_base_tarball()), BASE_IMAGE, env=storage)
    env = {
        **storage,
        "IMAGE_BUILDER": "buildah",
        "BUILD_FLAGS": "--isolation chroot",
        "TARGETS": "operator",
        "REGISTRY": "localhost/tac2sol-test",
        "TAG": "test",
        "PYTHON_BASE": BASE_IMAGE,
    }
    ca = Path("/etc/ssl/certs/ca-certificates.crt")  # the trust store this machine's pip uses
    if ca.exists():
        env["PIP_CERT"] = str(ca)
    _run("bash", str(REPO / "hack" / "images.sh"), env=env, timeout=900)
    return "localhost/tac2sol-test/tac2sol-operator:test"


def _podman_run(storage: dict[str, str], image: str, *args: str) -> str:
    # In a container without CAP_SYS_RESOURCE, runc cannot apply podman's default rlimits (nor even
    # this process's hard limits): ask for lower ones.
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    limits = [f"--ulimit=nofile={min(nofile, 4096)}", f"--ulimit=nproc={min(nproc, 4096)}"]
    confined = ["--network=none", "--read-only", "--cap-drop=ALL", "--security-opt=no-new-privileges"]
    return _run(
        "podman", "run", "--rm", "--runtime=runc", *limits, *confined, image, *args, env=storage
    ).stdout


def test_operator_image_config(storage: dict[str, str], operator_image: str) -> None:
    (info,) = json.loads(_run("podman", "image", "inspect", operator_image, env=storage).stdout)
    config = info["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["tac2sol"] and config["Cmd"] == ["operator"]
    # Only the operator extra: torch alone would be > 700 MB.
    assert info["Size"] < 450 * 1024**2, f"operator image is {info['Size'] / 1024**2:.0f} MiB"


def test_operator_image_runs_version_and_crd(storage: dict[str, str], operator_image: str) -> None:
    assert _podman_run(storage, operator_image, "--version").strip() == f"tac2sol {__version__}"
    assert _podman_run(storage, operator_image, "crd") == render_crd_yaml()
