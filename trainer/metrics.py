"""Prometheus metrics of one training process, fed by a transformers ``Trainer`` callback.

Each rank serves its own registry on ``cfg.metrics.host`` and ``cfg.metrics.port + local_rank``
(``metrics.enabled: false`` turns metrics off; ``metrics.port: 0`` binds a free ephemeral port
per rank, logged, for local experiments). Every trainer series carries ``run``, ``rank`` and
``device``; names live in ``tac2sol.observability.names``.

Nothing in the hot path blocks on I/O or on the device:

* the callback does float arithmetic and prometheus-client updates (a lock and an add each);
* tokens are counted apart: the rows' own (real) tokens in ``tac2sol_train_tokens_total`` and
  padding in ``tac2sol_train_padding_tokens_total``. tac2sol's trainer reports each micro-batch's
  counts, made on the CPU by its collator (``count_batch``): no ``.item()`` and no collective per
  micro-batch, unlike transformers' ``include_num_input_tokens_seen``. Under another Trainer a
  forward pre-hook counts instead, from the input shape and the attention mask (a mask on a GPU
  is then read once per micro-batch);
* GPU memory (torch allocator counters, cudaMemGetInfo, NVML) is read in the scrape thread by a
  custom collector (``gpu_probe``); only the per-step peak is read (and reset) at step end, from the
  allocator's counters, which does not synchronise the device.

On a CPU there is no GPU collector at all: GPU series are absent, never zero.

Usage (``train.py``)::

    cb = metrics_callback(cfg, env)         # starts the HTTP server; None when disabled
    trainer = Trainer(..., callbacks=[cb] if cb else [])
    trainer.train()
    record_eval(summary)                    # final evaluation numbers, same process
    linger(cfg)                             # keep serving for one last scrape, then exit
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

from tac2sol.errors import InvalidInput
from tac2sol.observability import names
from tac2sol.trainer.gpu_probe import GpuProbe, count_parameters, gpu_probe
from tac2sol.trainer.launch import detect_launch, process_device

if TYPE_CHECKING:
    from transformers import TrainerCallback

    from tac2sol.trainer.config import TrainConfig

log = logging.getLogger(__name__)

# Steps of QLoRA runs take 0.05 s (tiny models) to a minute (32B at seq 4096).
STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
SAVE_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
# Time constant of the exponential smoothing of tokens/s and samples/s.
SMOOTHING_SECONDS = 30.0


class DistEnvLike(Protocol):
    """What this module needs of ``tac2sol.trainer.distributed.DistEnv``."""

    @property
    def rank(self) -> int: ...
    @property
    def local_rank(self) -> int: ...
    @property
    def device(self) -> str: ...


@dataclass(frozen=True)
class _ProcessEnv:
    rank: int
    local_rank: int
    device: str


def _env_from_environment() -> _ProcessEnv:
    """Rank and device from launcher variables, for callers that have no ``DistEnv``."""
    info = detect_launch(os.environ)
    return _ProcessEnv(info.rank, info.local_rank, process_device(info.local_rank))


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "none"


class _LazyGauge:
    """A gauge child created on its first ``set``: a value never measured is absent, not 0."""

    def __init__(self, family: Gauge, labels: tuple[str, ...]) -> None:
        self._family = family
        self._labels = labels
        self._child: Any = None

    def set(self, value: float) -> None:
        if self._child is None:
            self._child = self._family.labels(*self._labels)
        self._child.set(value)


class TrainerMetrics:
    """The metric objects of one training process, bound to its ``run``/``rank``/``device``."""

    def __init__(self, run: str, rank: int, device: str, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.labels = (run, str(rank), device)
        label_names = names.TRAINER_LABELS

        def gauge(name: str, doc: str) -> _LazyGauge:
            return _LazyGauge(Gauge(name, doc, label_names, registry=r), self.labels)

        def counter(name: str, doc: str) -> Any:
            return Counter(names.base(name), doc, label_names, registry=r).labels(*self.labels)

        self.steps = counter(names.TRAIN_STEPS, "Optimizer steps done by this process.")
        self.samples = counter(names.TRAIN_SAMPLES, "Training samples (sequences) this rank processed.")
        self.tokens = counter(
            names.TRAIN_TOKENS,
            "Real training tokens this rank trained on (the rows' own tokens, padding excluded).",
        )
        self.padding_tokens = counter(
            names.TRAIN_PADDING_TOKENS,
            "Padding tokens this rank computed besides its real tokens (0 when rows are packed).",
        )
        self.step_duration = Histogram(
            names.TRAIN_STEP_DURATION,
            "Time from step begin to optimizer step end (all micro-batches of one step).",
            label_names,
            buckets=STEP_BUCKETS,
            registry=r,
        ).labels(*self.labels)
        self.tokens_per_second = gauge(
            names.TRAIN_TOKENS_PER_SECOND,
            f"Real tokens/s of this rank (padding excluded), smoothed over ~{SMOOTHING_SECONDS:.0f} s.",
        )
        self.samples_per_second = gauge(
            names.TRAIN_SAMPLES_PER_SECOND,
            f"Samples/s of this rank, smoothed over ~{SMOOTHING_SECONDS:.0f} s.",
        )
        self.loss = gauge(
            names.TRAIN_LOSS, "Training loss, mean over the last logging interval and all ranks."
        )
        self.learning_rate = gauge(names.TRAIN_LEARNING_RATE, "Learning rate at the last logged step.")
        self.grad_norm = gauge(
            names.TRAIN_GRAD_NORM, "Gradient norm (before clipping) at the last logged step."
        )
        self.epoch = gauge(names.TRAIN_EPOCH, "Epochs done, fractional.")
        self.global_step = gauge(
            names.TRAIN_GLOBAL_STEP, "Optimizer steps done in the run, resumed ones included."
        )
        self.max_steps = gauge(names.TRAIN_MAX_STEPS, "Optimizer steps the run will take in total.")
        self.progress = gauge(names.TRAIN_PROGRESS, "global_step / max_steps (0-1).")
        self.eta = gauge(
            names.TRAIN_ETA, "Estimated seconds to the last step, at this session's mean step interval."
        )
        self.start_time = gauge(names.TRAIN_START_TIME, "Unix time this process began training.")
        self.in_progress = gauge(names.TRAIN_IN_PROGRESS, "1 while the training loop runs, 0 after it ended.")
        self.save_duration = Histogram(
            names.TRAIN_CHECKPOINT_SAVE_DURATION,
            "Checkpoint save time (from the last step/log/eval event to the save callback).",
            label_names,
            buckets=SAVE_BUCKETS,
            registry=r,
        ).labels(*self.labels)
        self.eval_loss = gauge(names.EVAL_LOSS, "Loss on the held-out split at the last evaluation.")
        self._eval_result = Gauge(
            names.EVAL_RESULT,
            "Final evaluation results; one series per numeric entry of the summary (label metric).",
            (*label_names, "metric"),
            registry=r,
        )
        build = Gauge(
            names.BUILD_INFO,
            "Versions of this process; always 1.",
            ("component", "version", "python", "torch", "transformers", *label_names),
            registry=r,
        )
        python = ".".join(map(str, sys.version_info[:3]))
        build.labels(
            "trainer", _version("tac2sol"), python, _version("torch"), _version("transformers"), *self.labels
        ).set(1)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)

    def record_eval(self, summary: Mapping[str, Any]) -> list[str]:
        """Set ``tac2sol_eval_result{metric=...}`` for each numeric entry (nested keys joined by '.').

        Returns the metric keys set; other entries (text, lists) are logged and left out.
        """
        recorded: list[str] = []
        for key, value in _flatten(summary):
            if isinstance(value, bool | int | float):
                self._eval_result.labels(*self.labels, key).set(float(value))
                recorded.append(key)
            else:
                log.debug("eval summary entry %s is not a number; not exported as a metric", key)
        return recorded


def _flatten(summary: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in summary.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{full}.")
        else:
            yield full, value


class MetricsCallbackBase:
    """The callback's behaviour; ``metrics_callback`` mixes it with ``transformers.TrainerCallback``."""

    def __init__(self, metrics: TrainerMetrics, gpu: GpuProbe | None) -> None:
        self.metrics = metrics
        self.gpu = gpu
        self._hook: Any = None
        self.counted_by_trainer = False  # set by tac2sol's trainer, which calls count_batch
        self._pending_tokens = 0
        self._pending_padding = 0
        self._pending_samples = 0
        self._step_began: float | None = None
        self._last_step_end = 0.0
        self._last_event = 0.0
        self._train_began = 0.0
        self._first_step = 0
        self._tokens_per_second: float | None = None
        self._samples_per_second: float | None = None

    def count_batch(self, rows: int, real_tokens: int, computed_tokens: int) -> None:
        """One micro-batch: its rows, their own tokens and the tokens computed (padding included)."""
        self._pending_samples += rows
        self._pending_tokens += real_tokens
        self._pending_padding += computed_tokens - real_tokens

    # -- the forward pre-hook of other Trainers: input shape and attention mask ---------------
    def _count_inputs(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not module.training:
            return
        ids = kwargs.get("input_ids")
        if ids is None and args:
            ids = args[0]
        if ids is None:
            ids = kwargs.get("inputs_embeds")
            if ids is None:
                return
            computed = int(ids.shape[0]) * int(ids.shape[1])
        else:
            computed = int(ids.numel())
        mask = kwargs.get("attention_mask")
        real = int(mask.sum()) if mask is not None and mask.dim() == 2 else computed
        self.count_batch(int(ids.shape[0]), real, computed)

    # -- Trainer events -------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **_: Any) -> None:
        m = self.metrics
        now = time.perf_counter()
        self._train_began = self._last_step_end = self._last_event = now
        self._first_step = int(state.global_step)
        m.start_time.set(time.time())
        m.in_progress.set(1)
        m.max_steps.set(state.max_steps)
        m.global_step.set(state.global_step)
        if state.max_steps > 0:
            m.progress.set(state.global_step / state.max_steps)
        if model is not None and not self.counted_by_trainer:
            self._hook = model.register_forward_pre_hook(self._count_inputs, with_kwargs=True)
            if self.gpu is not None:
                self.gpu.parameters = count_parameters(model)

    def on_step_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self._step_began = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        now = time.perf_counter()
        m = self.metrics
        tokens, samples = self._pending_tokens, self._pending_samples
        m.padding_tokens.inc(self._pending_padding)
        self._pending_tokens = self._pending_samples = self._pending_padding = 0
        m.steps.inc()
        m.tokens.inc(tokens)
        m.samples.inc(samples)
        if self._step_began is not None:
            m.step_duration.observe(now - self._step_began)
            self._step_began = None
        interval = now - self._last_step_end
        self._last_step_end = self._last_event = now
        if interval > 0:
            weight = 1.0 - math.exp(-interval / SMOOTHING_SECONDS)
            self._tokens_per_second = _smooth(self._tokens_per_second, tokens / interval, weight)
            self._samples_per_second = _smooth(self._samples_per_second, samples / interval, weight)
            m.tokens_per_second.set(self._tokens_per_second)
            m.samples_per_second.set(self._samples_per_second)
        step, total = int(state.global_step), int(state.max_steps)
        m.global_step.set(step)
        m.epoch.set(state.epoch or 0.0)
        if total > 0:
            m.progress.set(min(1.0, step / total))
            done = step - self._first_step
            if done > 0:
                m.eta.set(max(0, total - step) * (now - self._train_began) / done)
        if self.gpu is not None:
            self.gpu.tokens_per_second = self._tokens_per_second or 0.0
            self.gpu.step_end()

    def on_log(
        self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None, **_: Any
    ) -> None:
        m = self.metrics
        for key, gauge in (("loss", m.loss), ("learning_rate", m.learning_rate), ("grad_norm", m.grad_norm)):
            value = (logs or {}).get(key)
            if isinstance(value, int | float):
                gauge.set(value)
        self._last_event = time.perf_counter()

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: Mapping[str, Any] | None = None, **_: Any
    ) -> None:
        value = (metrics or {}).get("eval_loss")
        if isinstance(value, int | float):
            self.metrics.eval_loss.set(value)
        self._last_event = time.perf_counter()

    def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        now = time.perf_counter()
        self.metrics.save_duration.observe(now - self._last_event)
        self._last_event = now

    def on_train_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self.metrics.in_progress.set(0)
        self.metrics.global_step.set(state.global_step)
        if self._hook is not None:
            self._hook.remove()
            self._hook = None


