"""Every Kubernetes API call the operator makes (lightkube, async), conflict-tolerant.

* children are written with server-side apply, field manager ``tac2sol-operator``, forced: the
  operator owns the fields it renders, so re-applying the same objects changes nothing and a
  retry after a crash creates nothing twice;
* the run's status is changed read-modify-write with the read ``resourceVersion`` as a
  precondition, retried on 409, so two writers (the run's handler and the job watcher) never
  overwrite each other's conditions;
* Events (one per phase transition) are posted in order, best effort, by one background task,
  so that a reconcile does not wait for them (a burst of runs reaches its jobs first);
* every request is counted (``tac2sol_operator_api_requests_total{verb,resource}``).

The verbs used here are listed in ``tac2sol.operator.rbac`` (the ClusterRole's source).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any, cast

import httpx2
from lightkube import ALL_NS, ApiError, AsyncClient, KubeConfig
from lightkube.generic_resource import create_global_resource, create_namespaced_resource
from lightkube.resources.core_v1 import ConfigMap, Event, Pod
from lightkube.types import PatchType

from tac2sol.operator import metrics
from tac2sol.operator.names import API_GROUP, API_VERSION, FIELD_MANAGER, KIND, PLURAL

log = logging.getLogger(__name__)

TrainingRunResource = create_namespaced_resource(API_GROUP, API_VERSION, KIND, PLURAL)
PyTorchJobResource = create_namespaced_resource("kubeflow.org", "v1", "PyTorchJob", "pytorchjobs")
MPIJobResource = create_namespaced_resource("kubeflow.org", "v1", "MPIJob", "mpijobs")
TrainJobResource = create_namespaced_resource("trainer.kubeflow.org", "v1alpha1", "TrainJob", "trainjobs")
# A run with a priority class: its own TrainingRuntime, a copy of the ClusterTrainingRuntime.
TrainingRuntimeResource = create_namespaced_resource(
    "trainer.kubeflow.org", "v1alpha1", "TrainingRuntime", "trainingruntimes"
)
ClusterTrainingRuntimeResource = create_global_resource(
    "trainer.kubeflow.org", "v1alpha1", "ClusterTrainingRuntime", "clustertrainingruntimes"
)

_RESOURCES: dict[tuple[str, str], Any] = {
    ("v1", "ConfigMap"): ConfigMap,
    ("kubeflow.org/v1", "PyTorchJob"): PyTorchJobResource,
    ("kubeflow.org/v1", "MPIJob"): MPIJobResource,
    ("trainer.kubeflow.org/v1alpha1", "TrainJob"): TrainJobResource,
    ("trainer.kubeflow.org/v1alpha1", "TrainingRuntime"): TrainingRuntimeResource,
    ("trainer.kubeflow.org/v1alpha1", "ClusterTrainingRuntime"): ClusterTrainingRuntimeResource,
    (f"{API_GROUP}/{API_VERSION}", KIND): TrainingRunResource,
}
_PLURALS = {
    "ConfigMap": "configmaps",
    "PyTorchJob": "pytorchjobs",
    "MPIJob": "mpijobs",
    "TrainJob": "trainjobs",
    "TrainingRuntime": "trainingruntimes",
    "ClusterTrainingRuntime": "clustertrainingruntimes",
    KIND: PLURAL,
}
# How long an answer of ``serves`` is reused: kinds come and go with CRD installs, not per run,
# and a burst of new runs should not ask for each of them.
SERVES_SECONDS = 30.0
STATUS_RETRIES = 8
# Events waiting to be posted; beyond this many (an apiserver that does not answer) new ones are dropped.
EVENT_BACKLOG = 10_000
# At the end, how long the Events still waiting may take to be posted.
EVENT_DRAIN_SECONDS = 5.0

# Transport trouble (apiserver restarting, a dropped connection): worth a retry, not a bug.
TransientError = (httpx2.TransportError,)


# An error status without a Status object (a plain-text 404: an API group the apiserver does not
# serve), which lightkube raises as httpx's error rather than an ApiError.
StatusError = (ApiError, httpx2.HTTPStatusError)


def status_code(exc: BaseException) -> int | None:
    if isinstance(exc, ApiError):  # a subclass of httpx's error, with the Status object
        return exc.status.code if exc.status is not None else None
    return exc.response.status_code if isinstance(exc, httpx2.HTTPStatusError) else None


def is_not_found(exc: BaseException) -> bool:
    """404: no such object, or no such API group or kind served."""
    return status_code(exc) == 404


def namespace_going_away(exc: BaseException) -> bool:
    """The namespace is being deleted (403 "being terminated") or already gone (404 on the
    namespace itself): whatever lives in it goes too, so there is nothing to create or retry."""
    if not isinstance(exc, ApiError) or exc.status is None:
        return False
    message = exc.status.message or ""
    if status_code(exc) == 403 and "because it is being terminated" in message:
        return True
    details = exc.status.details
    return status_code(exc) == 404 and details is not None and details.kind == "namespaces"


def _plain(obj: Any) -> dict[str, Any]:
    return dict(obj) if isinstance(obj, dict) else obj.to_dict()


def resource_for(api_version: str, kind: str) -> Any:
    try:
        return _RESOURCES[(api_version, kind)]
    except KeyError:
        raise ValueError(f"the operator does not manage {kind} ({api_version})") from None


class Kube:
    """The operator's API client; one per process (``connect``), closed at cleanup."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self._serves: dict[tuple[str, str, str], tuple[bool, float]] = {}  # -> (served, until)
        self._events: asyncio.Queue[dict[str, Any]] | None = None
        self._poster: asyncio.Task[None] | None = None

    @classmethod
    def connect(cls, timeout_seconds: float = 30.0) -> Kube:
        """In a pod: the service account; outside: ``$KUBECONFIG`` / ``~/.kube/config``."""
        config = KubeConfig.from_env()
        return cls(AsyncClient(config, field_manager=FIELD_MANAGER, timeout=httpx2.Timeout(timeout_seconds)))

    async def close(self) -> None:
        if self._poster is not None and self._events is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._events.join(), EVENT_DRAIN_SECONDS)
            self._poster.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poster
        await self._client.close()

    # --- children -------------------------------------------------------------------------------

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply ``obj`` (create or update) and return the stored object."""
        res = resource_for(obj["apiVersion"], obj["kind"])
        meta = obj["metadata"]
        metrics.api_request("apply", _PLURALS[obj["kind"]])
        stored = await self._client.patch(
            res,
            meta["name"],
            obj,
            namespace=meta.get("namespace"),
            patch_type=PatchType.APPLY,
            field_manager=FIELD_MANAGER,
            force=True,
        )
        return _plain(stored)

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create ``obj`` (one request; ``ApiError`` 409 when it exists) and return the stored object."""
        res = resource_for(obj["apiVersion"], obj["kind"])
        metrics.api_request("create", _PLURALS[obj["kind"]])
        stored = await self._client.create(res.from_dict(obj), field_manager=FIELD_MANAGER)
        return _plain(stored)

    async def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        """The object, or None when it does not exist (``namespace`` None: a cluster-scoped kind)."""
        metrics.api_request("get", _PLURALS[kind])
        try:
            return _plain(await self._client.get(resource_for(api_version, kind), name, namespace=namespace))
        except StatusError as exc:
            if is_not_found(exc):
                return None
            raise

    async def serves(self, api_version: str, kind: str, namespace: str) -> bool:
        """Whether the cluster serves ``kind`` (a one-item list in ``namespace``: 404 means not);
        an answer is reused for ``SERVES_SECONDS``."""
        key = (api_version, kind, namespace)
        known = self._serves.get(key)
        if known is not None and time.monotonic() < known[1]:
            return known[0]
        metrics.api_request("list", _PLURALS[kind])
        served = True
        try:
            async for _ in self._client.list(
                resource_for(api_version, kind), namespace=namespace, chunk_size=1
            ):
                break
        except StatusError as exc:
            if not is_not_found(exc):
                raise
            served = False
        self._serves[key] = (served, time.monotonic() + SERVES_SECONDS)
        return served

    async def list_pods(self, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        selector: dict[str, Any] = dict(labels)
        metrics.api_request("list", "pods")
        pods = self._client.list(Pod, namespace=namespace, labels=selector)
        return [_plain(p) async for p in pods]

    async def list_events(self, namespace: str, kind: str, name: str, reason: str) -> list[dict[str, Any]]:
        """The Events with ``reason`` about the ``kind`` object ``name`` (both Event APIs' writers)."""
        metrics.api_request("list", "events")
        fields: dict[str, Any] = {"involvedObject.kind": kind, "involvedObject.name": name, "reason": reason}
        return [_plain(e) async for e in self._client.list(Event, namespace=namespace, fields=fields)]

    async def list_pods_with_version(
        self, namespace: str | None, labels: dict[str, str]
    ) -> tuple[list[dict[str, Any]], str]:
        """Pods with these labels (``namespace`` None: all namespaces) and the list's resourceVersion."""
        metrics.api_request("list", "pods")
        listing = self._client.list(Pod, namespace=namespace or ALL_NS, labels=dict(labels))
        pods = [_plain(p) async for p in listing]
        return pods, listing.resourceVersion

    async def watch_pods(
        self, namespace: str | None, labels: dict[str, str], version: str, *, server_timeout: int
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Pod events after ``version``; the apiserver's timeouts start a new watch from the last one
        seen; an error (410 Gone: too old) is raised."""
        metrics.api_request("watch", "pods")
        watch = self._client.watch(
            Pod,
            namespace=namespace or ALL_NS,
            labels=dict(labels),
            resource_version=version,
            server_timeout=server_timeout,
        )
        async for event, pod in watch:
            yield event, _plain(pod)

    # --- the run's status ---------------------------------------------------------------------

    async def get_run(self, namespace: str, name: str) -> dict[str, Any] | None:
        metrics.api_request("get", PLURAL)
        try:
            return _plain(await self._client.get(TrainingRunResource, name, namespace=namespace))
        except ApiError as exc:
            if is_not_found(exc):
                return None
            raise

    async def update_run_status(
        self,
        namespace: str,
        name: str,
        change: Callable[[dict[str, Any]], dict[str, Any] | None],
        body: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """Read-modify-write ``status``: ``change(run)`` returns the new status (None: no change).

        Starts from ``body`` when given (saves a GET), re-reads on 409. Returns (the run as read,
        the run as stored after the write) when it wrote, None when nothing changed or the run is
        gone.
        """
        run = body
        for _attempt in range(STATUS_RETRIES):
            if run is None:
                run = await self.get_run(namespace, name)
                if run is None:
                    return None
            new = change(run)
            if new is None or new == (run.get("status") or {}):
                return None
            patch = {
                "metadata": {"resourceVersion": run["metadata"]["resourceVersion"]},
                "status": _merge_patch(run.get("status") or {}, new),
            }
            metrics.api_request("patch", f"{PLURAL}/status")
            try:
                stored = await self._client.patch(
                    TrainingRunResource.Status,
                    name,
                    patch,
                    namespace=namespace,
                    patch_type=PatchType.MERGE,
                    field_manager=FIELD_MANAGER,
                )
                return run, _plain(stored)
            except ApiError as exc:
                if is_not_found(exc):
                    return None
                if status_code(exc) != 409:
                    raise
                log.debug("status of %s/%s changed under us; reading it again", namespace, name)
                run = None
        raise RuntimeError(
            f"status of TrainingRun {namespace}/{name}: still conflicting after {STATUS_RETRIES} tries"
        )

    async def drop_finalizer(self, run: dict[str, Any], finalizer: str) -> None:
        """Remove ``finalizer`` from the run (as read; a conflict or a gone run is left alone: the
        next event of the run tries again)."""
        meta = run["metadata"]
        keep = [f for f in meta.get("finalizers") or [] if f != finalizer]
        patch = {"metadata": {"finalizers": keep, "resourceVersion": meta["resourceVersion"]}}
        metrics.api_request("patch", PLURAL)
        try:
            await self._client.patch(
                TrainingRunResource,
                meta["name"],
                patch,
                namespace=meta["namespace"],
                patch_type=PatchType.MERGE,
            )
        except ApiError as exc:
            if status_code(exc) not in (404, 409):
                raise

    def post_event(self, run: dict[str, Any], *, type_: str, reason: str, message: str) -> None:
        """Queue a Kubernetes Event on the run. One task posts the queue in order (so Events keep
        the order of the transitions), after the calls that were waiting when it was queued.
        Best effort: a failure is logged, never raised."""
        if self._events is None:
            self._events = asyncio.Queue(EVENT_BACKLOG)
            self._poster = asyncio.create_task(self._post_events(), name="post-events")
        event = _event(run, type_, reason, message, datetime.now(UTC))
        try:
            self._events.put_nowait(event)
        except asyncio.QueueFull:
            log.warning("too many Events waiting; dropped %s on %s", reason, run["metadata"]["name"])

    async def _post_events(self) -> None:
        assert self._events is not None
        while True:
            event = await self._events.get()
            try:
                metrics.api_request("create", "events")
                await self._client.create(cast(Event, Event.from_dict(event)))
            except (ApiError, *TransientError) as exc:
                if not namespace_going_away(exc):
                    what = event["involvedObject"]["name"]
                    log.warning("could not post Event %s on %s: %s", event["reason"], what, exc)
            finally:
                self._events.task_done()

    async def patch_run_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """A merge patch of fields only one writer touches (``progress``, ``evaluation``)."""
        metrics.api_request("patch", f"{PLURAL}/status")
        try:
            await self._client.patch(
                TrainingRunResource.Status,
                name,
                {"status": status},
                namespace=namespace,
                patch_type=PatchType.MERGE,
                field_manager=FIELD_MANAGER,
            )
        except ApiError as exc:
            if not is_not_found(exc):
                raise


def _merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns ``old`` into ``new``: removed keys become null."""
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        if key in old and isinstance(value, dict) and isinstance(old[key], dict):
            sub = _merge_patch(old[key], value)
            if sub:
                patch[key] = sub
        elif old.get(key, object()) != value:
            patch[key] = value
    return patch


def _event(run: dict[str, Any], type_: str, reason: str, message: str, now: datetime) -> dict[str, Any]:
    meta = run["metadata"]
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": run.get("apiVersion"),
            "kind": run.get("kind"),
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": FIELD_MANAGER},
        "reportingComponent": FIELD_MANAGER,
        "reportingInstance": socket.gethostname()[:128],
        "action": "Reconcile",
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "eventTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "count": 1,
    }
