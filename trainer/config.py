"""The trainer's configuration: one pydantic-settings object, no torch.

Sources, lowest to highest precedence: a YAML/JSON file (what the operator mounts from the
ConfigMap), environment variables ``TAC2SOL_*`` (nested with ``__``, e.g.
``TAC2SOL_TRAINING__LEARNING_RATE=1e-4``), then CLI flags (passed as init arguments).

The operator renders this object from a TrainingRun and its plan
(the operator imports this module; this module never imports the operator). Fields that a
TrainingRun also has are declared with the shared types of :mod:`tac2sol.trainer.hparams`.
"""

from __future__ import annotations

import contextvars
import logging
import os
import posixpath
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from tac2sol.trainer import hparams as hp

log = logging.getLogger(__name__)

_S = TypeVar("_S", bound=BaseModel)
Precision = Literal["fp16", "bf16", "fp32"]
Strategy = Literal["single", "ddp", "deepspeed"]
# Where a download lands when data.uri is given without data.path (under output_dir).
DATA_SOURCE_DIR = Path("data") / "source"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSection(_Section):
    name_or_path: str = Field(description="Hugging Face hub id or a local directory with config + weights.")
    revision: hp.Revision
    gguf_file: hp.GgufFile
    family: str | None = Field(None, description="Architecture family from the catalog (llama, qwen2, ...).")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="LoRA target module names, or 'all-linear'."
    )
    trust_remote_code: bool = False
    tokenizer: str | None = Field(None, description="Tokenizer path or id when it differs from the model.")


def uri_basename(uri: str) -> str:
    """The file name a URI names (query and fragment aside), or '' when it names a directory."""
    return posixpath.basename(urlsplit(uri).path)


class DataSection(_Section):
    path: Path | None = Field(
        None,
        description="JSONL file with input (TAC), output (Solidity) and metadata per line; with uri, where "
        "the download lands (default <output_dir>/data/source/<file name of the uri>).",
    )
    uri: hp.DataUri
    validation_ratio: hp.ValidationRatio
    split_seed: hp.SplitSeed
    drop_artifact_rows: hp.DropArtifactRows
    on_bad_line: hp.OnBadLine
    max_seq_length: hp.MaxSeqLength
    max_rows: hp.MaxRows
    truncation: Literal["drop", "truncate_input"] = Field(
        "drop",
        description="A row longer than max_seq_length is rejected (drop) or its TAC end is cut "
        "(truncate_input); the Solidity completion is never cut.",
    )
    cache_dir: Path | None = Field(None, description="Tokenization cache; default <output>/cache.")
    _path_from_uri: bool = PrivateAttr(False)  # path derived by TrainConfig: not written back

    @model_validator(mode="after")
    def _path_or_uri(self) -> DataSection:
        if self.path is None and self.uri is None:
            raise ValueError(
                "give data.path (a local JSONL file) or data.uri (https://, s3://, gs:// or hf:// to "
                "download)"
            )
        if self.uri is not None and self.path is None and not uri_basename(self.uri):
            raise ValueError(
                f"data.uri {self.uri!r} names no file (it ends with '/'); give the file's URI, "
                "or set data.path to say where the download goes"
            )
        return self

    @property
    def file(self) -> Path:
        """The local JSONL file (for a uri, where the download lands). Set once TrainConfig is built."""
        if self.path is None:
            raise ValueError("data.path is resolved by TrainConfig; build the section through it")
        return self.path


