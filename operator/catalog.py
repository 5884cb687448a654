"""Model and GPU catalogs: the facts the planner needs, checked against model cards and configs.

Every model number below comes from the model's ``config.json`` on the Hugging Face hub (``source``)
and its model card. The user's design doc has several of them wrong; ARCHITECTURE.md lists the
corrections (DeepSeek-Coder-V2-Lite is a 16B MoE, StarCoder2 has no 33B and no ``c_attn``,
Qwen2.5-Coder-32B ships a 32K context, Codestral is under a non-production licence, ...).

Parameter counts are not trusted blindly: :func:`linear_shapes` rebuilds every linear layer from
the architecture facts and ``tests/operator/test_catalog.py`` checks that the sum matches the
published count within 2%.

A model that is not in the catalog is given in a TrainingRun by its facts
(``spec.model.facts``); :func:`tac2sol.operator.resolve.resolve_model` returns them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, model_validator
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
                names = ", ".join(_camel(n) for n in missing)
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


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


_LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
_LLAMA3 = (
    "Llama 3 community licence: gated download; products above 700M monthly users need Meta's permission"
)

MODELS: dict[str, ModelFacts] = {
    "llama-3.2-3b": ModelFacts(
        id="meta-llama/Llama-3.2-3B",
        family="llama",
        params=3_212_749_824,
        layers=28,
        hidden=3072,
        intermediate=8192,
        vocab=128256,
        heads=24,
        kv_heads=8,
        context=131072,
        embeddings_tied=True,
        licence="llama3.2",
        licence_note=_LLAMA3.replace("Llama 3", "Llama 3.2") + "; acceptable-use policy applies",
        source="https://huggingface.co/meta-llama/Llama-3.2-3B/blob/main/config.json",
    ),
    "llama-3.1-8b": ModelFacts(
        id="meta-llama/Llama-3.1-8B",
        family="llama",
        params=8_030_261_248,
        layers=32,
        hidden=4096,
        intermediate=14336,
        vocab=128256,
        heads=32,
        kv_heads=8,
        context=131072,
        licence="llama3.1",
        licence_note=_LLAMA3.replace("Llama 3", "Llama 3.1"),
        source="https://huggingface.co/meta-llama/Llama-3.1-8B/blob/main/config.json",
    ),
    "llama-3.1-70b": ModelFacts(
        id="meta-llama/Llama-3.1-70B",
        family="llama",
        params=70_553_706_496,
        layers=80,
        hidden=8192,
        intermediate=28672,
        vocab=128256,
        heads=64,
        kv_heads=8,
        context=131072,
        licence="llama3.1",
        licence_note=_LLAMA3.replace("Llama 3", "Llama 3.1"),
        source="https://huggingface.co/meta-llama/Llama-3.1-70B/blob/main/config.json",
    ),
    "codellama-34b": ModelFacts(
        id="codellama/CodeLlama-34b-hf",
        family="llama",
        params=33_743_970_304,
        layers=48,
        hidden=8192,
        intermediate=22016,
        vocab=32000,
        heads=64,
        kv_heads=8,
        context=16384,
        licence="llama2",
        licence_note="Llama 2 community licence: products above 700M monthly users need Meta's permission",
        source="https://huggingface.co/codellama/CodeLlama-34b-hf/blob/main/config.json",
    ),
    "qwen2.5-coder-32b": ModelFacts(
        id="Qwen/Qwen2.5-Coder-32B",
        family="qwen2",
        params=32_763_876_352,
        layers=64,
        hidden=5120,
        intermediate=27648,
        vocab=152064,
        heads=40,
        kv_heads=8,
        # The shipped config says 32768; 131072 needs YaRN rope scaling added to the config.
        context=32768,
        licence="apache-2.0",
        source="https://huggingface.co/Qwen/Qwen2.5-Coder-32B/blob/main/config.json",
    ),
    "qwen2.5-72b": ModelFacts(
        id="Qwen/Qwen2.5-72B",
        family="qwen2",
        params=72_706_203_648,
        layers=80,
        hidden=8192,
        intermediate=29568,
        vocab=152064,
        heads=64,
        kv_heads=8,
        context=131072,
        licence="qwen",
        licence_note=(
            "Qwen licence agreement: products above 100M monthly users need Alibaba Cloud's permission"
        ),
        source="https://huggingface.co/Qwen/Qwen2.5-72B/blob/main/config.json",
    ),
    "deepseek-coder-33b": ModelFacts(
        id="deepseek-ai/deepseek-coder-33b-instruct",
        family="llama",
        params=33_340_000_000,
        layers=62,
        hidden=7168,
        intermediate=19200,
        vocab=32256,
        heads=56,
        kv_heads=8,
        context=16384,
        licence="deepseek",
        licence_note="DeepSeek model licence: commercial use allowed, with use-based restrictions",
        source="https://huggingface.co/deepseek-ai/deepseek-coder-33b-instruct/blob/main/config.json",
    ),
    "deepseek-coder-v2-lite": ModelFacts(
        id="deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct",
        family="deepseek_v2",
        params=15_706_484_224,
        active_params=2_400_000_000,
        layers=27,
        hidden=2048,
        intermediate=10944,
        vocab=102400,
        heads=16,
        kv_heads=16,
        context=163840,
        licence="deepseek",
        licence_note="DeepSeek model licence: commercial use allowed, with use-based restrictions",
        trust_remote_code=True,
        experts=64,
        experts_per_token=6,
        shared_experts=2,
        moe_intermediate=1408,
        dense_layers=1,
        kv_lora_rank=512,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
        lora_targets=[
            "q_proj",
            "kv_a_proj_with_mqa",
            "kv_b_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        source="https://huggingface.co/deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct/blob/main/config.json",
    ),
    "deepseek-v3": ModelFacts(
        id="deepseek-ai/DeepSeek-V3",
        family="deepseek_v3",
        params=671_000_000_000,
        active_params=37_000_000_000,
        layers=61,
        hidden=7168,
        intermediate=18432,
        vocab=129280,
        heads=128,
        kv_heads=128,
        context=163840,
        licence="deepseek",
        licence_note="DeepSeek model licence: commercial use allowed, with use-based restrictions",
        trust_remote_code=True,
        experts=256,
        experts_per_token=8,
        shared_experts=1,
        moe_intermediate=2048,
        dense_layers=3,
        q_lora_rank=1536,
        kv_lora_rank=512,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
        # Adapting every expert would train ~1% of 671B; attention only keeps LoRA small.
        lora_targets=["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"],
        source="https://huggingface.co/deepseek-ai/DeepSeek-V3/blob/main/config.json",
    ),
    "codestral-22b": ModelFacts(
        id="mistralai/Codestral-22B-v0.1",
        family="mistral",
        params=22_247_282_688,
        layers=56,
        hidden=6144,
        intermediate=16384,
        vocab=32768,
        heads=48,
        kv_heads=8,
        context=32768,
        licence="mnpl-0.1",
        licence_note="Mistral AI Non-Production License: research and testing only, no commercial use",
        source="https://huggingface.co/mistralai/Codestral-22B-v0.1/blob/main/config.json",
    ),
    "starcoder2-3b": ModelFacts(
        id="bigcode/starcoder2-3b",
        family="starcoder2",
        params=3_030_371_328,
        layers=30,
        hidden=3072,
        intermediate=12288,
        vocab=49152,
        heads=24,
        kv_heads=2,
        context=16384,
        embeddings_tied=True,
        licence="bigcode-openrail-m",
        licence_note="BigCode OpenRAIL-M: use-based restrictions travel with the weights and derivatives",
        source="https://huggingface.co/bigcode/starcoder2-3b/blob/main/config.json",
    ),
    "starcoder2-7b": ModelFacts(
        id="bigcode/starcoder2-7b",
        family="starcoder2",
        params=7_173_923_840,
        layers=32,
        hidden=4608,
        intermediate=18432,
        vocab=49152,
        heads=36,
        kv_heads=4,
        context=16384,
        embeddings_tied=True,
        licence="bigcode-openrail-m",
        licence_note="BigCode OpenRAIL-M: use-based restrictions travel with the weights and derivatives",
        source="https://huggingface.co/bigcode/starcoder2-7b/blob/main/config.json",
    ),
    "starcoder2-15b": ModelFacts(
        id="bigcode/starcoder2-15b",
        family="starcoder2",
        params=15_957_889_024,
        layers=40,
        hidden=6144,
        intermediate=24576,
        vocab=49152,
        heads=48,
        kv_heads=4,
        context=16384,
        licence="bigcode-openrail-m",
        licence_note="BigCode OpenRAIL-M: use-based restrictions travel with the weights and derivatives",
        source="https://huggingface.co/bigcode/starcoder2-15b/blob/main/config.json",
    ),
    "phi-3-medium": ModelFacts(
        id="microsoft/Phi-3-medium-4k-instruct",
        family="phi3",
        params=13_960_238_080,
        layers=40,
        hidden=5120,
        intermediate=17920,
        vocab=32064,
        heads=40,
        kv_heads=10,
        context=4096,
        licence="mit",
        source="https://huggingface.co/microsoft/Phi-3-medium-4k-instruct/blob/main/config.json",
    ),
}


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


_GiB = 1024**3

GPUS: dict[str, GpuType] = {
    "rtx8000": GpuType(
        name="NVIDIA Quadro RTX 8000",
        memory_bytes=48 * _GiB,
        compute_capability="7.5",
        bf16=False,
        fp16_tensor_cores=True,
        peak_fp16_tflops=130.5,
        max_per_node=8,
        nvlink_group=2,
        product_label="Quadro-RTX-8000",
    ),
    "t4": GpuType(
        name="NVIDIA T4",
        memory_bytes=16 * _GiB,
        compute_capability="7.5",
        bf16=False,
        fp16_tensor_cores=True,
        peak_fp16_tflops=65.0,
        max_per_node=8,
        product_label="Tesla-T4",
    ),
    "v100-32": GpuType(
        name="NVIDIA V100 SXM2 32GB",
        memory_bytes=32 * _GiB,
        compute_capability="7.0",
        bf16=False,
        fp16_tensor_cores=True,
        peak_fp16_tflops=125.0,
        max_per_node=8,
        nvlink_group=8,
        product_label="Tesla-V100-SXM2-32GB",
    ),
    "a10g": GpuType(
        name="NVIDIA A10G",
        memory_bytes=24 * _GiB,
        compute_capability="8.6",
        bf16=True,
        fp16_tensor_cores=True,
        flash_attention2=True,
        peak_fp16_tflops=70.0,
        max_per_node=8,
        product_label="NVIDIA-A10G",
    ),
    "l4": GpuType(
        name="NVIDIA L4",
        memory_bytes=24 * _GiB,
        compute_capability="8.9",
        bf16=True,
        fp16_tensor_cores=True,
        flash_attention2=True,
        peak_fp16_tflops=121.0,
        max_per_node=8,
        product_label="NVIDIA-L4",
    ),
    "l40s": GpuType(
        name="NVIDIA L40S",
        memory_bytes=48 * _GiB,
        compute_capability="8.9",
        bf16=True,
        fp16_tensor_cores=True,
        flash_attention2=True,
        peak_fp16_tflops=362.0,
        max_per_node=8,
        product_label="NVIDIA-L40S",
    ),
    "a100-40": GpuType(
        name="NVIDIA A100 SXM4 40GB",
        memory_bytes=40 * _GiB,
        compute_capability="8.0",
        bf16=True,
        fp16_tensor_cores=True,
        flash_attention2=True,
        peak_fp16_tflops=312.0,
        max_per_node=8,
        nvlink_group=8,
        product_label="NVIDIA-A100-SXM4-40GB",
    ),
    "a100-80": GpuType(
        name="NVIDIA A100 SXM4 80GB",
        memory_bytes=80 * _GiB,
        compute_capability="8.0",
        bf16=True,
        fp16_tensor_cores=True,
        flash_attention2=True,
        peak_fp16_tflops=312.0,
        max_per_node=8,
        nvlink_group=8,
        product_label="NVIDIA-A100-SXM4-80GB",
    ),
    "h100-80": GpuType(
        name="NVIDIA H100 SXM5 80GB",
        memory_bytes=80 * _GiB,
        compute_capability="9.0",
        bf16=True,
        fp16_tensor_cores=True,
        flash_attention2=True,
        peak_fp16_tflops=989.0,
        max_per_node=8,
        nvlink_group=8,
        product_label="NVIDIA-H100-80GB-HBM3",
    ),
    # The local tour: no GPU, fp32, one process (or DDP over gloo). Memory is a laptop-sized
    # budget of host RAM, not a device.
    "cpu": GpuType(
        name="CPU (no accelerator)",
        memory_bytes=16 * _GiB,
        compute_capability=None,
        bf16=False,
        fp16_tensor_cores=False,
        max_per_node=64,
    ),
}


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
