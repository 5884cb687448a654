"""The memory planner: per-GPU memory of a QLoRA run, the cheapest layout that fits, and why.

Formula (bytes per device; ``b`` per-device batch, ``s`` sequence length, ``h`` hidden size,
``I`` MLP width a token passes through, ``L`` layers, ``V`` vocabulary, ``N`` world size,
``T`` LoRA trainable parameters):

* quantized weights: every linear layer of the decoder in NF4 with double quantization:
  4 bits + an 8-bit absmax per 64 weights + an fp32 scale per 256 absmax blocks
  = 4.127 bits = 0.516 B/param (Dettmers et al. 2023, "QLoRA", section 2; bitsandbytes
  ``Linear4bit``). ``quantization: none``: 2 B/param (4 on CPU, fp32).
* embeddings and lm_head stay 16-bit (``V x h`` each, once when tied): QLoRA does not quantize them;
  under QLoRA on a GPU ``prepare_model_for_kbit_training`` casts them (and the norms) to fp32,
  so the residual stream is fp32 too.
* LoRA state: A and B add ``r x (in + out)`` per adapted matrix (Hu et al. 2021). With torch AMP
  (single/DDP) the adapter is fp32: 4 (weight) + 4 (grad) + 8 (Adam m, v) = 16 B/param; DDP adds
  a 4 B/param gradient bucket. DeepSpeed fp16/bf16 keeps 2 B weights + 2 B grads plus 16 B of fp32
  master, fp32 grad and Adam state; ZeRO-2 shards the grads and the 16 B over N, ZeRO-3 shards the
  weights too (Rajbhandari et al. 2020, "ZeRO", figure 1).
* activations: what one decoder layer saves for backward, per token (``layer_saved_bytes_per_token``:
  LoRA inputs, norms, MLP, q/k/v) plus, for SDPA's math kernel (sm_7x with grouped-query
  attention), the ``b x heads x s^2`` fp32 probabilities; its backward holds two more of those.
  With checkpointing each layer keeps only its input and one layer is recomputed at a time.
* logits: at the loss's backward three fp32 ``b x s x V`` tensors are alive (12 B per logit), plus
  autocast's fp16 copy of an fp32 lm_head.
* ZeRO-3 gathers parameters module by module: two layers' quantized weights (for MoE only the
  experts one token uses) and the lm_head are resident at once (``stage3_prefetch_bucket_size``,
  ``stage3_max_live_parameters``).
* the peak is the persistent terms plus the larger of the "layer" and "loss" phases; outside
  torch's allocated bytes: the CUDA context, NCCL buffers and the allocator's reserve.

``tests/operator/test_planner_measured.py`` checks these terms against the real code path on CPU
(autograd's saved tensors of a real Qwen2 layer under peft; the attention's and the loss's
backward peaks tensor by tensor). ``tac2sol plan --explain`` prints every term with its inputs.

A layout fits when its estimate is at most 90% of device memory (10% headroom for spikes and the
driver), and offloaded state fits 90% of ``resources.hostMemory``. Anchors it is checked against
(``tests/operator/test_planner.py``): Qwen2.5-Coder-32B QLoRA at seq 4096, batch 1: about 30-33 GB
(design doc's table, ARCHITECTURE.md); Llama-2-70B QLoRA + ZeRO-3 on 2 GPUs, seq 2048, batch 2:
36.6 GB/GPU measured (PEFT docs, "DeepSpeed ZeRO-3 + QLoRA"); DeepSeek-V3 4-bit weights
~346 GB (ARCHITECTURE.md).

Order of preference (cheapest first): single process / DDP (40-60% faster than DeepSpeed for
small LoRA models, per the design doc), ZeRO-2, ZeRO-2 + optimizer offload, ZeRO-3, ZeRO-3 +
optimizer offload, ZeRO-3 + parameter offload.
"""

from __future__ import annotations

from dataclasses import dataclass

from tac2sol.errors import InvalidInput
from tac2sol.operator.catalog import (
    GPUS,
    MODELS,
    GpuType,
    ModelFacts,
    embedding_params,
    linear_shapes,
    lora_trainable_params,
)
from tac2sol.operator.plan import Candidate, Plan, PlanStrategy, PlanTerm
from tac2sol.operator.resolve import ResolvedRun, resolve
from tac2sol.operator.spec import TrainingRun
from tac2sol.operator.validation import accumulation_steps

__all__ = [
    "FIT_RULE",
    "KNOBS",
    "KNOB_NOTES",
    "PHASES",
    "TERM_KNOBS",
    "Plan",
    "estimate",
    "format_bytes",
    "format_count",
    "make_plan",
]

