"""The memory planner's result: one ``Plan``, printed by ``tac2sol plan`` and stored in ``status.plan``.

Kept apart from ``planner.py`` (the arithmetic) so that ``status.py`` can embed it without
importing the planner, which imports the spec.
"""

from __future__ import annotations

from pydantic import Field

from tac2sol.operator.apimodel import ApiModel
from tac2sol.trainer.config import Precision, Strategy

# What a plan decides is what the trainer config holds: one definition of each set of values.
PlanStrategy = Strategy
PlanPrecision = Precision


class Candidate(ApiModel):
    """One layout the planner estimated, in the order it tried them."""

    strategy: PlanStrategy = Field(description="single process, DDP, or DeepSpeed.")
    zero_stage: int | None = Field(None, description="DeepSpeed ZeRO stage (DeepSpeed only).")
    offload_optimizer: bool = Field(False, description="Optimizer state in host memory.")
    offload_params: bool = Field(False, description="Parameters in host memory (ZeRO-3).")
    per_gpu_memory_bytes: int = Field(description="Estimated peak memory per device.")
    host_memory_bytes: int = Field(0, description="Estimated host memory per node for offloaded state.")
    fits: bool = Field(description="Within the usable share of device (and host) memory.")


class PlanTerm(ApiModel):
    """One term of the memory estimate: its formula, the numbers it used and its bytes."""

    name: str = Field(description="Component (the key in breakdown).")
    formula: str = Field(description="How the bytes are computed, in words and symbols.")
    inputs: dict[str, float] = Field(default_factory=dict, description="The numbers the formula used.")
    bytes: int = Field(ge=0, description="Bytes per device.")
    phase: str = Field(
        description=(
            "persistent (whole step), layer (one layer's backward), loss, outside (not torch-allocated)."
        )
    )


class Plan(ApiModel):
    """How a TrainingRun will be trained, and why."""

    model: str = Field("", description="Model the plan is for (hub id or path).")
    strategy: PlanStrategy = Field(description="single (one process), ddp (torchrun) or deepspeed.")
    zero_stage: int | None = Field(None, description="DeepSpeed ZeRO stage; None without DeepSpeed.")
    offload_optimizer: bool = Field(False, description="DeepSpeed keeps optimizer state on the CPU.")
    offload_params: bool = Field(False, description="DeepSpeed ZeRO-3 keeps parameters on the CPU.")
    precision: PlanPrecision = Field(
        description="fp16 (+ dynamic loss scaling) on sm_7x, bf16 on sm_80+, fp32 on CPU."
    )
    gradient_accumulation_steps: int = Field(
        ge=1, description="globalBatchSize / (perDeviceBatchSize x worldSize)."
    )
    per_device_batch_size: int = Field(ge=1, description="Sequences per device per micro-step.")
    global_batch_size: int = Field(ge=1, description="Sequences per optimizer step across all devices.")
    world_size: int = Field(ge=1, description="Training processes (nodes x gpusPerNode).")
    nodes: int = Field(ge=1, description="Nodes (pods) of the job.")
    gpus_per_node: int = Field(ge=1, description="Devices (processes) per node.")
    gpu_type: str = Field(description="GPU catalog key.")
    max_seq_length: int = Field(ge=1, description="Tokens per sequence the estimate assumes.")
    trainable_params: int = Field(0, ge=0, description="LoRA parameters trained.")
    total_params: int = Field(0, ge=0, description="Parameters of the base model.")
    per_gpu_memory_bytes: int = Field(ge=0, description="Estimated peak memory per device.")
    gpu_memory_bytes: int = Field(ge=0, description="Memory of one device.")
    usable_memory_bytes: int = Field(
        ge=0, description="The share of device memory a plan may use (headroom)."
    )
    host_memory_bytes: int = Field(0, ge=0, description="Estimated host memory per node for offloaded state.")
    breakdown: dict[str, int] = Field(
        default_factory=dict, description="Estimated bytes per device by component."
    )
    peak_allocated_bytes: int = Field(
        0, ge=0, description="Estimated peak of torch's allocated memory (torch.cuda.max_memory_allocated)."
    )
    attention_kernel: str = Field(
        "", description="SDPA backend the estimate assumes (math, efficient, flash)."
    )
    terms: list[PlanTerm] = Field(
        default_factory=list, description="Every term of the estimate with formula, inputs and bytes."
    )
    fits: bool = Field(description="Whether the chosen layout fits; false: nothing tried fits.")
    reasons: list[str] = Field(default_factory=list, description="Why each decision was taken.")
    ways_out: list[str] = Field(
        default_factory=list, description="Concrete changes that would fit, when nothing does."
    )
    candidates: list[Candidate] = Field(default_factory=list, description="Every layout estimated, in order.")
