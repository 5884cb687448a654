"""A run's job in the cluster: finding it among the kinds it may have, and choosing the kind of a
new one (``tac2sol.operator.backend`` decides; this module asks the cluster what it serves)."""

from __future__ import annotations

from typing import Any

from tac2sol.operator.backend import API_VERSIONS, BackendChoice, candidate_kinds, choose
from tac2sol.operator.kube import Kube


async def find_job(
    kube: Kube, namespace: str, name: str, spec: dict[str, Any], ref: dict[str, Any], enabled: frozenset[str]
) -> dict[str, Any] | None:
    """The job named ``name``: of the status' jobRef kind, else of each kind the spec allows.
    A kind the cluster does not serve reads as no job (applying it then says so)."""
    kinds = [ref["kind"]] if ref.get("kind") in API_VERSIONS else candidate_kinds(spec, enabled)
    for kind in kinds:
        job = await kube.get(API_VERSIONS[kind], kind, namespace, name)
        if job is not None:
            return job
    return None


async def choose_backend(
    kube: Kube, namespace: str, spec: dict[str, Any], enabled: frozenset[str]
) -> BackendChoice:
    """The backend of a run that has no job yet; ``backend: auto`` asks which kinds are served.
    Raises BackendUnavailable."""
    served: set[str] = set()
    if spec.get("backend", "auto") == "auto":
        for kind in candidate_kinds(spec, enabled):
            if await kube.serves(API_VERSIONS[kind], kind, namespace):
                served.add(kind)
    return choose(spec, frozenset(served), enabled)