GiB = 1024**3
NF4_BYTES_PER_PARAM = (4 + 8 / 64 + 32 / (64 * 256)) / 8  # 0.516
HEADROOM = 0.90
TIGHT = 0.80
CUDA_CONTEXT = 1.0 * GiB
NCCL_BUFFERS = 0.25 * GiB
CPU_RUNTIME = 0.5 * GiB
FRAGMENTATION = 0.05
ZERO_BUCKET_ELEMENTS = 500_000_000  # DeepSpeed's default reduce/allgather bucket size


@dataclass(frozen=True)
class Layout:
    strategy: PlanStrategy
    zero_stage: int | None = None
    offload_optimizer: bool = False
    offload_params: bool = False

    def describe(self) -> str:
        if self.strategy != "deepspeed":
            return self.strategy
        extra = " + optimizer offload" if self.offload_optimizer else ""
        extra += " + parameter offload" if self.offload_params else ""
        return f"DeepSpeed ZeRO-{self.zero_stage}{extra}"


@dataclass(frozen=True)
class Term:
    """One line of the estimate: what allocates it, its formula, the numbers it used, its bytes."""

    name: str
    formula: str
    inputs: dict[str, float]
    bytes: int
    phase: str  # "persistent", "layer" (one layer's backward), "loss", "outside" (not torch-allocated)


@dataclass(frozen=True)
class Estimate:
    per_gpu: int
    host_per_node: int
    breakdown: dict[str, int]
    peak_allocated: int = 0
    terms: tuple[Term, ...] = ()
    attention_kernel: str = ""


def attention_kernel(facts: ModelFacts, gpu: GpuType) -> str:
    """The SDPA backend torch picks for the trainer's call (no padding: mask None, ``is_causal``).

    transformers passes ``enable_gqa=True`` when the mask is None and kv heads < heads. Flash needs
    sm_80+; torch's memory-efficient kernel refuses grouped-query inputs (heads != kv heads), so on
    sm_7x a GQA model falls back to the math kernel, which upcasts fp16 to fp32 and materialises the
    ``b x heads x s x s`` probabilities. CPU: the flash CPU kernel.
    """
    if gpu.is_cpu:
        return "flash-cpu"
    if gpu.flash_attention2:
        return "flash"
    return "math" if facts.kv_heads < facts.heads else "efficient"


def layer_saved_bytes_per_token(
    facts: ModelFacts, targets: list[str], residual: int, half: int, kernel: str, lora_dropout: bool
) -> tuple[float, dict[str, float]]:
    """Bytes one decoder layer saves for backward per token, without the ``s^2`` attention part."""
    h, q, kv = facts.hidden, facts.heads * facts.dim_per_head, facts.kv_heads * facts.dim_per_head
    width = facts.mlp_width_per_token
    wanted = set(targets)
    lora_in = sum(s.in_features * s.count for s in linear_shapes(facts) if s.name in wanted) / facts.layers
    if facts.is_moe:  # routed experts only see their tokens: one token passes experts_per_token of them
        lora_in = min(lora_in, 6 * h + 2 * width)
    per_lora_input = half + (1 if lora_dropout else 0)
    parts = {
        # peft: the 16-bit copy lora_A saves (autocast cast or dropout output) + dropout's bool mask.
        "loraInputs": per_lora_input * lora_in,
        # RMSNorm saves its fp32 input: the fp32 mid-layer residual, and a copy of a 16-bit one.
        "norms": 4 * h + (4 * h if residual != 4 else 0),
        # gate/up outputs and the activation, in the dtype bitsandbytes/linear return (the residual's).
        "mlp": (2 if facts.family == "starcoder2" else 3) * width * residual,
    }
    if kernel == "math":  # fp32 q, repeated k and v (heads x head_dim each)
        parts["attentionQkv"] = 3 * q * 4
    else:  # q, k, v, output in 16-bit
        parts["attentionQkv"] = (2 * q + 2 * kv) * half
    return sum(parts.values()), parts


