"""The operator's settings: one pydantic-settings object read from ``TAC2SOL_*`` at start.

Helm values map onto these one to one (``operator.settings`` in the chart); ``tac2sol operator``
flags override the environment. Each field is checked when the operator starts, so a bad value
stops it with one message instead of failing the first reconcile.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tac2sol import __version__
from tac2sol.errors import InvalidInput
from tac2sol.operator.names import DEFAULT_TRAINJOB_RUNTIME

DEFAULT_TRAINER_IMAGE = f"ghcr.io/tac2sol/tac2sol-trainer:{__version__}"
# `tac2sol operator` flags whose name is not the field's (errors name what the user typed).
FLAGS = {"progress_interval_seconds": "--progress-interval"}


class OperatorSettings(BaseSettings):
    """What ``tac2sol operator`` reads from ``TAC2SOL_<FIELD>`` (e.g. ``TAC2SOL_METRICS_PORT``)."""

    model_config = SettingsConfigDict(env_prefix="TAC2SOL_", extra="ignore", validate_default=True)

    namespace: str | None = Field(
        None,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Watch this namespace only; unset: all namespaces (needs the ClusterRole).",
    )
    metrics_host: str = Field(
        "127.0.0.1",
        description="Address of /metrics and /healthz (the chart and manifests set 0.0.0.0 in the pod).",
    )
    metrics_port: int = Field(
        8080, ge=0, le=65535, description="Port of /metrics and /healthz; 0: a free one."
    )
    trainer_image: str = Field(
        DEFAULT_TRAINER_IMAGE, min_length=1, description="Trainer image for runs that do not set spec.image."
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="Pull policy for runs that do not set spec.imagePullPolicy."
    )
    progress_interval_seconds: float = Field(
        30.0,
        ge=1,
        le=3600,
        description=(
            "How often the operator looks at a run's pods: the master pod's /metrics while Running, "
            "and why the pods do not run (PodsReady) while the job is unfinished."
        ),
    )
    progress_timeout_seconds: float = Field(
        5.0, gt=0, le=60, description="Give up on one /metrics read after this long."
    )
    reconcile_workers: int = Field(
        32,
        ge=1,
        le=256,
        description=(
            "TrainingRuns reconciled at once (each run by one worker at a time, in order); more "
            "finish a burst of new runs sooner and load the apiserver more."
        ),
    )
    reconcile_rate: float = Field(
        20.0,
        gt=0,
        le=1000,
        description=(
            "Reconciles that write to the apiserver started per second once a burst of "
            "TAC2SOL_RECONCILE_BURST is spent (a restart that finds many new runs is paced by it)."
        ),
    )
    reconcile_burst: int = Field(
        100,
        ge=1,
        le=10000,
        description="Reconciles that may start at once before TAC2SOL_RECONCILE_RATE paces them.",
    )
    metrics_scrapes: int = Field(
        8,
        ge=1,
        le=256,
        description="Trainer pods' /metrics read at once for status.progress (each bounded by the timeout).",
    )
    select_gpu_product: bool = Field(
        True,
        description=(
            "Add the GPU type's nvidia.com/gpu.product node selector (GPU feature discovery), so the "
            "job runs on the GPUs it was planned for."
        ),
    )
    nccl_debug: Literal["VERSION", "WARN", "INFO", "TRACE"] = Field(
        "WARN", description="NCCL_DEBUG of the trainer pods."
    )
    memory_per_process: str = Field(
        "8Gi",
        pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti)?$",
        description="Host memory request per training process when spec.resources.memory is unset.",
    )
    cpu_per_process: int = Field(
        4, ge=1, le=256, description="CPU request per training process when spec.resources.cpu is unset."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Operator log level.")
    backends: str = Field(
        "pytorchjob,trainjob",
        pattern=r"^(pytorchjob|trainjob)(,(pytorchjob|trainjob))?$",
        description=(
            "Kubeflow APIs the operator may use, comma-separated: pytorchjob (training-operator v1: "
            "PyTorchJob, MPIJob), trainjob (Trainer v2). It watches and is granted only these; a run "
            "asking for another fails."
        ),
    )
    trainjob_runtime: str = Field(
        DEFAULT_TRAINJOB_RUNTIME,
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="The ClusterTrainingRuntime a TrainJob refers to (the chart ships it).",
    )

    @property
    def enabled_backends(self) -> frozenset[str]:
        return frozenset(self.backends.split(","))

    @field_validator("namespace", mode="before")
    @classmethod
    def _empty_is_all(cls, v: object) -> object:
        return None if v == "" else v


def load_settings(**overrides: object) -> OperatorSettings:
    """Environment ``TAC2SOL_*`` < ``overrides`` (flags); one clear error naming the variable."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return OperatorSettings(**given)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "?"
        flag = FLAGS.get(field, f"--{field.replace('_', '-')}")
        source = flag if field in given else f"TAC2SOL_{field.upper()}"
        raise InvalidInput(
            f"operator setting {source}: {err['msg']} (got {err.get('input')!r}); "
            f"see `tac2sol operator --help`"
        ) from None
