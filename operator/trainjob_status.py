"""A TrainJob's status (Kubeflow Trainer v2.3) -> what it means for the run: pure functions.

Trainer v2.3 writes these conditions on a TrainJob (no Created or Running condition, unlike v1):

* ``Suspended``  True while ``spec.suspend`` (reason Suspended); False, reason Resumed, after it;
* ``Complete``   copied from the JobSet's Completed condition;
* ``Failed``     the JobSet's Failed condition (reasons such as FailurePolicy or
                 ReachedMaxRestarts, with the JobSet's message), or Trainer's own
                 (DeadlineExceeded, TrainingRuntimeNotSupported).

Running is read from ``status.jobsStatus``: the trainer's replicated job (``node``) counts as ready
once all its pods are ready or done. Before that the run waits for its pods (Planning), as it does
after a v1 job's Created.

A TrainJob whose JobSet Trainer could not create (JobSet's webhook refused it, a runtime it
cannot use) gets no condition at all in v2.3: only a Warning Event, reason
:data:`CREATION_FAILED`, at each retry. :func:`creation_failure` turns those Events into the run's
``PodsReady`` diagnosis (stuck: ``status.message`` says why and what to do; the phase stays,
since Trainer retries by itself and a fixed runtime lets the run go on).

``status.trainerStatus`` (the TrainJobStatus feature gate, alpha, off by default) carries progress
the pods push to the controller; :func:`trainer_status_progress` turns it into ``status.progress``
with ``source: trainerStatus``. The operator's own /metrics reading (``source: metrics``) has more
figures (step, total steps, tokens/s) and wins while it is current.
"""

from __future__ import annotations

from typing import Any

from tac2sol.operator.lifecycle import JobState
from tac2sol.operator.names import TRAINER_REPLICATED_JOB
from tac2sol.operator.pods import PodsDiagnosis
from tac2sol.operator.status import Phase

# The Event reason of Trainer v2.3's TrainJob controller when it could not make the JobSet.
CREATION_FAILED = "TrainJobResourcesCreationFailed"
# The prefix of that Event's message ("TrainJob resources reconciliation failed: <error>").
_CREATION_PREFIX = "TrainJob resources reconciliation failed: "

# trainerStatus.metrics names (transformers' KubeflowCallback) -> status.progress fields.
_METRIC_FIELDS = {"loss": "loss", "train_loss": "loss", "epoch": "epoch", "current_epoch": "epoch"}
_STEP_FIELDS = {"current_step": "step", "total_steps": "totalSteps"}


def _conditions(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c.get("type", ""): c for c in (job.get("status") or {}).get("conditions") or []}


def _true(cond: dict[str, Any] | None) -> bool:
    return cond is not None and cond.get("status") == "True"


def trainjob_state(job: dict[str, Any]) -> JobState | None:
    """The run phase a TrainJob's status means; None while the controller has written nothing."""
    name = job["metadata"]["name"]
    status = job.get("status") or {}
    conds = _conditions(job)
    suspended = conds.get("Suspended") or {}
    # When the pods started: on resume, the resumption; else when the TrainJob was made.
    if suspended.get("status") == "False":
        start = suspended.get("lastTransitionTime")
    else:
        start = job["metadata"].get("creationTimestamp")
    if _true(conds.get("Complete")):
        done = conds["Complete"]
        message = f"TrainJob {name} complete" + (f": {done['message']}" if done.get("message") else "")
        return JobState(Phase.SUCCEEDED.value, "JobSucceeded", message, start, done.get("lastTransitionTime"))
    if _true(conds.get("Failed")):
        failed = conds["Failed"]
        why = failed.get("reason") or "no reason given"
        message = f"TrainJob {name} failed ({why})" + (
            f": {failed['message']}" if failed.get("message") else ""
        )
        return JobState(Phase.FAILED.value, "JobFailed", message, start, failed.get("lastTransitionTime"))
    if _true(suspended or None):
        return JobState(Phase.SUSPENDED.value, "JobSuspended", f"TrainJob {name} is suspended")
    trainer = next(
        (j for j in status.get("jobsStatus") or [] if j.get("name") == TRAINER_REPLICATED_JOB), None
    )
    if trainer is not None and (trainer.get("ready") or 0) + (trainer.get("succeeded") or 0) > 0:
        return JobState(
            Phase.RUNNING.value, "JobRunning", f"TrainJob {name}: every trainer pod is ready", start
        )
    if conds or status.get("jobsStatus"):
        return JobState(
            Phase.PLANNING.value, "WaitingForPods", f"TrainJob {name} created; waiting for its pods to run"
        )
    return None


