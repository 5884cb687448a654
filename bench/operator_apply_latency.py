"""Apply -> job created: the tac2sol operator against a plain ``kubectl apply`` of the same jobs.

On one real control plane (hack/cluster.sh; started here on free ports unless ``--kubeconfig``
names a running one), side by side:

* operator path: ``kubectl apply --server-side`` of TrainingRuns (runs/qwen32b.yaml renamed) into
  a namespace watched by ``tac2sol operator``; latency = the job's ADDED watch event minus the
  moment the apply started;
* baseline: ``kubectl apply --server-side`` of the very jobs the operator renders for the same
  runs (owner references dropped), into another namespace; same measurement.

``--backend pytorchjob`` (default): the jobs are training-operator v1 PyTorchJobs.
``--backend trainjob``: the runs say ``backend: trainjob`` and the jobs are Kubeflow Trainer v2
TrainJobs; the cluster also runs Trainer v2 and JobSet (``hack/cluster.sh trainer-up``; with
``--kubeconfig``, the cluster must run them already), and the chart's ClusterTrainingRuntime
(``helm template``) is applied first. Both paths then also go through Trainer's admission webhooks.

Two shapes: ``--single N`` objects one at a time (each waits for its job before the next), and a
burst of ``--burst M`` objects in one apply (latency of object i = its job's ADDED - burst start).
All runs are ``suspend: true`` so that no pods are made: this measures the API path, not kwok.
Printed: p50/p99/max per path and shape, the operator/kubectl ratios and the p99 difference,
measured in this run; on stderr, the operator's CPU per run and its own share of the latency
(each run's ADDED event to its job's).

``--running K`` adds the case of K runs (e.g. 1000) whose pods stay Running on kwok nodes the
bench adds (100 pods a node; PyTorchJobs): the operator's API requests per minute (its
``tac2sol_operator_api_requests_total``; kopf's watches aside) and CPU share while idle, and
the time a restarted operator takes until every run was looked at and its queue is empty.

    .venv/bin/python bench/operator_apply_latency.py [--backend pytorchjob|trainjob] [--single 20]
        [--burst 100] [--running 1000] [--idle-seconds 120] [--kubeconfig PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from tac2sol import devtools

REPO = Path(__file__).resolve().parents[1]
KUBECTL = str(devtools.bin_dir() / "kubectl")
HELM = str(devtools.bin_dir() / "helm")
# The watched kind (plural) of each backend.
JOB_RESOURCE = {"pytorchjob": "pytorchjobs", "trainjob": "trainjobs"}
TAC2SOL = str(Path(sys.executable).parent / "tac2sol")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@contextmanager
def control_plane(kubeconfig: str | None, trainer_v2: bool) -> Iterator[dict[str, str]]:
    """Env for kubectl/the operator: the given cluster, or one started (and stopped) here, with
    Kubeflow Trainer v2 and JobSet added when `trainer_v2`."""
    if kubeconfig:
        yield {**os.environ, "KUBECONFIG": kubeconfig, "PYTHONSAFEPATH": "1"}
        return
    state = Path(tempfile.mkdtemp(prefix="tac2sol-bench-cluster-"))
    say(f"starting a control plane in {state} (hack/cluster.sh up) ...")
    t0 = time.monotonic()
    try:
        with devtools.start_cluster(state) as cluster:
            say(f"control plane up in {time.monotonic() - t0:.0f} s")
            if trainer_v2:
                t0 = time.monotonic()
                devtools.start_trainer_v2(cluster)
                say(f"Trainer v2 and JobSet up in {time.monotonic() - t0:.0f} s")
            yield cluster.env
    except devtools.DevToolsError as exc:
        raise SystemExit(str(exc)) from None


def kubectl(env: dict[str, str], *args: str, input: str | None = None) -> str:
    proc = subprocess.run([KUBECTL, *args], env=env, input=input, capture_output=True, text=True, timeout=600)
    if proc.returncode:
        raise SystemExit(f"kubectl {' '.join(args[:3])} failed: {proc.stderr.strip()}")
    return proc.stdout


class JobWatch:
    """Records when each job (`resource`) of a namespace is first seen (a watch in a thread)."""

    def __init__(self, env: dict[str, str], namespace: str, resource: str) -> None:
        self.seen: dict[str, float] = {}
        self._cv = threading.Condition()
        self._proc = subprocess.Popen(
            [
                KUBECTL,
                "get",
                resource,
                "-n",
                namespace,
                "--watch",
                "--output-watch-events",
                "-o",
                "jsonpath={.type} {.object.metadata.name}{'\\n'}",
            ],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            now = time.monotonic()
            kind, _, name = line.strip().partition(" ")
            if kind == "ADDED" and name:
                with self._cv:
                    self.seen.setdefault(name, now)
                    self._cv.notify_all()

    def wait_for(self, names: list[str], timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        with self._cv:
            while not all(n in self.seen for n in names):
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = [n for n in names if n not in self.seen]
                    raise SystemExit(f"timed out waiting for {len(missing)} jobs, e.g. {missing[:3]}")
                self._cv.wait(left)

    def close(self) -> None:
        self._proc.terminate()


def runs(prefix: str, count: int, backend: str) -> list[dict[str, Any]]:
    base = yaml.safe_load((REPO / "runs" / "qwen32b.yaml").read_text())
    out = []
    for i in range(count):
        run = json.loads(json.dumps(base))
        run["metadata"]["name"] = f"{prefix}-{i:03d}"
        run["spec"]["suspend"] = True
        run["spec"]["backend"] = backend
        out.append(run)
    return out


def plain_jobs(items: list[dict[str, Any]], namespace: str, backend: str) -> list[dict[str, Any]]:
    """The jobs the operator renders for these runs (PyTorchJobs or TrainJobs), without owner
    references."""
    from tac2sol.operator.planner import make_plan
    from tac2sol.operator.reconcile import render_options
    from tac2sol.operator.render import render_job
    from tac2sol.operator.resolve import resolve
    from tac2sol.operator.settings import OperatorSettings
    from tac2sol.operator.specfile import parse_training_run
    from tac2sol.operator.trainjob import render_trainjob

    render = render_trainjob if backend == "trainjob" else render_job
    opts = render_options(OperatorSettings())
    jobs = []
    for item in items:
        data = json.loads(json.dumps(item))
        data["metadata"].update(namespace=namespace, uid="00000000-0000-0000-0000-000000000000")
        run = parse_training_run(data)
        job = render(resolve(run), make_plan(resolve(run)), opts)
        del job["metadata"]["ownerReferences"]
        jobs.append(job)
    return jobs


def wait_established(env: dict[str, str], crd: str, timeout: float = 60) -> None:
    """Poll the CRD's Established condition (`kubectl wait` errors out on a CRD so new that it
    has no status.conditions yet)."""
    jsonpath = "jsonpath={.status.conditions[?(@.type=='Established')].status}"
    deadline = time.monotonic() + timeout
    while kubectl(env, "get", "crd", crd, "-o", jsonpath) != "True":
        if time.monotonic() > deadline:
            raise SystemExit(f"CRD {crd} not Established after {timeout:.0f} s")
        time.sleep(0.2)


def apply_chart_runtime(env: dict[str, str]) -> None:
    """The chart's ClusterTrainingRuntime, which the TrainJobs of both paths refer to."""
    proc = subprocess.run(
        [HELM, "template", "tac2sol", str(REPO / "charts" / "tac2sol"),
         "--set", "trainJob.runtime.create=true", "--show-only", "templates/trainingruntime.yaml"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if proc.returncode:
        raise SystemExit(f"helm template of the chart's ClusterTrainingRuntime failed: {proc.stderr.strip()}")
    kubectl(env, "apply", "--server-side", "-f", "-", input=proc.stdout)


def measure(
    env: dict[str, str], ns: str, resource: str, objects: list[dict[str, Any]], names: list[str], burst: bool
) -> list[float]:
    """Seconds from apply start to each job's ADDED event. For TrainingRuns, also prints the
    operator's own share: each run's ADDED event to its job's."""
    watch = JobWatch(env, ns, resource)
    runs = JobWatch(env, ns, "trainingruns") if objects[0]["kind"] == "TrainingRun" else None
    time.sleep(1.0)  # the watches are established
    out: list[float] = []
    try:
        if burst:
            t0 = time.monotonic()
            kubectl(env, "apply", "--server-side", "-n", ns, "-f", "-", input=yaml.safe_dump_all(objects))
            watch.wait_for(names)
            out = [watch.seen[n] - t0 for n in names]
        else:
            for obj, name in zip(objects, names, strict=True):
                t0 = time.monotonic()
                kubectl(env, "apply", "--server-side", "-n", ns, "-f", "-", input=yaml.safe_dump(obj))
                watch.wait_for([name])
                out.append(watch.seen[name] - t0)
        if runs is not None:
            runs.wait_for(names)
            own = [watch.seen[n] - runs.seen[n] for n in names]
            last = max(runs.seen.values()) - min(runs.seen.values())
            say(f"  run created -> job created: p50 {pct(own, 50):.3f} s, p99 {pct(own, 99):.3f} s; "
                f"runs created over {last:.2f} s")  # fmt: skip
    finally:
        watch.close()
        if runs is not None:
            runs.close()
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


class OperatorProcess:
    """`tac2sol operator --namespace NS` as a process, its log in a file, its /metrics read."""

    def __init__(self, env: dict[str, str], namespace: str) -> None:
        self.log = Path(tempfile.mkstemp(prefix="tac2sol-bench-operator-", suffix=".log")[1])
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [TAC2SOL, "operator", "--namespace", namespace, "--metrics-port", "0"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.port = 0
        for _ in range(600):
            found = re.search(r"serving operator metrics and /healthz on [^:]+:(\d+)", self.log.read_text())
            if found or self.proc.poll() is not None:
                break
            time.sleep(0.1)
        if not found:
            raise SystemExit(f"the operator did not start:\n{self.log.read_text()[-3000:]}")
        self.port = int(found.group(1))

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples with these labels."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as rsp:
            text = rsp.read().decode()
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def bench_nodes(count: int) -> list[dict[str, Any]]:
    """kwok nodes roomy enough for the running case: 100 trainer pods each (4 GPUs a pod)."""
    template = next(yaml.safe_load_all((REPO / "hack" / "kwok" / "nodes.yaml").read_text()))
    nodes = []
    for i in range(count):
        node = json.loads(json.dumps(template))
        name = f"bench-node-{i}"
        node["metadata"]["name"] = name
        node["metadata"]["labels"].update({"kubernetes.io/hostname": name, "tac2sol.dev/bench": "true"})
        room = {"cpu": "4000", "memory": "8000Gi", "pods": "110", "nvidia.com/gpu": "440"}
        node["status"]["capacity"].update(room)
        node["status"]["allocatable"].update(room)
        nodes.append(node)
    return nodes


def claims(namespace: str) -> list[dict[str, Any]]:
    """The claims runs/qwen32b.yaml names, bound to throwaway volumes (kwok pods never mount them)."""
    out: list[dict[str, Any]] = []
    for claim, modes in (("tac2sol-data", ["ReadOnlyMany"]), ("tac2sol-output", ["ReadWriteMany"])):
        pv = f"{namespace}-{claim}"[:63]
        out.append({
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": modes, "storageClassName": "",
                     "hostPath": {"path": "/nonexistent/kwok-pods-never-mount-it"},
                     "claimRef": {"namespace": namespace, "name": claim}},
        })  # fmt: skip
        out.append({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": namespace},
            "spec": {"accessModes": modes, "storageClassName": "", "volumeName": pv,
                     "resources": {"requests": {"storage": "1Gi"}}},
        })  # fmt: skip
    return out


def phases(env: dict[str, str], namespace: str) -> dict[str, int]:
    out = kubectl(env, "get", "trainingruns", "-n", namespace, "-o", "jsonpath={.items[*].status.phase}")
    counts: dict[str, int] = {}
    for phase in out.split():
        counts[phase] = counts.get(phase, 0) + 1
    return counts


def running_case(env: dict[str, str], tag: str, count: int, idle_seconds: float) -> list[str]:
    """``count`` runs whose pods stay Running on kwok nodes: the operator's API requests and CPU
    while idle, and the time a restarted operator takes to converge. Returns the report lines."""
    ns = f"bench-running-{tag}"
    kubectl(env, "create", "namespace", ns)
    nodes = bench_nodes(math.ceil(count / 100))
    volumes = claims(ns)
    lines: list[str] = []
    kubectl(env, "apply", "--server-side", "-f", "-", input=yaml.safe_dump_all([*nodes, *volumes]))
    operator = OperatorProcess(env, ns)
    try:
        items = runs("r", count, "pytorchjob")
        for run in items:
            run["spec"]["suspend"] = False
            run["spec"]["resources"]["podAnnotations"] = {"kwok.tac2sol.dev/outcome": "run-forever"}
        t0 = time.monotonic()
        for i in range(0, count, 100):
            kubectl(
                env,
                "apply",
                "--server-side",
                "-n",
                ns,
                "-f",
                "-",
                input=yaml.safe_dump_all(items[i : i + 100]),
            )
        while (seen := phases(env, ns)).get("Running", 0) < count:
            if time.monotonic() - t0 > 1800:
                raise SystemExit(f"{count} runs not Running after 30 min: {seen}")
            say(f"  {seen}")
            time.sleep(10)
        lines.append(f"{count} runs applied -> all Running in {time.monotonic() - t0:.0f} s")
        time.sleep(30)  # the last status writes and Events settle
        requests0, cpu0, t1 = (
            operator.metric("tac2sol_operator_api_requests_total"),
            operator.cpu(),
            time.monotonic(),
        )
        say(f"  idle for {idle_seconds:.0f} s ...")
        time.sleep(idle_seconds)
        elapsed = time.monotonic() - t1
        requests = operator.metric("tac2sol_operator_api_requests_total") - requests0
        cpu = operator.cpu() - cpu0
        lines.append(
            f"idle with {count} Running runs: {60 * requests / elapsed:.1f} API requests/min, "
            f"CPU {100 * cpu / elapsed:.2f} % of one core (over {elapsed:.0f} s)"
        )
        operator.stop()
        say("  operator restart ...")
        t2 = time.monotonic()
        operator = OperatorProcess(env, ns)
        while True:
            done = operator.metric("tac2sol_operator_reconciliations_total")
            waiting = operator.metric("tac2sol_operator_queue_depth") + operator.metric(
                "tac2sol_operator_reconciles_in_flight"
            )
            if done >= count and not waiting:
                break
            if time.monotonic() - t2 > 600:
                raise SystemExit(f"restart: {done:.0f} of {count} runs looked at after 10 min")
            time.sleep(0.5)
        took = time.monotonic() - t2
        writes = operator.metric("tac2sol_operator_api_requests_total", verb="patch")
        total = operator.metric("tac2sol_operator_api_requests_total")
        lines.append(
            f"operator restart with {count} Running runs: converged in {took:.1f} s (process start "
            f"included); {total:.0f} API requests, {writes:.0f} of them patches (status churn)"
        )
        return lines
    finally:
        operator.stop()
        subprocess.run([KUBECTL, "delete", "namespace", ns, "--wait=false"], env=env, capture_output=True)
        names = [n["metadata"]["name"] for n in nodes] + [
            v["metadata"]["name"] for v in volumes if v["kind"] == "PersistentVolume"
        ]
        subprocess.run(
            [KUBECTL, "delete", "node", *names[: len(nodes)], "--wait=false"], env=env, capture_output=True
        )
        subprocess.run(
            [KUBECTL, "delete", "pv", *names[len(nodes) :], "--wait=false"], env=env, capture_output=True
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--single", type=int, default=20, help="objects applied one at a time (default 20)")
    ap.add_argument("--burst", type=int, default=100, help="objects applied in one go (default 100)")
    ap.add_argument(
        "--running", type=int, default=0, help="runs kept Running on kwok nodes (e.g. 1000; default 0: skip)"
    )
    ap.add_argument("--idle-seconds", type=float, default=120, help="how long the running case watches idle")
    ap.add_argument("--kubeconfig", help="use this running cluster instead of starting one")
    ap.add_argument(
        "--backend", choices=sorted(JOB_RESOURCE), default="pytorchjob", help="the runs' spec.backend"
    )
    args = ap.parse_args()
    tag = secrets.token_hex(3)
    resource = JOB_RESOURCE[args.backend]
    results: dict[tuple[str, str], list[float]] = {}
    running: list[str] = []
    with control_plane(args.kubeconfig, trainer_v2=args.backend == "trainjob") as env:
        kubectl(
            env, "apply", "--server-side", "-f", str(REPO / "manifests/crds/trainingruns.tac2sol.dev.yaml")
        )
        wait_established(env, "trainingruns.tac2sol.dev")
        if args.backend == "trainjob":
            apply_chart_runtime(env)
        op_ns, plain_ns = f"bench-operator-{tag}", f"bench-kubectl-{tag}"
        for ns in (op_ns, plain_ns):
            kubectl(env, "create", "namespace", ns)
        operator = OperatorProcess(env, op_ns)
        try:
            time.sleep(2.0)  # kopf lists and starts its watches
            for shape, count in (("single", args.single), ("burst", args.burst)):
                if count <= 0:
                    continue
                for path, ns in (("kubectl", plain_ns), ("operator", op_ns)):
                    items = runs(f"{shape[0]}{path[0]}", count, args.backend)
                    names = [r["metadata"]["name"] for r in items]
                    objects = items if path == "operator" else plain_jobs(items, ns, args.backend)
                    say(f"{shape}: {count} x {path} ...")
                    burst = shape == "burst"
                    cpu0 = operator.cpu()
                    results[(shape, path)] = measure(env, ns, resource, objects, names, burst=burst)
                    if path == "operator":
                        cpu = operator.cpu() - cpu0
                        say(f"  operator CPU {cpu:.2f} s ({1000 * cpu / count:.1f} ms per run)")
        finally:
            operator.stop()
            for ns in (op_ns, plain_ns):
                subprocess.run(
                    [KUBECTL, "delete", "namespace", ns, "--wait=false"], env=env, capture_output=True
                )
        load = os.getloadavg()[0]
        if args.running > 0:
            say(f"running: {args.running} runs on kwok nodes ...")
            running = running_case(env, tag, args.running, args.idle_seconds)
    cores = os.cpu_count()
    kind = "TrainJob" if args.backend == "trainjob" else "PyTorchJob"
    print(f"\napply -> {kind} created, seconds (one cluster, one run; load {load:.1f}, {cores} cores)")
    print(f"{'shape':<8}{'path':<10}{'n':>5}{'p50':>9}{'p99':>9}{'max':>9}")
    for (shape, path), values in results.items():
        p50, p99 = pct(values, 50), pct(values, 99)
        print(f"{shape:<8}{path:<10}{len(values):>5}{p50:>9.3f}{p99:>9.3f}{max(values):>9.3f}")
    for shape in ("single", "burst"):
        if (shape, "operator") in results:
            op, kc = results[(shape, "operator")], results[(shape, "kubectl")]
            r50, r99 = pct(op, 50) / pct(kc, 50), pct(op, 99) / pct(kc, 99)
            diff = pct(op, 99) - pct(kc, 99)
            print(f"{shape}: operator/kubectl p50 {r50:.2f}x, p99 {r99:.2f}x; p99 difference {diff:+.3f} s")
    if running:
        print(f"\nrunning case (load {os.getloadavg()[0]:.1f} at the end)")
        print("\n".join(running))


if __name__ == "__main__":
    main()
