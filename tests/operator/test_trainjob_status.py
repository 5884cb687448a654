"""A TrainJob's status (as Kubeflow Trainer v2.3 and JobSet write it) -> the run's phase, conditions
and progress. The status objects below have the shape the controllers write (trainjob_types.go,
the JobSet plugin's Status); the e2e tests check the same mapping against the real controllers."""

from __future__ import annotations

from typing import Any

import pytest

from tac2sol.operator import lifecycle, pods
from tac2sol.operator.trainjob_status import (
    CREATION_FAILED,
    creation_failure,
    trainer_status_progress,
    trainjob_state,
)

T0, T1, T2 = "2026-11-30T08:00:00Z", "2026-11-30T08:05:00Z", "2026-11-30T09:00:00Z"


def _job(
    conditions: list[dict[str, Any]] = (), jobs: list[dict[str, Any]] = (), **status: Any
) -> dict[str, Any]:  # type: ignore[assignment]
    body: dict[str, Any] = {"conditions": list(conditions), **status}
    if jobs:
        body["jobsStatus"] = list(jobs)
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": "r", "creationTimestamp": T0},
        "status": {k: v for k, v in body.items() if v},
    }


def _cond(
    type_: str, status: str = "True", reason: str = "", message: str = "", at: str = T1
) -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": at}


def _node(ready: int = 0, active: int = 1, succeeded: int = 0, failed: int = 0) -> dict[str, Any]:
    return {
        "name": "node",
        "ready": ready,
        "active": active,
        "succeeded": succeeded,
        "failed": failed,
        "suspended": 0,
    }


@pytest.mark.parametrize(
    ("job", "phase", "reason"),
    [
        (_job(), None, None),  # nothing written yet
        (_job(jobs=[_node(ready=0)]), "Planning", "WaitingForPods"),
        (_job(jobs=[_node(ready=1)]), "Running", "JobRunning"),
        (_job([_cond("Suspended", reason="Suspended")]), "Suspended", "JobSuspended"),
        (_job([_cond("Suspended", "False", "Resumed")], [_node(ready=0)]), "Planning", "WaitingForPods"),
        (
            _job([_cond("Complete", reason="AllJobsCompleted")], [_node(ready=0, active=0, succeeded=1)]),
            "Succeeded",
            "JobSucceeded",
        ),
        (_job([_cond("Failed", reason="FailedJobs", message="jobset failed")]), "Failed", "JobFailed"),
        (_job([_cond("Failed", reason="DeadlineExceeded")]), "Failed", "JobFailed"),
    ],
)
def test_trainjob_conditions_become_phases(
    job: dict[str, Any], phase: str | None, reason: str | None
) -> None:
    state = lifecycle.job_state(job)  # dispatches on kind
    if phase is None:
        assert state is None
    else:
        assert state is not None and (state.phase, state.reason) == (phase, reason)


def test_failure_message_carries_the_jobset_reason_and_message() -> None:
    state = trainjob_state(
        _job(
            [_cond("Failed", reason="ReachedMaxRestarts", message="jobset r has reached max restarts", at=T2)]
        )
    )
    assert state is not None
    assert state.message == "TrainJob r failed (ReachedMaxRestarts): jobset r has reached max restarts"
    assert state.completion_time == T2


def test_start_time_is_the_creation_or_the_resumption() -> None:
    assert trainjob_state(_job(jobs=[_node(ready=1)])).start_time == T0  # type: ignore[union-attr]
    resumed = _job([_cond("Suspended", "False", "Resumed", at=T2)], [_node(ready=1)])
    assert trainjob_state(resumed).start_time == T2  # type: ignore[union-attr]


def test_a_complete_trainjob_gives_succeeded_conditions() -> None:
    state = trainjob_state(_job([_cond("Complete", reason="AllJobsCompleted", at=T2)]))
    assert state is not None
    conds = {c["type"]: c["status"] for c in lifecycle.job_conditions(state, 1)}
    assert conds == {"Running": "False", "Suspended": "False", "Succeeded": "True", "Failed": "False"}


def _trainer_status(**fields: Any) -> dict[str, Any]:
    return _job(jobs=[_node(ready=1)], trainerStatus={"lastUpdatedTime": T1, **fields})


def test_trainer_status_becomes_progress_with_its_source() -> None:
    job = _trainer_status(
        progressPercentage=40,
        estimatedRemainingSeconds=900,
        metrics=[
            {"name": "loss", "value": "0.75"},
            {"name": "epoch", "value": "1.2"},
            {"name": "lr", "value": "x"},
        ],
    )
    assert trainer_status_progress(job, None) == {
        "source": "trainerStatus",
        "updatedAt": T1,
        "percent": 40,
        "etaSeconds": 900.0,
        "loss": 0.75,
        "epoch": 1.2,
    }


