"""The Helm chart, rendered by the real `helm`: lint --strict, what each values set renders, the
operator's security context, settings and RBAC agreeing with operator/settings.py and
operator/rbac.py, monitoring toggles, dashboards, the templated CRD, and the values schema
rejecting bad values with the field's path."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tac2sol import __version__
from tac2sol.operator import rbac
from tac2sol.operator.crd import CRD_FILE
from tac2sol.operator.settings import OperatorSettings

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "tac2sol"
BAD_VALUES = sorted((Path(__file__).parent / "bad-values").glob("*.yaml"))
Render = Callable[..., list[dict[str, Any]]]
Kinds = Callable[[list[dict[str, Any]], str], list[dict[str, Any]]]

ALL_ON: dict[str, Any] = {
    "monitoring": {
        "serviceMonitor": {"enabled": True},
        "podMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
    },
    "crds": {"templated": True},
}
NAMESPACED = {"operator": {"watchNamespace": "team-a"}}
# Values sets every structural test runs over; ids name them.
VALUE_SETS = {"defaults": {}, "all-on": ALL_ON, "namespaced": NAMESPACED}


def _one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_helm_lint_strict(helm: Any, tmp_path: Path, values: dict[str, Any]) -> None:
    file = tmp_path / "values.yaml"
    file.write_text(yaml.safe_dump(values))
    proc = helm.run(
        "lint",
        "--strict",
        str(CHART),
        "--values",
        str(file),
        "--kube-version",
        helm.kube_version,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def test_chart_version_follows_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == __version__ == chart["version"]


def test_default_render(render: Render) -> None:
    objects = render()
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",  # settings
            "ConfigMap",  # dashboard: operator
            "ConfigMap",  # dashboard: training run
            "Deployment",
            "NetworkPolicy",
            "Service",
            "ServiceAccount",
        ]
    ), kinds
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "tac2sol"
        assert labels["app.kubernetes.io/instance"] == "tac2sol"
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == "tac2sol-system", obj["metadata"]


def test_operator_deployment(render: Render) -> None:
    deploy = _one(render(), "Deployment")
    spec = deploy["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["image"] == f"ghcr.io/tac2sol/tac2sol-operator:{__version__}"
    assert container["args"] == ["operator"]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}, probe
    assert container["ports"] == [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}]
    res = container["resources"]
    assert set(res["requests"]) == set(res["limits"]) == {"cpu", "memory"}
    # The read-only root needs a writable /tmp (HOME in the image).
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert pod["serviceAccountName"] == "tac2sol"


def test_network_policy_admits_the_metrics_port_only(render: Render) -> None:
    objects = render()
    policy = _one(objects, "NetworkPolicy")
    pod_labels = _one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"] == [{"ports": [{"port": "metrics", "protocol": "TCP"}]}]
    peers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    narrowed = _one(render({"networkPolicy": {"metricsFrom": peers}}), "NetworkPolicy")
    assert narrowed["spec"]["ingress"][0]["from"] == peers
    assert not [o for o in render({"networkPolicy": {"enabled": False}}) if o["kind"] == "NetworkPolicy"]


def test_image_digest_pins_both_images(render: Render) -> None:
    digest = "sha256:" + "ab" * 32
    objects = render({"image": {"digest": digest}, "trainer": {"image": {"digest": digest}}})
    container = _one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"ghcr.io/tac2sol/tac2sol-operator@{digest}"
    settings = _settings(objects)
    assert settings["TAC2SOL_TRAINER_IMAGE"] == f"ghcr.io/tac2sol/tac2sol-trainer@{digest}"


def _settings(objects: list[dict[str, Any]]) -> dict[str, str]:
    (cm,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-settings")]
    return dict(cm["data"])


def test_settings_map_one_to_one_onto_operator_settings(render: Render) -> None:
    data = _settings(render())
    fields = {f"TAC2SOL_{name.upper()}" for name in OperatorSettings.model_fields}
    logging_vars = {"TAC2SOL_LOG_FORMAT"}  # tac2sol/logs.py
    assert set(data) - logging_vars == fields, "every operator setting has exactly one chart value"


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_rendered_settings_are_accepted_by_the_operator(
    render: Render, monkeypatch: pytest.MonkeyPatch, values: dict[str, Any]
) -> None:
    for key, value in _settings(render(values)).items():
        monkeypatch.setenv(key, value)
    settings = OperatorSettings()
    assert settings.trainer_image == f"ghcr.io/tac2sol/tac2sol-trainer:{__version__}"
    assert settings.namespace == values.get("operator", {}).get("watchNamespace")


def test_trainer_defaults_from_values(render: Render, monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "trainer": {
            "image": {
                "repository": "registry.example.com/ml/trainer",
                "tag": "2024.1",
                "pullPolicy": "Always",
            },
            "cpuPerProcess": 8,
            "memoryPerProcess": "32Gi",
            "selectGpuProduct": False,
            "ncclDebug": "INFO",
        },
        "operator": {"logLevel": "DEBUG", "progressIntervalSeconds": 10},
    }
    for key, value in _settings(render(values)).items():
        monkeypatch.setenv(key, value)
    s = OperatorSettings()
    assert (s.trainer_image, s.image_pull_policy) == ("registry.example.com/ml/trainer:2024.1", "Always")
    assert (s.cpu_per_process, s.memory_per_process) == (8, "32Gi")
    assert (s.select_gpu_product, s.nccl_debug, s.log_level) == (False, "INFO", "DEBUG")
    assert s.progress_interval_seconds == 10


def test_settings_change_restarts_the_operator(render: Render) -> None:
    def checksum(values: dict[str, Any]) -> str:
        deploy = _one(render(values), "Deployment")
        return str(deploy["spec"]["template"]["metadata"]["annotations"]["checksum/settings"])

    assert checksum({}) != checksum({"trainer": {"cpuPerProcess": 2}})


def test_clusterwide_rbac_is_operator_rbac(render: Render) -> None:
    objects = render()
    role = _one(objects, "ClusterRole")
    assert role["rules"] == rbac.rules(), "the chart's ClusterRole must be operator/rbac.py's rules"
    binding = _one(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "tac2sol", "namespace": "tac2sol-system"}
    ]


def test_namespaced_rbac_grants_nothing_cluster_wide(render: Render) -> None:
    """...but get on the chart's own ClusterTrainingRuntime (a priority-class TrainJob copies it)."""
    objects = render(NAMESPACED)
    (cluster_role,) = [o for o in objects if o["kind"] == "ClusterRole"]
    assert cluster_role["rules"] == [
        {**rule, "resourceNames": ["tac2sol-torch"]}
        for rule in rbac.backend_rules("trainjob", cluster_scoped=True)
    ]
    (cluster_binding,) = [o for o in objects if o["kind"] == "ClusterRoleBinding"]
    assert cluster_binding["roleRef"]["name"] == cluster_role["metadata"]["name"] == "tac2sol-runtime"
    without_trainjob = render({**NAMESPACED, "backends": ["pytorchjob"]})
    assert not {o["kind"] for o in without_trainjob} & {"ClusterRole", "ClusterRoleBinding"}
    role = _one(objects, "Role")
    assert role["metadata"]["namespace"] == "team-a"
    assert role["rules"] == rbac.rules(namespaced=True)
    binding = _one(objects, "RoleBinding")
    assert binding["metadata"]["namespace"] == "team-a"
    assert binding["subjects"][0]["namespace"] == "tac2sol-system"
    assert _settings(objects)["TAC2SOL_NAMESPACE"] == "team-a"


