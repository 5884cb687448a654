"""Cross-field and catalog checks of a TrainingRun: one Python implementation of each rule.

The CEL rules on the API models (``x-kubernetes-validations`` in :mod:`tac2sol.operator.spec`) make
the apiserver refuse the same runs; ``tests/operator/test_crd.py`` checks that both agree.
"""

from __future__ import annotations

from pydantic.alias_generators import to_camel

from tac2sol.errors import InvalidInput
from tac2sol.operator.catalog import GPUS, MODELS, find_model
from tac2sol.operator.resolve import resolve_model
from tac2sol.operator.spec import (
    TRAINJOB_MPIJOB,
    TRAINJOB_PULL_POLICY,
    TRAINJOB_RUN_POLICY,
    RunPolicy,
    TrainingRun,
    TrainingRunSpec,
)


class SpecProblem(InvalidInput):
    """One problem at a field path of the run (``("spec", "training", "maxSteps")``).

    Its text is ``<path>: <message>``; :mod:`tac2sol.operator.specfile` adds the file and line.
    """

    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        super().__init__(f"{format_path(path)}: {message}")
        self.path = path
        self.message = message


def format_path(path: tuple[str | int, ...]) -> str:
    """``("spec", "lora", "targetModules", 1)`` -> ``spec.lora.targetModules[1]``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def accumulation_steps(spec: TrainingRunSpec) -> int:
    """Micro-steps per optimizer step: globalBatchSize / (perDeviceBatchSize x processes).

    The one Python implementation of the rule "globalBatchSize is a multiple of ..." (the CEL
    rule on TrainingRunSpec is the apiserver's).
    """
    t = spec.training
    per_step = t.per_device_batch_size * spec.world_size
    if t.global_batch_size is None:
        return 1
    if t.global_batch_size % per_step:
        raise SpecProblem(
            ("spec", "training", "globalBatchSize"),
            f"{t.global_batch_size} is not a multiple of perDeviceBatchSize x nodes x gpusPerNode "
            f"= {per_step}; use e.g. {max(per_step, t.global_batch_size // per_step * per_step)}",
        )
    return t.global_batch_size // per_step


def check_training_run(run: TrainingRun) -> None:
    """Cross-field and catalog checks (the CEL rules plus what needs the catalog). Raises SpecProblem."""
    s = run.spec
    t = s.training
    if t.epochs is not None and t.max_steps is not None:
        raise SpecProblem(("spec", "training", "maxSteps"), "give epochs or maxSteps, not both")
    d = s.dataset
    if (d.path is None) == (d.uri is None):
        raise SpecProblem(
            ("spec", "dataset", "path"), "give exactly one of dataset.path (with optional pvc) or dataset.uri"
        )
    if d.pvc is not None and d.path is None:
        raise SpecProblem(("spec", "dataset", "pvc"), "a pvc needs dataset.path, the file on that claim")
    if d.credentials_secret is not None and d.uri is None:
        raise SpecProblem(
            ("spec", "dataset", "credentialsSecret"),
            "credentials are for the download of dataset.uri; remove it or give dataset.uri",
        )
    ts = s.evaluation.test_set
    if ts is not None and (ts.path is None) == (ts.uri is None):
        raise SpecProblem(
            ("spec", "evaluation", "testSet", "path"),
            "give exactly one of evaluation.testSet.path (with optional pvc) or evaluation.testSet.uri",
        )
    if ts is not None and ts.pvc is not None and ts.path is None:
        raise SpecProblem(
            ("spec", "evaluation", "testSet", "pvc"), "a pvc needs evaluation.testSet.path, the file on it"
        )
    stage_set = s.deepspeed.stage != "auto"
    if s.strategy == "ddp":
        if stage_set:
            raise SpecProblem(
                ("spec", "deepspeed", "stage"),
                f"stage {s.deepspeed.stage} needs strategy deepspeed or auto (strategy is ddp); "
                "remove the stage or change the strategy",
            )
        for name in ("offload_optimizer", "offload_params"):
            if getattr(s.deepspeed, name):
                raise SpecProblem(
                    ("spec", "deepspeed", to_camel(name)),
                    "offload needs strategy deepspeed or auto (strategy is ddp)",
                )
        if s.launcher == "mpijob":
            raise SpecProblem(
                ("spec", "launcher"), "mpijob runs the DeepSpeed launcher; use pytorchjob with strategy ddp"
            )
    if s.deepspeed.offload_optimizer and s.deepspeed.stage == 0:
        raise SpecProblem(
            ("spec", "deepspeed", "offloadOptimizer"),
            "needs ZeRO stage 2 or 3 (stage is 0: no optimizer state partition to offload); "
            "turn offload off or set stage 2, 3 or auto",
        )
    if s.deepspeed.offload_params and s.deepspeed.stage not in ("auto", 3):
        raise SpecProblem(
            ("spec", "deepspeed", "offloadParams"), f"needs ZeRO stage 3 (stage is {s.deepspeed.stage})"
        )
    gpu = GPUS[s.resources.gpu_type]
    if s.resources.gpus_per_node > gpu.max_per_node:
        raise SpecProblem(
            ("spec", "resources", "gpusPerNode"),
            f"{s.resources.gpus_per_node} is more than one {s.resources.gpu_type} node holds "
            f"(at most {gpu.max_per_node}); use more nodes instead",
        )
    if gpu.is_cpu and s.strategy == "deepspeed":
        raise SpecProblem(("spec", "strategy"), "deepspeed needs GPUs; with gpuType cpu use auto or ddp")
    if s.backend == "trainjob":
        problems = trainjob_problems(s)
        if problems:
            raise problems[0]
    accumulation_steps(s)
    _check_model(s)


def trainjob_problems(s: TrainingRunSpec) -> list[SpecProblem]:
    """What a run asks that a TrainJob cannot carry (the CEL rules for ``backend: trainjob``; the
    renderer checks the same when ``backend: auto`` chose TrainJob)."""
    out = []
    if s.launcher == "mpijob":
        out.append(
            SpecProblem(
                ("spec", "launcher"),
                TRAINJOB_MPIJOB,
            )
        )
    if s.image_pull_policy is not None:
        out.append(SpecProblem(("spec", "imagePullPolicy"), TRAINJOB_PULL_POLICY))
    p, default = s.run_policy, RunPolicy()
    if (p.backoff_limit, p.clean_pod_policy, p.ttl_seconds_after_finished) != (
        default.backoff_limit,
        default.clean_pod_policy,
        default.ttl_seconds_after_finished,
    ):
        out.append(SpecProblem(("spec", "runPolicy"), TRAINJOB_RUN_POLICY))
    return out


def _check_model(s: TrainingRunSpec) -> None:
    if s.model.facts is None and find_model(s.model.name) is None:
        raise SpecProblem(
            ("spec", "model", "name"),
            f"{s.model.name!r} is not in the catalog; use one of {', '.join(MODELS)}, "
            "or give its architecture in spec.model.facts",
        )
    facts = resolve_model(s.model)
    modules = facts.module_names()
    targets = s.lora.target_modules
    special = {"auto", "all-linear"}
    if any(t in special for t in targets) and len(targets) > 1:
        raise SpecProblem(
            ("spec", "lora", "targetModules"),
            "auto and all-linear stand alone; give [auto], [all-linear] or module names",
        )
    for i, name in enumerate(targets):
        if name not in special and name not in modules:
            raise SpecProblem(
                ("spec", "lora", "targetModules", i),
                f"{name!r} is not a module of {facts.family} ({facts.id}); "
                f"allowed: {', '.join(modules)}, auto, all-linear",
            )
    if s.training.max_seq_length > facts.context:
        raise SpecProblem(
            ("spec", "training", "maxSeqLength"),
            f"{s.training.max_seq_length} is above {facts.id or s.model.name}'s context "
            f"of {facts.context} tokens; "
            f"use at most {facts.context}",
        )
