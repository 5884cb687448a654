"""The operator against the real test control plane: `tac2sol operator --namespace NS` runs as a
real process, as a ServiceAccount holding exactly the RBAC rules of `tac2sol.operator.rbac`; the
training-operator makes the pods, kube-scheduler places them on kwok's fake GPU nodes, and kwok
drives them to success or failure as their annotations say. Nothing here is mocked.

The one stand-in: kwok pods have no network, so the progress test serves a real trainer metrics
registry on 127.0.0.1 and points the master pod's status.podIP there.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import start_http_server

from tac2sol.devtools import free_port
from tac2sol.operator import rbac
from tac2sol.trainer.metrics import TrainerMetrics

pytestmark = pytest.mark.k8s

REPO = Path(__file__).resolve().parents[2]
RUNS = REPO / "runs"
TAC2SOL = Path(sys.executable).parent / "tac2sol"
SYSTEM_NS = "tac2sol-system"
SA = "tac2sol-operator"


# --- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crd(control_plane: Any, wait: Any) -> None:
    control_plane.kubectl(
        "apply", "--server-side", "-f", str(REPO / "manifests" / "crds" / "trainingruns.tac2sol.dev.yaml")
    )
    control_plane.kubectl(
        "wait", "--for=condition=Established", "crd/trainingruns.tac2sol.dev", "--timeout=30s"
    )


@pytest.fixture(scope="module")
def operator_kubeconfig(control_plane: Any, crd: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig of ServiceAccount tac2sol-system/tac2sol-operator, which may do only what the
    ClusterRole rendered from `rbac.RULES` allows (bound per test namespace by a RoleBinding)."""
    cp = control_plane
    if not cp.exists("namespace", SYSTEM_NS):
        cp.kubectl("create", "namespace", SYSTEM_NS)
    cp.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": SA, "namespace": SYSTEM_NS}})
    cp.apply(rbac.cluster_role())
    token = cp.kubectl("-n", SYSTEM_NS, "create", "token", SA, "--duration=3h").stdout.strip()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "test", "cluster": {"server": cp.server, "certificate-authority": str(cp.ca_cert)}}
        ],
        "users": [{"name": SA, "user": {"token": token}}],
        "contexts": [{"name": SA, "context": {"cluster": "test", "user": SA}}],
        "current-context": SA,
    }
    path = tmp_path_factory.mktemp("operator") / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


