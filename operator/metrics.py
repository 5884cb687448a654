"""Operator metrics, and the one HTTP port that serves them next to the liveness endpoint.

What the kopf handlers call (no kopf or kubernetes import here; cheap to call anywhere)::

    serve(port, healthy=lambda: ...)           # startup: /metrics and /healthz on one port
    with reconcile_timer():                    # around a handler body: duration + result
        ...                                    #   success | retry (kopf.TemporaryError)
                                               #   failed (kopf.PermanentError) | error (other)
    set_run_phase(namespace, name, "Running")  # tac2sol_trainingruns{phase}
    set_run_stuck(namespace, name, "Unschedulable")  # tac2sol_trainingruns_stuck{reason}; None: not
    forget_run(namespace, name)                # on delete
    job_created("PyTorchJob")                  # tac2sol_operator_jobs_created_total{kind}
    set_queue(depth=3, in_flight=2)            # the reconcile queue (tac2sol.operator.workqueue)
    api_request("patch", "trainingruns/status")  # tac2sol_operator_api_requests_total{verb,resource}
    record_error("ApplyConflict")              # tac2sol_operator_errors_total{reason}
    parse_trainer_progress(text)               # the master pod's /metrics -> status.progress

Operator series never carry a run name (labels come from bounded sets); per-run numbers live in
the trainer's series. Names: ``tac2sol.observability.names``.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from importlib import metadata
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    make_wsgi_app,
)
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.parser import text_string_to_metric_families

from tac2sol.errors import InvalidInput
from tac2sol.observability import names

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

RECONCILIATIONS = Counter(
    names.base(names.OPERATOR_RECONCILIATIONS),
    "TrainingRun reconciliations by result: success, retry (waiting), failed (bad spec), error (a bug).",
    ["result"],
    registry=REGISTRY,
)
RECONCILE_DURATION = Histogram(
    names.OPERATOR_RECONCILE_DURATION,
    "Time one TrainingRun handler took, whatever its result.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
    registry=REGISTRY,
)
TRAININGRUNS = Gauge(
    names.OPERATOR_TRAININGRUNS, "TrainingRuns this operator watches, by phase.", ["phase"], registry=REGISTRY
)
TRAININGRUNS_STUCK = Gauge(
    names.OPERATOR_TRAININGRUNS_STUCK,
    "Unfinished TrainingRuns whose pods cannot start (PodsReady False), by the scheduler's or kubelet's "
    "reason (Unschedulable, ImagePullBackOff, CreateContainerConfigError, ...).",
    ["reason"],
    registry=REGISTRY,
)
JOBS_CREATED = Counter(
    names.base(names.OPERATOR_JOBS_CREATED),
    "Training jobs created, by kind (PyTorchJob, MPIJob).",
    ["kind"],
    registry=REGISTRY,
)
ERRORS = Counter(
    names.base(names.OPERATOR_ERRORS),
    "Errors met while reconciling, by reason (exception class or a short CamelCase reason).",
    ["reason"],
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    names.OPERATOR_QUEUE_DEPTH,
    "TrainingRuns waiting in the reconcile queue (not counting those being reconciled).",
    registry=REGISTRY,
)
RECONCILES_IN_FLIGHT = Gauge(
    names.OPERATOR_RECONCILES_IN_FLIGHT,
    "TrainingRuns being reconciled now (at most TAC2SOL_RECONCILE_WORKERS).",
    registry=REGISTRY,
)
API_REQUESTS = Counter(
    names.base(names.OPERATOR_API_REQUESTS),
    "Kubernetes API requests the operator sent, by verb and resource (a watch counts once per start).",
    ["verb", "resource"],
    registry=REGISTRY,
)
PROGRESS_SCRAPES = Counter(
    names.base(names.OPERATOR_PROGRESS_SCRAPES),
    "Reads of trainer pods' /metrics for status.progress, by result: ok, or unanswered (timeout, "
    "refused, not 200).",
    ["result"],
    registry=REGISTRY,
)
_BUILD_INFO = Gauge(
    names.BUILD_INFO,
    "Versions of this process; always 1.",
    ["component", "version", "python", "kopf"],
    registry=REGISTRY,
)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "none"


_BUILD_INFO.labels(
    "operator", _version("tac2sol"), ".".join(map(str, sys.version_info[:3])), _version("kopf")
).set(1)
# Every result exists from the start (at 0), so rates and the error alert have a series to read.
for _result in names.RECONCILE_RESULTS:
    RECONCILIATIONS.labels(_result)
for _result in ("ok", "unanswered"):
    PROGRESS_SCRAPES.labels(_result)


def observe_reconcile(result: str, seconds: float | None = None) -> None:
    """Count one reconciliation with ``result`` (one of ``names.RECONCILE_RESULTS``)."""
    if result not in names.RECONCILE_RESULTS:
        raise ValueError(f"reconcile result {result!r} is not one of {', '.join(names.RECONCILE_RESULTS)}")
    RECONCILIATIONS.labels(result).inc()
    if seconds is not None:
        RECONCILE_DURATION.observe(seconds)


def classify(exc: BaseException) -> str:
    """kopf.TemporaryError -> retry, kopf.PermanentError -> failed, anything else -> error."""
    kinds = {cls.__name__ for cls in type(exc).__mro__}
    if "TemporaryError" in kinds:
        return "retry"
    if "PermanentError" in kinds:
        return "failed"
    return "error"


@contextmanager
def reconcile_timer() -> Iterator[None]:
    """Time the block and count its result; failed and error results also count an error."""
    start = time.perf_counter()
    try:
        yield
    except BaseException as exc:
        result = classify(exc)
        observe_reconcile(result, time.perf_counter() - start)
        if result in ("failed", "error"):
            record_error(type(exc).__name__)
        raise
    observe_reconcile("success", time.perf_counter() - start)


def set_queue(depth: int, in_flight: int) -> None:
    """The reconcile queue's depth and the reconciles in flight (``tac2sol.operator.workqueue``)."""
    QUEUE_DEPTH.set(depth)
    RECONCILES_IN_FLIGHT.set(in_flight)


