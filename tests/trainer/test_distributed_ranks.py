"""Two real ranks on the CPU: ``tac2sol train`` under torchrun, the deepspeed launcher and mpirun.

Each case trains the tiny model for 20 steps with gloo and ``DS_ACCELERATOR=cpu`` (DeepSpeed's
CPU ops prebuilt once by ``hack/prebuild-deepspeed-ops.sh``, so nothing JIT-builds in a job).
Evidence comes from inside the run: with ``TAC2SOL_DEBUG_PARTITION=1`` every rank writes
``rank-report/rank-<r>.json`` (losses it logged, what it holds after its first optimizer step,
a fingerprint of its trained weights) and rank 0 the trained model's logits on a fixed probe.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tac2sol.devtools import free_port

pytestmark = pytest.mark.dist

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STEPS = 20
RUN_TIMEOUT_S = 480
_LAUNCH_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "LOCAL_SIZE",
    "GROUP_RANK",
    "CROSS_RANK",
    "CROSS_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
)


@pytest.fixture(scope="session")
def ds_ops_dir() -> Path:
    """DeepSpeed's CPU ops, built once per machine and cached under ~/.cache/tac2sol."""
    done = subprocess.run(
        ["bash", str(REPO / "hack" / "prebuild-deepspeed-ops.sh")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"hack/prebuild-deepspeed-ops.sh failed:\n{done.stderr[-3000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def rank_env(ds_ops_dir: Path) -> dict[str, str]:
    """The environment of a 2-rank job: no launcher variables or TAC2SOL_* settings leak in."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _LAUNCH_VARS and not k.startswith(("TAC2SOL_", "OMPI_", "PMI_", "PET_"))
    }
    env.update(
        PYTHONSAFEPATH="1",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        DS_ACCELERATOR="cpu",
        TORCH_EXTENSIONS_DIR=str(ds_ops_dir),
        TAC2SOL_DEBUG_PARTITION="1",
        PYTHONFAULTHANDLER="1",  # a rank that gets SIGABRT (see run_job) prints its stack first
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    return env


def write_config(
    directory: Path,
    model_dir: Path,
    data: Path,
    *,
    distributed: dict[str, Any],
    quantization: str,
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """A small trainer config: 20 steps of batch 2 per rank, every step logged, no evaluation."""
    config = {
        "run_name": directory.name,
        "output_dir": str(directory / "out"),
        "quantization": quantization,
        "model": {"name_or_path": str(model_dir)},
        "data": {"path": str(data), "validation_ratio": 0.0, "max_seq_length": 256, "max_rows": 120},
        "training": {
            "max_steps": STEPS,
            "learning_rate": 2e-3,
            "lr_scheduler": "constant_with_warmup",
            "warmup_ratio": 0.0,
            "per_device_batch_size": 2,
            "logging_steps": 1,
            "save_steps": 1000,
            **(training or {}),
        },
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "distributed": {"precision": "fp32", "expected_world_size": 2, **distributed},
        "evaluation": {"enabled": False},
        "metrics": metrics or {"enabled": False},
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def launch_command(launcher: str, config: Path) -> list[str]:
    train = [str(BIN / "tac2sol"), "train", "--config", str(config)]
    if launcher == "torchrun":
        # Static rendezvous on 127.0.0.1 ("localhost" may resolve to ::1 while a store listens
        # on IPv4); no restarts: a failed rank fails the job, as in a PyTorchJob pod.
        return [
            str(BIN / "torchrun"),
            "--nnodes",
            "1",
            "--nproc_per_node",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(free_port()),
            "--max-restarts",
            "0",
            *train,
        ]
    if launcher == "deepspeed":
        # --no_local_rank: tac2sol reads LOCAL_RANK from the environment, not from argv.
        return [
            str(BIN / "deepspeed"),
            "--num_gpus",
            "2",
            "--master_port",
            str(free_port()),
            "--no_local_rank",
            *train,
        ]
    if launcher == "mpi":
        mpirun = shutil.which("mpirun")
        if mpirun is None:
            pytest.skip("mpirun is not installed (bash hack/install-tools.sh installs openmpi-bin)")
        return [
            mpirun,
            "--allow-run-as-root",
            "--oversubscribe",
            "--bind-to",
            "none",
            "-np",
            "2",
            "-x",
            f"MASTER_PORT={free_port()}",
            *train,
        ]
    raise AssertionError(launcher)


def start_job(launcher: str, config: Path, env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    """The launcher in its own session, so the job's whole process tree can be ended."""
    with log.open("a") as out:
        return subprocess.Popen(
            launch_command(launcher, config),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=config.parent,
            start_new_session=True,
        )


def end_job(job: subprocess.Popen[str]) -> None:
    """Kill what is left of the job's process tree; a job still running first gets its ranks
    SIGABRTed, so faulthandler prints where each one was."""
    import psutil

    if job.poll() is None:
        for child in psutil.Process(job.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "train" in child.cmdline():
                    child.send_signal(signal.SIGABRT)
        time.sleep(3)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(job.pid, signal.SIGKILL)  # the job's own session: nothing else is in it
    job.wait()


def run_job(launcher: str, config: Path, env: dict[str, str], log: Path) -> int:
    job = start_job(launcher, config, env, log)
    try:
        return job.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        end_job(job)
        pytest.fail(f"{launcher} job still running after {RUN_TIMEOUT_S} s; stacks:\n{_tail(log, 150)}")
    finally:
        end_job(job)


def run_job_scraping(
    launcher: str, config: Path, env: dict[str, str], log: Path, ports: tuple[int, ...]
) -> tuple[int, dict[int, str]]:
    """run_job, scraping each rank's /metrics every 0.5 s; returns the exit code and the last
    scrape of each port that carried the step counter."""
    import urllib.request

    from tac2sol.observability import names

    last: dict[int, str] = {}
    job = start_job(launcher, config, env, log)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        while job.poll() is None and time.monotonic() < deadline:
            for port in ports:
                with contextlib.suppress(OSError):
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                        text = response.read().decode()
                    if f"{names.TRAIN_STEPS}{{" in text:
                        last[port] = text
            time.sleep(0.5)
        if job.poll() is None:
            pytest.fail(f"{launcher} job still running after {RUN_TIMEOUT_S} s:\n{_tail(log, 150)}")
        return job.returncode, last
    finally:
        end_job(job)


def _series(text: str, metric: str) -> dict[str, float]:
    """rank -> value of ``metric`` in one Prometheus text scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == metric:
                found[sample.labels["rank"]] = sample.value
    return found


def _tail(log: Path, n: int = 60) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:])


def rank_reports(out: Path) -> list[dict[str, Any]]:
    return [json.loads((out / "rank-report" / f"rank-{r}.json").read_text()) for r in (0, 1)]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def check_training(reports: list[dict[str, Any]], steps: int = STEPS) -> None:
    """20+ steps, the loss falls, both ranks logged the same loss and hold the same weights."""
    losses = [r["losses"] for r in reports]
    assert losses[0] == losses[1], "the ranks logged different losses"
    logged_steps = [s for s, _ in losses[0]]
    assert logged_steps[-1] == steps and len(logged_steps) >= STEPS
    values = [v for _, v in losses[0]]
    assert _mean(values[-5:]) < _mean(values[:5]) - 0.1, f"the loss did not fall: {values}"
    a, b = (r["trainable_fingerprint"] for r in reports)
    assert a == pytest.approx(b, rel=1e-9), "the ranks ended with different LoRA weights"


def check_adapter_reload(cfg_path: Path, out: Path) -> None:
    """The saved adapter, loaded into a fresh base model here, gives the trained model's logits."""
    import torch

    from tac2sol.trainer.config import TrainConfig
    from tac2sol.trainer.distributed import DistEnv, bnb_config_kwargs
    from tac2sol.trainer.model import load_for_inference

    cfg = TrainConfig.from_file(cfg_path)
    here = DistEnv(
        rank=0,
        local_rank=0,
        world_size=1,
        local_world_size=1,
        node_rank=0,
        is_main=True,
        backend=None,
        device="cpu",
    )
    model = load_for_inference(
        cfg,
        out / "adapter",
        {"dtype": torch.float32, "device_map": {"": "cpu"}},
        bnb_config_kwargs(cfg, here),
    )
    probe = torch.load(out / "rank-report" / "probe-logits.pt")
    with torch.no_grad():
        logits = model(input_ids=probe["input_ids"]).logits.float()
    torch.testing.assert_close(logits, probe["logits"], atol=1e-4, rtol=1e-4)


CASES = {
    # name: (launcher, quantization, distributed plan, expected optimizer-state share, parameter share)
    "ddp-qlora": ("torchrun", "nf4", {"strategy": "ddp"}, 1.0, 1.0),
    "zero0": ("mpi", "none", {"strategy": "deepspeed", "zero_stage": 0}, 1.0, 1.0),
    "zero2": ("torchrun", "none", {"strategy": "deepspeed", "zero_stage": 2}, 0.5, 1.0),
    "zero3": ("deepspeed", "none", {"strategy": "deepspeed", "zero_stage": 3}, 0.5, 0.5),
    "zero3-qlora": ("torchrun", "nf4", {"strategy": "deepspeed", "zero_stage": 3}, 0.5, 0.5),
}


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_train(
    case: str, tmp_path: Path, tiny_model_dir: Path, sample_file: Path, rank_env: dict[str, str]
) -> None:
    launcher, quantization, plan, opt_share, param_share = CASES[case]
    # The DDP case also serves /metrics through `tac2sol train` itself: each rank on base port +
    # local rank, lingering a few seconds so the last scrape sees the final step.
    scrape = case == "ddp-qlora"
    base = free_port(2) if scrape else 0  # rank 1 serves on base + 1
    metrics = {"host": "127.0.0.1", "port": base, "linger_seconds": 4} if scrape else None
    cfg_path = write_config(
        tmp_path / case,
        tiny_model_dir,
        sample_file,
        distributed=plan,
        quantization=quantization,
        metrics=metrics,
    )
    log = tmp_path / f"{case}.log"
    started = time.monotonic()
    if scrape:
        rc, scrapes = run_job_scraping(launcher, cfg_path, rank_env, log, (base, base + 1))
    else:
        rc, scrapes = run_job(launcher, cfg_path, rank_env, log), {}
    assert rc == 0, f"{launcher} exited {rc}:\n{_tail(log)}"
    if scrape:
        from tac2sol.observability import names

        assert set(scrapes) == {base, base + 1}, f"only ports {sorted(scrapes)} served the step counter"
        assert _series(scrapes[base], names.TRAIN_STEPS) == {"0": STEPS}
        assert _series(scrapes[base + 1], names.TRAIN_STEPS) == {"1": STEPS}
        for text in scrapes.values():
            assert f'run="{case}"' in text and 'device="cpu"' in text
            assert "tac2sol_gpu_" not in text, "GPU series on a CPU run"
    print(f"{case}: {launcher} job took {time.monotonic() - started:.0f} s")
    out = cfg_path.parent / "out"

    run = json.loads((out / "run.json").read_text())
    assert run["environment"]["launcher"] == launcher
    assert run["environment"]["worldSize"] == 2
    if plan["strategy"] == "deepspeed":
        ds = json.loads(Path(run["deepspeedConfig"]).read_text())
        assert ds["zero_optimization"]["stage"] == plan["zero_stage"]
        assert Path(run["deepspeedConfig"]).parent == out
    else:
        assert run["deepspeedConfig"] is None

    reports = rank_reports(out)
    assert [r["launcher"] for r in reports] == [launcher, launcher]
    check_training(reports)
    # Logs come from rank 0 only: the run's summary is printed once, not once per rank.
    assert log.read_text(errors="replace").count("run manifest: ") == 1, _tail(log)

    # Partitioning: Adam keeps 2 values per trainable element; one rank alone would hold all.
    for r in reports:
        p = r["partition"]
        single_rank_state = 2 * p["trainable_numel_full"]
        assert p["optimizer_state_numel_local"] / single_rank_state == pytest.approx(opt_share, abs=0.05), p
        assert p["param_numel_local"] / p["param_numel_full"] == pytest.approx(param_share, abs=0.02), p
    if opt_share < 1:
        both = sum(r["partition"]["optimizer_state_numel_local"] for r in reports)
        assert both >= 2 * reports[0]["partition"]["trainable_numel_full"], "state is missing, not split"

    check_adapter_reload(cfg_path, out)


def _workers(job: subprocess.Popen[str]) -> dict[int, Any]:
    import psutil

    found = {}
    for child in psutil.Process(job.pid).children(recursive=True):
        try:
            rank = child.environ().get("RANK")
        except psutil.Error:
            continue
        if rank is not None and "train" in child.cmdline():
            found[int(rank)] = child
    return found


def test_zero2_resumes_after_a_rank_is_killed(
    tmp_path: Path, tiny_model_dir: Path, sample_file: Path, rank_env: dict[str, str]
) -> None:
    from tac2sol.trainer import checkpoints

    steps = 40
    cfg_path = write_config(
        tmp_path / "resume",
        tiny_model_dir,
        sample_file,
        quantization="none",
        distributed={"strategy": "deepspeed", "zero_stage": 2},
        training={"max_steps": steps, "save_steps": 10, "save_total_limit": 2},
    )
    out = cfg_path.parent / "out"
    log = tmp_path / "resume.log"
    job = start_job("torchrun", cfg_path, rank_env, log)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while checkpoints.latest_valid(out) is None:
            assert job.poll() is None, f"the job ended before its first checkpoint:\n{_tail(log)}"
            assert time.monotonic() < deadline, "no checkpoint within the time limit"
            time.sleep(0.2)
        workers = _workers(job)
        assert set(workers) == {0, 1}, workers
        workers[1].send_signal(signal.SIGKILL)
        job.wait(timeout=120)
    finally:
        end_job(job)
    assert job.returncode != 0, "torchrun did not report the killed rank"
    assert not (out / "run.json").exists(), "the job finished before the kill; nothing was resumed"
    resume_from = checkpoints.latest_valid(out)
    assert resume_from is not None
    resume_step = int(resume_from.name.split("-")[1])
    assert resume_step < steps

    rc = run_job("torchrun", cfg_path, rank_env, log)  # the restarted job: same command
    assert rc == 0, f"the restarted job failed:\n{_tail(log)}"
    run = json.loads((out / "run.json").read_text())
    assert run["resumedFrom"] == str(resume_from)
    reports = rank_reports(out)
    for r in reports:
        assert r["start_step"] == resume_step, "training did not restart at the checkpoint's step"
        assert r["end_step"] == steps
        assert r["losses"][0][0] == resume_step + 1
    assert reports[0]["losses"] == reports[1]["losses"]
