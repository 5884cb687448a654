"""What a TrainingRun's status says, as pure functions: job conditions -> phase, condition merging.

Phases (``status.phase``) and who sets them:

* ``Pending``   the operator has seen this generation and not planned it yet (or waits for
                something it cannot change, e.g. the Kubeflow CRDs; the condition says what).
* ``Planning``  planned (``status.plan``), children applied; the job waits for its pods
                (Kubeflow ``Created``, or resumed after a suspension).
* ``Running``   the job's ``Running`` condition; ``Restarting`` stays Running with reason Restarting.
* ``Succeeded`` / ``Failed``  the job's terminal condition, or Failed before any job: an invalid
                spec (reason InvalidSpec) or a plan that does not fit (PlanDoesNotFit).
* ``Suspended`` the job's ``Suspended`` condition (``spec.suspend: true``).

A spec change while a job exists is rejected (condition ``SpecChangeRejected``): the job keeps
the spec it was made from, except ``spec.suspend``. Delete and re-create the run to change it; a
restarted job resumes from the last checkpoint on the output volume.

No clock here: callers pass ``now`` (RFC 3339).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tac2sol.operator import pods as pod_status
from tac2sol.operator.names import TRAINJOB
from tac2sol.operator.status import Phase

TERMINAL = frozenset({Phase.SUCCEEDED.value, Phase.FAILED.value})

# Condition types the operator writes (besides the job-derived Running/Suspended/Succeeded/Failed).
PLANNED = "Planned"
JOB_CREATED = "JobCreated"
SPEC_CHANGE_REJECTED = "SpecChangeRejected"

# Reasons of failures the operator decides itself (no job involved).
INVALID_SPEC = "InvalidSpec"
PLAN_DOES_NOT_FIT = "PlanDoesNotFit"
BACKEND_UNAVAILABLE = "BackendUnavailable"
OPERATOR_FAILURES = frozenset({INVALID_SPEC, PLAN_DOES_NOT_FIT, BACKEND_UNAVAILABLE})


@dataclass(frozen=True)
class JobState:
    """What a Kubeflow job's status means for the run."""

    phase: str
    reason: str
    message: str
    start_time: str | None = None
    completion_time: str | None = None


# Kubeflow JobConditionType -> (phase, our CamelCase reason), most decisive first.
_JOB_CONDITIONS: tuple[tuple[str, str, str], ...] = (
    ("Succeeded", Phase.SUCCEEDED.value, "JobSucceeded"),
    ("Failed", Phase.FAILED.value, "JobFailed"),
    ("Suspended", Phase.SUSPENDED.value, "JobSuspended"),
    ("Restarting", Phase.RUNNING.value, "Restarting"),
    ("Running", Phase.RUNNING.value, "JobRunning"),
    ("Created", Phase.PLANNING.value, "WaitingForPods"),
)


def job_state(job: dict[str, Any]) -> JobState | None:
    """The run phase a job's conditions mean; None while the job has no conditions yet.
    A TrainJob's are read by ``tac2sol.operator.trainjob_status``."""
    if job.get("kind") == TRAINJOB:
        from tac2sol.operator.trainjob_status import trainjob_state  # it builds on JobState

        return trainjob_state(job)
    status = job.get("status") or {}
    true = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    kind = job.get("kind", "job")
    for cond_type, phase, reason in _JOB_CONDITIONS:
        cond = true.get(cond_type)
        if cond is None:
            continue
        message = cond.get("message") or f"{kind} condition {cond_type}"
        if cond_type == "Created":
            message = f"{kind} {job['metadata']['name']} created; waiting for its pods to run"
        return JobState(
            phase=phase,
            reason=reason,
            message=message,
            start_time=status.get("startTime"),
            completion_time=status.get("completionTime"),
        )
    if status.get("conditions"):
        # Resumed after a suspension: Created stays True, Suspended/Running are False.
        return JobState(Phase.PLANNING.value, "WaitingForPods", f"{kind} waiting for its pods to run")
    return None