def _smooth(previous: float | None, value: float, weight: float) -> float:
    return value if previous is None else previous + weight * (value - previous)


@dataclass
class _Active:
    metrics: TrainerMetrics
    gpu: GpuProbe | None
    server: Any
    port: int


_ACTIVE: _Active | None = None


def active_metrics() -> TrainerMetrics | None:
    """The metrics ``metrics_callback`` set up in this process, if any."""
    return _ACTIVE.metrics if _ACTIVE else None


def metrics_port() -> int | None:
    """The port this process serves /metrics on (useful with ``metrics.port: 0``)."""
    return _ACTIVE.port if _ACTIVE else None


def metrics_callback(cfg: TrainConfig, env: DistEnvLike | None = None) -> TrainerCallback | None:
    """Start this rank's /metrics server and return the Trainer callback that feeds it.

    Returns None when ``cfg.metrics.enabled`` is false. Raises ``InvalidInput`` naming
    ``metrics.port`` when the port cannot be bound. Called again in the same process, it reuses
    the server and the metrics (one registry per process).
    """
    global _ACTIVE
    if not cfg.metrics.enabled:
        return None
    from transformers import TrainerCallback

    where = env if env is not None else _env_from_environment()
    if _ACTIVE is None:
        metrics = TrainerMetrics(cfg.run_name, where.rank, where.device)
        gpu = gpu_probe(metrics.labels, where.device, cfg.metrics.gpu_peak_flops)
        if gpu is not None:
            metrics.registry.register(gpu)
        port = cfg.metrics.port + where.local_rank if cfg.metrics.port else 0
        server = _serve(metrics.registry, cfg.metrics.host, port)
        _ACTIVE = _Active(metrics, gpu, server, int(server.server_port))
        log.info("serving metrics on %s:%d (rank %d)", cfg.metrics.host, _ACTIVE.port, where.rank)

    callback_class = type("TrainerMetricsCallback", (MetricsCallbackBase, TrainerCallback), {})
    callback: TrainerCallback = callback_class(_ACTIVE.metrics, _ACTIVE.gpu)
    return callback


