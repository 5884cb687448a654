"""The chart on the real test control plane (etcd, kube-apiserver with RBAC, controllers,
training-operator, kwok GPU nodes): helm install, the operator run as the chart's ServiceAccount
turning runs/qwen32b.yaml into a PyTorchJob, helm upgrade, helm uninstall, RBAC as the
ServiceAccount sees it (cluster-wide and namespaced), and every file in runs/ accepted by the apiserver.

No operator image is pulled here (there is no container runtime): the chart's Deployment is
scheduled onto a kwok node, which only pretends to run it, and the operator itself runs out of
cluster as `tac2sol operator` with a token of the chart's ServiceAccount, so the apiserver
enforces exactly the RBAC the chart grants.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tac2sol import __version__
from tac2sol.devtools import free_port
from tac2sol.operator import rbac
from tac2sol.operator.crd import CRD_FILE

pytestmark = pytest.mark.k8s

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "tac2sol"
RUNS = sorted((REPO / "runs").glob("*.yaml"))
SYSTEM_NS = "tac2sol-system"
TRAINER_REPO = "registry.test/tac2sol-trainer"
# The operator pod runs on a kwok node: keep it Running (the kwok Stages in hack/kwok/stages.yaml).
BASE_VALUES: dict[str, Any] = {
    "operator": {"podAnnotations": {"kwok.tac2sol.dev/outcome": "run-forever"}},
    "trainer": {"image": {"repository": TRAINER_REPO}},
}
Wait = Callable[..., Any]


@dataclass
class Release:
    name: str
    namespace: str
    service_account: str
    kubectl: Callable[..., subprocess.CompletedProcess[str]]
    helm: Callable[..., subprocess.CompletedProcess[str]]


def _helm_for(helm: Any, cp: Any) -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return helm.run(*args, "--kubeconfig", str(cp.kubeconfig), check=check, timeout=180)

    return run


def _install(helm: Any, cp: Any, tmp: Path, name: str, namespace: str, values: dict[str, Any]) -> Release:
    file = tmp / f"{name}-values.yaml"
    file.write_text(yaml.safe_dump(values))
    run = _helm_for(helm, cp)
    run("install", name, str(CHART), "--namespace", namespace, "--create-namespace", "--values", str(file),
        "--wait", "--timeout", "120s")  # fmt: skip
    sa = "tac2sol" if name == "tac2sol" else f"{name}-tac2sol"
    return Release(name, namespace, sa, cp.kubectl, run)


def _can(cp: Any, release: Release, verb: str, resource: str, namespace: str | None = None) -> bool:
    """What the apiserver's authorizer answers for the release's ServiceAccount (RESOURCE may be
    resource.group/subresource). A SubjectAccessReview, not `kubectl auth can-i`: can-i looks the
    resource up in discovery first and answers "no" for a kind the cluster does not serve yet
    (Trainer v2's, before its CRDs are installed), whatever the RBAC says."""
    resource, _, sub = resource.partition("/")
    plural, _, group = resource.partition(".")
    sa = f"system:serviceaccount:{release.namespace}:{release.service_account}"
    attributes = {
        "verb": verb,
        "group": group,
        "resource": plural,
        "subresource": sub,
        "namespace": namespace or "",
    }
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": sa,
            "groups": [
                "system:serviceaccounts",
                f"system:serviceaccounts:{release.namespace}",
                "system:authenticated",
            ],
            "resourceAttributes": attributes,
        },
    }
    proc = cp.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(review), check=False)
    assert proc.returncode == 0, proc.stderr
    return bool(json.loads(proc.stdout)["status"].get("allowed"))


Check = tuple[str, str, str | None]  # verb, resource, namespace (None: all namespaces)


