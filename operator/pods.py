"""Why a run's pods are not running: the job's pods (plain dicts) -> the ``PodsReady`` condition.

Pure: no I/O, no clock. The operator lists the job's pods every poll interval and writes the diagnosis
(``reconcile.record_pods``). What it reads is what ``kubectl describe pod`` shows:

* the scheduler's ``PodScheduled=False`` condition (reason ``Unschedulable``, message like
  ``0/2 nodes are available: 2 Insufficient nvidia.com/gpu``);
* the kubelet's ``state.waiting`` of a container or init container (``ImagePullBackOff``,
  ``CreateContainerConfigError`` with ``secret "hf-token" not found``, ``CrashLoopBackOff`` ...).

When pods differ, the most useful finding wins: a pod the scheduler cannot place before a
container the kubelet cannot start (nothing else can happen to an unplaced pod), and among kubelet
reasons a wrong spec (missing Secret, bad image name) before pulls and crashes. The message says
how many pods share the reason and quotes one of them (the first by name: the master).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

PODS_READY = "PodsReady"

# Reasons of the condition that are no trouble (no Warning, status.message untouched).
PODS_RUNNING = "PodsRunning"  # True: every pod runs (or has finished)
NO_PODS = "NoPods"  # Unknown: the training-operator has not made the pods yet
PODS_STARTING = "PodsStarting"  # False: being scheduled, pulled, created: give it time
POD_FAILED = "PodFailed"  # False: a container exited; the job's conditions decide what follows
JOB_SUSPENDED = "JobSuspended"  # False: a suspended job has no pods (written when the job says so)
NOT_STUCK = frozenset({PODS_RUNNING, NO_PODS, PODS_STARTING, POD_FAILED, JOB_SUSPENDED})

UNSCHEDULABLE = "Unschedulable"
# A container the kernel killed at its memory limit (the kubelet's terminated reason): nothing
# changes until the run asks for more memory, so it is stuck even though the pod gets re-created.
OOM_KILLED = "OOMKilled"
# A container that is being set up normally waits with one of these.
STARTING_WAITS = frozenset({"ContainerCreating", "PodInitializing"})
# The kubelet's waiting reasons, most useful first: the spec is wrong (nothing changes until a
# person acts), then the image, then the container runs and dies. Others rank after these.
KUBELET_REASONS = (
    "CreateContainerConfigError",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerError",
    "ImagePullBackOff",
    "RunContainerError",
    "CrashLoopBackOff",
)
# The kubelet alternates these two for one failing pull; one reason keeps the condition steady.
SAME_REASON = {"ErrImagePull": "ImagePullBackOff"}


@dataclass(frozen=True)
class PodsDiagnosis:
    """The ``PodsReady`` condition's status, reason and message."""

    status: str  # "True", "False" or "Unknown"
    reason: str
    message: str

    @property
    def stuck(self) -> bool:
        """The pods cannot start by themselves as things are (a Warning, and status.message)."""
        return self.status == "False" and self.reason not in NOT_STUCK


@dataclass(frozen=True)
class _Finding:
    rank: int  # lower is more useful
    reason: str
    pod: str
    detail: str  # what to say after "pod <name>"


def expected_pods(kind: str | None, nodes: int | None) -> int | None:
    """Pods of a job as ``tac2sol.operator.render`` makes it: a PyTorchJob has one per node
    (Master + Workers), a TrainJob one per node, an MPIJob one per node plus its Launcher. None when
    unknown."""
    if not nodes:
        return None
    if kind in ("PyTorchJob", "TrainJob"):
        return nodes
    if kind == "MPIJob":
        return nodes + 1
    return None