def estimate(
    facts: ModelFacts,
    *,
    layout: Layout,
    gpu: GpuType,
    world: int,
    gpus_per_node: int,
    batch: int,
    seq: int,
    trainable: int,
    quantized: bool,
    checkpointing: bool,
    targets: list[str] | None = None,
    lora_dropout: bool = True,
    fused_cross_entropy: bool = False,
) -> Estimate:
    """Per-device bytes, term by term (see the module docstring for each term's code path)."""
    targets = facts.default_lora_targets if targets is None else targets
    half = 4 if gpu.is_cpu else 2  # bytes of a "16-bit" tensor; fp32 on CPU
    # prepare_model_for_kbit_training casts every non-4-bit parameter to fp32 (peft utils/other.py):
    # embeddings, lm_head and norms; the residual stream then stays fp32 through every layer.
    kbit = quantized and not gpu.is_cpu
    residual = 4 if kbit or gpu.is_cpu else 2
    linear = sum(s.params for s in linear_shapes(facts))
    emb = embedding_params(facts)
    w_per = NF4_BYTES_PER_PARAM if quantized else half
    w_bytes = linear * w_per
    e_per = 4 if kbit else half
    e_bytes = emb * e_per
    n = world
    ds = layout.strategy == "deepspeed"
    stage = layout.zero_stage or 0
    tokens = batch * seq
    terms: list[Term] = []
    host = 0.0

    def add(name: str, formula: str, inputs: dict[str, float], value: float, phase: str) -> None:
        terms.append(Term(name, formula, inputs, round(value), phase))

    # Base weights.
    if ds and stage == 3:
        if layout.offload_params:
            host += (w_bytes + e_bytes) / n * gpus_per_node
        else:
            add(
                "quantizedWeights",
                "linear params x B/param / N",
                {"linearParams": linear, "bytesPerParam": w_per, "N": n},
                w_bytes / n,
                "persistent",
            )
            add(
                "embeddings",
                "embedding params x B/param / N",
                {"embeddingParams": emb, "bytesPerParam": e_per, "N": n},
                e_bytes / n,
                "persistent",
            )
        gathered = 2 * _layer_working_params(facts) * w_per + facts.vocab * facts.hidden * e_per
        add(
            "zero3GatheredParams",
            "2 layers' weights + lm_head, gathered",
            {"bytes": gathered},
            gathered,
            "persistent",
        )
    else:
        add(
            "quantizedWeights",
            "linear params x B/param (NF4 + double quant, or 16-bit)",
            {"linearParams": linear, "bytesPerParam": w_per},
            w_bytes,
            "persistent",
        )
        add(
            "embeddings",
            "embedding (+ lm_head) params x B/param (fp32 after prepare_model_for_kbit_training)",
            {"embeddingParams": emb, "bytesPerParam": e_per},
            e_bytes,
            "persistent",
        )

    # LoRA weights, grads, optimizer.
    if not ds:
        add(
            "loraWeightsGradsOptimizer",
            "T x (4 weight + 4 grad + 8 Adam)",
            {"T": trainable},
            16 * trainable,
            "persistent",
        )
        if n > 1:
            add(
                "ddpGradientBuckets",
                "T x 4 (DDP reducer buckets)",
                {"T": trainable},
                4 * trainable,
                "persistent",
            )
    else:
        fp32_state = 16 * trainable
        weights16 = 2 * trainable / (n if stage == 3 else 1)
        grads16 = 2 * trainable / (n if stage >= 2 else 1)
        state = fp32_state / (n if stage >= 1 else 1)
        if layout.offload_optimizer:
            host += state * gpus_per_node
            state = 0
        add(
            "loraWeightsGradsOptimizer",
            "T x (2 + 2) 16-bit + T x 16 fp32 master/grad/Adam, sharded by ZeRO",
            {"T": trainable, "N": n, "stage": stage},
            weights16 + grads16 + state,
            "persistent",
        )
        if stage >= 2:
            add(
                "zeroCommBuckets",
                "2 x min(5e8, T) x 2 B",
                {"T": trainable},
                2 * min(ZERO_BUCKET_ELEMENTS, trainable) * half,
                "persistent",
            )

    # Activations.
    kernel = attention_kernel(facts, gpu)
    per_token, parts = layer_saved_bytes_per_token(facts, targets, residual, half, kernel, lora_dropout)
    probs = batch * facts.heads * seq * seq * 4 if kernel == "math" else 0.0
    layer_saved = tokens * per_token + probs
    saved_inputs = {"b": batch, "s": seq, "L": facts.layers, **{f"{k}PerToken": v for k, v in parts.items()}}
    if checkpointing:
        add(
            "activationsCheckpointed",
            "b x s x h x residual B x L (each layer's input)",
            {"b": batch, "s": seq, "h": facts.hidden, "residualBytes": residual, "L": facts.layers},
            tokens * facts.hidden * residual * facts.layers,
            "persistent",
        )
        add(
            "layerRecomputed",
            "b x s x (LoRA inputs + norms + MLP + q/k/v) [+ b x heads x s^2 x 4 math]",
            {**saved_inputs, "heads": facts.heads},
            layer_saved,
            "layer",
        )
    else:
        add(
            "activations",
            "L x b x s x (LoRA inputs + norms + MLP + q/k/v) [+ b x heads x s^2 x 4 math]",
            {**saved_inputs, "heads": facts.heads},
            layer_saved * facts.layers,
            "persistent",
        )
    if kernel == "math":
        add(
            "attentionMathBackward",
            "2 x b x heads x s^2 x 4 (grad of probabilities and of scores, fp32)",
            {"b": batch, "heads": facts.heads, "s": seq},
            2 * probs,
            "layer",
        )
    # MLP backward: the gradients of the intermediate activations, in the residual dtype.
    add(
        "layerBackwardGrads",
        "b x s x 2 x I x residual B",
        {"b": batch, "s": seq, "I": facts.mlp_width_per_token, "residualBytes": residual},
        tokens * 2 * facts.mlp_width_per_token * residual,
        "layer",
    )

    # Loss: transformers' ForCausalLMLoss upcasts the 16-bit logits to fp32 and cross_entropy saves
    # the fp32 log-probabilities; at the start of backward the log-probs, their gradient and the
    # gradient of the logits are alive: 3 fp32 b x s x V tensors (12 B), more than the forward's
    # 16-bit logits + fp32 copy + log-probs (10 B).
    if fused_cross_entropy:
        # Liger's fused linear cross-entropy (trainer/fused_loss.py): chunk logits of at most
        # 2 x b x s x h elements, the hidden states' gradient and a b x s fp32 loss buffer, in the
        # hidden states' dtype (fp32 under QLoRA's fp32 residual stream).
        add(
            "logits",
            "fused linear CE (chunked, logits never whole): 3 x b x s x h x residual B + b x s x 4",
            {"b": batch, "s": seq, "h": facts.hidden, "residualBytes": residual},
            3 * tokens * facts.hidden * residual + tokens * 4,
            "loss",
        )
    else:
        add(
            "logits",
            "b x s x V x 12 (fp32 log-probs + their grad + grad of logits)",
            {"b": batch, "s": seq, "V": facts.vocab, "bytes": 12},
            tokens * facts.vocab * 12,
            "loss",
        )
    if kbit:
        add(
            "lmHeadAutocastCopy",
            "V x h x 2 (autocast's fp16 copy of the fp32 lm_head, saved for backward)",
            {"V": facts.vocab, "h": facts.hidden},
            facts.vocab * facts.hidden * 2,
            "loss",
        )

    persistent = sum(t.bytes for t in terms if t.phase == "persistent")
    phases = {ph: sum(t.bytes for t in terms if t.phase == ph) for ph in ("layer", "loss")}
    peak = persistent + max(phases.values())
    # Not in torch's allocated bytes: CUDA context + cuBLAS handles, NCCL buffers; and the caching
    # allocator's reserve above the allocated peak (A1.5 measured reserved 2.6% above allocated).
    if gpu.is_cpu:
        add("runtimeOverhead", "Python + torch runtime", {}, CPU_RUNTIME, "outside")
    else:
        add(
            "cudaContext",
            "CUDA context + cuBLAS (+ NCCL buffers when N > 1)",
            {"N": n},
            CUDA_CONTEXT + (NCCL_BUFFERS if n > 1 else 0),
            "outside",
        )
    add(
        "allocatorFragmentation",
        "5% of the allocated peak (reserved above allocated)",
        {"share": FRAGMENTATION},
        FRAGMENTATION * peak,
        "outside",
    )
    outside = sum(t.bytes for t in terms if t.phase == "outside")
    at_peak = ("persistent", max(phases, key=lambda ph: phases[ph]), "outside")
    breakdown = {t.name: t.bytes for t in terms if t.phase in at_peak}
    return Estimate(
        per_gpu=peak + outside,
        host_per_node=round(host),
        breakdown=breakdown,
        peak_allocated=peak,
        terms=tuple(terms),
        attention_kernel=kernel,
    )


