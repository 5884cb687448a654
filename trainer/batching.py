"""How training rows become micro-batches: grouped by length, packed, or at random.

Rows of this task vary a lot in length; batches drawn at random and padded to their longest row
spend about half of their compute on padding at batch 8. Three modes (``training.batching``):

* ``grouped``: ``LengthGroupedBatches`` below. transformers' ``get_length_grouped_indices``
  (random permutation, mega-batches sorted by length, the longest batch first so that an OOM comes
  at once) cut into *global* batches (per-device batch x world size): under DDP and DeepSpeed
  accelerate's ``BatchSamplerShard`` hands rank r the r-th per-device batch of each global batch, so
  every rank gets its own share of similar length and no rank waits long on another's batch. The
  order of the global batches is shuffled again, so training does not sweep long-to-short in each
  mega-batch. Seeded by ``seed + epoch`` (accelerate's ``SeedableRandomSampler`` habit): every rank
  draws the same order without communication, and a resumed run draws the order it skips into.
* ``packed``: padding-free. ``DataCollatorWithFlattening`` concatenates the rows of a micro-batch
  into one sequence with ``position_ids`` restarting at each row; only a variable-length attention
  kernel (FlashAttention-2/3) keeps each row's attention within the row at the packed cost. SDPA
  or eager attention would need a dense block-diagonal mask over the whole packed length, so there
  the run says so and groups instead. Rows never attend to each other in either mode.
* ``random``: what a bare transformers ``Trainer`` does (random sampler, dynamic padding).

``auto`` (the default) packs where the attention kernel allows it, groups otherwise, and batches at
random when a micro-batch holds one row (nothing to pad).

The collator adds each micro-batch's rows, real and computed tokens, counted on the CPU, under
``COUNTS_KEY``; the trainer pops them before the model sees the batch (no device sync).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Batching = Literal["auto", "grouped", "packed", "random"]
Mode = Literal["grouped", "packed", "random"]
# Attention implementations that take packed rows through a variable-length kernel (cu_seqlens
# from position_ids), so a packed micro-batch costs what its rows cost.
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3")
# Key of the (rows, real tokens, computed tokens) the collator adds to each batch.
COUNTS_KEY = "tac2sol_token_counts"


@dataclass(frozen=True)
class BatchingPlan:
    """The batching mode a run uses, what was asked for and why they differ (if they do)."""

    mode: Mode
    requested: Batching
    reason: str

    def describe(self) -> str:
        what = {
            "grouped": "rows grouped by length",
            "packed": "rows packed without padding (position_ids, variable-length attention)",
            "random": "random batches padded to their longest row",
        }[self.mode]
        return f"batching: {what} ({self.reason})"

    def to_json(self) -> dict[str, str]:
        return {"mode": self.mode, "requested": self.requested, "reason": self.reason}


def resolve_batching(
    requested: Batching, per_device_batch_size: int, attn_implementation: str
) -> BatchingPlan:
    """Decide the mode from the config, the micro-batch size and the attention kernel in use."""
    varlen = attn_implementation in VARLEN_ATTENTION
    no_varlen = (
        f"{attn_implementation} attention has no variable-length kernel: packed rows would need a dense "
        "mask over the whole packed length (FlashAttention-2 needs sm_80+ and the flash-attn package)"
    )
    if requested == "random":
        return BatchingPlan("random", requested, "training.batching: random")
    if requested == "packed":
        if varlen:
            return BatchingPlan("packed", requested, f"training.batching: packed, {attn_implementation}")
        return BatchingPlan("grouped", requested, f"packing asked for, grouping instead: {no_varlen}")
    if requested == "grouped":
        return BatchingPlan("grouped", requested, "training.batching: grouped")
    if varlen:
        return BatchingPlan("packed", requested, f"auto: {attn_implementation} packs rows without padding")
    if per_device_batch_size == 1:
        return BatchingPlan("random", requested, "auto: one row per micro-batch has no padding to save")
    return BatchingPlan("grouped", requested, f"auto: no packing, {no_varlen}")


class LengthGroupedBatches:
    """A sampler (``torch.utils.data.Sampler`` protocol) of row indices in length-grouped batches.

    ``batch_size`` is the per-device micro-batch, ``world_size`` the number of data-parallel ranks:
    each run of ``batch_size * world_size`` consecutive indices is one global batch of similar
    lengths. There is no ``generator`` attribute on purpose: accelerate would then replace the
    seeding with a generator broadcast from rank 0 at each epoch, which a resumed run cannot replay.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, world_size: int, seed: int) -> None:
        if batch_size < 1 or world_size < 1:
            raise ValueError("batch_size and world_size must be at least 1")
        self.lengths = list(lengths)
        self.global_batch = batch_size * world_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order(self.epoch))

    def order(self, epoch: int) -> list[int]:
        """Every index once, in the order of ``epoch`` (the same on every rank and after a resume)."""
        import torch
        from transformers.trainer_pt_utils import get_length_grouped_indices

        if not self.lengths:
            return []
        g = torch.Generator().manual_seed(self.seed + epoch)
        flat = get_length_grouped_indices(self.lengths, self.global_batch, generator=g)
        size = self.global_batch
        batches = [flat[i : i + size] for i in range(0, len(flat), size)]
        # The first batch holds the longest row (an OOM shows at once); a short last batch stays last
        # so that every other global batch starts on a per-device batch boundary.
        tail = [batches.pop()] if len(batches) > 1 and len(batches[-1]) < size else []
        middle = batches[1:]
        shuffled = [middle[i] for i in torch.randperm(len(middle), generator=g).tolist()]
        return [i for batch in [batches[0], *shuffled, *tail] for i in batch]


