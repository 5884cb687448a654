"""The TrainingRun API (``tac2sol.dev/v1alpha1``): pydantic models, one source of truth.

The CRD schema is generated from these models (``tac2sol.operator.crd``): field descriptions become
the CRD docs, bounds and enums become OpenAPI constraints, and each model's
``x-kubernetes-validations`` (CEL) mirror the cross-field checks in :func:`check_training_run`.

Reading a file: :func:`load_training_run` / :func:`parse_training_run` raise
:class:`tac2sol.errors.InvalidInput` with ONE message that names the file, line and field path
(``spec.training.maxSeqLength``) and what is allowed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import ConfigDict, Field, StringConstraints, ValidationError, field_validator
from tac2sol.operator.apimodel import ApiModel
from tac2sol.operator.catalog import GPUS, MODELS, ModelFacts, find_model, resolve_model
from tac2sol.operator.status import TrainingRunStatus
from tac2sol.trainer.config import DATA_URI_PATTERN

from tac2sol.errors import InvalidInput

API_GROUP = "tac2sol.dev"
API_VERSION = "v1alpha1"
GROUP_VERSION = f"{API_GROUP}/{API_VERSION}"
KIND = "TrainingRun"
PLURAL = "trainingruns"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
QUANTITY = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"
# Leaves room for suffixes such as "-master-0" and "-config" in derived object names (<= 63).
MAX_NAME = 50
MAX_SEQ = 1_048_576

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
    revision: str | None = Field(None, max_length=128, description="Hub revision (branch, tag or commit).")
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

    pvc: str | None = Field(
        None,
        min_length=1,
        max_length=253,
        pattern=DNS_LABEL,
        description="PersistentVolumeClaim holding the file.",
    )
    path: str | None = Field(
        None,
        min_length=1,
        max_length=1024,
        pattern=r"\S",
        description="File path inside the claim (or, without pvc, in the image / on this machine).",
    )
    uri: str | None = Field(
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
    )
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
    validation_ratio: float = Field(
        0.05, ge=0.0, le=0.5, description="Share of rows held out for evaluation."
    )
    split_seed: int = Field(42, ge=0, le=2**31 - 1, description="Seed of the train/validation split.")
    drop_artifact_rows: bool = Field(
        False,
        description=(
            "Drop rows whose TAC carries lifter artefacts (stack_underflow); "
            "dropped rows go to a rejects file."
        ),
    )
    max_rows: int | None = Field(None, ge=1, description="Use at most this many rows (smoke runs).")
    on_bad_line: Literal["stop", "skip"] = Field(
        "stop", description="A malformed line stops the run (stop) or goes to the rejects file (skip)."
    )


class TrainingSpec(ApiModel):
    """Hyper-parameters. Give `epochs` or `maxSteps` (default: 3 epochs)."""

    model_config = _validations(
        _cel(
            "!(has(self.epochs) && has(self.maxSteps))", "give training.epochs or training.maxSteps, not both"
        ),
    )

    epochs: float | None = Field(None, gt=0, le=1000, description="Passes over the data (default 3).")
    max_steps: int | None = Field(None, ge=1, le=10_000_000, description="Optimizer steps instead of epochs.")
    learning_rate: float = Field(2e-4, gt=0, le=0.1, description="Peak learning rate (0 < lr <= 0.1).")
    scheduler: Literal["cosine", "linear", "constant_with_warmup"] = Field(
        "cosine", description="LR schedule."
    )
    warmup_ratio: float = Field(0.03, ge=0, le=0.5, description="Share of steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, le=1000, description="Gradient clipping norm.")
    max_seq_length: int = Field(
        2048,
        ge=64,
        le=MAX_SEQ,
        description="Tokens per example (prompt + completion); at most the model's context.",
    )
    per_device_batch_size: int = Field(1, ge=1, le=1024, description="Sequences per device per micro-step.")
    global_batch_size: int | None = Field(
        None,
        ge=1,
        le=1_048_576,
        description=(
            "Sequences per optimizer step over all devices; gradient accumulation = "
            "globalBatchSize / (perDeviceBatchSize x nodes x gpusPerNode). Default: no accumulation."
        ),
    )
    gradient_checkpointing: bool = Field(
        True, description="Recompute activations in backward to save memory."
    )
    seed: int = Field(42, ge=0, le=2**31 - 1, description="Training seed.")
    logging_steps: int = Field(10, ge=1, le=1_000_000, description="Log metrics every N steps.")
    eval_steps: int | None = Field(
        None, ge=1, le=1_000_000, description="Validation loss every N steps (default per epoch)."
    )
    save_steps: int = Field(100, ge=1, le=1_000_000, description="Checkpoint every N steps.")
    save_total_limit: int = Field(3, ge=1, le=100, description="Keep the last K checkpoints.")


class LoraSpec(ApiModel):
    """LoRA adapter shape."""

    r: int = Field(16, ge=1, le=1024, description="Rank.")
    alpha: int = Field(32, ge=1, le=4096, description="Scaling numerator (alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter input.")
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


class EvaluationSpec(ApiModel):
    """Held-out evaluation after training."""

    enabled: bool = Field(True, description="Generate for held-out rows and score them.")
    max_new_tokens: int = Field(512, ge=1, le=32768, description="Generation limit per sample.")
    batch_size: int = Field(4, ge=1, le=1024, description="Generation batch size.")
    max_samples: int | None = Field(None, ge=1, description="Evaluate at most this many held-out rows.")
    num_beams: int = Field(1, ge=1, le=16, description="Beam search width (1: greedy).")


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
    )

    model: ModelSpec = Field(description="Base model.")
    dataset: DatasetSpec = Field(description="Training data.")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Hyper-parameters.")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="LoRA adapter.")
    quantization: Literal["nf4", "none"] = Field(
        "nf4",
        description="nf4: 4-bit QLoRA (bitsandbytes NF4, double quantization); none: 16-bit base weights.",
    )
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Devices and scheduling.")
    strategy: Literal["auto", "ddp", "deepspeed"] = Field(
        "auto",
        description="auto: the planner picks DDP when it fits, else the cheapest DeepSpeed ZeRO stage.",
    )
    deepspeed: DeepSpeedSpec = Field(default_factory=DeepSpeedSpec, description="DeepSpeed ZeRO settings.")
    launcher: Literal["pytorchjob", "mpijob"] = Field(
        "pytorchjob", description="Kubeflow job kind: PyTorchJob (torchrun) or MPIJob (DeepSpeed launcher)."
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


# --- reading ------------------------------------------------------------------------------


class _Problem(Exception):
    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def format_path(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load_training_run(path: str | Path) -> TrainingRun:
    """Read one TrainingRun from a YAML file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise InvalidInput(f"{p}: cannot read the file ({exc.strerror}); check the path") from None
    return parse_training_run_text(text, source=str(p))


