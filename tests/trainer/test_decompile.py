"""``tac2sol decompile``: evaluation's prompt and decoding, timings, and a base model that does not fit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tac2sol.errors import InvalidInput
from tac2sol.trainer.config import TrainConfig
from tac2sol.trainer.decompile import Function, read_functions

TAC2SOL = Path(sys.executable).parent / "tac2sol"
SAMPLES = 6


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, sample_file: Path) -> Path:
    """A two-step adapter, evaluated on 6 held-out rows; returns its output directory."""
    from tac2sol.trainer.train import train

    out = tmp_path_factory.mktemp("decompile") / "out"
    cfg = TrainConfig(
        run_name="decompile",
        output_dir=str(out),
        model={"name_or_path": str(tiny_model_dir)},
        data={"path": str(sample_file), "max_seq_length": 512, "validation_ratio": 0.1},
        training={"max_steps": 2, "per_device_batch_size": 2, "gradient_checkpointing": False},
        lora={"r": 8, "alpha": 16, "dropout": 0.0},
        evaluation={"max_samples": SAMPLES, "max_new_tokens": 12, "batch_size": 3},
        metrics={"enabled": False},
    )
    train(cfg)
    return out


def _cli(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONSAFEPATH": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [str(TAC2SOL), "decompile", *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def test_reads_one_tac_text_or_jsonl_rows() -> None:
    assert read_functions("f.tac", "\nfunction selector_1:\n  x = 1\n") == [
        Function(1, None, "function selector_1:\n  x = 1")
    ]
    rows = '{"input": "a", "id": 7}\n\n{"input": "b", "output": "ignored"}\n'
    assert read_functions("r.jsonl", rows) == [Function(1, "7", "a"), Function(3, None, "b")]
    for text, message in (
        ("  \n", r"f: empty; give the TAC"),
        ('{"input": "a"}\n{"output": "x"}\n', r'f:2: a row needs "input"'),
        ('{"input": "a"}\n{bad\n', r"f:2: not valid JSON"),
    ):
        with pytest.raises(InvalidInput, match=message):
            read_functions("f", text)


def test_decompiles_as_evaluation_generates(run: Path, tmp_path: Path) -> None:
    predictions = [json.loads(line) for line in (run / "eval" / "predictions.jsonl").read_text().splitlines()]
    data = TrainConfig.from_file(run / "config.yaml").data.file
    rows = data.read_text().splitlines()
    wanted = [json.loads(rows[p["line"] - 1]) for p in predictions]
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "input": r["input"]}) + "\n" for i, r in enumerate(wanted)))
    done = _cli("--adapter", run / "adapter", jsonl, "-o", "json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    # same rows, same batches, same prompt and greedy decoding: the same Solidity as evaluation wrote
    assert [f["solidity"] for f in result["functions"]] == [p["prediction"] for p in predictions]
    assert result["settings"]["maxNewTokens"] == 12 and result["settings"]["batchSize"] == 3
    for f in result["functions"]:
        assert (
            f["batchSize"] == 3
            and f["batchSeconds"] > 0
            and f["seconds"] == pytest.approx(f["batchSeconds"] / 3, abs=1e-3)
        )
        assert f["truncated"] is False and f["promptTokens"] > 10
    # one function as a .tac text on stdin: plain Solidity out
    one = _cli("--adapter", run / "adapter", "-", stdin=wanted[0]["input"])
    assert one.returncode == 0, one.stderr
    assert one.stdout.strip() == predictions[0]["prediction"].strip()


def test_a_base_model_of_another_architecture_exits_2(run: Path, tmp_path: Path) -> None:
    from tac2sol.tour.tiny import TinySpec, ensure_tiny_model

    other = ensure_tiny_model(
        tmp_path / "other", TinySpec(hidden_size=64, intermediate_size=128, pretrain_steps=0), use_cache=False
    )
    tac = tmp_path / "f.tac"
    tac.write_text("function selector_1:\n  x = 1\n")
    done = _cli("--adapter", run / "adapter", "--base", other, tac)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: --base {other}: the adapter {run / 'adapter'} was trained on ")
    assert "another architecture (hidden_size 64 vs 128, intermediate_size 128 vs 256)" in line


def test_bad_input_exits_2(run: Path, tmp_path: Path) -> None:
    tac = tmp_path / "f.tac"
    tac.write_text("function selector_1:\n  x = 1\n")
    cases: list[tuple[list[Any], str]] = [
        ([run / "adapter", tmp_path / "missing.tac"], f"error: {tmp_path / 'missing.tac'}: no such file"),
        ([run / "adapter", "-"], "error: stdin: empty; give the TAC of one function"),
        ([tmp_path, tac], f"error: --adapter: {tmp_path} has no adapter_config.json"),
    ]
    for (adapter, source), message in cases:
        done = _cli("--adapter", adapter, source, stdin="")
        assert done.returncode == 2 and done.stderr.startswith(message), done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
