"""The distributed layer: which launcher started us, the process group, and what the plan means
for ``TrainingArguments`` and model loading.

One trainer, configured by the plan (``TrainConfig.distributed``):

* single process (no launcher variables): no process group, unless DeepSpeed needs one;
* ``torchrun`` / PyTorchJob (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR/PORT``,
  ``PET_*``), the ``deepspeed`` launcher (adds ``LOCAL_SIZE``, ``CROSS_RANK``) and ``mpirun``
  (OpenMPI ``OMPI_COMM_WORLD_*``, MPICH/Intel ``PMI_*``; MPIJob) are read alike.

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
import socket
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tac2sol.trainer.config import TrainConfig
from tac2sol.trainer.deepspeed_config import write_deepspeed_config

from tac2sol.errors import InvalidInput

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEFAULT_MASTER_PORT = 29500
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
    device: str  # "cpu" or "cuda:N"
    launcher: str = "none"  # none | torchrun | deepspeed | mpi | env

    @property
    def num_nodes(self) -> int:
        return max(1, self.world_size // max(1, self.local_world_size))

    @property
    def distributed(self) -> bool:
        return self.backend is not None


@dataclass(frozen=True)
class LaunchInfo:
    """What the launcher's environment variables say (pure; see ``detect_launch``)."""

    launcher: str
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    node_rank: int


def _int(environ: Mapping[str, str], *names: str) -> int | None:
    for name in names:
        raw = environ.get(name)
        if raw is None or raw == "":
            continue
        try:
            return int(raw)
        except ValueError:
            raise InvalidInput(f"environment variable {name}={raw!r} is not an integer") from None
    return None


def detect_launch(environ: Mapping[str, str]) -> LaunchInfo:
    """Read rank, sizes and node from a launcher's environment variables.

    torchrun sets RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_WORLD_SIZE/GROUP_RANK; the deepspeed launcher
    RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_SIZE/CROSS_RANK; a PyTorchJob pod run without torchrun only
    RANK/WORLD_SIZE (one process per pod, PET_NPROC_PER_NODE 1); mpirun OMPI_COMM_WORLD_* or PMI_*.
    """
    if "RANK" in environ and "WORLD_SIZE" in environ:
        rank = _int(environ, "RANK") or 0
        world = _int(environ, "WORLD_SIZE") or 1
        local_rank = _int(environ, "LOCAL_RANK")
        if "LOCAL_SIZE" in environ or "CROSS_RANK" in environ:
            launcher = "deepspeed"
        elif local_rank is not None:
            launcher = "torchrun"
        else:
            launcher = "env"
        if local_rank is None:
            nproc = _int(environ, "PET_NPROC_PER_NODE")
            if nproc is not None and nproc > 1:
                raise InvalidInput(
                    f"PET_NPROC_PER_NODE={nproc} but LOCAL_RANK is not set: start the trainer with "
                    "torchrun (the PyTorchJob command) so each GPU gets its own process"
                )
            local_rank, local_world = 0, 1
        else:
            local_world = _int(environ, "LOCAL_WORLD_SIZE", "LOCAL_SIZE", "PET_NPROC_PER_NODE") or world
        node_rank = _int(environ, "GROUP_RANK", "CROSS_RANK", "PET_NODE_RANK", "NODE_RANK")
        if node_rank is None:
            node_rank = rank // max(1, local_world)
    elif "OMPI_COMM_WORLD_SIZE" in environ or "PMI_SIZE" in environ:
        launcher = "mpi"
        rank = _int(environ, "OMPI_COMM_WORLD_RANK", "PMI_RANK") or 0
        world = _int(environ, "OMPI_COMM_WORLD_SIZE", "PMI_SIZE") or 1
        local_rank = _int(environ, "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID") or 0
        local_world = _int(environ, "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS") or world
        node_rank = _int(environ, "OMPI_COMM_WORLD_NODE_RANK")
        if node_rank is None:
            node_rank = rank // max(1, local_world)
    else:
        return LaunchInfo("none", 0, 0, 1, 1, 0)
    if not 0 <= rank < world:
        raise InvalidInput(f"rank {rank} is outside the world size {world} ({launcher} environment)")
    if not 0 <= local_rank < max(local_world, 1):
        raise InvalidInput(f"local rank {local_rank} is outside the local world size {local_world}")
    return LaunchInfo(launcher, rank, local_rank, world, local_world, node_rank)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _mpi_master_addr() -> str | None:
    """Rank 0's address broadcast over MPI (DeepSpeed's discovery), when mpi4py is installed."""
    if importlib.util.find_spec("mpi4py") is None:
        return None
    from mpi4py import MPI  # type: ignore[import-not-found,unused-ignore]

    comm = MPI.COMM_WORLD
    addr = socket.gethostbyname(socket.gethostname()) if comm.Get_rank() == 0 else None
    return str(comm.bcast(addr, root=0))


