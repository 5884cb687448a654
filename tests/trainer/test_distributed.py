"""The distributed layer without ranks: launcher detection (``launch``), plan checks, TrainingArguments.

Launcher detection is a pure function of the environment, so each launcher's variables are
given here exactly as torchrun, PyTorchJob, the deepspeed launcher and mpirun set them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tac2sol.errors import InvalidInput
from tac2sol.trainer import distributed as dist
from tac2sol.trainer import launch
from tac2sol.trainer.config import TrainConfig
from tac2sol.trainer.distributed import DistEnv
from tac2sol.trainer.launch import LaunchInfo, detect_launch, export_launch_env

LAUNCHERS = {
    "nothing": ({"HOME": "/root"}, LaunchInfo("none", 0, 0, 1, 1, 0)),
    # torchrun --nnodes 2 --nproc_per_node 4, second node, third process
    "torchrun": (
        {
            "RANK": "6",
            "WORLD_SIZE": "8",
            "LOCAL_RANK": "2",
            "LOCAL_WORLD_SIZE": "4",
            "GROUP_RANK": "1",
            "MASTER_ADDR": "job-master-0",
            "MASTER_PORT": "23456",
            "TORCHELASTIC_RUN_ID": "none",
        },
        LaunchInfo("torchrun", 6, 2, 8, 4, 1),
    ),
    # PyTorchJob worker pod that runs torchrun: torchrun overrides RANK/WORLD_SIZE for its child
    "pytorchjob-torchrun": (
        {
            "RANK": "5",
            "WORLD_SIZE": "8",
            "LOCAL_RANK": "1",
            "LOCAL_WORLD_SIZE": "4",
            "GROUP_RANK": "1",
            "PET_NPROC_PER_NODE": "4",
            "PET_NODE_RANK": "1",
            "PET_NNODES": "2",
            "MASTER_ADDR": "run-master-0",
            "MASTER_PORT": "23456",
        },
        LaunchInfo("torchrun", 5, 1, 8, 4, 1),
    ),
    # PyTorchJob, one process per pod, the trainer started directly (no torchrun)
    "pytorchjob-direct": (
        {
            "RANK": "2",
            "WORLD_SIZE": "3",
            "PET_NPROC_PER_NODE": "1",
            "PET_NODE_RANK": "2",
            "PET_NNODES": "3",
            "MASTER_ADDR": "run-master-0",
            "MASTER_PORT": "23456",
        },
        LaunchInfo("env", 2, 0, 3, 1, 2),
    ),
    # deepspeed --num_nodes 2 --num_gpus 2: launch.py sets LOCAL_SIZE and CROSS_RANK/CROSS_SIZE
    "deepspeed": (
        {
            "RANK": "3",
            "WORLD_SIZE": "4",
            "LOCAL_RANK": "1",
            "LOCAL_SIZE": "2",
            "CROSS_RANK": "1",
            "CROSS_SIZE": "2",
            "MASTER_ADDR": "10.0.0.1",
            "MASTER_PORT": "29500",
        },
        LaunchInfo("deepspeed", 3, 1, 4, 2, 1),
    ),
    # mpirun -np 4 -npernode 2 (OpenMPI, MPIJob)
    "openmpi": (
        {
            "OMPI_COMM_WORLD_RANK": "2",
            "OMPI_COMM_WORLD_SIZE": "4",
            "OMPI_COMM_WORLD_LOCAL_RANK": "0",
            "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
            "OMPI_COMM_WORLD_NODE_RANK": "1",
        },
        LaunchInfo("mpi", 2, 0, 4, 2, 1),
    ),
    # MPICH / Intel MPI (hydra)
    "mpich": (
        {"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2"},
        LaunchInfo("mpi", 1, 1, 2, 2, 0),
    ),
}


@pytest.mark.parametrize("name", list(LAUNCHERS))
def test_detect_launch(name: str) -> None:
    environ, expected = LAUNCHERS[name]
    assert detect_launch(environ) == expected


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        pytest.param(
            {"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "RANK='x' is not an integer", id="not-an-int"
        ),
        pytest.param({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "rank 2 is outside", id="rank-big"),
        pytest.param(
            {"RANK": "0", "WORLD_SIZE": "4", "PET_NPROC_PER_NODE": "4"},
            "start the trainer with torchrun",
            id="pytorchjob-nproc-without-torchrun",
        ),
    ],
)
def test_detect_launch_refuses(environ: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        detect_launch(environ)


def test_mpirun_env_becomes_torch_env() -> None:
    environ = dict(LAUNCHERS["openmpi"][0])
    environ["OMPI_COMM_WORLD_LOCAL_SIZE"] = "4"  # one node: loopback rendezvous
    info = detect_launch(environ)
    export_launch_env(info, environ)
    assert {k: environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")} == {
        "RANK": "2",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29500",
    }


def test_multinode_mpirun_without_master_addr_or_mpi4py_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch, "_mpi_master_addr", lambda: None)
    environ = dict(LAUNCHERS["openmpi"][0])
    with pytest.raises(InvalidInput, match="MASTER_ADDR is not set for a multi-node mpi job"):
        export_launch_env(detect_launch(environ), environ)


def _cfg(tmp_path: Path, **distributed: object) -> TrainConfig:
    return TrainConfig(
        model={"name_or_path": "tiny"},
        data={"path": tmp_path / "d.jsonl"},
        output_dir=tmp_path,
        distributed=distributed,
    )


def _env(world: int = 1, device: str = "cpu", rank: int = 0) -> DistEnv:
    return DistEnv(
        rank=rank,
        local_rank=rank % 4,
        world_size=world,
        local_world_size=min(world, 4),
        node_rank=rank // 4,
        is_main=rank == 0,
        backend="gloo" if world > 1 else None,
        device=device,
        launcher="torchrun" if world > 1 else "none",
    )


@pytest.mark.parametrize(
    ("plan", "env", "message"),
    [
        pytest.param({"precision": "fp16"}, _env(), "'fp16' but this process has no CUDA GPU", id="fp16-cpu"),
        pytest.param(
            {"strategy": "ddp", "expected_world_size": 4},
            _env(2),
            "expected_world_size is 4 but the torchrun launcher started 2",
            id="world-size",
        ),
        pytest.param({}, _env(2), "strategy is 'single' but 2 ranks", id="single-with-ranks"),
    ],
)
def test_check_plan_refuses(tmp_path: Path, plan: dict[str, object], env: DistEnv, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        dist.check_plan(_cfg(tmp_path, **plan), env)


@pytest.mark.parametrize(
    ("plan", "environ", "message"),
    [
        pytest.param(
            {},
            {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"},
            r"strategy is 'single' but 2 ranks were started \(the torchrun launcher\)",
            id="single-with-ranks",
        ),
        pytest.param(
            {"strategy": "deepspeed", "zero_stage": 2},
            {},
            "the deepspeed package is not installed",
            id="deepspeed-missing",
        ),
    ],
)
def test_init_and_check_plan_refuse_alike(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    plan: dict[str, object],
    environ: dict[str, str],
    message: str,
) -> None:
    """Each launch rule has one implementation: the early refusal (before a process group
    exists) and the plan check say the same."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else find_spec(name, *a)
    )
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    cfg = _cfg(tmp_path, **plan)
    with pytest.raises(InvalidInput, match=message):
        dist.init_distributed(cfg)
    info = detect_launch(environ)
    with pytest.raises(InvalidInput, match=message):
        dist.check_plan(cfg, _env(info.world_size))


