"""A leakage-free, deterministic train/eval split.

Rows are grouped so that nothing the model could memorise crosses the split: two rows are in
one group when they share a contract (``metadata.contract_address``), a function body
(``metadata.body_hash``), or, whatever the metadata says, the exact same Solidity (whitespace
normalised) or the exact same TAC (the exact-hash fallback for rows without metadata). Groups are
connected components (union-find), so the rule holds transitively. Whole groups are then drawn
for evaluation in an order fixed by ``seed`` until the eval share is reached.

The manifest records seed, counts, which keys were used, and the leakage check: for every key
kind, how many key values appear on both sides (zero, or the split is refused).
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from tac2sol.trainer.data import Row

SPLIT_VERSION = "tac2sol-split/1"
METADATA_KEYS = {"contract": "contract_address", "body": "body_hash"}


def _norm(text: str) -> str:
    return " ".join(text.split())


def group_keys(row: Row) -> dict[str, str]:
    """The keys that tie ``row`` to others: metadata keys when present, exact hashes always."""
    keys: dict[str, str] = {}
    for kind, field in METADATA_KEYS.items():
        value = row.metadata.get(field)
        if isinstance(value, str) and value.strip():
            keys[kind] = value.strip().lower()
    keys["exactOutput"] = hashlib.sha256(_norm(row.output).encode()).hexdigest()
    keys["exactInput"] = hashlib.sha256(row.input.encode()).hexdigest()
    return keys


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass
class Split:
    train: list[Row]
    eval: list[Row]
    manifest: dict[str, Any]


def _lines_digest(rows: list[Row]) -> str:
    return hashlib.sha256(",".join(str(r.line) for r in rows).encode()).hexdigest()


def leakage(train: list[Row], evaluation: list[Row]) -> dict[str, int]:
    """For each key kind, how many key values occur on both sides."""
    result: dict[str, int] = {}
    train_keys: dict[str, set[str]] = defaultdict(set)
    eval_keys: dict[str, set[str]] = defaultdict(set)
    for rows, target in ((train, train_keys), (evaluation, eval_keys)):
        for row in rows:
            for kind, value in group_keys(row).items():
                target[kind].add(value)
    for kind in (*METADATA_KEYS, "exactOutput", "exactInput"):
        result[kind] = len(train_keys[kind] & eval_keys[kind])
    return result


def split_rows(rows: list[Row], validation_ratio: float, seed: int) -> Split:
    """Split ``rows`` by groups; the same rows, ratio and seed always give the same split."""
    uf = _UnionFind()
    row_keys = []
    key_usage: dict[str, int] = defaultdict(int)
    for row in rows:
        keys = group_keys(row)
        row_keys.append(keys)
        node = f"row:{row.line}"
        for kind, value in keys.items():
            key_usage[kind] += 1
            uf.union(node, f"{kind}:{value}")
    groups: dict[str, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        groups[uf.find(f"row:{row.line}")].append(index)
    # Order groups by a content hash (not by file position), then shuffle with the seed.
    ordered = sorted(groups, key=lambda g: hashlib.sha256(g.encode()).hexdigest())
    random.Random(seed).shuffle(ordered)

    want = round(validation_ratio * len(rows))
    if validation_ratio > 0 and len(rows) >= 2:
        want = max(want, 1)
    eval_idx: set[int] = set()
    eval_groups = 0
    for g in ordered:
        if len(eval_idx) >= want:
            break
        if len(eval_idx) + len(groups[g]) > 2 * want and len(groups[g]) > 1:
            continue  # a big group would overshoot the eval share: try smaller ones first
        eval_idx.update(groups[g])
        eval_groups += 1
    if want and not eval_idx and len(groups) > 1:
        smallest = min(ordered, key=lambda g: len(groups[g]))
        eval_idx.update(groups[smallest])
        eval_groups = 1
    train = [r for i, r in enumerate(rows) if i not in eval_idx]
    evaluation = [r for i, r in enumerate(rows) if i in eval_idx]
    checks = leakage(train, evaluation)
    if any(checks.values()):  # cannot happen with connected components; guard the invariant
        raise AssertionError(f"split leaks across train/eval: {checks}")
    sizes = sorted((len(v) for v in groups.values()), reverse=True)
    manifest = {
        "version": SPLIT_VERSION,
        "seed": seed,
        "validationRatio": validation_ratio,
        "groupKeys": sorted(key_usage),
        "rowsWithKey": dict(sorted(key_usage.items())),
        "counts": {
            "rows": len(rows),
            "train": len(train),
            "eval": len(evaluation),
            "groups": len(groups),
            "evalGroups": eval_groups,
            "trainGroups": len(groups) - eval_groups,
            "largestGroup": sizes[0] if sizes else 0,
        },
        "leakage": checks,
        "leakageFree": not any(checks.values()),
        "evalLines": [r.line for r in evaluation],
        "trainLinesSha256": _lines_digest(train),
    }
    return Split(train, evaluation, manifest)