def expected_padding(
    lengths: Sequence[int], batch_size: int, world_size: int, mode: Mode, seed: int
) -> float | None:
    """The padding share of one epoch in ``mode``, from the rows' token lengths (the sampler's own
    order for grouped, a seeded random order for random, 0 for packed); None without rows."""
    import torch

    if not lengths:
        return None
    if mode == "packed":
        return 0.0
    if mode == "grouped":
        order = LengthGroupedBatches(lengths, batch_size, world_size, seed).order(0)
    else:
        order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()
    real = computed = 0
    for start in range(0, len(order), batch_size):
        rows = [lengths[i] for i in order[start : start + batch_size]]
        real += sum(rows)
        computed += max(rows) * len(rows)
    return round(1 - real / computed, 4)


class CountingCollator:
    """Wraps a collator: adds ``COUNTS_KEY`` = (rows, their tokens, tokens the device computes)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        batch = self.inner(features)
        real = sum(len(f["input_ids"]) for f in features)
        batch[COUNTS_KEY] = (len(features), real, int(batch["input_ids"].numel()))
        return batch


def make_collator(plan: BatchingPlan, tokenizer: Any, pad_to_multiple_of: int | None) -> CountingCollator:
    """The padding (grouped, random) or flattening (packed) collator, with token counting."""
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    from tac2sol.trainer.prompt import IGNORE_INDEX

    if plan.mode == "packed":
        # Each row's first label becomes IGNORE_INDEX: no loss from one row's end to the next row.
        return CountingCollator(DataCollatorWithFlattening(separator_id=IGNORE_INDEX))
    return CountingCollator(
        DataCollatorForSeq2Seq(
            tokenizer, label_pad_token_id=IGNORE_INDEX, pad_to_multiple_of=pad_to_multiple_of
        )
    )


def prepare_model(plan: BatchingPlan, model: Any) -> None:
    """Packed rows: no KV cache in training forwards. With a cache, transformers does not look for
    packed rows in ``position_ids`` (``masking_utils``), and rows would attend to each other."""
    if plan.mode == "packed":
        model.config.use_cache = False


@dataclass
class TokenTally:
    """Tokens one rank trained on: the rows' own (real) and what the device computed (with padding)."""

    real: int = 0
    computed: int = 0
    samples: int = 0

    def add(self, real: int, computed: int, samples: int) -> None:
        self.real += real
        self.computed += computed
        self.samples += samples

    @property
    def padding(self) -> int:
        return self.computed - self.real

    def padding_ratio(self) -> float | None:
        """Share of computed tokens that were padding, or None before any token was counted."""
        return round(self.padding / self.computed, 4) if self.computed else None
