"""The ``eval.json`` an evaluation writes and ``tac2sol compare`` reads: schema, row ids, metrics.

``eval.json`` holds ``kind``, ``schemaVersion``, the aggregates (``overall``, ``bySize``,
``byVisibility``, ``bySlice``, ``signatureMatch``, ``syntax``, ``facts``) and ``rows``: one record
per evaluated row ``{"id", "line", "slices", "metrics"}``. A row's id hashes its TAC input and
reference output, so the same test row has the same id in every run, whatever its position.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tac2sol.errors import InvalidInput

EVAL_KIND = "tac2sol-eval"
EVAL_SCHEMA_VERSION = 2
EVAL_FILE = "eval.json"


@dataclass(frozen=True)
class Metric:
    name: str  # key in a row's "metrics"
    label: str
    higher_is_better: bool


METRICS: tuple[Metric, ...] = (
    Metric("similarity", "semantic similarity", True),
    Metric("editDistance", "edit distance", False),
    Metric("exactMatch", "exact match", True),
    Metric("signatureMatch", "signature match", True),
    Metric("syntaxValid", "syntax validity", True),
    Metric("fact.externalCalls", "fact F1: external calls", True),
    Metric("fact.stateWrites", "fact F1: state writes", True),
    Metric("fact.guards", "fact F1: guards", True),
    Metric("fact.events", "fact F1: events", True),
    Metric("fact.returns", "fact F1: return presence", True),
    Metric("fact.visibility", "fact F1: visibility", True),
    Metric("fact.mutability", "fact F1: mutability", True),
)
METRIC_BY_NAME = {m.name: m for m in METRICS}


def row_ids(pairs: Sequence[tuple[str, str]]) -> list[str]:
    """A stable id per (input, output) row: 16 hex digits of SHA-256; a repeat gets ``-2``, ``-3``."""
    seen: dict[str, int] = {}
    out = []
    for tac, solidity in pairs:
        digest = hashlib.sha256(f"{tac}\0{solidity}".encode()).hexdigest()[:16]
        seen[digest] = seen.get(digest, 0) + 1
        out.append(digest if seen[digest] == 1 else f"{digest}-{seen[digest]}")
    return out


def row_metrics(item: dict[str, Any]) -> dict[str, float | None]:
    """A scored row (``evaluate.score`` item) as numbers per metric; None: not measured."""

    def num(value: Any) -> float | None:
        return None if value is None else float(value)

    out = {
        "similarity": num(item["similarity"]),
        "editDistance": num(item["editDistance"]),
        "exactMatch": num(item["exactMatch"]),
        "signatureMatch": num(item.get("signatureMatch")),
        "syntaxValid": num(item.get("syntaxValid")),
    }
    for kind, value in (item.get("facts") or {}).items():
        out[f"fact.{kind}"] = num(value)
    return out


@dataclass(frozen=True)
class EvalRun:
    name: str
    path: Path  # the eval.json
    summary: dict[str, Any]
    rows: dict[str, dict[str, Any]]  # id -> {"id", "line", "slices", "metrics"}


def find_eval_file(directory: Path) -> Path:
    """``DIR/eval.json``, or ``DIR/eval/eval.json`` for a run's output directory."""
    if not directory.exists():
        raise InvalidInput(f"{directory}: no such directory; give an evaluation directory (with eval.json)")
    if not directory.is_dir():
        raise InvalidInput(f"{directory}: not a directory; give an evaluation directory (with eval.json)")
    for candidate in (directory / EVAL_FILE, directory / "eval" / EVAL_FILE):
        if candidate.is_file():
            return candidate
    raise InvalidInput(
        f"{directory}: no {EVAL_FILE} here or in eval/; give the directory `tac2sol evaluate` wrote"
    )


def load_eval(directory: Path, name: str | None = None) -> EvalRun:
    """Read and check one evaluation; every problem is one ``InvalidInput`` naming the file."""
    path = find_eval_file(directory)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(
            f"{path}: not readable JSON ({exc}); re-run the evaluation that wrote it"
        ) from None
    if not isinstance(data, dict) or data.get("kind") != EVAL_KIND:
        raise InvalidInput(f'{path}: not a tac2sol evaluation (no "kind": "{EVAL_KIND}")')
    if data.get("schemaVersion") != EVAL_SCHEMA_VERSION:
        raise InvalidInput(
            f"{path}: schemaVersion {data.get('schemaVersion')!r}, this tac2sol reads "
            f"{EVAL_SCHEMA_VERSION}; re-run the evaluation with this version"
        )
    rows = data.get("rows")
    if not isinstance(rows, list):
        raise InvalidInput(f'{path}: "rows" is missing or not a list; re-run the evaluation')
    by_id: dict[str, dict[str, Any]] = {}
    for i, row in enumerate(rows):
        ok = (
            isinstance(row, dict)
            and isinstance(row.get("id"), str)
            and isinstance(row.get("metrics"), dict)
            and isinstance(row.get("slices"), list)
            and all(v is None or isinstance(v, int | float) for v in row["metrics"].values())
        )
        if not ok:
            raise InvalidInput(f"{path}: rows[{i}] needs id (text), slices (list) and metrics (numbers)")
        if row["id"] in by_id:
            raise InvalidInput(f"{path}: rows[{i}]: id {row['id']} appears twice")
        by_id[row["id"]] = row
    return EvalRun(name or directory.name or str(directory), path, data, by_id)
