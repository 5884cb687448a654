"""Shared pytest fixtures: paths to the repository and to ../shared."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} is missing: CI and developers have ../shared beside the checkout")
    return SHARED


@pytest.fixture(scope="session")
def dataset_500(shared_dir: Path) -> Path:
    return shared_dir / "datasets" / "tac2sol-500.jsonl"
