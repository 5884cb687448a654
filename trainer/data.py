"""Reading the dataset: JSONL rows ``{"input": TAC, "output": Solidity, "metadata": {...}}``.

Every line is accounted for: it becomes a ``Row`` or a ``Reject`` with a reason and its line
number. A malformed line (not JSON, not an object, a missing or non-text ``input``/``output``,
a ``metadata`` that is not an object) stops the run with one message naming file and line, or,
with ``on_bad_line="skip"``, becomes a reject. No torch here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tac2sol.errors import InvalidInput

OnBadLine = Literal["stop", "skip"]

# Marks that the TAC lifter leaves where it lost track of the stack or of an opcode. Found in
# ../shared/datasets/tac2sol-500.jsonl: `stack_underflow` operands, `<unknown>` values and
# `None(...)` (a Python None printed as an operation name).
ARTIFACT_MARKERS: dict[str, str] = {
    "stack_underflow": "stack_underflow",
    "unknown_value": "<unknown>",
    "none_operation": "None(",
}

# Reasons a line is rejected; the report counts each.
MALFORMED_REASONS = (
    "not_utf8",
    "bad_json",
    "not_an_object",
    "missing_input",
    "missing_output",
    "input_not_text",
    "output_not_text",
    "metadata_not_an_object",
)
_HINT = (
    "fix the line, or pass --on-bad-line skip (data.on_bad_line: skip) to send such lines to rejects.jsonl"
)


@dataclass(frozen=True)
class Row:
    line: int  # 1-based line number in the file
    input: str
    output: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def artifacts(self) -> list[str]:
        return [name for name, marker in ARTIFACT_MARKERS.items() if marker in self.input]

    def to_json(self) -> dict[str, Any]:
        return {"input": self.input, "output": self.output, "metadata": self.metadata}


@dataclass(frozen=True)
class Reject:
    line: int
    reason: str
    detail: str
    row: dict[str, Any] | None = None  # the parsed row, when there is one
    text: str | None = None  # the raw line, when it did not parse

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"line": self.line, "reason": self.reason, "detail": self.detail}
        if self.row is not None:
            out["row"] = self.row
        if self.text is not None:
            out["text"] = self.text
        return out


@dataclass
class ReadResult:
    rows: list[Row]
    rejects: list[Reject]
    lines: int  # physical lines read
    blank_lines: int
    sha256: str  # of the file's bytes: the data's identity in caches and run.json


def _check(obj: Any) -> tuple[str, str] | None:
    """Why a parsed line is not a row, as (reason, detail), or None when it is one."""
    if not isinstance(obj, dict):
        return "not_an_object", f"expected a JSON object, got {type(obj).__name__}"
    for key in ("input", "output"):
        if key not in obj:
            return (
                f"missing_{key}",
                f'the row has no "{key}" field (keys: {", ".join(sorted(obj)) or "none"})',
            )
        if not isinstance(obj[key], str):
            return f"{key}_not_text", f'"{key}" must be a string, got {type(obj[key]).__name__}'
    if "metadata" in obj and obj["metadata"] is not None and not isinstance(obj["metadata"], dict):
        return "metadata_not_an_object", f'"metadata" must be an object, got {type(obj["metadata"]).__name__}'
    return None


def _lines(path: Path) -> Iterator[tuple[int, str | UnicodeDecodeError]]:
    """Numbered lines, decoded one by one so that a bad byte is reported on its own line."""
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                yield number, raw.decode("utf-8").rstrip("\n").rstrip("\r")
            except UnicodeDecodeError as exc:
                yield number, exc


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file's bytes (dataset files, checkpoint files, downloads)."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def read_rows(path: str | Path, on_bad_line: OnBadLine = "stop") -> ReadResult:
    """Read every line of ``path``; malformed lines stop (``stop``) or become rejects (``skip``)."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise InvalidInput(f"{path}: the dataset file {what}; give a JSONL file (data.path / --dataset)")
    digest = sha256_file(path)
    rows: list[Row] = []
    rejects: list[Reject] = []
    blank = lines = 0
    for number, text in _lines(path):
        lines = number
        if isinstance(text, UnicodeDecodeError):
            problem: tuple[str, str] | None = (
                "not_utf8",
                f"not UTF-8 text ({text.reason} at byte {text.start}); the dataset must be UTF-8 JSONL",
            )
            obj, text = None, bytes(text.object).decode("utf-8", errors="replace").rstrip("\r\n")
        elif not text.strip():
            blank += 1
            continue
        else:
            problem, obj = _parse(text)
        if problem is not None:
            reason, detail = problem
            if on_bad_line == "stop":
                raise InvalidInput(f"{path}:{number}: {detail}; {_HINT}")
            parsed = obj if isinstance(obj, dict) else None
            rejects.append(Reject(number, reason, detail, row=parsed, text=None if parsed else text))
            continue
        assert isinstance(obj, dict)  # _check accepted it
        rows.append(Row(number, obj["input"], obj["output"], dict(obj.get("metadata") or {})))
    return ReadResult(rows, rejects, lines, blank, digest)


def _parse(text: str) -> tuple[tuple[str, str] | None, Any]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return ("bad_json", f"not valid JSON: {exc.msg} at column {exc.colno}"), None
    return _check(obj), obj


def write_jsonl(path: Path, items: list[dict[str, Any]]) -> None:
    """Write atomically (a temporary file renamed), so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for item in items:
            fh.write(json.dumps(item, ensure_ascii=False) + "\n")
    tmp.replace(path)


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
    tmp.replace(path)
