"""Reading and preflight: every line accounted for, counts checked against independent counts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tac2sol.errors import InvalidInput
from tac2sol.trainer.data import ARTIFACT_MARKERS, read_rows
from tac2sol.trainer.preflight import length_stats, run_preflight


@pytest.mark.parametrize(
    ("line", "reason", "message"),
    [
        ("{not json", "bad_json", r"data\.jsonl:2: not valid JSON"),
        ("[1, 2]", "not_an_object", r"data\.jsonl:2: expected a JSON object, got list"),
        ('{"input": "x"}', "missing_output", r'data\.jsonl:2: the row has no "output" field'),
        ('{"output": "x"}', "missing_input", r'data\.jsonl:2: the row has no "input" field'),
        (
            '{"input": "x", "output": 3}',
            "output_not_text",
            r'data\.jsonl:2: "output" must be a string, got int',
        ),
        (
            '{"input": "x", "output": "y", "metadata": 1}',
            "metadata_not_an_object",
            r"data\.jsonl:2: .*metadata",
        ),
    ],
    ids=[
        "bad-json",
        "not-object",
        "missing-output",
        "missing-input",
        "output-not-text",
        "metadata-not-object",
    ],
)
def test_malformed_line_stops_with_line_number_or_goes_to_rejects(
    write_jsonl: Any, make_row: Any, line: str, reason: str, message: str
) -> None:
    path = write_jsonl([make_row(1), line, make_row(3)])
    with pytest.raises(InvalidInput, match=message) as err:
        read_rows(path, on_bad_line="stop")
    assert "--on-bad-line skip" in str(err.value)

    result = read_rows(path, on_bad_line="skip")
    assert [r.line for r in result.rows] == [1, 3]
    assert [(r.line, r.reason) for r in result.rejects] == [(2, reason)]


def test_missing_file_and_directory_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"nope\.jsonl: the dataset file does not exist"):
        read_rows(tmp_path / "nope.jsonl")
    with pytest.raises(InvalidInput, match="is a directory"):
        read_rows(tmp_path)


def test_non_utf8_names_the_line(tmp_path: Path, make_row: Any) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(json.dumps(make_row(1)).encode() + b"\n\xff\xfe\n")
    with pytest.raises(InvalidInput, match=r"bad\.jsonl:2: not UTF-8"):
        read_rows(path)
    skipped = read_rows(path, on_bad_line="skip")
    assert [(r.line, r.reason) for r in skipped.rejects] == [(2, "not_utf8")] and len(skipped.rows) == 1


def test_empty_duplicate_and_artifact_rows_are_counted_and_rejected(write_jsonl: Any, make_row: Any) -> None:
    underflow = make_row(4)
    underflow["input"] += "\n    temp_9 = stack_underflow"
    unknown = make_row(5)
    unknown["input"] += "\n    temp_9 = <unknown>"
    empty = make_row(6)
    empty["output"] = "   "
    path = write_jsonl([make_row(1), make_row(2), make_row(1), "", underflow, unknown, empty])

    kept_all = run_preflight(path)
    report = kept_all.report
    assert report["rows"] == 6 and report["blankLines"] == 1 and report["lines"] == 7
    assert report["rejected"] == {"duplicate": 1, "empty_output": 1}
    assert report["artifactRows"] == 2
    assert report["artifacts"] == {"stack_underflow": 1, "unknown_value": 1, "none_operation": 0}
    assert [r.line for r in kept_all.kept] == [1, 2, 5, 6]
    dup = next(r for r in kept_all.rejects if r.reason == "duplicate")
    assert dup.line == 3 and "line 1" in dup.detail and dup.row is not None

    dropped = run_preflight(path, drop_artifact_rows=True)
    assert dropped.report["rejected"] == {"duplicate": 1, "empty_output": 1, "lifter_artifact": 2}
    assert [r.line for r in dropped.kept] == [1, 2]
    assert dropped.report["kept"] + dropped.report["rejectedRows"] == dropped.report["rows"]


def test_token_lengths_fit_ratio_and_too_long_rows(
    write_jsonl: Any, make_row: Any, tiny_tokenizer: Any
) -> None:
    long_row = make_row(3)
    long_row["input"] = "\n".join(f"    temp_{i} = storage[{i:02x}]" for i in range(400))
    path = write_jsonl([make_row(1), make_row(2), long_row])
    result = run_preflight(path, tokenizer=tiny_tokenizer, max_seq_length=256)
    report = result.report
    assert report["fitRatio"] == pytest.approx(2 / 3, abs=1e-3)
    assert report["rejected"] == {"too_long": 1}
    assert report["tokenLengths"]["max"] > 256 >= report["tokenLengths"]["min"]
    assert [r.line for r in result.kept] == [1, 2]

    truncated = run_preflight(path, tokenizer=tiny_tokenizer, max_seq_length=256, truncation="truncate_input")
    assert truncated.report["rejected"] == {} and truncated.report["truncatedRows"] == 1


def test_no_row_fits_is_an_error_before_training(
    write_jsonl: Any, make_row: Any, tiny_tokenizer: Any
) -> None:
    path = write_jsonl([make_row(1), make_row(2)])
    with pytest.raises(InvalidInput, match=r"no row is left to train on \(too_long: 2\); no row fits"):
        run_preflight(path, tokenizer=tiny_tokenizer, max_seq_length=16)


def test_length_stats() -> None:
    assert length_stats(list(range(1, 101))) == {
        "count": 100, "min": 1, "p50": 50, "p90": 90, "p95": 95, "p99": 99, "max": 100, "mean": 50.5
    }  # fmt: skip
    assert length_stats([]) == {"count": 0}


def _independent_counts(path: Path) -> dict[str, Any]:
    """Count with nothing but json and str: the numbers preflight must agree with."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    markers = list(ARTIFACT_MARKERS.values())
    pairs = [(r["input"], r["output"]) for r in rows]
    return {
        "rows": len(rows),
        "stack_underflow": sum("stack_underflow" in r["input"] for r in rows),
        "artifact_rows": sum(any(m in r["input"] for m in markers) for r in rows),
        "duplicates": len(pairs) - len(set(pairs)),
        "empty": sum(not r["input"].strip() or not r["output"].strip() for r in rows),
    }


def test_preflight_on_the_real_500_rows_matches_an_independent_count(
    dataset_500: Path, tiny_tokenizer: Any
) -> None:
    expected = _independent_counts(dataset_500)
    assert expected["rows"] == 500 and expected["stack_underflow"] == 249  # the dataset README's facts

    result = run_preflight(dataset_500, tokenizer=tiny_tokenizer, max_seq_length=4096)
    report = result.report
    assert report["rows"] == report["valid"] == expected["rows"]
    assert report["artifacts"]["stack_underflow"] == expected["stack_underflow"]
    assert report["artifactRows"] == expected["artifact_rows"]
    assert report["duplicates"] == expected["duplicates"]
    too_long = sum(n > 4096 for n in _lengths(result))
    assert report["rejected"] == ({"too_long": too_long} if too_long else {})
    assert report["fitRatio"] == pytest.approx(1 - too_long / 500, abs=1e-4)

    dropped = run_preflight(dataset_500, drop_artifact_rows=True)
    assert dropped.report["rejected"] == {"lifter_artifact": expected["artifact_rows"]}
    assert dropped.report["kept"] == 500 - expected["artifact_rows"]
    assert all(not re.search("stack_underflow|<unknown>|None\\(", r.input) for r in dropped.kept)


def _lengths(result: Any) -> list[int]:
    return list(result.encoded["full_length"])
