"""The CPU trainer image for the real node (tac2sol/devimage.py builds it, its layers cached, and
streams it into the test cluster's real node)."""

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
