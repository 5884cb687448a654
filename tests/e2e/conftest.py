"""The images for the real node: the CPU trainer image and the operator image (tac2sol/devimage.py
builds them, their layers cached, and streams them into the test cluster's real node)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tac2sol import devimage, devtools


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
