"""Runs waiting for a reconcile: a keyed work queue with bounded parallel workers.

Shaped like client-go's workqueue, which Kubeflow's controllers use:

* a key (``(namespace, name)``) is queued at most once, however often it is added;
* a key is worked on by one worker at a time: added again while in flight, it is queued once more
  when that work ends, so the work for one run keeps its order and always sees its latest state;
* ``workers`` keys are worked on at once, different runs in parallel;
* ``TokenBucket`` paces what the work sends to the apiserver (the work takes a token before a
  reconcile that writes), so that a restart that finds a thousand runs to create does not send
  them all at the same moment, while a burst of applies up to ``burst`` runs starts at once;
* the work returns the seconds after which to look at the key again (a retry), or None.

Its depth and the work in flight are exported as operator metrics (``tac2sol.operator.metrics``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable

from tac2sol.operator import metrics

log = logging.getLogger(__name__)

# A crash (a bug, not a retry the work asked for) is tried again after this long.
ERROR_DELAY = 10.0
# Low-priority work starts once no normal work was added for LOW_QUIET seconds, or after waiting
# LOW_WAIT_MAX seconds: during a burst of new runs, the apiserver serves their jobs first.
LOW_QUIET = 0.5
LOW_WAIT_MAX = 10.0


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; ``take`` waits for one."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self) -> None:
        async with self._lock:  # one waiter at a time: the order of the takes is kept
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens < 1:
                await asyncio.sleep((1 - self._tokens) / self.rate)
                self._stamp = time.monotonic()
                self._tokens = 1.0
            self._tokens -= 1


class WorkQueue:
    """Keys to work on with ``work(key)``; ``start`` the workers, ``add`` keys, ``stop`` at the end."""

    def __init__(
        self,
        work: Callable[[Hashable], Awaitable[float | None]],
        *,
        workers: int,
    ) -> None:
        self._work = work
        self._workers = workers
        self._ready: deque[Hashable] = deque()
        self._later: deque[tuple[Hashable, float]] = deque()  # low priority: (key, when added)
        self._last_urgent = 0.0  # when a normal-priority key was last added
        self._queued: dict[Hashable, bool] = {}  # key -> low priority
        self._active: set[Hashable] = set()
        self._again: dict[Hashable, bool] = {}  # added while in flight -> low priority
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._timers: dict[Hashable, asyncio.TimerHandle] = {}

    @property
    def depth(self) -> int:
        """Keys waiting (not counting those in flight or waiting for a retry time)."""
        return len(self._queued)

    @property
    def in_flight(self) -> int:
        return len(self._active)

    def idle(self) -> bool:
        return not self._queued and not self._active and not self._timers

    def add(self, key: Hashable, after: float = 0.0, *, low: bool = False) -> None:
        """Queue ``key`` now, or after ``after`` seconds (an earlier add wins). ``low``: work that
        can wait (a status write after a job was created): taken when no other key waits and none
        was added for ``LOW_QUIET`` seconds, so that a burst of new runs gets its jobs first; a
        normal add of the key promotes it."""
        if after > 0:
            if key not in self._timers:
                loop = asyncio.get_running_loop()
                self._timers[key] = loop.call_later(after, self._due, key)
            return
        if key in self._active:
            self._again[key] = self._again.get(key, True) and low
        elif key not in self._queued or (self._queued[key] and not low):
            self._queued[key] = low
            if low:
                self._later.append((key, time.monotonic()))
            else:
                self._ready.append(key)
                self._last_urgent = time.monotonic()
            self._wake.set()
        self._publish()

    def forget(self, key: Hashable) -> None:
        """Drop a pending retry of ``key`` (the run is gone)."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def _due(self, key: Hashable) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def _publish(self) -> None:
        metrics.set_queue(depth=len(self._queued), in_flight=len(self._active))

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"reconcile-worker-{i}") for i in range(self._workers)
        ]

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _next(self) -> Hashable:
        while True:
            while self._ready:
                key = self._ready.popleft()
                if self._queued.get(key) is False:  # else promoted or taken already: a stale entry
                    del self._queued[key]
                    return key
            while self._later and self._queued.get(self._later[0][0]) is not True:
                self._later.popleft()  # stale: promoted or taken already
            if self._later:
                # Low-priority work waits for a quiet moment (a burst of new runs is over), or
                # at most LOW_WAIT_MAX seconds.
                now = time.monotonic()
                key, added = self._later[0]
                wait = min(self._last_urgent + LOW_QUIET - now, added + LOW_WAIT_MAX - now)
                if wait <= 0:
                    self._later.popleft()
                    del self._queued[key]
                    return key
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
                continue
            self._wake.clear()
            await self._wake.wait()

    async def _worker(self) -> None:
        while True:
            key = await self._next()
            self._active.add(key)
            self._publish()
            delay: float | None
            try:
                delay = await self._work(key)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconciling %s failed; trying again in %.0f s", key, ERROR_DELAY)
                delay = ERROR_DELAY
            finally:
                self._active.discard(key)
            if key in self._again:
                self.add(key, low=self._again.pop(key))
            elif delay is not None:
                self.add(key, after=delay)
            self._publish()