@dataclass
class OperatorProcess:
    """One `tac2sol operator` process; its output goes to a log file the assertions quote."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    _port: int | None = field(default=None)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    @property
    def port(self) -> int:
        if self._port is None:
            match = re.search(r"serving operator metrics and /healthz on [^:]+:(\d+)", self.log())
            assert match, f"the operator did not say where it serves /metrics:\n{self.tail()}"
            self._port = int(match.group(1))
        return self._port

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as rsp:
                return rsp.status, rsp.read().decode()
        except OSError as exc:
            return 0, str(exc)

    def metric(self, name: str, **labels: str) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        _, text = self.get("/metrics")
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return 0.0

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def start_operator(
    control_plane: Any, namespace: str, operator_kubeconfig: Path, tmp_path: Path, wait: Any
) -> Iterator[Callable[..., OperatorProcess]]:
    """`start_operator()` runs `tac2sol operator --namespace <the test's namespace>` as the SA;
    `start_operator(cluster_wide=True)` runs it for all namespaces (the test binds the ClusterRole)."""
    control_plane.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": SA, "namespace": namespace},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": rbac.CLUSTER_ROLE_NAME,
            },
            "subjects": [{"kind": "ServiceAccount", "name": SA, "namespace": SYSTEM_NS}],
        }
    )
    started: list[OperatorProcess] = []

    def start(*extra: str, cluster_wide: bool = False, env: dict[str, str] | None = None) -> OperatorProcess:
        log_path = tmp_path / f"operator-{len(started)}.log"
        scope = [] if cluster_wide else ["--namespace", namespace]
        env = {
            **control_plane.env,
            **(env or {}),
            "KUBECONFIG": str(operator_kubeconfig),
            "PYTHONSAFEPATH": "1",
        }
        env.pop("TAC2SOL_LOG_FORMAT", None)
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                [
                    str(TAC2SOL),
                    "operator",
                    *scope,
                    "--metrics-port",
                    "0",
                    "--trainer-image",
                    "tac2sol/trainer:e2e",
                    *extra,
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        op = OperatorProcess(proc, log_path)
        started.append(op)

        def healthy() -> bool:
            assert proc.poll() is None, f"the operator exited with {proc.returncode}:\n{op.tail()}"
            return "serving operator metrics" in op.log() and op.get("/healthz")[0] == 200

        wait("the operator's /healthz", healthy, timeout=60)
        return op

    yield start
    for op in started:
        op.stop()
        if op.proc.returncode not in (0, -signal.SIGTERM, -signal.SIGKILL):
            print(f"--- operator log ({op.log_path}):\n{op.tail(80)}")


@pytest.fixture
def claims(control_plane: Any, namespace: str) -> Iterator[None]:
    """The PVCs the runs in runs/ name (tac2sol-data, tac2sol-output), bound to throwaway PVs."""
    pvs = []
    for claim, modes in (("tac2sol-data", ["ReadOnlyMany"]), ("tac2sol-output", ["ReadWriteMany"])):
        pv = f"{namespace}-{claim}"[:63]
        pvs.append(pv)
        control_plane.apply(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": pv},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": modes,
                    "storageClassName": "",
                    "hostPath": {"path": "/nonexistent/kwok-pods-never-mount-it"},
                    "claimRef": {"namespace": namespace, "name": claim},
                },
            }
        )
        control_plane.apply(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim, "namespace": namespace},
                "spec": {
                    "accessModes": modes,
                    "storageClassName": "",
                    "volumeName": pv,
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            }
        )
    yield
    control_plane.kubectl("delete", "pv", *pvs, "--wait=false", "--ignore-not-found", check=False)


# --- helpers ----------------------------------------------------------------------------------------


def run_manifest(file: str, name: str | None = None, **spec: Any) -> dict[str, Any]:
    """A run from runs/<file>.yaml with `spec` changes (`resources__podAnnotations=...`)."""
    data = yaml.safe_load((RUNS / f"{file}.yaml").read_text())
    if name:
        data["metadata"]["name"] = name
    for dotted, value in spec.items():
        node = data["spec"]
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return data


def kwok(outcome: str = "succeed", seconds: int = 1, exit_code: int | None = None) -> dict[str, str]:
    """Pod annotations that tell kwok how the trainer container ends (hack/kwok/stages.yaml)."""
    out = {"kwok.tac2sol.dev/outcome": outcome, "kwok.tac2sol.dev/run-seconds": str(seconds)}
    if exit_code is not None:
        out["kwok.tac2sol.dev/exit-code"] = str(exit_code)
    return out


def get_run(cp: Any, ns: str, name: str) -> dict[str, Any]:
    return dict(cp.get_json("-n", ns, "trainingrun", name))


def status(cp: Any, ns: str, name: str) -> dict[str, Any]:
    return dict(get_run(cp, ns, name).get("status") or {})


def cond(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions") or [] if c["type"] == type_), {})


def wait_phase(
    cp: Any, ns: str, name: str, phase: str, wait: Any, op: OperatorProcess, timeout: float = 60
) -> dict:
    def probe() -> dict[str, Any] | None:
        assert op.proc.poll() is None, f"the operator exited:\n{op.tail()}"
        st = status(cp, ns, name)
        return st if st.get("phase") == phase else None

    try:
        return dict(wait(f"TrainingRun {name} to be {phase}", probe, timeout=timeout))
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\nstatus: {json.dumps(status(cp, ns, name))[:3000]}\n{op.tail()}"
        ) from None


def events(cp: Any, ns: str, name: str) -> list[str]:
    items = cp.get_json(
        "-n", ns, "events", "--field-selector", f"involvedObject.name={name},involvedObject.kind=TrainingRun"
    )
    # Posted one after another: the resourceVersion orders them (timestamps have 1 s resolution).
    return [e["reason"] for e in sorted(items["items"], key=lambda e: int(e["metadata"]["resourceVersion"]))]


def children(cp: Any, ns: str, kind: str) -> list[dict[str, Any]]:
    return list(cp.get_json("-n", ns, kind, "-l", "app.kubernetes.io/managed-by=tac2sol-operator")["items"])


# --- tests ------------------------------------------------------------------------------------------


def test_qwen32b_becomes_a_pytorchjob_that_runs_to_success(
    control_plane: Any, namespace: str, claims: None, start_operator: Any, wait: Any
) -> None:
    cp, ns = control_plane, namespace
    op = start_operator()
    t0 = time.monotonic()
    cp.kubectl("apply", "-n", ns, "-f", str(RUNS / "qwen32b.yaml"))
    job = wait("PyTorchJob qwen32b", lambda: cp.exists("-n", ns, "pytorchjob", "qwen32b"), timeout=30)
    created_after = time.monotonic() - t0
    assert job and created_after < 10, f"the job took {created_after:.1f} s"

    job = cp.get_json("-n", ns, "pytorchjob", "qwen32b")
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master"} and replicas["Master"]["replicas"] == 1  # 1 node x 4 GPUs as planned
    container = replicas["Master"]["template"]["spec"]["containers"][0]
    assert container["name"] == "pytorch" and container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert job["spec"]["nprocPerNode"] == "4"
    train = yaml.safe_load(cp.get_json("-n", ns, "configmap", "qwen32b-train-config")["data"]["train.yaml"])
    assert train["distributed"]["precision"] == "fp16" and train["distributed"]["strategy"] == "ddp"

    st = wait_phase(cp, ns, "qwen32b", "Succeeded", wait, op, timeout=90)
    assert st["plan"]["strategy"] == "ddp" and st["plan"]["worldSize"] == 4 and st["plan"]["fits"] is True
    assert st["jobRef"] == {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "name": "qwen32b",
        "namespace": ns,
        "uid": job["metadata"]["uid"],
    }
    assert st["observedGeneration"] == 1 and cond(st, "Succeeded")["status"] == "True"
    # The training-operator made the pod; the scheduler put it on a fake GPU node; kwok ran it.
    assert not get_run(cp, ns, "qwen32b")["metadata"].get("finalizers")
    (pod,) = cp.get_json("-n", ns, "pods", "-l", "training.kubeflow.org/job-name=qwen32b")["items"]
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "PyTorchJob"
    assert pod["spec"]["nodeName"] in ("gpu-node-0", "gpu-node-1")
    assert pod["status"]["phase"] == "Succeeded"
    # An Event per transition, in order.
    reasons = events(cp, ns, "qwen32b")
    # A new run goes straight to its job: no Pending step, so no Accepted Event.
    assert [r for r in reasons if r in ("Accepted", "JobApplied", "JobRunning", "JobSucceeded")] == [
        "JobApplied",
        "JobRunning",
        "JobSucceeded",
    ], f"{reasons}\n{op.tail()}"
    table = cp.kubectl("get", "trainingruns", "-n", ns, "-o", "wide").stdout
    assert re.search(r"qwen32b\s+Succeeded\s+qwen2\.5-coder-32b\s+4\s+rtx8000\s+ddp", table), table
    # The operator's own metrics saw it.
    assert op.metric("tac2sol_operator_jobs_created_total", kind="PyTorchJob") == 1
    assert op.metric("tac2sol_trainingruns", phase="Succeeded") == 1
    assert op.metric("tac2sol_operator_reconciliations_total", result="success") >= 1


def test_a_failing_pod_fails_the_run_with_its_reason(
    control_plane: Any, namespace: str, claims: None, start_operator: Any, wait: Any
) -> None:
    cp, ns = control_plane, namespace
    op = start_operator()
    cp.apply(run_manifest("qwen32b", "bad", resources__podAnnotations=kwok("fail", exit_code=3)), ns)
    st = wait_phase(cp, ns, "bad", "Failed", wait, op, timeout=90)
    failed = cond(st, "Failed")
    assert failed["status"] == "True" and failed["reason"] == "JobFailed"
    assert "pod bad-master-0 container pytorch exited with code 3 (Error" in st["message"]
    assert "Warning" in cp.kubectl("get", "events", "-n", ns, "--field-selector", "reason=JobFailed").stdout


def test_a_killed_pod_restarts_the_job_and_the_run_says_so(
    control_plane: Any, namespace: str, claims: None, start_operator: Any, wait: Any
) -> None:
    """Exit code 137 (SIGKILL: OOM, preemption) is retryable under restartPolicy ExitCode: the
    training-operator re-creates the pod (Restarting) and the run shows it."""
    cp, ns = control_plane, namespace
    op = start_operator()
    cp.apply(
        run_manifest("qwen32b", "oom", resources__podAnnotations=kwok("fail", seconds=1, exit_code=137)), ns
    )

    def restarting() -> dict[str, Any] | None:
        assert op.proc.poll() is None, op.tail()
        st = status(cp, ns, "oom")
        return st if cond(st, "Running").get("reason") == "Restarting" else None

    st = wait("TrainingRun oom to show Restarting", restarting, timeout=60)
    assert st["phase"] == "Running" and cond(st, "Failed")["status"] == "False"
    assert "Restarting" in events(cp, ns, "oom")


def test_deepseek_v3_fails_with_the_arithmetic_and_no_job(
    control_plane: Any, namespace: str, start_operator: Any, wait: Any
) -> None:
    cp, ns = control_plane, namespace
    op = start_operator()
    cp.kubectl("apply", "-n", ns, "-f", str(RUNS / "deepseek-v3.yaml"))
    st = wait_phase(cp, ns, "deepseek-v3", "Failed", wait, op)
    assert cond(st, "Failed")["reason"] == "PlanDoesNotFit" and cond(st, "Planned")["status"] == "False"
    assert "4-bit weights alone: 669.1B linear params x 0.516 B" in st["message"]
    assert "= 349 GB" in st["message"] and "4 x 48.0 GiB = 192.0 GiB" in st["message"]
    assert "Ways out: more GPUs" in st["message"]
    assert st["plan"]["fits"] is False
    time.sleep(1)
    assert children(cp, ns, "pytorchjobs") == [] and children(cp, ns, "configmaps") == []
    assert "PlanDoesNotFit" in events(cp, ns, "deepseek-v3")


def test_a_dataset_uri_run_gets_a_job_that_downloads_under_the_output(
    control_plane: Any, namespace: str, claims: None, start_operator: Any, wait: Any
) -> None:
    """spec.dataset.uri: no data claim, data.uri in the trainer config, credentials by envFrom."""
    cp, ns = control_plane, namespace
    op = start_operator()
    uri = "s3://tac2sol-data/sets/tac2sol-500.jsonl"
    cp.apply(run_manifest("qwen32b", "from-s3", dataset={"uri": uri, "credentialsSecret": "s3-creds"}), ns)
    wait("PyTorchJob from-s3", lambda: cp.exists("-n", ns, "pytorchjob", "from-s3"), timeout=30)
    train = yaml.safe_load(cp.get_json("-n", ns, "configmap", "from-s3-train-config")["data"]["train.yaml"])
    assert train["data"]["uri"] == uri and "path" not in train["data"]
    assert train["output_dir"] == "/output/qwen32b"
    job = cp.get_json("-n", ns, "pytorchjob", "from-s3")
    pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert [v["name"] for v in pod["volumes"]] == ["config", "dshm", "output"]
    assert pod["containers"][0]["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    st = wait(
        "the run to be planned",
        lambda: s if cond(s := status(cp, ns, "from-s3"), "Planned").get("status") == "True" else None,
        timeout=30,
    )
    assert st.get("phase") != "Failed" and st["plan"]["fits"] is True, f"{st}\n{op.tail()}"


def test_an_invalid_spec_fails_and_a_fixed_one_is_planned_again(
    control_plane: Any, namespace: str, claims: None, start_operator: Any, wait: Any
) -> None:
    """The CRD schema cannot know the model catalog; the operator's pydantic models do."""
    cp, ns = control_plane, namespace
    op = start_operator()
    cp.apply(run_manifest("qwen32b", "typo", model={"name": "qwen-coder-32b"}), ns)
    st = wait_phase(cp, ns, "typo", "Failed", wait, op)
    assert cond(st, "Failed")["reason"] == "InvalidSpec"
    assert "spec.model.name: 'qwen-coder-32b' is not in the catalog" in st["message"]
    assert not cp.exists("-n", ns, "pytorchjob", "typo")
    cp.kubectl(
        "patch",
        "-n",
        ns,
        "trainingrun",
        "typo",
        "--type=merge",
        "-p",
        '{"spec":{"model":{"name":"qwen2.5-coder-32b"}}}',
    )
    wait("PyTorchJob typo after the fix", lambda: cp.exists("-n", ns, "pytorchjob", "typo"), timeout=30)
    st = wait_phase(cp, ns, "typo", "Succeeded", wait, op, timeout=90)
    assert st["observedGeneration"] == 2 and cond(st, "Failed")["status"] == "False"


