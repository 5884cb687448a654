"""Pod diagnosis: a job's pods (shaped as the apiserver returns them) -> the PodsReady condition.

The pod dicts below follow `kubectl get pod -o json` of real pods: the scheduler's PodScheduled
condition (NO_GPU is kube-scheduler v1.35's message, as the e2e test gets it), the kubelet's
containerStatuses with state.waiting / lastState.terminated."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tac2sol.operator import lifecycle, pods
from tac2sol.operator.planner import make_plan
from tac2sol.operator.podcache import slim
from tac2sol.operator.render import RenderOptions, render_children
from tac2sol.operator.resolve import resolve
from tac2sol.operator.specfile import parse_training_run

T = "2025-06-01T10:00:00Z"
NO_GPU = (
    "0/2 nodes are available: 2 Insufficient nvidia.com/gpu. no new claims to deallocate, preemption: "
    "0/2 nodes are available: 2 No preemption victims found for incoming pod."
)


def _pod(name: str, status: dict[str, Any], *, node: str | None = None, **meta: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [{"name": "pytorch", "image": "tac2sol/trainer:e2e"}],
        "restartPolicy": "Never",
        "schedulerName": "default-scheduler",
    }
    if node:
        spec["nodeName"] = node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "ml",
            "labels": {
                "training.kubeflow.org/job-name": name.rsplit("-", 2)[0],
                "training.kubeflow.org/replica-type": name.rsplit("-", 2)[1],
            },
            "ownerReferences": [{"kind": "PyTorchJob", "name": name.rsplit("-", 2)[0], "controller": True}],
            **meta,
        },
        "spec": spec,
        "status": {"qosClass": "Burstable", **status},
    }


def _cond(type_: str, status: str, reason: str | None = None, message: str | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"type": type_, "status": status, "lastProbeTime": None, "lastTransitionTime": T}
    if reason:
        c["reason"] = reason
    if message:
        c["message"] = message
    return c


def unschedulable(name: str, message: str = NO_GPU, reason: str = "Unschedulable") -> dict[str, Any]:
    return _pod(name, {"phase": "Pending", "conditions": [_cond("PodScheduled", "False", reason, message)]})


def not_yet_scheduled(name: str) -> dict[str, Any]:
    return _pod(name, {"phase": "Pending"})


def _scheduled(name: str, phase: str, statuses: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    conditions = [
        _cond("Initialized", "True"),
        _cond("Ready", "True" if phase == "Running" else "False"),
        _cond("ContainersReady", "True" if phase == "Running" else "False"),
        _cond("PodScheduled", "True"),
    ]
    status = {
        "phase": phase,
        "conditions": conditions,
        "hostIP": "10.0.0.1",
        "podIP": "10.244.0.5",
        "startTime": T,
        "containerStatuses": statuses,
        **extra,
    }
    return _pod(name, status, node="gpu-node-0")


def _cs(state: dict[str, Any], *, name: str = "pytorch", last: dict[str, Any] | None = None) -> Any:
    return {
        "name": name,
        "image": "tac2sol/trainer:e2e",
        "imageID": "",
        "ready": "running" in state,
        "restartCount": 0 if last is None else 4,
        "started": "running" in state,
        "state": state,
        "lastState": last or {},
    }


def running(name: str) -> dict[str, Any]:
    return _scheduled(name, "Running", [_cs({"running": {"startedAt": T}})])


def succeeded(name: str) -> dict[str, Any]:
    done = {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": T, "finishedAt": T}}
    return _scheduled(name, "Succeeded", [_cs(done)])


def failed(name: str, code: int = 1) -> dict[str, Any]:
    done = {"terminated": {"exitCode": code, "reason": "Error", "startedAt": T, "finishedAt": T}}
    return _scheduled(name, "Failed", [_cs(done)])


def waiting(name: str, reason: str, message: str | None = None, phase: str = "Pending") -> dict[str, Any]:
    state: dict[str, Any] = {"waiting": {"reason": reason}}
    if message:
        state["waiting"]["message"] = message
    return _scheduled(name, phase, [_cs(state)])


def crash_looping(name: str) -> dict[str, Any]:
    state = {
        "waiting": {
            "reason": "CrashLoopBackOff",
            "message": f"back-off 2m40s restarting failed container=pytorch pod={name}_ml(0f1e)",
        }
    }
    last = {"terminated": {"exitCode": 137, "reason": "OOMKilled", "startedAt": T, "finishedAt": T}}
    return with_memory_limit(_scheduled(name, "Running", [_cs(state, last=last)]))


def with_memory_limit(pod: dict[str, Any], limit: str = "3Gi") -> dict[str, Any]:
    pod["spec"]["containers"][0]["resources"] = {"limits": {"memory": limit}, "requests": {"memory": limit}}
    return pod


def oom_failed(name: str) -> dict[str, Any]:
    """The kernel killed the container at its limit (`tac2sol torchrun` exits 137 for a killed rank)."""
    done = {"terminated": {"exitCode": 137, "reason": "OOMKilled", "startedAt": T, "finishedAt": T}}
    return with_memory_limit(_scheduled(name, "Failed", [_cs(done)]))


PULL_BACKOFF = 'Back-off pulling image "busybox:nope"'


def init_waiting(name: str) -> dict[str, Any]:
    pod = _scheduled(
        name,
        "Pending",
        [_cs({"waiting": {"reason": "PodInitializing"}})],
        initContainerStatuses=[
            _cs({"waiting": {"reason": "ImagePullBackOff", "message": PULL_BACKOFF}}, name="fetch-data")
        ],
    )
    pod["status"]["conditions"][0] = _cond("Initialized", "False", "ContainersNotInitialized")
    return pod


SECRET = 'secret "hf-token" not found'
PULL = (
    'failed to pull and unpack image "ghcr.io/tac2sol/tac2sol-trainer:nope": failed to resolve '
    'reference "ghcr.io/tac2sol/tac2sol-trainer:nope": not found'
)

CASES = [
    pytest.param(
        [running("big-master-0"), running("big-worker-0"), running("big-worker-1")],
        3,
        ("True", "PodsRunning", "all 3 pods running"),
        id="all-running",
    ),
    pytest.param(
        [succeeded("big-master-0"), running("big-worker-0")],
        2,
        ("True", "PodsRunning", "all 2 pods running or finished"),
        id="running-or-finished",
    ),
    pytest.param([], 2, ("Unknown", "NoPods", "the job has no pods yet"), id="no-pods"),
    pytest.param(
        [running("big-master-0"), running("big-worker-0")],
        3,
        ("False", "PodsStarting", "2 of 3 pods exist; waiting for the rest"),
        id="pods-missing",
    ),
    pytest.param(
        [running("big-master-0"), running("big-worker-0"), unschedulable("big-worker-1")],
        3,
        (
            "False",
            "Unschedulable",
            "1 of 3 pods cannot be scheduled; pod big-worker-1: 0/2 nodes are available: 2 Insufficient "
            "nvidia.com/gpu. no new claims to deallocate, preemption: 0/2 nodes are available: 2 No "
            "preemption victims found for incoming pod",
        ),
        id="unschedulable",
    ),
    pytest.param(
        [waiting("big-master-0", "CreateContainerConfigError", SECRET), unschedulable("big-worker-0")],
        2,
        ("False", "Unschedulable", "1 of 2 pods cannot be scheduled; pod big-worker-0: 0/2 nodes"),
        id="unschedulable-before-kubelet",
    ),
    pytest.param(
        [
            unschedulable("big-master-0", "0/3 nodes are available: 3 node(s) had untolerated taint"),
            unschedulable("big-worker-0", "0/3 nodes are available: 3 node(s) had untolerated taint"),
        ],
        2,
        ("False", "Unschedulable", "2 of 2 pods cannot be scheduled; pod big-master-0: 0/3 nodes"),
        id="count-shared",
    ),
    pytest.param(
        [unschedulable("big-master-0", "waiting for scheduling gates: [kueue]", reason="SchedulingGated")],
        1,
        ("False", "SchedulingGated", "1 of 1 pods cannot be scheduled; pod big-master-0 (SchedulingGated): "),
        id="gated",
    ),
    pytest.param(
        [
            waiting("cfg-master-0", "ImagePullBackOff", 'Back-off pulling image "x"'),
            waiting("cfg-worker-0", "CreateContainerConfigError", SECRET),
            waiting("cfg-worker-1", "CreateContainerConfigError", SECRET),
        ],
        3,
        (
            "False",
            "CreateContainerConfigError",
            "2 of 3 pods cannot start; pod cfg-worker-0 container pytorch is waiting "
            '(CreateContainerConfigError): secret "hf-token" not found',
        ),
        id="config-error-before-pull",
    ),
    pytest.param(
        [waiting("img-master-0", "ErrImagePull", PULL), waiting("img-worker-0", "ImagePullBackOff")],
        2,
        (
            "False",
            "ImagePullBackOff",
            f"2 of 2 pods cannot start; pod img-master-0 container pytorch is waiting (ErrImagePull): {PULL}",
        ),
        id="pull-errors-are-one-reason",
    ),
    pytest.param(
        [waiting("bad-master-0", "InvalidImageName", 'Failed to apply default image tag "Trainer:x"')],
        1,
        ("False", "InvalidImageName", "1 of 1 pods cannot start; pod bad-master-0 container pytorch"),
        id="invalid-image",
    ),
    pytest.param(
        [crash_looping("oom-master-0"), running("oom-worker-0")],
        2,
        (
            "False",
            "OOMKilled",
            "1 of 2 pods ran out of memory; pod oom-master-0 container pytorch is waiting "
            "(CrashLoopBackOff): back-off 2m40s restarting failed container=pytorch "
            "pod=oom-master-0_ml(0f1e); it last exited with code 137 (OOMKilled): it ran out of "
            "memory at its memory limit of 3Gi: raise the TrainingRun's spec.resources.memory",
        ),
        id="crash-loop-oom-in-a-running-pod",
    ),
    pytest.param(
        [oom_failed("oom-master-0"), running("oom-worker-0")],
        2,
        (
            "False",
            "OOMKilled",
            "1 of 2 pods ran out of memory; pod oom-master-0 container pytorch was OOMKilled "
            "(exit code 137): it ran out of memory at its memory limit of 3Gi: raise the TrainingRun's "
            "spec.resources.memory",
        ),
        id="oom-killed-pod",
    ),
    pytest.param(
        [init_waiting("data-master-0")],
        1,
        (
            "False",
            "ImagePullBackOff",
            "1 of 1 pods cannot start; pod data-master-0 init container fetch-data is waiting "
            '(ImagePullBackOff): Back-off pulling image "busybox:nope"',
        ),
        id="init-container",
    ),
    pytest.param(
        [waiting("new-master-0", "ContainerCreating"), running("new-worker-0")],
        2,
        ("False", "PodsStarting", "1 of 2 pods running; pod new-master-0 is starting on gpu-node-0"),
        id="container-creating-is-no-trouble",
    ),
    pytest.param(
        [not_yet_scheduled("new-master-0")],
        1,
        ("False", "PodsStarting", "0 of 1 pods running; pod new-master-0 is waiting to be scheduled"),
        id="not-yet-scheduled",
    ),
    pytest.param(
        [failed("bad-master-0", 3), running("bad-worker-0")],
        2,
        ("False", "PodFailed", "1 of 2 pods failed; pod bad-master-0 container pytorch exited with code 3"),
        id="failed-pod",
    ),
    pytest.param(
        [
            unschedulable("re-master-0", reason="Unschedulable")
            | {"metadata": {"name": "re-master-0", "deletionTimestamp": T}},
            running("re-worker-0"),
        ],
        None,
        ("True", "PodsRunning", "all 1 pods running"),
        id="deleted-pods-are-left-out",
    ),
]


@pytest.mark.parametrize(("pods_", "expected", "want"), CASES)
def test_diagnose(pods_: list[dict[str, Any]], expected: int | None, want: tuple[str, str, str]) -> None:
    got = pods.diagnose(pods_, expected)
    assert (got.status, got.reason) == want[:2]
    assert got.message.startswith(want[2]), got.message
    assert got.stuck == (got.status == "False" and got.reason not in pods.NOT_STUCK)


@pytest.mark.parametrize(
    ("pods_", "stuck"),
    [
        pytest.param([unschedulable("a-master-0")], True, id="unschedulable"),
        pytest.param([waiting("a-master-0", "CreateContainerConfigError", SECRET)], True, id="config"),
        pytest.param([waiting("a-master-0", "ContainerCreating")], False, id="creating"),
        pytest.param([failed("a-master-0")], False, id="failed"),
        pytest.param([oom_failed("a-master-0")], True, id="oom-killed"),
        pytest.param([running("a-master-0")], False, id="running"),
        pytest.param([], False, id="none"),
    ],
)
def test_stuck_means_a_person_or_the_cluster_must_act(pods_: list[dict[str, Any]], stuck: bool) -> None:
    d = pods.diagnose(pods_, 1)
    assert d.stuck is stuck
    status = {"conditions": [{"type": "PodsReady", "status": d.status, "reason": d.reason}]}
    assert pods.is_stuck(pods.pods_condition(status)) is stuck
    assert pods.stuck_reason(status) == (d.reason if stuck else None)


def test_the_input_is_not_changed() -> None:
    given = [unschedulable("x-worker-1"), running("x-master-0")]
    before = yaml.safe_dump(given)
    pods.diagnose(given, 2)
    assert yaml.safe_dump(given) == before


@pytest.mark.parametrize(
    ("run", "changes"),
    [
        pytest.param("qwen32b", {}, id="pytorchjob-1-node"),
        pytest.param("llama-3.1-70b", {"nodes": 3}, id="pytorchjob-3-nodes"),
        pytest.param("qwen2.5-72b", {"nodes": 2, "launcher": "mpijob"}, id="mpijob"),
    ],
)
def test_expected_pods_match_the_rendered_job(run: str, changes: dict[str, Any]) -> None:
    from pathlib import Path

    data = yaml.safe_load((Path(__file__).resolve().parents[2] / "runs" / f"{run}.yaml").read_text())
    data["metadata"].update(namespace="ml", uid="u1", generation=1)
    spec = data["spec"]
    if "launcher" in changes:
        spec["launcher"] = changes["launcher"]
    if "nodes" in changes:
        spec["resources"]["nodes"] = changes["nodes"]
        spec["training"]["globalBatchSize"] = 4 * changes["nodes"] * spec["training"]["perDeviceBatchSize"]
    parsed = parse_training_run(data)
    plan = make_plan(resolve(parsed))
    job = render_children(resolve(parsed), plan, RenderOptions(trainer_image="t:1"))[-1]
    replicas = job["spec"].get("pytorchReplicaSpecs") or job["spec"]["mpiReplicaSpecs"]
    assert pods.expected_pods(job["kind"], plan.nodes) == sum(r["replicas"] for r in replicas.values())


def test_expected_pods_unknown() -> None:
    assert pods.expected_pods("PyTorchJob", None) is None and pods.expected_pods("TFJob", 2) is None


@pytest.mark.parametrize(
    ("spec", "status", "watch"),
    [
        pytest.param({}, {"phase": "Planning", "jobRef": {"name": "r"}}, True, id="planning"),
        pytest.param({}, {"phase": "Running", "jobRef": {"name": "r"}}, True, id="running"),
        pytest.param({}, {"phase": "Pending"}, False, id="no-job-yet"),
        pytest.param({"suspend": True}, {"phase": "Planning", "jobRef": {"name": "r"}}, False, id="suspend"),
        pytest.param({}, {"phase": "Suspended", "jobRef": {"name": "r"}}, False, id="suspended"),
        pytest.param({}, {"phase": "Succeeded", "jobRef": {"name": "r"}}, False, id="done"),
        pytest.param({}, {"phase": "Failed", "jobRef": {"name": "r"}}, False, id="failed"),
    ],
)
def test_which_runs_have_their_pods_watched(
    spec: dict[str, Any], status: dict[str, Any], watch: bool
) -> None:
    assert lifecycle.pods_to_watch(spec, status) is watch


def test_the_pod_cache_keeps_what_an_oom_message_names() -> None:
    """The pod watch keeps each container's memory limit (and no other spec): the OOMKilled
    message names the limit as it does for a pod read whole."""
    pod = oom_failed("oom-master-0")
    cached = slim(pod)
    assert cached["spec"]["containers"] == [{"name": "pytorch", "resources": {"limits": {"memory": "3Gi"}}}]
    assert pods.diagnose([cached], 1) == pods.diagnose([pod], 1)
    assert "at its memory limit of 3Gi" in pods.diagnose([cached], 1).message
    assert slim(running("a-master-0"))["spec"]["containers"] == [{"name": "pytorch"}]


def _stored(d: pods.PodsDiagnosis, generation: int = 1) -> dict[str, Any]:
    return lifecycle.condition(pods.PODS_READY, d.status, d.reason, d.message, generation=generation)


def test_oomkilled_stays_while_the_re_created_pod_runs_or_starts() -> None:
    """The training-operator re-creates the OOMKilled pod (exit 137); until the kernel kills it
    again it runs: the condition keeps saying OOMKilled, which pod and what to change."""
    oom = pods.diagnose([oom_failed("oom-master-0"), running("oom-worker-0")], 2)
    assert oom.reason == pods.OOM_KILLED and oom.stuck
    previous = _stored(oom)
    for again in (
        [running("oom-master-0"), running("oom-worker-0")],
        [waiting("oom-master-0", "ContainerCreating"), running("oom-worker-0")],
        [running("oom-worker-0")],
        [failed("oom-master-0", 143), running("oom-worker-0")],
    ):
        assert pods.keep_oom(previous, pods.diagnose(again, 2), 1) == oom


def test_oomkilled_gives_way_to_another_stuck_reason_or_a_new_spec() -> None:
    previous = _stored(pods.diagnose([oom_failed("oom-master-0")], 1))
    pull = pods.diagnose([waiting("oom-master-0", "ImagePullBackOff", PULL_BACKOFF)], 1)
    assert pods.keep_oom(previous, pull, 1) == pull
    runs = pods.diagnose([running("oom-master-0")], 1)
    assert pods.keep_oom(previous, runs, 2) == runs  # spec generation 2: the memory was raised
    assert pods.keep_oom(_stored(pull), runs, 1) == runs  # only OOMKilled sticks
    assert pods.keep_oom(None, runs, 1) == runs
