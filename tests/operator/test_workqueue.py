"""The reconcile queue: different runs in parallel up to the worker count, one run never twice at
once, a run added while in flight worked on again afterwards, retries after their delay, and the
token bucket's pace."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable

import pytest

from tac2sol.operator import metrics, workqueue
from tac2sol.operator.workqueue import TokenBucket, WorkQueue


def _run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_runs_go_in_parallel_up_to_the_worker_count_and_one_run_never_twice_at_once() -> None:
    async def main() -> tuple[int, dict[Hashable, int], list[str]]:
        busy: set[Hashable] = set()
        peak = 0
        calls: dict[Hashable, int] = {}
        overlaps: list[str] = []

        async def work(key: Hashable) -> float | None:
            nonlocal peak
            if key in busy:
                overlaps.append(str(key))
            busy.add(key)
            peak = max(peak, len(busy))
            calls[key] = calls.get(key, 0) + 1
            await asyncio.sleep(0.05)
            busy.discard(key)
            return None

        queue = WorkQueue(work, workers=4)
        queue.start()
        for i in range(12):
            queue.add(("ns", f"run-{i}"))
        queue.add(("ns", "run-0"))  # queued already: not queued twice
        await asyncio.sleep(0.01)
        queue.add(("ns", "run-1"))  # in flight: once more, after this work ends
        while not queue.idle():
            await asyncio.sleep(0.01)
        await queue.stop()
        return peak, calls, overlaps

    peak, calls, overlaps = _run(main())  # type: ignore[misc]
    assert peak == 4
    assert not overlaps
    assert calls[("ns", "run-0")] == 1
    assert calls[("ns", "run-1")] == 2
    assert sum(calls.values()) == 13


def test_a_retry_comes_after_its_delay_and_the_gauges_follow_the_queue() -> None:
    async def main() -> tuple[list[float], float, float]:
        seen: list[float] = []
        depths: list[float] = []

        async def work(key: Hashable) -> float | None:
            seen.append(time.monotonic())
            depths.append(metrics.RECONCILES_IN_FLIGHT._value.get())
            return 0.2 if len(seen) == 1 else None

        queue = WorkQueue(work, workers=2)
        queue.start()
        queue.add("a")
        while len(seen) < 2 or not queue.idle():
            await asyncio.sleep(0.01)
        await queue.stop()
        return seen, depths[0], metrics.QUEUE_DEPTH._value.get()

    seen, in_flight, depth = _run(main())  # type: ignore[misc]
    assert len(seen) == 2 and seen[1] - seen[0] >= 0.2
    assert in_flight == 1 and depth == 0


def test_a_crash_is_logged_and_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workqueue, "ERROR_DELAY", 0.05)

    async def main() -> int:
        calls = 0

        async def work(key: Hashable) -> float | None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("a bug")
            return None

        queue = WorkQueue(work, workers=1)
        queue.start()
        queue.add("a")
        while calls < 2 or not queue.idle():
            await asyncio.sleep(0.01)
        await queue.stop()
        return calls

    assert _run(main()) == 2


def test_the_token_bucket_lets_a_burst_through_then_paces() -> None:
    async def main() -> tuple[float, float]:
        bucket = TokenBucket(rate=20, burst=5)
        t0 = time.monotonic()
        for _ in range(5):
            await bucket.take()
        burst = time.monotonic() - t0
        for _ in range(4):
            await bucket.take()
        return burst, time.monotonic() - t0

    burst, total = _run(main())  # type: ignore[misc]
    assert burst < 0.05
    assert 0.18 <= total < 0.5  # 4 more at 20/s


def test_low_priority_work_waits_for_the_rest_and_a_normal_add_promotes_it() -> None:
    async def main() -> list[Hashable]:
        order: list[Hashable] = []

        async def work(key: Hashable) -> float | None:
            order.append(key)
            return None

        queue = WorkQueue(work, workers=1)
        queue.add("status-a", low=True)
        queue.add("status-b", low=True)
        queue.add("new-1")
        queue.add("new-2")
        queue.add("status-b")  # promoted: a job event made it urgent
        queue.add("new-1", low=True)  # already queued at normal priority: stays there
        queue.start()
        while not queue.idle():
            await asyncio.sleep(0.01)
        await queue.stop()
        return order

    assert _run(main()) == ["new-1", "new-2", "status-b", "status-a"]


def test_low_priority_work_waits_for_a_quiet_moment() -> None:
    """While new runs keep coming (normal adds less than LOW_QUIET apart), a status write waits."""

    async def main() -> tuple[float, float]:
        done: dict[Hashable, float] = {}

        async def work(key: Hashable) -> float | None:
            done[key] = time.monotonic()
            return None

        queue = WorkQueue(work, workers=2)
        queue.start()
        t0 = time.monotonic()
        queue.add("status", low=True)
        for i in range(6):  # a burst: a new run every 0.1 s for 0.6 s
            queue.add(f"new-{i}")
            await asyncio.sleep(0.1)
        while not queue.idle():
            await asyncio.sleep(0.01)
        await queue.stop()
        return done["status"] - t0, done["new-5"] - t0

    status, last_new = _run(main())  # type: ignore[misc]
    assert status > last_new and status >= 0.5 + 0.5  # after the burst, and quiet for LOW_QUIET
