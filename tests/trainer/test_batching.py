"""Length-aware batching: the plan, the sampler, padding accounting, resume order, loss weights.

The Trainer cases run tac2sol's own Trainer class (``train.counting_trainer_class``) with its
collator on a tiny randomly initialised Llama: what is checked is the data order, the counts and
the gradients, not what the model learns.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tac2sol.trainer.batching import (
    COUNTS_KEY,
    BatchingPlan,
    LengthGroupedBatches,
    make_collator,
    prepare_model,
    resolve_batching,
)


@pytest.mark.parametrize(
    ("requested", "batch", "attention", "mode", "says"),
    [
        pytest.param("auto", 8, "sdpa", "grouped", "no variable-length kernel", id="auto-sdpa-groups"),
        pytest.param("auto", 1, "sdpa", "random", "no padding to save", id="auto-batch-1-random"),
        pytest.param("auto", 8, "flash_attention_2", "packed", "packs", id="auto-fa2-packs"),
        pytest.param("packed", 8, "sdpa", "grouped", "grouping instead", id="packed-on-sdpa-falls-back"),
        pytest.param("packed", 8, "eager", "grouped", "eager attention", id="packed-on-eager-falls-back"),
        pytest.param("packed", 4, "flash_attention_3", "packed", "packed", id="packed-fa3"),
        pytest.param("grouped", 8, "flash_attention_2", "grouped", "grouped", id="grouped-as-asked"),
        pytest.param("random", 8, "sdpa", "random", "random", id="random-as-asked"),
    ],
)
def test_resolve_batching(requested: Any, batch: int, attention: str, mode: str, says: str) -> None:
    plan = resolve_batching(requested, batch, attention)
    assert plan.mode == mode and plan.requested == requested
    assert says in plan.reason
    assert plan.describe().startswith("batching: ")


def _computed_share(lengths: list[int], order: list[int], batch: int) -> float:
    real = computed = 0
    for i in range(0, len(order), batch):
        rows = [lengths[j] for j in order[i : i + batch]]
        real += sum(rows)
        computed += max(rows) * len(rows)
    return real / computed


def _shared_lengths(dataset: Path) -> list[int]:
    rows = [json.loads(line) for line in dataset.read_text().splitlines() if line.strip()]
    return [(len(r["input"]) + len(r["output"])) // 3 for r in rows]  # about 3 characters a token


def test_grouping_on_the_real_lengths_keeps_every_row_once_and_cuts_padding(dataset_500: Path) -> None:
    import torch

    lengths = _shared_lengths(dataset_500)
    sampler = LengthGroupedBatches(lengths, batch_size=8, world_size=1, seed=7)
    first, again, second = sampler.order(0), sampler.order(0), sampler.order(1)
    assert sorted(first) == list(range(len(lengths))) and sorted(second) == sorted(first)
    assert first == again and first != second  # seeded by seed + epoch
    assert max(lengths[i] for i in first[:8]) == max(lengths)  # the longest batch comes first
    random = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
    grouped_share, random_share = _computed_share(lengths, first, 8), _computed_share(lengths, random, 8)
    assert grouped_share > 0.85 and random_share < 0.6, (grouped_share, random_share)
    # Grouped batches still come in a random order: not a long-to-short sweep.
    maxima = [max(lengths[j] for j in first[i : i + 8]) for i in range(8, len(first) - 8, 8)]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)


def test_expected_padding_from_lengths(dataset_500: Path) -> None:
    from tac2sol.trainer.batching import expected_padding

    lengths = _shared_lengths(dataset_500)
    grouped = expected_padding(lengths, 8, 1, "grouped", seed=7)
    random = expected_padding(lengths, 8, 1, "random", seed=7)
    assert grouped is not None and random is not None and grouped < 0.15 < 0.4 < random
    assert grouped == round(
        1 - _computed_share(lengths, LengthGroupedBatches(lengths, 8, 1, 7).order(0), 8), 4
    )
    assert expected_padding(lengths, 8, 1, "packed", seed=7) == 0.0
    assert expected_padding([], 8, 1, "grouped", seed=7) is None
    assert expected_padding([5, 5, 5, 5], 2, 1, "random", seed=0) == 0.0  # equal rows: nothing to pad


def test_a_short_last_batch_stays_last() -> None:
    lengths = list(range(1, 24))  # 23 rows, global batch 6: three full batches then 5 rows
    order = LengthGroupedBatches(lengths, batch_size=3, world_size=2, seed=1).order(0)
    assert sorted(order) == list(range(23))
    batches = [order[i : i + 6] for i in range(0, 23, 6)]
    assert [len(b) for b in batches] == [6, 6, 6, 5]


# -- tac2sol's Trainer on a tiny model -------------------------------------------------------------
VOCAB = 64


def _tiny_model() -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config)


class _Tokenizer:
    """What the padding collator asks of a tokenizer (it pads the labels itself)."""

    pad_token_id = 0
    padding_side = "right"

    def pad(self, features: list[dict[str, Any]], **kwargs: Any) -> Any:
        from transformers import BatchEncoding

        width = max(len(f["input_ids"]) for f in features)
        multiple = kwargs.get("pad_to_multiple_of")
        if multiple:
            width = -(-width // multiple) * multiple
        ids = [f["input_ids"] + [0] * (width - len(f["input_ids"])) for f in features]
        mask = [[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in features]
        return BatchEncoding({"input_ids": ids, "attention_mask": mask}, tensor_type="pt")


def _rows(n: int, seed: int = 3) -> Any:
    """Rows of 4-40 tokens; token 1 + (i % 60) first, so a row is known by its first token."""
    import datasets
    import torch

    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, 41, (n,), generator=g).tolist()
    ids = [
        [1 + i % 60, *torch.randint(1, VOCAB, (length - 1,), generator=g).tolist()]
        for i, length in enumerate(lengths)
    ]
    labels = [[-100] * (len(r) // 2) + r[len(r) // 2 :] for r in ids]
    return datasets.Dataset.from_dict({"input_ids": ids, "labels": labels})


def _trainer(out: Path, dataset: Any, plan: BatchingPlan, **args: Any) -> Any:
    from transformers import TrainingArguments

    from tac2sol.trainer.train import counting_trainer_class

    base = {
        "output_dir": str(out),
        "per_device_train_batch_size": 2,
        "learning_rate": 1e-3,
        "seed": 5,
        "data_seed": 5,
        "save_strategy": "steps",
        "save_steps": 5,
        "logging_steps": 5,
        "report_to": "none",
        "remove_unused_columns": False,
        "use_cpu": True,
        "disable_tqdm": True,
    }
    trainer_class = counting_trainer_class()

    class Recording(trainer_class):  # type: ignore[misc, valid-type]
        """Records the first token of every row of every micro-batch it trains on."""

        seen: list[list[int]]

        def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
            self.seen.append(inputs["input_ids"][:, 0].tolist())
            return super().training_step(model, inputs, num_items_in_batch)

    trainer = Recording(
        model=_tiny_model(),
        args=TrainingArguments(**{**base, **args}),
        train_dataset=dataset,
        data_collator=make_collator(plan, _Tokenizer(), pad_to_multiple_of=None),
        batching=plan,
    )
    trainer.seen = []
    return trainer


GROUPED = resolve_batching("grouped", 2, "sdpa")


@pytest.mark.parametrize("resume_at", [5, 10, 15], ids=["mid-epoch-1", "epoch-boundary", "mid-epoch-2"])
def test_a_resumed_run_trains_on_the_same_batches(tmp_path: Path, resume_at: int) -> None:
    import torch

    rows = _rows(20)  # batch 2: 10 steps an epoch; 25 steps cross two epoch boundaries
    full = _trainer(tmp_path / "full", rows, GROUPED, max_steps=25)
    full.train()
    assert len(full.seen) == 25
    torch.manual_seed(12345)  # a restarted process: the global RNG is wherever it is
    resumed = _trainer(tmp_path / "resumed", rows, GROUPED, max_steps=25)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / f"checkpoint-{resume_at}"))
    assert resumed.seen == full.seen[resume_at:]


def test_padding_is_counted_apart_from_real_tokens(tmp_path: Path) -> None:
    rows = _rows(12)
    lengths = [len(ids) for ids in rows["input_ids"]]
    trainer = _trainer(tmp_path / "out", rows, GROUPED, max_steps=6, save_strategy="no")
    trainer.train()  # one epoch: every row once
    order = LengthGroupedBatches(lengths, 2, 1, seed=5).order(0)
    firsts = [[rows["input_ids"][i][0] for i in order[k : k + 2]] for k in range(0, 12, 2)]
    assert trainer.seen == firsts  # the sampler in use is the one checked above
    expected_computed = sum(2 * max(lengths[i] for i in order[k : k + 2]) for k in range(0, 12, 2))
    tally = trainer.tally
    assert (tally.samples, tally.real, tally.computed) == (12, sum(lengths), expected_computed)
    assert tally.padding == expected_computed - sum(lengths) > 0
    assert tally.padding_ratio() == round(tally.padding / expected_computed, 4)


def test_metrics_count_real_and_padding_tokens_from_the_trainer(tmp_path: Path) -> None:
    import urllib.request

    from tac2sol.observability import names as n
    from tac2sol.trainer import metrics
    from tac2sol.trainer.config import TrainConfig

    cfg = TrainConfig(
        run_name="pad",
        output_dir=tmp_path,
        model={"name_or_path": "tiny"},
        data={"path": "rows.jsonl"},
        metrics={"host": "127.0.0.1", "port": 0},
    )
    callback = metrics.metrics_callback(cfg)
    try:
        trainer = _trainer(tmp_path / "out", _rows(12), GROUPED, max_steps=6, save_strategy="no")
        trainer.add_callback(callback)
        trainer._counters = [callback]
        callback.counted_by_trainer = True
        trainer.train()
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics.metrics_port()}/metrics") as resp:
            text = resp.read().decode()
    finally:
        metrics.stop_server()
    values = {
        line.split("{")[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("tac2sol_train_") and 'run="pad"' in line
    }
    assert values[n.TRAIN_TOKENS] == trainer.tally.real
    assert values[n.TRAIN_PADDING_TOKENS] == trainer.tally.padding > 0
    assert values[n.TRAIN_SAMPLES] == 12


def test_packed_rows_never_attend_to_each_other() -> None:
    """The flattening collator's position_ids keep each row's logits what they are alone."""
    import torch

    rows = _rows(3)
    features = [{"input_ids": rows["input_ids"][i], "labels": rows["labels"][i]} for i in range(3)]
    packed_plan = BatchingPlan("packed", "packed", "test")
    batch = make_collator(packed_plan, _Tokenizer(), None)(features)
    total = sum(len(f["input_ids"]) for f in features)
    assert batch[COUNTS_KEY] == (3, total, total)  # no padding at all
    starts = [0, len(features[0]["input_ids"]), len(features[0]["input_ids"]) + len(features[1]["input_ids"])]
    assert [int(batch["position_ids"][0, s]) for s in starts] == [0, 0, 0]
    assert all(int(batch["labels"][0, s]) == -100 for s in starts)  # no loss across a row boundary
    model = _tiny_model()
    prepare_model(packed_plan, model)  # what train() does for a packed run
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        alone = torch.cat([model(input_ids=torch.tensor([f["input_ids"]])).logits[0] for f in features])
    torch.testing.assert_close(packed, alone, rtol=1e-4, atol=1e-4)


def test_accumulated_micro_batches_weigh_each_token_alike(tmp_path: Path) -> None:
    """Gradient accumulation over micro-batches of 3 and 30 label tokens equals one token-mean loss."""
    import datasets
    import torch
    from transformers import TrainerCallback

    g = torch.Generator().manual_seed(0)
    short = torch.randint(1, VOCAB, (8,), generator=g).tolist()
    long = torch.randint(1, VOCAB, (40,), generator=g).tolist()
    rows = datasets.Dataset.from_dict(
        {"input_ids": [short, long], "labels": [[-100] * 4 + short[4:], [-100] * 9 + long[9:]]}
    )

    class Grads(TrainerCallback):
        def on_pre_optimizer_step(
            self, args: Any, state: Any, control: Any, model: Any = None, **_: Any
        ) -> None:
            self.grads = {
                k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None
            }

    grads = Grads()
    plan = resolve_batching("random", 1, "sdpa")
    trainer = _trainer(
        tmp_path / "out",
        rows,
        plan,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=2,
        max_steps=1,
        max_grad_norm=0.0,
        save_strategy="no",
        train_sampling_strategy="sequential",
    )
    trainer.add_callback(grads)
    trainer.train()

    def reference(per_token: bool) -> dict[str, torch.Tensor]:
        model = _tiny_model().train()
        losses, counts = [], []
        for ids, labels in zip(rows["input_ids"], rows["labels"], strict=True):
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
            target = torch.tensor(labels[1:])
            losses.append(
                torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum")
            )
            counts.append(int((target != -100).sum()))
        if per_token:
            loss = sum(losses) / sum(counts)
        else:  # each micro-batch's own mean, averaged: the short row's tokens would weigh 9x more
            loss = sum(part / n for part, n in zip(losses, counts, strict=True)) / 2
        loss.backward()
        return {k: p.grad for k, p in model.named_parameters() if p.grad is not None}

    right, wrong = reference(per_token=True), reference(per_token=False)
    key = "model.embed_tokens.weight"
    assert torch.allclose(grads.grads[key], right[key], atol=1e-6)
    assert not torch.allclose(right[key], wrong[key], atol=1e-4)  # the check can tell them apart
    for name, value in right.items():
        torch.testing.assert_close(grads.grads[name], value, rtol=1e-4, atol=1e-6)


# -- two real ranks ---------------------------------------------------------------------------------
RANK_SCRIPT = Path(__file__).with_name("ddp_batches.py")


def _median_wait(lengths: list[int], order: list[int]) -> float:
    """Median gap between the longest rows of the two per-device batches of each global batch of 8."""
    import statistics

    gaps = [
        abs(max(lengths[i] for i in order[k : k + 4]) - max(lengths[i] for i in order[k + 4 : k + 8]))
        for k in range(0, len(order) - 7, 8)
    ]
    return statistics.median(gaps)


@pytest.mark.dist
def test_two_ddp_ranks_each_get_their_own_share_of_grouped_batches(tmp_path: Path) -> None:
    from tac2sol.devtools import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAC2SOL_", "RANK", "WORLD_SIZE"))}
    env.update(PYTHONSAFEPATH="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(RANK_SCRIPT),
        str(tmp_path),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    lengths = ranks[0]["lengths"]
    sampler = LengthGroupedBatches(lengths, batch_size=4, world_size=2, seed=11)
    for epoch in (0, 1):
        batches = [r["epochs"][epoch] for r in ranks]
        mine, theirs = ([i for batch in b for i in batch] for b in batches)
        assert not set(mine) & set(theirs)  # no row on both ranks
        assert sorted(mine + theirs) == list(range(len(lengths)))  # every row once
        assert len(batches[0]) == len(batches[1])  # the same number of steps
        order = sampler.order(epoch)
        for step, (a, b) in enumerate(zip(*batches, strict=True)):
            assert a + b == order[step * 8 : step * 8 + 8]  # rank r: the r-th half of global batch `step`
        # Each step's two batches are of similar length (neighbours in a sorted mega-batch of 40 rows):
        # no rank waits long on the other's batch.
        wait = _median_wait(lengths, order)
        assert wait <= (max(lengths) - min(lengths)) / 8, wait
    assert all(r["mode"] == "grouped" and r["counts_ok"] for r in ranks)


# -- fused cross-entropy ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("requested", "on_gpu", "model_type", "enabled", "says"),
    [
        pytest.param(False, True, "qwen2", False, "false", id="off-by-default"),
        pytest.param(True, False, "qwen2", False, "absent on a CPU", id="cpu-says-so"),
        pytest.param(True, True, "qwen2", True, "qwen2", id="gpu-qwen2"),
        pytest.param(True, True, "llama", True, "llama", id="gpu-llama"),
    ],
)
def test_resolve_fused_loss(requested: bool, on_gpu: bool, model_type: str, enabled: bool, says: str) -> None:
    from tac2sol.trainer.fused_loss import resolve_fused_loss

    fused = resolve_fused_loss(requested, on_gpu, model_type)
    assert fused.enabled is enabled and says in fused.reason
    kwargs = fused.training_arguments()
    assert bool(kwargs) is enabled
    if enabled:  # the fused loss and nothing else
        assert kwargs["use_liger_kernel"] is True
        assert [k for k, on in kwargs["liger_kernel_config"].items() if on] == ["fused_linear_cross_entropy"]


def test_fused_loss_refuses_an_architecture_liger_lacks() -> None:
    from tac2sol.errors import InvalidInput
    from tac2sol.trainer.fused_loss import resolve_fused_loss

    with pytest.raises(InvalidInput, match=r"training\.fused_cross_entropy: .*starcoder2"):
        resolve_fused_loss(True, True, "starcoder2")


def test_a_cpu_run_says_the_fused_loss_is_absent(make_config: Any) -> None:
    from tac2sol.trainer.train import train

    said: list[str] = []
    cfg = make_config(training={"max_steps": 2, "fused_cross_entropy": True, "save_steps": 2})
    result = train(cfg, say=said.append)
    assert any(line.startswith("fused cross-entropy: off (absent on a CPU") for line in said), said
    assert any(
        line.startswith("batching: rows grouped by length") and "expected padding" in line for line in said
    )
    run = json.loads(result.run_json.read_text())["results"]
    assert run["fusedCrossEntropy"]["enabled"] is False
    assert run["batching"]["mode"] == "grouped"
    assert 0 < run["paddingRatio"] < 1 and run["paddingTokensThisProcess"] > 0
    assert any(line.startswith("throughput: ") and "padding" in line for line in said), said