def _layer_working_params(f: ModelFacts) -> float:
    """Linear parameters one token's pass through a layer touches (MoE: routed + shared experts only).

    ZeRO-3 gathers module by module, so an MoE layer's 256 experts are never resident together.
    """
    attention = sum(
        s.params
        for s in linear_shapes(f)
        if s.name not in ("gate_proj", "up_proj", "down_proj", "c_fc", "c_proj", "gate_up_proj")
    )
    return attention / f.layers + 3 * f.hidden * f.mlp_width_per_token


def _layouts(rr: ResolvedRun) -> list[Layout]:
    """Layouts the spec allows, cheapest first."""
    s = rr.spec
    gpu = rr.gpu
    world = s.resources.world_size
    plain = Layout("single" if world == 1 else "ddp")
    if s.strategy == "ddp" or gpu.is_cpu:
        return [plain]
    ds = s.deepspeed
    stages = [0, 2, 3] if ds.stage == "auto" else [int(ds.stage)]
    out: list[Layout] = [plain] if s.strategy == "auto" else []
    for stage in stages:
        if s.strategy == "auto" and stage == 0:
            continue  # ZeRO-0 is DDP with more overhead: never chosen on its own
        opt = [False, True] if ds.offload_optimizer is None else [ds.offload_optimizer]
        if stage == 0:  # ZeRO-0 has no optimizer state partition to offload
            if ds.offload_optimizer:
                continue  # asked for offload: only stages 2 and 3 can honour it
            opt = [False]
        par = ([False, True] if ds.offload_params is None else [ds.offload_params]) if stage == 3 else [False]
        for p in par:
            for o in opt:
                if p and not o and ds.offload_optimizer is None:
                    continue  # offload parameters only after the optimizer state
                out.append(Layout("deepspeed", stage, o, p))
    return out


