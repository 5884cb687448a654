"""Operator metrics without a server: result classification, phase counts, progress parsing,
the trainer scrape wiring helpers, and the one clear error for a busy port."""

from __future__ import annotations

import socket

import kopf
import pytest
from prometheus_client import generate_latest

from tac2sol.errors import InvalidInput
from tac2sol.observability import names as n
from tac2sol.operator import metrics as om
from tac2sol.trainer.metrics import TrainerMetrics


def _value(name: str, **labels: str) -> float:
    return om.REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize(
    ("exc", "result"),
    [
        (kopf.TemporaryError("wait", delay=3), "retry"),
        (kopf.PermanentError("bad spec"), "failed"),
        (ValueError("bug"), "error"),
    ],
    ids=["temporary", "permanent", "other"],
)
def test_reconcile_timer_counts_result_and_errors(exc: Exception, result: str) -> None:
    before = _value(n.OPERATOR_RECONCILIATIONS, result=result)
    errors_before = _value(n.OPERATOR_ERRORS, reason=type(exc).__name__)
    durations_before = _value(f"{n.OPERATOR_RECONCILE_DURATION}_count")
    with pytest.raises(type(exc)), om.reconcile_timer():
        raise exc
    assert _value(n.OPERATOR_RECONCILIATIONS, result=result) == before + 1
    assert _value(f"{n.OPERATOR_RECONCILE_DURATION}_count") == durations_before + 1
    counted = 0 if result == "retry" else 1  # waiting is not an error
    assert _value(n.OPERATOR_ERRORS, reason=type(exc).__name__) == errors_before + counted


def test_reconcile_timer_counts_success() -> None:
    before = _value(n.OPERATOR_RECONCILIATIONS, result="success")
    with om.reconcile_timer():
        pass
    assert _value(n.OPERATOR_RECONCILIATIONS, result="success") == before + 1


def test_unknown_result_is_refused() -> None:
    with pytest.raises(ValueError, match="not one of success, retry, failed, error"):
        om.observe_reconcile("ok")


def test_every_result_exists_from_the_start() -> None:
    text = generate_latest(om.REGISTRY).decode()
    for result in n.RECONCILE_RESULTS:
        assert f'{n.OPERATOR_RECONCILIATIONS}{{result="{result}"}}' in text


def test_phase_tracker_counts_runs_by_phase() -> None:
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    tracker = om.PhaseTracker(Gauge("runs", "runs", ["phase"], registry=registry))
    tracker.declare(["Pending", "Running", "Succeeded"])
    tracker.set("a", "r1", "Pending")
    tracker.set("a", "r2", "Pending")
    tracker.set("b", "r1", "Running")
    tracker.set("a", "r1", "Running")  # moves, not added twice
    tracker.set("a", "r2", None)  # deleted

    def count(phase: str) -> float | None:
        return registry.get_sample_value("runs", {"phase": phase})

    assert (count("Pending"), count("Running"), count("Succeeded")) == (0, 2, 0)


def test_parse_trainer_progress_reads_rank_zero_only_what_exists() -> None:
    for rank in (0, 1):
        m = TrainerMetrics("r", rank, "cpu")
        m.global_step.set(40 + rank)
        m.max_steps.set(100)
        m.progress.set(0.4)
        if rank == 0:
            text = generate_latest(m.registry).decode()
    progress = om.parse_trainer_progress(text)
    assert progress == {"global_step": 40.0, "max_steps": 100.0, "progress_ratio": 0.4}  # no loss yet: absent


def test_trainer_scrape_wiring() -> None:
    ports = om.trainer_metrics_ports(9400, 2)
    assert ports == [
        {"name": "metrics-0", "containerPort": 9400, "protocol": "TCP"},
        {"name": "metrics-1", "containerPort": 9401, "protocol": "TCP"},
    ]
    assert all(len(p["name"]) <= 15 for p in om.trainer_metrics_ports(9400, 8))  # IANA_SVC_NAME limit
    assert om.trainer_scrape_annotations(9400) == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "9400",
        "prometheus.io/path": "/metrics",
    }


def test_busy_port_is_one_clear_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(InvalidInput, match=r"cannot listen on 127\.0\.0\.1"):
            om.serve(busy.getsockname()[1], host="127.0.0.1")
