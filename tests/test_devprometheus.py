"""tac2sol.devprometheus: the chart's PodMonitor and ServiceMonitor, rendered by the real `helm`,
turned into scrape configs that the real promtool accepts (Kubernetes discovery included), with the
chart's selector, port names and relabelings carried over. The e2e tests run them against the real
node (tests/e2e/test_helm_operator.py, tests/e2e/test_tiny_cluster.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tac2sol import devprometheus, devtools

pytestmark = [pytest.mark.prom]


def test_chart_monitors_become_a_config_promtool_accepts(tool_bin: Path, tmp_path: Path) -> None:
    monitors = devprometheus.chart_monitors("r", "team-a", **{"operator.watchNamespace": "team-a"})
    (pod_monitor,) = [m for m in monitors if m["kind"] == "PodMonitor"]
    for name in ("token", "ca.crt"):
        (tmp_path / name).write_text("x\n")
    sd = {
        "api_server": "https://10.244.0.1:6443",
        "authorization": {"credentials_file": str(tmp_path / "token")},
        "tls_config": {"ca_file": str(tmp_path / "ca.crt")},
    }
    configs = devprometheus.scrape_configs(monitors, sd)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({"scrape_configs": configs}))
    check = subprocess.run(
        [str(tool_bin / "promtool"), "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr

    pods = next(c for c in configs if c["job_name"].startswith("podMonitor/team-a/"))
    assert pods["kubernetes_sd_configs"][0]["role"] == "pod"
    assert pods["kubernetes_sd_configs"][0]["namespaces"] == {"names": ["team-a"]}
    assert pods["honor_labels"] is True
    ((label, value),) = pod_monitor["spec"]["selector"]["matchLabels"].items()
    keep = pods["relabel_configs"][1]
    assert keep["action"] == "keep" and keep["regex"] == f"({value});true", keep
    assert keep["source_labels"][0] == "__meta_kubernetes_pod_label_" + label.replace(".", "_").replace(
        "/", "_"
    )
    chart_rules = pod_monitor["spec"]["podMetricsEndpoints"][0]["relabelings"]
    assert pods["relabel_configs"][-len(chart_rules) :][0] == {
        "source_labels": ["__meta_kubernetes_pod_container_port_name"],
        "regex": chart_rules[0]["regex"],
        "action": "keep",
    }

    operator = next(c for c in configs if c["job_name"].startswith("serviceMonitor/team-a/"))
    assert operator["kubernetes_sd_configs"][0]["role"] == "endpointslice"
    assert {
        "action": "keep",
        "source_labels": ["__meta_kubernetes_endpointslice_port_name"],
        "regex": "metrics",
    } in (operator["relabel_configs"])


def test_a_monitor_for_any_namespace_is_refused(tool_bin: Path) -> None:
    (pod_monitor,) = [m for m in devprometheus.chart_monitors("r", "team-a") if m["kind"] == "PodMonitor"]
    assert pod_monitor["spec"]["namespaceSelector"] == {"any": True}
    with pytest.raises(devtools.DevToolsError, match="matchNames"):
        devprometheus.scrape_configs([pod_monitor], {})
