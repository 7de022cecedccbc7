"""Significance tests for Parameter Golf submissions, on per-seed scores (scipy.stats underneath).

Two rules are in use (DESIGN.md §1):
- strict (the written rule): the candidate's mean val_loss beats the reference's by at least
  0.005 nats, one-sided Welch t-test at p < 0.01;
- practised (what maintainers accepted): one-sided Welch t-test on val_bpb, no margin, p < 0.25.
Both are "H1: mean(candidate) < mean(reference) - margin". Shifting the candidate's mean up by the
margin turns that into scipy's plain one-sided two-sample test.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

STRICT_MARGIN_NATS = 0.005
STRICT_ALPHA = 0.01
PRACTISED_ALPHA = 0.25
MAX_SEEDS_SEARCHED = 10_000


@dataclass(frozen=True)
class Sample:
    """Summary statistics of one group of per-seed scores (sample std, ddof=1)."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values) -> "Sample":
        values = np.asarray(values, dtype=np.float64)
        std = float(values.std(ddof=1)) if values.size > 1 else math.nan
        return cls(float(values.mean()), std, int(values.size))


def ci95(sample: Sample) -> tuple[float, float]:
    """Two-sided 95% t confidence interval of the mean; NaN with fewer than two seeds."""
    if sample.n < 2:
        return math.nan, math.nan
    sem = sample.std / math.sqrt(sample.n)
    if sem == 0:
        return sample.mean, sample.mean
    low, high = stats.t.interval(0.95, sample.n - 1, loc=sample.mean, scale=sem)
    return float(low), float(high)


def p_less(candidate: Sample, reference: Sample, margin: float = 0.0) -> float:
    """One-sided Welch p-value of H1: candidate.mean < reference.mean - margin."""
    if candidate.n < 2 or reference.n < 2:
        return math.nan
    if candidate.std == 0 and reference.std == 0:  # no spread: the test is undefined
        return math.nan
    result = stats.ttest_ind_from_stats(
        candidate.mean + margin, candidate.std, candidate.n,
        reference.mean, reference.std, reference.n,
        equal_var=False, alternative="less",
    )
    return float(result.pvalue)


def seeds_needed(candidate: Sample, reference: Sample, margin: float = STRICT_MARGIN_NATS,
                 alpha: float = STRICT_ALPHA) -> float:
    """Fewest seeds per side for p_less < alpha if means and spreads stayed as observed.

    NaN when the observed improvement does not exceed the margin (no seed count helps) or the
    spread is unknown; inf when even MAX_SEEDS_SEARCHED seeds would not do.
    """
    if candidate.mean + margin >= reference.mean or math.isnan(candidate.std) or math.isnan(reference.std):
        return math.nan
    if candidate.std == 0 and reference.std == 0:
        return 2.0

    def significant(n: int) -> bool:
        return p_less(Sample(candidate.mean, candidate.std, n), Sample(reference.mean, reference.std, n),
                      margin) < alpha

    if not significant(MAX_SEEDS_SEARCHED):
        return math.inf
    low, high = 2, MAX_SEEDS_SEARCHED  # p falls monotonically with n: bisect
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if significant(mid) else (mid + 1, high)
    return float(low)


def pooled_std(groups) -> float:
    """Pooled within-group sample std, sqrt(sum((n_i - 1) s_i^2) / sum(n_i - 1)), over groups of >= 2 values:
    the seed-to-seed noise of one configuration, estimated from every ablation at once. NaN without any."""
    squares, dof = 0.0, 0
    for values in groups:
        values = np.asarray(values, dtype=np.float64)
        if values.size > 1:
            squares += float(((values - values.mean()) ** 2).sum())
            dof += values.size - 1
    return math.sqrt(squares / dof) if dof else math.nan


def min_detectable_improvement(std: float, n_seeds: int, alpha: float, margin: float = 0.0) -> float:
    """Smallest mean improvement (reference mean - candidate mean) that passes the one-sided Welch test
    at p < alpha with `n_seeds` seeds on each side when both spreads equal `std`.

    With equal spreads and sizes Welch's t is d / (std * sqrt(2/n)) on 2(n - 1) degrees of freedom, so
    the threshold is margin + t_{1-alpha, 2n-2} * std * sqrt(2/n). NaN below two seeds or without a spread."""
    if n_seeds < 2 or not math.isfinite(std):
        return math.nan
    return margin + float(stats.t.ppf(1 - alpha, 2 * (n_seeds - 1))) * std * math.sqrt(2 / n_seeds)
