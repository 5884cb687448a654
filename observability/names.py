"""Every metric name tac2sol exports, in one place (trainer, operator, dashboards, alert rules).

Prometheus naming: ``tac2sol_`` prefix, base units as suffix, ratios 0-1, counters end in
``_total`` (prometheus-client appends it; the constants below are the names as scraped).
Trainer series carry ``run``, ``rank`` and ``device``; operator series never carry a run name.
"""

from __future__ import annotations

BUILD_INFO = "tac2sol_build_info"

# Trainer labels: one run per trainer process, so every series carries the same three values.
TRAINER_LABELS = ("run", "rank", "device")

TRAIN_STEPS = "tac2sol_train_steps_total"
TRAIN_SAMPLES = "tac2sol_train_samples_total"
TRAIN_TOKENS = "tac2sol_train_tokens_total"  # real tokens: the rows' own, padding excluded
TRAIN_PADDING_TOKENS = "tac2sol_train_padding_tokens_total"  # computed besides the real ones
TRAIN_STEP_DURATION = "tac2sol_train_step_duration_seconds"
TRAIN_TOKENS_PER_SECOND = "tac2sol_train_tokens_per_second"
TRAIN_SAMPLES_PER_SECOND = "tac2sol_train_samples_per_second"
TRAIN_LOSS = "tac2sol_train_loss"
TRAIN_LEARNING_RATE = "tac2sol_train_learning_rate"
TRAIN_GRAD_NORM = "tac2sol_train_grad_norm"
TRAIN_EPOCH = "tac2sol_train_epoch"
TRAIN_GLOBAL_STEP = "tac2sol_train_global_step"
TRAIN_MAX_STEPS = "tac2sol_train_max_steps"
TRAIN_PROGRESS = "tac2sol_train_progress_ratio"
TRAIN_ETA = "tac2sol_train_eta_seconds"
TRAIN_START_TIME = "tac2sol_train_start_time_seconds"
TRAIN_IN_PROGRESS = "tac2sol_train_in_progress"
TRAIN_CHECKPOINT_SAVE_DURATION = "tac2sol_train_checkpoint_save_duration_seconds"
TRAIN_MFU = "tac2sol_train_mfu_ratio"
EVAL_LOSS = "tac2sol_eval_loss"
EVAL_RESULT = "tac2sol_eval_result"  # label ``metric``: one series per numeric entry of the summary

# GPU series: present only where CUDA (torch) or NVML answered; absent, never zero, on a CPU.
GPU_MEMORY_ALLOCATED = "tac2sol_gpu_memory_allocated_bytes"  # torch
GPU_MEMORY_RESERVED = "tac2sol_gpu_memory_reserved_bytes"  # torch
GPU_MEMORY_PEAK = "tac2sol_gpu_memory_peak_bytes"  # torch, peak allocated during the last step
GPU_MEMORY_USED = "tac2sol_gpu_memory_used_bytes"  # NVML (device-wide), else cudaMemGetInfo
GPU_MEMORY_TOTAL = "tac2sol_gpu_memory_total_bytes"  # NVML, else cudaMemGetInfo
GPU_UTILIZATION = "tac2sol_gpu_utilization_ratio"  # NVML
GPU_TEMPERATURE = "tac2sol_gpu_temperature_celsius"  # NVML
GPU_POWER = "tac2sol_gpu_power_watts"  # NVML

GPU_METRICS = (
    GPU_MEMORY_ALLOCATED,
    GPU_MEMORY_RESERVED,
    GPU_MEMORY_PEAK,
    GPU_MEMORY_USED,
    GPU_MEMORY_TOTAL,
    GPU_UTILIZATION,
    GPU_TEMPERATURE,
    GPU_POWER,
    TRAIN_MFU,
)

OPERATOR_RECONCILIATIONS = "tac2sol_operator_reconciliations_total"  # label ``result``
OPERATOR_RECONCILE_DURATION = "tac2sol_operator_reconcile_duration_seconds"
OPERATOR_TRAININGRUNS = "tac2sol_trainingruns"  # label ``phase``
OPERATOR_JOBS_CREATED = "tac2sol_operator_jobs_created_total"  # label ``kind``
OPERATOR_ERRORS = "tac2sol_operator_errors_total"  # label ``reason``
# Runs whose pods cannot start (PodsReady False), label ``reason``: Unschedulable, ImagePullBackOff ...
OPERATOR_TRAININGRUNS_STUCK = "tac2sol_trainingruns_stuck"
# The reconcile work queue: runs waiting, runs being reconciled (tac2sol.operator.workqueue).
OPERATOR_QUEUE_DEPTH = "tac2sol_operator_queue_depth"
OPERATOR_RECONCILES_IN_FLIGHT = "tac2sol_operator_reconciles_in_flight"
# Kubernetes API requests the operator's client sent, labels ``verb`` and ``resource`` (bounded sets).
OPERATOR_API_REQUESTS = "tac2sol_operator_api_requests_total"
# Trainer /metrics reads for status.progress, label ``result`` (ok, unanswered).
OPERATOR_PROGRESS_SCRAPES = "tac2sol_operator_progress_scrapes_total"

# Reconcile results (bounded): handler returned; kopf.TemporaryError (will retry);
# kopf.PermanentError (bad spec, run Failed); any other exception (a bug: kopf backs off).
RECONCILE_RESULTS = ("success", "retry", "failed", "error")


def base(name: str) -> str:
    """The name prometheus-client wants for a counter: without its ``_total`` suffix."""
    return name.removesuffix("_total")
