"""The paired statistics on synthetic data whose true difference is known."""

from __future__ import annotations

import numpy as np
import pytest

from tac2sol.trainer.stats import KEEP, NO_CHANGE, REJECT, TOO_FEW, bootstrap_ci, decide, paired


def _pair(rng: np.random.Generator, n: int, shift: float, noise: float) -> tuple[np.ndarray, np.ndarray]:
    a = rng.uniform(0.3, 0.9, n)
    return a, a + shift + rng.normal(0.0, noise, n)


def test_intervals_cover_the_true_difference_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(2024)
    trials, covered = 300, 0
    for trial in range(trials):
        a, b = _pair(rng, 80, 0.05, 0.2)  # true mean difference 0.05 (b - a = 0.05 + noise)
        low, high = bootstrap_ci(b - a, resamples=1000, seed=trial)
        covered += low <= 0.05 <= high
    assert 0.90 <= covered / trials <= 0.985  # percentile bootstrap: nominal 0.95


def test_interval_is_seeded_and_narrows_with_rows() -> None:
    d = np.random.default_rng(1).normal(0.1, 0.3, 400)
    assert bootstrap_ci(d, seed=7) == bootstrap_ci(d, seed=7)
    small_low, small_high = bootstrap_ci(d[:40], seed=7)
    low, high = bootstrap_ci(d, seed=7)
    assert high - low < (small_high - small_low) / 2  # ~ 1/sqrt(10) as wide
    assert low < d.mean() < high
    with pytest.raises(ValueError, match="no differences"):
        bootstrap_ci([])


@pytest.mark.parametrize(
    ("shift", "higher_is_better", "expected"),
    [
        (0.10, True, KEEP),  # clearly better similarity
        (-0.10, True, REJECT),  # clearly worse similarity
        (-0.10, False, KEEP),  # edit distance went down: better
        (0.10, False, REJECT),
    ],
    ids=["win", "loss", "lower-is-better-win", "lower-is-better-loss"],
)
def test_decisions_on_clear_differences(shift: float, higher_is_better: bool, expected: str) -> None:
    for seed in range(20):
        a, b = _pair(np.random.default_rng(seed), 200, shift, 0.1)
        result = paired(a, b, higher_is_better=higher_is_better, min_rows=30, seed=seed)
        assert result.decision == expected
        assert result.diff == pytest.approx(shift, abs=0.03)
        assert (result.wins > result.losses) == (expected == KEEP)


def test_noise_is_mostly_no_significant_change() -> None:
    decisions = [
        paired(
            *_pair(np.random.default_rng(seed), 200, 0.0, 0.1), higher_is_better=True, min_rows=30, seed=seed
        ).decision
        for seed in range(100)
    ]
    assert decisions.count(NO_CHANGE) >= 88  # about 95 expected; a 5 % false-alarm rate
    assert set(decisions) <= {NO_CHANGE, KEEP, REJECT}


def test_too_few_rows_and_hand_counted_wins() -> None:
    result = paired([0.5, 0.5, 0.5, 0.2], [0.7, 0.5, 0.4, 0.2], higher_is_better=True, min_rows=30)
    assert (result.wins, result.ties, result.losses, result.n) == (1, 2, 1, 4)
    assert result.decision == TOO_FEW and result.diff == pytest.approx(0.025)
    assert result.mean_a == pytest.approx(0.425) and result.mean_b == pytest.approx(0.45)
    empty = paired([], [], higher_is_better=True, min_rows=1)
    assert empty.n == 0 and empty.decision == TOO_FEW
    with pytest.raises(ValueError, match="baseline values"):
        paired([1.0], [1.0, 2.0], higher_is_better=True, min_rows=1)


@pytest.mark.parametrize(
    ("low", "high", "n", "higher", "expected"),
    [
        (0.01, 0.05, 100, True, KEEP),
        (-0.05, -0.01, 100, True, REJECT),
        (-0.01, 0.05, 100, True, NO_CHANGE),
        (0.0, 0.0, 100, True, NO_CHANGE),  # identical runs
        (0.01, 0.05, 29, True, TOO_FEW),
        (-0.05, -0.01, 100, False, KEEP),
    ],
)
def test_decision_table(low: float, high: float, n: int, higher: bool, expected: str) -> None:
    assert decide(low, high, n, higher_is_better=higher, min_rows=30) == expected
