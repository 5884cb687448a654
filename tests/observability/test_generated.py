"""Dashboards and alert rules: generated files match the code, follow the conventions, and pass
promtool (check rules, and the unit tests in rules_test.yaml that make every alert fire)."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import yaml

from tac2sol.observability import dashboards, generate, rules
from tac2sol.observability import names as n


@pytest.mark.parametrize("rel", sorted(generate.outputs()), ids=str)
def test_committed_file_matches_the_code(obs: SimpleNamespace, rel: object) -> None:
    path = obs.repo / str(rel)
    expected = generate.outputs()[rel]  # type: ignore[index]
    assert path.exists(), f"{rel} is missing: run `make generate`"
    assert path.read_text() == expected, f"{rel} drifted from observability/: run `make generate`"


@pytest.mark.parametrize("spec", dashboards.DASHBOARDS, ids=lambda d: d.uid)
def test_dashboard_conventions(spec: dashboards.DashboardSpec) -> None:
    board = dashboards.build(spec)
    assert board["uid"] == spec.uid and len(spec.uid) <= 40
    assert board["tags"] == ["tac2sol"]
    assert "do not edit" in board["description"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    assert "namespace" in variables
    if spec.uid == "tac2sol-training-run":
        assert "run" in variables
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            assert 'namespace=~"$namespace"' in expr, (panel["title"], expr)
            for window in re.findall(r"\[([^\]]+)\]", expr):
                # $__range: an instant query for the latest value in the time range (finished runs too)
                allowed = ("$__rate_interval", "$__range") if target.get("instant") else ("$__rate_interval",)
                assert window in allowed, (panel["title"], expr)
            if spec.uid == "tac2sol-training-run":
                assert 'run=~"$run"' in expr, (panel["title"], expr)
            assert re.search(r"tac2sol_[a-z_]+", expr), expr


def test_every_metric_name_appears_in_a_dashboard() -> None:
    exprs = " ".join(
        t["expr"]
        for d in dashboards.DASHBOARDS
        for p in dashboards.build(d)["panels"]
        for t in p.get("targets", [])
    )
    exported = [
        v for k, v in vars(n).items() if k.isupper() and isinstance(v, str) and v.startswith("tac2sol_")
    ]
    missing = [
        name
        for name in exported
        if name not in exprs and name not in (n.TRAIN_START_TIME, n.TRAIN_IN_PROGRESS)
    ]
    assert not missing, f"metrics no panel shows: {missing}"


def test_alerts_carry_severity_summary_and_runbook() -> None:
    doc = yaml.safe_load(rules.render())
    names = [r["alert"] for g in doc["groups"] for r in g["rules"]]
    assert len(names) == len(set(names))
    for group in doc["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert set(rule["annotations"]) == {"summary", "description", "runbook"}
    for alert in rules.ALERTS:
        assert alert.signals and all(s in alert.expr for s in alert.signals), alert.name


def test_issue_alerts_are_all_there() -> None:
    assert {a.name for a in rules.ALERTS} == {
        "Tac2solTrainingStalled",
        "Tac2solTrainingLossNaN",
        "Tac2solTrainingLossExploding",
        "Tac2solGpuMemoryHigh",
        "Tac2solThroughputDropped",
        "Tac2solOperatorReconcileErrors",
        "Tac2solPodsCannotStart",
    }


@pytest.mark.prom
def test_promtool_check_rules(obs: SimpleNamespace) -> None:
    for rel in (generate.PLAIN_RULES, generate.CHART_RULES):
        checked = obs.promtool("check", "rules", str(obs.repo / rel))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert f"SUCCESS: {len(rules.ALERTS)} rules found" in checked.stdout


@pytest.mark.prom
def test_promtool_rule_unit_tests(obs: SimpleNamespace) -> None:
    tests = obs.repo / "tests" / "observability" / "rules_test.yaml"
    tested = {
        case["alertname"]
        for t in yaml.safe_load(tests.read_text())["tests"]
        for case in t["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert tested == {a.name for a in rules.ALERTS}, "every alert needs a firing case in rules_test.yaml"
    ran = obs.promtool("test", "rules", tests.name, cwd=tests.parent)
    assert ran.returncode == 0, ran.stdout + ran.stderr
