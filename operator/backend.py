"""Which Kubeflow API trains a run: training-operator v1 (PyTorchJob, MPIJob) or Trainer v2 (TrainJob).

``spec.backend``:

* ``pytorchjob``  training-operator v1: a PyTorchJob (torchrun), or an MPIJob with ``launcher: mpijob``;
* ``trainjob``    Kubeflow Trainer v2: a TrainJob on the operator's ClusterTrainingRuntime (torchrun);
* ``auto``        (default) the v1 kind when the cluster serves it, else TrainJob. A cluster with the
                  training-operator keeps running runs exactly as before; a cluster with only Trainer
                  v2 gets TrainJobs. ``launcher: mpijob`` always means the v1 MPIJob.

The choice is made once, when the run has no job yet; after that the job's kind (``status.jobRef``)
decides. ``status.backend`` and the ``BackendSelected`` condition say which and why.

Pure: the caller asks the cluster which kinds it serves (``Kube.serves``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tac2sol.operator.names import (
    JOB_NAME_LABEL,
    JOBSET_NAME_LABEL,
    KUBEFLOW_API_VERSION,
    MPIJOB,
    PYTORCHJOB,
    TRAINER_API_VERSION,
    TRAINJOB,
)

PYTORCHJOB_BACKEND = "pytorchjob"
TRAINJOB_BACKEND = "trainjob"
BACKENDS = (PYTORCHJOB_BACKEND, TRAINJOB_BACKEND)
BACKEND_SELECTED = "BackendSelected"  # the run's condition that says which and why

API_VERSIONS = {PYTORCHJOB: KUBEFLOW_API_VERSION, MPIJOB: KUBEFLOW_API_VERSION, TRAINJOB: TRAINER_API_VERSION}
PLURALS = {PYTORCHJOB: "pytorchjobs", MPIJOB: "mpijobs", TRAINJOB: "trainjobs"}
BACKEND_OF_KIND = {PYTORCHJOB: PYTORCHJOB_BACKEND, MPIJOB: PYTORCHJOB_BACKEND, TRAINJOB: TRAINJOB_BACKEND}


@dataclass(frozen=True)
class BackendChoice:
    """The backend and job kind of a run, and why (the ``BackendSelected`` condition)."""

    backend: str
    kind: str
    reason: str
    message: str

    @property
    def api_version(self) -> str:
        return API_VERSIONS[self.kind]


class BackendUnavailable(Exception):
    """The run asks for a backend this operator is not installed to use (``TAC2SOL_BACKENDS``)."""


def v1_kind(spec: dict[str, Any]) -> str:
    """The training-operator v1 kind of a run's (plain) spec: MPIJob for ``launcher: mpijob``."""
    return MPIJOB if spec.get("launcher") == "mpijob" else PYTORCHJOB


def candidate_kinds(spec: dict[str, Any], enabled: frozenset[str]) -> list[str]:
    """The job kinds a run's job may have, most likely first (to find an existing job)."""
    backend = spec.get("backend", "auto")
    kinds = []
    if backend in ("auto", PYTORCHJOB_BACKEND) and PYTORCHJOB_BACKEND in enabled:
        kinds.append(v1_kind(spec))
    if (
        backend in ("auto", TRAINJOB_BACKEND)
        and TRAINJOB_BACKEND in enabled
        and spec.get("launcher") != "mpijob"
    ):
        kinds.append(TRAINJOB)
    return kinds


def choose(spec: dict[str, Any], served: frozenset[str], enabled: frozenset[str]) -> BackendChoice:
    """The backend for a run without a job. ``served``: job kinds the cluster serves; ``enabled``:
    the backends the operator may use. Raises BackendUnavailable when none fits."""
    backend = spec.get("backend", "auto")
    v1 = v1_kind(spec)
    if backend != "auto":
        if backend not in enabled:
            raise BackendUnavailable(
                f"spec.backend is {backend}, but this operator is installed for "
                f"{', '.join(sorted(enabled))} only (chart value backends / TAC2SOL_BACKENDS)"
            )
        kind = v1 if backend == PYTORCHJOB_BACKEND else TRAINJOB
        return BackendChoice(backend, kind, "Requested", f"spec.backend {backend}: {kind}")
    if v1 == MPIJOB:
        if PYTORCHJOB_BACKEND not in enabled:
            raise BackendUnavailable(
                "launcher mpijob needs the training-operator v1 MPIJob, and this operator is installed "
                "for trainjob only: use launcher pytorchjob"
            )
        return BackendChoice(
            PYTORCHJOB_BACKEND, MPIJOB, "LauncherMPIJob", "auto: launcher mpijob is a v1 MPIJob"
        )
    if PYTORCHJOB_BACKEND in enabled and v1 in served:
        return BackendChoice(
            PYTORCHJOB_BACKEND,
            v1,
            "V1Served",
            f"auto: the cluster serves {KUBEFLOW_API_VERSION} {v1} (training-operator v1)",
        )
    if TRAINJOB_BACKEND in enabled and TRAINJOB in served:
        why = "does not serve" if PYTORCHJOB_BACKEND in enabled else "may not use (trainjob-only install)"
        return BackendChoice(
            TRAINJOB_BACKEND,
            TRAINJOB,
            "TrainJobServed",
            f"auto: the cluster {why} {KUBEFLOW_API_VERSION} {v1} and serves {TRAINER_API_VERSION} "
            "TrainJob (Kubeflow Trainer v2)",
        )
    # Neither is served: pick what applying will report as missing (JobKindMissing, retried).
    if PYTORCHJOB_BACKEND in enabled:
        return BackendChoice(
            PYTORCHJOB_BACKEND, v1, "NothingServed", f"auto: the cluster serves neither {v1} nor TrainJob"
        )
    return BackendChoice(
        TRAINJOB_BACKEND, TRAINJOB, "NothingServed", "auto: the cluster does not serve TrainJob"
    )


def pod_selector(kind: str | None, job_name: str) -> dict[str, str]:
    """Labels of a job's pods: the training-operator's job-name label, or JobSet's (the JobSet of a
    TrainJob has the TrainJob's name)."""
    if kind == TRAINJOB:
        return {JOBSET_NAME_LABEL: job_name}
    return {JOB_NAME_LABEL: job_name}


def missing_kind_message(kind: str) -> str:
    """What to install when applying a job of ``kind`` finds no such resource."""
    if kind in (TRAINJOB, "TrainingRuntime"):
        return (
            f"the {kind} kind is not installed ({TRAINER_API_VERSION}); install Kubeflow Trainer v2 "
            "(and JobSet), or use backend pytorchjob; retrying"
        )
    return (
        f"the {kind} kind is not installed ({KUBEFLOW_API_VERSION}); install the Kubeflow training-operator "
        "CRDs, or use backend trainjob; retrying"
    )
