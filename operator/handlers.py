"""kopf entry points of the tac2sol operator (the work is in ``reconcile.py``).

``register(registry, settings)`` wires them, filters on the decorators:

* startup: every kopf setting, the API client, the /metrics + /healthz server;
* TrainingRun create / update (spec) / resume (unfinished runs): ``reconcile``;
* TrainingRun delete (optional: no finalizer of its own; children go by garbage collection):
  forget its metrics;
* one poll loop (an asyncio task, not kopf timers) over the runs the operator has seen: Running
  runs' trainer /metrics -> ``status.progress``; runs with an unfinished, unsuspended job: its
  pods -> the ``PodsReady`` condition (why they do not run). kopf timers would put a finalizer on
  every such run, and a run could then not be deleted while the operator is down or uninstalled;
* PyTorchJob / MPIJob / TrainJob events (jobs this operator made, of the enabled backends): the
  job's conditions -> the run's phase.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

import kopf

from tac2sol.operator import lifecycle, metrics
from tac2sol.operator.kube import Kube
from tac2sol.operator.names import API_GROUP, API_VERSION, FIELD_MANAGER, MANAGED_BY, PLURAL, RUN_LABEL
from tac2sol.operator.reconcile import (
    Operator,
    follow_job,
    forget,
    reconcile,
    record_pods,
    record_progress,
    render_options,
    track_phase,
)
from tac2sol.operator.settings import OperatorSettings
from tac2sol.operator.status import PHASES, Phase

log = logging.getLogger(__name__)

RUNS = (API_GROUP, API_VERSION, PLURAL)
OURS = {"app.kubernetes.io/managed-by": MANAGED_BY}
# The job kinds of each backend, as (group, version, plural); only enabled backends are watched.
JOB_RESOURCES = {
    "pytorchjob": (("kubeflow.org", "v1", "pytorchjobs"), ("kubeflow.org", "v1", "mpijobs")),
    "trainjob": (("trainer.kubeflow.org", "v1alpha1", "trainjobs"),),
}


# Runs looked at concurrently by one pass of the poll loop (API calls and /metrics reads).
POLL_CONCURRENCY = 8


def _unfinished(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") not in (Phase.SUCCEEDED.value, Phase.FAILED.value)


async def _look_at(op: Operator, run: dict[str, Any], limit: asyncio.Semaphore) -> None:
    """One run, one pass: its progress while Running, its pods while they may be stuck."""
    status = run.get("status") or {}
    if run["metadata"].get("deletionTimestamp"):
        return
    async with limit:
        try:
            if status.get("phase") == Phase.RUNNING.value:
                await record_progress(op, run)
            if lifecycle.pods_to_watch(run.get("spec") or {}, status):
                await record_pods(op, run)
        except Exception:  # one run's trouble must not stop the loop for the others
            meta = run["metadata"]
            log.exception("looking at TrainingRun %s/%s failed", meta.get("namespace"), meta.get("name"))


async def poll_runs(op: Operator, runs_seen: dict[Any, dict[str, Any]], interval: float) -> None:
    """Every ``interval`` seconds, look at every run seen (until cancelled at cleanup)."""
    limit = asyncio.Semaphore(POLL_CONCURRENCY)
    while True:
        await asyncio.sleep(interval)
        await asyncio.gather(*(_look_at(op, run, limit) for run in list(runs_seen.values())))


def _loop_answers(loop: asyncio.AbstractEventLoop, timeout: float = 5.0) -> bool:
    """Liveness: the event loop runs a callback within ``timeout`` (it is not stuck)."""
    done = threading.Event()
    try:
        loop.call_soon_threadsafe(done.set)
    except RuntimeError:  # the loop is closed
        return False
    return done.wait(timeout)


def register(registry: kopf.OperatorRegistry, settings: OperatorSettings) -> None:
    """Add every handler to ``registry``; ``settings`` (also in kopf's memo) decide the set-up."""

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        ours: OperatorSettings = memo["settings"]
        # One replica (Deployment strategy Recreate): no peering objects to coordinate through.
        settings.peering.standalone = True
        # Keep kopf's bookkeeping (handler progress, last-handled spec) in annotations under our
        # own prefix, so status holds only what users read and nothing says zalando.org.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=API_GROUP, key="last-handled-configuration"
        )
        # No handler needs a finalizer (no timers, an optional delete handler; children go by
        # garbage collection). The name is ours so that kopf removes a finalizer left on runs by
        # older operator versions, which held one while their timers ran.
        settings.persistence.finalizer = f"{API_GROUP}/finalizer"
        # Events: our handlers post one per phase transition; kopf adds only its own warnings/errors.
        settings.posting.level = logging.WARNING
        settings.posting.reporting_component = FIELD_MANAGER
        # Re-list every ~5 min so a silently dropped watch cannot freeze the operator.
        settings.watching.server_timeout = 270
        settings.watching.client_timeout = 300
        settings.watching.connect_timeout = 10
        # Fail an API call that hangs instead of blocking a worker for the default 5 minutes.
        settings.networking.request_timeout = 60
        settings.networking.connect_timeout = 10
        # A crashed handler (a bug) is retried after 10 s, not kopf's default minute.
        settings.execution.default_backoff = 10
        # Namespaced mode is granted its namespace only (RoleBinding): CRDs are read once at start.
        settings.scanning.disabled = ours.namespace is not None
        # Up to 32 runs reconciled at once: enough for a burst of 100 applies, bounded for the apiserver.
        settings.batching.worker_limit = 32
        memo["op"] = Operator(kube=Kube.connect(), settings=ours, options=render_options(ours))
        memo["runs_seen"] = {}  # shared by every object's (shallow) copy of the memo
        metrics.declare_phases(PHASES)
        loop = asyncio.get_running_loop()
        memo["server"] = metrics.serve(
            ours.metrics_port, ours.metrics_host, healthy=lambda: _loop_answers(loop)
        )
        memo["poller"] = asyncio.create_task(
            poll_runs(memo["op"], memo["runs_seen"], ours.progress_interval_seconds), name="poll-runs"
        )

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """The same credentials as the API client: the pod's service account, else the kubeconfig."""
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.cleanup(registry=registry)
    async def close(memo: kopf.Memo, **_: Any) -> None:
        if "poller" in memo:
            memo["poller"].cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await memo["poller"]
        if "op" in memo:
            await memo["op"].kube.close()
        if "server" in memo:
            memo["server"].shutdown()

    @kopf.on.create(*RUNS, registry=registry, id="reconcile")
    @kopf.on.update(*RUNS, registry=registry, id="reconcile", field="spec")
    @kopf.on.resume(*RUNS, registry=registry, id="reconcile", when=_unfinished)
    async def reconcile_run(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        with metrics.reconcile_timer():
            await reconcile(memo["op"], _plain(body))

    @kopf.on.event(*RUNS, registry=registry, id="observe")
    async def observe_run(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
        """Every run event: count its phase, and remember the run as last seen, so that job events
        that would change nothing in it cost no API call (the training-operator rewrites job
        status often). Not a kopf index: indexes stall kopf's cluster-wide mode (kopf 1.45)."""
        meta = body.get("metadata") or {}
        key = (meta.get("namespace"), meta.get("name"))
        if type == "DELETED":
            memo["runs_seen"].pop(key, None)
            return
        keep = {
            k: meta[k]
            for k in ("name", "namespace", "uid", "deletionTimestamp", "resourceVersion")
            if k in meta
        }
        memo["runs_seen"][key] = {
            "metadata": keep,
            "spec": _plain_part(body, "spec"),
            "status": _plain_part(body, "status"),
        }
        track_phase(_plain(body))

    @kopf.on.delete(*RUNS, registry=registry, optional=True)
    def deleted(body: kopf.Body, **_: Any) -> None:
        forget(_plain(body))

    for group, version, plural in (r for b in sorted(settings.enabled_backends) for r in JOB_RESOURCES[b]):

        @kopf.on.event(group, version, plural, registry=registry, labels=OURS, id=f"follow-{plural}")
        async def job_event(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
            job = _plain(body)
            key = (job["metadata"]["namespace"], (job["metadata"].get("labels") or {}).get(RUN_LABEL, ""))
            await follow_job(memo["op"], job, type, memo["runs_seen"].get(key))


def run(settings: OperatorSettings) -> None:
    """Run the operator until SIGTERM/SIGINT (``tac2sol operator``)."""
    registry = kopf.OperatorRegistry()
    register(registry, settings)
    scope: dict[str, Any] = (
        {"namespaces": [settings.namespace]} if settings.namespace else {"clusterwide": True}
    )
    log.info(
        "tac2sol operator: watching %s; metrics and /healthz on %s:%d",
        f"namespace {settings.namespace}" if settings.namespace else "all namespaces",
        settings.metrics_host,
        settings.metrics_port,
    )
    kopf.run(registry=registry, standalone=True, memo=kopf.Memo(settings=settings), **scope)


def _plain_part(body: kopf.Body, part: str) -> dict[str, Any]:
    import copy

    return copy.deepcopy(dict(body.get(part) or {}))


def _plain(body: kopf.Body) -> dict[str, Any]:
    """A plain, private copy of a kopf body (the renderers and status code take dicts)."""
    import copy

    return copy.deepcopy(dict(body))
