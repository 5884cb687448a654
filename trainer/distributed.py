"""The distributed layer: the process group, and what the plan means for ``TrainingArguments``
and model loading.

One trainer, configured by the plan (``TrainConfig.distributed``): a single process (no
launcher) starts no process group unless DeepSpeed needs one; under a launcher (see ``launch``)
every rank joins one.

Order that ``train.py`` follows (ZeRO-3 needs it)::

    env = init_distributed(cfg)            # before anything imports deepspeed (DS_ACCELERATOR)
    check_plan(cfg, env)                   # refuses what this machine cannot honour
    args = TrainingArguments(..., **training_arguments_kwargs(cfg, env, run_dir))
    model = AutoModelForCausalLM.from_pretrained(..., **model_load_kwargs(cfg, env),
        quantization_config=BitsAndBytesConfig(..., **bnb_config_kwargs(cfg, env)))
    ...
    finalize_distributed()

``TrainingArguments`` must exist before ``from_pretrained`` under ZeRO-3: it registers the
DeepSpeed config that makes transformers build the model partitioned (``zero3_init``).

torch and deepspeed are imported inside functions only.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tac2sol.errors import InvalidInput
from tac2sol.trainer.config import Precision, Strategy, TrainConfig
from tac2sol.trainer.deepspeed_config import write_deepspeed_config
from tac2sol.trainer.launch import LaunchInfo, detect_launch, export_launch_env, process_device

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

LOG_ALL_RANKS_ENV = "TAC2SOL_LOG_ALL_RANKS"


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job. ``backend`` is None when no process group is used."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    node_rank: int
    is_main: bool
    backend: str | None
    device: str  # "cpu" or "cuda:N" (launch.process_device)
    launcher: str = "none"  # none | torchrun | deepspeed | mpi | env

    @property
    def num_nodes(self) -> int:
        return max(1, self.world_size // max(1, self.local_world_size))

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def on_gpu(self) -> bool:
        """This process trains on a CUDA device (decided once, by ``launch.process_device``)."""
        return self.device.startswith("cuda")


def _check_launch(strategy: Strategy, world_size: int, launcher: str) -> None:
    """The plan's strategy against what the launcher started, and DeepSpeed's presence."""
    if world_size > 1 and strategy == "single":
        raise InvalidInput(
            f"distributed.strategy is 'single' but {world_size} ranks were started (the {launcher} "
            "launcher): plan 'ddp' or 'deepspeed', or start one process"
        )
    if strategy == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise InvalidInput(
            "distributed.strategy is 'deepspeed' but the deepspeed package is not installed; "
            "install tac2sol[trainer] or plan 'ddp'"
        )


def precision_dtype(precision: Precision) -> torch.dtype:
    """The torch dtype of a plan's precision (compute dtype, and the model dtype outside ZeRO-3)."""
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]


class _RankFilter(logging.Filter):
    """Adds ``rank`` to every record (JSON logs show it) and drops replica logs below ERROR."""

    def __init__(self, rank: int, quiet: bool) -> None:
        super().__init__()
        self.rank = rank
        self.quiet = quiet

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return not (self.quiet and record.levelno < logging.ERROR)


def _log_all_ranks() -> bool:
    return os.environ.get(LOG_ALL_RANKS_ENV, "0").lower() in ("1", "true", "yes")


def _install_rank_filter(rank: int, world_size: int) -> None:
    if world_size <= 1:
        return
    quiet = rank != 0 and not _log_all_ranks()
    for handler in logging.getLogger().handlers:
        handler.filters = [f for f in handler.filters if not isinstance(f, _RankFilter)]
        handler.addFilter(_RankFilter(rank, quiet))


SHM_OP = "deepspeed_shm_comm"


