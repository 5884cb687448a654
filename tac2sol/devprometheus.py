"""A real Prometheus for the real node, discovering what it scrapes as kube-prometheus-stack would.

`start(cluster, ...)` runs hack/install-tools.sh's `prometheus` in the real node's network
namespace (pod addresses exist only there; it listens on that namespace's 127.0.0.1), with
`kubernetes_sd_configs` against the test apiserver at NODE_IP:PORT (the address hack/node.sh
forwards for pods) as a ServiceAccount of its own that may only list and watch in the namespace.
Its scrape configs are made from the chart's own PodMonitor and ServiceMonitor, rendered with
`helm template` (`chart_monitors`), the way prometheus-operator turns them into Prometheus config
(`scrape_configs`): the trainer pods' label, port names, path and relabelings have one owner,
charts/tac2sol.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tac2sol.devtools import HACK, REPO, DevCluster, DevToolsError, bin_dir, free_port, stop_group
from tac2sol.observability import names

CHART = REPO / "charts" / "tac2sol"
NODE_IP = "10.244.0.1"  # hack/cluster.sh's NODE_IP: the apiserver's address for pods
READY_TIMEOUT_S = 60
# What kubernetes_sd_configs (roles pod and endpointslice) lists and watches.
SD_RULES = [
    {"apiGroups": [""], "resources": ["pods", "services", "endpoints"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
]


def chart_monitors(
    release: str, namespace: str, values: Path | None = None, **sets: str
) -> list[dict[str, Any]]:
    """The chart's PodMonitor and ServiceMonitor for `release` in `namespace` (`helm template` with
    both enabled, `values` and `--set` NAME=VALUE as for the installed release)."""
    cmd = [str(bin_dir() / "helm"), "template", release, str(CHART), "--namespace", namespace]
    cmd += ["--set", "monitoring.podMonitor.enabled=true", "--set", "monitoring.serviceMonitor.enabled=true"]
    if values is not None:
        cmd += ["--values", str(values)]
    for name, value in sets.items():
        cmd += ["--set", f"{name}={value}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise DevToolsError(f"helm template exited {proc.returncode}: {proc.stderr[-3000:]}")
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return [d for d in docs if d.get("kind") in ("PodMonitor", "ServiceMonitor")]


def _label(name: str) -> str:
    """A label name as a discovery meta label suffix (tac2sol.dev/metrics -> tac2sol_dev_metrics)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _selected(prefix: str, match_labels: Mapping[str, str]) -> list[dict[str, Any]]:
    """Keep only targets whose object carries every label of a matchLabels selector."""
    return [
        {
            "action": "keep",
            "source_labels": [f"{prefix}_label_{_label(k)}", f"{prefix}_labelpresent_{_label(k)}"],
            "regex": f"({re.escape(v)});true",
        }
        for k, v in sorted(match_labels.items())
    ]


