"""Per-rank diagnostics of a distributed run, on with ``TAC2SOL_DEBUG_PARTITION=1``.

What each rank holds after its first optimizer step (``partition_stats``: parameter and
optimizer-state elements, local against full), its losses and step times, a fingerprint of the
trained weights and a probe of the trained model's logits, written as
``<output>/rank-report/rank-<r>.json``. The multi-rank tests and the benchmarks read these
files; a normal run never creates them. torch and deepspeed are imported inside functions only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tac2sol.trainer.distributed import DistEnv

DEBUG_PARTITION_ENV = "TAC2SOL_DEBUG_PARTITION"
RANK_REPORT_DIR = "rank-report"


def _innermost_optimizer(optimizer: Any) -> Any:
    """The torch optimizer under accelerate's and DeepSpeed's wrappers (ZeRO's flat partitions)."""
    seen = set()
    while getattr(optimizer, "optimizer", None) is not None and id(optimizer) not in seen:
        seen.add(id(optimizer))
        optimizer = optimizer.optimizer
    return optimizer


def partition_stats(model: Any, optimizer: Any) -> dict[str, int]:
    """What this rank holds: parameter and optimizer-state elements, local against full.

    Under ZeRO-3 a parameter's local shard is ``ds_tensor`` (``ds_numel`` is its full size); under
    ZeRO-1/2 the optimizer steps flat fp32 partitions of the trainable parameters.
    """
    import torch

    stats = {
        "param_numel_local": 0,
        "param_numel_full": 0,
        "trainable_numel_full": 0,
        "trainable_numel_local": 0,
        "optimizer_state_numel_local": 0,
    }
    for p in model.parameters():
        full = int(getattr(p, "ds_numel", p.numel()))
        local = int(p.ds_tensor.numel()) if hasattr(p, "ds_tensor") else int(p.numel())
        stats["param_numel_full"] += full
        stats["param_numel_local"] += local
        if p.requires_grad:
            stats["trainable_numel_full"] += full
            stats["trainable_numel_local"] += local
    inner = _innermost_optimizer(optimizer)
    for state in getattr(inner, "state", {}).values():
        for value in state.values():
            if torch.is_tensor(value) and value.dim() > 0:
                stats["optimizer_state_numel_local"] += int(value.numel())
    return stats


def _trainable_fingerprint(model: Any) -> list[float]:
    """Sum and sum of squares of the trainable weights (gathered under ZeRO-3), in float64."""
    import contextlib

    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    gather: Any = contextlib.nullcontext()
    if any(hasattr(p, "ds_tensor") for p in params):
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    with gather, torch.no_grad():
        flat = torch.cat([p.detach().reshape(-1).double() for p in params])
        return [float(flat.sum()), float((flat * flat).sum())]


PROBE_TOKENS = 32


def rank_report_callback(env: DistEnv, run_dir: Path) -> Any:
    """With ``TAC2SOL_DEBUG_PARTITION=1``, a Trainer callback that writes
    ``run_dir/rank-report/rank-<r>.json`` per rank: the step training started from, the losses
    it logged, the wall time of each optimizer step, what it holds after its first optimizer step
    (``partition_stats``), a fingerprint of the trained weights and, on a GPU, peak memory;
    rank 0 also saves the trained model's logits on a fixed probe (``probe-logits.pt``), so an
    adapter reload can be compared. None otherwise.
    """
    if os.environ.get(DEBUG_PARTITION_ENV, "0") not in ("1", "true", "yes"):
        return None
    import json
    import time

    import torch
    from transformers import TrainerCallback

    out_dir = Path(run_dir) / RANK_REPORT_DIR

    class RankReport(TrainerCallback):
        def __init__(self) -> None:
            self.report: dict[str, Any] = {
                "rank": env.rank,
                "world_size": env.world_size,
                "launcher": env.launcher,
                "losses": [],
            }

        def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self.report["start_step"] = int(state.global_step)
            self.report["step_seconds"] = []
            if env.on_gpu:
                torch.cuda.reset_peak_memory_stats()

        def on_step_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self._step_started = time.perf_counter()

        def on_step_end(
            self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None, **_: Any
        ) -> None:
            self.report["step_seconds"].append(round(time.perf_counter() - self._step_started, 6))
            if "partition" not in self.report and model is not None:
                self.report["partition"] = partition_stats(model, optimizer)
                self.report["partition_step"] = int(state.global_step)

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **_: Any
        ) -> None:
            if logs and "loss" in logs:
                self.report["losses"].append([int(state.global_step), float(logs["loss"])])

        def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **_: Any) -> None:
            self.report["end_step"] = int(state.global_step)
            if env.on_gpu:  # measured on the device; absent on a CPU
                self.report["cuda_peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
                self.report["cuda_peak_reserved_bytes"] = int(torch.cuda.max_memory_reserved())
            if model is not None:
                self.report["trainable_fingerprint"] = _trainable_fingerprint(model)
                vocab = int(model.config.vocab_size)
                ids = (torch.arange(PROBE_TOKENS) * 7 + 5).remainder(vocab).unsqueeze(0)
                was_training = model.training
                model.eval()
                with torch.no_grad():  # every rank runs it: ZeRO-3 gathers weights collectively
                    logits = model(input_ids=ids.to(env.device)).logits.float().cpu()
                model.train(was_training)
                if env.is_main:
                    out_dir.mkdir(parents=True, exist_ok=True)
                    torch.save({"input_ids": ids, "logits": logits}, out_dir / "probe-logits.pt")
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / f"rank-{env.rank}.json").write_text(json.dumps(self.report, indent=1) + "\n")

    return RankReport()