def _warn_unless_ops_prebuilt(info: LaunchInfo) -> None:
    """deepspeed.init_distributed loads a C++ op on a CPU: JIT-built inside a multi-rank job it
    takes minutes per rank and can abort the job at exit. hack/prebuild-deepspeed-ops.sh builds it
    once; TORCH_EXTENSIONS_DIR points the ranks at it."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if info.rank != 0 or (root and (Path(root) / SHM_OP / f"{SHM_OP}.so").is_file()):
        return
    log.warning(
        f"DeepSpeed's CPU op {SHM_OP} is not prebuilt under TORCH_EXTENSIONS_DIR={root or '(unset)'}: every "
        "rank will JIT-build it; run: export TORCH_EXTENSIONS_DIR=$(bash hack/prebuild-deepspeed-ops.sh)"
    )


def init_distributed(cfg: TrainConfig) -> DistEnv:
    """Detect the launcher, pin the device and start the process group the plan needs.

    Call it first in ``train``: on a CPU it sets ``DS_ACCELERATOR=cpu`` before DeepSpeed is
    imported; under DeepSpeed it calls ``deepspeed.init_distributed`` (also for one process,
    which ZeRO needs) before ``TrainingArguments`` exist. Idempotent.
    """
    info = detect_launch(os.environ)
    strategy = cfg.distributed.strategy
    _check_launch(strategy, info.world_size, info.launcher)
    device = process_device(info.local_rank)
    on_gpu = device != "cpu"
    if not on_gpu:
        # Must precede the first `import deepspeed` anywhere in the process.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import torch

    if on_gpu:
        if info.local_rank >= torch.cuda.device_count():
            raise InvalidInput(
                f"local rank {info.local_rank} has no GPU: this node shows {torch.cuda.device_count()} "
                "GPU(s); start one process per GPU (nproc_per_node = GPUs per node)"
            )
        torch.cuda.set_device(info.local_rank)
    backend = "nccl" if on_gpu else "gloo"

    needs_group = info.world_size > 1 or strategy == "deepspeed"
    if needs_group:
        export_launch_env(info, os.environ)
        if strategy == "deepspeed":
            if not on_gpu and info.world_size > 1:
                _warn_unless_ops_prebuilt(info)
            import deepspeed

            deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)
        elif not torch.distributed.is_initialized():
            torch.distributed.init_process_group(backend=backend)
    _install_rank_filter(info.rank, info.world_size)
    return DistEnv(
        rank=info.rank,
        local_rank=info.local_rank,
        world_size=info.world_size,
        local_world_size=info.local_world_size,
        node_rank=info.node_rank,
        is_main=info.rank == 0,
        backend=backend if needs_group else None,
        device=device,
        launcher=info.launcher,
    )


def _gpu_has_bf16(device: str) -> tuple[bool, str]:
    import torch

    index = int(device.split(":")[1])
    major, minor = torch.cuda.get_device_capability(index)
    name = torch.cuda.get_device_name(index)
    return major >= 8, f"{name}, sm_{major}{minor}"


def check_plan(cfg: TrainConfig, env: DistEnv) -> None:
    """Refuse a plan this process cannot honour, with one clear message; log the plan (rank 0)."""
    dist = cfg.distributed
    if dist.expected_world_size is not None and dist.expected_world_size != env.world_size:
        raise InvalidInput(
            f"distributed.expected_world_size is {dist.expected_world_size} but the {env.launcher} "
            f"launcher started {env.world_size} rank(s): launch nodes x GPUs per node = "
            f"{dist.expected_world_size} processes, or re-plan for {env.world_size}"
        )
    _check_launch(dist.strategy, env.world_size, env.launcher)  # init_distributed ran it already
    if not env.on_gpu:
        if dist.precision == "fp16":
            raise InvalidInput(
                "distributed.precision is 'fp16' but this process has no CUDA GPU: "
                "use 'fp32' on a CPU (fp16 mixed precision needs a GPU)"
            )
    elif dist.precision == "bf16":
        ok, what = _gpu_has_bf16(env.device)
        if not ok:
            raise InvalidInput(
                f"distributed.precision is 'bf16' but {env.device} ({what}) has no bf16 support: "
                "use 'fp16' (with dynamic loss scaling) on GPUs older than sm_80"
            )
    if dist.offload_params and dist.zero_stage != 3:
        raise InvalidInput(
            f"distributed.offload_params needs distributed.zero_stage 3 (got {dist.zero_stage})"
        )
    if env.is_main:
        log.info(
            "plan received",
            extra={
                "strategy": dist.strategy,
                "zero_stage": dist.zero_stage,
                "precision": dist.precision,
                "offload_optimizer": dist.offload_optimizer,
                "offload_params": dist.offload_params,
                "gradient_accumulation_steps": cfg.training.gradient_accumulation_steps,
                "per_device_batch_size": cfg.training.per_device_batch_size,
                "world_size": env.world_size,
                "nodes": env.num_nodes,
                "launcher": env.launcher,
                "device": env.device,
                "planned_gpu_type": dist.gpu_type,
                "planned_per_gpu_memory_bytes": dist.per_gpu_memory_bytes,
            },
        )


def training_arguments_kwargs(cfg: TrainConfig, env: DistEnv, run_dir: Path) -> dict[str, Any]:
    """The ``TrainingArguments`` keywords the plan decides (precision, DeepSpeed, DDP, logging).

    Under DeepSpeed this writes ``run_dir/ds_config.json``; its path is ``kwargs["deepspeed"]``
    (record it in ``run.json``).
    """
    dist = cfg.distributed
    kwargs: dict[str, Any] = {
        "fp16": dist.precision == "fp16",
        "bf16": dist.precision == "bf16",
        "per_device_train_batch_size": cfg.training.per_device_batch_size,
        "gradient_accumulation_steps": cfg.training.gradient_accumulation_steps,
        "use_cpu": not env.on_gpu,
        # Checkpoints from global rank 0 only (one shared output volume).
        "save_on_each_node": False,
        "log_on_each_node": False,
        "log_level": "passive",
        "log_level_replica": "passive" if _log_all_ranks() else "error",
    }
    if cfg.training.gradient_checkpointing:
        # Re-entrant checkpointing breaks DDP with LoRA (frozen inputs) and ZeRO-3 hooks.
        kwargs[_checkpointing_kwargs_name()] = {"use_reentrant": False}
    if env.world_size > 1 and dist.strategy == "ddp":
        kwargs["ddp_backend"] = env.backend
        # Every LoRA parameter gets a gradient each step: skip DDP's unused-parameter scan.
        kwargs["ddp_find_unused_parameters"] = False
    if dist.strategy == "deepspeed":
        path = write_deepspeed_config(cfg, run_dir, on_gpu=env.on_gpu)
        kwargs["deepspeed"] = str(path)
    return kwargs


def _checkpointing_kwargs_name() -> str:
    """transformers 5 renamed gradient_checkpointing_kwargs (the old name still works, warning)."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    new = "activation_checkpointing_kwargs"
    return new if new in names else "gradient_checkpointing_kwargs"


