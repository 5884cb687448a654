"""Model and GPU catalogs: the facts the planner needs, checked against model cards and configs.

The entries are data, in ``catalog.yaml`` beside this module (each model number from the
model's ``config.json`` on the Hugging Face hub, ``source``, and its model card; the file says
which numbers of the user's design doc were wrong). This module holds their types and arithmetic.

Parameter counts are not trusted blindly: :func:`linear_shapes` rebuilds every linear layer from
the architecture facts and ``tests/operator/test_catalog.py`` checks that the sum matches the
published count within 2%.

A model that is not in the catalog is given in a TrainingRun by its facts
(``spec.model.facts``); :func:`tac2sol.operator.resolve.resolve_model` returns them.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Literal

import yaml
from pydantic import Field, model_validator
from pydantic.alias_generators import to_camel

from tac2sol.operator.apimodel import ApiModel

Family = Literal["llama", "mistral", "qwen2", "starcoder2", "phi3", "deepseek_v2", "deepseek_v3"]
FAMILIES: tuple[str, ...] = ("llama", "mistral", "qwen2", "starcoder2", "phi3", "deepseek_v2", "deepseek_v3")


class ModelFacts(ApiModel):
    """Architecture facts of one model (from its config.json), enough to plan memory and LoRA."""

    id: str = Field(
        "",
        max_length=256,
        description="Hugging Face hub id (or a local directory) the weights are loaded from.",
    )
    family: Family = Field(description="Architecture family; decides the module names LoRA can adapt.")
    params: int | None = Field(
        None,
        ge=1,
        description="Total parameters as published; computed from the shapes when omitted.",
    )
    active_params: int | None = Field(
        None, ge=1, description="Parameters used per token (mixture-of-experts models only)."
    )
    layers: int = Field(ge=1, le=1024, description="Decoder layers (num_hidden_layers).")
    hidden: int = Field(ge=8, le=65536, description="Hidden size (hidden_size).")
    intermediate: int = Field(ge=8, le=262144, description="MLP width of a dense layer (intermediate_size).")
    vocab: int = Field(ge=2, le=1048576, description="Vocabulary size (vocab_size).")
    heads: int = Field(ge=1, le=1024, description="Attention heads (num_attention_heads).")
    kv_heads: int = Field(
        ge=1, le=1024, description="Key/value heads (num_key_value_heads; GQA when < heads)."
    )
    head_dim: int | None = Field(None, ge=1, le=4096, description="Per-head size; default hidden / heads.")
    context: int = Field(
        ge=16,
        le=10_000_000,
        description="Longest sequence the shipped config supports (max_position_embeddings).",
    )
    embeddings_tied: bool = Field(False, description="The lm_head shares the input embedding matrix.")
    licence: str = Field("unknown", max_length=128, description="Licence of the weights.")
    licence_note: str | None = Field(
        None, max_length=512, description="What the licence restricts, when it is not a permissive one."
    )
    lora_targets: list[str] | None = Field(
        None,
        max_length=32,
        description="Default LoRA target modules ('auto'); default: every linear module of the family.",
        json_schema_extra={"items": {"type": "string", "minLength": 1, "maxLength": 64}},
    )
    trust_remote_code: bool = Field(False, description="Loading needs the model repository's own code.")
    # Mixture of experts (DeepSeek-V2/V3 style): the first `dense_layers` layers have a dense MLP.
    experts: int | None = Field(None, ge=1, le=4096, description="Routed experts per MoE layer.")
    experts_per_token: int | None = Field(None, ge=1, le=4096, description="Routed experts used per token.")
    shared_experts: int = Field(0, ge=0, le=64, description="Always-on shared experts per MoE layer.")
    moe_intermediate: int | None = Field(None, ge=1, le=262144, description="MLP width of one expert.")
    dense_layers: int = Field(0, ge=0, le=1024, description="Leading layers with a dense MLP (MoE models).")
    # Multi-head latent attention (DeepSeek-V2/V3).
    q_lora_rank: int | None = Field(
        None, ge=1, description="MLA query compression rank (None: plain q_proj)."
    )
    kv_lora_rank: int | None = Field(None, ge=1, description="MLA key/value compression rank.")
    qk_nope_head_dim: int | None = Field(None, ge=1, description="MLA per-head size without rotary part.")
    qk_rope_head_dim: int | None = Field(None, ge=1, description="MLA per-head rotary size.")
    v_head_dim: int | None = Field(None, ge=1, description="MLA per-head value size.")
    source: str | None = Field(None, max_length=512, description="Where these facts come from.")

    @model_validator(mode="after")
    def _consistent(self) -> ModelFacts:
        if self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kvHeads ({self.kv_heads})")
        if self.family in ("deepseek_v2", "deepseek_v3"):
            missing = [
                n
                for n in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
                if getattr(self, n) is None
            ]
            if missing:
                names = ", ".join(to_camel(n) for n in missing)
                raise ValueError(f"family {self.family} (multi-head latent attention) needs {names}")
        if self.experts is not None and (self.moe_intermediate is None or self.experts_per_token is None):
            raise ValueError(
                "a mixture-of-experts model (experts set) needs moeIntermediate and expertsPerToken"
            )
        if self.dense_layers > self.layers:
            raise ValueError(f"denseLayers ({self.dense_layers}) cannot exceed layers ({self.layers})")
        if self.lora_targets is not None:
            unknown = sorted(set(self.lora_targets) - set(self.module_names()))
            if unknown:
                raise ValueError(
                    f"loraTargets {unknown} are not modules of family {self.family}; "
                    f"allowed: {', '.join(self.module_names())}"
                )
        return self

    # --- derived facts -------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.experts is not None

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def total_params(self) -> int:
        """Published parameter count, or the count rebuilt from the shapes."""
        return self.params or computed_params(self)

    @property
    def default_lora_targets(self) -> list[str]:
        return list(self.lora_targets) if self.lora_targets else list(self.module_names())

    @property
    def mlp_width_per_token(self) -> int:
        """Widest MLP a token passes through (dense layer, or its routed + shared experts)."""
        if not self.is_moe:
            return self.intermediate
        assert self.moe_intermediate is not None and self.experts_per_token is not None
        moe = self.moe_intermediate * (self.experts_per_token + self.shared_experts)
        return max(moe, self.intermediate if self.dense_layers else 0)

    def module_names(self) -> list[str]:
        """Names of the linear modules of one decoder layer (what peft's target_modules match)."""
        return list(dict.fromkeys(s.name for s in linear_shapes(self)))


@dataclass(frozen=True)
class LinearShape:
    """``count`` matrices named ``name`` of shape in_features x out_features across the model."""

    name: str
    in_features: int
    out_features: int
    count: int

    @property
    def params(self) -> int:
        return self.in_features * self.out_features * self.count


def linear_shapes(f: ModelFacts) -> list[LinearShape]:
    """Every linear layer inside the decoder layers (not embeddings or lm_head), by module name."""
    h, n = f.hidden, f.layers
    out: list[LinearShape] = []
    # Attention.
    if f.family in ("deepseek_v2", "deepseek_v3"):
        assert f.kv_lora_rank and f.qk_nope_head_dim and f.qk_rope_head_dim and f.v_head_dim
        qk = f.qk_nope_head_dim + f.qk_rope_head_dim
        if f.q_lora_rank:
            out += [
                LinearShape("q_a_proj", h, f.q_lora_rank, n),
                LinearShape("q_b_proj", f.q_lora_rank, f.heads * qk, n),
            ]
        else:
            out.append(LinearShape("q_proj", h, f.heads * qk, n))
        out += [
            LinearShape("kv_a_proj_with_mqa", h, f.kv_lora_rank + f.qk_rope_head_dim, n),
            LinearShape("kv_b_proj", f.kv_lora_rank, f.heads * (f.qk_nope_head_dim + f.v_head_dim), n),
            LinearShape("o_proj", f.heads * f.v_head_dim, h, n),
        ]
    else:
        q, kv = f.heads * f.dim_per_head, f.kv_heads * f.dim_per_head
        if f.family == "phi3":
            out.append(LinearShape("qkv_proj", h, q + 2 * kv, n))
        else:
            out += [
                LinearShape("q_proj", h, q, n),
                LinearShape("k_proj", h, kv, n),
                LinearShape("v_proj", h, kv, n),
            ]
        out.append(LinearShape("o_proj", q, h, n))
    # MLP.
    if f.family == "starcoder2":
        out += [LinearShape("c_fc", h, f.intermediate, n), LinearShape("c_proj", f.intermediate, h, n)]
    elif f.family == "phi3":
        out += [
            LinearShape("gate_up_proj", h, 2 * f.intermediate, n),
            LinearShape("down_proj", f.intermediate, h, n),
        ]
    elif f.is_moe:
        assert f.experts and f.moe_intermediate
        moe_layers = n - f.dense_layers
        # Dense layers, then per MoE layer: routed experts + one shared MLP of width moe * shared.
        mats = [(f.intermediate, f.dense_layers), (f.moe_intermediate, moe_layers * f.experts)]
        if f.shared_experts:
            mats.append((f.moe_intermediate * f.shared_experts, moe_layers))
        for width, count in mats:
            if count:
                out += [
                    LinearShape("gate_proj", h, width, count),
                    LinearShape("up_proj", h, width, count),
                    LinearShape("down_proj", width, h, count),
                ]
    else:
        out += [
            LinearShape("gate_proj", h, f.intermediate, n),
            LinearShape("up_proj", h, f.intermediate, n),
            LinearShape("down_proj", f.intermediate, h, n),
        ]
    return out


def embedding_params(f: ModelFacts) -> int:
    """Input embedding plus lm_head (once when tied): kept in 16-bit by QLoRA."""
    return f.vocab * f.hidden * (1 if f.embeddings_tied else 2)


def computed_params(f: ModelFacts) -> int:
    """Parameters rebuilt from the shapes (linear layers + embeddings; norms and biases are < 0.1%)."""
    router = (f.layers - f.dense_layers) * (f.experts or 0) * f.hidden if f.is_moe else 0
    return sum(s.params for s in linear_shapes(f)) + embedding_params(f) + router


def lora_trainable_params(f: ModelFacts, targets: list[str], r: int) -> int:
    """LoRA adds A (in x r) and B (r x out) to every adapted matrix: r * (in + out) each."""
    wanted = set(targets)
    return sum(r * (s.in_features + s.out_features) * s.count for s in linear_shapes(f) if s.name in wanted)


class GpuType(ApiModel):
    """One accelerator model: what decides precision, memory and how many share a node."""

    name: str = Field(description="Marketing name.")
    memory_bytes: int = Field(ge=1, description="Device memory (marketed capacity, binary units).")
    compute_capability: str | None = Field(
        None, description="CUDA compute capability (sm_XY as 'X.Y'); None on CPU."
    )
    bf16: bool = Field(description="bf16 tensor cores (sm_80+): training runs in bf16.")
    fp16_tensor_cores: bool = Field(description="fp16 tensor cores (sm_70+).")
    flash_attention2: bool = Field(False, description="FlashAttention-2 kernels exist for this architecture.")
    peak_fp16_tflops: float | None = Field(
        None, description="Dense fp16 tensor throughput from the datasheet."
    )
    max_per_node: int = Field(ge=1, description="Most devices one node (server) of this kind holds.")
    nvlink_group: int = Field(
        1, ge=1, description="Devices joined by NVLink (2: bridge pairs, 8: NVSwitch, 1: PCIe only)."
    )
    product_label: str | None = Field(
        None, description="Typical nvidia.com/gpu.product node label (GPU feature discovery)."
    )

    @property
    def is_cpu(self) -> bool:
        return self.compute_capability is None

    @property
    def sm(self) -> tuple[int, int] | None:
        if self.compute_capability is None:
            return None
        major, minor = self.compute_capability.split(".")
        return int(major), int(minor)


def _load() -> tuple[dict[str, ModelFacts], dict[str, GpuType]]:
    """The catalog data (``catalog.yaml``), validated into the models above."""
    data = yaml.safe_load(resources.files("tac2sol.operator").joinpath(CATALOG_FILE).read_text())
    models = {key: ModelFacts.model_validate(facts) for key, facts in data["models"].items()}
    gpus = {key: GpuType.model_validate(gpu) for key, gpu in data["gpus"].items()}
    return models, gpus


CATALOG_FILE = "catalog.yaml"
MODELS, GPUS = _load()


class UnknownModel(LookupError):
    """Neither a catalog key, a catalog hub id, nor given with facts."""


def find_model(name: str) -> tuple[str, ModelFacts] | None:
    """A catalog entry by key (``qwen2.5-coder-32b``) or hub id (``Qwen/Qwen2.5-Coder-32B``)."""
    if name in MODELS:
        return name, MODELS[name]
    lowered = name.lower()
    for key, facts in MODELS.items():
        if facts.id.lower() == lowered:
            return key, facts
    return None
