"""A real (tiny) transformers Trainer run with the metrics callback, one process per rank.

Started by the observability tests under ``torchrun --nproc_per_node 2`` (DDP over gloo on the
CPU) and by ``bench/metrics_overhead.py``. The model is a randomly initialised 2-layer Llama
built from a config (nothing downloaded); the data are random token ids. What is real is what
the tests check: the Trainer's events, the callback, prometheus-client and its HTTP server.

    tiny_trainer.py --run-name NAME --port BASE --steps N --out DIR [--linger S] [--done FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-name", default="obs-test")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--linger", type=float, default=0.0)
    parser.add_argument("--done", type=Path, help="file written (by each rank) once evaluation is recorded")
    a = parser.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    from tac2sol.trainer.config import TrainConfig
    from tac2sol.trainer.metrics import linger, metrics_callback, record_eval

    cfg = TrainConfig(
        run_name=a.run_name,
        output_dir=a.out,
        model={"name_or_path": "tiny-random-llama"},
        data={"path": "random-token-ids"},
        metrics={"host": "127.0.0.1", "port": a.port, "linger_seconds": a.linger},
    )
    callback = metrics_callback(cfg)  # rank and device from RANK / LOCAL_RANK
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=256,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(0, 256, (48,), generator=g) for _ in range(256)]
    train = [{"input_ids": r, "labels": r} for r in rows[:224]]
    held_out = [{"input_ids": r, "labels": r} for r in rows[224:]]
    args = TrainingArguments(
        output_dir=str(a.out),
        max_steps=a.steps,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        learning_rate=1e-3,
        logging_steps=5,
        eval_strategy="steps",
        eval_steps=max(1, a.steps // 3),
        save_steps=max(1, a.steps // 2),
        save_total_limit=1,
        report_to=[],
        use_cpu=True,
        ddp_backend="gloo",
        ddp_find_unused_parameters=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=held_out,
        callbacks=[callback] if callback else [],
    )
    trainer.train()
    summary = trainer.evaluate()
    record_eval({"loss": summary["eval_loss"], "exact_match": 0.0, "samples": len(held_out), "model": "tiny"})
    if a.done:
        rank = trainer.args.process_index
        a.done.with_name(f"{a.done.name}.{rank}").write_text(json.dumps(summary))
    linger(cfg)


if __name__ == "__main__":
    main()
