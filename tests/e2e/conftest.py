"""The images for the real node: the CPU trainer image and the operator image (tac2sol/devimage.py
builds them, their layers cached, and streams them into the test cluster's real node); a real
Prometheus that discovers the node's pods as the chart's monitors say (tac2sol/devprometheus.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tac2sol import devimage, devprometheus, devtools

# How often the tests' Prometheus scrapes (the chart's monitors default to 15 s and 30 s).
SCRAPE_INTERVAL = "2s"


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
    """The operator image in the real node's containerd, for `helm install` of the chart
    (tests/e2e/test_tiny_cluster.py)."""
    try:
        t = devimage.build_and_load(control_plane.dev, tmp_path_factory.mktemp("image"), target="operator")
    except devtools.DevToolsError as exc:
        pytest.fail(str(exc), pytrace=False)
    print(f"\noperator image: build {t.build_s:.0f} s, export + import {t.load_s:.0f} s")
    return devimage.OPERATOR_IMAGE


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