def _denied_or_allowed(cp: Any, release: Release, checks: list[Check], allowed: bool) -> None:
    """Run every `kubectl auth can-i` check (4 at a time); fail listing each answer that differs."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda c: _can(cp, release, *c), checks))
    wrong = [
        f"{v} {r} in {ns or 'all namespaces'}"
        for (v, r, ns), a in zip(checks, answers, strict=True)
        if a != allowed
    ]
    assert not wrong, f"{release.service_account} {'cannot' if allowed else 'may'}: {wrong}"


def _rule_checks(rules: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(verb, resource.group[/sub]) for every verb of every rule."""
    out = []
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                base, _, sub = resource.partition("/")
                qualified = f"{base}.{group}" if group else base
                out += [(verb, f"{qualified}/{sub}" if sub else qualified) for verb in rule["verbs"]]
    return out


# Never granted, in any mode.
FORBIDDEN = [
    ("list", "secrets"),
    ("get", "secrets"),
    ("create", "pods/exec"),
    ("create", "pods"),
    ("delete", "pytorchjobs.kubeflow.org"),
    ("create", "deployments.apps"),
    ("create", "rolebindings.rbac.authorization.k8s.io"),
    ("impersonate", "serviceaccounts"),
]


@contextlib.contextmanager
def operator_as(cp: Any, release: Release, tmp: Path, wait: Wait) -> Iterator[Path]:
    """Run `tac2sol operator` out of cluster as the release's ServiceAccount, with the settings
    the chart rendered into its ConfigMap; yield its log file."""
    token = cp.kubectl("create", "token", release.service_account, "-n", release.namespace,
                       "--duration=3600s").stdout.strip()  # fmt: skip
    kubeconfig = tmp / f"{release.name}-sa.kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "test",
                        "cluster": {
                            "server": cp.server,
                            "certificate-authority-data": base64.b64encode(cp.ca_cert.read_bytes()).decode(),
                        },
                    }
                ],
                "users": [{"name": "sa", "user": {"token": token}}],
                "contexts": [{"name": "sa", "context": {"cluster": "test", "user": "sa"}}],
                "current-context": "sa",
            }
        )
    )
    settings = cp.get_json("configmap", f"{release.service_account}-settings", "-n", release.namespace)[
        "data"
    ]
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TAC2SOL_")},
        **settings,
        "TAC2SOL_METRICS_HOST": "127.0.0.1",  # out of cluster: not 0.0.0.0 on a shared machine
        "TAC2SOL_METRICS_PORT": str(port),
        "KUBECONFIG": str(kubeconfig),
        "PYTHONSAFEPATH": "1",
    }
    log = tmp / f"{release.name}-operator.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("tac2sol")), "operator"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def healthy() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"tac2sol operator exited {proc.returncode}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
                return s.recv(64).startswith(b"HTTP/1.0 200")
            return False

        wait("the operator's /healthz", healthy, timeout=60)
        yield log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _apply_run(cp: Any, namespace: str, name: str = "qwen32b") -> None:
    doc = yaml.safe_load((REPO / "runs" / "qwen32b.yaml").read_text())
    doc["metadata"]["name"] = name
    cp.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(doc))


def _job(cp: Any, namespace: str, name: str, wait: Wait, log: Path, timeout: float = 60) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        proc = cp.kubectl("get", "pytorchjob", name, "-n", namespace, "-o", "json", check=False)
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    try:
        job: dict[str, Any] = wait(f"PyTorchJob {namespace}/{name}", found, timeout=timeout)
        return job
    except AssertionError as exc:
        raise AssertionError(f"{exc}\noperator log:\n{log.read_text()[-4000:]}") from None


def _image(job: dict[str, Any]) -> str:
    return str(job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["image"])


