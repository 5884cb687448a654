"""Fused linear cross-entropy for GPU runs (``training.fused_cross_entropy``): Liger's kernel.

The standard causal-LM loss materialises the logits of the whole micro-batch, ``b·s·V``: in the
compute dtype (2 B under fp16), upcast to fp32 for the loss (4 B) and their fp32 gradient (4 B),
about ``b·s·V·10 B`` at the loss's peak (2.5 GB at b 1, s 4096, V 152k for Qwen2.5). Liger's
``LigerFusedLinearCrossEntropy`` computes ``hidden @ lm_head`` chunk by chunk and writes each
chunk's gradient at once, bounding its transient logits to about ``b·s·H`` elements (at most twice
that after rounding the chunk to a power of two) plus the ``b·s·H`` input gradient:

    saved ≈ b·s·V·10 B - b·s·H·3·(bytes of the compute dtype)

It keeps transformers' ``num_items_in_batch`` normalisation (sum / real label tokens), so gradient
accumulation weighs tokens as the standard loss does. Only the fused loss is switched on (no other
Liger kernel). Its kernels are Triton GPU kernels: on a CPU the option is absent and the run says
so; on a GPU without liger-kernel, or for an architecture Liger has no fused loss for, the run stops
before training with what to change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tac2sol.errors import InvalidInput

# transformers passes these to Liger's apply_liger_kernel_to_<model type>: the fused loss only.
LIGER_CONFIG = {
    "fused_linear_cross_entropy": True,
    "cross_entropy": False,
    "rope": False,
    "rms_norm": False,
    "swiglu": False,
}


@dataclass(frozen=True)
class FusedLoss:
    enabled: bool
    reason: str

    def describe(self) -> str:
        return f"fused cross-entropy: {'on' if self.enabled else 'off'} ({self.reason})"

    def training_arguments(self) -> dict[str, Any]:
        """``TrainingArguments`` fields that switch Liger's fused loss on (none when off)."""
        if not self.enabled:
            return {}
        return {"use_liger_kernel": True, "liger_kernel_config": dict(LIGER_CONFIG)}

    def to_json(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "reason": self.reason}


def liger_model_types() -> frozenset[str] | None:
    """Model types Liger has kernels for, or None when liger-kernel is not installed."""
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError:
        return None
    return frozenset(MODEL_TYPE_TO_APPLY_LIGER_FN)


def resolve_fused_loss(requested: bool, on_gpu: bool, model_type: str | None) -> FusedLoss:
    """Whether this run computes its loss with Liger's fused linear cross-entropy, and why."""
    if not requested:
        return FusedLoss(False, "training.fused_cross_entropy: false")
    if not on_gpu:
        return FusedLoss(
            False, "absent on a CPU: Liger's kernels run on GPUs only; the standard loss is used"
        )
    supported = liger_model_types()
    if supported is None:
        raise InvalidInput(
            "training.fused_cross_entropy: liger-kernel is not installed in this environment; install it "
            "(pip install liger-kernel) or set training.fused_cross_entropy: false"
        )
    if model_type not in supported:
        raise InvalidInput(
            f"training.fused_cross_entropy: Liger has no fused loss for model type {model_type!r}; "
            "set training.fused_cross_entropy: false"
        )
    return FusedLoss(True, f"Liger fused linear cross-entropy, {model_type}")