def test_suspend_and_resume(
    control_plane: Any, namespace: str, claims: None, start_operator: Any, wait: Any
) -> None:
    cp, ns = control_plane, namespace
    op = start_operator()
    cp.apply(run_manifest("qwen32b", "pausable", resources__podAnnotations=kwok("run-forever")), ns)
    wait_phase(cp, ns, "pausable", "Running", wait, op, timeout=60)
    cp.kubectl(
        "patch", "-n", ns, "trainingrun", "pausable", "--type=merge", "-p", '{"spec":{"suspend":true}}'
    )
    st = wait_phase(cp, ns, "pausable", "Suspended", wait, op)
    assert cp.get_json("-n", ns, "pytorchjob", "pausable")["spec"]["runPolicy"]["suspend"] is True
    assert cond(st, "SpecChangeRejected")["status"] == "False"  # suspend is the one change a job takes
    wait(
        "the suspended job's pods to go",
        lambda: not cp.get_json("-n", ns, "pods", "-l", "training.kubeflow.org/job-name=pausable")["items"],
        timeout=30,
    )
    cp.kubectl(
        "patch", "-n", ns, "trainingrun", "pausable", "--type=merge", "-p", '{"spec":{"suspend":false}}'
    )
    wait_phase(cp, ns, "pausable", "Running", wait, op, timeout=60)
    assert cp.get_json("-n", ns, "pytorchjob", "pausable")["spec"]["runPolicy"]["suspend"] is False
    assert [r for r in events(cp, ns, "pausable") if r.startswith("Job")][-2:] == [
        "JobSuspended",
        "JobRunning",
    ]


def test_a_spec_change_while_the_job_exists_is_rejected_and_reconciling_again_changes_nothing(
    control_plane: Any, namespace: str, claims: None, start_operator: Any, wait: Any
) -> None:
    cp, ns = control_plane, namespace
    op = start_operator()
    cp.apply(run_manifest("qwen32b", "steady", resources__podAnnotations=kwok("run-forever")), ns)
    wait_phase(cp, ns, "steady", "Running", wait, op)
    job_before = cp.get_json("-n", ns, "pytorchjob", "steady")
    cm_before = cp.get_json("-n", ns, "configmap", "steady-train-config")

    cp.kubectl(
        "patch",
        "-n",
        ns,
        "trainingrun",
        "steady",
        "--type=merge",
        "-p",
        '{"spec":{"training":{"learningRate":0.00005}}}',
    )
    rejected = wait(
        "SpecChangeRejected",
        lambda: cond(status(cp, ns, "steady"), "SpecChangeRejected").get("status") == "True",
    )
    assert rejected
    st = status(cp, ns, "steady")
    assert "spec.training.learningRate" in cond(st, "SpecChangeRejected")["message"]
    assert st["phase"] == "Running"

    # Restarting the operator resumes the run: the same server-side apply again, which is a no-op.
    op.stop()
    op = start_operator()
    wait(
        "the restarted operator to reconcile",
        lambda: op.metric("tac2sol_operator_reconciliations_total", result="success") >= 1,
        timeout=30,
    )
    job_after = cp.get_json("-n", ns, "pytorchjob", "steady")
    cm_after = cp.get_json("-n", ns, "configmap", "steady-train-config")
    assert job_after["metadata"]["generation"] == job_before["metadata"]["generation"]
    assert job_after["metadata"]["uid"] == job_before["metadata"]["uid"]
    assert cm_after["metadata"]["resourceVersion"] == cm_before["metadata"]["resourceVersion"]
    assert "learning_rate: 0.0001" in cm_after["data"]["train.yaml"]


