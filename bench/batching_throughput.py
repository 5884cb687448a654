"""Real tokens/s of tac2sol's default batching against a bare transformers Trainer's defaults.

Both sides train the tiny Llama (random weights, built here by ``tac2sol.tour.tiny``) with the same
QLoRA settings (NF4 + double quant, LoRA r 8 on all linear layers, no gradient checkpointing) on
the real rows of ``../shared/datasets/tac2sol-500.jsonl``: the same tokenized examples (rows over
``--max-length`` tokens left out, as ``data.truncation: drop`` does), the same train/eval split,
per-device batch, epochs, learning rate and seeds. tac2sol runs ``tac2sol.trainer.train.train`` as
it is configured by default (``training.batching: auto``: rows grouped by length on a CPU); the bare
side is what a user writes by hand: ``Trainer`` with its defaults (random sampler, dynamic padding
by ``DataCollatorForSeq2Seq``). Runs alternate (ours, bare, bare, ours, ...), each in its own
process on one torch thread. Real tokens/s = the rows' own tokens of the training steps / the
Trainer's ``train_runtime`` (both include the same end-of-epoch evaluation).

Printed: each run (real tokens/s, padding share, eval loss), the medians, the ratio (goal >= 1.5)
and the eval-loss difference (goal: within 2 %).

    .venv/bin/python bench/batching_throughput.py [--repeats 3] [--epochs 1] [--batch 8] [--max-length 1024]
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

REPO = Path(__file__).resolve().parents[1]
ROWS = REPO.parent / "shared" / "datasets" / "tac2sol-500.jsonl"
LR = 1e-3
SEED = 1
VALIDATION = 0.05


def _config(work: Path, a: argparse.Namespace, out: Path) -> Any:
    from tac2sol.trainer.config import TrainConfig

    return TrainConfig(
        run_name="bench",
        output_dir=out,
        resume="never",
        model={"name_or_path": str(work / "tiny-model")},
        data={
            "path": str(ROWS),
            "max_seq_length": a.max_length,
            "validation_ratio": VALIDATION,
            "split_seed": SEED,
            "cache_dir": str(work / "cache"),
        },
        training={
            "epochs": a.epochs,
            "learning_rate": LR,
            "per_device_batch_size": a.batch,
            "logging_steps": 10,
            "save_steps": 100_000,
            "gradient_checkpointing": False,
            "seed": SEED,
            "cpu_threads": 1,
        },
        lora={"r": 8, "alpha": 16, "dropout": 0.05},
        evaluation={"enabled": False},
        metrics={"enabled": False},
    )


def run_ours(work: Path, a: argparse.Namespace, out: Path) -> dict[str, Any]:
    from tac2sol.trainer.train import train

    result = train(_config(work, a, out), say=lambda _: None)
    r = json.loads(result.run_json.read_text())["results"]
    return {
        "tokens": r["trainTokensThisProcess"],
        "padding": r["paddingTokensThisProcess"],
        "seconds": r["trainRuntimeSeconds"],
        "eval_loss": r["evalLoss"],
        "batching": r["batching"]["mode"],
    }


def run_bare(work: Path, a: argparse.Namespace, out: Path) -> dict[str, Any]:
    """What a user would write by hand with transformers + peft, on the same examples and split."""
    from transformers import (
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from tac2sol.trainer.preflight import run_preflight
    from tac2sol.trainer.split import split_rows

    model = work / "tiny-model"
    tokenizer = AutoTokenizer.from_pretrained(model)
    pf = run_preflight(ROWS, tokenizer=tokenizer, max_seq_length=a.max_length, cache_dir=work / "cache")
    split = split_rows(pf.kept, VALIDATION, SEED)
    index = {line: i for i, line in enumerate(pf.encoded["line"])}

    def rows(part: list[Any]) -> Any:
        return pf.encoded.select([index[r.line] for r in part]).select_columns(["input_ids", "labels"])

    set_seed(SEED)
    peft_model = bare_qlora_model(model)

    class Measured(Trainer):
        """Counts real and computed tokens (harness measurement only, no feature)."""

        tokens: Any = 0
        computed: int = 0

        def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
            self.tokens = self.tokens + inputs["attention_mask"].sum()
            self.computed += int(inputs["input_ids"].numel())
            return super().training_step(model, inputs, num_items_in_batch)

    args = TrainingArguments(
        output_dir=str(out),
        num_train_epochs=a.epochs,
        per_device_train_batch_size=a.batch,
        per_device_eval_batch_size=a.batch,
        learning_rate=LR,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,
        max_grad_norm=1.0,
        seed=SEED,
        data_seed=SEED,
        logging_steps=10,
        eval_strategy="epoch",
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Measured(
        model=peft_model,
        args=args,
        train_dataset=rows(split.train),
        eval_dataset=rows(split.eval),
        data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100),
        processing_class=tokenizer,
    )
    result = trainer.train()
    evals = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e]
    tokens = int(trainer.tokens)
    return {
        "tokens": tokens,
        "padding": trainer.computed - tokens,
        "seconds": result.metrics["train_runtime"],
        "eval_loss": evals[-1],
        "batching": "random",
    }


def _child(mode: str, work: Path, a: argparse.Namespace, index: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", mode, "--work", str(work), "--index", str(index)]
    cmd += ["--epochs", str(a.epochs), "--batch", str(a.batch), "--max-length", str(a.max_length)]
    return run_child(cmd, mode)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=8, help="per-device batch size, both sides")
    parser.add_argument(
        "--max-length", type=int, default=1024, help="longer rows are left out (tiny model: 1024)"
    )
    parser.add_argument("--child", choices=["ours", "bare"])
    parser.add_argument("--work", type=Path)
    parser.add_argument("--index", type=int, default=0)
    a = parser.parse_args()

    if a.child:
        os.environ.setdefault("TAC2SOL_LOG_LEVEL", "ERROR")
        import torch

        torch.set_num_threads(1)
        run = run_ours if a.child == "ours" else run_bare
        print(json.dumps(run(a.work, a, a.work / f"{a.child}-{a.index}")))
        return

    if not ROWS.is_file():
        sys.exit(f"{ROWS}: the shared rows are missing (../shared beside the checkout)")
    from tac2sol.tour.tiny import TinySpec, ensure_tiny_model

    with tempfile.TemporaryDirectory(prefix="tac2sol-bench-") as tmp:
        work = Path(tmp)
        ensure_tiny_model(work / "tiny-model", TinySpec(pretrain_steps=0), use_cache=False)
        print(
            f"batching throughput: tiny Llama, QLoRA NF4, {ROWS.name} (rows <= {a.max_length} tokens), "
            f"per-device batch {a.batch}, {a.epochs:g} epoch(s), CPU x{os.cpu_count()} (1 torch thread each)"
        )
        runs: dict[str, list[dict[str, Any]]] = {"ours": [], "bare": []}
        started = time.monotonic()
        for i in range(a.repeats):
            for mode in ("ours", "bare") if i % 2 == 0 else ("bare", "ours"):
                r = _child(mode, work, a, i)
                r["rate"] = r["tokens"] / r["seconds"]
                r["padding_share"] = r["padding"] / (r["tokens"] + r["padding"])
                runs[mode].append(r)
                print(
                    f"  {mode:4s} run {i + 1} ({r['batching']}): {r['tokens']} real tokens in "
                    f"{r['seconds']:.1f} s = {r['rate']:.0f} tokens/s, padding "
                    f"{100 * r['padding_share']:.1f} %, eval loss {r['eval_loss']:.4f}"
                )
        med = {
            m: {k: statistics.median(r[k] for r in runs[m]) for k in ("rate", "padding_share", "eval_loss")}
            for m in runs
        }
        ours, bare = med["ours"], med["bare"]
        print(
            f"median real tokens/s: tac2sol {ours['rate']:.0f} "
            f"(padding {100 * ours['padding_share']:.1f} %), "
            f"bare transformers {bare['rate']:.0f} (padding {100 * bare['padding_share']:.1f} %)"
        )
        print(f"ratio tac2sol/bare: {ours['rate'] / bare['rate']:.2f} (goal >= 1.5)")
        diff = (ours["eval_loss"] - bare["eval_loss"]) / bare["eval_loss"]
        print(
            f"median eval loss: tac2sol {ours['eval_loss']:.4f}, bare {bare['eval_loss']:.4f}: "
            f"{100 * diff:+.2f} % (goal within 2 %); wall {time.monotonic() - started:.0f} s"
        )


if __name__ == "__main__":
    main()
