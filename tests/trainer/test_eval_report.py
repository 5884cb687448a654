"""The evaluation report with the code-aware scores: eval.json schema and rows, eval.md, plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tac2sol.errors import InvalidInput
from tac2sol.trainer.config import EvalSection
from tac2sol.trainer.data import Row
from tac2sol.trainer.evalfile import EVAL_KIND, EVAL_SCHEMA_VERSION, load_eval, row_ids
from tac2sol.trainer.evaluate import write_report
from tac2sol.trainer.facts import FACT_KINDS
from tac2sol.trainer.solc import SOLC_DIR_ENV

SETTER = "function setFee(uint256 fee_) external onlyOwner {\n    require(fee_ < 100);\n    fee = fee_;\n}"
LOOP = (
    "function sum(uint256[] memory xs) public pure returns (uint256 s) {\n"
    "    for (uint i; i < xs.length; i++) s += xs[i];\n}"
)


def _rows() -> list[Row]:
    return [
        Row(1, "tac one", SETTER, {"visibility": "external", "selector": "0x69fe0e2d"}),
        Row(2, "tac two", LOOP, {"visibility": "public", "selector": "0x0194db8e"}),  # sum(uint256[])
        Row(7, "tac one", SETTER, {"visibility": "external", "selector": "0x69fe0e2d"}),  # a repeated row
    ]


def test_rows_ids_are_stable_and_unique() -> None:
    ids = row_ids([("a", "b"), ("c", "d"), ("a", "b")])
    assert ids[0] != ids[1] and ids[2] == ids[0] + "-2" and len(ids[0]) == 16
    assert row_ids([("c", "d")]) == [ids[1]]  # the same row has the same id at any position


def test_report_carries_code_scores_rows_and_slices(tmp_path: Path, solc: Any) -> None:
    predictions = [
        SETTER,
        LOOP.replace("for (", "for ("[:-1]),
        "function setFee(uint8 x) external { fee = x; }",
    ]
    summary = write_report(tmp_path, _rows(), predictions, EvalSection(), held_out=3)
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["kind"] == EVAL_KIND and saved["schemaVersion"] == EVAL_SCHEMA_VERSION
    assert saved["overall"] == summary["overall"]
    rows = saved["rows"]
    assert [r["line"] for r in rows] == [1, 2, 7] and len({r["id"] for r in rows}) == 3
    first, broken, wrong_type = (r["metrics"] for r in rows)
    assert first["signatureMatch"] == 1.0 and first["syntaxValid"] == 1.0 and first["fact.guards"] == 1.0
    assert broken["syntaxValid"] == 0.0 and broken["signatureMatch"] == 1.0
    assert wrong_type["signatureMatch"] == 0.0  # uint8 is another selector
    assert rows[1]["slices"] == ["size:1-5 lines", "visibility:public", "hard:loops"]
    assert saved["overall"]["signatureMatchRate"] == pytest.approx(2 / 3, abs=1e-4)
    assert saved["bySlice"]["hard:loops"] == {
        **saved["bySlice"]["hard:loops"],
        "samples": 1,
        "tooFewRows": True,
    }
    assert saved["syntax"]["parser"].startswith("solc 0.8.30")
    md = (tmp_path / "eval.md").read_text()
    assert "| all | 3 |" in md and "hard:loops (too few rows to judge)" in md
    for kind in FACT_KINDS:
        assert f"| {kind} |" in md
    assert (tmp_path / "slices.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ids = [json.loads(line)["id"] for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert ids == [r["id"] for r in rows]
    assert set(load_eval(tmp_path).rows) == set(ids)


def test_report_without_compiler_says_not_measured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SOLC_DIR_ENV, str(tmp_path / "no-solc"))
    summary = write_report(tmp_path / "eval", _rows(), [SETTER, LOOP, SETTER], EvalSection(), held_out=3)
    assert summary["syntax"]["validRate"] is None and summary["overall"]["syntaxValidRate"] is None
    assert all(r["metrics"]["syntaxValid"] is None for r in summary["rows"])
    md = (tmp_path / "eval" / "eval.md").read_text()
    assert "Syntax validity: not measured (" in md and "Fact-level F1: not measured (" in md
    assert "| 0.0% |" not in md.split("| all |")[1].splitlines()[0]  # never 0 for not measured


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not readable JSON"),
        ('{"overall": {}}', "not a tac2sol evaluation"),
        (f'{{"kind": "{EVAL_KIND}", "schemaVersion": 1, "rows": []}}', "schemaVersion 1"),
        (f'{{"kind": "{EVAL_KIND}", "schemaVersion": {EVAL_SCHEMA_VERSION}}}', '"rows" is missing'),
        (
            f'{{"kind": "{EVAL_KIND}", "schemaVersion": {EVAL_SCHEMA_VERSION}, "rows": [{{"id": "x"}}]}}',
            "rows[0] needs id",
        ),
    ],
    ids=["corrupt", "foreign", "old-schema", "no-rows", "bad-row"],
)
def test_bad_eval_files(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "eval.json").write_text(content)
    with pytest.raises(InvalidInput, match=message.replace("[", r"\[")) as err:
        load_eval(tmp_path)
    assert str(tmp_path / "eval.json") in str(err.value)


def test_missing_or_empty_eval_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no such directory"):
        load_eval(tmp_path / "absent")
    with pytest.raises(InvalidInput, match=r"no eval\.json here or in eval/"):
        load_eval(tmp_path)
