"""A run resolved once: its model facts, LoRA targets, GPU type and precision in one value.

Data flows one way: parse → :func:`resolve` → plan → render. The planner, the trainer-config
mapping and the renderer all take the :class:`ResolvedRun`; none of them looks a fact up again.
"""

from __future__ import annotations

from dataclasses import dataclass

from tac2sol.operator.catalog import GPUS, GpuType, ModelFacts, UnknownModel, find_model
from tac2sol.operator.plan import PlanPrecision
from tac2sol.operator.spec import ModelSpec, TrainingRun, TrainingRunSpec


def resolve_model(model: ModelSpec) -> ModelFacts:
    """The facts for a run's model: its own ``facts`` when given, else the catalog entry."""
    if model.facts is not None:
        return model.facts if model.facts.id else model.facts.model_copy(update={"id": model.name})
    found = find_model(model.name)
    if found is None:
        raise UnknownModel(model.name)
    return found[1]


def resolved_lora_targets(spec: TrainingRunSpec, facts: ModelFacts) -> list[str]:
    """The module names LoRA adapts: the catalog's for [auto], every linear module for [all-linear]."""
    targets = spec.lora.target_modules
    if targets == ["auto"]:
        return facts.default_lora_targets
    if targets == ["all-linear"]:
        return facts.module_names()
    return list(targets)


def precision_for(gpu: GpuType) -> PlanPrecision:
    """bf16 on sm_80+, fp16 (+ dynamic loss scaling) on Volta/Turing, fp32 on CPU."""
    if gpu.is_cpu:
        return "fp32"
    return "bf16" if gpu.bf16 else "fp16"


@dataclass(frozen=True)
class ResolvedRun:
    """A validated TrainingRun with every catalog lookup done."""

    run: TrainingRun
    facts: ModelFacts
    lora_targets: tuple[str, ...]
    gpu: GpuType
    precision: PlanPrecision

    @property
    def spec(self) -> TrainingRunSpec:
        return self.run.spec

    @property
    def name(self) -> str:
        return self.run.metadata.name

    @property
    def model_id(self) -> str:
        """What the trainer loads: the catalog's hub id, or the name the run gave."""
        return self.facts.id or self.spec.model.name

    @property
    def on_gpu(self) -> bool:
        """The one answer to "is this a GPU run" (the GPU type of the spec)."""
        return not self.gpu.is_cpu

    @property
    def trust_remote_code(self) -> bool:
        given = self.spec.model.trust_remote_code
        return given if given is not None else self.facts.trust_remote_code


def resolve(run: TrainingRun) -> ResolvedRun:
    """Look every fact of ``run`` up once. Raises UnknownModel for a model neither known nor described."""
    facts = resolve_model(run.spec.model)
    gpu = GPUS[run.spec.resources.gpu_type]
    return ResolvedRun(
        run=run,
        facts=facts,
        lora_targets=tuple(resolved_lora_targets(run.spec, facts)),
        gpu=gpu,
        precision=precision_for(gpu),
    )