def _plan_dtype(cfg: TrainConfig) -> torch.dtype:
    import torch

    dist = cfg.distributed
    if dist.strategy == "deepspeed" and dist.zero_stage == 3 and dist.precision == "fp16":
        # QLoRA + ZeRO-3 under fp16 AMP keeps fp32 master weights: storage must match them.
        return torch.float32
    return precision_dtype(dist.precision)


def zero3(cfg: TrainConfig) -> bool:
    return cfg.distributed.strategy == "deepspeed" and cfg.distributed.zero_stage == 3


def model_load_kwargs(cfg: TrainConfig, env: DistEnv) -> dict[str, Any]:
    """``from_pretrained`` keywords: dtype, and device placement.

    DDP/single: ``device_map={"": device}``, so with a quantized model each rank loads its own
    copy onto its own device. ZeRO-3: no device_map (DeepSpeed partitions the model while it is
    built; it needs ``TrainingArguments`` to exist first).
    """
    kwargs: dict[str, Any] = {"dtype": _plan_dtype(cfg)}
    if not zero3(cfg):
        kwargs["device_map"] = {"": env.device}
    return kwargs


def bnb_config_kwargs(cfg: TrainConfig, env: DistEnv) -> dict[str, Any]:
    """``BitsAndBytesConfig`` keywords the plan decides: compute dtype and, under ZeRO-3, a
    quant storage dtype equal to the model dtype (DeepSpeed flattens all parameters into one
    dtype; uint8 storage would be cast and corrupted)."""
    kwargs: dict[str, Any] = {"bnb_4bit_compute_dtype": precision_dtype(cfg.distributed.precision)}
    if zero3(cfg):
        kwargs["bnb_4bit_quant_storage"] = _plan_dtype(cfg)
    return kwargs


def finalize_distributed() -> None:
    """Tear the process group down at the end of ``train`` (quiet exit, no hang on NCCL)."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