class TrainingSection(_Section):
    epochs: hp.Epochs
    max_steps: hp.MaxSteps
    learning_rate: hp.LearningRate
    lr_scheduler: hp.Scheduler
    warmup_ratio: hp.WarmupRatio
    weight_decay: hp.WeightDecay
    max_grad_norm: hp.MaxGradNorm
    per_device_batch_size: hp.PerDeviceBatchSize
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="Micro-steps per optimizer step (the plan's)."
    )
    gradient_checkpointing: hp.GradientCheckpointing
    seed: hp.Seed
    logging_steps: hp.LoggingSteps
    eval_steps: hp.EvalSteps
    save_steps: hp.SaveSteps
    save_total_limit: hp.SaveTotalLimit
    dataloader_workers: int = Field(0, ge=0)
    batching: hp.Batching
    fused_cross_entropy: hp.FusedCrossEntropy
    cpu_threads: int | None = Field(
        None,
        ge=1,
        description="torch intra-op threads when training on a CPU; None: torch's default (one per core). "
        "Tiny models train several times faster with 1 (less threading overhead, no spinning "
        "against other processes).",
    )
    save_merged_model: bool = Field(
        False, description="Also save base + LoRA merged into one model (only with quantization 'none')."
    )
    termination_grace_seconds: float = Field(
        120.0,
        gt=0,
        le=3600,
        description="On SIGTERM (preemption, eviction, drain, pod deletion) finish the optimizer step, "
        "save a checkpoint and exit 143 within this many seconds (tac2sol.trainer.preemption); the pod's "
        "terminationGracePeriodSeconds must be longer.",
    )


class LoraSection(_Section):
    r: hp.LoraRank
    alpha: hp.LoraAlpha
    dropout: hp.LoraDropout


class DistributedSection(_Section):
    """The planner's decisions; the trainer applies them and refuses what it cannot honour."""

    strategy: Strategy = "single"
    zero_stage: Literal[0, 1, 2, 3] | None = None
    offload_optimizer: bool = False
    offload_params: bool = False
    precision: Precision = "fp32"
    gpu_type: str | None = Field(None, description="GPU catalog key the plan was made for.")
    expected_world_size: int | None = Field(None, ge=1)
    per_gpu_memory_bytes: int | None = Field(None, description="The planner's per-GPU estimate.")
    model_hidden_size: int | None = Field(
        None, ge=1, description="Model hidden size from the catalog; scales DeepSpeed bucket sizes."
    )
    deepspeed_config: Path | None = Field(
        None,
        description="A ds_config.json to use as it is (the operator renders one into the ConfigMap); "
        "None: generate it from this section (tac2sol.trainer.deepspeed_config).",
    )

    @model_validator(mode="after")
    def _stage_only_with_deepspeed(self) -> DistributedSection:
        if self.strategy == "deepspeed" and self.zero_stage is None:
            raise ValueError("distributed.zero_stage is required when distributed.strategy is 'deepspeed'")
        if self.strategy != "deepspeed" and self.zero_stage is not None:
            raise ValueError("distributed.zero_stage is only allowed with distributed.strategy 'deepspeed'")
        return self


class EvalSection(_Section):
    enabled: hp.EvalEnabled
    max_new_tokens: hp.MaxNewTokens
    batch_size: hp.EvalBatchSize
    max_samples: hp.MaxSamples
    num_beams: hp.NumBeams
    base_model: hp.EvalBaseModel
    test_set: Path | None = Field(
        None,
        description="A fixed test set (JSONL like the data) evaluated besides the held-out split, so runs "
        "trained on other data or seeds meet on the same rows; with test_set_uri, where the download lands "
        "(default <output_dir>/data/test-set/<file name of the uri>).",
    )
    test_set_uri: hp.TestSetUri


class MetricsSection(_Section):
    enabled: bool = True
    host: str = Field(
        "127.0.0.1",
        description="Address /metrics listens on: loopback unless told otherwise (a local run); pods set "
        "0.0.0.0 so Prometheus can scrape the pod IP (the operator's rendered config does).",
    )
    port: int = Field(
        9400,
        ge=0,
        le=65535,
        description="Base port; each rank serves on port + local rank; 0: a free port each.",
    )
    gpu_peak_flops: float | None = Field(
        None,
        gt=0,
        description="Dense peak FLOP/s of one GPU in the training precision (the operator sets it from the "
        "GPU catalog); enables the MFU estimate. None: no MFU series.",
    )
    linger_seconds: float = Field(
        0.0, ge=0, le=600, description="Keep serving /metrics this long after the run ends (a last scrape)."
    )


