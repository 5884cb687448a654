"""What the operator knows of each run, and the one piece of work the queue runs per run.

The kopf handlers (``handlers.py``) only record what the watches deliver (``seen_run``,
``seen_job``) and queue the run; ``sync`` then does, for one run at a time:

1. reconcile when the run needs it: a generation this process has not handled and the status
   does not say was handled (a new run, a spec change, a retry), or, once after a start, an
   unfinished run whose job is not what its status says (a run up to date costs no API call);
2. mirror its job's conditions into the run's status (no API call when nothing would change).

Level-triggered, like Kubeflow's controllers: the status (``observedGeneration``, ``jobRef``)
says what was done, so the operator keeps no bookkeeping of its own on the runs (no kopf
annotations, no finalizer).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import kopf

from tac2sol.operator import lifecycle, metrics
from tac2sol.operator.reconcile import Operator, StatusChange, follow_job, reconcile, write_deferred
from tac2sol.operator.workqueue import TokenBucket, WorkQueue

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name) of a run
# A run found at startup whose status says it is up to date waits this long before it is
# checked, so that the job watch has listed its job (the check then needs no API call).
RESUME_DELAY = 3.0
RETRY_DELAY = 10.0  # seconds, when a retry names no delay
# Annotations not worth keeping in memory for a thousand runs.
_DROP_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)


def _newer(a: dict[str, Any], b: dict[str, Any] | None) -> bool:
    """Whether object ``a`` is at least as recent as ``b`` (etcd resource versions are numbers)."""
    if b is None:
        return True
    ra, rb = a["metadata"].get("resourceVersion", ""), b["metadata"].get("resourceVersion", "")
    if a["metadata"].get("uid") != b["metadata"].get("uid") or not (ra.isdigit() and rb.isdigit()):
        return True
    return int(ra) >= int(rb)


_META = (
    "name",
    "namespace",
    "uid",
    "generation",
    "resourceVersion",
    "deletionTimestamp",
    "finalizers",
    "labels",
    "annotations",
    "ownerReferences",
)


def _slim(obj: dict[str, Any], parts: tuple[str, ...] = ("spec", "status")) -> dict[str, Any]:
    """What the operator reads of an object, without copying it: no managedFields, no kubectl
    last-applied copy, only ``parts`` besides the metadata. Read-only: callers never mutate it
    (status changes are made on copies, ``reconcile._with``)."""
    meta = obj.get("metadata") or {}
    kept = {k: meta[k] for k in _META if k in meta}
    if any(key in (kept.get("annotations") or {}) for key in _DROP_ANNOTATIONS):
        kept["annotations"] = {k: v for k, v in kept["annotations"].items() if k not in _DROP_ANNOTATIONS}
    out = {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "metadata": kept}
    out.update((part, obj[part]) for part in parts if part in obj)
    return out


def _slim_job(job: dict[str, Any]) -> dict[str, Any]:
    """A job without its pod templates (the big part): whether it is suspended (a v1 job's
    ``runPolicy.suspend``, a TrainJob's ``suspend``) and its status are what is read."""
    out = _slim(job, ("status",))
    spec = job.get("spec") or {}
    out["spec"] = {"runPolicy": spec.get("runPolicy") or {}, "suspend": spec.get("suspend")}
    return out


def _suspended(job: dict[str, Any]) -> bool:
    spec = job.get("spec") or {}
    return bool((spec.get("runPolicy") or {}).get("suspend") or spec.get("suspend"))


@dataclass
class Controller:
    """The runs and jobs last seen, what this process has handled, and the reconcile queue."""

    op: Operator
    queue: WorkQueue = field(init=False)
    runs: dict[Key, dict[str, Any]] = field(default_factory=dict)
    jobs: dict[Key, tuple[dict[str, Any], str | None]] = field(default_factory=dict)  # job, event type
    handled: dict[Key, tuple[str, int | None]] = field(default_factory=dict)  # (uid, generation)
    retrying: dict[Key, tuple[str, int | None]] = field(default_factory=dict)  # waiting for a retry
    deferred: dict[Key, StatusChange] = field(default_factory=dict)  # status writes not made yet
    pace: TokenBucket = field(init=False)

    def __post_init__(self) -> None:
        s = self.op.settings
        self.queue = WorkQueue(self.sync, workers=s.reconcile_workers)
        self.pace = TokenBucket(s.reconcile_rate, s.reconcile_burst)

    # --- what the watches deliver ------------------------------------------------------------

    def seen_run(self, body: dict[str, Any], event_type: str | None) -> None:
        """A TrainingRun event: remember the run and queue it when there is work."""
        meta = body["metadata"]
        key: Key = (meta["namespace"], meta["name"])
        if event_type == "DELETED":
            self.runs.pop(key, None)
            self.handled.pop(key, None)
            self.retrying.pop(key, None)
            self.deferred.pop(key, None)
            self.queue.forget(key)
            return
        known = self.runs.get(key)
        if not _newer(body, known):
            return  # older than what a status write of ours returned
        first = known is None
        self.runs[key] = _slim(body)
        if meta.get("deletionTimestamp"):
            return
        status = body.get("status") or {}
        if status.get("observedGeneration") != meta.get("generation"):
            this = (meta.get("uid"), meta.get("generation"))
            # A generation waiting for its retry is not tried sooner because its status changed.
            if self.handled.get(key) != this and self.retrying.get(key) != this:
                self.queue.add(key)
        elif first and status.get("phase") not in lifecycle.TERMINAL:
            self.queue.add(key, after=RESUME_DELAY)

    def seen_job(self, key: Key, job: dict[str, Any], event_type: str | None) -> None:
        """A PyTorchJob/MPIJob event of a job this operator made: mirror it into its run."""
        self.jobs[key] = (_slim_job(job), event_type)
        if key in self.runs:
            self.queue.add(key, low=True)  # after new runs' jobs are made

    # --- the work ------------------------------------------------------------------------------

    async def sync(self, key: Hashable) -> float | None:
        """One run: reconcile if needed, then mirror its job. Returns a retry delay, or None."""
        assert isinstance(key, tuple)
        run = self.runs.get(key)
        if run is None or run["metadata"].get("deletionTimestamp"):
            return None
        if self._needs_reconcile(key, run):
            delay = await self._reconcile(key, run)
            if delay is not None or key in self.deferred:
                return delay  # a deferred status write comes back at low priority
            run = self.runs.get(key) or run
        deferred = self.deferred.pop(key, None)
        seen = self.jobs.get(key)
        if seen is not None:
            job, event_type = seen
            self.remember(await follow_job(self.op, job, event_type, run, before=deferred))
            if event_type == "DELETED" and self.jobs.get(key) == seen:
                del self.jobs[key]
        elif deferred is not None:
            self.remember(await write_deferred(self.op, run, deferred))
        return None

    def _needs_reconcile(self, key: Key, run: dict[str, Any]) -> bool:
        meta = run["metadata"]
        return self.handled.get(key) != (meta.get("uid"), meta.get("generation"))

    def _up_to_date(self, key: Key, run: dict[str, Any]) -> bool:
        """The status says this generation was handled and the job watch shows that job, suspended
        as the spec says: nothing to apply (a start that finds many runs makes no API call)."""
        meta, status = run["metadata"], run.get("status") or {}
        if status.get("observedGeneration") != meta.get("generation"):
            return False
        if status.get("phase") in lifecycle.TERMINAL:
            return True
        seen = self.jobs.get(key)
        ref = status.get("jobRef") or {}
        if seen is None or seen[1] == "DELETED" or not ref.get("uid"):
            return False
        job = seen[0]
        return job["metadata"].get("uid") == ref["uid"] and _suspended(job) == bool(
            (run.get("spec") or {}).get("suspend")
        )

    async def _reconcile(self, key: Key, run: dict[str, Any]) -> float | None:
        meta = run["metadata"]
        handled = (meta.get("uid"), meta.get("generation"))
        try:
            with metrics.reconcile_timer():
                if self._up_to_date(key, run):
                    stored = None
                else:
                    await self.pace.take()
                    seen = self.jobs.get(key)
                    known_job = seen[0] if seen is not None and seen[1] != "DELETED" else None
                    stored = await reconcile(self.op, run, known_job, defer=lambda c: self._defer(key, c))
        except kopf.TemporaryError as exc:
            delay = float(exc.delay or RETRY_DELAY)
            log.info("%s/%s: %s; trying again in %.0f s", *key, exc, delay)
            self.retrying[key] = handled
            return delay
        except kopf.PermanentError as exc:
            log.warning("%s/%s: %s", *key, exc)
            stored = None
        self.handled[key] = handled
        self.retrying.pop(key, None)
        self.remember(stored)
        return None

    def _defer(self, key: Key, change: StatusChange) -> None:
        self.deferred[key] = change
        self.queue.add(key, low=True)

    def remember(self, stored: dict[str, Any] | None) -> None:
        """A run as a status write of ours returned it (newer than the watch may have shown yet)."""
        if stored is None:
            return
        key: Key = (stored["metadata"]["namespace"], stored["metadata"]["name"])
        known = self.runs.get(key)
        if known is not None and _newer(stored, known):
            self.runs[key] = _slim(stored)
