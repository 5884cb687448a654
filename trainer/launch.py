"""Which launcher started this process, read from its environment variables, and the device it gets.

``torchrun`` / PyTorchJob (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR/PORT``,
``PET_*``), the ``deepspeed`` launcher (adds ``LOCAL_SIZE``, ``CROSS_RANK``) and ``mpirun``
(OpenMPI ``OMPI_COMM_WORLD_*``, MPICH/Intel ``PMI_*``; MPIJob) are read alike; no launcher
variables means one process. ``process_device`` is the one place that decides whether this
process trains on a GPU. torch is imported inside functions only.
"""

from __future__ import annotations

import importlib.util
import socket
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

from tac2sol.errors import InvalidInput

DEFAULT_MASTER_PORT = 29500


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


def process_device(local_rank: int) -> str:
    """``cuda:<local_rank>`` when torch sees a CUDA GPU, else ``cpu``: whether this is a GPU run."""
    import torch

    return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