def _serve(registry: CollectorRegistry, host: str, port: int) -> Any:
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise InvalidInput(
            f"metrics.port: cannot serve metrics on {host}:{port} ({exc.strerror}); choose another "
            "metrics.port (each rank uses port + local rank) or set metrics.enabled: false"
        ) from None
    return server


def record_eval(summary: Mapping[str, Any]) -> list[str]:
    """Export the final evaluation summary as ``tac2sol_eval_result{metric=...}``.

    Call it in the training process after evaluation; returns the metric keys exported (empty
    when metrics are off in this process).
    """
    if _ACTIVE is None:
        log.debug("metrics are not enabled in this process; eval summary not exported")
        return []
    return _ACTIVE.metrics.record_eval(summary)


def linger(cfg: TrainConfig) -> None:
    """Keep serving ``cfg.metrics.linger_seconds`` so a last scrape sees the final values."""
    seconds = cfg.metrics.linger_seconds
    if _ACTIVE is not None and seconds > 0:
        log.info("serving final metrics for %.0f s", seconds)
        time.sleep(seconds)


def stop_server() -> None:
    """Stop serving and forget this process's metrics (tests, benchmarks)."""
    global _ACTIVE
    if _ACTIVE is not None:
        _ACTIVE.server.shutdown()
        _ACTIVE.server.server_close()
        _ACTIVE = None