def test_deleting_the_run_collects_its_children(
    control_plane: Any, namespace: str, claims: None, start_operator: Any, wait: Any
) -> None:
    cp, ns = control_plane, namespace
    op = start_operator()
    cp.apply(run_manifest("qwen32b", "doomed", resources__podAnnotations=kwok("run-forever")), ns)
    wait_phase(cp, ns, "doomed", "Running", wait, op)
    # No finalizer, even while progress and pods are polled: with the operator stopped (crashed,
    # uninstalled), deleting the run still completes; the children go by garbage collection.
    assert not get_run(cp, ns, "doomed")["metadata"].get("finalizers")
    op.stop()
    cp.kubectl("delete", "-n", ns, "trainingrun", "doomed", "--wait=true", "--timeout=30s")
    wait(
        "the garbage collector to delete the job and the ConfigMap",
        lambda: not children(cp, ns, "pytorchjobs") and not children(cp, ns, "configmaps"),
        timeout=60,
    )
    wait("the job's pods to go", lambda: not cp.get_json("-n", ns, "pods")["items"], timeout=60)


def test_killing_the_operator_mid_reconcile_leaves_no_duplicates(
    control_plane: Any, namespace: str, start_operator: Any, wait: Any
) -> None:
    cp, ns = control_plane, namespace
    names = [f"burst-{i:02d}" for i in range(12)]
    op = start_operator()
    # Suspended runs: jobs without pods, so the test measures the operator, not the scheduler.
    docs = [run_manifest("qwen32b", n, suspend=True) for n in names]
    cp.kubectl("apply", "-n", ns, "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))
    wait("the first ConfigMap", lambda: children(cp, ns, "configmaps"), timeout=30, interval=0.05)
    op.stop(signal.SIGKILL)
    unfinished = [n for n in names if "jobRef" not in status(cp, ns, n)]
    assert unfinished, "every run was done before the kill; the test did not interrupt a reconcile"

    op = start_operator()
    for n in names:
        # Converged: the job's phase and the operator's own record of the job (jobRef).
        wait(
            f"{n} to converge",
            lambda n=n: "jobRef" in wait_phase(cp, ns, n, "Suspended", wait, op),
            timeout=60,
        )
        job = cp.get_json("-n", ns, "pytorchjob", n)
        assert status(cp, ns, n)["jobRef"]["uid"] == job["metadata"]["uid"]
    assert sorted(j["metadata"]["name"] for j in children(cp, ns, "pytorchjobs")) == names
    assert sorted(c["metadata"]["name"] for c in children(cp, ns, "configmaps")) == [
        f"{n}-train-config" for n in names
    ]


def test_progress_is_read_from_the_master_pods_metrics(
    control_plane: Any, namespace: str, claims: None, start_operator: Any, wait: Any
) -> None:
    cp, ns = control_plane, namespace
    base = free_port(4)
    ranks = []
    for rank in range(4):  # one trainer registry per local rank, as the 4 torchrun processes serve them
        m = TrainerMetrics(run="watched", rank=rank, device=f"cuda:{rank}")
        start_http_server(base + rank, addr="127.0.0.1", registry=m.registry)
        m.global_step.set(120)
        m.max_steps.set(480)
        m.progress.set(0.25)
        m.epoch.set(0.75)
        m.loss.set(0.9)
        m.eta.set(5400)
        m.tokens_per_second.set(500.0 + rank)
        ranks.append(m)
    op = start_operator("--progress-interval", "1")
    cp.apply(
        run_manifest("qwen32b", "watched", metricsPort=base, resources__podAnnotations=kwok("run-forever")),
        ns,
    )
    wait_phase(cp, ns, "watched", "Running", wait, op)
    # kwok pods have no network: point the master pod at this machine, where its metrics are served.
    cp.kubectl(
        "patch",
        "-n",
        ns,
        "pod",
        "watched-master-0",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}]}}),
    )
    st = wait("status.progress", lambda: status(cp, ns, "watched").get("progress"), timeout=30)
    assert {k: v for k, v in st.items() if k != "updatedAt"} == {
        "step": 120,
        "totalSteps": 480,
        "percent": 25,
        "epoch": 0.75,
        "loss": 0.9,
        "etaSeconds": 5400.0,
        "tokensPerSecond": 2006.0,  # all 4 ranks
        "source": "metrics",
    }
    ranks[0].record_eval({"samples": 25, "semanticSimilarityMean": 0.83, "exactMatchRate": 0.1})
    ev = wait("status.evaluation", lambda: status(cp, ns, "watched").get("evaluation"), timeout=30)
    assert ev == {"samples": 25, "semanticSimilarityMean": 0.83, "exactMatch": 0.1}
    assert re.search(r"watched\s+Running\s+\S+\s+4\s+rtx8000\s+25", cp.kubectl("get", "tr", "-n", ns).stdout)


