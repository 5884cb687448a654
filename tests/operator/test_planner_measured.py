"""The planner's activation and loss terms against what the real code path allocates.

No GPU here, so these measure the CPU run of the same Python code the trainer runs on a GPU
(transformers' Qwen2 layer, peft LoRA, bitsandbytes NF4, torch SDPA forced to the math kernel as
on sm_75, autocast fp16) and compare with the planner's formulas, which use the GPU's byte sizes:

* what one decoder layer saves for backward, counted with autograd's saved-tensor hooks (exact,
  independent of the allocator): the planner's ``layerRecomputed`` per token plus the
  ``b x heads x s^2`` probabilities;
* the peak of the math attention's backward and of the loss's backward, tensor by tensor (torch's
  ``MemTracker``, which follows every allocation and free on any device).

LoRA dropout is 0 in the saved-tensor test: on CPU dropout saves an fp32 noise tensor, on CUDA
(``native_dropout``) a 1-byte mask, which is what the planner charges.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tac2sol.operator.catalog import ModelFacts
from tac2sol.operator.planner import layer_saved_bytes_per_token

TINY = {"hidden": 512, "intermediate": 2048, "heads": 8, "kv_heads": 2, "layers": 2, "vocab": 512}
SEQ = 256


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    path = tmp_path_factory.mktemp("tiny-qwen2")
    cfg = Qwen2Config(
        hidden_size=TINY["hidden"],
        intermediate_size=TINY["intermediate"],
        num_attention_heads=TINY["heads"],
        num_key_value_heads=TINY["kv_heads"],
        num_hidden_layers=TINY["layers"],
        vocab_size=TINY["vocab"],
        max_position_embeddings=4096,
    )
    Qwen2ForCausalLM(cfg).save_pretrained(path)
    return path


def _saved_by_first_layer(model_dir: Path, quantized: bool, math: bool) -> int:
    """Bytes of the tensors decoder layer 0 saves for backward (parameters and casts of them excluded)."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = None
    if quantized:
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float16,
        )
    model: Any = AutoModelForCausalLM.from_pretrained(
        model_dir, quantization_config=quant, attn_implementation="sdpa", dtype=torch.float16
    )
    if quantized:  # as trainer/model.py does: fp32 embeddings, norms, lm_head
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model.enable_input_require_grads()
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")
    model = get_peft_model(model, lora)
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    inside = [False]
    layer = model.base_model.model.model.layers[0]
    layer.register_forward_pre_hook(lambda *_: inside.__setitem__(0, True))
    layer.register_forward_hook(lambda *_: inside.__setitem__(0, False))
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        # Per-token tensors only: the autocast casts of the LoRA weights are r x in, a few KiB.
        if inside[0] and t.numel() >= SEQ * 64 and t.untyped_storage().data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(0, TINY["vocab"], (1, SEQ))
    backend = SDPBackend.MATH if math else SDPBackend.FLASH_ATTENTION
    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    with hooks, sdpa_kernel(backend), torch.autocast("cpu", dtype=torch.float16):
        model(input_ids=ids, labels=ids)
    return sum(saved.values())


@pytest.mark.parametrize("quantized", [True, False], ids=["nf4", "fp16"])
def test_layer_saved_tensors_match_the_planner(tiny_qwen2: Path, quantized: bool) -> None:
    facts = ModelFacts(family="qwen2", context=4096, **TINY)
    residual = 4 if quantized else 2  # prepare_model_for_kbit_training leaves an fp32 residual stream
    per_token, parts = layer_saved_bytes_per_token(
        facts, facts.default_lora_targets, residual, 2, "math", lora_dropout=False
    )
    probs = TINY["heads"] * SEQ * SEQ * 4
    planned = per_token * SEQ + probs
    measured = _saved_by_first_layer(tiny_qwen2, quantized, math=True)
    # What is left over: RoPE's cos/sin (b x s x head_dim x 2, shared by every layer).
    assert measured == pytest.approx(planned, rel=0.03), (measured, planned, parts)


def _peak_bytes(step: Callable[[], None]) -> int:
    """Peak bytes of the tensors ``step`` allocates (torch's MemTracker: every tensor, any device)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    with tracker:
        step()
    peak = tracker.get_tracker_snapshot("peak")
    return sum(int(by_kind.get("Total", 0)) for by_kind in peak.values())


def test_math_attention_backward_holds_three_probability_tensors() -> None:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    h, s, d = 16, 2048, 64
    q = torch.randn(1, h, s, d, dtype=torch.float16, requires_grad=True)
    k = torch.randn(1, 2, s, d, dtype=torch.float16, requires_grad=True)
    v = torch.randn(1, 2, s, d, dtype=torch.float16, requires_grad=True)
    grad = torch.randn(1, h, s, d, dtype=torch.float16)

    def step() -> None:
        with sdpa_kernel(SDPBackend.MATH):  # what transformers' enable_gqa=True call gets on sm_75
            F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).backward(grad)

    units = _peak_bytes(step) / (h * s * s * 4)
    # The planner: 1 (probabilities saved, in layerRecomputed) + 2 (attentionMathBackward). The
    # rest: fp32 q/k/v/out copies (d/s of a unit each) and the s x s causal mask (1/heads).
    assert 2.95 <= units <= 3.2, units


def test_loss_backward_holds_twelve_bytes_per_logit() -> None:
    import torch
    import torch.nn.functional as F
    from transformers.loss.loss_utils import ForCausalLMLoss  # what the model's forward calls

    vocab, s, h = 32768, 2048, 128
    lm_head = torch.randn(vocab, h)  # fp32, as prepare_model_for_kbit_training leaves it; frozen
    hidden = torch.randn(1, s, h, requires_grad=True)
    labels = torch.randint(0, vocab, (1, s))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.float16):
            logits = F.linear(hidden, lm_head)  # 16-bit logits, as the model returns them
        loss = ForCausalLMLoss(logits, labels, vocab_size=vocab)
        del logits
        loss.backward()

    per_logit = _peak_bytes(step) / (s * vocab)
    # The planner's logits term: fp32 log-probs + their gradient + the logits' gradient = 12 B; the
    # lm_head's autocast copy is 2 h / s = 1/8 B per logit at this size.
    assert 11.9 <= per_logit <= 12.4, per_logit
