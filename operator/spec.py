"""The TrainingRun API (``tac2sol.dev/v1alpha1``): pydantic models, one source of truth.

The CRD schema is generated from these models (``tac2sol.operator.crd``): field descriptions become
the CRD docs, bounds and enums become OpenAPI constraints, and each model's
``x-kubernetes-validations`` (CEL) mirror the cross-field checks in
:func:`tac2sol.operator.validation.check_training_run`.

Reading a file: :mod:`tac2sol.operator.specfile`; the Python side of the cross-field checks:
:mod:`tac2sol.operator.validation`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, StringConstraints, field_validator

from tac2sol.operator.apimodel import ApiModel
from tac2sol.operator.catalog import GPUS, ModelFacts
from tac2sol.operator.status import TrainingRunStatus
from tac2sol.trainer import hparams as hp

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
QUANTITY = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"
# Leaves room for suffixes such as "-master-0" and "-config" in derived object names (<= 63).
MAX_NAME = 50

_UNITS = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}  # fmt: skip


def parse_quantity(value: str) -> int:
    """Bytes of a Kubernetes quantity such as ``256Gi`` or ``1.5G``."""
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([A-Za-z]*)", value)
    if not m or m.group(2) not in _UNITS:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def _cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    out = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    return out


def _validations(*rules: dict[str, str]) -> ConfigDict:
    extra: dict[str, Any] = {"x-kubernetes-validations": list(rules)}
    return ConfigDict(json_schema_extra=extra)


# Label values are at most 63 characters; annotation values are bounded for CEL's cost estimate.
_LabelMap = dict[str, Annotated[str, StringConstraints(max_length=63)]]
_AnnotationMap = dict[str, Annotated[str, StringConstraints(max_length=65536)]]


# A file on a claim (the dataset, the evaluation test set): the claim's name and the path on it.
_Claim = Annotated[str | None, Field(None, min_length=1, max_length=253, pattern=DNS_LABEL)]
_PathInClaim = Annotated[
    str | None,
    Field(
        None,
        min_length=1,
        max_length=1024,
        pattern=r"\S",
        description="File path inside the claim (or, without pvc, in the image / on this machine).",
    ),
]


class ModelSpec(ApiModel):
    """Which base model to fine-tune."""

    name: str = Field(
        min_length=1,
        max_length=256,
        description=(
            "A catalog key (`tac2sol catalog models`, e.g. qwen2.5-coder-32b), a catalog model's "
            "Hugging Face id, or any hub id / local directory together with `facts`."
        ),
    )
    revision: hp.Revision
    gguf_file: hp.GgufFile
    facts: ModelFacts | None = Field(
        None, description="Architecture facts for a model that is not in the catalog (overrides the catalog)."
    )
    trust_remote_code: bool | None = Field(
        None, description="Run the model repository's own code when loading; default from the catalog."
    )


class DatasetSpec(ApiModel):
    """The TAC -> Solidity JSONL data (one {input, output, metadata} object per line)."""

    model_config = _validations(
        _cel("has(self.path) != has(self.uri)", "give exactly one of dataset.path or dataset.uri"),
        _cel(
            "!has(self.pvc) || has(self.path)",
            "dataset.pvc needs dataset.path (a file on that claim)",
            ".pvc",
        ),
        _cel(
            "!has(self.credentialsSecret) || has(self.uri)",
            "dataset.credentialsSecret needs dataset.uri (the credentials are for its download)",
            ".credentialsSecret",
        ),
    )

    pvc: _Claim = Field(description="PersistentVolumeClaim holding the file.")
    path: _PathInClaim
    uri: hp.DataUri
    credentials_secret: str | None = Field(
        None,
        min_length=1,
        max_length=253,
        pattern=DNS_LABEL,
        description=(
            "Secret (in the run's namespace) whose keys become environment variables of the trainer "
            "(envFrom) for the download of dataset.uri: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
            "AWS_SESSION_TOKEN, AWS_ENDPOINT_URL (S3-compatible stores) for s3://; FSSPEC_GS "
            """({"token": <service-account key JSON>}) for gs://. Never copied into the ConfigMap."""
        ),
    )
    validation_ratio: hp.ValidationRatio
    split_seed: hp.SplitSeed
    drop_artifact_rows: hp.DropArtifactRows
    max_rows: hp.MaxRows
    on_bad_line: hp.OnBadLine