def diagnose(pods: Iterable[dict[str, Any]], expected: int | None = None) -> PodsDiagnosis:
    """The ``PodsReady`` condition for a job's pods; ``expected``: how many the job should have.

    Pods being deleted are left out (a restarting job replaces them)."""
    live = sorted(
        (p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")),
        key=lambda p: p["metadata"]["name"],
    )
    total = max(len(live), expected or 0)
    if not live:
        return PodsDiagnosis("Unknown", NO_PODS, "the job has no pods yet")
    findings = [f for f in (_finding(p) for p in live) if f is not None]
    if not findings:
        if len(live) < total:
            return PodsDiagnosis(
                "False", PODS_STARTING, f"{len(live)} of {total} pods exist; waiting for the rest"
            )
        finished = any((p.get("status") or {}).get("phase") == "Succeeded" for p in live)
        return PodsDiagnosis(
            "True", PODS_RUNNING, f"all {total} pods running" + (" or finished" if finished else "")
        )
    best = min(findings, key=lambda f: (f.rank, f.pod))
    sharing = [f for f in findings if f.reason == best.reason]
    count = f"{len(sharing)} of {total} pods"
    if best.reason == PODS_STARTING:
        running = len(live) - len(findings)
        return PodsDiagnosis(
            "False", PODS_STARTING, f"{running} of {total} pods running; pod {best.pod} {best.detail}"
        )
    if best.reason == POD_FAILED:
        return PodsDiagnosis("False", POD_FAILED, f"{count} failed; pod {best.pod} {best.detail}")
    if best.reason == OOM_KILLED:
        return PodsDiagnosis("False", OOM_KILLED, f"{count} ran out of memory; pod {best.pod} {best.detail}")
    if best.rank < 10:
        return PodsDiagnosis(
            "False", best.reason, f"{count} cannot be scheduled; pod {best.pod}{best.detail}"
        )
    return PodsDiagnosis("False", best.reason, f"{count} cannot start; pod {best.pod} {best.detail}")


def _finding(pod: dict[str, Any]) -> _Finding | None:
    """What keeps this pod from running; None when it runs or has finished."""
    name = pod["metadata"]["name"]
    status = pod.get("status") or {}
    phase = status.get("phase")
    scheduled = next((c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), None)
    if phase in (None, "Pending") and scheduled is not None and scheduled.get("status") == "False":
        reason = scheduled.get("reason") or UNSCHEDULABLE
        message = _clean(scheduled.get("message")) or "no message from the scheduler"
        said = "" if reason == UNSCHEDULABLE else f" ({reason})"
        return _Finding(0 if reason == UNSCHEDULABLE else 1, reason, name, f"{said}: {message}")
    waits = [
        (kind, cs)
        for kind, key in (("init container", "initContainerStatuses"), ("container", "containerStatuses"))
        for cs in status.get(key) or []
        if ((cs.get("state") or {}).get("waiting") or {}).get("reason") not in (None, *STARTING_WAITS)
    ]
    if waits and phase in (None, "Pending", "Running"):
        kind, cs = min(waits, key=lambda w: _kubelet_rank(w[1]["state"]["waiting"]["reason"]))
        waiting = cs["state"]["waiting"]
        reason = SAME_REASON.get(waiting["reason"], waiting["reason"])
        detail = f"{kind} {cs.get('name')} is waiting ({waiting['reason']})"
        if waiting.get("message"):
            detail += f": {_clean(waiting['message'])}"
        last = (cs.get("lastState") or {}).get("terminated")
        if last and reason == "CrashLoopBackOff":
            why = last.get("reason") or "no reason"
            detail += f"; it last exited with code {last.get('exitCode')} ({why})"
            if why == OOM_KILLED:
                return _Finding(OOM_RANK, OOM_KILLED, name, f"{detail}: {oom_advice(pod, cs.get('name'))}")
        return _Finding(10 + _kubelet_rank(waiting["reason"]), reason, name, detail)
    if phase == "Running" or phase == "Succeeded":
        return None
    if phase == "Failed":
        for cs in status.get("containerStatuses") or []:
            done = (cs.get("state") or {}).get("terminated") or {}
            if done.get("reason") == OOM_KILLED:
                detail = f"container {cs.get('name')} was OOMKilled (exit code {done.get('exitCode')})"
                return _Finding(OOM_RANK, OOM_KILLED, name, f"{detail}: {oom_advice(pod, cs.get('name'))}")
        return _Finding(90, POD_FAILED, name, _failure(status))
    if scheduled is None or scheduled.get("status") != "True":
        return _Finding(95, PODS_STARTING, name, "is waiting to be scheduled")
    where = f" on {pod['spec']['nodeName']}" if (pod.get("spec") or {}).get("nodeName") else ""
    return _Finding(95, PODS_STARTING, name, f"is starting{where}")


# After the spec and image troubles (a pod that never ran), before plain failures and slow starts.
OOM_RANK = 10 + len(KUBELET_REASONS) + 1


def oom_advice(pod: dict[str, Any], container: str | None) -> str:
    """What to change when ``container`` of ``pod`` was OOMKilled: its memory limit is the run's
    ``spec.resources.memory`` (per pod, as ``tac2sol.operator.render`` sets it)."""
    containers = (pod.get("spec") or {}).get("containers") or []
    spec: dict[str, Any] = next((c for c in containers if c.get("name") == container), {})
    limit = ((spec.get("resources") or {}).get("limits") or {}).get("memory")
    at = f" at its memory limit of {limit}" if limit else ""
    return (
        f"it ran out of memory{at}: raise the TrainingRun's spec.resources.memory "
        "(or lower training.perDeviceBatchSize or maxSeqLength)"
    )


def oom_killed(pod: dict[str, Any]) -> bool:
    """Whether the pod failed because a container was OOMKilled (what ``diagnose`` reports as such)."""
    status = pod.get("status") or {}
    return status.get("phase") == "Failed" and any(
        ((cs.get("state") or {}).get("terminated") or {}).get("reason") == OOM_KILLED
        for cs in status.get("containerStatuses") or []
    )


def with_oom_killed(listed: list[dict[str, Any]], oom: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The job's pods as listed, with ``oom`` (an OOMKilled pod the watch saw, gone since: the
    training-operator deletes it within a second, before a poll lists it) in place of its
    re-created namesake."""
    if oom is None:
        return listed
    name = oom["metadata"]["name"]
    return [oom, *(p for p in listed if p["metadata"]["name"] != name)]


def keep_oom(
    previous: dict[str, Any] | None, diagnosis: PodsDiagnosis, generation: int | None
) -> PodsDiagnosis:
    """``diagnosis``, or the stored ``previous`` condition while it says OOMKilled for this
    generation of the spec and the pods merely run, start or fail again.

    Under the ExitCode restart policy the training-operator re-creates an OOMKilled pod (exit 137),
    which runs until the kernel kills it again: "all pods running" in between would hide the one
    thing to change. Another stuck reason replaces it; a new generation (the memory raised) starts
    afresh."""
    if (
        previous is not None
        and (previous.get("status"), previous.get("reason")) == ("False", OOM_KILLED)
        and previous.get("observedGeneration") == generation
        and not diagnosis.stuck
    ):
        return PodsDiagnosis("False", OOM_KILLED, str(previous.get("message") or ""))
    return diagnosis


def _kubelet_rank(reason: str) -> int:
    reason = SAME_REASON.get(reason, reason)
    return KUBELET_REASONS.index(reason) if reason in KUBELET_REASONS else len(KUBELET_REASONS)


def _failure(status: dict[str, Any]) -> str:
    for cs in status.get("containerStatuses") or []:
        done = (cs.get("state") or {}).get("terminated")
        if done and done.get("exitCode", 0) != 0:
            return (
                f"container {cs.get('name')} exited with code {done['exitCode']} "
                f"({done.get('reason') or 'no reason'})"
            )
    return f"failed ({status.get('reason') or 'no reason given'})"


def _clean(message: str | None) -> str:
    """One line: the scheduler's messages end with a newline or a trailing full stop."""
    return " ".join((message or "").split()).rstrip(".")


def is_stuck(condition: dict[str, Any] | None) -> bool:
    """Whether a stored ``PodsReady`` condition says the pods cannot start as things are."""
    return (
        condition is not None
        and condition.get("status") == "False"
        and condition.get("reason") not in NOT_STUCK
    )


def pods_condition(status: dict[str, Any]) -> dict[str, Any] | None:
    """The run status' ``PodsReady`` condition, if any."""
    return next((c for c in status.get("conditions") or [] if c.get("type") == PODS_READY), None)


def stuck_reason(status: dict[str, Any]) -> str | None:
    """The reason a run's pods are stuck (for the operator gauge); None when they are not."""
    cond = pods_condition(status)
    return str(cond["reason"]) if cond is not None and is_stuck(cond) else None
