"""``TrainingRun.status``: what the operator records (phase, conditions, plan, progress, results)."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import ConfigDict, Field

from tac2sol.operator.apimodel import ApiModel
from tac2sol.operator.plan import Plan


class Phase(StrEnum):
    PENDING = "Pending"
    PLANNING = "Planning"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


PHASES: tuple[str, ...] = tuple(p.value for p in Phase)


class Condition(ApiModel):
    """A Kubernetes-style condition (metav1.Condition)."""

    type: str = Field(
        max_length=316, description="CamelCase condition type (Planned, JobCreated, Running, ...)."
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field("", max_length=1024, description="CamelCase machine-readable reason.")
    message: str = Field("", max_length=32768, description="One human sentence.")
    last_transition_time: str | None = Field(None, description="RFC 3339 time of the last status change.")
    observed_generation: int | None = Field(
        None, ge=0, description="metadata.generation this was computed for."
    )


class JobRef(ApiModel):
    """The Kubeflow job (PyTorchJob, MPIJob or TrainJob) that trains this run."""

    api_version: str = Field(description="kubeflow.org/v1 or trainer.kubeflow.org/v1alpha1")
    kind: str = Field(description="PyTorchJob, MPIJob or TrainJob.")
    name: str = Field(description="Job name (derived from the run's name).")
    namespace: str | None = Field(None, description="Job namespace (the run's).")
    uid: str | None = Field(None, description="Job uid.")


class Progress(ApiModel):
    """Training progress: the rank-0 trainer's /metrics, or a TrainJob's status.trainerStatus."""

    source: Literal["metrics", "trainerStatus"] | None = Field(
        None,
        description=(
            "Where these figures come from: metrics (the trainer pods' /metrics, read by the operator) "
            "or trainerStatus (the TrainJob's status.trainerStatus, Trainer v2's TrainJobStatus gate)."
        ),
    )

    step: int | None = Field(None, ge=0, description="Optimizer steps done.")
    total_steps: int | None = Field(None, ge=0, description="Optimizer steps planned.")
    percent: int | None = Field(
        None, ge=0, le=100, description="step / totalSteps, in percent (printer column)."
    )
    epoch: float | None = Field(None, ge=0, description="Epochs done (fractional).")
    loss: float | None = Field(None, description="Latest training loss.")
    tokens_per_second: float | None = Field(None, ge=0, description="Training throughput, all ranks.")
    eta_seconds: float | None = Field(None, ge=0, description="Estimated seconds left.")
    updated_at: str | None = Field(None, description="RFC 3339 time of the last reading.")


class FactF1(ApiModel):
    """Fact-level F1 between prediction and reference, per fact kind (from the parsed ASTs)."""

    external_calls: float | None = Field(None, ge=0, le=1, description="External calls.")
    state_writes: float | None = Field(None, ge=0, le=1, description="State variables written.")
    guards: float | None = Field(None, ge=0, le=1, description="require / revert / if-revert guards.")
    events: float | None = Field(None, ge=0, le=1, description="Events emitted.")
    returns: float | None = Field(None, ge=0, le=1, description="Return presence.")
    visibility: float | None = Field(None, ge=0, le=1, description="Visibility.")
    mutability: float | None = Field(None, ge=0, le=1, description="State mutability.")


class EvaluationScores(ApiModel):
    """Scores of one evaluation (the trainer's eval.json ``overall``); absent: not measured."""

    semantic_similarity_mean: float | None = Field(None, description="Mean embedding cosine similarity.")
    edit_distance_mean: float | None = Field(None, ge=0, description="Mean normalised edit distance.")
    exact_match: float | None = Field(None, ge=0, le=1, description="Share of exact matches.")
    share_above08: float | None = Field(None, ge=0, le=1, description="Share with similarity above 0.8.")
    share_above09: float | None = Field(None, ge=0, le=1, description="Share with similarity above 0.9.")
    signature_match: float | None = Field(
        None, ge=0, le=1, description="Share whose signature hashes (Keccak-256) to the row's selector."
    )
    syntax_valid: float | None = Field(None, ge=0, le=1, description="Share that solc's parser accepts.")
    fact_f1: FactF1 | None = Field(None, description="Fact-level F1 per fact kind.")
    samples: int | None = Field(None, ge=0, description="Rows evaluated.")


class TestSetScores(EvaluationScores):
    """The shared test set (spec.evaluation.testSet), rows that overlap the training rows excluded."""

    excluded_rows: int | None = Field(
        None, ge=0, description="Test rows sharing a contract, body, output or input with a training row."
    )
    base: EvaluationScores | None = Field(None, description="The base model without the adapter, same rows.")


class EvaluationSummary(EvaluationScores):
    """Evaluation of the trained adapter on the held-out split (from the trainer's /metrics), the base
    model on the same rows (spec.evaluation.baseModel) and the shared test set."""

    base: EvaluationScores | None = Field(None, description="The base model without the adapter, same rows.")
    test_set: TestSetScores | None = Field(None, description="The shared test set's scores.")


class TrainingRunStatus(ApiModel):
    """Observed state. Unknown fields are kept (kopf stores its own bookkeeping here)."""

    model_config = ConfigDict(extra="allow")

    phase: Phase | None = Field(  # not strict: the apiserver hands the phase back as a string
        None, strict=False, description="Pending, Planning, Running, Succeeded, Failed or Suspended."
    )
    conditions: list[Condition] = Field(
        default_factory=list, description="Latest observations, one per type."
    )
    observed_generation: int | None = Field(None, ge=0, description="metadata.generation last acted on.")
    plan: Plan | None = Field(None, description="The memory plan the job was made from.")
    job_ref: JobRef | None = Field(None, description="The training job.")
    backend: Literal["pytorchjob", "trainjob"] | None = Field(
        None,
        description=(
            "The Kubeflow API that trains the run: pytorchjob (training-operator v1) or trainjob "
            "(Trainer v2); the BackendSelected condition says why."
        ),
    )
    progress: Progress | None = Field(None, description="Training progress.")
    evaluation: EvaluationSummary | None = Field(None, description="Evaluation summary once finished.")
    message: str | None = Field(None, description="Why the run is in its phase (one sentence).")
    start_time: str | None = Field(None, description="RFC 3339 time the job started.")
    completion_time: str | None = Field(None, description="RFC 3339 time the run finished.")
