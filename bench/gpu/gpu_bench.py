"""One GPU: single process against DeepSpeed ZeRO-0/2/3 (one rank each) on the same QLoRA job.

Prepared for a CUDA machine (nothing to download: the model is a randomly initialised
Llama-architecture model of about 1.1B parameters built here, the data the project's synthetic
sample). Each mode runs the real ``tac2sol train`` with ``TAC2SOL_DEBUG_PARTITION=1``, whose
per-rank report carries the step times and the CUDA peak memory measured inside the run. Prints,
per mode: median step time and its ratio to the single process (DeepSpeed's engine overhead),
tokens/s, peak allocated/reserved memory, and the memory planner's estimate for the same layout
(``tac2sol.operator.planner.estimate``) with measured/estimate.

    bash bench/gpu/run.sh            # or: .venv/bin/python bench/gpu/gpu_bench.py [--steps 30]

Budget: about 6 minutes on an H100 (model build ~1 min, four runs ~1 min each); exit 2 without
a GPU. On one rank ZeRO partitions nothing: the numbers are the engine's cost, not its savings.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GIB = 1024**3
WARMUP_STEPS = 3
# ~1.1B parameters, TinyLlama's shape (random weights: speed and memory do not depend on them).
ARCH = {"hidden": 2048, "layers": 22, "intermediate": 5632, "heads": 32, "kv_heads": 4, "vocab": 32000}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MODES: dict[str, dict[str, Any]] = {
    "single": {"strategy": "single"},
    "zero0": {"strategy": "deepspeed", "zero_stage": 0},
    "zero2": {"strategy": "deepspeed", "zero_stage": 2},
    "zero3": {"strategy": "deepspeed", "zero_stage": 3},
}


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def gpu_key(name: str, memory: int, major: int) -> str:
    """The catalog key of this device (precision and the estimate's overheads come from it)."""
    n = name.lower()
    for needle, key in (
        ("h100", "h100-80"),
        ("h200", "h100-80"),
        ("a100", "a100-80" if memory > 50 * GIB else "a100-40"),
        ("rtx 8000", "rtx8000"),
        ("l40s", "l40s"),
        ("a10g", "a10g"),
        ("l4", "l4"),
        ("t4", "t4"),
        ("v100", "v100-32"),
    ):
        if needle in n:
            return key
    return "h100-80" if major >= 9 else "a100-80" if major >= 8 else "rtx8000"


def build_model(directory: Path) -> Path:
    """The ~1.1B random Llama in 16-bit safetensors, with the tiny model's tokenizer."""
    if (directory / "config.json").exists():
        return directory
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tac2sol.tour.tiny import ensure_tiny_model

    tiny = ensure_tiny_model(directory.parent / "tiny-model")
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    config = LlamaConfig(
        vocab_size=ARCH["vocab"],
        hidden_size=ARCH["hidden"],
        intermediate_size=ARCH["intermediate"],
        num_hidden_layers=ARCH["layers"],
        num_attention_heads=ARCH["heads"],
        num_key_value_heads=ARCH["kv_heads"],
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(dtype)
    tmp = directory.with_name(directory.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    del model
    torch.cuda.empty_cache()
    tmp.replace(directory)
    return directory


def planner_estimate(key: str, mode: str, batch: int, seq: int, r: int) -> int:
    from tac2sol.operator.catalog import GPUS, ModelFacts, lora_trainable_params
    from tac2sol.operator.planner import Layout, estimate

    facts = ModelFacts(
        family="llama",
        layers=ARCH["layers"],
        hidden=ARCH["hidden"],
        intermediate=ARCH["intermediate"],
        vocab=ARCH["vocab"],
        heads=ARCH["heads"],
        kv_heads=ARCH["kv_heads"],
        context=4096,
    )
    plan = MODES[mode]
    layout = Layout("single" if plan["strategy"] == "single" else "deepspeed", plan.get("zero_stage"))
    return estimate(
        facts,
        layout=layout,
        gpu=GPUS[key],
        world=1,
        gpus_per_node=1,
        batch=batch,
        seq=seq,
        trainable=lora_trainable_params(facts, LORA_TARGETS, r),
        quantized=True,
        checkpointing=True,
    ).per_gpu


def run_mode(
    work: Path,
    mode: str,
    model: Path,
    data: Path,
    precision: str,
    args: argparse.Namespace,
    env: dict[str, str],
) -> dict[str, Any]:
    run_dir = work / mode
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    config = {
        "run_name": f"gpu-bench-{mode}",
        "output_dir": str(run_dir / "out"),
        "resume": "never",
        "quantization": "nf4",
        "model": {"name_or_path": str(model), "target_modules": LORA_TARGETS},
        "data": {"path": str(data), "validation_ratio": 0.0, "max_seq_length": args.seq},
        "training": {
            "max_steps": args.steps,
            "per_device_batch_size": args.batch,
            "learning_rate": 1e-4,
            "lr_scheduler": "constant_with_warmup",
            "warmup_ratio": 0.0,
            "logging_steps": 10,
            "save_steps": 100_000,
        },
        "lora": {"r": args.r, "alpha": 2 * args.r, "dropout": 0.0},
        "distributed": {"precision": precision, "expected_world_size": 1, **MODES[mode]},
        "evaluation": {"enabled": False},
        "metrics": {"enabled": False},
    }
    (run_dir / "train.yaml").write_text(yaml.safe_dump(config))
    started = time.monotonic()
    with (run_dir / "job.log").open("w") as log:
        done = subprocess.run(
            [str(BIN / "tac2sol"), "train", "--config", str(run_dir / "train.yaml")],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
            timeout=300,
        )
    if done.returncode != 0:
        tail = "\n".join((run_dir / "job.log").read_text(errors="replace").splitlines()[-30:])
        raise SystemExit(f"{mode}: tac2sol train exited {done.returncode}\n{tail}")
    out = run_dir / "out"
    report = json.loads((out / "rank-report" / "rank-0.json").read_text())
    run = json.loads((out / "run.json").read_text())
    lengths = json.loads((out / "data" / "preflight.json").read_text()).get("tokenLengths") or {}
    return {
        "median_step_s": statistics.median(report["step_seconds"][WARMUP_STEPS:]),
        "tokens_per_s": run["results"].get("tokensPerSecondThisProcess"),
        "peak_allocated": report.get("cuda_peak_allocated_bytes"),
        "peak_reserved": report.get("cuda_peak_reserved_bytes"),
        "job_s": time.monotonic() - started,
        "longest_tokens": lengths.get("max"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4, help="Sequences per step.")
    parser.add_argument("--seq", type=int, default=1024, help="max_seq_length (the estimate assumes it).")
    parser.add_argument("--r", type=int, default=16, help="LoRA rank.")
    parser.add_argument("--work", type=Path, default=REPO / ".cache" / "gpu-bench")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        say("gpu_bench: no CUDA device here; run it on a GPU machine")
        sys.exit(2)
    from tac2sol.operator.catalog import GPUS
    from tac2sol.operator.resolve import precision_for

    props = torch.cuda.get_device_properties(0)
    key = gpu_key(props.name, props.total_memory, props.major)
    precision = precision_for(GPUS[key])
    say(
        f"gpu_bench: {props.name} (sm_{props.major}{props.minor}, {props.total_memory / GIB:.0f} GiB) "
        f"-> catalog {key}, {precision}"
    )

    args.work.mkdir(parents=True, exist_ok=True)
    mark = time.monotonic()
    model = build_model(args.work / "llama-1b-random")
    from tac2sol.tour.sample import write_sample

    data = args.work / "sample.jsonl"
    if not data.exists():
        write_sample(data)
    say(f"gpu_bench: model and data ready in {time.monotonic() - mark:.0f} s")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAC2SOL_", "RANK", "MASTER_"))}
    env.update(
        PYTHONSAFEPATH="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", TAC2SOL_DEBUG_PARTITION="1"
    )
    results = {}
    for mode in MODES:
        say(f"gpu_bench: {mode} ({args.steps} steps) ...")
        results[mode] = run_mode(args.work, mode, model, data, precision, args, env)
        r = results[mode]
        say(f"  median step {1000 * r['median_step_s']:.1f} ms, job {r['job_s']:.0f} s")

    base = results["single"]["median_step_s"]
    longest = results["single"]["longest_tokens"]
    print(
        f"\n{props.name}, 1 process, ~1.1B Llama (random) NF4 + LoRA r{args.r}, {precision}, "
        f"batch {args.batch}, max_seq_length {args.seq} (longest row {longest} tokens), {args.steps} steps"
    )
    print(
        f"{'mode':<7} {'step ms':>8} {'x single':>9} {'tokens/s':>9} {'peak alloc GiB':>15} "
        f"{'reserved GiB':>13} {'estimate GiB':>13} {'alloc/est':>10}"
    )
    for mode, r in results.items():
        est = planner_estimate(key, mode, args.batch, args.seq, args.r)
        alloc = r["peak_allocated"]
        print(
            f"{mode:<7} {1000 * r['median_step_s']:>8.1f} {r['median_step_s'] / base:>9.2f} "
            f"{r['tokens_per_s'] or 0:>9.0f} {alloc / GIB:>15.2f} {r['peak_reserved'] / GIB:>13.2f} "
            f"{est / GIB:>13.2f} {alloc / est:>10.2f}"
        )
    print(
        "The estimate assumes every sequence at max_seq_length; batches here are padded to their "
        "longest row only, so alloc/est < 1 is expected when rows are shorter."
    )


if __name__ == "__main__":
    main()