def export_launch_env(info: LaunchInfo, environ: MutableMapping[str, str]) -> None:
    """Make the torch ``env://`` variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*) complete.

    mpirun sets none of them; a single process that still needs a process group (DeepSpeed)
    gets a loopback rendezvous on a free port.
    """
    environ.setdefault("RANK", str(info.rank))
    environ.setdefault("WORLD_SIZE", str(info.world_size))
    environ.setdefault("LOCAL_RANK", str(info.local_rank))
    environ.setdefault("LOCAL_WORLD_SIZE", str(info.local_world_size))
    if "MASTER_ADDR" not in environ:
        if info.world_size == info.local_world_size:
            environ["MASTER_ADDR"] = "127.0.0.1"
        elif info.launcher == "mpi" and (addr := _mpi_master_addr()):
            environ["MASTER_ADDR"] = addr
        else:
            raise InvalidInput(
                f"MASTER_ADDR is not set for a multi-node {info.launcher} job of {info.world_size} "
                "ranks: set MASTER_ADDR to "
                "rank 0's host (MPIJob: install mpi4py for discovery)"
            )
    if "MASTER_PORT" not in environ:
        environ["MASTER_PORT"] = str(_free_port() if info.world_size == 1 else DEFAULT_MASTER_PORT)


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


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def init_distributed(cfg: TrainConfig) -> DistEnv:
    """Detect the launcher, pin the device and start the process group the plan needs.

    Call it first in ``train``: on a CPU it sets ``DS_ACCELERATOR=cpu`` before DeepSpeed is
    imported; under DeepSpeed it calls ``deepspeed.init_distributed`` (also for one process,
    which ZeRO needs) before ``TrainingArguments`` exist. Idempotent.
    """
    info = detect_launch(os.environ)
    strategy = cfg.distributed.strategy
    if info.world_size > 1 and strategy == "single":
        raise InvalidInput(
            f"distributed.strategy is 'single' but the {info.launcher} launcher started "
            f"{info.world_size} ranks: plan 'ddp' or 'deepspeed', or start one process"
        )
    on_gpu = _cuda_available()
    if not on_gpu:
        # Must precede the first `import deepspeed` anywhere in the process.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import torch

    device = f"cuda:{info.local_rank}" if on_gpu else "cpu"
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
            if importlib.util.find_spec("deepspeed") is None:
                raise InvalidInput(
                    "distributed.strategy is 'deepspeed' but the deepspeed package is not installed; "
                    "install tac2sol[trainer] or plan 'ddp'"
                )
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
    if env.world_size > 1 and dist.strategy == "single":
        raise InvalidInput(
            f"distributed.strategy is 'single' but {env.world_size} ranks were started: "
            "plan 'ddp' or 'deepspeed', or start one process"
        )
    if env.device == "cpu":
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
    if dist.strategy == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise InvalidInput(
            "distributed.strategy is 'deepspeed' but the deepspeed package is not installed; "
            "install tac2sol[trainer] or plan 'ddp'"
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
        "use_cpu": env.device == "cpu",
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
        path = write_deepspeed_config(cfg, run_dir, on_gpu=env.device != "cpu")
        kwargs["deepspeed"] = str(path)
    return kwargs


def _checkpointing_kwargs_name() -> str:
    """transformers 5 renamed gradient_checkpointing_kwargs (the old name still works, warning)."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return (
        "activation_checkpointing_kwargs"
        if "activation_checkpointing_kwargs" in names
        else ("gradient_checkpointing_kwargs")
    )


def _plan_dtype(cfg: TrainConfig, env: DistEnv) -> torch.dtype:
    import torch

    dist = cfg.distributed
    if dist.strategy == "deepspeed" and dist.zero_stage == 3 and dist.precision == "fp16":
        # QLoRA + ZeRO-3 under fp16 AMP keeps fp32 master weights: storage must match them.
        return torch.float32
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dist.precision]


def zero3(cfg: TrainConfig) -> bool:
    return cfg.distributed.strategy == "deepspeed" and cfg.distributed.zero_stage == 3


def model_load_kwargs(cfg: TrainConfig, env: DistEnv) -> dict[str, Any]:
    """``from_pretrained`` keywords: dtype, and device placement.

    DDP/single: ``device_map={"": device}``, so with a quantized model each rank loads its own
    copy onto its own device. ZeRO-3: no device_map (DeepSpeed partitions the model while it is
    built; it needs ``TrainingArguments`` to exist first).
    """
    kwargs: dict[str, Any] = {"dtype": _plan_dtype(cfg, env)}
    if not zero3(cfg):
        kwargs["device_map"] = {"": env.device}
    return kwargs


def bnb_config_kwargs(cfg: TrainConfig, env: DistEnv) -> dict[str, Any]:
    """``BitsAndBytesConfig`` keywords the plan decides: compute dtype and, under ZeRO-3, a
    quant storage dtype equal to the model dtype (DeepSpeed flattens all parameters into one
    dtype; uint8 storage would be cast and corrupted)."""
    import torch

    compute = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[
        cfg.distributed.precision
    ]
    kwargs: dict[str, Any] = {"bnb_4bit_compute_dtype": compute}
    if zero3(cfg):
        kwargs["bnb_4bit_quant_storage"] = _plan_dtype(cfg, env)
    return kwargs


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
            if env.device.startswith("cuda"):
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
            if env.device.startswith("cuda"):  # measured on the device; absent on a CPU
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


def finalize_distributed() -> None:
    """Tear the process group down at the end of ``train`` (quiet exit, no hang on NCCL)."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