def test_a_slow_metrics_endpoint_does_not_delay_other_runs_progress(
    control_plane: Any, namespace: str, claims: None, start_operator: Any, wait: Any
) -> None:
    """One run's master pod takes every /metrics connection and never answers (reads give up
    after 10 s here); the other run's progress still follows its trainer within seconds."""
    cp, ns = control_plane, namespace
    quick, hung = free_port(4), free_port(4)
    silent = []
    for rank in range(4):  # accepted by the kernel, never answered: each read waits for its timeout
        sock = socket.socket()
        sock.bind(("127.0.0.1", hung + rank))
        sock.listen(64)
        silent.append(sock)
    ranks = []
    for rank in range(4):
        m = TrainerMetrics(run="quick", rank=rank, device=f"cuda:{rank}")
        start_http_server(quick + rank, addr="127.0.0.1", registry=m.registry)
        m.global_step.set(10)
        m.max_steps.set(480)
        ranks.append(m)
    op = start_operator("--progress-interval", "1", env={"TAC2SOL_PROGRESS_TIMEOUT_SECONDS": "10"})
    for name, port in (("hung", hung), ("quick", quick)):
        cp.apply(
            run_manifest("qwen32b", name, metricsPort=port, resources__podAnnotations=kwok("run-forever")), ns
        )
    for name in ("hung", "quick"):
        wait_phase(cp, ns, name, "Running", wait, op)
        cp.kubectl(
            "patch", "-n", ns, "pod", f"{name}-master-0", "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": {"podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}]}}),
        )  # fmt: skip
    step = lambda: (status(cp, ns, "quick").get("progress") or {}).get("step")  # noqa: E731
    try:
        # A look before the podIP patch may wait for kwok's unreachable address first.
        wait("the quick run's first progress", lambda: step() == 10, timeout=45)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{op.tail()}") from None
    for value in (20, 30, 40):  # each new step shows up well within the hung pod's 10 s reads
        for m in ranks:
            m.global_step.set(value)
        t0 = time.monotonic()
        wait(f"step {value}", lambda v=value: step() == v, timeout=5, interval=0.2)
        print(f"step {value} in status after {time.monotonic() - t0:.1f} s")
    assert "progress" not in status(cp, ns, "hung")
    assert op.metric("tac2sol_operator_progress_scrapes_total", result="ok") >= 16
    for sock in silent:
        sock.close()


def test_the_mpijob_launcher(
    control_plane: Any, namespace: str, claims: None, start_operator: Any, wait: Any
) -> None:
    cp, ns = control_plane, namespace
    op = start_operator()
    cp.apply(run_manifest("llama-3.1-70b", "mpi", launcher="mpijob", resources__podAnnotations=kwok()), ns)
    st = wait_phase(cp, ns, "mpi", "Succeeded", wait, op, timeout=90)
    assert st["jobRef"]["kind"] == "MPIJob" and st["plan"]["zeroStage"] == 3
    job = cp.get_json("-n", ns, "mpijob", "mpi")
    launcher = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
    assert "mpirun" in launcher["command"]
    roles = sorted(
        p["metadata"]["labels"]["training.kubeflow.org/replica-type"]
        for p in cp.get_json("-n", ns, "pods", "-l", "training.kubeflow.org/job-name=mpi")["items"]
    )
    assert roles == ["launcher", "worker"]
    assert "ds_config.json" in cp.get_json("-n", ns, "configmap", "mpi-train-config")["data"]


def test_a_hundred_runs_at_once_all_reach_their_jobs(
    control_plane: Any, namespace: str, start_operator: Any, wait: Any
) -> None:
    cp, ns = control_plane, namespace
    op = start_operator()
    names = [f"many-{i:03d}" for i in range(100)]
    docs = [run_manifest("qwen32b", n, suspend=True) for n in names]
    t0 = time.monotonic()
    cp.kubectl(
        "apply",
        "--server-side",
        "-n",
        ns,
        "-f",
        "-",
        input="\n---\n".join(json.dumps(d) for d in docs),
        timeout=120,
    )
    wait("100 PyTorchJobs", lambda: len(children(cp, ns, "pytorchjobs")) == 100, timeout=150, interval=1)
    took = time.monotonic() - t0
    print(f"100 TrainingRuns -> 100 PyTorchJobs in {took:.1f} s")
    assert sorted(j["metadata"]["name"] for j in children(cp, ns, "pytorchjobs")) == names
    assert len(children(cp, ns, "configmaps")) == 100
    assert op.metric("tac2sol_operator_jobs_created_total", kind="PyTorchJob") == 100
    assert op.proc.poll() is None and os.path.exists(op.log_path)


def test_cluster_wide_mode_with_the_cluster_role(
    control_plane: Any, namespace: str, start_operator: Any, wait: Any
) -> None:
    """Without --namespace the operator watches every namespace, scans CRDs, and needs the
    ClusterRole bound cluster-wide (the chart's default)."""
    cp, ns = control_plane, namespace
    binding = f"{SA}-{ns}"[:63]
    cp.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": binding},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": rbac.CLUSTER_ROLE_NAME,
            },
            "subjects": [{"kind": "ServiceAccount", "name": SA, "namespace": SYSTEM_NS}],
        }
    )
    try:
        op = start_operator(cluster_wide=True)
        cp.apply(run_manifest("qwen32b", "everywhere", suspend=True), ns)
        wait("a converged run", lambda: "jobRef" in wait_phase(cp, ns, "everywhere", "Suspended", wait, op))
        assert "watching all namespaces" in op.log()
        # An RBAC denial reads 'is forbidden: User "system:serviceaccount:..." cannot <verb>'; runs
        # left in namespaces other tests are deleting must not log errors either.
        assert not re.search(r'forbidden: User "[^"]*" cannot', op.log()), op.tail()
        assert "being terminated" not in op.log(), op.tail()
    finally:
        cp.kubectl("delete", "clusterrolebinding", binding, "--ignore-not-found")


# --- why the pods do not run (PodsReady) ------------------------------------------------------------


def wait_pods_ready(
    cp: Any,
    ns: str,
    name: str,
    reason: str,
    wait: Any,
    op: OperatorProcess,
    timeout: float = 60,
    saying: str = "",
) -> dict[str, Any]:
    """The run's status once its PodsReady condition has ``reason`` and a message ``saying``."""

    def probe() -> dict[str, Any] | None:
        assert op.proc.poll() is None, f"the operator exited:\n{op.tail()}"
        st = status(cp, ns, name)
        ready = cond(st, "PodsReady")
        return st if ready.get("reason") == reason and saying in ready.get("message", "") else None

    try:
        return dict(wait(f"TrainingRun {name}: PodsReady {reason} {saying}", probe, timeout=timeout))
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\nstatus: {json.dumps(status(cp, ns, name))[:3000]}\n{op.tail()}"
        ) from None


def test_pods_the_scheduler_cannot_place_are_named_until_a_gpu_node_joins(
    control_plane: Any, namespace: str, claims: None, start_operator: Any, wait: Any
) -> None:
    """3 nodes x 4 GPUs asked, 2 x 4 there: the real kube-scheduler leaves one pod Unschedulable and
    the run says so; a third kwok GPU node (made as hack/kwok/nodes.yaml makes the others) lets it run."""
    cp, ns = control_plane, namespace
    op = start_operator("--progress-interval", "1")
    big = run_manifest(
        "qwen32b",
        "big",
        resources__nodes=3,
        training__globalBatchSize=24,
        resources__podAnnotations=kwok("run-forever"),
    )
    cp.apply(big, ns)
    # Until the volume controller binds the claims, the scheduler says so first ("unbound immediate
    # PersistentVolumeClaims"); then it runs out of GPUs, and the condition follows what it says.
    st = wait_pods_ready(cp, ns, "big", "Unschedulable", wait, op, saying="nvidia.com/gpu")
    ready = cond(st, "PodsReady")
    assert ready["status"] == "False" and "Insufficient nvidia.com/gpu" in ready["message"], ready
    # 0/3: the 2 kwok GPU nodes and the real node (tainted, and without GPUs).
    assert re.match(
        r"1 of 3 pods cannot be scheduled; pod big-(master|worker)-\d: 0/3 nodes", ready["message"]
    )
    assert st["message"] == ready["message"] and st["phase"] in ("Planning", "Running")
    wide = cp.kubectl("get", "tr", "-n", ns, "big", "-o", "wide").stdout
    assert "1 of 3 pods cannot be scheduled" in wide and "Insufficient nvidia.com/gpu" in wide, wide
    time.sleep(3)  # three more looks at the pods: nothing new to say, so nothing written or posted
    assert cond(status(cp, ns, "big"), "PodsReady") == ready
    assert events(cp, ns, "big").count("Unschedulable") == 1
    assert re.search(r"Warning\s+Unschedulable", cp.kubectl("describe", "tr", "-n", ns, "big").stdout)
    assert op.metric("tac2sol_trainingruns_stuck", reason="Unschedulable") == 1

    node = next(yaml.safe_load_all((REPO / "hack" / "kwok" / "nodes.yaml").read_text()))
    node_name = f"gpu-node-{ns}"[:63]
    node["metadata"]["name"] = node["metadata"]["labels"]["kubernetes.io/hostname"] = node_name
    try:
        cp.apply(node)
        st = wait_pods_ready(cp, ns, "big", "PodsRunning", wait, op, timeout=90)
        assert cond(st, "PodsReady")["status"] == "True"
        assert cond(st, "PodsReady")["message"] == "all 3 pods running"
        assert "Insufficient" not in st["message"] and st["phase"] in ("Planning", "Running")
        placed = [
            p["spec"].get("nodeName")
            for p in cp.get_json("-n", ns, "pods", "-l", "training.kubeflow.org/job-name=big")["items"]
        ]
        assert node_name in placed, placed
        assert "PodsRunning" in events(cp, ns, "big")
        assert op.metric("tac2sol_trainingruns_stuck", reason="Unschedulable") == 0
    finally:
        cp.kubectl("delete", "-n", ns, "trainingrun", "big", "--wait=true", "--timeout=60s", check=False)
        wait(
            "the big job's pods to go",
            lambda: not cp.get_json("-n", ns, "pods", "-l", "training.kubeflow.org/job-name=big")["items"],
            timeout=60,
        )
        cp.kubectl("delete", "node", node_name, "--ignore-not-found")


