"""The pod watch's cache: an OOMKilled pod that the training-operator deletes and re-creates within
a second is still reported to the next PodsReady poll, with its memory limit.

The apiserver here is a scripted stand-in (a list, then the watch events a real one sends for such a
pod, as the real-node e2e test saw them: Failed, deletionTimestamp set, DELETED, the new pod ADDED);
the real watch runs in tests/e2e/test_tiny_cluster.py."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from typing import Any

from tac2sol.operator import pods
from tac2sol.operator.podcache import PodCache

T = "2025-06-01T10:00:00Z"
JOB = {"training.kubeflow.org/job-name": "oom"}


def _pod(name: str, phase: str, uid: str, terminated: dict[str, Any] | None = None) -> dict[str, Any]:
    state = {"terminated": terminated} if terminated else {"running": {"startedAt": T}}
    return {
        "metadata": {"name": name, "namespace": "ml", "uid": uid, "labels": dict(JOB)},
        "spec": {
            "nodeName": "node-a",
            "containers": [
                {"name": "pytorch", "image": "trainer", "resources": {"limits": {"memory": "300Mi"}}}
            ],
        },
        "status": {
            "phase": phase,
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [{"name": "pytorch", "state": state}],
        },
    }


class ScriptedApiserver:
    """One listing and the events after it; then the watch ends and the next listing waits."""

    def __init__(self, listed: list[dict[str, Any]], events: list[tuple[str, dict[str, Any]]]) -> None:
        self.listed, self.events, self.lists = listed, events, 0
        self.watched = asyncio.Event()

    async def list_pods_with_version(self, namespace: str | None, labels: dict[str, str]) -> Any:
        self.lists += 1
        if self.lists > 1:
            await asyncio.Event().wait()  # until cancelled
        return copy.deepcopy(self.listed), "1"

    async def watch_pods(self, *_: Any, **__: Any) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        for event in copy.deepcopy(self.events):
            yield event
        self.watched.set()


def test_an_oomkilled_pod_deleted_at_once_is_reported_once_with_its_limit() -> None:
    killed = {"exitCode": 137, "reason": "OOMKilled", "startedAt": T, "finishedAt": T}
    master, worker = _pod("oom-master-0", "Running", "m1"), _pod("oom-worker-0", "Running", "w1")
    failed = _pod("oom-worker-0", "Failed", "w1", killed)
    deleting = copy.deepcopy(failed)
    deleting["metadata"]["deletionTimestamp"] = T
    again = _pod("oom-worker-0", "Running", "w2")
    api = ScriptedApiserver(
        [master, worker],
        [("MODIFIED", failed), ("MODIFIED", deleting), ("DELETED", deleting), ("ADDED", again)],
    )

    async def scenario() -> tuple[Any, ...]:
        cache = PodCache(api, "ml")  # type: ignore[arg-type]
        task = asyncio.create_task(cache.run())
        await asyncio.wait_for(api.watched.wait(), 5)
        listed = cache.of_job("ml", JOB)
        oom = cache.take_oom_killed("ml", JOB)
        taken_again = cache.take_oom_killed("ml", JOB)
        task.cancel()
        return listed, oom, taken_again

    listed, oom, taken_again = asyncio.run(scenario())
    assert listed is not None
    assert sorted(p["metadata"]["name"] for p in listed) == ["oom-master-0", "oom-worker-0"]
    assert pods.diagnose(listed, 2).reason == pods.PODS_RUNNING  # what a poll lists now
    d = pods.diagnose(pods.with_oom_killed(listed, oom), 2)
    assert (d.status, d.reason) == ("False", pods.OOM_KILLED)
    assert d.message.startswith(
        "1 of 2 pods ran out of memory; pod oom-worker-0 container pytorch was OOMKilled (exit code 137): "
        "it ran out of memory at its memory limit of 300Mi: raise the TrainingRun's spec.resources.memory"
    ), d.message
    assert taken_again is None  # reported once; the stored condition keeps it (pods.keep_oom)
    assert PodCache(api, "ml").take_oom_killed("ml", {"other": "label"}) is None  # type: ignore[arg-type]