class TrainingSpec(ApiModel):
    """Hyper-parameters. Give `epochs` or `maxSteps` (default: 3 epochs)."""

    model_config = _validations(
        _cel(
            "!(has(self.epochs) && has(self.maxSteps))", "give training.epochs or training.maxSteps, not both"
        ),
    )

    epochs: hp.EpochsGiven
    max_steps: hp.MaxStepsGiven
    learning_rate: hp.LearningRate
    scheduler: hp.Scheduler
    warmup_ratio: hp.WarmupRatio
    weight_decay: hp.WeightDecay
    max_grad_norm: hp.MaxGradNorm
    max_seq_length: hp.MaxSeqLength
    per_device_batch_size: hp.PerDeviceBatchSize
    global_batch_size: int | None = Field(
        None,
        ge=1,
        le=1_048_576,
        description=(
            "Sequences per optimizer step over all devices; gradient accumulation = "
            "globalBatchSize / (perDeviceBatchSize x nodes x gpusPerNode). Default: no accumulation."
        ),
    )
    gradient_checkpointing: hp.GradientCheckpointing
    batching: hp.Batching
    fused_cross_entropy: hp.FusedCrossEntropy
    seed: hp.Seed
    logging_steps: hp.LoggingSteps
    eval_steps: hp.EvalSteps
    save_steps: hp.SaveSteps
    save_total_limit: hp.SaveTotalLimit


class LoraSpec(ApiModel):
    """LoRA adapter shape."""

    r: hp.LoraRank
    alpha: hp.LoraAlpha
    dropout: hp.LoraDropout
    target_modules: list[str] = Field(
        default_factory=lambda: ["auto"],
        min_length=1,
        max_length=32,
        description=(
            "Module names to adapt (they must exist in the architecture), or [auto] for the catalog's "
            "choice, or [all-linear]."
        ),
        json_schema_extra={"items": {"type": "string", "minLength": 1, "maxLength": 64}},
    )


class Toleration(ApiModel):
    """A pod toleration (core/v1)."""

    key: str | None = Field(None, max_length=316, description="Taint key; empty with Exists matches all.")
    operator: Literal["Exists", "Equal"] = Field("Equal", description="Exists or Equal.")
    value: str | None = Field(None, max_length=63, description="Taint value (Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect; empty matches all."
    )
    toleration_seconds: int | None = Field(None, ge=0, description="How long a NoExecute taint is tolerated.")


