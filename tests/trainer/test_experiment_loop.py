"""The experiment loop end to end on the CPU: two tiny runs that differ in steps, each evaluated on
one shared test set (with the base-model ablation), then ``tac2sol compare`` with a decision and
the report files, and ``tac2sol decompile`` with the better adapter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

TAC2SOL = Path(sys.executable).parent / "tac2sol"
DECISIONS = {"keep", "reject", "no significant change", "too few rows to tell"}


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONSAFEPATH": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [str(TAC2SOL), *map(str, args)], capture_output=True, text=True, env=env, timeout=1200
    )


@pytest.mark.slow
def test_two_runs_on_one_test_set_then_compare(
    tmp_path: Path, tiny_model_dir: Path, sample_file: Path
) -> None:
    from tac2sol.tour.sample import write_sample

    test_set = write_sample(tmp_path / "test-set.jsonl", contracts=12, seed=777)  # other contracts
    outs = {}
    for name, steps in (("short", 2), ("long", 40)):
        config = tmp_path / f"{name}.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "run_name": name,
                    "output_dir": str(tmp_path / name),
                    "model": {"name_or_path": str(tiny_model_dir)},
                    "data": {"path": str(sample_file), "max_seq_length": 512, "validation_ratio": 0.1},
                    "training": {
                        "max_steps": steps,
                        "learning_rate": 5e-3,
                        "per_device_batch_size": 4,
                        "gradient_checkpointing": False,
                        "cpu_threads": 1,
                    },
                    "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
                    "evaluation": {
                        "max_samples": 40,
                        "max_new_tokens": 24,
                        "batch_size": 20,
                        "base_model": name == "long",
                        "test_set": str(test_set),
                    },
                    "metrics": {"enabled": False},
                }
            )
        )
        done = _cli("train", "--config", config)
        assert done.returncode == 0, done.stderr[-3000:]
        outs[name] = tmp_path / name
    short, long = (
        json.loads((outs[n] / "eval-test-set" / "eval.json").read_text()) for n in ("short", "long")
    )
    # the same test rows in both runs (same training rows, so the same exclusions), paired by id
    assert [r["id"] for r in short["rows"]] == [r["id"] for r in long["rows"]]
    assert short["testSet"]["excludedRows"] == long["testSet"]["excludedRows"]
    assert short["testSet"]["taken"] == 40

    report = tmp_path / "report"
    compared = _cli(
        "compare",
        outs["short"] / "eval-test-set",
        outs["long"] / "eval-test-set",
        outs["long"] / "eval-test-set-base",
        "--min-rows",
        "10",
        "--report",
        report,
        "-o",
        "json",
    )
    assert compared.returncode == 0, compared.stderr
    result = json.loads(compared.stdout)
    assert result["baseline"]["name"] == "short-test-set" and result["rows"] == len(short["rows"])
    names = [c["name"] for c in result["candidates"]]
    assert names == ["long-test-set", "long-test-set-base"]
    assert {c["decision"] for c in result["candidates"]} <= DECISIONS
    for name in ("compare.md", "compare.json", "compare-long-test-set.png", "compare-long-test-set-base.png"):
        assert (report / name).stat().st_size > 0, name
    assert "## long-test-set:" in (report / "compare.md").read_text()

    # the better adapter decompiles the test rows as its evaluation did (same rows, same batches)
    rows = test_set.read_text().splitlines()
    predictions = [
        json.loads(line)
        for line in (outs["long"] / "eval-test-set" / "predictions.jsonl").read_text().splitlines()
    ]
    tac = tmp_path / "rows.jsonl"
    tac.write_text(
        "".join(json.dumps({"input": json.loads(rows[p["line"] - 1])["input"]}) + "\n" for p in predictions)
    )
    decompiled = _cli("decompile", "--adapter", outs["long"] / "adapter", tac, "-o", "json")
    assert decompiled.returncode == 0, decompiled.stderr
    assert [f["solidity"] for f in json.loads(decompiled.stdout)["functions"]] == [
        p["prediction"] for p in predictions
    ]
