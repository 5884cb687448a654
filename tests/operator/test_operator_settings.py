"""Operator settings (TAC2SOL_*), the RBAC rules' shape, and the `tac2sol operator` command's checks."""

from __future__ import annotations

from typing import Any

import pytest

from tac2sol.errors import InvalidInput
from tac2sol.operator import rbac
from tac2sol.operator.kube import _RESOURCES
from tac2sol.operator.settings import OperatorSettings, load_settings


def test_settings_come_from_the_environment_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAC2SOL_NAMESPACE", "ml")
    monkeypatch.setenv("TAC2SOL_METRICS_PORT", "9090")
    monkeypatch.setenv("TAC2SOL_PROGRESS_INTERVAL_SECONDS", "15")
    s = load_settings(metrics_port=None, trainer_image="img:dev")
    assert (s.namespace, s.metrics_port, s.progress_interval_seconds, s.trainer_image) == (
        "ml",
        9090,
        15,
        "img:dev",
    )
    assert load_settings(metrics_port=7070).metrics_port == 7070


def test_metrics_bind_loopback_unless_the_pod_says_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of a cluster (a laptop, the tests) nothing listens beyond loopback; in a pod the chart
    and manifests set 0.0.0.0 so Prometheus can scrape the pod's IP."""
    monkeypatch.delenv("TAC2SOL_METRICS_HOST", raising=False)
    assert load_settings().metrics_host == "127.0.0.1"
    monkeypatch.setenv("TAC2SOL_METRICS_HOST", "0.0.0.0")
    assert load_settings().metrics_host == "0.0.0.0"


def test_an_empty_namespace_means_all(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAC2SOL_NAMESPACE", "")
    assert OperatorSettings().namespace is None


@pytest.mark.parametrize(
    ("env", "flags", "named"),
    [
        pytest.param({"TAC2SOL_METRICS_PORT": "70000"}, {}, "TAC2SOL_METRICS_PORT", id="env-port"),
        pytest.param({}, {"namespace": "Not_A_Namespace"}, "--namespace", id="flag-namespace"),
        pytest.param(
            {"TAC2SOL_IMAGE_PULL_POLICY": "Sometimes"}, {}, "TAC2SOL_IMAGE_PULL_POLICY", id="env-policy"
        ),
        pytest.param({}, {"progress_interval_seconds": 0}, "--progress-interval", id="flag-interval"),
    ],
)
def test_a_bad_setting_names_its_source(
    env: dict[str, str], flags: dict[str, Any], named: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(InvalidInput, match=named):
        load_settings(**flags)


def _allowed(group: str, resource: str, verb: str, *, namespaced: bool = False) -> bool:
    return any(
        group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
        for r in rbac.rules(namespaced=namespaced)
    )


# Kinds the client only reads, or only applies (a run's own TrainingRuntime is never read back).
_VERBS = {"ClusterTrainingRuntime": ("get",), "TrainingRuntime": ("create", "patch")}


def test_every_kind_the_client_writes_can_be_applied_and_read() -> None:
    for api_version, kind in _RESOURCES:
        group = api_version.rpartition("/")[0]
        plural = kind.lower() + "s"
        for verb in _VERBS.get(kind, ("get", "patch")):
            assert _allowed(group, plural, verb), f"{verb} {plural}.{group} is missing from rbac.RULES"
    assert _allowed("tac2sol.dev", "trainingruns/status", "patch")
    assert _allowed("", "events", "create")


def test_the_cluster_role_grants_no_wildcards_or_deletes() -> None:
    role = rbac.cluster_role()
    assert role["kind"] == "ClusterRole" and role["metadata"]["name"] == "tac2sol-operator"
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
        assert not {"delete", "deletecollection", "update"} & set(rule["verbs"]) or rule["resources"] == [
            "trainingruns/finalizers"
        ]
    assert not _allowed("apiextensions.k8s.io", "customresourcedefinitions", "list", namespaced=True)
