"""Every object the chart renders, and every plain manifest, validates against the Kubernetes
OpenAPI schemas of the test cluster's version (kubernetes-validate --strict: unknown fields fail).
The three prometheus-operator kinds have no schema there; test_chart.py checks their shape and
the monitoring CRDs are not installed on the test cluster; Kubeflow Trainer's ClusterTrainingRuntime
is checked against Trainer's CRD by test_chart.py. Those are the only ones left out."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
Render = Callable[..., list[dict[str, Any]]]
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
# Kubeflow Trainer v2's kinds have no schema in kubernetes-validate either: test_chart.py validates the
# chart's ClusterTrainingRuntime against Trainer's own CRD, and manifests/trainer/ is that rendering
# (test_manifests.py checks it for drift).
TRAINER_KINDS = {"ClusterTrainingRuntime"}
VALUE_SETS = {
    "defaults": {},
    "namespaced": {"operator": {"watchNamespace": "team-a"}},
    "all-on": {
        "crds": {"templated": True},
        "image": {"digest": "sha256:" + "0" * 64},
        "imagePullSecrets": [{"name": "regcred"}],
        "operator": {
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [
                {"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}
            ],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}
                                ]
                            }
                        ]
                    }
                }
            },
            "priorityClassName": "system-cluster-critical",
            "extraEnv": [{"name": "TAC2SOL_EXTRA", "value": "1"}],
            "podLabels": {"team": "ml"},
            "podAnnotations": {"example.com/owner": "ml-platform"},
        },
        "serviceAccount": {"annotations": {"example.com/role": "tac2sol"}},
        "monitoring": {
            "serviceMonitor": {"enabled": True},
            "podMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True},
        },
    },
}


def _kubernetes_version() -> str:
    """The minor version of the test control plane (hack/k8s/go.mod), as kubernetes-validate names it."""
    text = (REPO / "hack" / "k8s" / "go.mod").read_text()
    match = re.search(r"^(?:require)?\s*k8s\.io/kubernetes v(\d+)\.(\d+)\.", text, re.M)
    assert match, "hack/k8s/go.mod does not require k8s.io/kubernetes"
    return f"{match.group(1)}.{match.group(2)}.0"


def _validate(objects: list[dict[str, Any]], where: str) -> set[str]:
    """Validate each object; return the kinds that have no schema."""
    unknown = set()
    version = _kubernetes_version()
    for obj in objects:
        name = f"{where}: {obj['kind']} {obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            unknown.add(obj["kind"])
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name} is invalid at {'.'.join(map(str, exc.path))}: {exc.message}", pytrace=False)
    return unknown


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_rendered_objects_validate(render: Render, values: dict[str, Any]) -> None:
    objects = render(values, "--include-crds")
    unknown = _validate(objects, "helm template")
    assert unknown <= MONITORING_KINDS, f"no schema for {unknown - MONITORING_KINDS}"


def test_plain_manifests_validate() -> None:
    files = sorted((REPO / "manifests").glob("**/*.yaml"))
    objects = [
        d
        for f in files
        if f.name != "kustomization.yaml" and "prometheus" not in f.parts
        for d in yaml.safe_load_all(f.read_text())
        if d
    ]
    assert {o["kind"] for o in objects} >= {
        "CustomResourceDefinition",
        "Deployment",
        "ClusterRole",
        "Namespace",
    }
    unknown = _validate(objects, "manifests/")
    assert unknown <= TRAINER_KINDS, f"no schema for {unknown - TRAINER_KINDS}"
