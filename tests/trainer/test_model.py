"""QLoRA for real (bitsandbytes on CPU): NF4 storage, only LoRA trains, the base never changes."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
bnb = pytest.importorskip("bitsandbytes")

from tac2sol.errors import InvalidInput  # noqa: E402
from tac2sol.trainer.model import count_parameters, load_model, load_tokenizer  # noqa: E402
from tac2sol.trainer.prompt import encode_batch  # noqa: E402

CPU_LOAD = {"dtype": torch.float32, "device_map": {"": "cpu"}}
CPU_BNB = {"bnb_4bit_compute_dtype": torch.float32}


def _batch(tokenizer: Any, sample_file: Any, n: int = 4) -> dict[str, Any]:
    import json

    rows = [json.loads(line) for line in sample_file.read_text().splitlines()[:n]]
    enc = encode_batch(tokenizer, [r["input"] for r in rows], [r["output"] for r in rows], 512)
    width = max(len(e.input_ids) for e in enc)
    pad = tokenizer.pad_token_id
    return {
        "input_ids": torch.tensor([e.input_ids + [pad] * (width - len(e.input_ids)) for e in enc]),
        "attention_mask": torch.tensor(
            [[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in enc]
        ),
        "labels": torch.tensor([e.labels + [-100] * (width - len(e.labels)) for e in enc]),
    }


def test_qlora_quantizes_trains_only_lora_and_keeps_the_base(make_config: Any, sample_file: Any) -> None:
    cfg = make_config(training={"gradient_checkpointing": True})
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    model = load_model(cfg, CPU_LOAD, CPU_BNB)

    lora_layers = [m for n, m in model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
    assert len(lora_layers) == 2 * 7  # 2 layers x q,k,v,o,gate,up,down ('all-linear')
    for layer in lora_layers:
        base = layer.base_layer
        assert isinstance(base, bnb.nn.Linear4bit)
        assert base.weight.dtype == torch.uint8  # packed 4-bit storage
        assert base.weight.quant_state.quant_type == "nf4"
        assert base.weight.quant_state.nested  # double quantization of the absmax constants
        assert base.compute_dtype == torch.float32  # the plan's compute dtype on a CPU
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    counts = count_parameters(model)
    assert 0 < counts.trainable < counts.total
    assert counts.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)

    def frozen_state() -> dict[str, Any]:
        state = {n: t.detach().clone() for n, t in model.state_dict().items() if "lora_" not in n}
        for n, m in model.named_modules():  # the quantization constants live outside state tensors
            if isinstance(m, bnb.nn.Linear4bit):
                qs = m.weight.quant_state
                state[f"{n}.absmax"] = qs.absmax.clone()
                state[f"{n}.nested_absmax"] = qs.state2.absmax.clone()
        return state

    before = frozen_state()
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    batch = _batch(tokenizer, sample_file)
    for _ in range(3):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = frozen_state()
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        assert torch.equal(tensor, after[name]), f"{name} changed"
    changed = [
        n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, lora_before[n])
    ]
    assert len(changed) == len(lora_before)


def test_no_quantization_loads_plain_weights(make_config: Any) -> None:
    model = load_model(make_config(quantization="none"), CPU_LOAD, CPU_BNB)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)


def test_unknown_target_modules_and_unloadable_tokenizer_are_clear_errors(
    make_config: Any, tmp_path: Any
) -> None:
    cfg = make_config(model={"target_modules": ["c_attn"]})
    with pytest.raises(InvalidInput, match=r"model\.target_modules"):
        load_model(cfg, CPU_LOAD, CPU_BNB)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match=r"model\.tokenizer: cannot load a tokenizer from local path"):
        load_tokenizer(str(tmp_path / "empty"))


def test_lora_gradients_through_4bit_match_the_dequantized_model(make_config: Any, sample_file: Any) -> None:
    """The gradient through bitsandbytes' CPU 4-bit path is the gradient of the same model with the
    dequantized weights in fp32, also after an evaluation pass (which, left alone, repacks the
    weights for an inference kernel without autograd on AVX512-BF16 CPUs)."""
    import warnings

    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from tac2sol.trainer.model import lora_config

    cfg = make_config(training={"gradient_checkpointing": False}, lora={"dropout": 0.0})
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    batch = _batch(tokenizer, sample_file)
    torch.manual_seed(3)
    quantized = load_model(cfg, CPU_LOAD, CPU_BNB)
    reference = AutoModelForCausalLM.from_pretrained(cfg.model.name_or_path, **CPU_LOAD)
    layers = {n: m for n, m in quantized.base_model.model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    for name, module in reference.named_modules():
        if f"{name}.base_layer" in layers:
            q = layers[f"{name}.base_layer"]
            module.weight.data.copy_(bnb.functional.dequantize_4bit(q.weight.data, q.weight.quant_state))
    reference = get_peft_model(reference, lora_config(cfg))
    with torch.no_grad():  # non-zero LoRA B, the same in both, so every LoRA weight gets a gradient
        lora = {n: p for n, p in reference.named_parameters() if "lora_" in n}
        for name, param in quantized.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn_like(param) * 0.05)
                lora[name].copy_(param)

    def gradients(model: Any) -> dict[str, Any]:
        model.train()
        model.zero_grad()
        model(**batch).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    expected = gradients(reference)
    quantized.eval()
    with torch.no_grad():
        quantized(**batch)  # what the Trainer's evaluation does between training steps
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "backprop through gemv_4bit ... silently incorrect" fails here
        got = gradients(quantized)
    assert got.keys() == expected.keys() and len(got) == 2 * 2 * 7
    for name, grad in expected.items():
        assert torch.allclose(got[name], grad, rtol=1e-3, atol=1e-6), name


def test_importing_bitsandbytes_through_the_trainer_prints_no_kernels_hint() -> None:
    """bitsandbytes' "pip install kernels" hint (AVX512-BF16 CPUs) is filtered, with the reason in
    tac2sol/trainer/__init__.py; nothing else it prints at import is hidden."""
    import subprocess
    import sys

    code = "import tac2sol.trainer, bitsandbytes, transformers; transformers.Trainer"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "kernels" not in done.stderr, done.stderr[-2000:]
