"""The operator's metrics served from a process, scraped by a real Prometheus.

tests/observability/operator_driver.py calls the functions the kopf handlers call (with kopf's
real exceptions) in a loop; Prometheus scrapes it every second. Every "Operator" dashboard
panel and the operator alert read real data; /healthz answers next to /metrics.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tac2sol.observability import dashboards, rules
from tac2sol.observability import names as n

pytestmark = pytest.mark.prom

OPERATOR_DASHBOARD = next(d for d in dashboards.DASHBOARDS if d.uid == "tac2sol-operator")
DRIVER = Path(__file__).with_name("operator_driver.py")


@dataclass
class Operator:
    prom: Any
    port: int
    start: float
    end: float
    scrape: str


def _driver(*args: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, str(DRIVER), *args],
        env={**os.environ, "PYTHONSAFEPATH": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        proc.kill()
        pytest.fail(f"operator driver did not start: {line}{proc.stderr.read() if proc.stderr else ''}")
    return proc, int(line)


@pytest.fixture(scope="module")
def operator(obs: SimpleNamespace, start_prometheus: Any) -> Iterator[Operator]:
    proc, port = _driver()
    try:
        prom = start_prometheus({"tac2sol-operator": [f"127.0.0.1:{port}"]})
        start = time.time()
        prom.wait(
            f'{n.OPERATOR_RECONCILIATIONS}{{result="error"}}',
            lambda r: bool(r),
            timeout=30,
            what="the first scrape of the operator",
        )
        time.sleep(12)  # more than the 10 s rate interval of the dashboard queries
        end = time.time()
        yield Operator(prom, port, start, end, obs.http_get(f"http://127.0.0.1:{port}/metrics")[1])
    finally:
        obs.stop(proc)


def test_operator_series_have_the_documented_names_and_labels(operator: Operator) -> None:
    results = {
        r["metric"]["result"]
        for r in operator.prom.query(n.OPERATOR_RECONCILIATIONS, at=operator.end)
        if float(r["value"][1]) > 0
    }
    assert results == {"success", "retry", "failed", "error"}
    errors = {r["metric"]["reason"] for r in operator.prom.query(n.OPERATOR_ERRORS, at=operator.end)}
    # failed and error reconciliations count their exception class; handlers add their own reasons.
    assert errors == {"PermanentError", "RuntimeError", "ApplyConflict"}
    kinds = {r["metric"]["kind"] for r in operator.prom.query(n.OPERATOR_JOBS_CREATED, at=operator.end)}
    assert kinds == {"PyTorchJob", "MPIJob"}
    phases = {
        r["metric"]["phase"]: float(r["value"][1])
        for r in operator.prom.query(n.OPERATOR_TRAININGRUNS, at=operator.end)
    }
    assert set(phases) == {"Pending", "Planning", "Running", "Succeeded", "Failed", "Suspended"}
    assert phases["Planning"] == 0 and 0 < sum(phases.values()) <= 7
    count = operator.prom.query(f"{n.OPERATOR_RECONCILE_DURATION}_count", at=operator.end)
    assert float(count[0]["value"][1]) > 0
    for r in operator.prom.query("{__name__=~'tac2sol_.+', job='tac2sol-operator'}", at=operator.end):
        assert "run" not in r["metric"], f"operator series carries a run name: {r['metric']}"


@pytest.mark.parametrize(
    ("title", "expr"),
    [
        pytest.param(p["title"], t["expr"], id=f"{p['title']}-{t['refId']}")
        for p in dashboards.build(OPERATOR_DASHBOARD)["panels"]
        for t in p.get("targets", [])
    ],
)
def test_operator_dashboard_panel_returns_data(
    operator: Operator, obs: SimpleNamespace, title: str, expr: str
) -> None:
    query = obs.substitute(expr)
    assert operator.prom.query_range(query, operator.start, operator.end), f"{title}: no data for {query}"


@pytest.mark.parametrize("alert", rules.GROUPS["tac2sol-operator"], ids=lambda a: a.name)
def test_operator_alert_reads_real_series(operator: Operator, alert: rules.Alert) -> None:
    operator.prom.query(alert.expr, at=operator.end)
    for signal in alert.signals:
        assert operator.prom.query(signal, at=operator.end), f"{alert.name}: {signal} returned no data"


def test_promtool_accepts_the_operator_scrape(operator: Operator, obs: SimpleNamespace) -> None:
    checked = obs.promtool("check", "metrics", stdin=operator.scrape)
    assert checked.returncode == 0 and not checked.stdout.strip(), checked.stdout + checked.stderr


def test_liveness_next_to_metrics(operator: Operator, obs: SimpleNamespace) -> None:
    assert obs.http_get(f"http://127.0.0.1:{operator.port}/healthz") == (200, "ok\n")
    assert obs.http_get(f"http://127.0.0.1:{operator.port}/nope")[0] == 404
    proc, port = _driver("--unhealthy")
    try:
        assert obs.http_get(f"http://127.0.0.1:{port}/healthz") == (503, "unhealthy\n")
        assert obs.http_get(f"http://127.0.0.1:{port}/metrics")[0] == 200
    finally:
        obs.stop(proc)
