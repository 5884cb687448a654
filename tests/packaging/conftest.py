"""Fixtures for the packaging tests: the real `helm` binary and chart rendering (the test control
plane comes from tests/conftest.py).

`helm` comes from hack/install-tools.sh (~/.cache/tac2sol/bin/helm, built once from
helm.sh/helm/v3 and cached by version), through the `tool_bin` fixture.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "tac2sol"
RELEASE = "tac2sol"


def kube_version() -> str:
    """The test control plane's Kubernetes version (hack/k8s/go.mod): what `helm template` renders
    for, instead of helm's built-in default."""
    text = (REPO / "hack" / "k8s" / "go.mod").read_text()
    match = re.search(r"^\s*k8s\.io/kubernetes (v[0-9.]+)", text, re.M)
    assert match, "hack/k8s/go.mod does not require k8s.io/kubernetes"
    return match.group(1)


NAMESPACE = "tac2sol-system"


@dataclass(frozen=True)
class Helm:
    """The helm binary, run with a private HELM_* state so it never touches the user's."""

    binary: Path
    env: dict[str, str]
    kube_version: str  # what offline commands (template, lint) render for

    def run(
        self, *args: str, check: bool = True, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.binary), *args],
            capture_output=True,
            text=True,
            env={**self.env, **(env or {})},
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} exited {proc.returncode}:\n{proc.stderr.strip()}")
        return proc


@pytest.fixture(scope="session")
def helm(tool_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    binary = tool_bin / "helm"
    if not os.access(binary, os.X_OK):
        pytest.fail(f"{binary} is missing after `bash hack/install-tools.sh`", pytrace=False)
    home = tmp_path_factory.mktemp("helm-home")
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
        "PYTHONSAFEPATH": "1",
    }
    return Helm(binary, env, kube_version())


def values_file(tmp: Path, values: dict[str, Any]) -> Path:
    path = tmp / f"values-{abs(hash(yaml.safe_dump(values, sort_keys=True)))}.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def render(helm: Helm, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., list[dict[str, Any]]]:
    """`render(values=None, *extra_args)`: `helm template` the chart, return its objects (no CRDs
    from crds/ unless `--include-crds` is passed)."""
    tmp = tmp_path_factory.mktemp("values")
    cache: dict[str, list[dict[str, Any]]] = {}

    def _render(values: dict[str, Any] | None = None, *args: str) -> list[dict[str, Any]]:
        key = yaml.safe_dump(values or {}, sort_keys=True) + "\0".join(args)
        if key not in cache:
            cmd = [
                "template",
                RELEASE,
                str(CHART),
                "--namespace",
                NAMESPACE,
                "--kube-version",
                helm.kube_version,
                *args,
            ]
            if values:
                cmd += ["--values", str(values_file(tmp, values))]
            out = helm.run(*cmd).stdout
            cache[key] = [d for d in yaml.safe_load_all(out) if d]
        return cache[key]

    return _render


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


@pytest.fixture(scope="session")
def kinds() -> Callable[[list[dict[str, Any]], str], list[dict[str, Any]]]:
    """`kinds(objects, "Role")`: the objects of one kind (a fixture: conftest is not importable)."""
    return by_kind