def test_a_container_the_kubelet_cannot_create_is_named_with_its_reason(
    control_plane: Any, namespace: str, claims: None, start_operator: Any, wait: Any
) -> None:
    """kwok stands in for the kubelet here (outcome=config-error in hack/kwok/stages.yaml): the
    container waits with CreateContainerConfigError naming the HF token Secret that does not exist,
    as a real kubelet reports it; the run's PodsReady condition and message carry it."""
    cp, ns = control_plane, namespace
    op = start_operator("--progress-interval", "1")
    cp.apply(
        run_manifest(
            "qwen32b",
            "nosecret",
            hfTokenSecret={"name": "hf-token", "key": "token"},
            resources__podAnnotations=kwok("config-error"),
        ),
        ns,
    )
    st = wait_pods_ready(cp, ns, "nosecret", "CreateContainerConfigError", wait, op)
    ready = cond(st, "PodsReady")
    assert ready["status"] == "False"
    assert ready["message"] == (
        "1 of 1 pods cannot start; pod nosecret-master-0 container pytorch is waiting "
        '(CreateContainerConfigError): secret "hf-token" not found'
    )
    assert st["phase"] == "Planning" and st["message"] == ready["message"]
    version = get_run(cp, ns, "nosecret")["metadata"]["resourceVersion"]
    time.sleep(3)  # three more looks at the pods, nothing new: no status write, no second Event
    assert get_run(cp, ns, "nosecret")["metadata"]["resourceVersion"] == version
    assert events(cp, ns, "nosecret").count("CreateContainerConfigError") == 1
    described = cp.kubectl("describe", "tr", "-n", ns, "nosecret").stdout
    assert 'secret "hf-token" not found' in described and "CreateContainerConfigError" in described
    assert op.metric("tac2sol_trainingruns_stuck", reason="CreateContainerConfigError") == 1


# --- Kubeflow Trainer v2: TrainJobs ------------------------------------------------------------------
# The real Trainer v2.3 controller and JobSet controller (the `trainer_v2` fixture) make the JobSet and
# its pods from the TrainJob; kwok runs them. The ClusterTrainingRuntime is the chart's, rendered by
# the real helm.

RUNTIME = "tac2sol-torch"


