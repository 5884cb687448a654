"""charts/tac2sol installed with `helm install` onto the test cluster runs the operator as a pod on
the real node: the operator image (tac2sol/devimage.py, imported, never pulled), the chart's
ServiceAccount and RBAC, a namespace enforcing Pod Security `restricted`, in-cluster config (the
`kubernetes` Service through kube-proxy). The operator watches that namespace only; a run whose
image the node does not have is named in PodsReady and the operator pod keeps running. A real
Prometheus finds the operator pod through the chart's ServiceMonitor (kubernetes_sd_configs).

The release is tests/e2e/conftest.py's `chart_release`; these tests need no trainer image
(tests/e2e/test_tiny_cluster.py trains with the same chart).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tac2sol import devprometheus

# The first test waits for the operator image (another session may hold the build lock for minutes).
pytestmark = [pytest.mark.k8s, pytest.mark.image, pytest.mark.slow, pytest.mark.timeout(3600)]

NODE = "tac2sol-node"  # hack/cluster.sh's NODE_NAME
RELEASE = "e2e"  # conftest's chart_release


def test_operator_runs_as_a_pod_of_the_chart(chart_release: Any) -> None:
    """The operator pod: the real node, the imported image, the chart's ServiceAccount, admitted
    under `restricted`, ready (it reached the apiserver by in-cluster config)."""
    (pod,) = chart_release.operator_pods()
    assert pod["spec"]["nodeName"] == NODE
    assert pod["spec"]["serviceAccountName"] == f"{RELEASE}-tac2sol"
    (status,) = pod["status"]["containerStatuses"]
    assert status["ready"] and status["imageID"], status
    env = {e["name"] for e in pod["spec"]["containers"][0].get("env") or []}
    assert "KUBECONFIG" not in env


def test_missing_image_is_named_in_pods_ready(
    chart_release: Any, tiny_run: Callable[..., dict[str, Any]]
) -> None:
    """An image the node does not have (and may not pull): the kubelet says ErrImageNeverPull, the
    run's PodsReady condition names it and the pod, and the operator keeps running (no crash loop)."""
    release, name = chart_release, "absent-image"
    release.apply(
        tiny_run(name, {"spec.image": "localhost/tac2sol/absent:none", "spec.imagePullPolicy": "Never"})
    )

    def pods_ready() -> dict[str, Any] | None:
        cond = release.condition(name, "PodsReady")
        return cond if cond and "ErrImageNeverPull" in cond.get("message", "") else None

    cond = release.wait("PodsReady to name ErrImageNeverPull", pods_ready, timeout=180)
    assert cond["status"] == "False"
    assert f"{name}-master-0" in cond["message"] or f"{name}-worker-0" in cond["message"], cond
    assert release.status(name).get("message") == cond["message"]
    assert all(p["spec"]["nodeName"] == NODE for p in release.pods(name))
    (operator,) = release.operator_pods()
    status = operator["status"]["containerStatuses"][0]
    assert status["ready"] and status["restartCount"] == 0, release.operator_log()
    release.delete_run(name)


def test_prometheus_discovers_the_operator_through_the_chart_servicemonitor(
    chart_release: Any, node_prometheus: Callable[..., devprometheus.NodePrometheus]
) -> None:
    """Prometheus in the node's network namespace, with the chart's ServiceMonitor as its scrape
    config (kubernetes_sd_configs, role endpointslice, against the test apiserver as a
    ServiceAccount that may only list and watch in the namespace), scrapes the operator pod."""
    release = chart_release
    (pod,) = release.operator_pods()
    name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
    prom = node_prometheus(release.ns, RELEASE, release.values)
    found = release.wait(
        "Prometheus to scrape the operator pod",
        lambda: prom.query(f'tac2sol_build_info{{pod="{name}", namespace="{release.ns}"}}'),
        timeout=90,
        interval=1,
    )
    assert found[0]["metric"]["component"] == "operator", found
    (target,) = [t for t in prom.active_targets() if t["labels"].get("pod") == name]
    assert target["health"] == "up", target
    assert target["scrapeUrl"].startswith(f"http://{ip}:"), target
    assert target["scrapePool"] == f"serviceMonitor/{release.ns}/{RELEASE}-tac2sol/0", target