def test_no_rule_grants_secrets_exec_or_wildcards(render: Render) -> None:
    for values in VALUE_SETS.values():
        for obj in render(values):
            for rule in obj.get("rules", []):
                assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
                assert "secrets" not in rule["resources"], rule
                assert not {r for r in rule["resources"] if r.startswith("pods/")}, rule


def test_generated_rbac_file_matches_operator_rbac() -> None:
    data = yaml.safe_load((CHART / "files" / "rbac" / "operator-rules.yaml").read_text())
    assert data == {
        "clusterwide": rbac.rules(backends=()),
        "namespaced": rbac.rules(namespaced=True, backends=()),
        "backends": {b: rbac.backend_rules(b) for b in rbac.BACKENDS},
        "clusterBackends": {b: rbac.backend_rules(b, cluster_scoped=True) for b in rbac.BACKENDS},
    }, "files/rbac/operator-rules.yaml drifted from operator/rbac.py: run `make generate`"


@pytest.mark.parametrize("backends", [["trainjob"], ["pytorchjob"]])
def test_rbac_grants_only_the_enabled_backends_kinds(render: Render, backends: list[str]) -> None:
    objects = render({"backends": backends})
    rules = _one(objects, "ClusterRole")["rules"]
    assert rules == rbac.rules(backends=backends)
    groups = {g for r in rules for g in r["apiGroups"]}
    assert ("kubeflow.org" in groups) == ("pytorchjob" in backends)
    assert ("trainer.kubeflow.org" in groups) == ("trainjob" in backends)
    role = _one(render({**NAMESPACED, "backends": backends}), "Role")
    assert role["rules"] == rbac.rules(namespaced=True, backends=backends)
    assert _settings(objects)["TAC2SOL_BACKENDS"] == ",".join(backends)


