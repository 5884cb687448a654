"""Preflight: look at the whole dataset before any training, and decide what is used.

Counts (all in ``report``): lines and rows, malformed rows by reason (with line numbers in the
rejects), empty and duplicate rows, rows with TAC lifter artefacts (``artifactRows``, and per
marker), the token-length distribution with the real tokenizer, and ``fitRatio``: the share of
candidate rows whose prompt + completion fits ``maxSeqLength`` untruncated. Every row that is not
used goes to ``rejects`` with its reason; ``rejected`` counts them by reason.

No row left to train on is an error before training starts, which names the reasons.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tac2sol.errors import InvalidInput
from tac2sol.trainer.data import ARTIFACT_MARKERS, OnBadLine, ReadResult, Reject, Row, read_rows

if TYPE_CHECKING:
    from tac2sol.trainer.config import DataSection


@dataclass
class Preflight:
    report: dict[str, Any]
    kept: list[Row]  # rows that go on to the split, in file order
    rejects: list[Reject]
    read: ReadResult
    encoded: Any | None = None  # datasets.Dataset aligned with `candidates` (tokenizer given)
    candidates: list[Row] | None = None  # rows that were tokenized (well-formed, non-empty, unique)


def _percentile(sorted_values: list[int], q: float) -> int:
    if not sorted_values:
        return 0
    k = max(0, math.ceil(q / 100 * len(sorted_values)) - 1)
    return sorted_values[k]


def length_stats(lengths: list[int]) -> dict[str, Any]:
    s = sorted(lengths)
    if not s:
        return {"count": 0}
    return {
        "count": len(s),
        "min": s[0],
        "p50": _percentile(s, 50),
        "p90": _percentile(s, 90),
        "p95": _percentile(s, 95),
        "p99": _percentile(s, 99),
        "max": s[-1],
        "mean": round(sum(s) / len(s), 1),
    }


def preflight_data(data: DataSection, tokenizer: Any, cache_dir: Path) -> Preflight:
    """``run_preflight`` of the file and settings of a trainer config's ``data`` section."""
    return run_preflight(
        data.file,
        tokenizer=tokenizer,
        max_seq_length=data.max_seq_length,
        drop_artifact_rows=data.drop_artifact_rows,
        on_bad_line=data.on_bad_line,
        truncation=data.truncation,
        max_rows=data.max_rows,
        cache_dir=data.cache_dir or cache_dir,
    )


def run_preflight(
    path: str | Path,
    *,
    tokenizer: Any | None = None,
    max_seq_length: int = 2048,
    drop_artifact_rows: bool = False,
    on_bad_line: OnBadLine = "stop",
    truncation: str = "drop",
    max_rows: int | None = None,
    cache_dir: Path | None = None,
    require_rows: bool = True,
) -> Preflight:
    """Check ``path`` and return the report, the rows to use and the rejects (nothing written)."""
    read = read_rows(path, on_bad_line)
    rejects = list(read.rejects)
    artifact_rows = 0
    per_marker: Counter[str] = Counter()
    seen: dict[tuple[str, str], int] = {}
    candidates: list[Row] = []
    artifact_of: dict[int, list[str]] = {}
    for row in read.rows:
        found = row.artifacts()
        if found:
            artifact_rows += 1
            per_marker.update(found)
            artifact_of[row.line] = found
        if not row.input.strip() or not row.output.strip():
            which = "input" if not row.input.strip() else "output"
            rejects.append(Reject(row.line, f"empty_{which}", f'"{which}" is empty', row=row.to_json()))
            continue
        key = (row.input, row.output)
        if key in seen:
            rejects.append(
                Reject(row.line, "duplicate", f"same input and output as line {seen[key]}", row=row.to_json())
            )
            continue
        seen[key] = row.line
        candidates.append(row)

    kept: list[Row] = []
    for row in candidates:
        if drop_artifact_rows and row.line in artifact_of:
            markers = ", ".join(ARTIFACT_MARKERS[m] for m in artifact_of[row.line])
            rejects.append(
                Reject(
                    row.line,
                    "lifter_artifact",
                    f"TAC contains lifter artefacts: {markers}",
                    row=row.to_json(),
                )
            )
            continue
        kept.append(row)

    encoded = None
    token_report: dict[str, Any] = {"fitRatio": None, "tokenLengths": None, "truncatedRows": 0}
    if tokenizer is not None and candidates:
        from tac2sol.trainer.tokenized import encode_rows

        encoded = encode_rows(
            candidates,
            tokenizer,
            max_seq_length=max_seq_length,
            truncation=truncation,
            data_sha256=read.sha256,
            cache_dir=cache_dir,
        )
        by_line = {
            line: (length, reject, truncated)
            for line, length, reject, truncated in zip(
                encoded["line"], encoded["full_length"], encoded["reject"], encoded["truncated"], strict=True
            )
        }
        lengths = [by_line[r.line][0] for r in candidates]
        fits = sum(length <= max_seq_length for length in lengths)
        token_report = {
            "fitRatio": round(fits / len(lengths), 4),
            "fitRows": fits,
            "tokenLengths": length_stats(lengths),
            "truncatedRows": 0,
        }
        still: list[Row] = []
        for row in kept:
            length, reject, truncated = by_line[row.line]
            if reject:
                rejects.append(
                    Reject(
                        row.line,
                        reject,
                        f"{length} tokens > max_seq_length {max_seq_length}",
                        row=row.to_json(),
                    )
                )
                continue
            token_report["truncatedRows"] += int(truncated)
            still.append(row)
        kept = still

    unused = 0
    if max_rows is not None and len(kept) > max_rows:
        unused = len(kept) - max_rows
        kept = kept[:max_rows]

    rejects.sort(key=lambda r: r.line)
    rejected = Counter(r.reason for r in rejects)
    report: dict[str, Any] = {
        "file": str(path),
        "sha256": read.sha256,
        "lines": read.lines,
        "blankLines": read.blank_lines,
        "rows": read.lines - read.blank_lines,
        "valid": len(read.rows) - rejected.get("empty_input", 0) - rejected.get("empty_output", 0),
        "rejected": dict(sorted(rejected.items())),
        "rejectedRows": len(rejects),
        "duplicates": rejected.get("duplicate", 0),
        "artifactRows": artifact_rows,
        "artifacts": {name: per_marker.get(name, 0) for name in ARTIFACT_MARKERS},
        "dropArtifactRows": drop_artifact_rows,
        "maxSeqLength": max_seq_length,
        "truncation": truncation,
        **token_report,
        "unusedRows": unused,
        "kept": len(kept),
    }
    if require_rows and not kept:
        raise InvalidInput(_nothing_left(path, report))
    return Preflight(report, kept, rejects, read, encoded, candidates)


def _nothing_left(path: str | Path, report: dict[str, Any]) -> str:
    reasons = (
        ", ".join(f"{reason}: {n}" for reason, n in report["rejected"].items()) or "the file has no rows"
    )
    msg = f"{path}: no row is left to train on ({reasons})"
    if report["rejected"].get("too_long") or report["rejected"].get("completion_too_long"):
        lengths = report.get("tokenLengths") or {}
        msg += (
            f"; no row fits data.max_seq_length {report['maxSeqLength']} (shortest row: "
            f"{lengths.get('min')} tokens): raise max_seq_length (maxSeqLength) "
            "or set data.truncation truncate_input"
        )
    elif report["rejected"].get("lifter_artifact"):
        msg += "; set data.drop_artifact_rows false to train on rows with lifter artefacts"
    return msg