@pytest.fixture(scope="module")
def system(control_plane: Any, helm: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    """The chart installed cluster-wide as release `tac2sol` in tac2sol-system."""
    tmp = tmp_path_factory.mktemp("helm-system")
    release = _install(helm, control_plane, tmp, "tac2sol", SYSTEM_NS, BASE_VALUES)
    yield release
    release.helm("uninstall", release.name, "--namespace", SYSTEM_NS, "--wait", check=False)


def test_install_creates_the_operator(control_plane: Any, system: Release, wait: Wait) -> None:
    status = json.loads(system.helm("status", "tac2sol", "-n", SYSTEM_NS, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    assert "kubectl apply -f runs/qwen32b.yaml" in status["info"]["notes"]
    assert control_plane.exists("crd", "trainingruns.tac2sol.dev")
    deploy = control_plane.get_json("deployment", "tac2sol", "-n", SYSTEM_NS)
    assert deploy["status"].get("availableReplicas") == 1, deploy["status"]
    pods = control_plane.get_json("pods", "-n", SYSTEM_NS, "-l", "app.kubernetes.io/component=operator")[
        "items"
    ]
    assert [p["spec"]["nodeName"].startswith("gpu-node-") for p in pods] == [True]
    assert pods[0]["spec"]["serviceAccountName"] == "tac2sol"


def test_every_run_file_is_accepted_by_the_apiserver(
    control_plane: Any, system: Release, namespace: str
) -> None:
    for run in RUNS:
        proc = control_plane.kubectl(
            "apply", "--dry-run=server", "-n", namespace, "-f", str(run), check=False
        )
        assert proc.returncode == 0, f"{run.relative_to(REPO)}: {proc.stderr.strip()}"
        assert "created (server dry run)" in proc.stdout, proc.stdout


def test_clusterwide_rbac_as_the_service_account(control_plane: Any, system: Release, namespace: str) -> None:
    needed = _rule_checks(rbac.rules())
    _denied_or_allowed(control_plane, system, [(v, r, namespace) for v, r in needed], allowed=True)
    _denied_or_allowed(
        control_plane,
        system,
        [(v, r, None) for v, r in needed if not r.startswith("customresource")],
        allowed=True,
    )
    forbidden: list[Check] = [(v, r, namespace) for v, r in FORBIDDEN]
    forbidden += [
        ("delete", "namespaces", None),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io", None),
    ]
    _denied_or_allowed(control_plane, system, forbidden, allowed=False)


def test_qwen32b_becomes_a_pytorchjob_then_upgrade_changes_it(
    control_plane: Any, system: Release, namespace: str, tmp_path: Path, wait: Wait
) -> None:
    with operator_as(control_plane, system, tmp_path, wait) as log:
        _apply_run(control_plane, namespace)
        job = _job(control_plane, namespace, "qwen32b", wait, log)
    assert _image(job) == f"{TRAINER_REPO}:{__version__}", "the trainer image comes from the chart's values"
    master = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert master["resources"]["limits"]["nvidia.com/gpu"] in (4, "4")
    before = control_plane.get_json("deployment", "tac2sol", "-n", SYSTEM_NS)

    # helm upgrade with changed values: new trainer tag, debug logs, no dashboards.
    changes = ["trainer.image.tag=next", "operator.logLevel=DEBUG", "monitoring.dashboards.enabled=false"]
    system.helm("upgrade", "tac2sol", str(CHART), "-n", SYSTEM_NS, "--reuse-values", "--wait",
                "--timeout", "120s", *(f"--set={c}" for c in changes))  # fmt: skip
    history = json.loads(system.helm("history", "tac2sol", "-n", SYSTEM_NS, "-o", "json").stdout)
    assert [h["status"] for h in history] == ["superseded", "deployed"]
    data = control_plane.get_json("configmap", "tac2sol-settings", "-n", SYSTEM_NS)["data"]
    assert data["TAC2SOL_TRAINER_IMAGE"] == f"{TRAINER_REPO}:next" and data["TAC2SOL_LOG_LEVEL"] == "DEBUG"
    after = control_plane.get_json("deployment", "tac2sol", "-n", SYSTEM_NS)
    key = "checksum/settings"
    assert (
        before["spec"]["template"]["metadata"]["annotations"][key]
        != after["spec"]["template"]["metadata"]["annotations"][key]
    ), "changed settings roll the operator pod"
    assert after["metadata"]["generation"] > before["metadata"]["generation"]
    dashboards = control_plane.get_json("configmaps", "-n", SYSTEM_NS, "-l", "grafana_dashboard=1")["items"]
    assert dashboards == [], "dashboards turned off: their ConfigMaps are gone"

    with operator_as(control_plane, system, tmp_path, wait) as log:
        _apply_run(control_plane, namespace, "qwen32b-next")
        job = _job(control_plane, namespace, "qwen32b-next", wait, log)
    assert _image(job) == f"{TRAINER_REPO}:next"


def test_namespaced_release(
    control_plane: Any, system: Release, helm: Any, namespace: str, tmp_path: Path, wait: Wait
) -> None:
    """A second release watching one namespace: a Role there, nothing cluster-wide, jobs only there."""
    other = f"{namespace}-other"
    control_plane.kubectl("create", "namespace", other)
    values = {**BASE_VALUES, "operator": {**BASE_VALUES["operator"], "watchNamespace": namespace}}
    team = _install(helm, control_plane, tmp_path, "team", "tac2sol-team", values)
    try:
        notes = json.loads(team.helm("status", "team", "-n", "tac2sol-team", "-o", "json").stdout)["info"][
            "notes"
        ]
        assert f"kubectl apply -n {namespace} -f runs/qwen32b.yaml" in notes
        assert "rollout status deployment/team-tac2sol" in notes
        assert control_plane.exists("role", "team-tac2sol", "-n", namespace)
        assert not control_plane.exists("clusterrole", "team-tac2sol")
        needed = _rule_checks(rbac.rules(namespaced=True))
        _denied_or_allowed(control_plane, team, [(v, r, namespace) for v, r in needed], allowed=True)
        forbidden: list[Check] = [(v, r, ns) for v, r in needed for ns in (other, None)]
        forbidden += [(v, r, namespace) for v, r in FORBIDDEN]
        forbidden += [("list", "customresourcedefinitions.apiextensions.k8s.io", None)]
        _denied_or_allowed(control_plane, team, forbidden, allowed=False)

        with operator_as(control_plane, team, tmp_path, wait) as log:
            _apply_run(control_plane, other, "elsewhere")
            _apply_run(control_plane, namespace)
            job = _job(control_plane, namespace, "qwen32b", wait, log)
            assert _image(job) == f"{TRAINER_REPO}:{__version__}"
            time.sleep(2)  # the run in the other namespace had as long as this one took, and more
            assert not control_plane.exists("pytorchjob", "elsewhere", "-n", other)
    finally:
        team.helm("uninstall", "team", "-n", "tac2sol-team", "--wait", check=False)
        control_plane.kubectl("delete", "namespace", other, "--wait=false", check=False)


def test_uninstall_removes_what_install_created(control_plane: Any, system: Release) -> None:
    manifest = system.helm("get", "manifest", "tac2sol", "-n", SYSTEM_NS).stdout
    created = [d for d in yaml.safe_load_all(manifest) if d]
    kinds = {
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "Deployment",
        "NetworkPolicy",
        "ClusterRole",
        "ClusterRoleBinding",
    }
    if control_plane.exists("crd", "clustertrainingruntimes.trainer.kubeflow.org"):
        kinds.add("ClusterTrainingRuntime")  # trainJob.runtime.create auto: Trainer v2 is served
    assert {o["kind"] for o in created} == kinds  # dashboards were turned off by the upgrade above
    system.helm("uninstall", "tac2sol", "-n", SYSTEM_NS, "--wait", "--timeout", "120s")
    left = []
    for obj in created:
        ns = obj["metadata"].get("namespace")
        args = [obj["kind"].lower(), obj["metadata"]["name"], *(["-n", ns] if ns else [])]
        if control_plane.exists(*args):
            left.append("/".join(args))
    assert not left, f"helm uninstall left {left}"
    assert control_plane.get_json("pods", "-n", SYSTEM_NS)["items"] == [] or all(
        p["metadata"].get("deletionTimestamp")
        for p in control_plane.get_json("pods", "-n", SYSTEM_NS)["items"]
    )
    # Helm never deletes what it installed from crds/ (deleting the CRD would delete every run).
    assert control_plane.exists("crd", "trainingruns.tac2sol.dev")


def test_templated_crd_is_adopted_upgraded_and_kept(
    control_plane: Any, helm: Any, namespace: str, tmp_path: Path
) -> None:
    """crds.templated: a release takes over the CRD that crds/ installed (the adoption the README
    shows), `helm upgrade` then updates it, and `helm uninstall` keeps it and the runs."""
    crd = "crd/trainingruns.tac2sol.dev"
    _apply_run(control_plane, namespace, "survivor")
    control_plane.kubectl("label", crd, "app.kubernetes.io/managed-by=Helm", "--overwrite")
    control_plane.kubectl("annotate", crd, "meta.helm.sh/release-name=crds",
                          "meta.helm.sh/release-namespace=tac2sol-crds", "--overwrite")  # fmt: skip
    values = {**BASE_VALUES, "crds": {"templated": True}, "rbac": {"create": False},
              "serviceAccount": {"create": False, "name": "default"}}  # fmt: skip
    file = tmp_path / "crds-values.yaml"
    file.write_text(yaml.safe_dump(values))
    run = _helm_for(helm, control_plane)
    run("install", "crds", str(CHART), "-n", "tac2sol-crds", "--create-namespace", "--skip-crds",
        "--values", str(file))  # fmt: skip
    try:
        labels = control_plane.get_json(crd)["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "crds"
        # A later chart version with a changed CRD: the upgrade applies it (crds/ alone would not).
        newer = tmp_path / "chart"
        shutil.copytree(CHART, newer)
        crd_file = newer / "crds" / CRD_FILE
        doc = yaml.safe_load(crd_file.read_text())
        doc["spec"]["names"]["shortNames"] = ["tr", "trun"]
        crd_file.write_text(yaml.safe_dump(doc))
        run("upgrade", "crds", str(newer), "-n", "tac2sol-crds", "--skip-crds", "--reuse-values")
        assert control_plane.get_json(crd)["spec"]["names"]["shortNames"] == ["tr", "trun"]
    finally:
        run("uninstall", "crds", "-n", "tac2sol-crds", "--wait", check=False)
    assert control_plane.exists(crd), "helm.sh/resource-policy: keep"
    assert control_plane.exists("trainingrun", "survivor", "-n", namespace)


def test_plain_manifests_apply_with_kustomize(control_plane: Any, system: Release) -> None:
    """`kubectl apply -k manifests/` (after the helm release is gone): the same operator and RBAC."""
    control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-k", str(REPO / "manifests"))
    files = sorted((REPO / "manifests" / "operator").glob("*.yaml"))
    try:
        for doc in (d for f in files for d in yaml.safe_load_all(f.read_text()) if d):
            ns = doc["metadata"].get("namespace")
            assert control_plane.exists(
                doc["kind"].lower(), doc["metadata"]["name"], *(["-n", ns] if ns else [])
            )
        assert control_plane.get_json("clusterrole", "tac2sol")["rules"] == rbac.rules()
        plain = Release("tac2sol", SYSTEM_NS, "tac2sol", control_plane.kubectl, system.helm)
        assert _can(control_plane, plain, "create", "pytorchjobs.kubeflow.org")
        assert not _can(control_plane, plain, "list", "secrets")
    finally:
        kept = [f"--filename={f}" for f in files if f.name != "namespace.yaml"]
        control_plane.kubectl("delete", "--wait=false", "--ignore-not-found", *kept, check=False)
