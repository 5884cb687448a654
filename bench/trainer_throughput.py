"""Trainer throughput: ``tac2sol``'s trainer against a bare transformers Trainer + peft script.

Both train the same tiny Llama (random weights, built here) with the same QLoRA settings (NF4 +
double quant, LoRA r 8 on all linear layers, no gradient checkpointing), the same tokenized
examples, batch size, steps and seed. Each run is its own process; the two alternate (ours, bare,
ours, bare, ...) so that drifting machine load hits both alike. Tokens/s = non-padding tokens of the
training steps / the Trainer's ``train_runtime`` (imports, data preparation and model
loading excluded for both). Both batch at random (``training.batching: random``), so the ratio is
the trainer's overhead alone; ``bench/batching_throughput.py`` measures what grouping gains.
Printed: each run, the medians, and ours/bare (the goal: >= 0.95).

    .venv/bin/python bench/trainer_throughput.py [--steps 30] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))  # children run with -P (PYTHONSAFEPATH)
from bare_qlora import bare_qlora_model
from child_run import run_child

BATCH = 4
SEQ = 512
LR = 1e-3


def _config(work: Path, model: Path, data: Path, steps: int, out: Path) -> Any:
    from tac2sol.trainer.config import TrainConfig

    return TrainConfig(
        run_name="bench",
        output_dir=out,
        resume="never",
        model={"name_or_path": str(model)},
        data={
            "path": str(data),
            "max_seq_length": SEQ,
            "validation_ratio": 0.0,
            "cache_dir": str(work / "cache"),
        },
        training={
            "max_steps": steps,
            "learning_rate": LR,
            "per_device_batch_size": BATCH,
            "logging_steps": 10,
            "save_steps": steps,
            "gradient_checkpointing": False,
            "seed": 1,
            "cpu_threads": 1,
            "batching": "random",  # batches as the bare side does: this compares overhead only
        },
        lora={"r": 8, "alpha": 16, "dropout": 0.05},
        evaluation={"enabled": False},
        metrics={"enabled": True, "port": 0},
    )


def run_ours(work: Path, model: Path, data: Path, steps: int, out: Path) -> dict[str, Any]:
    from tac2sol.trainer.train import train

    result = train(_config(work, model, data, steps, out), say=lambda _: None)
    r = json.loads(result.run_json.read_text())["results"]
    return {"tokens": r["trainTokensThisProcess"], "seconds": r["trainRuntimeSeconds"]}


def run_bare(work: Path, model: Path, data: Path, steps: int, out: Path) -> dict[str, Any]:
    """What a user would write by hand with transformers + peft, on the same examples."""
    from transformers import (
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from tac2sol.trainer.preflight import run_preflight

    tokenizer = AutoTokenizer.from_pretrained(model)
    encoded = run_preflight(data, tokenizer=tokenizer, max_seq_length=SEQ, cache_dir=work / "cache").encoded
    dataset = encoded.select_columns(["input_ids", "labels"])
    set_seed(1)
    peft_model = bare_qlora_model(model)
    collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, return_tensors="pt")

    class Measured(Trainer):
        """Counts tokens exactly as tac2sol does (harness measurement only, no feature)."""

        tokens: Any = 0

        def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
            self.tokens = self.tokens + inputs["attention_mask"].sum()
            return super().training_step(model, inputs, num_items_in_batch)

    args = TrainingArguments(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=BATCH,
        learning_rate=LR,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,
        max_grad_norm=1.0,
        seed=1,
        data_seed=1,
        logging_steps=10,
        save_strategy="steps",
        save_steps=steps,
        report_to="none",
        remove_unused_columns=False,
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Measured(
        model=peft_model, args=args, train_dataset=dataset, data_collator=collator, processing_class=tokenizer
    )
    result = trainer.train()
    return {"tokens": int(trainer.tokens), "seconds": result.metrics["train_runtime"]}


def _child(mode: str, work: Path, steps: int, index: int) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--work",
        str(work),
        "--steps",
        str(steps),
        "--index",
        str(index),
    ]
    return run_child(cmd, mode)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["ours", "bare"])
    parser.add_argument("--work", type=Path)
    parser.add_argument("--index", type=int, default=0)
    args = parser.parse_args()

    if args.child:
        os.environ.setdefault("TAC2SOL_LOG_LEVEL", "ERROR")
        import torch

        torch.set_num_threads(1)  # both sides alike (tac2sol's tour setting for tiny models)
        model, data = args.work / "tiny-model", args.work / "sample.jsonl"
        out = args.work / f"{args.child}-{args.index}"
        run = run_ours if args.child == "ours" else run_bare
        print(json.dumps(run(args.work, model, data, args.steps, out)))
        return

    from tac2sol.tour.sample import write_sample
    from tac2sol.tour.tiny import TinySpec, ensure_tiny_model

    with tempfile.TemporaryDirectory(prefix="tac2sol-bench-") as tmp:
        work = Path(tmp)
        ensure_tiny_model(work / "tiny-model", TinySpec(pretrain_steps=0), use_cache=False)
        write_sample(work / "sample.jsonl")
        print(
            f"trainer throughput: tiny Llama, QLoRA NF4, batch {BATCH}, {args.steps} steps, "
            f"CPU x{os.cpu_count()} (1 torch thread each)"
        )
        rates: dict[str, list[float]] = {"ours": [], "bare": []}
        started = time.monotonic()
        for i in range(args.repeats):
            for mode in ("ours", "bare") if i % 2 == 0 else ("bare", "ours"):
                r = _child(mode, work, args.steps, i)
                rate = r["tokens"] / r["seconds"]
                rates[mode].append(rate)
                print(
                    f"  {mode:4s} run {i + 1}: {r['tokens']} tokens in {r['seconds']:.1f} s "
                    f"= {rate:.0f} tokens/s"
                )
        ours, bare = statistics.median(rates["ours"]), statistics.median(rates["bare"])
        print(f"median tokens/s: tac2sol {ours:.0f}, bare transformers+peft {bare:.0f}")
        print(
            f"ratio tac2sol/bare: {ours / bare:.3f} (goal >= 0.95); wall {time.monotonic() - started:.0f} s"
        )


if __name__ == "__main__":
    main()
