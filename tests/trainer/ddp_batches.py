"""One rank of the 2-rank grouping test (``test_batching.py``), started by torch.distributed.run.

Trains tac2sol's Trainer class (grouped batching, gloo, CPU) on a tiny random Llama for two epochs
and writes ``rank-<r>.json``: the row indices of each micro-batch it trained on, per epoch, and
whether each micro-batch's token counts matched its rows.

    python -m torch.distributed.run --nproc_per_node 2 ddp_batches.py OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

ROWS = 160
BATCH = 4  # per device; 2 ranks: 8 rows a step, 20 steps an epoch


def main() -> None:
    import datasets
    import torch
    from transformers import BatchEncoding, LlamaConfig, LlamaForCausalLM, TrainingArguments

    from tac2sol.trainer.batching import COUNTS_KEY, make_collator, resolve_batching
    from tac2sol.trainer.train import counting_trainer_class

    out = Path(sys.argv[1])
    rank = int(os.environ["RANK"])
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(4, 41, (ROWS,), generator=g).tolist()
    ids = [[1 + i, *torch.randint(1, 64, (n - 1,), generator=g).tolist()] for i, n in enumerate(lengths)]
    rows = datasets.Dataset.from_dict({"input_ids": ids, "labels": ids})

    class Tokenizer:
        pad_token_id = 0
        padding_side = "right"

        def pad(self, features: list[dict[str, Any]], **_: Any) -> Any:
            width = max(len(f["input_ids"]) for f in features)
            return BatchEncoding(
                {
                    "input_ids": [f["input_ids"] + [0] * (width - len(f["input_ids"])) for f in features],
                    "attention_mask": [
                        [1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in features
                    ],
                },
                tensor_type="pt",
            )

    seen: list[list[int]] = []
    counts_ok: list[bool] = []

    class Recording(counting_trainer_class()):  # type: ignore[misc]
        def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
            batch = [int(t) - 1 for t in inputs["input_ids"][:, 0]]
            seen.append(batch)
            n, real, computed = inputs[COUNTS_KEY]
            counts_ok.append(
                n == len(batch)
                and real == sum(lengths[i] for i in batch)
                and computed == len(batch) * max(lengths[i] for i in batch)
            )
            return super().training_step(model, inputs, num_items_in_batch)

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=ROWS + 1,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
        )
    )
    plan = resolve_batching("auto", BATCH, model.config._attn_implementation)
    args = TrainingArguments(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=BATCH,
        max_steps=2 * ROWS // (2 * BATCH),
        seed=11,
        data_seed=11,
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        use_cpu=True,
        ddp_backend="gloo",
        disable_tqdm=True,
    )
    trainer = Recording(
        model=model,
        args=args,
        train_dataset=rows,
        data_collator=make_collator(plan, Tokenizer(), None),
        batching=plan,
    )
    trainer.train()
    steps = ROWS // (2 * BATCH)
    report = {
        "mode": plan.mode,
        "lengths": lengths,
        "epochs": [seen[:steps], seen[steps:]],
        "counts_ok": all(counts_ok) and len(counts_ok) == 2 * steps,
    }
    (out / f"rank-{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