def api_request(verb: str, resource: str) -> None:
    """Count one API request; ``verb`` and ``resource`` come from the operator's own fixed set."""
    API_REQUESTS.labels(verb, resource).inc()


def progress_scrape(answered: bool) -> None:
    PROGRESS_SCRAPES.labels("ok" if answered else "unanswered").inc()


def job_created(kind: str) -> None:
    JOBS_CREATED.labels(kind).inc()


def record_error(reason: str) -> None:
    """Count an error; ``reason`` must come from a bounded set (an exception class, a CamelCase word)."""
    ERRORS.labels(reason).inc()


class PhaseTracker:
    """Counts TrainingRuns by phase (or another per-run label) from per-run updates (kopf sees one
    object at a time)."""

    def __init__(self, gauge: Gauge) -> None:
        self._gauge = gauge
        self._phases: dict[tuple[str, str], str] = {}
        self._known: set[str] = set()
        self._lock = threading.Lock()

    def declare(self, phases: Iterable[str]) -> None:
        """Export these phases at 0 before any run reaches them."""
        with self._lock:
            self._known.update(phases)
            self._publish()

    def set(self, namespace: str, name: str, phase: str | None) -> None:
        with self._lock:
            if phase is None:
                self._phases.pop((namespace, name), None)
            else:
                self._phases[(namespace, name)] = phase
                self._known.add(phase)
            self._publish()

    def _publish(self) -> None:
        counts = dict.fromkeys(self._known, 0)
        for phase in self._phases.values():
            counts[phase] += 1
        for phase, count in counts.items():
            self._gauge.labels(phase).set(count)


RUNS = PhaseTracker(TRAININGRUNS)
STUCK = PhaseTracker(TRAININGRUNS_STUCK)


def declare_phases(phases: Iterable[str]) -> None:
    RUNS.declare(phases)


def set_run_phase(namespace: str, name: str, phase: str | None) -> None:
    RUNS.set(namespace, name, phase)


def set_run_stuck(namespace: str, name: str, reason: str | None) -> None:
    """Why the run's pods cannot start (a reason from the scheduler or kubelet); None: they can."""
    STUCK.set(namespace, name, reason)


def forget_run(namespace: str, name: str) -> None:
    RUNS.set(namespace, name, None)
    STUCK.set(namespace, name, None)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes every few seconds: not logged
        pass


def _app(healthy: Callable[[], bool]) -> Callable[..., Iterable[bytes]]:
    metrics_app = make_wsgi_app(REGISTRY)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics_app(environ, start_response)
        if path == "/healthz":
            ok = healthy()
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"ok\n" if ok else b"unhealthy\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics or /healthz\n"]

    return app


def serve(
    port: int, host: str = "127.0.0.1", healthy: Callable[[], bool] | None = None
) -> ThreadingWSGIServer:
    """Serve ``/metrics`` and ``/healthz`` on ``host:port`` from a daemon thread.

    ``healthy`` decides the liveness answer (200 or 503); default: always healthy. Port 0 binds a
    free port (``server.server_port``). Stop with ``server.shutdown()``.
    """
    try:
        server = make_server(host, port, _app(healthy or (lambda: True)), ThreadingWSGIServer, _QuietHandler)
    except OSError as exc:
        raise InvalidInput(
            f"operator metrics port: cannot listen on {host}:{port} ({exc.strerror}); choose another port"
        ) from None
    threading.Thread(target=server.serve_forever, name="tac2sol-metrics", daemon=True).start()
    log.info("serving operator metrics and /healthz on %s:%d", host, server.server_port)
    return server


PROGRESS_METRICS = {
    "global_step": names.TRAIN_GLOBAL_STEP,
    "max_steps": names.TRAIN_MAX_STEPS,
    "progress_ratio": names.TRAIN_PROGRESS,
    "eta_seconds": names.TRAIN_ETA,
    "epoch": names.TRAIN_EPOCH,
    "loss": names.TRAIN_LOSS,
    "tokens_per_second": names.TRAIN_TOKENS_PER_SECOND,
}


def parse_trainer_progress(text: str, rank: str = "0") -> dict[str, float]:
    """Progress figures of one rank from a trainer's /metrics text (what ``status.progress`` shows).

    Only figures present in the text are returned: nothing is made up for a missing series.
    """
    wanted = {metric: key for key, metric in PROGRESS_METRICS.items()}
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = wanted.get(sample.name)
            if key is not None and sample.labels.get("rank") == rank:
                found[key] = float(sample.value)
    return found


# Trainer scrape wiring the renderer puts on each trainer pod: one named container port per local
# rank (the PodMonitor keeps ports named metrics-N), and annotations for annotation-based scraping.
TRAINER_PORT_PREFIX = "metrics-"


def trainer_metrics_ports(base_port: int, local_world_size: int) -> list[dict[str, Any]]:
    """Container ports ``metrics-0`` .. ``metrics-{n-1}`` on ``base_port + local rank``."""
    return [
        {"name": f"{TRAINER_PORT_PREFIX}{i}", "containerPort": base_port + i, "protocol": "TCP"}
        for i in range(local_world_size)
    ]


def trainer_scrape_annotations(base_port: int) -> dict[str, str]:
    """``prometheus.io/*`` annotations; they name one port, so they reach local rank 0 of each pod."""
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(base_port),
        "prometheus.io/path": "/metrics",
    }
