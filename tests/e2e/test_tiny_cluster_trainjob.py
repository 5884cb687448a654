"""runs/tiny-cluster.yaml as a Kubeflow Trainer v2 TrainJob on the real node: `kubectl apply` of the
run with `backend: trainjob` in a namespace enforcing Pod Security `restricted`; the operator (out
of cluster, in the node's network namespace, as in test_tiny_cluster.py) makes the TrainJob on the
chart's ClusterTrainingRuntime rendered by the real helm; the real Trainer v2.3 makes the JobSet,
JobSet its headless Service and Job, and the kubelet runs the 2 pods from the CPU trainer image;
torchrun, configured only by Trainer's PET_* variables, finds the master through CoreDNS and trains
over gloo. Progress comes from the pods' /metrics; TrainJob Complete -> run Succeeded; the adapter
and the evaluation report are on the output claim. Nothing is simulated.

On failure the test says what happened: the TrainJob, JobSet and Job conditions, every pod's state
and logs (captured while it waits, before a JobSet restart can delete a failed pod), the
namespace's Events and the operator's log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tac2sol import devtools

pytestmark = [pytest.mark.k8s, pytest.mark.image, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
TAC2SOL = Path(sys.executable).with_name("tac2sol")
NODE = "tac2sol-node"
RUN = "tiny-cluster"
RELEASE = "tac2sol-tiny-tj"  # the chart's runtime is <release>-torch: cluster-scoped, this test's own
RUNTIME = f"{RELEASE}-torch"
STEPS = 20


class Diagnostics:
    """What a failed TrainJob left behind, gathered while the test waits: the logs of every pod
    seen with a terminated container are read at once (a JobSet restart deletes the Job's pods)."""

    def __init__(self, cp: Any, ns: str, name: str, operator_log: Path) -> None:
        self.cp, self.ns, self.name, self.operator_log = cp, ns, name, operator_log
        self.logs: dict[str, str] = {}

    def pods(self) -> list[dict[str, Any]]:
        selector = f"jobset.sigs.k8s.io/jobset-name={self.name}"
        return list(self.cp.get_json("-n", self.ns, "pods", "-l", selector)["items"])

    def poll(self) -> None:
        for pod in self.pods():
            name = pod["metadata"]["name"]
            done = any(
                (cs.get("state") or {}).get("terminated")
                for cs in pod["status"].get("containerStatuses") or []
            )
            if done and name not in self.logs:
                self.logs[name] = self.cp.kubectl("-n", self.ns, "logs", name, check=False).stdout

    def _conditions(self, kind: str) -> str:
        got = self.cp.kubectl("-n", self.ns, "get", kind, "-o", "json", check=False)
        if got.returncode != 0:
            return f"{kind}: {got.stderr.strip()}"
        lines = []
        for item in json.loads(got.stdout)["items"]:
            status = item.get("status") or {}
            conds = [
                {k: c.get(k) for k in ("type", "status", "reason", "message")}
                for c in status.get("conditions") or []
            ]
            lines.append(f"{kind} {item['metadata']['name']}: {json.dumps(conds)}")
        return "\n".join(lines) or f"{kind}: none"

    def report(self) -> str:
        parts = [self._conditions(kind) for kind in ("trainjobs", "jobsets", "jobs", "trainingruns")]
        for pod in self.pods():
            name = pod["metadata"]["name"]
            states = [
                {"name": cs.get("name"), "state": cs.get("state"), "restarts": cs.get("restartCount")}
                for cs in pod["status"].get("containerStatuses") or []
            ]
            parts.append(
                f"pod {name} {pod['status'].get('phase')} on {pod['spec'].get('nodeName')}: {states}"
            )
            self.logs.setdefault(name, self.cp.kubectl("-n", self.ns, "logs", name, check=False).stdout)
        for name, text in self.logs.items():
            parts.append(f"--- logs of {name} (last 60 lines):\n" + "\n".join(text.splitlines()[-60:]))
        events = self.cp.kubectl("-n", self.ns, "get", "events", "--sort-by=.lastTimestamp", check=False)
        parts.append(f"--- events:\n{events.stdout[-6000:]}")
        parts.append(f"--- operator log:\n{self.operator_log.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)


@pytest.fixture
def runtime(trainer_v2: Any) -> Iterator[str]:
    """The chart's ClusterTrainingRuntime, rendered by the real helm for release tac2sol-tiny-tj; the node's
    image is already there (pull policy Never)."""
    cp = trainer_v2
    rendered = subprocess.run(
        [
            str(cp.bin_dir / "helm"),
            "template",
            RELEASE,
            str(REPO / "charts" / "tac2sol"),
            "--show-only",
            "templates/trainingruntime.yaml",
            "--api-versions",
            "trainer.kubeflow.org/v1alpha1/ClusterTrainingRuntime",
            "--set",
            "trainer.image.pullPolicy=Never",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    doc = yaml.safe_load(rendered)
    assert doc["metadata"]["name"] == RUNTIME
    cp.apply(doc)
    yield RUNTIME
    cp.kubectl("delete", "clustertrainingruntime", RUNTIME, "--ignore-not-found", check=False)


@pytest.fixture
def operator_log(
    trainer_v2: Any, namespace: str, runtime: str, trainer_image: str, tmp_path: Path
) -> Iterator[Path]:
    """`tac2sol operator --namespace NS` in the real node's network namespace (it reads the pods'
    /metrics there), started after Trainer v2 is served so that it follows TrainJobs."""
    cp, ns = trainer_v2, namespace
    cp.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
    crd = REPO / "manifests" / "crds" / "trainingruns.tac2sol.dev.yaml"
    cp.kubectl("apply", "--server-side", "-f", str(crd))
    cp.kubectl("wait", "--for=condition=Established", "crd/trainingruns.tac2sol.dev", "--timeout=30s")
    log_path = tmp_path / "operator.log"
    command = ["bash", str(REPO / "hack" / "cluster.sh"), "node-exec", str(TAC2SOL), "operator"]
    command += ["--namespace", ns, "--metrics-port", "0", "--trainer-image", trainer_image]
    command += ["--progress-interval", "2"]
    env = {**cp.env, "PYTHONSAFEPATH": "1", "TAC2SOL_TRAINJOB_RUNTIME": runtime}
    with devtools.background(command, env, log_path):
        yield log_path


def test_tiny_cluster_trains_as_a_trainjob_on_the_real_node(
    trainer_v2: Any, namespace: str, runtime: str, trainer_image: str, operator_log: Path, wait: Any
) -> None:
    cp, ns = trainer_v2, namespace
    timings: dict[str, float] = {}
    start = time.monotonic()
    cp.kubectl("-n", ns, "apply", "-f", str(REPO / "runs" / "tiny-cluster" / "data.yaml"))
    done = cp.kubectl(
        "-n", ns, "wait", "--for=condition=Complete", "job/tiny-cluster-data", "--timeout=600s",
        check=False, timeout=620,
    )  # fmt: skip
    data_logs = cp.kubectl("-n", ns, "logs", "job/tiny-cluster-data", check=False)
    assert done.returncode == 0, f"the data Job did not complete: {done.stderr}\n{data_logs.stdout[-3000:]}"
    timings["data_job_s"] = time.monotonic() - start

    start = time.monotonic()
    run = yaml.safe_load((REPO / "runs" / f"{RUN}.yaml").read_text())
    run["spec"]["backend"] = "trainjob"
    # Half of runs/tiny-cluster.yaml's steps and samples: the path is the same, CI's minutes fewer.
    run["spec"]["training"].update(maxSteps=STEPS, saveSteps=STEPS // 2)
    run["spec"]["evaluation"]["maxSamples"] = 4
    cp.kubectl("-n", ns, "apply", "-f", "-", input=json.dumps(run))
    diag = Diagnostics(cp, ns, RUN, operator_log)

    def status() -> dict[str, Any]:
        diag.poll()
        return dict(cp.get_json("-n", ns, "trainingrun", RUN).get("status") or {})

    def checked(what: str, probe: Any, timeout: float) -> Any:
        try:
            return wait(what, probe, timeout=timeout, interval=2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{diag.report()}") from None

    ref = checked("the TrainJob", lambda: status().get("jobRef"), 120)
    assert ref["kind"] == "TrainJob" and ref["name"] == RUN, ref
    job = cp.get_json("-n", ns, "trainjob", RUN)
    assert (
        job["spec"]["runtimeRef"]["name"] == RUNTIME and job["metadata"]["ownerReferences"][0]["name"] == RUN
    )

    def two_running() -> list[dict[str, Any]] | None:
        status()
        got = diag.pods()
        running = [p for p in got if p["status"].get("phase") in ("Running", "Succeeded")]
        return got if len(got) == 2 and len(running) == 2 else None

    placed = checked("2 JobSet pods running", two_running, 300)
    for pod in placed:
        assert pod["spec"]["nodeName"] == NODE
        (container,) = pod["spec"]["containers"]
        assert container["image"] == trainer_image
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["PET_MASTER_ADDR"] == f"{RUN}-node-0-0.{RUN}"  # the JobSet's headless Service (CoreDNS)

    def progressed() -> dict[str, Any] | None:
        progress = status().get("progress") or {}
        return progress if progress.get("step", 0) > 0 else None

    progress = checked("status.progress from the pods' /metrics", progressed, 600)
    timings["first_progress_s"] = time.monotonic() - start

    def finished() -> dict[str, Any] | None:
        got = status()
        return got if got.get("phase") in ("Succeeded", "Failed") else None

    final = checked("the run to finish", finished, 1200)
    timings["apply_to_succeeded_s"] = time.monotonic() - start
    assert final["phase"] == "Succeeded", f"{json.dumps(final)[:3000]}\n{diag.report()}"
    complete = [
        c for c in cp.get_json("-n", ns, "trainjob", RUN)["status"]["conditions"] if c["type"] == "Complete"
    ]
    assert complete and complete[0]["status"] == "True", diag.report()
    assert final["backend"] == "trainjob"
    assert progress["step"] <= final["progress"]["step"] == STEPS, final["progress"]
    master = next(
        p["metadata"]["name"] for p in diag.pods() if p["metadata"]["name"].startswith(f"{RUN}-node-0-0")
    )
    logs = cp.kubectl("-n", ns, "logs", master, check=False).stdout
    assert "step" in logs and "loss" in logs, logs[-3000:]

    claim = cp.get_json("-n", ns, "pvc", "tiny-cluster-output")
    volume = Path(cp.get_json("pv", claim["spec"]["volumeName"])["spec"]["local"]["path"])
    out = volume / run["spec"]["output"]["path"]
    assert (out / "adapter" / "adapter_config.json").is_file(), sorted(os.listdir(out))
    assert json.loads((out / "run.json").read_text()), "run.json is empty"
    assert (out / "eval" / "eval.md").is_file(), sorted(os.listdir(out))
    print(f"\ntiny-cluster TrainJob timings: {json.dumps({k: round(v, 1) for k, v in timings.items()})}")