RUNTIME_API = "trainer.kubeflow.org/v1alpha1/ClusterTrainingRuntime"


def test_the_trainjob_runtime_ships_when_the_cluster_serves_it(render: Render) -> None:
    """create auto: rendered when the cluster serves Trainer v2 (helm's capabilities), else not."""
    assert not [o for o in render() if o["kind"] == "ClusterTrainingRuntime"]
    assert _one(render(None, "--api-versions", RUNTIME_API), "ClusterTrainingRuntime")
    assert _one(render({"trainJob": {"runtime": {"create": True}}}), "ClusterTrainingRuntime")
    off = render({"trainJob": {"runtime": {"create": False}}}, "--api-versions", RUNTIME_API)
    assert not [o for o in off if o["kind"] == "ClusterTrainingRuntime"]
    pytorch_only = render({"backends": ["pytorchjob"]}, "--api-versions", RUNTIME_API)
    assert not [o for o in pytorch_only if o["kind"] == "ClusterTrainingRuntime"]


@pytest.mark.parametrize(
    "values", [{}, {"trainJob": {"runtime": {"name": "ours", "maxRestarts": 0, "metricsPorts": 2}}}]
)
def test_the_trainjob_runtime_matches_the_trainer_crd_and_the_operator(
    render: Render, trainer_crds: Path, values: dict[str, Any]
) -> None:
    """Valid against Trainer v2.3's ClusterTrainingRuntime schema, and what operator/trainjob.py
    patches exists in it: the replicated job, the container, the metrics ports."""
    import jsonschema

    from tac2sol.operator.names import DEFAULT_TRAINJOB_RUNTIME, TRAINER_CONTAINER, TRAINER_REPLICATED_JOB
    from tac2sol.operator.spec import TrainingRunSpec

    objects = render(values, "--api-versions", RUNTIME_API)
    runtime = _one(objects, "ClusterTrainingRuntime")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(
        (trainer_crds / "trainer.kubeflow.org_clustertrainingruntimes.yaml").read_text(), Loader=loader
    )
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    jsonschema.validate({**runtime, "metadata": {}}, _structural(version["schema"]["openAPIV3Schema"]))
    name = values.get("trainJob", {}).get("runtime", {}).get("name", DEFAULT_TRAINJOB_RUNTIME)
    assert runtime["metadata"]["name"] == _settings(objects)["TAC2SOL_TRAINJOB_RUNTIME"] == name
    (rjob,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    assert rjob["name"] == TRAINER_REPLICATED_JOB
    assert rjob["template"]["metadata"]["labels"]["trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer"
    (container,) = rjob["template"]["spec"]["template"]["spec"]["containers"]
    assert container["name"] == TRAINER_CONTAINER
    base = TrainingRunSpec.model_fields["metrics_port"].default
    assert [p["containerPort"] for p in container["ports"]][:1] == [base]
    # The trainer's own verdict (exit 1-127) fails at once; 128+ (killed) restarts the JobSet.
    (rule,) = rjob["template"]["spec"]["podFailurePolicy"]["rules"]
    assert rule["onExitCodes"]["values"] == list(range(128, 256))


def _structural(node: Any) -> Any:
    """A CRD's OpenAPI schema as JSON Schema: int-or-string accepts both; unknown fields rejected."""
    if isinstance(node, list):
        return [_structural(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _structural(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
        out["additionalProperties"] = False
    return out


def test_monitoring_is_off_by_default_and_labelled_when_on(render: Render, kinds: Kinds) -> None:
    assert not {"ServiceMonitor", "PodMonitor", "PrometheusRule"} & {o["kind"] for o in render()}
    objects = render({**ALL_ON, "monitoring": {**ALL_ON["monitoring"], "release": "prom-stack"}})
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        obj = _one(objects, kind)
        assert obj["metadata"]["labels"]["release"] == "prom-stack", kind
    service = _one(objects, "Service")
    monitor = _one(objects, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"] == "metrics"
    pod_monitor = _one(objects, "PodMonitor")
    keep = pod_monitor["spec"]["podMetricsEndpoints"][0]["relabelings"][0]
    assert keep["action"] == "keep" and re.fullmatch(keep["regex"], "metrics-3")
    assert not re.fullmatch(keep["regex"], "http")
    # The target's run label (for `up`) must not rename the trainer's own run label to exported_run.
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["honorLabels"] is True
    assert pod_monitor["spec"]["namespaceSelector"] == {"any": True}
    namespaced = _one(render({**ALL_ON, **NAMESPACED}), "PodMonitor")
    assert namespaced["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}


def test_prometheus_rule_carries_the_generated_rules(render: Render) -> None:
    rule = _one(render(ALL_ON), "PrometheusRule")
    generated = yaml.safe_load((CHART / "files" / "rules" / "tac2sol.rules.yaml").read_text())
    assert rule["spec"] == generated
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    assert alerts and all(r["labels"]["severity"] for r in alerts)


def test_dashboards_are_labelled_for_the_grafana_sidecar(render: Render) -> None:
    dashboards = [o for o in render() if o["kind"] == "ConfigMap" and "-dashboard-" in o["metadata"]["name"]]
    files = sorted((CHART / "files" / "dashboards").glob("*.json"))
    assert len(dashboards) == len(files) >= 2
    for cm, file in zip(sorted(dashboards, key=lambda o: o["metadata"]["name"]), files, strict=True):
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(cm["data"][file.name]) == json.loads(file.read_text())
    assert not [
        o for o in render({"monitoring": {"dashboards": {"enabled": False}}}) if "-dashboard-" in str(o)
    ]
    moved = render({"monitoring": {"dashboards": {"namespace": "monitoring"}}})
    assert {o["metadata"]["namespace"] for o in moved if "-dashboard-" in o["metadata"]["name"]} == {
        "monitoring"
    }


def test_crd_from_crds_dir_and_templated(render: Render) -> None:
    generated = yaml.safe_load((CHART / "crds" / CRD_FILE).read_text())
    from_dir = [o for o in render(None, "--include-crds") if o["kind"] == "CustomResourceDefinition"]
    assert from_dir == [generated]
    templated = _one(render({"crds": {"templated": True}}), "CustomResourceDefinition")
    assert templated["spec"] == generated["spec"]
    assert templated["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert templated["metadata"]["labels"]["app.kubernetes.io/instance"] == "tac2sol"
    dropped = _one(render({"crds": {"templated": True, "keep": False}}), "CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in dropped["metadata"].get("annotations", {})


@pytest.mark.parametrize("bad", BAD_VALUES, ids=lambda p: p.stem)
def test_values_schema_rejects(helm: Any, bad: Path) -> None:
    expect = re.findall(r"^# expect: (.+)$", bad.read_text(), re.M)
    assert expect, f"{bad.name}: add a '# expect: <text of the error>' line"
    proc = helm.run(
        "template",
        "tac2sol",
        str(CHART),
        "--values",
        str(bad),
        "--kube-version",
        helm.kube_version,
        check=False,
    )
    assert proc.returncode != 0, f"{bad.name} was accepted"
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
    for text in expect:
        assert text in proc.stderr, f"{bad.name}: {text!r} not in:\n{proc.stderr}"


def test_at_least_five_bad_values_files() -> None:
    assert len(BAD_VALUES) >= 5
