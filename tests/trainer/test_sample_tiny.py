"""The project's own synthetic sample and tiny model: labelled, deterministic, reused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tac2sol.tour.sample import generate_rows, write_sample
from tac2sol.tour.tiny import SPEC_FILE, TinySpec, ensure_tiny_model


def test_sample_is_synthetic_labelled_deterministic_and_exercises_preflight(tmp_path: Path) -> None:
    rows = list(generate_rows())
    assert rows == list(generate_rows())
    assert 300 <= len(rows) <= 500
    assert all(
        r["metadata"]["synthetic"] is True and r["metadata"]["source"] == "tac2sol-synthetic" for r in rows
    )
    underflow = [r for r in rows if "stack_underflow" in r["input"]]
    assert 0.1 < len(underflow) / len(rows) < 0.3
    assert all(r["metadata"]["injected_stack_underflow"] for r in underflow)
    assert all(
        r["input"].startswith("function selector_") and r["output"].startswith("function ") for r in rows
    )
    assert len({r["metadata"]["kind"] for r in rows}) == 8
    path = write_sample(tmp_path / "s.jsonl")
    first = path.read_bytes()
    write_sample(tmp_path / "s.jsonl")
    assert path.read_bytes() == first and [json.loads(x) for x in first.decode().splitlines()] == rows


def _digest(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()
    }


def test_tiny_model_is_deterministic_and_reused(tmp_path: Path, tiny_model_dir: Path) -> None:
    spec = TinySpec(pretrain_steps=0)
    again = ensure_tiny_model(tmp_path / "again", spec, use_cache=False)
    assert _digest(again) == _digest(tiny_model_dir)  # same spec, same bytes
    stamp = (again / SPEC_FILE).stat().st_mtime_ns
    assert ensure_tiny_model(again, spec, use_cache=False) == again
    assert (again / SPEC_FILE).stat().st_mtime_ns == stamp  # reused, not rebuilt
    config = json.loads((again / "config.json").read_text())
    assert config["model_type"] == "llama" and config["hidden_size"] == spec.hidden_size
    assert config["vocab_size"] == spec.vocab_size and config["num_hidden_layers"] == spec.num_hidden_layers
