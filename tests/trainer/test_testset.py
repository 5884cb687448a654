"""A fixed test set and the base-model ablation: overlap excluded and counted, rows paired by id."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tac2sol.errors import InvalidInput
from tac2sol.trainer.compare import compare_runs, load_runs
from tac2sol.trainer.config import TrainConfig
from tac2sol.trainer.data import Row
from tac2sol.trainer.testset import overlap

TAC2SOL = Path(sys.executable).parent / "tac2sol"


def _row(line: int, output: str, contract: str | None = None, body: str | None = None) -> Row:
    meta = {k: v for k, v in (("contract_address", contract), ("body_hash", body)) if v}
    return Row(line, f"tac {line}", output, meta)


def test_overlap_counts_each_key_and_excludes_the_row() -> None:
    train = [_row(1, "function a() {}", "0xA", "b1"), _row(2, "function b() {}", "0xB", "b2")]
    test = [
        _row(10, "function x() {}", "0xa", "z1"),  # same contract (case-insensitive)
        _row(11, "function y() {}", "0xC", "b2"),  # same body hash
        _row(12, "function  b()  {}", "0xD", "z3"),  # same output, whitespace aside
        _row(13, "function z() {}", "0xE", "z4"),  # nothing shared
        _row(14, "function w() {}"),  # no metadata, nothing shared
    ]
    kept, report = overlap(test, train)
    assert [r.line for r in kept] == [13, 14]
    assert report == {
        "rows": 3,
        "byKey": {"contract": 1, "body": 1, "exactOutput": 1, "exactInput": 0},
        "trainingRows": 2,
    }


def _fresh_rows(n: int) -> list[dict[str, Any]]:
    """Rows no sample row shares a key with (own contracts, bodies and texts)."""
    return [
        {
            "input": f"function selector_{i:08x}:\n  block_0000:\n    temp_{i} = storage[0x{i:x}]",
            "output": f"function fresh{i}() external view returns (uint256) {{\n    return fresh{i};\n}}",
            "metadata": {"contract_address": f"0x{0xFEED00 + i:040x}", "body_hash": f"fresh-{i}"},
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, sample_file: Path
) -> dict[str, Any]:
    """One short run with a test set (3 rows copied from the data, 5 fresh) and the base-model ablation."""
    from tac2sol.trainer.train import train

    root = tmp_path_factory.mktemp("testset")
    copied = sample_file.read_text().splitlines()[:3]
    test_file = root / "test-set.jsonl"
    test_file.write_text("".join(line + "\n" for line in [*copied, *map(json.dumps, _fresh_rows(5))]))
    cfg = TrainConfig(
        run_name="testset",
        output_dir=str(root / "out"),
        model={"name_or_path": str(tiny_model_dir)},
        data={"path": str(sample_file), "max_seq_length": 512, "validation_ratio": 0.1},
        training={
            "max_steps": 2,
            "per_device_batch_size": 2,
            "gradient_checkpointing": False,
            "cpu_threads": 1,
        },
        lora={"r": 8, "alpha": 16, "dropout": 0.0},
        evaluation={
            "max_samples": 8,
            "max_new_tokens": 8,
            "batch_size": 8,
            "base_model": True,
            "test_set": str(test_file),
        },
        metrics={"enabled": False},
    )
    said: list[str] = []
    result = train(cfg, say=said.append)
    return {"cfg": cfg, "out": Path(cfg.output_dir), "said": said, "result": result, "test_file": test_file}


def _eval(out: Path, name: str) -> dict[str, Any]:
    return dict(json.loads((out / name / "eval.json").read_text()))


def test_test_set_excludes_rows_the_adapter_trained_on(trained: dict[str, Any]) -> None:
    out = trained["out"]
    held_out_lines = set(json.loads((out / "data" / "split.json").read_text())["evalLines"])
    trained_on = sum(line not in held_out_lines for line in (1, 2, 3))  # copies of sample lines 1-3
    test = _eval(out, "eval-test-set")
    ts = test["testSet"]
    assert ts["taken"] == 8 and ts["excludedRows"] == trained_on and ts["evaluatedRows"] == 8 - trained_on
    assert ts["overlap"]["byKey"]["exactInput"] == trained_on  # the copies share their very TAC
    assert len(test["rows"]) == test["overall"]["samples"] == 8 - trained_on
    assert f"{trained_on} share a key with one of the" in (out / "eval-test-set" / "eval.md").read_text()
    assert any(
        s.startswith(f"test set: {trained['test_file']}: 8 rows, {trained_on} overlap")
        for s in trained["said"]
    )
    run = json.loads(trained["result"].run_json.read_text())
    assert run["results"]["evaluation"]["testSet"]["excludedRows"] == trained_on
    assert run["results"]["evaluation"]["testSet"]["samples"] == 8 - trained_on


def test_base_model_is_evaluated_on_the_same_rows(trained: dict[str, Any]) -> None:
    out = trained["out"]
    for name in ("eval", "eval-test-set"):
        adapter, base = _eval(out, name), _eval(out, name + "-base")
        assert adapter["settings"]["model"] == "adapter" and base["settings"]["model"] == "base"
        assert [r["id"] for r in adapter["rows"]] == [r["id"] for r in base["rows"]]
        assert "base model without the adapter" in (out / (name + "-base") / "eval.md").read_text()
    result = compare_runs(load_runs([out / "eval-base", out / "eval"]), min_rows=1, resamples=200)
    assert result["rows"] == 8 and result["baseline"]["name"].endswith("-base")
    for name in ("eval", "eval-test-set"):  # the run paired them itself: adapter minus base
        written = json.loads((out / (name + "-vs-base") / "compare.json").read_text())
        assert written["baseline"]["path"] == str(out / (name + "-base") / "eval.json")
        sim = written["candidates"][0]["metrics"]["similarity"]
        means = [_eval(out, n)["overall"]["semanticSimilarityMean"] for n in (name + "-base", name)]
        assert [sim["mean_a"], sim["mean_b"]] == pytest.approx(means, abs=1e-3)
        assert sim["low"] <= sim["diff"] <= sim["high"]
    said = [s for s in trained["said"] if s.startswith("adapter vs base model")]
    assert len(said) == 2 and "semantic similarity" in said[0] and "eval-vs-base/compare.md" in said[0]
    evaluation = json.loads(trained["result"].run_json.read_text())["results"]["evaluation"]
    assert {"base", "testSet", "factF1", "semanticSimilarityMean"} <= set(evaluation)
    assert "base" in evaluation["testSet"]


def test_missing_test_set_fails_before_training(make_config: Any, tmp_path: Path) -> None:
    from tac2sol.trainer.train import train

    cfg = make_config(evaluation={"enabled": True, "test_set": str(tmp_path / "nope.jsonl")})
    with pytest.raises(InvalidInput, match=r"evaluation\.test_set: .*nope\.jsonl does not exist"):
        train(cfg)
    assert not (Path(cfg.output_dir) / "adapter").exists()


def test_evaluate_cli_test_set_and_missing_file(trained: dict[str, Any], tmp_path: Path) -> None:
    out = trained["out"]
    env = {**os.environ, "PYTHONSAFEPATH": "1", "HF_HUB_OFFLINE": "1"}
    base = [str(TAC2SOL), "evaluate", "--config", str(out / "config.yaml"), "--max-samples", "8"]
    missing = subprocess.run(
        [*base, "--test-set", str(tmp_path / "gone.jsonl")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert missing.returncode == 2, missing.stderr
    assert missing.stderr.strip().splitlines() == [
        f"error: evaluation.test_set: {tmp_path / 'gone.jsonl'} does not exist; give a JSONL file of "
        "{input, output, metadata} rows (spec.evaluation.testSet), or leave the test set out"
    ]
    before = _eval(out, "eval-test-set")
    again = subprocess.run(
        [*base, "--test-set", str(trained["test_file"]), "--no-base-model"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr
    assert f"report: {out / 'eval-test-set' / 'eval.md'}" in again.stdout
    assert _eval(out, "eval-test-set")["overall"] == before["overall"]  # greedy: the same scores
