"""Evaluation metrics on hand-checked pairs, and the reports they produce."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tac2sol.trainer.config import EvalSection
from tac2sol.trainer.data import Row
from tac2sol.trainer.evaluate import edit_distance, score, size_bucket, write_report

GETTER = "function owner() public view returns (address) {\n    return owner;\n}"
SETTER = "\n".join(
    [
        "function setFee(uint256 fee_) external {",
        '    require(msg.sender == owner, "not owner");',
        "    fee = fee_;",
        "}",
    ]
)


def test_identical_text_scores_one_and_zero_distance() -> None:
    summary, items = score([GETTER, SETTER], [GETTER, SETTER])
    for item in items:
        assert item["similarity"] == pytest.approx(1.0, abs=1e-5)
        assert item["editDistance"] == 0.0 and item["exactMatch"] is True
    o = summary["overall"]
    assert o["samples"] == 2 and o["exactMatchRate"] == 1.0 and o["editDistanceMean"] == 0.0
    assert o["similarityAbove08"] == o["similarityAbove09"] == 1.0


def test_hand_checked_distances_and_similarities() -> None:
    assert edit_distance("kitten", "sitting") == pytest.approx(3 / 7)  # 3 edits, longer text 7
    assert edit_distance("abc", "") == 1.0
    summary, items = score(
        [GETTER.replace("owner", "admin"), "the weather is sunny today", "  " + GETTER + "\n"],
        [GETTER, GETTER, GETTER],
    )
    renamed, unrelated, padded = items
    assert 0.5 < renamed["similarity"] < 1.0  # same shape, other name
    assert unrelated["similarity"] < 0.3 < renamed["similarity"]
    assert padded["exactMatch"] is True and padded["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert renamed["editDistance"] == pytest.approx(10 / len(GETTER), abs=1e-6)  # 2 x 5 substitutions
    assert summary["overall"]["exactMatchRate"] == pytest.approx(1 / 3, abs=1e-4)


def test_breakdown_by_size_and_visibility(tmp_path: Path) -> None:
    big = "function f() public {\n" + "\n".join(f"    x{i} = {i};" for i in range(20)) + "\n}"
    assert size_bucket(GETTER) == "1-5 lines" and size_bucket(big) == "16+ lines"
    rows = [
        Row(1, "tac", GETTER, {"visibility": "public"}),
        Row(2, "tac", SETTER, {"visibility": "external"}),
        Row(3, "tac", big, {}),
    ]
    summary = write_report(tmp_path, rows, [GETTER, "nothing alike", big], EvalSection(), held_out=3)
    assert set(summary["bySize"]) == {"1-5 lines", "16+ lines"}
    assert summary["bySize"]["1-5 lines"]["samples"] == 2
    assert summary["byVisibility"]["public"]["exactMatchRate"] == 1.0
    assert summary["byVisibility"]["external"]["exactMatchRate"] == 0.0
    assert summary["byVisibility"]["unknown"]["samples"] == 1
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["overall"] == summary["overall"] and saved["paperBaseline"]["semanticSimilarityMean"] == 0.82
    lines = (tmp_path / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["line"] for line in lines] == [1, 2, 3]
    assert "| all | 3 |" in (tmp_path / "eval.md").read_text()
    assert (tmp_path / "similarity_histogram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