def chart_runtime(cp: Any) -> dict[str, Any]:
    """The chart's ClusterTrainingRuntime, rendered by helm as on a cluster serving Trainer v2."""
    out = subprocess.run(
        [
            str(cp.bin_dir / "helm"),
            "template",
            "tac2sol",
            str(REPO / "charts" / "tac2sol"),
            "--show-only",
            "templates/trainingruntime.yaml",
            "--api-versions",
            "trainer.kubeflow.org/v1alpha1/ClusterTrainingRuntime",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(yaml.safe_load(out))


@pytest.fixture(scope="module")
def trainjob_runtime(trainer_v2: Any) -> Iterator[None]:
    """The chart's ClusterTrainingRuntime, installed for the module's tests."""
    cp = trainer_v2
    runtime = chart_runtime(cp)
    assert runtime["metadata"]["name"] == RUNTIME
    cp.apply(runtime)
    yield
    cp.kubectl("delete", "clustertrainingruntime", RUNTIME, "--ignore-not-found", check=False)


def _jobset_pods(cp: Any, ns: str, name: str) -> list[dict[str, Any]]:
    return list(cp.get_json("-n", ns, "pods", "-l", f"jobset.sigs.k8s.io/jobset-name={name}")["items"])


def test_a_trainjob_run_goes_through_jobset_pods_to_success(
    trainer_v2: Any, trainjob_runtime: None, namespace: str, claims: None, start_operator: Any, wait: Any
) -> None:
    cp, ns = trainer_v2, namespace
    # The JobSet's pods (the chart's runtime with the operator's patch) are admitted under
    # Pod Security `restricted`: a refused pod would never appear and the run never succeed.
    cp.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
    op = start_operator()
    run = run_manifest("qwen32b", "tj", backend="trainjob", resources__podAnnotations=kwok(seconds=2))
    run["spec"]["resources"]["nodes"] = 2  # a JobSet of 2 trainer pods (torchrun's PET_* from Trainer)
    cp.apply(run, ns)
    wait("TrainJob tj", lambda: cp.exists("-n", ns, "trainjob", "tj"), timeout=30)
    job = cp.get_json("-n", ns, "trainjob", "tj")
    assert job["spec"]["runtimeRef"]["name"] == RUNTIME
    assert job["spec"]["trainer"]["numNodes"] == 2 and job["spec"]["trainer"]["numProcPerNode"] == 4
    assert job["metadata"]["ownerReferences"][0]["kind"] == "TrainingRun"
    try:
        wait("JobSet tj", lambda: cp.exists("-n", ns, "jobset", "tj"), timeout=30)
    except AssertionError:
        # Trainer v2.3 reports a JobSet it could not make only as an Event on the TrainJob.
        events = cp.kubectl("get", "events", "-n", ns, check=False).stdout
        raise AssertionError(f"no JobSet for TrainJob tj; events in {ns}:\n{events}") from None

    st = wait_phase(cp, ns, "tj", "Succeeded", wait, op, timeout=120)
    assert st["backend"] == "trainjob" and cond(st, "BackendSelected")["reason"] == "Requested"
    assert (
        st["jobRef"]["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and st["jobRef"]["kind"] == "TrainJob"
    )
    assert st["jobRef"]["uid"] == job["metadata"]["uid"]
    assert cond(st, "Succeeded")["status"] == "True" and st.get("completionTime")
    pods = _jobset_pods(cp, ns, "tj")
    assert len(pods) == 2
    for pod in pods:
        spec = pod["spec"]
        assert spec["nodeName"] in ("gpu-node-0", "gpu-node-1") and pod["status"]["phase"] == "Succeeded"
        (container,) = spec["containers"]
        assert container["name"] == "node" and container["resources"]["limits"]["nvidia.com/gpu"] == "4"
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["PET_NNODES"] == "2" and env["PET_NPROC_PER_NODE"] == "4"  # Trainer's torch plugin
        assert {m["mountPath"] for m in container["volumeMounts"]} >= {
            "/etc/tac2sol",
            "/dev/shm",
            "/data",
            "/output",
        }
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert pod["metadata"]["labels"]["tac2sol.dev/run"] == "tj"  # the runtime patch's pod labels
    assert op.metric("tac2sol_operator_jobs_created_total", kind="TrainJob") == 1


def test_a_failing_trainjob_pod_fails_the_run_with_its_reason(
    trainer_v2: Any, trainjob_runtime: None, namespace: str, claims: None, start_operator: Any, wait: Any
) -> None:
    """Exit code 3 is the trainer's own verdict: the runtime's pod failure policy fails the JobSet at
    once (no restart), the TrainJob fails, and the run says which pod and why."""
    cp, ns = trainer_v2, namespace
    op = start_operator()
    cp.apply(
        run_manifest(
            "qwen32b", "tjbad", backend="trainjob", resources__podAnnotations=kwok("fail", exit_code=3)
        ),
        ns,
    )
    st = wait_phase(cp, ns, "tjbad", "Failed", wait, op, timeout=120)
    failed = cond(st, "Failed")
    assert failed["status"] == "True" and failed["reason"] == "JobFailed"
    assert "TrainJob tjbad failed" in st["message"]
    assert "container node exited with code 3 (Error" in st["message"], st["message"]


def test_a_trainjob_suspends_and_resumes(
    trainer_v2: Any, trainjob_runtime: None, namespace: str, claims: None, start_operator: Any, wait: Any
) -> None:
    cp, ns = trainer_v2, namespace
    op = start_operator()
    cp.apply(
        run_manifest("qwen32b", "tjpause", backend="trainjob", resources__podAnnotations=kwok("run-forever")),
        ns,
    )
    wait_phase(cp, ns, "tjpause", "Running", wait, op, timeout=90)
    cp.kubectl("patch", "-n", ns, "trainingrun", "tjpause", "--type=merge", "-p", '{"spec":{"suspend":true}}')
    st = wait_phase(cp, ns, "tjpause", "Suspended", wait, op, timeout=60)
    assert cp.get_json("-n", ns, "trainjob", "tjpause")["spec"]["suspend"] is True
    assert cond(st, "SpecChangeRejected")["status"] == "False"
    wait("the suspended JobSet's pods to go", lambda: not _jobset_pods(cp, ns, "tjpause"), timeout=60)
    cp.kubectl(
        "patch", "-n", ns, "trainingrun", "tjpause", "--type=merge", "-p", '{"spec":{"suspend":false}}'
    )
    wait_phase(cp, ns, "tjpause", "Running", wait, op, timeout=90)
    assert cp.get_json("-n", ns, "trainjob", "tjpause")["spec"]["suspend"] is False


def test_deleting_a_trainjob_run_collects_its_children(
    trainer_v2: Any, trainjob_runtime: None, namespace: str, claims: None, start_operator: Any, wait: Any
) -> None:
    cp, ns = trainer_v2, namespace
    op = start_operator()
    cp.apply(
        run_manifest(
            "qwen32b", "tjdoomed", backend="trainjob", resources__podAnnotations=kwok("run-forever")
        ),
        ns,
    )
    wait_phase(cp, ns, "tjdoomed", "Running", wait, op, timeout=90)
    op.stop()
    cp.kubectl("delete", "-n", ns, "trainingrun", "tjdoomed", "--wait=true", "--timeout=30s")
    wait(
        "the garbage collector to delete the TrainJob, its JobSet and the ConfigMap",
        lambda: (
            not children(cp, ns, "trainjobs")
            and not children(cp, ns, "configmaps")
            and not cp.get_json("-n", ns, "jobsets")["items"]
        ),
        timeout=60,
    )
    wait("the JobSet's pods to go", lambda: not _jobset_pods(cp, ns, "tjdoomed"), timeout=60)


def test_a_trainjob_run_with_a_priority_class_runs_on_its_own_runtime(
    trainer_v2: Any, trainjob_runtime: None, namespace: str, claims: None, start_operator: Any, wait: Any
) -> None:
    """Trainer v2.3's runtimePatches have no priorityClassName: the run gets a TrainingRuntime of its
    own (the chart's runtime with the class), owned by it, and its pods the class and its priority.
    The operator watching one namespace reads the ClusterTrainingRuntime only through a cluster grant
    limited to that name (the chart's namespaced install makes the same); without it the run says so."""
    cp, ns = trainer_v2, namespace
    priority, grant = f"{ns}-high", f"{SA}-{ns}-runtime"
    cp.apply(
        {
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": priority},
            "value": 100000,
        }
    )
    try:
        op = start_operator()
        cp.apply(
            run_manifest(
                "qwen32b",
                "tjprio",
                backend="trainjob",
                resources__priorityClassName=priority,
                resources__podAnnotations=kwok("run-forever"),
            ),
            ns,
        )

        def forbidden() -> dict[str, Any] | None:
            created = cond(status(cp, ns, "tjprio"), "JobCreated")
            return created if created and created["reason"] == "RuntimeForbidden" else None

        refused = wait("the run to say it may not read the runtime", forbidden, timeout=60)
        assert f"ClusterTrainingRuntime {RUNTIME}" in refused["message"]
        assert status(cp, ns, "tjprio")["phase"] == "Pending"
        assert not children(cp, ns, "trainjobs")

        cp.apply(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": grant},
                "rules": [
                    {**rule, "resourceNames": [RUNTIME]}
                    for rule in rbac.backend_rules("trainjob", cluster_scoped=True)
                ],
            }
        )
        cp.apply(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": grant},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": grant},
                "subjects": [{"kind": "ServiceAccount", "name": SA, "namespace": SYSTEM_NS}],
            }
        )
        wait_phase(cp, ns, "tjprio", "Running", wait, op, timeout=120)  # the operator retries in 30 s
        run_uid = get_run(cp, ns, "tjprio")["metadata"]["uid"]
        runtime = cp.get_json("-n", ns, "trainingruntime", "tjprio")
        (owner,) = runtime["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"], owner["controller"]) == ("TrainingRun", run_uid, True)
        job = cp.get_json("-n", ns, "trainjob", "tjprio")
        assert job["spec"]["runtimeRef"] == {
            "name": "tjprio",
            "apiGroup": "trainer.kubeflow.org",
            "kind": "TrainingRuntime",
        }
        pods = _jobset_pods(cp, ns, "tjprio")
        assert pods
        for pod in pods:
            assert (pod["spec"]["priorityClassName"], pod["spec"]["priority"]) == (priority, 100000)
            assert pod["metadata"]["labels"]["tac2sol.dev/run"] == "tjprio"  # the run's patch still applies

        op.stop()
        cp.kubectl("delete", "-n", ns, "trainingrun", "tjprio", "--wait=true", "--timeout=30s")
        wait(
            "the garbage collector to delete the TrainingRuntime and the TrainJob",
            lambda: (
                not cp.get_json("-n", ns, "trainingruntimes")["items"] and not children(cp, ns, "trainjobs")
            ),
            timeout=60,
        )
    finally:
        for kind in ("clusterrolebinding", "clusterrole"):
            cp.kubectl("delete", kind, grant, "--ignore-not-found", check=False)
        cp.kubectl("delete", "priorityclass", priority, "--ignore-not-found", check=False)


