"""The statistics behind the judges, on the aggregated counts Prometheus gives us.

Everything works on counts, never on raw observations: bucket counts of a histogram (each bucket a
group of ties), counts per class, bad-out-of-total. Counts may be fractional (``increase()``
extrapolates), so nothing here assumes integers. Pure numpy/scipy-distribution functions; the unit
tests check each against scipy's own test on the expanded data.
Who calls it: the threshold, comparative and sequential judges, and the simulator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import chi2, kstwo, norm

# pseudo-count added to every category before taking logs in PSI, so an empty category is finite
PSI_PSEUDO_COUNT = 0.5


def cumulative_to_counts(cumulative: np.ndarray) -> np.ndarray:
    """Prometheus ``le`` buckets are cumulative; per-bucket counts are their differences.

    ``increase()`` over each bucket is extrapolated separately, so cumulative values can dip by a
    hair; they are made monotone first, which keeps every count non-negative.
    """
    c = np.maximum.accumulate(np.maximum(np.asarray(cumulative, dtype=float), 0.0))
    return np.diff(c, prepend=0.0)


def histogram_quantile(q: float, bounds: tuple[float, ...], counts: tuple[float, ...]) -> float | None:
    """Quantile ``q`` of bucketed data, interpolated linearly inside its bucket (as Prometheus does).

    The first bucket starts at 0 (or at its bound when that is negative); a quantile in the +Inf
    bucket is the largest finite bound. None when there are no observations.
    """
    c = np.asarray(counts, dtype=float)
    total = float(c.sum())
    if total <= 0:
        return None
    cum = np.cumsum(c)
    rank = q * total
    i = int(np.searchsorted(cum, rank, side="left"))
    i = min(i, len(bounds) - 1)
    upper = bounds[i]
    if math.isinf(upper):
        finite = [b for b in bounds if not math.isinf(b)]
        return finite[-1] if finite else None
    lower = bounds[i - 1] if i > 0 else min(0.0, upper)
    before = float(cum[i - 1]) if i > 0 else 0.0
    inside = float(c[i])
    if inside <= 0:
        return upper
    return lower + (upper - lower) * (rank - before) / inside


def psi(candidate: np.ndarray, stable: np.ndarray) -> float:
    """Population stability index of two count vectors over the same categories (0 = identical)."""
    c = np.asarray(candidate, dtype=float) + PSI_PSEUDO_COUNT
    s = np.asarray(stable, dtype=float) + PSI_PSEUDO_COUNT
    pc, ps = c / c.sum(), s / s.sum()
    return float(np.sum((pc - ps) * np.log(pc / ps)))


@dataclass(frozen=True)
class TestResult:
    statistic: float
    p_value: float


def two_proportion_z(bad_c: float, n_c: float, bad_s: float, n_s: float) -> TestResult:
    """One-sided pooled two-proportion z test of H1: candidate's bad rate > stable's."""
    pooled = (bad_c + bad_s) / (n_c + n_s)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_c + 1 / n_s))
    diff = bad_c / n_c - bad_s / n_s
    if se == 0:
        # no variation at all (all good or all bad in both): nothing to detect unless they differ
        z = 0.0 if diff == 0 else math.copysign(math.inf, diff)
    else:
        z = diff / se
    return TestResult(z, float(norm.sf(z)))


def mann_whitney_greater(candidate: np.ndarray, stable: np.ndarray) -> TestResult:
    """Mann-Whitney U of bucketed data, H1: candidate values tend to be larger (slower).

    Every bucket is a group of ties ranked at its mid-rank; normal approximation with the tie
    correction and a continuity correction of 0.5 (scipy's ``method='asymptotic'``). The statistic
    is U of the candidate.
    """
    c = np.asarray(candidate, dtype=float)
    s = np.asarray(stable, dtype=float)
    n1, n2 = float(c.sum()), float(s.sum())
    t = c + s
    big_n = n1 + n2
    midrank = np.cumsum(t) - t + (t + 1) / 2
    u = float(np.sum(c * midrank) - n1 * (n1 + 1) / 2)
    mu = n1 * n2 / 2
    tie = float(np.sum(t**3 - t))
    var = n1 * n2 / 12 * ((big_n + 1) - tie / (big_n * (big_n - 1)))
    if var <= 0:
        return TestResult(u, 1.0)
    z = (u - mu - 0.5) / math.sqrt(var)
    return TestResult(u, float(norm.sf(z)))


def chi_square(candidate: np.ndarray, stable: np.ndarray) -> TestResult:
    """Pearson chi-square test of homogeneity on a 2 x K table (no Yates correction).

    Categories empty in both rows are dropped; with fewer than two left there is nothing to test.
    """
    table = np.vstack([np.asarray(candidate, dtype=float), np.asarray(stable, dtype=float)])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or np.any(table.sum(axis=1) <= 0):
        return TestResult(0.0, 1.0)
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    stat = float(np.sum((table - expected) ** 2 / expected))
    dof = table.shape[1] - 1
    return TestResult(stat, float(chi2.sf(stat, dof)))


def ks_distance(candidate: np.ndarray, stable: np.ndarray) -> float:
    """Largest gap between the two empirical CDFs, evaluated at the bucket bounds."""
    c = np.asarray(candidate, dtype=float)
    s = np.asarray(stable, dtype=float)
    if c.sum() <= 0 or s.sum() <= 0:
        return 0.0
    return float(np.max(np.abs(np.cumsum(c) / c.sum() - np.cumsum(s) / s.sum())))


def ks_two_sample(candidate: np.ndarray, stable: np.ndarray) -> TestResult:
    """Two-sided two-sample KS test on bucketed data (scipy's ``method='asymp'`` p-value).

    With ties inside buckets the distance is the one between the bucketed CDFs, which is the exact
    KS statistic of the data as recorded; the p-value is then slightly conservative.
    """
    n1 = float(np.sum(candidate))
    n2 = float(np.sum(stable))
    d = ks_distance(candidate, stable)
    if n1 <= 0 or n2 <= 0:
        return TestResult(0.0, 1.0)
    m, k = max(n1, n2), min(n1, n2)
    en = max(1.0, round(m * k / (m + k)))
    return TestResult(d, float(np.clip(kstwo.sf(d, en), 0.0, 1.0)))