class ResourcesSpec(ApiModel):
    """Where and on how many devices the run trains."""

    model_config = _validations(
        _cel(
            # has(): the apiserver checks the `default: {}` of resources against this rule as it is.
            "!has(self.gpusPerNode) || !has(self.gpuType) || self.gpusPerNode <= "
            + "{"
            + ", ".join(f"'{k}': {g.max_per_node}" for k, g in GPUS.items())
            + "}"
            "[self.gpuType]",
            "resources.gpusPerNode exceeds what one node of this gpuType holds",
            ".gpusPerNode",
        ),
    )

    gpu_type: str = Field(
        "rtx8000",
        max_length=32,
        description="GPU catalog key (`tac2sol catalog gpus`); `cpu` for a run without accelerators.",
        json_schema_extra={"enum": list(GPUS)},
    )
    gpus_per_node: int = Field(1, ge=1, le=64, description="Devices (training processes) per node.")
    nodes: int = Field(1, ge=1, le=256, description="Nodes (pods).")
    host_memory: str = Field(
        "256Gi",
        max_length=32,
        pattern=QUANTITY,
        description="Host memory per node the run may use for CPU offload (a quantity); bounds offload.",
    )
    shm_size: str = Field(
        "16Gi", max_length=32, pattern=QUANTITY, description="/dev/shm size per pod (NCCL, dataloaders)."
    )
    cpu: str | None = Field(
        None, max_length=32, pattern=r"^[0-9]+(\.[0-9]+)?m?$", description="CPU request per pod."
    )
    memory: str | None = Field(None, max_length=32, pattern=QUANTITY, description="Memory request per pod.")
    node_selector: _LabelMap = Field(
        default_factory=dict, max_length=64, description="Node labels the pods require."
    )
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32, description="Pod tolerations.")
    priority_class_name: str | None = Field(None, max_length=253, description="PriorityClass of the pods.")
    kueue_queue: str | None = Field(
        None,
        max_length=63,
        pattern=DNS_LABEL,
        description="Kueue LocalQueue (label kueue.x-k8s.io/queue-name).",
    )
    pod_labels: _LabelMap = Field(
        default_factory=dict, max_length=64, description="Labels copied onto every trainer pod."
    )
    pod_annotations: _AnnotationMap = Field(
        default_factory=dict, max_length=64, description="Annotations copied onto every trainer pod."
    )

    @field_validator("gpu_type")
    @classmethod
    def _known_gpu(cls, v: str) -> str:
        if v not in GPUS:
            raise ValueError(f"unknown GPU type {v!r}; allowed: {', '.join(GPUS)}")
        return v

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def host_memory_bytes(self) -> int:
        return parse_quantity(self.host_memory)


class DeepSpeedSpec(ApiModel):
    """DeepSpeed ZeRO settings (used when the strategy is deepspeed, or auto picks it)."""

    stage: Literal["auto", 0, 2, 3] = Field(
        "auto",
        description="ZeRO stage: auto (the planner picks), 0, 2 or 3.",
        json_schema_extra={"x-kubernetes-int-or-string": True},
    )
    offload_optimizer: bool | None = Field(
        None, description="Keep optimizer state in host memory; unset: the planner decides."
    )
    offload_params: bool | None = Field(
        None, description="Keep parameters in host memory (ZeRO-3 only); unset: the planner decides."
    )


class OutputSpec(ApiModel):
    """Where checkpoints, the adapter and reports go."""

    pvc: str | None = Field(
        None, max_length=253, pattern=DNS_LABEL, description="PersistentVolumeClaim for outputs."
    )
    path: str = Field(
        "out", min_length=1, max_length=1024, pattern=r"\S", description="Directory (inside the claim)."
    )


class TestSetSpec(ApiModel):
    """A fixed test set shared across runs: JSONL rows like the dataset's, evaluated besides the split."""

    model_config = _validations(
        _cel("has(self.path) != has(self.uri)", "give exactly one of evaluation.testSet.path or .uri"),
        _cel("!has(self.pvc) || has(self.path)", "evaluation.testSet.pvc needs a path on that claim", ".pvc"),
    )

    pvc: _Claim = Field(
        description="PersistentVolumeClaim holding the file (read-only; the dataset claim is mounted once)."
    )
    path: _PathInClaim
    uri: hp.TestSetUri


class EvaluationSpec(ApiModel):
    """Evaluation after training: the held-out split, a shared test set, the base model."""

    enabled: hp.EvalEnabled
    max_new_tokens: hp.MaxNewTokens
    batch_size: hp.EvalBatchSize
    max_samples: hp.MaxSamples
    num_beams: hp.NumBeams
    base_model: hp.EvalBaseModel
    test_set: TestSetSpec | None = Field(
        None,
        description=(
            "A held-out benchmark evaluated besides the run's own split, so runs trained on other data or "
            "seeds are compared on the same rows (tac2sol compare). Rows sharing a contract, body hash, "
            "output or input with a training row are excluded from its scores and counted. A uri is "
            "downloaded with the dataset's credentials (spec.hfTokenSecret, spec.dataset.credentialsSecret)."
        ),
    )


