"""Training progress for ``status.progress``: read the trainer pods' ``/metrics``.

Each trainer pod (label ``tac2sol.dev/metrics``) serves one registry per local rank on
``spec.metricsPort + local rank``. Rank 0 (in the PyTorchJob's Master, or the MPIJob's first
Worker) gives step, total, epoch, loss and ETA; throughput is summed over every rank. The parse
is ``tac2sol.operator.metrics.parse_trainer_progress``; names are ``tac2sol.observability.names``.
A figure missing from the text is left out of the status, never made up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tac2sol.observability import names
from tac2sol.operator import metrics
from tac2sol.operator.metrics import parse_trainer_progress
from tac2sol.operator.names import METRICS_LABEL

log = logging.getLogger(__name__)

# Where rank 0 runs, for each job kind this reads (the pods are found by backend.pod_selector).
RANK0_REPLICA = {"PyTorchJob": "Master", "MPIJob": "Worker 0", "TrainJob": "node 0"}

# tac2sol_eval_result{metric=...} (the trainer exports evaluate.export_summary) -> status.evaluation.
# A metric is [testSet.][base.]<score>, a score one of these or factF1.<kind>.
EVALUATION_FIELDS = {
    "semanticSimilarityMean": "semanticSimilarityMean",
    "editDistanceMean": "editDistanceMean",
    "exactMatchRate": "exactMatch",
    "similarityAbove08": "shareAbove08",
    "similarityAbove09": "shareAbove09",
    "signatureMatchRate": "signatureMatch",
    "syntaxValidRate": "syntaxValid",
    "samples": "samples",
}
COUNT_FIELDS = {"samples", "excludedRows"}
FACT_F1 = "factF1"


def _evaluation_field(metric: str) -> tuple[list[str], str] | None:
    """``testSet.base.factF1.guards`` -> (["testSet", "base", "factF1"], "guards"); None: not status."""
    parts = metric.split(".")
    where: list[str] = []
    if parts[0] == "testSet":
        where.append(parts.pop(0))
        if parts == ["excludedRows"]:
            return where, "excludedRows"
    if parts and parts[0] == "base":
        where.append(parts.pop(0))
    if len(parts) == 2 and parts[0] == FACT_F1:
        return [*where, FACT_F1], parts[1]
    if len(parts) == 1 and parts[0] in EVALUATION_FIELDS:
        return where, EVALUATION_FIELDS[parts[0]]
    return None


def progress_from_metrics(text: str, now: str) -> dict[str, Any]:
    """``status.progress`` (camelCase) from rank 0's metrics text; only the figures present."""
    found = parse_trainer_progress(text, rank="0")
    progress: dict[str, Any] = {}
    if "global_step" in found:
        progress["step"] = int(found["global_step"])
    if found.get("max_steps", 0) > 0:
        progress["totalSteps"] = int(found["max_steps"])
    if "progress_ratio" in found:
        progress["percent"] = max(0, min(100, int(found["progress_ratio"] * 100)))
    elif "step" in progress and "totalSteps" in progress:
        progress["percent"] = min(100, progress["step"] * 100 // progress["totalSteps"])
    for key, field in (("epoch", "epoch"), ("loss", "loss"), ("tokens_per_second", "tokensPerSecond")):
        if key in found:
            progress[field] = round(found[key], 6)
    if "eta_seconds" in found and found["eta_seconds"] >= 0:
        progress["etaSeconds"] = round(found["eta_seconds"], 1)
    if progress:
        progress["updatedAt"] = now
        progress["source"] = "metrics"
    return progress


def evaluation_from_metrics(text: str, rank: str = "0") -> dict[str, Any]:
    """``status.evaluation`` from ``tac2sol_eval_result{metric=...}``; empty before evaluation ran."""
    out: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name != names.EVAL_RESULT or sample.labels.get("rank", rank) != rank:
                continue
            found = _evaluation_field(sample.labels.get("metric", ""))
            if found is None:
                continue
            where, field = found
            target = out
            for key in where:
                target = target.setdefault(key, {})
            value = float(sample.value)
            target[field] = int(value) if field in COUNT_FIELDS else round(value, 6)
    return out


async def fetch_metrics(url: str, timeout: float) -> str | None:
    """The text at ``url``, or None when the pod does not answer (not started, gone, no network)."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(url) as response,
        ):
            if response.status != 200:
                log.debug("%s answered %d", url, response.status)
                return None
            return await response.text()
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        log.debug("cannot read %s: %s", url, exc)
        return None


class Scrapes:
    """Every trainer /metrics read of the operator: at most ``limit`` at once, each ``timeout``
    long. An address that did not answer is skipped for a while (10 s, doubling up to 10 min),
    so dead or unreachable pods do not take the reads that answering ones need."""

    BACKOFF = (10.0, 600.0)

    def __init__(self, limit: int, timeout: float) -> None:
        self.timeout = timeout
        self._limit = asyncio.Semaphore(limit)
        self._quiet: dict[str, tuple[float, float]] = {}  # url -> (last wait, skipped until)

    async def read(self, url: str) -> str | None:
        wait, until = self._quiet.get(url, (0.0, 0.0))
        if time.monotonic() < until:
            return None
        async with self._limit:
            text = await fetch_metrics(url, self.timeout)
        metrics.progress_scrape(text is not None)
        if text is not None:
            self._quiet.pop(url, None)
            return text
        wait = min(self.BACKOFF[1], max(self.BACKOFF[0], 2 * wait))
        now = time.monotonic()
        self._quiet[url] = (wait, now + wait)
        if len(self._quiet) > 10_000:  # pod addresses come and go: forget the long-expired ones
            self._quiet = {u: q for u, q in self._quiet.items() if q[1] > now - self.BACKOFF[1]}
        return None


def tokens_per_second(text: str) -> float | None:
    """Sum of ``tac2sol_train_tokens_per_second`` in one rank's text (None: not reported yet)."""
    values = [
        float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == names.TRAIN_TOKENS_PER_SECOND
    ]
    return sum(values) if values else None


def trainer_urls(pods: list[dict[str, Any]], base_port: int, ranks_per_pod: int) -> list[str]:
    """``/metrics`` of every local rank (port ``base + local rank``) of the Running trainer pods."""
    urls: list[str] = []
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        status = pod.get("status") or {}
        ip = status.get("podIP")
        if status.get("phase") != "Running" or not ip:
            continue
        host = f"[{ip}]" if ":" in ip else ip
        urls.extend(f"http://{host}:{base_port + i}/metrics" for i in range(ranks_per_pod))
    return urls


async def read_progress(
    run: dict[str, Any], job_pods: list[dict[str, Any]], *, scrapes: Scrapes, now: str
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(progress, evaluation) of a running run from its job's pods, or None when rank 0 does not
    answer yet. The reads go through ``scrapes`` (shared by all runs: bounded in number and time).

    Step, epoch, loss and ETA are rank 0's; tokens/s is the sum over all ranks, and only when
    every rank answered (a partial sum would understate it).
    """
    status = run.get("status") or {}
    ref, plan = status.get("jobRef") or {}, status.get("plan") or {}
    if ref.get("kind") not in RANK0_REPLICA or not ref.get("name"):
        return None
    pods = [p for p in job_pods if (p["metadata"].get("labels") or {}).get(METRICS_LABEL) == "true"]
    port = (run.get("spec") or {}).get("metricsPort", 9400)
    urls = trainer_urls(pods, port, int(plan.get("gpusPerNode", 1)))
    texts = await asyncio.gather(*(scrapes.read(url) for url in urls))
    answered = [t for t in texts if t is not None]
    rank0 = next((t for t in answered if parse_trainer_progress(t, rank="0")), None)
    if rank0 is None:
        return None
    progress = progress_from_metrics(rank0, now)
    rates = [tokens_per_second(t) for t in answered]
    if len(answered) == int(plan.get("worldSize", 1)) and all(r is not None for r in rates):
        progress["tokensPerSecond"] = round(sum(r for r in rates if r is not None), 3)
    else:
        progress.pop("tokensPerSecond", None)
    return progress, evaluation_from_metrics(rank0)
