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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama model + tokenizer trained on the synthetic sample (no download)."""
    from tac2sol.trainer.tiny import ensure_tiny_model

    return ensure_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-model")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def sample_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tac2sol.trainer.sample import write_sample

    return write_sample(tmp_path_factory.mktemp("sample") / "tac2sol-sample.jsonl")


@pytest.fixture
def write_jsonl(tmp_path: Path) -> Callable[[list[Any]], Path]:
    """Write rows (dicts are dumped as JSON, strings written as they are) to a JSONL file."""

    def write(lines: list[Any], name: str = "data.jsonl") -> Path:
        path = tmp_path / name
        path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
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
