"""A TrainJob's status (as Kubeflow Trainer v2.3 and JobSet write it) -> the run's phase, conditions
and progress. The status objects below have the shape the controllers write (trainjob_types.go,
the JobSet plugin's Status); the e2e tests check the same mapping against the real controllers."""

from __future__ import annotations

from typing import Any

import pytest

from tac2sol.operator import lifecycle
from tac2sol.operator.trainjob_status import trainer_status_progress, trainjob_state

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


def test_a_fresher_metrics_reading_wins_over_trainer_status() -> None:
    job = _trainer_status(progressPercentage=40)
    assert trainer_status_progress(job, {"source": "metrics", "percent": 41, "updatedAt": T2}) is None
    older = {"source": "metrics", "percent": 30, "updatedAt": T0}
    assert trainer_status_progress(job, older) == {"source": "trainerStatus", "updatedAt": T1, "percent": 40}
    # No trainerStatus (the gate is off by default), or nothing in it: nothing to write.
    assert trainer_status_progress(_job(jobs=[_node(ready=1)]), None) is None
    assert trainer_status_progress(_trainer_status(), None) is None