def test_trainer_status_steps_fill_the_step_column_through_the_last_push() -> None:
    """transformers' KubeflowCallback sends current_step/total_steps while training; its last push
    (100 %) has only the logged metrics: the step is then the total it already sent."""
    during = _trainer_status(
        progressPercentage=50,
        metrics=[
            {"name": "current_step", "value": "10"},
            {"name": "total_steps", "value": "20"},
            {"name": "current_epoch", "value": "0.45"},
        ],
    )
    seen = trainer_status_progress(during, None)
    assert seen == {
        "source": "trainerStatus",
        "updatedAt": T1,
        "percent": 50,
        "step": 10,
        "totalSteps": 20,
        "epoch": 0.45,
    }
    last = _job(
        jobs=[_node(ready=1)],
        trainerStatus={
            "lastUpdatedTime": T2,
            "progressPercentage": 100,
            "metrics": [{"name": "loss", "value": "2"}],
        },
    )
    done = trainer_status_progress(last, seen)
    assert done is not None and (done["step"], done["totalSteps"], done["percent"]) == (20, 20, 100)


def test_a_fresher_metrics_reading_wins_over_trainer_status() -> None:
    job = _trainer_status(progressPercentage=40)
    assert trainer_status_progress(job, {"source": "metrics", "percent": 41, "updatedAt": T2}) is None
    older = {"source": "metrics", "percent": 30, "updatedAt": T0}
    assert trainer_status_progress(job, older) == {"source": "trainerStatus", "updatedAt": T1, "percent": 40}
    # No trainerStatus (the gate is off by default), or nothing in it: nothing to write.
    assert trainer_status_progress(_job(jobs=[_node(ready=1)]), None) is None
    assert trainer_status_progress(_trainer_status(), None) is None


# --- a JobSet Trainer could not create: only Events on the TrainJob say so ---------------------------
REFUSED = (
    'TrainJob resources reconciliation failed: admission webhook "vjobset.kb.io" denied the request: '
    'spec.failurePolicy.rules[0].name: Invalid value: "trainer-verdict": must match regex.\n'
)


def _event(uid: str = "u1", at: str = T1, message: str = REFUSED, **extra: Any) -> dict[str, Any]:
    """As the apiserver shows Trainer's events.k8s.io Event in the core v1 view (note -> message)."""
    return {
        "reason": CREATION_FAILED,
        "type": "Warning",
        "message": message,
        "involvedObject": {"kind": "TrainJob", "name": "r", "uid": uid},
        "eventTime": at,
        **extra,
    }


def test_a_jobset_trainer_could_not_create_is_a_stuck_pods_diagnosis_naming_the_refusal() -> None:
    ref = {"name": "r", "namespace": "team", "uid": "u1"}
    got = creation_failure(ref, [_event()], "ClusterTrainingRuntime tac2sol-torch")
    assert got is not None and got.stuck
    assert got.status == "False" and got.reason == CREATION_FAILED
    assert got.message.startswith(
        'Kubeflow Trainer could not create the JobSet of TrainJob r: admission webhook "vjobset.kb.io" '
        "denied the request: spec.failurePolicy.rules[0].name: Invalid value"
    ), got.message
    assert "reconciliation failed" not in got.message and "\n" not in got.message
    assert "usually the training runtime (ClusterTrainingRuntime tac2sol-torch)" in got.message
    assert "`kubectl annotate trainjob r -n team tac2sol.dev/retry=$(date +%s) --overwrite`" in got.message
    assert got.message.endswith("delete the TrainingRun, fix the runtime, apply the run again")


def test_the_latest_try_is_quoted() -> None:
    events = [
        _event(
            at=T2,
            message="TrainJob resources reconciliation failed: second",
            series={"count": 4, "lastObservedTime": T2},
        ),
        _event(at=T0, message="TrainJob resources reconciliation failed: first"),
    ]
    got = creation_failure({"name": "r", "uid": "u1"}, events, "ClusterTrainingRuntime x")
    assert got is not None and "TrainJob r: second. Fix" in got.message


def test_events_of_an_older_trainjob_of_the_same_name_or_another_reason_do_not_count() -> None:
    ref = {"name": "r", "uid": "u2"}
    assert creation_failure(ref, [_event(uid="u1")], "x") is None
    assert creation_failure(ref, [{**_event(uid="u2"), "reason": "Created"}], "x") is None
    assert creation_failure(ref, [], "x") is None
    assert pods.diagnose([]).reason == pods.NO_PODS  # what record_pods replaces with the diagnosis
