"""Trainer test fixtures: the tiny model and tokenizer (built once per session), sample data."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    """Tiny models train several times faster on one intra-op thread (see training.cpu_threads)."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def solc() -> Any:
    """The pinned Solidity compiler, installed through hack/install-solc.sh when missing (npm
    registry), never skipped. Any test whose evaluation reports facts or syntax validity asks for it:
    without solc those scores are "not measured" (n = 0), on a cold machine as much as here."""
    import subprocess

    from tac2sol.trainer.solc import SOLC_VERSION, find_solc, install_script, missing_reason

    found = find_solc()
    if found is None:
        subprocess.run(["bash", str(install_script())], check=True, timeout=600)
        found = find_solc()
    assert found is not None, missing_reason()
    assert found.version == SOLC_VERSION
    return found


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama (random weights, no pre-training: fast to build) + a tokenizer trained on the
    synthetic sample. No download."""
    from tac2sol.tour.tiny import TinySpec, ensure_tiny_model

    return ensure_tiny_model(
        tmp_path_factory.mktemp("tiny") / "tiny-model", TinySpec(pretrain_steps=0), use_cache=False
    )


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def sample_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tac2sol.tour.sample import write_sample

    return write_sample(tmp_path_factory.mktemp("sample") / "tac2sol-sample.jsonl")


@pytest.fixture
def write_jsonl(tmp_path: Path) -> Callable[[list[Any]], Path]:
    """Write rows (dicts are dumped as JSON, strings written as they are) to a JSONL file."""

    def write(lines: list[Any], name: str = "data.jsonl") -> Path:
        path = tmp_path / name
        path.write_text(
            "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
        )
        return path

    return write


def row(i: int, **meta: Any) -> dict[str, Any]:
    """A small well-formed row (helpers live in conftest: tests/ is not a package)."""
    return {
        "input": f"function selector_{i:08x}:\n  block_0000:\n    temp_{i} = storage[0{i % 10}]",
        "output": f"function f{i}() public view returns (uint256) {{\n    return v{i};\n}}",
        "metadata": {"contract_address": f"0x{i:040x}", "body_hash": f"{i:032x}", **meta},
    }


@pytest.fixture
def make_row() -> Callable[..., dict[str, Any]]:
    return row


def train_config(tmp_path: Path, model_dir: Path, data_file: Path, **sections: Any) -> Any:
    """A TrainConfig for a short CPU run of the tiny model (sections merged over the defaults)."""
    from tac2sol.trainer.config import TrainConfig

    values: dict[str, Any] = {
        "run_name": "test",
        "output_dir": str(tmp_path / "out"),
        "model": {"name_or_path": str(model_dir)},
        "data": {"path": str(data_file), "max_seq_length": 512, "validation_ratio": 0.1},
        "training": {
            "max_steps": 6,
            "learning_rate": 5e-3,
            "per_device_batch_size": 2,
            "logging_steps": 2,
            "save_steps": 3,
            "save_total_limit": 3,
            "gradient_checkpointing": False,
            "cpu_threads": 1,
        },
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "evaluation": {"enabled": False, "max_samples": 4, "max_new_tokens": 16, "batch_size": 4},
        "metrics": {"enabled": False},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            values.setdefault(key, {}).update(value)
        else:
            values[key] = value
    return TrainConfig(**values)


@pytest.fixture
def make_config(tmp_path: Path, tiny_model_dir: Path, sample_file: Path) -> Callable[..., Any]:
    return lambda **sections: train_config(tmp_path, tiny_model_dir, sample_file, **sections)