def test_an_impossible_trainjob_plan_creates_nothing(
    trainer_v2: Any, trainjob_runtime: None, namespace: str, start_operator: Any, wait: Any
) -> None:
    cp, ns = trainer_v2, namespace
    op = start_operator()
    data = yaml.safe_load((RUNS / "deepseek-v3.yaml").read_text())
    data["spec"]["backend"] = "trainjob"
    cp.apply(data, ns)
    st = wait_phase(cp, ns, "deepseek-v3", "Failed", wait, op)
    assert cond(st, "Failed")["reason"] == "PlanDoesNotFit"
    time.sleep(1)
    assert children(cp, ns, "trainjobs") == [] and children(cp, ns, "configmaps") == []


def test_a_trainjob_only_install_picks_trainjob_for_auto_without_v1_rights(
    trainer_v2: Any, trainjob_runtime: None, namespace: str, claims: None, start_operator: Any, wait: Any
) -> None:
    """The chart with backends [trainjob]: the operator holds rbac.rules(backends=["trainjob"]) only
    (nothing on kubeflow.org), watches only TrainJobs, and a run without spec.backend (auto) gets
    a TrainJob although the cluster also serves PyTorchJob."""
    cp, ns = trainer_v2, namespace
    role = {
        **rbac.cluster_role(f"{rbac.CLUSTER_ROLE_NAME}-trainjob"),
        "rules": rbac.rules(backends=["trainjob"]),
    }
    cp.apply(role)
    cp.kubectl("delete", "rolebinding", "-n", ns, SA)  # the fixture's, to the full role
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": SA, "namespace": ns},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": role["metadata"]["name"],
        },
        "subjects": [{"kind": "ServiceAccount", "name": SA, "namespace": SYSTEM_NS}],
    }
    cp.apply(binding)
    who = f"--as=system:serviceaccount:{SYSTEM_NS}:{SA}"
    assert (
        cp.kubectl(
            "auth", "can-i", "list", "pytorchjobs.kubeflow.org", "-n", ns, who, check=False
        ).stdout.strip()
        == "no"
    )
    op = start_operator(env={"TAC2SOL_BACKENDS": "trainjob"})
    cp.apply(run_manifest("qwen32b", "tjauto", resources__podAnnotations=kwok(seconds=1)), ns)
    st = wait_phase(cp, ns, "tjauto", "Succeeded", wait, op, timeout=120)
    assert st["backend"] == "trainjob" and st["jobRef"]["kind"] == "TrainJob"
    chosen = cond(st, "BackendSelected")
    assert chosen["reason"] == "TrainJobServed" and "trainjob-only install" in chosen["message"]
    assert not children(cp, ns, "pytorchjobs")
    assert "403" not in op.log() and "Forbidden" not in op.log(), op.tail()


def test_a_jobset_trainer_cannot_create_is_named_in_the_run_until_the_runtime_is_fixed(
    trainer_v2: Any, namespace: str, claims: None, start_operator: Any, wait: Any
) -> None:
    """A runtime whose JobSet the JobSet webhook refuses (a failure-policy rule name with `-`):
    Trainer v2.3 says so only in Events on the TrainJob; the run's PodsReady condition and message
    quote the refusal and what to do, with a Warning Event; done as it says (the run deleted, the
    runtime fixed, the run applied again), the run succeeds."""
    cp, ns = trainer_v2, namespace
    runtime = chart_runtime(cp)
    name = runtime["metadata"]["name"] = f"refused-{ns}"[:63]  # cluster-scoped: this test's own
    rule = runtime["spec"]["template"]["spec"]["failurePolicy"]["rules"][0]
    rule["name"] = "trainer-verdict"  # JobSet takes a letter, then letters, digits or _,: only
    cp.apply(runtime)
    try:
        op = start_operator(env={"TAC2SOL_TRAINJOB_RUNTIME": name})
        cp.apply(
            run_manifest("qwen32b", "tjrefused", backend="trainjob", resources__podAnnotations=kwok()), ns
        )

        def named() -> dict[str, Any] | None:
            st = status(cp, ns, "tjrefused")
            return st if cond(st, "PodsReady").get("reason") == "TrainJobResourcesCreationFailed" else None

        try:
            st = wait("PodsReady to name the refused JobSet", named, timeout=90)
        except AssertionError as exc:
            trainjob_events = cp.kubectl("get", "events", "-n", ns, check=False).stdout
            raise AssertionError(f"{exc}\n{trainjob_events}\n{op.tail()}") from None
        assert st["phase"] == "Planning" and cond(st, "PodsReady")["status"] == "False"
        message = st["message"]
        assert message == cond(st, "PodsReady")["message"]
        assert message.startswith("Kubeflow Trainer could not create the JobSet of TrainJob tjrefused"), (
            message
        )
        assert "denied the request" in message and "trainer-verdict" in message, message
        assert f"ClusterTrainingRuntime {name}" in message
        assert f"kubectl annotate trainjob tjrefused -n {ns} tac2sol.dev/retry=$(date +%s)" in message
        assert "TrainJobResourcesCreationFailed" in events(cp, ns, "tjrefused")
        assert not cp.get_json("-n", ns, "jobsets")["items"]
        assert op.metric("tac2sol_trainingruns_stuck", reason="TrainJobResourcesCreationFailed") == 1

        # failurePolicy is immutable and the runtime in use cannot be deleted (Trainer's finalizer):
        # as the message says, the run goes, the runtime is fixed, the run is applied again.
        cp.kubectl("delete", "-n", ns, "trainingrun", "tjrefused", "--wait=true", "--timeout=30s")
        cp.kubectl("delete", "clustertrainingruntime", name, "--wait=true", "--timeout=60s", timeout=70)
        rule["name"] = "trainerVerdict"
        cp.apply(runtime)
        cp.apply(
            run_manifest("qwen32b", "tjrefused", backend="trainjob", resources__podAnnotations=kwok()), ns
        )
        try:
            st = wait_phase(cp, ns, "tjrefused", "Succeeded", wait, op, timeout=120)
        except AssertionError as exc:
            seen = cp.kubectl("get", "trainjobs,jobsets,jobs,pods,events", "-n", ns, check=False).stdout
            raise AssertionError(f"{exc}\n{seen}") from None
        assert cond(st, "PodsReady").get("reason") != "TrainJobResourcesCreationFailed"
        assert "could not create" not in st["message"]
    finally:
        cp.kubectl("delete", "clustertrainingruntime", name, "--ignore-not-found", check=False)