def _world_reason(rr: ResolvedRun, layout: Layout) -> str | None:
    world = rr.spec.resources.world_size
    gpu = rr.gpu
    if layout.strategy == "single" or gpu.is_cpu:
        return None
    if gpu.nvlink_group >= rr.spec.resources.gpus_per_node:
        return f"{rr.spec.resources.gpus_per_node} x {gpu.name} per node talk over NVLink"
    if gpu.nvlink_group > 1:
        return (
            f"{world} GPUs: NVLink joins {gpu.nvlink_group} GPUs at most on {gpu.name}, "
            "the rest talk over PCIe; "
            "set NCCL_P2P_LEVEL accordingly and size /dev/shm (resources.shmSize)"
        )
    return f"{world} GPUs talk over PCIe (no NVLink on {gpu.name}); size /dev/shm (resources.shmSize)"


def make_plan(rr: ResolvedRun) -> Plan:
    """The cheapest layout that fits, with reasons; ``fits=False`` and ``waysOut`` when none does.

    ``rr`` is a validated run (:mod:`tac2sol.operator.validation` has checked its cross-field rules).
    """
    plan = _plan(rr)
    if not plan.fits:
        plan.ways_out = _ways_out(rr, plan)
    return plan


def _plan(rr: ResolvedRun) -> Plan:
    s = rr.spec
    r = s.resources
    gpu = rr.gpu
    facts = rr.facts
    world = r.world_size
    t = s.training
    accumulation = accumulation_steps(s)
    global_batch = t.per_device_batch_size * world * accumulation
    targets = list(rr.lora_targets)
    trainable = lora_trainable_params(facts, targets, s.lora.r)
    quantized = s.quantization == "nf4"
    precision = rr.precision
    usable = int((r.host_memory_bytes if gpu.is_cpu else gpu.memory_bytes) * HEADROOM)
    device_memory = r.host_memory_bytes if gpu.is_cpu else gpu.memory_bytes
    host_usable = int(r.host_memory_bytes * HEADROOM)

    candidates: list[tuple[Layout, Estimate, bool]] = []
    for layout in _layouts(rr):
        est = estimate(
            facts,
            layout=layout,
            gpu=gpu,
            world=world,
            gpus_per_node=r.gpus_per_node,
            batch=t.per_device_batch_size,
            seq=t.max_seq_length,
            trainable=trainable,
            quantized=quantized,
            checkpointing=t.gradient_checkpointing,
            targets=targets,
            lora_dropout=s.lora.dropout > 0,
            fused_cross_entropy=t.fused_cross_entropy and rr.on_gpu,  # absent on a CPU
        )
        fits = est.per_gpu <= usable and (gpu.is_cpu or est.host_per_node <= host_usable)
        candidates.append((layout, est, fits))
    chosen = next((c for c in candidates if c[2]), None)
    if chosen is None:  # report the smallest GPU need among layouts whose host memory suffices
        host_ok = [c for c in candidates if c[1].host_per_node <= host_usable] or candidates
        chosen = min(host_ok, key=lambda c: c[1].per_gpu)
    layout, est, fits = chosen

    total = facts.total_params
    reasons = [
        _precision_reason(gpu, precision),
        f"LoRA r={s.lora.r} on {', '.join(targets)}: {format_count(trainable)} trainable parameters "
        f"({100 * trainable / total:.2f}% of {format_count(total)})",
        f"gradient accumulation {accumulation} = globalBatchSize {global_batch} / (perDeviceBatchSize "
        f"{t.per_device_batch_size} x {world} process{'es' if world > 1 else ''})",
    ]
    if fits:
        skipped = candidates[: candidates.index(chosen)]
        why_not = "; ".join(f"{c[0].describe()} needs {format_bytes(c[1].per_gpu)}" for c in skipped)
        reasons.append(
            f"{layout.describe()}: {format_bytes(est.per_gpu)} per {'process' if gpu.is_cpu else 'GPU'} fits "
            f"{int(HEADROOM * 100)}% of {format_bytes(device_memory)}"
            + (f" (cheaper layouts do not fit: {why_not})" if why_not else "")
        )
        if est.per_gpu > TIGHT * device_memory:
            reasons.append(
                f"tight: {format_bytes(est.per_gpu)} is above {int(TIGHT * 100)}% of the device; the largest "
                f"term is {_largest(est)} (see `tac2sol plan --explain`)"
            )
        if layout.strategy == "ddp":
            reasons.append(
                "DDP over ZeRO: every GPU holds the whole quantized model and DDP is 40-60% faster "
                "than DeepSpeed for LoRA (design doc); ZeRO only when memory needs it"
            )
        if layout.offload_optimizer or layout.offload_params:
            reasons.append(
                f"offload uses {format_bytes(est.host_per_node)} of host memory per node "
                f"(resources.hostMemory {r.host_memory})"
            )
    else:
        tried = "; ".join(
            f"{c[0].describe()} needs {format_bytes(c[1].per_gpu)}"
            + (f" + {format_bytes(c[1].host_per_node)} host" if c[1].host_per_node else "")
            for c in candidates
        )
        reasons.append(
            f"nothing fits {format_bytes(usable)} per GPU and {format_bytes(host_usable)} host memory "
            f"per node (90% of each): {tried}"
        )
        reasons.append(f"largest term to cut: {_largest(est)}")
        reasons.append(_weights_arithmetic(facts, quantized, gpu, world))
    world_reason = _world_reason(rr, layout)
    if world_reason:
        reasons.append(world_reason)
    return Plan(
        model=facts.id or s.model.name,
        strategy=layout.strategy,
        zero_stage=layout.zero_stage,
        offload_optimizer=layout.offload_optimizer,
        offload_params=layout.offload_params,
        precision=precision,
        gradient_accumulation_steps=accumulation,
        per_device_batch_size=t.per_device_batch_size,
        global_batch_size=global_batch,
        world_size=world,
        nodes=r.nodes,
        gpus_per_node=r.gpus_per_node,
        gpu_type=r.gpu_type,
        max_seq_length=t.max_seq_length,
        trainable_params=trainable,
        total_params=total,
        per_gpu_memory_bytes=est.per_gpu,
        gpu_memory_bytes=device_memory,
        usable_memory_bytes=usable,
        host_memory_bytes=est.host_per_node,
        breakdown=est.breakdown,
        peak_allocated_bytes=est.peak_allocated,
        attention_kernel=est.attention_kernel,
        terms=[
            PlanTerm(name=x.name, formula=x.formula, inputs=x.inputs, bytes=x.bytes, phase=x.phase)
            for x in est.terms
        ],
        fits=fits,
        reasons=reasons,
        candidates=[
            Candidate(
                strategy=c[0].strategy,
                zero_stage=c[0].zero_stage,
                offload_optimizer=c[0].offload_optimizer,
                offload_params=c[0].offload_params,
                per_gpu_memory_bytes=c[1].per_gpu,
                host_memory_bytes=c[1].host_per_node,
                fits=c[2],
            )
            for c in candidates
        ],
    )


