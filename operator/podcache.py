"""The job pods this operator made, from one watch: what progress, ``PodsReady`` and failure
reasons read, without a pod list per run every interval.

One list + watch of pods labelled ``app.kubernetes.io/managed-by=tac2sol-operator`` (in the
watched namespace, or all), filtered by the apiserver. A broken watch is listed again (the cache is
replaced, so pods deleted meanwhile go too), after a short back-off. Until the first listing is
done, ``of_job`` returns None and callers list the pods themselves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from tac2sol.operator import pods as pod_status
from tac2sol.operator.kube import Kube
from tac2sol.operator.names import JOB_NAME_LABEL, JOBSET_NAME_LABEL, MANAGED_BY

log = logging.getLogger(__name__)

OURS = {"app.kubernetes.io/managed-by": MANAGED_BY}
# The labels that name a pod's job: the training-operator's, and JobSet's (a TrainJob's pods).
JOB_LABELS = (JOB_NAME_LABEL, JOBSET_NAME_LABEL)
# A watch the apiserver ends after this long is started again from where it was (not re-listed).
WATCH_SECONDS = 270
RETRY_SECONDS = (1.0, 60.0)  # first and longest wait before listing again after a failure
# An OOMKilled pod is Failed only until its job's controller deletes it to re-create it (under a
# second with the training-operator): the watch sees it, a poll seldom does. The last one of each
# job is kept until ``take_oom_killed`` reads it, or this long (a run deleted before that).
OOM_KEEP_SECONDS = 600.0


def slim(pod: dict[str, Any]) -> dict[str, Any]:
    """What is read of a pod: name, labels, node, each container's memory limit (what an OOMKilled
    message names), status (no other spec, no managedFields)."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    containers = []
    for c in spec.get("containers") or []:
        memory = ((c.get("resources") or {}).get("limits") or {}).get("memory")
        limits = {"resources": {"limits": {"memory": memory}}} if memory else {}
        containers.append({"name": c.get("name"), **limits})
    return {
        "metadata": {k: meta[k] for k in ("name", "namespace", "labels", "deletionTimestamp") if k in meta},
        "spec": {"nodeName": spec.get("nodeName"), "containers": containers},
        "status": pod.get("status") or {},
    }


class PodCache:
    """Pods by (namespace, job label, job name); ``run`` keeps it current until cancelled."""

    def __init__(self, kube: Kube, namespace: str | None) -> None:
        self._kube = kube
        self._namespace = namespace
        self._by_job: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}
        self._oom: dict[tuple[str, str, str], tuple[float, dict[str, Any]]] = {}
        self.ready = asyncio.Event()

    def of_job(self, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]] | None:
        """The pods ``selector`` (one of ``JOB_LABELS``: its job's name) picks, as last seen; None
        before the first listing, or for a selector this cache does not index."""
        key = self._key(namespace, selector)
        if not self.ready.is_set() or key is None:
            return None
        return list(self._by_job.get(key, {}).values())

    def take_oom_killed(self, namespace: str, selector: dict[str, str]) -> dict[str, Any] | None:
        """The job's last OOMKilled pod the watch saw since the last call (None: none), as
        ``of_job`` would have listed it then."""
        key = self._key(namespace, selector)
        found = self._oom.pop(key, None) if key is not None else None
        if found is None or time.monotonic() - found[0] > OOM_KEEP_SECONDS:
            return None
        return found[1]

    @staticmethod
    def _key(namespace: str, selector: dict[str, str]) -> tuple[str, str, str] | None:
        if len(selector) != 1:
            return None
        ((label, job),) = selector.items()
        return (namespace, label, job) if label in JOB_LABELS else None

    def _put(self, event: str, pod: dict[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        label = next((k for k in JOB_LABELS if labels.get(k)), None)
        if label is None:
            return
        key = (meta.get("namespace", ""), label, labels[label])
        if event == "DELETED":
            pods = self._by_job.get(key)
            if pods is not None:
                pods.pop(meta["name"], None)
                if not pods:
                    del self._by_job[key]
        else:
            kept = self._by_job.setdefault(key, {})[meta["name"]] = slim(pod)
            if pod_status.oom_killed(kept):
                now = time.monotonic()
                self._oom = {k: v for k, v in self._oom.items() if now - v[0] <= OOM_KEEP_SECONDS}
                # As it was before its deletion began (diagnose leaves pods being deleted out).
                before = {k: v for k, v in kept["metadata"].items() if k != "deletionTimestamp"}
                self._oom[key] = (now, {**kept, "metadata": before})

    async def run(self) -> None:
        wait = RETRY_SECONDS[0]
        while True:
            try:
                listed, version = await self._kube.list_pods_with_version(self._namespace, OURS)
                self._by_job = {}
                for pod in listed:
                    self._put("ADDED", pod)
                self.ready.set()
                async for event, pod in self._kube.watch_pods(
                    self._namespace, OURS, version, server_timeout=WATCH_SECONDS
                ):
                    self._put(event, pod)
                    wait = RETRY_SECONDS[0]
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a broken or expired watch: list again
                level = logging.INFO if wait == RETRY_SECONDS[0] else logging.DEBUG
                log.log(level, "pod watch ended (%s); listing the pods again in %.0f s", exc, wait)
                await asyncio.sleep(wait)
                wait = min(RETRY_SECONDS[1], 2 * wait)