def _defaults(section: type[_S]) -> Callable[[], _S]:
    """A factory of ``section`` with every default. (pydantic's mypy plugin does not see defaults
    given inside the Annotated types of :mod:`tac2sol.trainer.hparams`, so it flags ``Section()``.)"""
    return lambda: section.model_validate({})


class TrainConfig(BaseSettings):
    """Everything ``tac2sol train`` needs; saved beside the run as part of ``run.json``."""

    model_config = SettingsConfigDict(
        env_prefix="TAC2SOL_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    run_name: str = Field("tac2sol", description="Names the run in metrics and manifests.")
    output_dir: Path = Field(Path("out"), description="Checkpoints, adapter, reports.")
    resume: str = Field("auto", description="'auto', 'never', 'required', or a checkpoint path.")
    env_overrides: bool = Field(
        True,
        description="TAC2SOL_* environment variables override the file (a local run). The operator's "
        "rendered config says false: a pod's environment, which a user's Secret fills "
        "(spec.dataset.credentialsSecret), never changes what was planned.",
    )
    quantization: hp.Quantization
    model: ModelSection
    data: DataSection
    training: TrainingSection = Field(default_factory=_defaults(TrainingSection))
    lora: LoraSection = Field(default_factory=_defaults(LoraSection))
    distributed: DistributedSection = Field(default_factory=DistributedSection)
    evaluation: EvalSection = Field(default_factory=_defaults(EvalSection))
    metrics: MetricsSection = Field(default_factory=MetricsSection)

    @model_validator(mode="after")
    def _download_target(self) -> TrainConfig:
        """data.uri without data.path downloads to <output_dir>/data/source/<file name>."""
        if self.data.path is None and self.data.uri is not None:
            self.data.path = Path(self.output_dir) / DATA_SOURCE_DIR / uri_basename(self.data.uri)
            self.data._path_from_uri = True
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        if (_FILE_VALUES.get() or {}).get("env_overrides") is False:
            return (init_settings, _FileSource(settings_cls))
        return (init_settings, env_settings, _FileSource(settings_cls))

    @classmethod
    def from_file(cls, path: str | Path | None = None, **overrides: Any) -> TrainConfig:
        """Load ``path`` (YAML or JSON), then environment (unless the file sets ``env_overrides:
        false``), then ``overrides`` (CLI flags)."""
        values: dict[str, Any] = {}
        if path is not None:
            values = load_config_file(path)
            if values.get("env_overrides") is False:
                _warn_ignored_environment()
        token = _FILE_VALUES.set(values)
        try:
            return cls(**overrides)
        finally:
            _FILE_VALUES.reset(token)

    def dump_yaml(self) -> str:
        """The config as YAML; a data.path derived from data.uri is left out (it follows output_dir)."""
        values = self.model_dump(mode="json")
        if self.data._path_from_uri:
            values["data"].pop("path")
        # libyaml's emitter when present: the same text, ~4x faster (the operator renders one per run).
        return yaml.dump(values, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dict, with a clear error naming the file."""
    from tac2sol.errors import InvalidInput

    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise InvalidInput(f"{p}: cannot read config file ({exc.strerror}); check the path") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{p}: not valid YAML/JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"{p}: expected a mapping of config sections at the top level")
    return data


def _warn_ignored_environment() -> None:
    prefix = "TAC2SOL_"
    ignored = sorted(
        k
        for k in os.environ
        if k.startswith(prefix) and k[len(prefix) :].lower().split("__")[0] in TrainConfig.model_fields
    )
    if ignored:
        log.warning(
            "ignoring %s: this config sets env_overrides false (the operator's plan is what runs)",
            ", ".join(ignored),
        )


_FILE_VALUES: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "_FILE_VALUES", default=None
)


class _FileSource(PydanticBaseSettingsSource):
    """The lowest-precedence source: values read by ``TrainConfig.from_file``."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        values = _FILE_VALUES.get() or {}
        return values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_FILE_VALUES.get() or {})