def test_the_device_decides_a_gpu_run() -> None:
    import torch

    device = launch.process_device(0)
    assert device == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert _env(device=device).on_gpu is torch.cuda.is_available()
    assert _env(device="cuda:1").on_gpu and not _env(device="cpu").on_gpu


def test_bf16_on_turing_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No GPU on this machine: the device query is the one thing replaced (an RTX 8000's answer).
    monkeypatch.setattr(dist, "_gpu_has_bf16", lambda device: (False, "Quadro RTX 8000, sm_75"))
    with pytest.raises(InvalidInput, match=r"'bf16' but cuda:0 \(Quadro RTX 8000, sm_75\) has no bf16"):
        dist.check_plan(_cfg(tmp_path, precision="bf16", gpu_type="rtx8000"), _env(device="cuda:0"))


def test_check_plan_accepts_what_it_can_honour(tmp_path: Path) -> None:
    dist.check_plan(_cfg(tmp_path, strategy="deepspeed", zero_stage=3, expected_world_size=2), _env(2))
    dist.check_plan(_cfg(tmp_path), _env())


def test_training_arguments_for_ddp(tmp_path: Path) -> None:
    import dataclasses

    from transformers import TrainingArguments

    cfg = _cfg(tmp_path, strategy="ddp")
    kwargs = dist.training_arguments_kwargs(cfg, _env(2), tmp_path)
    assert kwargs["ddp_find_unused_parameters"] is False
    assert kwargs["ddp_backend"] == "gloo"
    assert kwargs["save_on_each_node"] is False
    assert kwargs["log_level_replica"] == "error"
    assert kwargs["gradient_accumulation_steps"] == cfg.training.gradient_accumulation_steps
    assert "deepspeed" not in kwargs
    # Every keyword is a TrainingArguments field of the installed transformers (the 2-rank
    # tests construct them for real inside a process group).
    assert set(kwargs) <= {f.name for f in dataclasses.fields(TrainingArguments)}


def test_training_arguments_single_process_are_accepted_by_transformers(tmp_path: Path) -> None:
    import warnings

    from transformers import TrainingArguments

    kwargs = dist.training_arguments_kwargs(_cfg(tmp_path), _env(), tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no deprecated argument names
        args = TrainingArguments(output_dir=str(tmp_path), report_to=[], **kwargs)
    assert (args.fp16, args.bf16, args.use_cpu, args.world_size) == (False, False, True, 1)


def test_training_arguments_under_deepspeed_write_the_config(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, strategy="deepspeed", zero_stage=2)
    kwargs = dist.training_arguments_kwargs(cfg, _env(2), tmp_path / "run")
    assert Path(kwargs["deepspeed"]) == tmp_path / "run" / "ds_config.json"
    assert Path(kwargs["deepspeed"]).is_file()


def test_log_all_ranks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAC2SOL_LOG_ALL_RANKS", "1")
    kwargs = dist.training_arguments_kwargs(_cfg(tmp_path, strategy="ddp"), _env(2, rank=1), tmp_path)
    assert kwargs["log_level_replica"] == "passive"


@pytest.mark.parametrize(
    ("plan", "device", "expected"),
    [
        pytest.param({}, "cpu", {"dtype": "float32", "device_map": {"": "cpu"}}, id="single-cpu"),
        pytest.param(
            {"strategy": "ddp", "precision": "fp16"},
            "cuda:1",
            {"dtype": "float16", "device_map": {"": "cuda:1"}},
            id="ddp-own-copy-per-rank",
        ),
        pytest.param(
            {"strategy": "deepspeed", "zero_stage": 2, "precision": "bf16"},
            "cuda:0",
            {"dtype": "bfloat16", "device_map": {"": "cuda:0"}},
            id="zero2",
        ),
        pytest.param(
            {"strategy": "deepspeed", "zero_stage": 3, "precision": "fp16"},
            "cuda:0",
            {"dtype": "float32"},
            id="zero3-no-device-map",
        ),
        pytest.param(
            {"strategy": "deepspeed", "zero_stage": 3, "precision": "bf16"},
            "cuda:0",
            {"dtype": "bfloat16"},
            id="zero3-bf16",
        ),
    ],
)
def test_model_load_kwargs(
    tmp_path: Path, plan: dict[str, object], device: str, expected: dict[str, object]
) -> None:
    kwargs = dist.model_load_kwargs(_cfg(tmp_path, **plan), _env(device=device))
    kwargs["dtype"] = str(kwargs["dtype"]).removeprefix("torch.")
    assert kwargs == expected


def test_quant_storage_matches_the_model_dtype_under_zero3(tmp_path: Path) -> None:
    for precision in ("fp16", "bf16", "fp32"):
        cfg = _cfg(tmp_path, strategy="deepspeed", zero_stage=3, precision=precision)
        env = _env(device="cuda:0")
        bnb = dist.bnb_config_kwargs(cfg, env)
        assert bnb["bnb_4bit_quant_storage"] == dist.model_load_kwargs(cfg, env)["dtype"]
    assert "bnb_4bit_quant_storage" not in dist.bnb_config_kwargs(_cfg(tmp_path, strategy="ddp"), _env())


def test_warns_when_deepspeed_cpu_ops_are_not_prebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    info = LaunchInfo("torchrun", 0, 0, 2, 2, 0)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    with caplog.at_level("WARNING", logger="tac2sol.trainer.distributed"):
        dist._warn_unless_ops_prebuilt(info)
    assert "hack/prebuild-deepspeed-ops.sh" in caplog.text
    caplog.clear()
    (tmp_path / dist.SHM_OP).mkdir()
    (tmp_path / dist.SHM_OP / f"{dist.SHM_OP}.so").write_bytes(b"")
    with caplog.at_level("WARNING", logger="tac2sol.trainer.distributed"):
        dist._warn_unless_ops_prebuilt(info)
    assert caplog.text == ""
