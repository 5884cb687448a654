"""Pure status logic: Kubeflow job conditions -> run phase, condition merging, failure details,
and the progress figures read from a real trainer's /metrics text."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import generate_latest

from tac2sol.operator import lifecycle
from tac2sol.operator.progress import evaluation_from_metrics, progress_from_metrics, tokens_per_second
from tac2sol.trainer.metrics import TrainerMetrics


def _job(*conditions: tuple[str, str], kind: str = "PyTorchJob") -> dict[str, Any]:
    return {
        "kind": kind,
        "metadata": {"name": "qwen32b"},
        "status": {
            "conditions": [
                {"type": t, "status": s, "reason": f"{kind}{t}", "message": f"{kind} qwen32b is {t.lower()}."}
                for t, s in conditions
            ],
            "startTime": "2025-01-01T00:00:00Z",
        },
    }


@pytest.mark.parametrize(
    ("conditions", "phase", "reason"),
    [
        pytest.param([("Created", "True")], "Planning", "WaitingForPods", id="created"),
        pytest.param([("Created", "True"), ("Running", "True")], "Running", "JobRunning", id="running"),
        pytest.param(
            [("Created", "True"), ("Running", "False"), ("Restarting", "True")],
            "Running",
            "Restarting",
            id="restart",
        ),
        pytest.param(
            [("Created", "True"), ("Running", "False"), ("Succeeded", "True")],
            "Succeeded",
            "JobSucceeded",
            id="done",
        ),
        pytest.param(
            [("Created", "True"), ("Running", "False"), ("Failed", "True")], "Failed", "JobFailed", id="fail"
        ),
        pytest.param(
            [("Created", "True"), ("Suspended", "True")], "Suspended", "JobSuspended", id="suspended"
        ),
        pytest.param(
            [("Created", "True"), ("Suspended", "False"), ("Running", "False")],
            "Planning",
            "WaitingForPods",
            id="resumed",
        ),
    ],
)
def test_job_conditions_decide_the_phase(conditions: list[tuple[str, str]], phase: str, reason: str) -> None:
    state = lifecycle.job_state(_job(*conditions))
    assert state is not None
    assert (state.phase, state.reason) == (phase, reason)
    assert state.start_time == "2025-01-01T00:00:00Z"


def test_a_job_without_conditions_says_nothing_yet() -> None:
    assert lifecycle.job_state({"kind": "PyTorchJob", "metadata": {"name": "x"}}) is None


def test_job_conditions_mark_exactly_one_true() -> None:
    state = lifecycle.job_state(_job(("Created", "True"), ("Failed", "True")))
    assert state is not None
    conditions = {c["type"]: c for c in lifecycle.job_conditions(state, generation=3)}
    assert [t for t, c in conditions.items() if c["status"] == "True"] == ["Failed"]
    assert conditions["Failed"]["message"] == "PyTorchJob qwen32b is failed."
    assert all(c["observedGeneration"] == 3 and c["reason"] == "JobFailed" for c in conditions.values())


def test_merge_keeps_the_transition_time_while_the_status_holds() -> None:
    first = lifecycle.merge_conditions(
        [], [lifecycle.condition("Running", True, "A", "", generation=1)], "t1"
    )
    same = lifecycle.merge_conditions(
        first, [lifecycle.condition("Running", True, "B", "m", generation=1)], "t2"
    )
    flipped = lifecycle.merge_conditions(
        same, [lifecycle.condition("Running", False, "C", "", generation=1)], "t3"
    )
    assert [c["lastTransitionTime"] for c in (first[0], same[0], flipped[0])] == ["t1", "t1", "t3"]
    assert same[0]["reason"] == "B" and len(flipped) == 1


def test_pod_failures_name_pod_container_and_exit_code() -> None:
    pods = [
        {
            "metadata": {"name": "r-master-0"},
            "status": {
                "containerStatuses": [
                    {
                        "name": "pytorch",
                        "state": {"terminated": {"exitCode": 3, "reason": "Error", "message": "CUDA OOM\n"}},
                    }
                ]
            },
        },
        {
            "metadata": {"name": "r-worker-0"},
            "status": {
                "containerStatuses": [
                    {"name": "pytorch", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
                ]
            },
        },
    ]
    assert lifecycle.pod_failures(pods) == [
        "pod r-master-0 container pytorch exited with code 3 (Error: CUDA OOM)"
    ]


def test_pod_failures_quote_the_last_line_of_a_log_tail_termination_message() -> None:
    """FallbackToLogsOnError (the TrainJob runtime) puts up to 80 log lines in the message."""
    tail = "step 3 loss 2.1\nTraceback (most recent call last):\n  ...\n" + "E" * 400 + "\n\n"
    pod = {
        "metadata": {"name": "r-node-0-1-abcde"},
        "status": {
            "containerStatuses": [
                {"name": "node", "state": {"terminated": {"exitCode": 1, "reason": "Error", "message": tail}}}
            ]
        },
    }
    (said,) = lifecycle.pod_failures([pod])
    assert said.startswith("pod r-node-0-1-abcde container node exited with code 1 (Error: ...EEE")
    assert len(said) < 400 and "Traceback" not in said and said.endswith("E)")


def test_pod_failures_say_what_to_change_after_an_oom_kill() -> None:
    pod = {
        "metadata": {"name": "r-worker-0"},
        "spec": {"containers": [{"name": "pytorch", "resources": {"limits": {"memory": "256Mi"}}}]},
        "status": {
            "containerStatuses": [
                {"name": "pytorch", "state": {"terminated": {"exitCode": 1, "reason": "OOMKilled"}}}
            ]
        },
    }
    assert lifecycle.pod_failures([pod]) == [
        "pod r-worker-0 container pytorch exited with code 1 (OOMKilled; it ran out of memory at its memory "
        "limit of 256Mi: raise the TrainingRun's spec.resources.memory (or lower training.perDeviceBatchSize "
        "or maxSeqLength))"
    ]


@pytest.mark.parametrize(
    ("status", "owned"),
    [
        pytest.param({}, True, id="new"),
        pytest.param({"phase": "Pending"}, True, id="pending"),
        pytest.param({"phase": "Running"}, False, id="running"),
        pytest.param(
            {"phase": "Failed", "conditions": [{"type": "Failed", "reason": "PlanDoesNotFit"}]},
            True,
            id="failed-by-operator",
        ),
        pytest.param(
            {"phase": "Failed", "conditions": [{"type": "Failed", "reason": "JobFailed"}]},
            False,
            id="failed-by-job",
        ),
    ],
)
def test_who_owns_the_phase(status: dict[str, Any], owned: bool) -> None:
    assert lifecycle.phase_is_operator_owned(status) is owned


def _trainer_text(rank: int, *, step: int = 0, evaluate: bool = False) -> str:
    """/metrics text of one rank, from the trainer's own metric objects (the names it really serves)."""
    m = TrainerMetrics(run="qwen32b", rank=rank, device=f"cuda:{rank}")
    if step:
        m.global_step.set(step)
        m.max_steps.set(400)
        m.progress.set(step / 400)
        m.epoch.set(step / 400 * 3)
        m.loss.set(0.8125)
        m.eta.set(3600.0)
        m.tokens_per_second.set(1000.0 + rank)
    if evaluate:
        m.record_eval(
            {
                "samples": 25,
                "semanticSimilarityMean": 0.8312,
                "exactMatchRate": 0.12,
                "similarityAbove08": 0.64,
                "similarityAbove09": 0.28,
                "editDistanceMean": 0.31,
            }
        )
    return generate_latest(m.registry).decode()


def test_progress_comes_from_rank_zero_figures() -> None:
    progress = progress_from_metrics(_trainer_text(0, step=100), now="t")
    assert progress == {
        "step": 100,
        "totalSteps": 400,
        "percent": 25,
        "epoch": 0.75,
        "loss": 0.8125,
        "tokensPerSecond": 1000.0,
        "etaSeconds": 3600.0,
        "updatedAt": "t",
        "source": "metrics",
    }
    assert progress_from_metrics(_trainer_text(1, step=100), now="t") == {}  # not rank 0


def test_a_trainer_that_has_not_stepped_reports_no_progress() -> None:
    assert progress_from_metrics(_trainer_text(0), now="t") == {}
    assert tokens_per_second(_trainer_text(0)) is None


def test_evaluation_summary_from_the_eval_result_series() -> None:
    assert evaluation_from_metrics(_trainer_text(0, step=400, evaluate=True)) == {
        "samples": 25,
        "semanticSimilarityMean": 0.8312,
        "exactMatch": 0.12,
        "shareAbove08": 0.64,
        "shareAbove09": 0.28,
        "editDistanceMean": 0.31,
    }
    assert evaluation_from_metrics(_trainer_text(0, step=10)) == {}