# The knobs of a TrainingRun that move memory (spec.training.*, spec.lora.r, spec.quantization, ...).
SEQ = "maxSeqLength"
BATCH = "perDeviceBatchSize"
CHECKPOINTING = "gradientCheckpointing"
RANK = "lora.r"
QUANTIZATION = "quantization"
ZERO = "strategy/ZeRO"
MORE_GPUS = "more GPUs"
GPU_TYPE = "gpuType"
KNOBS = (SEQ, BATCH, CHECKPOINTING, RANK, QUANTIZATION, ZERO, MORE_GPUS, GPU_TYPE)
KNOB_NOTES = {
    SEQ: "linear in s, attentionMathBackward in s^2",
    BATCH: "linear; keep globalBatchSize through accumulation",
    CHECKPOINTING: "on: keeps each layer's input and recomputes one layer at a time",
    RANK: "linear in r and in the number of lora.targetModules",
    QUANTIZATION: "nf4 weights 0.516 B/param, but fp32 embeddings and residual stream",
    ZERO: "ZeRO-2 shards LoRA grads and optimizer state, ZeRO-3 the weights too",
    MORE_GPUS: "shrink a term only when ZeRO shards it; under DDP every GPU holds everything",
    GPU_TYPE: "sm_80+ runs flash attention (no s^2 term) and bf16",
}
FIT_RULE = (
    f"a layout fits when the estimate is at most {HEADROOM:.0%} of device memory (room for spikes and "
    f"the driver), tight above {TIGHT:.0%}"
)

