"""Tokenizer and QLoRA model: 4-bit NF4 base (double quant) + peft LoRA adapters.

* ``load_tokenizer``: by path or hub id (``HF_HUB_OFFLINE=1`` is honoured by the hub client);
  a pad token is set when the tokenizer has none (EOS, the usual choice for causal LMs).
* ``quantization_config``: ``BitsAndBytesConfig`` (NF4, double quant, compute dtype from the
  plan, quant storage from the distributed layer under ZeRO-3), or None with quantization off.
* ``weights_source``: the hub id or directory, or for ``model.gguf_file`` the directory it was
  converted into (``gguf.py``);
* ``load_model``: SDPA attention (FlashAttention-2 does not exist on Turing), then
  ``prepare_model_for_kbit_training`` (casts norms to fp32, enables input grads and gradient
  checkpointing), then LoRA on the catalog's target modules or ``all-linear``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tac2sol.errors import InvalidInput
from tac2sol.trainer.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParamCounts:
    trainable: int
    total: int

    @property
    def ratio(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def describe(self) -> str:
        return f"trainable params: {self.trainable:,} of {self.total:,} ({100 * self.ratio:.3f}%)"


def _hub_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.model.trust_remote_code}
    if cfg.model.revision and not cfg.model.gguf_file:
        kwargs["revision"] = cfg.model.revision
    return kwargs


def weights_source(cfg: TrainConfig) -> str:
    """Where the base weights (and, unless ``model.tokenizer`` says otherwise, the tokenizer) load
    from: ``model.name_or_path``, or the directory ``model.gguf_file`` was converted into."""
    if cfg.model.gguf_file:
        from tac2sol.trainer.gguf import converted_dir

        return str(converted_dir(cfg.model.gguf_file))
    return cfg.model.name_or_path


def _where(name: str) -> str:
    p = Path(name)
    if p.exists() or name.startswith((".", "/")):
        return f"local path {name}"
    return f"hub id {name} (offline: set HF_HUB_OFFLINE=0 or pre-download it into the HF cache)"


def load_tokenizer(name_or_path: str, cfg: TrainConfig | None = None, field: str = "model.tokenizer") -> Any:
    """Load a tokenizer with one clear error when it cannot be loaded."""
    from transformers import AutoTokenizer

    kwargs = _hub_kwargs(cfg) if cfg is not None else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    except Exception as exc:  # OSError, ValueError, hub errors: all mean "cannot load"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidInput(f"{field}: cannot load a tokenizer from {_where(name_or_path)}: {first}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def quantization_config(cfg: TrainConfig, bnb_kwargs: dict[str, Any]) -> Any | None:
    """NF4 + double quant; ``bnb_kwargs`` from the distributed layer (compute/storage dtypes)."""
    if cfg.quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        **bnb_kwargs,
    )


def lora_config(cfg: TrainConfig) -> Any:
    from peft import LoraConfig

    targets = cfg.model.target_modules
    return LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=targets if targets == "all-linear" else list(targets),
        bias="none",
        task_type="CAUSAL_LM",
    )


def count_parameters(model: Any) -> ParamCounts:
    """Counts as peft does: 4-bit weights hold two values per stored byte."""
    trainable, total = model.get_nb_trainable_parameters()
    return ParamCounts(int(trainable), int(total))


def load_base_model(cfg: TrainConfig, load_kwargs: dict[str, Any], bnb_kwargs: dict[str, Any]) -> Any:
    """The (quantized) base model, SDPA attention, with a clear error when it cannot load."""
    from transformers import AutoModelForCausalLM

    kwargs = {**_hub_kwargs(cfg), **load_kwargs, "attn_implementation": "sdpa"}
    qconf = quantization_config(cfg, bnb_kwargs)
    if qconf is not None:
        kwargs["quantization_config"] = qconf
    source = weights_source(cfg)
    field = "model.gguf_file" if cfg.model.gguf_file else "model.name_or_path"
    try:
        return AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidInput(f"{field}: cannot load a model from {_where(source)}: {first}") from None


def add_lora(cfg: TrainConfig, model: Any, gradient_checkpointing: bool) -> Any:
    """Prepare the base for k-bit training (or just checkpointing) and wrap it with LoRA."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    ckpt_kwargs = {"use_reentrant": False}
    if cfg.quantization != "none":
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs=ckpt_kwargs,
        )
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
        model.enable_input_require_grads()
    if gradient_checkpointing:
        model.config.use_cache = False  # the KV cache is useless (and warns) while checkpointing
    try:
        return get_peft_model(model, lora_config(cfg))
    except ValueError as exc:
        raise InvalidInput(
            f"model.target_modules: {exc}; use module names of this architecture or 'all-linear'"
        ) from None


def keep_4bit_layout_trainable(model: Any) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for its CPU inference kernel; returns the
    number of 4-bit layers changed.

    On a CPU with AVX512-BF16, ``Linear4bit.forward`` in eval mode without gradients (the
    Trainer's evaluation) repacks the weight for the fused ``gemv_4bit`` kernel, and the weight
    stays repacked. That kernel has no autograd formula: every later training step backpropagates
    through it with a torch warning ("may lead to silently incorrect behavior") and drops the
    gradient through the frozen base weights, so LoRA gradients come out wrong (measured: up to
    75 % relative error on the tiny model; exact again with this off, see tests/trainer/test_model.py).
    The generic dequantize + matmul path is used instead, for training and inference alike.
    """
    changed = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


def load_model(cfg: TrainConfig, load_kwargs: dict[str, Any], bnb_kwargs: dict[str, Any]) -> Any:
    """Base model + LoRA, ready for the Trainer."""
    model = load_base_model(cfg, load_kwargs, bnb_kwargs)
    keep_4bit_layout_trainable(model)
    return add_lora(cfg, model, cfg.training.gradient_checkpointing)


def load_for_inference(
    cfg: TrainConfig, adapter: Path, load_kwargs: dict[str, Any], bnb_kwargs: dict[str, Any]
) -> Any:
    """Base model (quantized as in training) with a trained adapter, in eval mode.

    The 4-bit layers run the same kernel as in training (:func:`keep_4bit_layout_trainable`), so
    ``tac2sol evaluate`` and ``decompile`` generate what the run's own evaluation generated: the
    fused CPU kernel computes in bf16 and moves logits by up to 3e-3, enough to change tokens.
    """
    from peft import PeftModel

    base = load_base_model(cfg, load_kwargs, bnb_kwargs)
    keep_4bit_layout_trainable(base)
    try:
        model = PeftModel.from_pretrained(base, str(adapter), is_trainable=False)
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{adapter}: not a LoRA adapter directory ({exc})") from None
    except RuntimeError as exc:  # load_state_dict: the adapter's shapes are another model's
        if "size mismatch" not in str(exc):
            raise
        first = next(line.strip() for line in str(exc).splitlines() if "size mismatch" in line)
        raise InvalidInput(
            f"{adapter}: the adapter does not fit the base model {cfg.model.name_or_path} ({first}); "
            "use the base model it was trained on"
        ) from None
    model.eval()
    return model
