"""A fixed test set shared across runs: read it, tokenize it, leave out what the adapter trained on.

``evaluation.test_set`` (a local JSONL of ``{input, output, metadata}`` rows) or
``evaluation.test_set_uri`` (downloaded to ``<output>/data/test-set/``) is evaluated besides the
run's own held-out split, so runs trained on other data or seeds are compared on the same rows.

The rows go through the data checks of training (``preflight``) with fixed settings, so every run
reads the same rows whatever its own data settings: no row is dropped for lifter artefacts, and a
row too long for ``data.max_seq_length`` has its TAC end cut (``truncate_input``) rather than being
dropped. At most ``evaluation.max_samples`` rows are taken, in file order, before overlap.

Overlap with the rows the adapter trained on is measured by the keys the split groups rows by
(``split.group_keys``: contract address, body hash, exact output, exact input). A test row sharing
any of them with a training row is excluded from the scores; the report counts them per key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tac2sol.errors import InvalidInput
from tac2sol.trainer.config import TrainConfig, uri_basename
from tac2sol.trainer.data import Row
from tac2sol.trainer.split import METADATA_KEYS, group_keys

TEST_SET_SOURCE_DIR = Path("data") / "test-set"  # under output_dir: where test_set_uri lands
OVERLAP_KEYS = (*METADATA_KEYS, "exactOutput", "exactInput")
TEST_SET_TRUNCATION = "truncate_input"


@dataclass(frozen=True)
class LoadedTestSet:
    rows: list[Row]  # the rows to score: overlap with the training rows excluded
    encoded: Any  # the tokenized rows (``prompts_from_encoded`` reads the prompts from it)
    report: dict[str, Any]  # file, sha256, rows, taken, overlap, excludedRows, evaluatedRows


def locate_test_set(cfg: TrainConfig) -> Path | None:
    """The local test set file (for a uri, where the download lands); None without a test set."""
    e = cfg.evaluation
    if e.test_set is not None:
        return Path(e.test_set)
    if e.test_set_uri is None:
        return None
    name = uri_basename(e.test_set_uri)
    if not name:
        raise InvalidInput(
            f"evaluation.test_set_uri: {e.test_set_uri} names no file (it ends with '/'); give the URI "
            "of one JSONL file, or set evaluation.test_set to say where the download goes"
        )
    return Path(cfg.output_dir) / TEST_SET_SOURCE_DIR / name


def overlap(test_rows: Sequence[Row], train_rows: Sequence[Row]) -> tuple[list[Row], dict[str, Any]]:
    """The test rows that share no key with any training row, and the counts of those that do."""
    seen: dict[str, set[str]] = {kind: set() for kind in OVERLAP_KEYS}
    for row in train_rows:
        for kind, value in group_keys(row).items():
            seen[kind].add(value)
    kept: list[Row] = []
    by_key = dict.fromkeys(OVERLAP_KEYS, 0)
    overlapping = 0
    for row in test_rows:
        hits = [kind for kind, value in group_keys(row).items() if value in seen[kind]]
        for kind in hits:
            by_key[kind] += 1
        if hits:
            overlapping += 1
        else:
            kept.append(row)
    return kept, {"rows": overlapping, "byKey": by_key, "trainingRows": len(train_rows)}


def load_test_set(
    cfg: TrainConfig, tokenizer: Any, train_rows: Sequence[Row], say: Callable[[str], None] | None = None
) -> LoadedTestSet | None:
    """Fetch (a uri), check and tokenize the test set, and leave out the rows that overlap training.

    One clear error when the file is missing or has no usable row; None without a test set.
    """
    from tac2sol.trainer.preflight import run_preflight

    path = locate_test_set(cfg)
    if path is None:
        return None
    uri = cfg.evaluation.test_set_uri
    if uri is not None:  # reuses an earlier download while the remote file is unchanged
        from tac2sol.trainer.fetch import fetch

        fetch(uri, path, say=say)
    if not path.is_file():
        raise InvalidInput(
            f"evaluation.test_set: {path} does not exist; give a JSONL file of {{input, output, metadata}} "
            "rows (spec.evaluation.testSet), or leave the test set out"
        )
    pf = run_preflight(
        path,
        tokenizer=tokenizer,
        max_seq_length=cfg.data.max_seq_length,
        drop_artifact_rows=False,
        on_bad_line="stop",
        truncation=TEST_SET_TRUNCATION,
        cache_dir=cfg.data.cache_dir or Path(cfg.output_dir) / "cache",
        require_rows=False,
    )
    if not pf.kept:
        reasons = ", ".join(f"{k}: {n}" for k, n in pf.report["rejected"].items()) or "the file has no rows"
        raise InvalidInput(f"evaluation.test_set: {path}: no usable row ({reasons})")
    limit = cfg.evaluation.max_samples
    taken = pf.kept[:limit] if limit else list(pf.kept)
    kept, found = overlap(taken, train_rows)
    report = {
        "file": str(path),
        "uri": uri,
        "sha256": pf.report["sha256"],
        "rows": pf.report["rows"],
        "rejected": pf.report["rejected"],
        "truncatedRows": pf.report["truncatedRows"],
        "taken": len(taken),
        "overlap": found,
        "excludedRows": found["rows"],
        "evaluatedRows": len(kept),
    }
    if say is not None:
        say(
            f"test set: {path}: {len(taken)} rows, {found['rows']} overlap the {len(train_rows)} "
            f"training rows ({', '.join(f'{k} {n}' for k, n in found['byKey'].items())}) and are excluded; "
            f"{len(kept)} to score"
        )
    return LoadedTestSet(kept, pf.encoded, report)