class SecretKeyRef(ApiModel):
    """A key of a Secret in the run's namespace (the value is never written into the run)."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_LABEL, description="Secret name.")
    key: str = Field("token", min_length=1, max_length=253, description="Key inside the Secret.")


class RunPolicy(ApiModel):
    """Job-level policy passed to the Kubeflow job."""

    backoff_limit: int = Field(3, ge=0, le=100, description="Pod restarts before the job fails.")
    active_deadline_seconds: int | None = Field(None, ge=1, description="Fail the job after this long.")
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, description="Delete the job this long after it ends."
    )
    clean_pod_policy: Literal["None", "Running", "All"] = Field(
        "None", description="Which pods to delete at the end."
    )


_STAGE_SET = "has(self.deepspeed) && string(self.deepspeed.stage) != 'auto'"

# What a TrainJob cannot carry per run (Trainer v2.3's TrainJob and runtimePatches have no field for
# it); one text for the CEL rule and the Python check (validation.trainjob_problems).
TRAINJOB_MPIJOB = (
    "launcher mpijob is a Kubeflow v1 MPIJob: use backend pytorchjob (or auto), or launcher pytorchjob"
)
TRAINJOB_PULL_POLICY = (
    "imagePullPolicy of a TrainJob is its ClusterTrainingRuntime's (chart value trainer.image.pullPolicy): "
    "remove it or use backend pytorchjob"
)
TRAINJOB_RUN_POLICY = (
    "runPolicy.backoffLimit, cleanPodPolicy and ttlSecondsAfterFinished are training-operator v1 settings; "
    "a TrainJob restarts as its ClusterTrainingRuntime says (chart value trainJob.runtime.maxRestarts): "
    "remove them or use backend pytorchjob (runPolicy.activeDeadlineSeconds applies to both)"
)


class TrainingRunSpec(ApiModel):
    """The desired fine-tuning run."""

    model_config = _validations(
        _cel(
            f"self.strategy != 'ddp' || !({_STAGE_SET})",
            "deepspeed.stage needs strategy deepspeed or auto",
            ".deepspeed.stage",
        ),
        _cel(
            "self.strategy != 'ddp' || !has(self.deepspeed) || "
            "((!has(self.deepspeed.offloadOptimizer) || !self.deepspeed.offloadOptimizer) && "
            "(!has(self.deepspeed.offloadParams) || !self.deepspeed.offloadParams))",
            "deepspeed offload needs strategy deepspeed or auto",
            ".deepspeed",
        ),
        _cel(
            "!has(self.deepspeed) || !has(self.deepspeed.offloadOptimizer) || "
            "!self.deepspeed.offloadOptimizer || string(self.deepspeed.stage) != '0'",
            "deepspeed.offloadOptimizer needs ZeRO stage 2 or 3 (or auto)",
            ".deepspeed.offloadOptimizer",
        ),
        _cel(
            "!has(self.deepspeed) || !has(self.deepspeed.offloadParams) || !self.deepspeed.offloadParams || "
            "string(self.deepspeed.stage) in ['auto', '3']",
            "deepspeed.offloadParams needs ZeRO stage 3 (or auto)",
            ".deepspeed.offloadParams",
        ),
        _cel(
            "self.launcher != 'mpijob' || self.strategy != 'ddp'",
            "launcher mpijob runs DeepSpeed, not ddp",
            ".launcher",
        ),
        _cel(
            "!has(self.training.globalBatchSize) || self.training.globalBatchSize % "
            "(self.training.perDeviceBatchSize * self.resources.gpusPerNode * self.resources.nodes) == 0",
            "training.globalBatchSize must be a multiple of perDeviceBatchSize x gpusPerNode x nodes",
            ".training.globalBatchSize",
        ),
        _cel(
            "self.resources.gpuType != 'cpu' || self.strategy != 'deepspeed'",
            "strategy deepspeed needs GPUs; with gpuType cpu use auto or ddp",
            ".strategy",
        ),
        _cel(
            "self.backend != 'trainjob' || self.launcher != 'mpijob'",
            TRAINJOB_MPIJOB,
            ".launcher",
        ),
        _cel(
            "self.backend != 'trainjob' || !has(self.imagePullPolicy)",
            TRAINJOB_PULL_POLICY,
            ".imagePullPolicy",
        ),
        _cel(
            "self.backend != 'trainjob' || (self.runPolicy.backoffLimit == 3 && "
            "self.runPolicy.cleanPodPolicy == 'None' && !has(self.runPolicy.ttlSecondsAfterFinished))",
            TRAINJOB_RUN_POLICY,
            ".runPolicy",
        ),
    )

    model: ModelSpec = Field(description="Base model.")
    dataset: DatasetSpec = Field(description="Training data.")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Hyper-parameters.")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="LoRA adapter.")
    quantization: hp.Quantization
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Devices and scheduling.")
    strategy: Literal["auto", "ddp", "deepspeed"] = Field(
        "auto",
        description="auto: the planner picks DDP when it fits, else the cheapest DeepSpeed ZeRO stage.",
    )
    deepspeed: DeepSpeedSpec = Field(default_factory=DeepSpeedSpec, description="DeepSpeed ZeRO settings.")
    launcher: Literal["pytorchjob", "mpijob"] = Field(
        "pytorchjob",
        description=(
            "Kubeflow v1 job kind: PyTorchJob (torchrun) or MPIJob (DeepSpeed launcher). A TrainJob "
            "always runs torchrun."
        ),
    )
    backend: Literal["auto", "pytorchjob", "trainjob"] = Field(
        "auto",
        description=(
            "Which Kubeflow API trains the run: pytorchjob (training-operator v1: PyTorchJob, or MPIJob "
            "with launcher mpijob), trainjob (Kubeflow Trainer v2: a TrainJob on the chart's "
            "ClusterTrainingRuntime), or auto: the v1 kind when the cluster serves it, else TrainJob "
            "(status.backend says which and why)."
        ),
    )
    image: str | None = Field(
        None, max_length=512, description="Trainer image; default from the operator's settings."
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        None, description="Image pull policy."
    )
    output: OutputSpec = Field(default_factory=OutputSpec, description="Output location.")
    suspend: bool = Field(False, description="Create the job suspended (or suspend a running one).")
    evaluation: EvaluationSpec = Field(
        default_factory=EvaluationSpec, description="Evaluation after training."
    )
    hf_token_secret: SecretKeyRef | None = Field(
        None, description="Secret with a Hugging Face token for gated models (mounted as HF_TOKEN)."
    )
    metrics_port: int = Field(9400, ge=1024, le=65535, description="Port of the trainer's /metrics (rank 0).")
    run_policy: RunPolicy = Field(default_factory=RunPolicy, description="Job run policy.")

    @property
    def world_size(self) -> int:
        return self.resources.world_size


class ObjectMeta(ApiModel):
    """The parts of metav1.ObjectMeta the project reads; the apiserver's other fields are kept."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(
        min_length=1,
        max_length=MAX_NAME,
        pattern=DNS_LABEL,
        description="Run name (DNS label, at most 50 characters).",
    )
    namespace: str | None = Field(None, max_length=63, pattern=DNS_LABEL)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    generation: int | None = None
    uid: str | None = None


class TrainingRun(ApiModel):
    """A fine-tuning run: ``kubectl apply -f runs/qwen32b.yaml``."""

    api_version: Literal["tac2sol.dev/v1alpha1"] = Field(
        "tac2sol.dev/v1alpha1", description="tac2sol.dev/v1alpha1"
    )
    kind: Literal["TrainingRun"] = Field("TrainingRun", description="TrainingRun")
    metadata: ObjectMeta
    spec: TrainingRunSpec
    status: TrainingRunStatus | None = None
