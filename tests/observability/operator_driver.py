"""Serves the operator's metrics and exercises them the way the kopf handlers do, until killed.

Prints the port on the first line. Uses kopf's real exceptions, so the result classification
(retry / failed / error) is the one the operator will get.

    operator_driver.py [--port N] [--unhealthy]
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections.abc import Hashable

import kopf

from tac2sol.operator import metrics
from tac2sol.operator.workqueue import WorkQueue


def reconcile(outcome: str) -> None:
    try:
        with metrics.reconcile_timer():
            time.sleep(0.002)
            if outcome == "retry":
                raise kopf.TemporaryError("job not created yet", delay=5)
            if outcome == "failed":
                raise kopf.PermanentError("spec.model.name is not in the catalog")
            if outcome == "error":
                raise RuntimeError("a bug")
    except (kopf.TemporaryError, kopf.PermanentError, RuntimeError):
        pass


def work_queue() -> None:
    """The operator's real reconcile queue, fed faster than its 2 workers drain it."""

    async def work(key: Hashable) -> float | None:
        metrics.api_request("patch", "trainingruns/status")
        await asyncio.sleep(0.3)
        return None

    async def feed() -> None:
        queue = WorkQueue(work, workers=2)
        queue.start()
        i = 0
        while True:
            i += 1
            for j in range(3):
                queue.add(("ml", f"run-{(3 * i + j) % 40}"))
            await asyncio.sleep(0.2)

    asyncio.run(feed())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--unhealthy", action="store_true")
    a = parser.parse_args()
    server = metrics.serve(a.port, host="127.0.0.1", healthy=lambda: not a.unhealthy)
    print(server.server_port, flush=True)
    metrics.declare_phases(["Pending", "Planning", "Running", "Succeeded", "Failed", "Suspended"])
    threading.Thread(target=work_queue, daemon=True).start()
    i = 0
    while True:
        i += 1
        for outcome in ("success", "success", "retry", "failed", "error"):
            reconcile(outcome)
        metrics.set_run_phase("ml", f"run-{i % 7}", ("Pending", "Running", "Succeeded")[i % 3])
        if i % 5 == 0:
            metrics.forget_run("ml", f"run-{i % 7}")
        metrics.set_run_stuck("ml", f"run-{i % 7}", ("Unschedulable", None)[i % 2])
        metrics.job_created("PyTorchJob" if i % 2 else "MPIJob")
        metrics.record_error("ApplyConflict")
        metrics.api_request("create", "pytorchjobs")
        metrics.progress_scrape(answered=i % 3 != 0)
        time.sleep(0.2)


if __name__ == "__main__":
    main()