# Which knob moves which term (tests/operator/test_planner.py turns each knob and checks), and how
# to cut the term; allocatorFragmentation is a share of the peak: every knob moves it.
TERM_KNOBS: dict[str, tuple[tuple[str, ...], str]] = {
    "quantizedWeights": ((QUANTIZATION, ZERO, MORE_GPUS), "NF4, ZeRO-3 over more GPUs, or a smaller model"),
    "embeddings": ((QUANTIZATION, ZERO, MORE_GPUS), "ZeRO-3 over more GPUs, or a smaller model"),
    "zero3GatheredParams": ((QUANTIZATION, ZERO), "a smaller model"),
    "loraWeightsGradsOptimizer": ((RANK, ZERO, MORE_GPUS), "lora.r, or ZeRO with optimizer offload"),
    "ddpGradientBuckets": ((RANK, ZERO, MORE_GPUS), "lora.r"),
    "zeroCommBuckets": ((RANK, ZERO), "lora.r"),
    "activationsCheckpointed": (
        (SEQ, BATCH, CHECKPOINTING, QUANTIZATION),
        "maxSeqLength or perDeviceBatchSize",
    ),
    "layerRecomputed": (
        (SEQ, BATCH, CHECKPOINTING, QUANTIZATION, GPU_TYPE),
        "maxSeqLength or perDeviceBatchSize",
    ),
    "activations": (
        (SEQ, BATCH, CHECKPOINTING, QUANTIZATION, GPU_TYPE),
        "training.gradientCheckpointing true",
    ),
    "attentionMathBackward": (
        (SEQ, BATCH, GPU_TYPE),
        "maxSeqLength (s^2), or a GPU with flash attention (sm_80+)",
    ),
    "layerBackwardGrads": ((SEQ, BATCH, QUANTIZATION), "maxSeqLength or perDeviceBatchSize"),
    "logits": ((SEQ, BATCH), "maxSeqLength or perDeviceBatchSize (a fused cross-entropy removes it)"),
    "lmHeadAutocastCopy": ((QUANTIZATION,), "quantization none (16-bit lm_head, no copy)"),
    "cudaContext": ((MORE_GPUS,), "nothing: fixed per process"),
    "runtimeOverhead": ((), "nothing: fixed per process"),
    "allocatorFragmentation": (KNOBS, "any term above"),
}

# What each phase of the estimate means; the peak holds "persistent" plus the larger of the other two.
PHASES = {
    "persistent": "held through the whole step",
    "layer": "one layer's backward (with checkpointing: its recompute)",
    "loss": "the loss and its backward",
    "outside": "not in torch's allocated bytes",
}


def _largest(est: Estimate) -> str:
    """The biggest term at the peak that a knob can cut, and how."""
    name, value = max(((k, v) for k, v in est.breakdown.items() if k in _CUTTABLE), key=lambda kv: kv[1])
    return f"{name} {format_bytes(value)} ({TERM_KNOBS[name][1]})"


_CUTTABLE = set(TERM_KNOBS) - {"allocatorFragmentation", "cudaContext", "runtimeOverhead"}


def _precision_reason(gpu: GpuType, precision: str) -> str:
    if gpu.is_cpu:
        return "precision fp32: no accelerator (CPU run)"
    if precision == "bf16":
        return f"precision bf16: {gpu.name} is sm_{gpu.compute_capability} with bf16 tensor cores"
    return (
        f"precision fp16 with dynamic loss scaling: {gpu.name} is sm_{gpu.compute_capability}, "
        "which has no bf16 tensor cores (bitsandbytes compute dtype float16, SDPA attention)"
    )


def _weights_arithmetic(facts: ModelFacts, quantized: bool, gpu: GpuType, world: int) -> str:
    linear = sum(s.params for s in linear_shapes(facts))
    emb = embedding_params(facts)
    per = NF4_BYTES_PER_PARAM if quantized else 2
    weights = linear * per + emb * 2
    label = "4-bit" if quantized else "16-bit"
    return (
        f"{label} weights alone: {linear / 1e9:.1f}B linear params x {per:.3f} B + "
        f"{emb / 1e9:.2f}B embedding params x 2 B = {weights / 1e9:.0f} GB; "
        f"{world} x {gpu.name} hold {world} x {format_bytes(gpu.memory_bytes)}"
        f" = {format_bytes(world * gpu.memory_bytes)}, so even ZeRO-3 sharding over all {world} needs "
        f"{format_bytes(weights / world)} of weights per GPU before activations"
    )


def _variant(rr: ResolvedRun, **changes: object) -> Plan:
    """The plan of ``rr`` with spec fields changed (``resources__nodes=2``)."""
    data = rr.run.model_dump(by_alias=False, exclude={"status"})
    for dotted, value in changes.items():
        node = data["spec"]
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return _plan(resolve(TrainingRun.model_validate(data)))


