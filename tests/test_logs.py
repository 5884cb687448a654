"""tac2sol.logs.setup_logging: quiet by default, and the HTTP clients' per-request INFO lines stay
out of the operator's INFO log (one per pod poll)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tac2sol.logs import setup_logging


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {n: logging.getLogger(n).level for n in ("httpx", "httpx2", "httpcore")}
    yield
    root.handlers[:], root.level = handlers, level
    for name, old in levels.items():
        logging.getLogger(name).setLevel(old)


def test_info_leaves_out_the_http_clients_requests() -> None:
    setup_logging("INFO", json_format=False)
    assert logging.getLogger("tac2sol.operator").isEnabledFor(logging.INFO)
    assert not logging.getLogger("httpx2").isEnabledFor(logging.INFO)
    assert logging.getLogger("httpx2").isEnabledFor(logging.WARNING)


def test_debug_shows_them() -> None:
    setup_logging("DEBUG", json_format=False)
    assert logging.getLogger("httpx2").isEnabledFor(logging.DEBUG)