# How much of a container's termination message a failure quotes.
MESSAGE_CHARS = 300


def last_line(message: str | None) -> str:
    """The last non-empty line of a termination message, at most MESSAGE_CHARS long: with
    ``terminationMessagePolicy: FallbackToLogsOnError`` (the chart's TrainJob runtime) the kubelet
    puts the tail of the log there, whose last line is the error."""
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    if not lines:
        return ""
    line = lines[-1]
    return line if len(line) <= MESSAGE_CHARS else "..." + line[-(MESSAGE_CHARS - 3) :]


def pod_failures(pods: list[dict[str, Any]]) -> list[str]:
    """One phrase per container that ended with a non-zero exit code, e.g.
    ``pod r-master-0 container pytorch exited with code 1 (Error)``."""
    out = []
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        for cs in statuses:
            terminated = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get(
                "terminated"
            )
            if terminated and terminated.get("exitCode", 0) != 0:
                why = terminated.get("reason") or "no reason given"
                said = last_line(terminated.get("message"))
                extra = f": {said}" if said else ""
                if why == pod_status.OOM_KILLED:
                    extra += f"; {pod_status.oom_advice(pod, cs.get('name'))}"
                out.append(
                    f"pod {pod['metadata']['name']} container {cs.get('name')} exited with code "
                    f"{terminated['exitCode']} ({why}{extra})"
                )
    return out


def condition(
    type_: str, status: bool | str, reason: str, message: str, *, generation: int | None
) -> dict[str, Any]:
    """A condition without its transition time (``merge_conditions`` stamps it)."""
    value = status if isinstance(status, str) else ("True" if status else "False")
    cond: dict[str, Any] = {"type": type_, "status": value, "reason": reason, "message": message}
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


def merge_conditions(
    current: list[dict[str, Any]], updates: list[dict[str, Any]], now: str
) -> list[dict[str, Any]]:
    """One condition per type; ``lastTransitionTime`` moves only when the status flips."""
    merged = {c["type"]: dict(c) for c in current}
    for new in updates:
        old = merged.get(new["type"])
        entry = dict(new)
        if old is not None and old.get("status") == new["status"] and old.get("lastTransitionTime"):
            entry["lastTransitionTime"] = old["lastTransitionTime"]
        else:
            entry["lastTransitionTime"] = now
        merged[new["type"]] = entry
    return list(merged.values())


def job_conditions(state: JobState, generation: int | None) -> list[dict[str, Any]]:
    """The run conditions a job state implies: Running, Suspended, Succeeded and Failed, True for the
    one matching the phase; all carry the state's reason (why the others are False)."""
    out = []
    for type_, phase in (
        ("Running", Phase.RUNNING.value),
        ("Suspended", Phase.SUSPENDED.value),
        ("Succeeded", Phase.SUCCEEDED.value),
        ("Failed", Phase.FAILED.value),
    ):
        on = state.phase == phase
        out.append(condition(type_, on, state.reason, state.message if on else "", generation=generation))
    return out


# Phases in which a run's pods may be stuck: the operator polls them (PodsReady).
PODS_PHASES = frozenset({Phase.PENDING.value, Phase.PLANNING.value, Phase.RUNNING.value})


def pods_to_watch(spec: dict[str, Any], status: dict[str, Any]) -> bool:
    """Whether the run's pods may be stuck: it has a job, is not finished and not suspended."""
    return (
        bool((status.get("jobRef") or {}).get("name"))
        and status.get("phase") in PODS_PHASES
        and not spec.get("suspend")
    )


def phase_is_operator_owned(status: dict[str, Any]) -> bool:
    """True while no job decides the phase: unset, Pending, or Failed by the operator itself."""
    phase = status.get("phase")
    if phase in (None, Phase.PENDING.value):
        return True
    if phase == Phase.FAILED.value:
        failed = next((c for c in status.get("conditions") or [] if c.get("type") == "Failed"), None)
        return failed is not None and failed.get("reason") in OPERATOR_FAILURES
    return False
