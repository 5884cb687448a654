"""kopf entry points of the tac2sol operator (the work is in ``reconcile.py``).

``register(registry, settings)`` wires them, filters on the decorators:

* startup: every kopf setting, the API client, the reconcile queue and its workers
  (``tac2sol.operator.controller``), the /metrics + /healthz server;
* TrainingRun events: remember the run, count its phase, queue it when it has work (a new
  generation, or found at startup); the queue's workers reconcile runs in parallel, each run in
  order. No kopf change handlers: kopf then writes nothing on the runs (no annotations, no
  finalizer), and a burst of new runs costs the apiserver only the calls that make their jobs;
* one watch of the job pods the operator labelled (``tac2sol.operator.podcache``);
* one poll loop (an asyncio task, not kopf timers) over the runs the operator has seen, one
  independent look per run: Running runs' trainer /metrics -> ``status.progress``; runs with an
  unfinished, unsuspended job: its pods (from the pod watch) -> the ``PodsReady`` condition (why
  they do not run). kopf timers would put a finalizer on every such run, and a run could then not
  be deleted while the operator is down or uninstalled;
* PyTorchJob / MPIJob / TrainJob events (jobs this operator made, of the enabled backends):
  queue the run; its worker mirrors the job's conditions into the run's phase.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

import kopf

from tac2sol.operator import lifecycle, metrics
from tac2sol.operator.controller import Controller
from tac2sol.operator.kube import Kube
from tac2sol.operator.names import API_GROUP, API_VERSION, FIELD_MANAGER, MANAGED_BY, PLURAL, RUN_LABEL
from tac2sol.operator.podcache import PodCache
from tac2sol.operator.progress import Scrapes
from tac2sol.operator.reconcile import (
    Operator,
    forget,
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
# The finalizer operator versions before the reconcile queue held on runs; removed when seen.
OLD_FINALIZER = f"{API_GROUP}/finalizer"


# Runs whose pods' condition is written at once by the poll loop (API calls).
POLL_CONCURRENCY = 8


async def _look_at(op: Operator, run: dict[str, Any], limit: asyncio.Semaphore) -> None:
    """One run, one look: its progress while Running, its pods while they may be stuck."""
    status = run.get("status") or {}
    if run["metadata"].get("deletionTimestamp"):
        return
    try:
        if status.get("phase") == Phase.RUNNING.value:
            await record_progress(op, run)
        if lifecycle.pods_to_watch(run.get("spec") or {}, status):
            async with limit:
                await record_pods(op, run)
    except Exception:  # one run's trouble must not stop the loop for the others
        meta = run["metadata"]
        log.exception("looking at TrainingRun %s/%s failed", meta.get("namespace"), meta.get("name"))


async def poll_runs(op: Operator, runs_seen: dict[Any, dict[str, Any]], interval: float) -> None:
    """Every ``interval`` seconds, start a look at each run seen whose last look has ended (until
    cancelled at cleanup). Looks are independent: a run whose pods answer slowly (each /metrics
    read is bounded by the timeout, all reads by TAC2SOL_METRICS_SCRAPES) holds only its own."""
    limit = asyncio.Semaphore(POLL_CONCURRENCY)
    looking: dict[Any, asyncio.Task[None]] = {}
    try:
        while True:
            await asyncio.sleep(interval)
            for key in [k for k, task in looking.items() if task.done()]:
                del looking[key]
            for key, run in list(runs_seen.items()):
                if key not in looking:
                    looking[key] = asyncio.create_task(_look_at(op, run, limit))
    finally:
        for task in looking.values():
            task.cancel()


class _NoChangeDetection(kopf.AnnotationsDiffBaseStorage):
    """kopf copies every object on every event to detect changes for change handlers; this
    operator has none (event handlers only), so there is nothing to compare and nothing to copy."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None


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
        # Only event handlers: kopf keeps no bookkeeping on the runs. Were it ever to, it would
        # be in annotations under our own prefix, and status would hold only what users read.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
        settings.persistence.diffbase_storage = _NoChangeDetection(
            prefix=API_GROUP, key="last-handled-configuration"
        )
        settings.persistence.finalizer = OLD_FINALIZER
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
        # kopf's per-object workers only record events; the reconcile queue bounds the real work.
        settings.batching.batch_window = 0.01
        kube = Kube.connect()
        pods = PodCache(kube, ours.namespace)
        memo["op"] = Operator(
            kube=kube,
            settings=ours,
            options=render_options(ours),
            pods=pods,
            scrapes=Scrapes(ours.metrics_scrapes, ours.progress_timeout_seconds),
        )
        memo["pod_watch"] = asyncio.create_task(pods.run(), name="watch-pods")
        controller = Controller(memo["op"])  # shared by every object's (shallow) copy of the memo
        memo["controller"] = controller
        memo["runs_seen"] = controller.runs
        controller.queue.start()
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
        if "controller" in memo:
            await memo["controller"].queue.stop()
        for task in ("poller", "pod_watch"):
            if task in memo:
                memo[task].cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await memo[task]
        if "op" in memo:
            await memo["op"].kube.close()
        if "server" in memo:
            memo["server"].shutdown()

    @kopf.on.event(*RUNS, registry=registry, id="observe")
    async def observe_run(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
        """Every run event: count its phase, remember the run as last seen (so that job events that
        would change nothing in it cost no API call), and queue it when it has work."""
        run = _raw(body)
        controller: Controller = memo["controller"]
        controller.seen_run(run, type)
        meta = run["metadata"]
        if type == "DELETED":
            forget(run)
            return
        if meta.get("deletionTimestamp") and OLD_FINALIZER in (meta.get("finalizers") or []):
            # Older operator versions held a finalizer while their timers ran: let the run go.
            await memo["op"].kube.drop_finalizer(run, OLD_FINALIZER)
        track_phase(run)

    for group, version, plural in (r for b in sorted(settings.enabled_backends) for r in JOB_RESOURCES[b]):

        @kopf.on.event(group, version, plural, registry=registry, labels=OURS, id=f"follow-{plural}")
        async def job_event(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
            meta = body.get("metadata") or {}
            key = (meta.get("namespace", ""), (meta.get("labels") or {}).get(RUN_LABEL, ""))
            memo["controller"].seen_job(key, _raw(body), type)


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


def _raw(body: kopf.Body) -> dict[str, Any]:
    """The event's object as kopf decoded it (no copy: ``Controller`` keeps parts of it read-only)."""
    return dict(body)