def _ways_out(rr: ResolvedRun, plan: Plan) -> list[str]:
    """Concrete changes that make the run fit, each checked by planning it."""
    s = rr.spec
    r = s.resources
    gpu = rr.gpu
    out: list[str] = []
    auto = {"strategy": "auto", "deepspeed__stage": "auto", "deepspeed__offload_optimizer": None,
            "deepspeed__offload_params": None}  # fmt: skip

    if s.strategy != "auto" or s.deepspeed.stage != "auto" or s.deepspeed.offload_optimizer is False:
        alt = _variant(rr, **auto)
        if alt.fits:
            out.append(
                f"let the planner choose (strategy auto, deepspeed.stage auto, offload unset): {_short(alt)}"
            )
    # More GPUs of the same type (whole nodes once one node is full).
    if not gpu.is_cpu:
        for total in sorted({2**k for k in range(0, 11)} | {gpu.max_per_node * n for n in range(1, 257)}):
            if total <= r.world_size:
                continue
            per_node = min(total, gpu.max_per_node)
            if total % per_node:
                continue
            nodes = total // per_node
            if nodes > 256:
                break
            alt = _variant(
                rr,
                resources__gpus_per_node=per_node,
                resources__nodes=nodes,
                training__global_batch_size=None,
                **auto,
            )
            if alt.fits:
                out.append(
                    f"more GPUs: {total} x {r.gpu_type} "
                    f"({nodes} node{'s' if nodes > 1 else ''} x {per_node}): "
                    f"{_short(alt)}"
                )
                break
        else:
            out.append(f"more GPUs: not even 256 nodes x {gpu.max_per_node} {r.gpu_type} fit this model")
    # Shorter sequences.
    seq = s.training.max_seq_length // 2
    while seq >= 256:
        alt = _variant(rr, training__max_seq_length=seq, **auto)
        if alt.fits:
            out.append(f"shorter sequences: training.maxSeqLength {seq}: {_short(alt)}")
            break
        seq //= 2
    if s.training.per_device_batch_size > 1:
        alt = _variant(rr, training__per_device_batch_size=1, training__global_batch_size=None, **auto)
        if alt.fits:
            out.append(
                f"training.perDeviceBatchSize 1 (keep the global batch through accumulation): {_short(alt)}"
            )
    if not s.training.gradient_checkpointing:
        alt = _variant(rr, training__gradient_checkpointing=True, **auto)
        if alt.fits:
            out.append(f"training.gradientCheckpointing true: {_short(alt)}")
    # Offload, if only host memory is short.
    offload = next((c for c in plan.candidates if c.offload_params), None)
    if offload and offload.per_gpu_memory_bytes <= plan.usable_memory_bytes:
        need = offload.host_memory_bytes / HEADROOM
        out.append(
            f"ZeRO-3 with parameter offload fits the GPUs ({format_bytes(offload.per_gpu_memory_bytes)}/GPU) "
            f"but needs resources.hostMemory >= {format_bytes(need)} per node (have {r.host_memory}); slow"
        )
    # Bigger GPUs, same count.
    bigger = []
    for key, other in GPUS.items():
        if other.is_cpu or key == r.gpu_type or other.memory_bytes <= gpu.memory_bytes:
            continue
        if r.gpus_per_node > other.max_per_node:
            continue
        alt = _variant(rr, resources__gpu_type=key, **auto)
        if alt.fits:
            bigger.append(f"{key} ({_short(alt)})")
    if bigger:
        out.append(f"bigger GPUs, same count: {'; '.join(bigger)}")
    # Smaller models that fit as configured.
    smaller = []
    for key, facts in MODELS.items():
        if facts.id == plan.model:
            continue
        seq_ok = min(s.training.max_seq_length, facts.context)
        try:
            alt = _variant(
                rr,
                model={"name": key},
                lora={
                    "r": s.lora.r,
                    "alpha": s.lora.alpha,
                    "dropout": s.lora.dropout,
                    "target_modules": ["auto"],
                },
                training__max_seq_length=seq_ok,
                **auto,
            )
        except InvalidInput:
            continue
        if alt.fits:
            smaller.append(key)
    if smaller:
        out.append(f"a smaller model on these GPUs: {', '.join(smaller)}")
    return out


def _short(p: Plan) -> str:
    layout = Layout(p.strategy, p.zero_stage, p.offload_optimizer, p.offload_params).describe()
    return f"{layout}, {format_bytes(p.per_gpu_memory_bytes)}/GPU"


def format_count(n: float) -> str:
    """1234567 -> 1.2M; parameter counts from tiny to trillions."""
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(int(n))


def format_bytes(n: float) -> str:
    return f"{n / GiB:.1f} GiB"