def parse_training_run_text(text: str, source: str = "<input>") -> TrainingRun:
    """Parse YAML text; errors name the source, line and field path."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InvalidInput(f"{where}: not valid YAML ({problem}); fix the syntax at that line") from None
    if len(docs) != 1:
        raise InvalidInput(
            f"{source}: expected exactly one YAML document with a TrainingRun, found {len(docs)}"
        )
    node = yaml.compose(text) if "\n---" not in text else None
    return parse_training_run(docs[0], source=source, _node=node)


def parse_training_run(data: Any, source: str = "<input>", _node: yaml.Node | None = None) -> TrainingRun:
    """Validate a dict (from YAML or the apiserver) into a TrainingRun, or raise one clear InvalidInput."""
    if not isinstance(data, dict):
        raise InvalidInput(
            f"{source}: expected a mapping (apiVersion, kind, metadata, spec), got {type(data).__name__}"
        )
    try:
        _check_header(data)
        run = TrainingRun.model_validate(data)
        check_training_run(run)
    except ValidationError as exc:
        path, message = _describe(exc)
        raise InvalidInput(_where(source, _node, path) + f"{format_path(path)}: {message}") from None
    except _Problem as exc:
        raise InvalidInput(
            _where(source, _node, exc.path) + f"{format_path(exc.path)}: {exc.message}"
        ) from None
    return run


def _where(source: str, node: yaml.Node | None, path: tuple[str | int, ...]) -> str:
    line = _line_of(node, path) if node is not None else None
    return f"{source}:{line}: " if line else f"{source}: "


def _line_of(node: yaml.Node, path: tuple[str | int, ...]) -> int | None:
    """Line of the deepest node of ``path`` that exists in the YAML (1-based)."""
    line = node.start_mark.line + 1
    for part in path:
        child = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == part:
                    child = k if part == path[-1] else v
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
        if child is None:
            break
        node = child
        line = node.start_mark.line + 1
    return line


def _check_header(data: dict[str, Any]) -> None:
    if data.get("apiVersion") != GROUP_VERSION:
        raise _Problem(("apiVersion",), f"must be {GROUP_VERSION} (got {data.get('apiVersion')!r})")
    if data.get("kind") != KIND:
        raise _Problem(("kind",), f"must be {KIND} (got {data.get('kind')!r})")


def _describe(exc: ValidationError) -> tuple[tuple[str | int, ...], str]:
    """The first error as (field path, message naming what is allowed)."""
    errors = exc.errors()
    err = errors[0]
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    kind = err["type"]
    given = err.get("input")
    if kind == "extra_forbidden":
        allowed = _allowed_fields(loc[:-1])
        msg = f"unknown field; allowed here: {', '.join(allowed)}" if allowed else "unknown field"
    elif kind == "missing":
        msg = "is required"
    else:
        msg = err["msg"].removeprefix("Value error, ")
        msg = msg[0].lower() + msg[1:] if msg else msg
        if given is not None and not isinstance(given, dict | list):
            msg += f" (got {given!r})"
    more = len(errors) - 1
    if more:
        msg += f" [{more} more problem{'s' if more > 1 else ''} after fixing this one]"
    return loc, msg


def _allowed_fields(loc: tuple[str | int, ...]) -> list[str]:
    """Aliases of the model found at ``loc`` inside TrainingRun."""
    model: Any = TrainingRun
    for part in loc:
        if isinstance(part, int):
            continue
        field = next((f for n, f in model.model_fields.items() if part in (n, f.alias)), None)
        if field is None:
            return []
        ann = field.annotation
        model = _model_in(ann)
        if model is None:
            return []
    return [f.alias or n for n, f in model.model_fields.items()]


def _model_in(ann: Any) -> Any:
    from typing import get_args

    if isinstance(ann, type) and issubclass(ann, ApiModel):
        return ann
    for arg in get_args(ann):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def check_training_run(run: TrainingRun) -> None:
    """Cross-field and catalog checks (the CEL rules plus what needs the catalog). Raises _Problem."""
    s = run.spec
    t = s.training
    if t.epochs is not None and t.max_steps is not None:
        raise _Problem(("spec", "training", "maxSteps"), "give epochs or maxSteps, not both")
    d = s.dataset
    if (d.path is None) == (d.uri is None):
        raise _Problem(
            ("spec", "dataset", "path"), "give exactly one of dataset.path (with optional pvc) or dataset.uri"
        )
    if d.pvc is not None and d.path is None:
        raise _Problem(("spec", "dataset", "pvc"), "a pvc needs dataset.path, the file on that claim")
    if d.credentials_secret is not None and d.uri is None:
        raise _Problem(
            ("spec", "dataset", "credentialsSecret"),
            "credentials are for the download of dataset.uri; remove it or give dataset.uri",
        )
    stage_set = s.deepspeed.stage != "auto"
    if s.strategy == "ddp":
        if stage_set:
            raise _Problem(
                ("spec", "deepspeed", "stage"),
                f"stage {s.deepspeed.stage} needs strategy deepspeed or auto (strategy is ddp); "
                "remove the stage or change the strategy",
            )
        for name in ("offload_optimizer", "offload_params"):
            if getattr(s.deepspeed, name):
                raise _Problem(
                    ("spec", "deepspeed", _alias(name)),
                    "offload needs strategy deepspeed or auto (strategy is ddp)",
                )
        if s.launcher == "mpijob":
            raise _Problem(
                ("spec", "launcher"), "mpijob runs the DeepSpeed launcher; use pytorchjob with strategy ddp"
            )
    if s.deepspeed.offload_params and s.deepspeed.stage not in ("auto", 3):
        raise _Problem(
            ("spec", "deepspeed", "offloadParams"), f"needs ZeRO stage 3 (stage is {s.deepspeed.stage})"
        )
    gpu = GPUS[s.resources.gpu_type]
    if s.resources.gpus_per_node > gpu.max_per_node:
        raise _Problem(
            ("spec", "resources", "gpusPerNode"),
            f"{s.resources.gpus_per_node} is more than one {s.resources.gpu_type} node holds "
            f"(at most {gpu.max_per_node}); use more nodes instead",
        )
    if gpu.is_cpu and s.strategy == "deepspeed":
        raise _Problem(("spec", "strategy"), "deepspeed needs GPUs; with gpuType cpu use auto or ddp")
    per_step = t.per_device_batch_size * s.world_size
    if t.global_batch_size is not None and t.global_batch_size % per_step:
        raise _Problem(
            ("spec", "training", "globalBatchSize"),
            f"{t.global_batch_size} is not a multiple of perDeviceBatchSize x nodes x gpusPerNode "
            f"= {per_step}; "
            f"use e.g. {max(per_step, t.global_batch_size // per_step * per_step)}",
        )
    _check_model(s)


def _check_model(s: TrainingRunSpec) -> None:
    if s.model.facts is None and find_model(s.model.name) is None:
        raise _Problem(
            ("spec", "model", "name"),
            f"{s.model.name!r} is not in the catalog; use one of {', '.join(MODELS)}, "
            "or give its architecture in spec.model.facts",
        )
    facts = resolve_model(s)
    modules = facts.module_names()
    targets = s.lora.target_modules
    special = {"auto", "all-linear"}
    if any(t in special for t in targets) and len(targets) > 1:
        raise _Problem(
            ("spec", "lora", "targetModules"),
            "auto and all-linear stand alone; give [auto], [all-linear] or module names",
        )
    for i, name in enumerate(targets):
        if name not in special and name not in modules:
            raise _Problem(
                ("spec", "lora", "targetModules", i),
                f"{name!r} is not a module of {facts.family} ({facts.id}); "
                f"allowed: {', '.join(modules)}, auto, all-linear",
            )
    if s.training.max_seq_length > facts.context:
        raise _Problem(
            ("spec", "training", "maxSeqLength"),
            f"{s.training.max_seq_length} is above {facts.id or s.model.name}'s context "
            f"of {facts.context} tokens; "
            f"use at most {facts.context}",
        )


def _alias(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def resolved_lora_targets(run: TrainingRun | TrainingRunSpec) -> list[str]:
    """The module names LoRA adapts: the catalog's for [auto], every linear module for [all-linear]."""
    spec = run.spec if isinstance(run, TrainingRun) else run
    facts = resolve_model(spec)
    targets = spec.lora.target_modules
    if targets == ["auto"]:
        return facts.default_lora_targets
    if targets == ["all-linear"]:
        return facts.module_names()
    return list(targets)
