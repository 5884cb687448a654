"""Paired comparison of two runs on the same rows: bootstrap interval, wins/ties/losses, decision.

The difference is candidate minus baseline per row; its mean gets a percentile bootstrap interval
(rows resampled with replacement, numpy, seeded). The decision reads the interval in the
metric's better direction: it excludes 0 on the good side → keep, on the bad side → reject,
else no significant change; fewer than ``min_rows`` rows → too few rows to tell.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

KEEP, REJECT, NO_CHANGE, TOO_FEW = "keep", "reject", "no significant change", "too few rows"
RESAMPLES = 2000
LEVEL = 0.95
_CHUNK = 250  # resamples drawn at once: bounds memory at _CHUNK x rows indices


def bootstrap_ci(
    diffs: Sequence[float] | np.ndarray, *, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``diffs`` (paired differences)."""
    d = np.asarray(diffs, dtype=float)
    if d.size == 0:
        raise ValueError("no differences to bootstrap")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, _CHUNK):
        stop = min(start + _CHUNK, resamples)
        means[start:stop] = d[rng.integers(0, d.size, size=(stop - start, d.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class Paired:
    """Baseline ``a`` against candidate ``b`` on the same rows for one metric."""

    n: int
    mean_a: float
    mean_b: float
    diff: float  # mean of b - a
    low: float  # bootstrap interval of diff
    high: float
    wins: int  # rows where b is better
    ties: int
    losses: int
    decision: str

    def to_json(self) -> dict[str, Any]:
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(self).items()}


def paired(
    a: Sequence[float],
    b: Sequence[float],
    *,
    higher_is_better: bool,
    min_rows: int,
    seed: int = 0,
    resamples: int = RESAMPLES,
    tie: float = 1e-9,
) -> Paired:
    """Compare ``b`` with ``a`` row by row (same order); n = 0 gives NaN means and too few rows."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"{x.size} baseline values for {y.size} candidate values")
    if x.size == 0:
        nan = float("nan")
        return Paired(0, nan, nan, nan, nan, nan, 0, 0, 0, TOO_FEW)
    d = y - x
    low, high = bootstrap_ci(d, resamples=resamples, seed=seed)
    better = d if higher_is_better else -d
    return Paired(
        n=int(d.size),
        mean_a=float(x.mean()),
        mean_b=float(y.mean()),
        diff=float(d.mean()),
        low=low,
        high=high,
        wins=int((better > tie).sum()),
        ties=int((np.abs(d) <= tie).sum()),
        losses=int((better < -tie).sum()),
        decision=decide(low, high, int(d.size), higher_is_better=higher_is_better, min_rows=min_rows),
    )


def decide(low: float, high: float, n: int, *, higher_is_better: bool, min_rows: int) -> str:
    """keep / reject / no significant change / too few rows, from the interval of b - a."""
    if n < min_rows:
        return TOO_FEW
    if (low > 0 and higher_is_better) or (high < 0 and not higher_is_better):
        return KEEP
    if (high < 0 and higher_is_better) or (low > 0 and not higher_is_better):
        return REJECT
    return NO_CHANGE
