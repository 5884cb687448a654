"""Step time of DDP against DeepSpeed ZeRO-0/2/3 on 2 CPU ranks, same tiny QLoRA model.

The design doc claims torchrun DDP is 40-60 % faster than DeepSpeed for small LoRA models
(DeepSpeed's per-step engine overhead). This checks the claim in the form a CPU machine allows:
the real ``tac2sol train`` under ``torchrun --nproc_per_node 2`` (gloo, ``DS_ACCELERATOR=cpu``),
every mode in each round (interleaved, so load drift on a shared machine hits all of them), the
step time read from inside the run (the per-rank report, ``TAC2SOL_DEBUG_PARTITION=1``), the
first steps skipped as warm-up. Ratios are to DDP measured in the same invocation.

    PYTHONSAFEPATH=1 .venv/bin/python bench/distributed_step_time.py [--rounds 2] [--steps 30]

A CPU has no NCCL, no kernels worth overlapping and gloo in place of GPU collectives: the
numbers say what DeepSpeed's engine costs per step here, not on a GPU (bench/gpu/ does that).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from tac2sol.devtools import free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MODES: dict[str, dict[str, Any]] = {
    "ddp": {"strategy": "ddp"},
    "zero0": {"strategy": "deepspeed", "zero_stage": 0},
    "zero2": {"strategy": "deepspeed", "zero_stage": 2},
    "zero3": {"strategy": "deepspeed", "zero_stage": 3},
}
WARMUP_STEPS = 3


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def prepare(work: Path) -> tuple[Path, Path, Path]:
    """Tiny model, synthetic sample and DeepSpeed's CPU ops (each cached)."""
    from tac2sol.tour.sample import write_sample
    from tac2sol.tour.tiny import ensure_tiny_model

    model = ensure_tiny_model(work / "tiny-model")
    data = work / "sample.jsonl"
    if not data.exists():
        write_sample(data)
    ops = subprocess.run(
        ["bash", str(REPO / "hack" / "prebuild-deepspeed-ops.sh")],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    return model, data, Path(ops.stdout.strip().splitlines()[-1])


def run_mode(
    work: Path,
    name: str,
    model: Path,
    data: Path,
    env: dict[str, str],
    args: argparse.Namespace,
    round_no: int,
) -> dict[str, Any]:
    run_dir = work / f"{name}-{round_no}"
    config = {
        "run_name": f"bench-{name}",
        "output_dir": str(run_dir / "out"),
        "resume": "never",
        "quantization": args.quantization,
        "model": {"name_or_path": str(model)},
        "data": {"path": str(data), "validation_ratio": 0.0, "max_seq_length": args.seq, "max_rows": 200},
        "training": {
            "max_steps": args.steps,
            "per_device_batch_size": args.batch,
            "learning_rate": 1e-3,
            "lr_scheduler": "constant_with_warmup",
            "warmup_ratio": 0.0,
            "logging_steps": 5,
            "save_steps": 100_000,
        },
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "distributed": {"precision": "fp32", "expected_world_size": 2, **MODES[name]},
        "evaluation": {"enabled": False},
        "metrics": {"enabled": False},
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "train.yaml").write_text(yaml.safe_dump(config))
    cmd = [
        str(BIN / "torchrun"),
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        str(BIN / "tac2sol"),
        "train",
        "--config",
        str(run_dir / "train.yaml"),
    ]
    started = time.monotonic()
    with (run_dir / "job.log").open("w") as log:
        done = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, check=False, timeout=1200)
    if done.returncode != 0:
        tail = "\n".join((run_dir / "job.log").read_text(errors="replace").splitlines()[-30:])
        raise SystemExit(f"{name}: torchrun exited {done.returncode}\n{tail}")
    report = json.loads((run_dir / "out" / "rank-report" / "rank-0.json").read_text())
    run = json.loads((run_dir / "out" / "run.json").read_text())
    steps = report["step_seconds"][WARMUP_STEPS:]
    return {
        "median_step_s": statistics.median(steps),
        "tokens_per_s_rank0": run["results"].get("tokensPerSecondThisProcess"),
        "job_s": time.monotonic() - started,
        "optimizer_state_share": report["partition"]["optimizer_state_numel_local"]
        / (2 * report["partition"]["trainable_numel_full"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="Each mode runs once per round.")
    parser.add_argument("--steps", type=int, default=30, help="Optimizer steps per run.")
    parser.add_argument("--batch", type=int, default=2, help="Sequences per rank per step.")
    parser.add_argument("--seq", type=int, default=256, help="Max tokens per sequence.")
    parser.add_argument("--quantization", choices=["nf4", "none"], default="nf4")
    parser.add_argument("--work", type=Path, default=REPO / ".cache" / "bench-distributed")
    parser.add_argument("--modes", default=",".join(MODES), help="Comma-separated, ddp first.")
    args = parser.parse_args()
    modes = args.modes.split(",")
    if modes[0] != "ddp" or not set(modes) <= set(MODES):
        raise SystemExit(f"--modes must start with ddp and use {', '.join(MODES)}")

    args.work.mkdir(parents=True, exist_ok=True)
    model, data, ops = prepare(args.work)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAC2SOL_", "RANK", "MASTER_"))}
    env.update(
        PYTHONSAFEPATH="1",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        DS_ACCELERATOR="cpu",
        TORCH_EXTENSIONS_DIR=str(ops),
        TAC2SOL_DEBUG_PARTITION="1",
    )

    results: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        for round_no in range(args.rounds):
            for name in modes:
                say(f"round {round_no + 1}/{args.rounds}: {name} ({args.steps} steps, 2 ranks) ...")
                r = run_mode(Path(tmp), name, model, data, env, args, round_no)
                say(f"  median step {r['median_step_s'] * 1000:.1f} ms, job {r['job_s']:.0f} s")
                results[name].append(r)

    base = statistics.median(r["median_step_s"] for r in results["ddp"])
    print(
        f"\n2 CPU ranks (gloo), tiny Llama + LoRA r8, {args.quantization}, batch {args.batch}/rank, "
        f"seq <= {args.seq}, {args.steps} steps (first {WARMUP_STEPS} skipped), {args.rounds} round(s), "
        f"{os.cpu_count()} CPUs"
    )
    print(f"{'mode':<7} {'median step ms':>15} {'per round ms':>24} {'x DDP':>7} {'opt. state/rank':>16}")
    for name in modes:
        per_round = [r["median_step_s"] for r in results[name]]
        med = statistics.median(per_round)
        rounds = ", ".join(f"{1000 * v:.0f}" for v in per_round)
        share = results[name][0]["optimizer_state_share"]
        print(f"{name:<7} {1000 * med:>15.1f} {rounds:>24} {med / base:>7.2f} {share:>16.2f}")
    for name in modes[1:]:
        med = statistics.median(r["median_step_s"] for r in results[name])
        print(
            f"DDP vs {name}: DDP step time is {100 * (1 - base / med):.0f}% lower "
            f"({name} takes {100 * (med / base - 1):+.0f}% per step); the doc claims DDP 40-60% faster"
        )


if __name__ == "__main__":
    main()
