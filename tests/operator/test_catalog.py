"""The model and GPU catalogs: facts consistent with their shapes and with ARCHITECTURE.md's corrections."""

from __future__ import annotations

import pytest

from tac2sol.operator.catalog import (
    GPUS,
    MODELS,
    ModelFacts,
    UnknownModel,
    computed_params,
    find_model,
    lora_trainable_params,
)
from tac2sol.operator.resolve import precision_for, resolve_model
from tac2sol.operator.spec import ModelSpec

DESIGN_DOC_MODELS = [
    "llama-3.2-3b",
    "qwen2.5-coder-32b",
    "deepseek-coder-v2-lite",
    "deepseek-coder-33b",
    "deepseek-v3",
    "codestral-22b",
    "starcoder2-3b",
    "starcoder2-7b",
    "starcoder2-15b",
    "phi-3-medium",
    "qwen2.5-72b",
    "llama-3.1-70b",
    "llama-3.1-8b",
    "codellama-34b",
]


def test_every_design_doc_model_is_in_the_catalog() -> None:
    assert set(DESIGN_DOC_MODELS) <= set(MODELS)


@pytest.mark.parametrize("key", list(MODELS))
def test_shapes_rebuild_the_published_parameter_count(key: str) -> None:
    facts = MODELS[key]
    assert facts.params is not None
    assert computed_params(facts) == pytest.approx(facts.params, rel=0.02)


@pytest.mark.parametrize("key", list(MODELS))
def test_default_lora_targets_exist_in_the_architecture(key: str) -> None:
    facts = MODELS[key]
    assert set(facts.default_lora_targets) <= set(facts.module_names())
    assert facts.source and facts.source.startswith("https://huggingface.co/")
    assert facts.licence != "unknown"


def test_corrections_from_architecture_md() -> None:
    qwen = MODELS["qwen2.5-coder-32b"]
    assert (qwen.layers, qwen.heads, qwen.kv_heads, qwen.context, qwen.licence) == (
        64,
        40,
        8,
        32768,
        "apache-2.0",
    )
    lite = MODELS["deepseek-coder-v2-lite"]
    assert lite.is_moe and lite.total_params == pytest.approx(16e9, rel=0.05)
    assert lite.active_params == pytest.approx(2.4e9, rel=0.01)
    assert MODELS["deepseek-coder-33b"].id == "deepseek-ai/deepseek-coder-33b-instruct"
    assert MODELS["deepseek-coder-33b"].context == 16384
    v3 = MODELS["deepseek-v3"]
    assert v3.total_params == pytest.approx(671e9, rel=0.01) and v3.active_params == pytest.approx(
        37e9, rel=0.01
    )
    assert not any(k.startswith("starcoder2-33") for k in MODELS)
    for size in ("3b", "7b", "15b"):
        modules = MODELS[f"starcoder2-{size}"].module_names()
        assert {"c_fc", "c_proj", "q_proj", "o_proj"} <= set(modules) and "c_attn" not in modules
    phi = MODELS["phi-3-medium"]
    assert phi.id == "microsoft/Phi-3-medium-4k-instruct"
    assert phi.module_names() == ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    codestral = MODELS["codestral-22b"]
    assert codestral.context == 32768 and "Non-Production" in (codestral.licence_note or "")


def test_lora_trainable_params_qwen32b() -> None:
    # r * (in + out) per adapted matrix: 2,097,152 per layer x 64 layers.
    facts = MODELS["qwen2.5-coder-32b"]
    assert lora_trainable_params(facts, facts.default_lora_targets, 16) == 2_097_152 * 64


def test_gpu_catalog_facts() -> None:
    rtx = GPUS["rtx8000"]
    assert rtx.memory_bytes == 48 * 2**30 and rtx.sm == (7, 5) and not rtx.bf16 and rtx.nvlink_group == 2
    assert {"rtx8000", "a100-40", "a100-80", "h100-80", "l40s", "a10g", "t4", "cpu"} <= set(GPUS)
    assert GPUS["cpu"].is_cpu


@pytest.mark.parametrize(
    ("gpu", "precision"),
    [
        ("rtx8000", "fp16"),
        ("t4", "fp16"),
        ("v100-32", "fp16"),
        ("a100-80", "bf16"),
        ("h100-80", "bf16"),
        ("l40s", "bf16"),
        ("cpu", "fp32"),
    ],
)
def test_precision_by_architecture(gpu: str, precision: str) -> None:
    assert precision_for(GPUS[gpu]) == precision


def test_resolve_model_by_key_hub_id_and_facts() -> None:
    assert resolve_model(ModelSpec(name="llama-3.2-3b")) is MODELS["llama-3.2-3b"]
    assert find_model("bigcode/StarCoder2-15B") == ("starcoder2-15b", MODELS["starcoder2-15b"])
    facts = ModelFacts(
        family="llama", layers=2, hidden=64, intermediate=128, vocab=100, heads=4, kv_heads=2, context=512
    )
    resolved = resolve_model(ModelSpec(name="/models/mine", facts=facts))
    assert resolved.id == "/models/mine" and resolved.total_params == computed_params(facts)
    with pytest.raises(UnknownModel):
        resolve_model(ModelSpec(name="nobody/nothing"))


def test_facts_validation_names_the_problem() -> None:
    with pytest.raises(ValueError, match="kvLoraRank"):
        ModelFacts(
            family="deepseek_v3",
            layers=2,
            hidden=64,
            intermediate=128,
            vocab=100,
            heads=4,
            kv_heads=4,
            context=512,
        )
    with pytest.raises(ValueError, match="not modules of family llama"):
        ModelFacts(
            family="llama",
            layers=2,
            hidden=64,
            intermediate=128,
            vocab=100,
            heads=4,
            kv_heads=2,
            context=512,
            lora_targets=["c_attn"],
        )
