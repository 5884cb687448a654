"""The hand-written baseline the trainer benchmarks compare with: what a user would write with
transformers + peft for NF4 QLoRA on CPU (no tac2sol code), shared so both benchmarks run the same."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def bare_qlora_model(model_dir: Path) -> Any:
    """The tiny model in NF4 with LoRA r=8 on every linear layer, as a user would load it on CPU."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    base = AutoModelForCausalLM.from_pretrained(
        model_dir,
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        ),
        dtype=torch.float32,
        device_map={"": "cpu"},
        attn_implementation="sdpa",
    )
    base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    lora = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    return get_peft_model(base, lora)
