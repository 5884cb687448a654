"""``tac2sol compare`` end to end on evaluation directories written by the real report writer."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tac2sol.trainer.compare import compare_runs, load_runs
from tac2sol.trainer.config import EvalSection
from tac2sol.trainer.data import Row
from tac2sol.trainer.evaluate import write_report
from tac2sol.trainer.solidity import selector

TAC2SOL = Path(sys.executable).parent / "tac2sol"
N = 80
LOOP_ROWS = 10  # a slice with too few rows


def _reference(i: int) -> str:
    body = f'    require(v > {i}, "small");\n    value{i} = v;\n    emit Set{i}(msg.sender, v);\n'
    if i < LOOP_ROWS:
        body += "    for (uint k; k < v; k++) { total += k; }\n"
    return f"function setValue{i}(uint256 v) external {{\n{body}}}"


def _weak(i: int) -> str:
    """What a weaker model writes: the right header, no guard, no event, another variable."""
    return f"function setValue{i}(uint256 v) external {{\n    stored = v;\n}}"


@pytest.fixture(scope="module")
def evals(tmp_path_factory: pytest.TempPathFactory, solc: Any) -> dict[str, Path]:
    """Evaluations written by the real report writer; their facts come from solc."""
    root = tmp_path_factory.mktemp("evals")
    rows = [
        Row(
            i + 1,
            f"tac of function {i}",
            _reference(i),
            {"visibility": "external", "selector": selector(f"setValue{i}(uint256)")},
        )
        for i in range(N)
    ]
    out = {}
    for name, predictions in (
        ("baseline", [_weak(i) for i in range(N)]),
        ("better", [_reference(i) for i in range(N)]),
    ):
        write_report(root / name / "eval", rows, predictions, EvalSection(), held_out=N)
        out[name] = root / name  # a run's output directory: compare finds eval/eval.json
    # the same predictions as the baseline give the same evaluation: a run that changed nothing
    shutil.copytree(root / "baseline", root / "same")
    out["same"] = root / "same"
    # the better run evaluated on 70 of the 80 rows: another test set
    subset = json.loads((root / "better" / "eval" / "eval.json").read_text())
    subset["rows"] = subset["rows"][:70]
    (root / "subset").mkdir()
    (root / "subset" / "eval.json").write_text(json.dumps(subset))
    out["subset"] = root / "subset"
    return out


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    return subprocess.run(
        [str(TAC2SOL), "compare", *map(str, args)], capture_output=True, text=True, env=env, timeout=300
    )


def test_compare_end_to_end(evals: dict[str, Path], tmp_path: Path) -> None:
    report = tmp_path / "report"
    done = _run(evals["baseline"], evals["better"], evals["same"], "--report", report)
    assert done.returncode == 0, done.stderr
    assert "baseline: baseline (80 rows)" in done.stdout
    assert (
        "better vs baseline: KEEP" in done.stdout and "same vs baseline: NO SIGNIFICANT CHANGE" in done.stdout
    )
    assert "hard:loops" in done.stdout and "too few rows" in done.stdout
    saved = json.loads((report / "compare.json").read_text())
    better, same = saved["candidates"]
    sim = better["metrics"]["similarity"]
    assert better["decision"] == "keep" and sim["n"] == N and sim["wins"] == N and sim["low"] > 0
    assert better["metrics"]["editDistance"]["decision"] == "keep"  # lower is better, and it went down
    assert (
        better["metrics"]["fact.guards"]["mean_a"] == 0.0
        and better["metrics"]["fact.guards"]["mean_b"] == 1.0
    )
    assert better["metrics"]["signatureMatch"]["decision"] == "no significant change"  # both headers right
    assert better["slices"]["hard:loops"]["similarity"]["n"] == LOOP_ROWS
    assert better["slices"]["hard:loops"]["similarity"]["decision"] == "too few rows"
    assert same["metrics"]["similarity"]["ties"] == N and same["decision"] == "no significant change"
    md = (report / "compare.md").read_text()
    assert "## better: keep" in md and "| semantic similarity |" in md
    for name in ("better", "same"):
        assert (report / f"compare-{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_json_output_and_gates(evals: dict[str, Path]) -> None:
    done = _run(evals["better"], evals["baseline"], "-o", "json", "--gate-slice-loss", "0.01")
    assert done.returncode == 1  # the weaker run loses every slice that has enough rows
    result = json.loads(done.stdout)
    assert result["candidates"][0]["decision"] == "reject"
    (gate,) = result["gates"]
    assert (
        not gate["passed"]
        and "size:1-5 lines (" in gate["detail"]
        and "visibility:external (" in gate["detail"]
    )
    assert "hard:loops" not in gate["detail"]  # 10 rows: below --gate-min-rows
    assert (
        _run(evals["baseline"], evals["better"], "--gate-slice-loss", "0.01", "--gate-keep").returncode == 0
    )
    kept = _run(evals["baseline"], evals["same"], "--gate-keep")
    assert kept.returncode == 1 and "gate FAIL: same: decision is keep" in kept.stdout
    assert _run(evals["better"], evals["baseline"], "--gate-loss", "signatureMatch=0").returncode == 0
    assert _run(evals["better"], evals["baseline"], "--gate-loss", "fact.guards=0.5").returncode == 1


def test_different_row_sets(evals: dict[str, Path]) -> None:
    done = _run(evals["baseline"], evals["subset"])
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "different rows (70 and 80, 70 in common)" in done.stderr and "--intersect" in done.stderr
    kept = _run(evals["baseline"], evals["subset"], "--intersect", "-o", "json")
    assert kept.returncode == 0, kept.stderr
    result = json.loads(kept.stdout)
    assert (
        result["rows"] == 70
        and result["note"] == "--intersect kept 70 rows that every run has (80 in baseline)"
    )


def test_bad_inputs_exit_2_with_one_message(evals: dict[str, Path], tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "eval.json").write_text(json.dumps({"accuracy": 0.9}))
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "eval.json").write_text('{"kind": "tac2sol-eval", "rows": [')
    cases = [
        ((evals["baseline"], tmp_path / "missing"), "no such directory"),
        ((evals["baseline"], tmp_path), "no eval.json here or in eval/"),
        ((evals["baseline"], foreign), "not a tac2sol evaluation"),
        ((evals["baseline"], corrupt), "not readable JSON"),
        ((evals["baseline"],), "at least two evaluation directories"),
        ((evals["baseline"], evals["better"], "--metric", "accuracy"), "--metric: 'accuracy' is not one of"),
        ((evals["baseline"], evals["better"], "--gate-loss", "similarity"), "write METRIC=MARGIN"),
        ((evals["baseline"], evals["better"], "-o", "yaml"), "use table or json"),
    ]
    for args, message in cases:
        done = _run(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


def test_compare_is_reproducible(evals: dict[str, Path]) -> None:
    runs = load_runs([evals["baseline"], evals["better"]])
    first = compare_runs(runs, seed=3)
    assert first == compare_runs(runs, seed=3) and first["seed"] == 3
    assert (
        first["candidates"][0]["metrics"]["similarity"]
        != compare_runs(runs, seed=4)["candidates"][0]["metrics"]["similarity"]
    )