def trainer_status_progress(job: dict[str, Any], current: dict[str, Any] | None) -> dict[str, Any] | None:
    """``status.progress`` from the TrainJob's ``status.trainerStatus`` (``source: trainerStatus``),
    or None: no trainerStatus, or the operator's /metrics reading is as recent."""
    ts = (job.get("status") or {}).get("trainerStatus")
    if not ts or not ts.get("lastUpdatedTime"):
        return None
    updated = ts["lastUpdatedTime"]
    current = current or {}
    if current.get("source", "metrics") == "metrics" and (current.get("updatedAt") or "") >= updated:
        return None
    progress: dict[str, Any] = {"source": "trainerStatus", "updatedAt": updated}
    if ts.get("progressPercentage") is not None:
        progress["percent"] = int(ts["progressPercentage"])
    if ts.get("estimatedRemainingSeconds") is not None:
        progress["etaSeconds"] = float(ts["estimatedRemainingSeconds"])
    for metric in ts.get("metrics") or []:
        name = metric.get("name", "")
        try:
            value = float(metric.get("value", ""))
        except ValueError:
            continue
        if name in _STEP_FIELDS and value >= 0:
            progress[_STEP_FIELDS[name]] = int(value)
        elif name in _METRIC_FIELDS:
            progress[_METRIC_FIELDS[name]] = round(value, 6)
    # The callback's last push (100 %) carries only the logged metrics, not the step counts.
    if "totalSteps" not in progress and current.get("totalSteps") is not None:
        progress["totalSteps"] = current["totalSteps"]
    if progress.get("percent") == 100 and "step" not in progress and "totalSteps" in progress:
        progress["step"] = progress["totalSteps"]
    if set(progress) == {"source", "updatedAt"} or progress == current:
        return None
    return progress


def _event_time(event: dict[str, Any]) -> str:
    series = event.get("series") or {}
    return str(
        series.get("lastObservedTime")
        or event.get("lastTimestamp")
        or event.get("eventTime")
        or event.get("metadata", {}).get("creationTimestamp")
        or ""
    )


def creation_failure(job: dict[str, Any], events: list[dict[str, Any]], runtime: str) -> PodsDiagnosis | None:
    """The ``PodsReady`` diagnosis for a TrainJob (``job``: its reference: name, namespace, uid) whose
    JobSet Trainer could not create, from its :data:`CREATION_FAILED` Events; None when there are
    none. ``runtime`` names the runtime the TrainJob refers to, for what to do.

    Trainer retries with its controller's back-off (doubling up to ~17 min between tries) and does
    not watch runtimes: after a fix, a change to the TrainJob makes it try at once, so the message
    gives the command. A runtime's immutable fields (failurePolicy) cannot be fixed in place, and
    Trainer's resource-in-use finalizer keeps a runtime a TrainJob uses: then the run must go first.
    (Trainer's Events API batches its repeat counts, so no count is quoted.)"""
    name, uid = job.get("name"), job.get("uid")
    mine = [
        e
        for e in events
        if e.get("reason") == CREATION_FAILED
        and (e.get("involvedObject") or {}).get("name") == name
        and (not uid or (e.get("involvedObject") or {}).get("uid") in (None, uid))
    ]
    if not mine:
        return None
    latest = max(mine, key=_event_time)
    said = " ".join(str(latest.get("message") or latest.get("note") or "no message").split())
    said = said.removeprefix(_CREATION_PREFIX).rstrip(".")
    ns = f" -n {job['namespace']}" if job.get("namespace") else ""
    message = (
        f"Kubeflow Trainer could not create the JobSet of TrainJob {name}: {said}. Fix what this "
        f"names: usually the training runtime ({runtime}), else the TrainingRun field it quotes; "
        f"then `kubectl annotate trainjob {name}{ns} tac2sol.dev/retry=$(date +%s) --overwrite` "
        "makes Trainer try again at once (by itself it backs off up to ~17 min between tries). A "
        "runtime field that cannot change (failurePolicy; the runtime cannot be deleted while a "
        "TrainJob uses it): delete the TrainingRun, fix the runtime, apply the run again"
    )
    return PodsDiagnosis("False", CREATION_FAILED, message)