def _relabelings(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A monitor's relabelings (camelCase, as in the CRD) as Prometheus relabel_configs."""
    names = {"sourceLabels": "source_labels", "targetLabel": "target_label"}
    out = []
    for rule in rules:
        converted = {names.get(k, k): v for k, v in rule.items()}
        if "action" in converted:
            converted["action"] = str(converted["action"]).lower()
        out.append(converted)
    return out


def scrape_configs(monitors: list[dict[str, Any]], sd: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Prometheus scrape configs for PodMonitors and ServiceMonitors (the subset of
    prometheus-operator's translation that matchLabels selectors, namespace names, paths, ports,
    intervals, honorLabels and relabelings need); `sd` is what each kubernetes_sd_config adds
    (api_server, authorization, tls_config)."""
    configs = []
    for monitor in monitors:
        kind, meta, spec = monitor["kind"], monitor["metadata"], monitor["spec"]
        names = (spec.get("namespaceSelector") or {}).get("matchNames")
        if not names:
            raise DevToolsError(
                f"{kind} {meta['name']}: only a namespaceSelector with matchNames is supported"
            )
        pod = kind == "PodMonitor"
        role, prefix = (
            ("pod", "__meta_kubernetes_pod") if pod else ("endpointslice", "__meta_kubernetes_service")
        )
        endpoints = spec["podMetricsEndpoints"] if pod else spec["endpoints"]
        for i, endpoint in enumerate(endpoints):
            relabel: list[dict[str, Any]] = [
                {
                    "action": "drop",
                    "source_labels": ["__meta_kubernetes_pod_phase"],
                    "regex": "(Failed|Succeeded)",
                },
                *_selected(prefix, spec["selector"].get("matchLabels") or {}),
            ]
            if "port" in endpoint:
                port_label = (
                    "__meta_kubernetes_pod_container_port_name"
                    if pod
                    else "__meta_kubernetes_endpointslice_port_name"
                )
                relabel.append({"action": "keep", "source_labels": [port_label], "regex": endpoint["port"]})
            relabel += [
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
                *_relabelings(endpoint.get("relabelings") or []),
            ]
            config: dict[str, Any] = {
                "job_name": f"{kind[0].lower()}{kind[1:]}/{meta['namespace']}/{meta['name']}/{i}",
                "kubernetes_sd_configs": [{"role": role, "namespaces": {"names": names}, **sd}],
                "metrics_path": endpoint.get("path", "/metrics"),
                "honor_labels": bool(endpoint.get("honorLabels", False)),
                "relabel_configs": relabel,
            }
            if "interval" in endpoint:
                config["scrape_interval"] = endpoint["interval"]
                config["scrape_timeout"] = endpoint["interval"]
            configs.append(config)
    return configs


@dataclass
class NodePrometheus:
    """A Prometheus in the real node's network namespace; its HTTP API is reached through
    `hack/cluster.sh node-exec curl` (it listens on that namespace's loopback only)."""

    cluster: DevCluster
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        proc = self.cluster.node_exec("curl", "-s", "--max-time", "20", url, timeout=30)
        try:
            payload = json.loads(proc.stdout)
        except json.JSONDecodeError:
            raise DevToolsError(f"Prometheus {path}: {proc.stdout[-500:]}{proc.stderr[-500:]}") from None
        if payload.get("status") != "success":
            raise DevToolsError(f"Prometheus {path} {params}: {payload.get('error', payload)}")
        return payload["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def active_targets(self) -> list[dict[str, Any]]:
        targets: list[dict[str, Any]] = self.api("targets", state="active")["activeTargets"]
        return targets

    def train_steps(self, namespace: str, run: str) -> dict[str, tuple[str, float]]:
        """The highest `tac2sol_train_steps_total` scraped from each pod of `run` in the last
        hour (the pods' targets go once they finish; their series stay): {pod: (rank, steps)}."""
        selector = f'namespace="{namespace}", run="{run}"'
        expr = f"max by (pod, rank) (max_over_time({names.TRAIN_STEPS}{{{selector}}}[1h]))"
        return {r["metric"]["pod"]: (r["metric"]["rank"], float(r["value"][1])) for r in self.query(expr)}


def _kubectl(cluster: DevCluster, *args: str, input: str | None = None) -> str:
    proc = subprocess.run(
        [str(bin_dir() / "kubectl"), *args],
        input=input,
        capture_output=True,
        text=True,
        env=cluster.env,
        timeout=60,
    )
    if proc.returncode != 0:
        raise DevToolsError(f"kubectl {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def _service_account(cluster: DevCluster, namespaces: list[str], name: str) -> str:
    """A ServiceAccount `name` in the first namespace that may list and watch what discovery needs
    in each of `namespaces`; returns a token for it (1 h)."""
    home = namespaces[0]
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": home}}
    ]
    for ns in namespaces:
        meta = {"name": name, "namespace": ns}
        docs.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": meta,
                "rules": SD_RULES,
            }
        )
        docs.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": meta,
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": home}],
            }
        )
    _kubectl(cluster, "apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))
    return _kubectl(cluster, "-n", home, "create", "token", name, "--duration=1h").strip()


@contextmanager
def start(
    cluster: DevCluster, monitors: list[dict[str, Any]], workdir: Path, name: str = "prometheus"
) -> Iterator[NodePrometheus]:
    """Prometheus scraping what `monitors` select, in the node's network namespace, until the block
    ends. Discovery runs as ServiceAccount `name` (made here) in the monitors' namespaces."""
    namespaces = sorted({ns for m in monitors for ns in m["spec"]["namespaceSelector"]["matchNames"]})
    if not namespaces:
        raise DevToolsError("no PodMonitor or ServiceMonitor to scrape")
    workdir.mkdir(parents=True, exist_ok=True)
    token = workdir / "token"
    token.write_text(_service_account(cluster, namespaces, name))
    sd = {
        "api_server": f"https://{NODE_IP}:{cluster.env['TAC2SOL_APISERVER_PORT']}",
        "authorization": {"credentials_file": str(token)},
        "tls_config": {"ca_file": str(cluster.ca_cert)},
    }
    config = {"global": {"scrape_interval": "15s"}, "scrape_configs": scrape_configs(monitors, sd)}
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()  # free on the host's loopback; the node's holds only its own few servers
    log_path = workdir / "prometheus.log"
    command = ["bash", str(HACK / "cluster.sh"), "node-exec", str(bin_dir() / "prometheus")]
    command += [f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}"]
    command += [f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=cluster.env, start_new_session=True
        )
    prom = NodePrometheus(cluster, f"http://127.0.0.1:{port}", proc, log_path)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while cluster.node_exec("curl", "-sf", f"{prom.url}/-/ready").returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise DevToolsError(
                    f"prometheus did not become ready (exit {proc.poll()}): {prom.log()[-2000:]}"
                )
            time.sleep(0.5)
        yield prom
    finally:
        stop_group(proc)
