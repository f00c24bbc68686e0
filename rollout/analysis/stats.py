"""The statistics behind the judges, on the aggregated counts Prometheus gives us.

Everything works on counts, never on raw observations: bucket counts of a histogram (each bucket a
group of ties, on the last axis), counts per class, bad-out-of-total. Counts may be fractional
(``increase()`` extrapolates), so nothing here assumes integers. Every function is vectorised over
leading axes, so the judges and the simulator (thousands of rollouts at once) share one
implementation; the unit tests check each against scipy's own test on the expanded data.
Who calls it: the threshold, comparative and sequential judges, and the simulator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import log_ndtr
from scipy.stats import chi2, kstwo, norm

# pseudo-count added to every category before taking logs in PSI, so an empty category is finite
PSI_PSEUDO_COUNT = 0.5


@dataclass(frozen=True)
class TestResult:
    statistic: float
    p_value: float


def _f(x: object) -> np.ndarray:
    return np.asarray(x, dtype=float)


def cumulative_to_counts(cumulative: np.ndarray) -> np.ndarray:
    """Cumulative ``le`` buckets -> per-bucket counts, made monotone first (never negative)."""
    c = np.maximum.accumulate(np.maximum(_f(cumulative), 0.0), axis=-1)
    return np.diff(c, prepend=0.0, axis=-1)


def histogram_quantile_v(q: float, bounds: tuple[float, ...], counts: np.ndarray) -> np.ndarray:
    """Quantile ``q`` of bucketed data (last axis), interpolated linearly inside its bucket, as
    Prometheus' ``histogram_quantile``: the first bucket starts at 0 (or at its bound when that is
    negative), a quantile in the +Inf bucket is the largest finite bound; NaN without observations
    and without buckets.
    """
    c = _f(counts)
    b = _f(bounds)
    if b.ndim != 1 or b.size == 0 or c.ndim == 0 or c.shape[-1] != b.size:
        return np.full(c.shape[:-1], np.nan)  # no buckets (or not one count per bucket): no quantile
    finite = b[np.isfinite(b)]
    last_finite = finite[-1] if finite.size else np.nan
    lowers = np.concatenate([[min(0.0, b[0])], b[:-1]])
    cum = np.cumsum(c, axis=-1)
    total = cum[..., -1]
    rank = q * total
    i = np.minimum(np.sum(cum < rank[..., None], axis=-1), len(b) - 1)
    before = np.where(i > 0, np.take_along_axis(cum, np.maximum(i - 1, 0)[..., None], -1)[..., 0], 0.0)
    inside = np.take_along_axis(c, i[..., None], -1)[..., 0]
    upper, lower = b[i], lowers[i]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(inside > 0, (rank - before) / np.where(inside > 0, inside, 1.0), 1.0)
        value = np.where(np.isinf(upper), last_finite, lower + (upper - lower) * frac)
    return np.where(total > 0, value, np.nan)


def histogram_quantile(q: float, bounds: tuple[float, ...], counts: tuple[float, ...]) -> float | None:
    v = float(histogram_quantile_v(q, bounds, _f(counts)))
    return None if np.isnan(v) else v


def psi_v(candidate: np.ndarray, stable: np.ndarray) -> np.ndarray:
    """Population stability index of count vectors over the same categories (0 = identical)."""
    c = _f(candidate) + PSI_PSEUDO_COUNT
    s = _f(stable) + PSI_PSEUDO_COUNT
    pc = c / c.sum(axis=-1, keepdims=True)
    ps = s / s.sum(axis=-1, keepdims=True)
    return np.sum((pc - ps) * np.log(pc / ps), axis=-1)


def psi(candidate: np.ndarray, stable: np.ndarray) -> float:
    return float(psi_v(candidate, stable))


def two_proportion_z_v(
    bad_c: object, n_c: object, bad_s: object, n_s: object
) -> tuple[np.ndarray, np.ndarray]:
    """One-sided pooled two-proportion z test of H1: candidate's bad rate > stable's -> (z, p)."""
    bc, nc, bs, ns = _f(bad_c), _f(n_c), _f(bad_s), _f(n_s)
    with np.errstate(invalid="ignore", divide="ignore"):
        pooled = (bc + bs) / (nc + ns)
        se = np.sqrt(pooled * (1 - pooled) * (1 / nc + 1 / ns))
        diff = bc / nc - bs / ns
        z = np.where(se > 0, diff / np.where(se > 0, se, 1.0), np.sign(diff) * np.inf)
    z = np.nan_to_num(z, nan=0.0, posinf=np.inf, neginf=-np.inf)
    return z, norm.sf(z)


def two_proportion_z(bad_c: float, n_c: float, bad_s: float, n_s: float) -> TestResult:
    z, p = two_proportion_z_v(bad_c, n_c, bad_s, n_s)
    return TestResult(float(z), float(p))


def mann_whitney_greater_v(candidate: np.ndarray, stable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mann-Whitney U of bucketed data (last axis), H1: candidate values tend to be larger -> (U, p).

    Every bucket is a group of ties ranked at its mid-rank; normal approximation with the tie
    correction and a continuity correction of 0.5 (scipy's ``method='asymptotic'``); U is the
    candidate's.
    """
    c, s = _f(candidate), _f(stable)
    n1, n2 = c.sum(axis=-1), s.sum(axis=-1)
    t = c + s
    big_n = n1 + n2
    midrank = np.cumsum(t, axis=-1) - t + (t + 1) / 2
    u = np.sum(c * midrank, axis=-1) - n1 * (n1 + 1) / 2
    tie = np.sum(t**3 - t, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = n1 * n2 / 12 * ((big_n + 1) - tie / (big_n * (big_n - 1)))
        z = (u - n1 * n2 / 2 - 0.5) / np.sqrt(np.where(var > 0, var, 1.0))
    p = np.where(var > 0, norm.sf(z), 1.0)
    return u, p


def mann_whitney_greater(candidate: np.ndarray, stable: np.ndarray) -> TestResult:
    u, p = mann_whitney_greater_v(candidate, stable)
    return TestResult(float(u), float(p))


def chi_square(candidate: np.ndarray, stable: np.ndarray) -> TestResult:
    """Pearson chi-square test of homogeneity on a 2 x K table (no Yates correction).

    Categories empty in both rows are dropped; with fewer than two left there is nothing to test.
    """
    table = np.vstack([_f(candidate), _f(stable)])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or np.any(table.sum(axis=1) <= 0):
        return TestResult(0.0, 1.0)
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    with np.errstate(invalid="ignore", divide="ignore", under="ignore"):  # subnormal counts: NaN, p NaN
        stat = float(np.sum((table - expected) ** 2 / expected))
    return TestResult(stat, float(chi2.sf(stat, table.shape[1] - 1)))


def ks_distance_v(candidate: np.ndarray, stable: np.ndarray) -> np.ndarray:
    """Largest gap between the two empirical CDFs at the bucket bounds (0 when one side is empty)."""
    c, s = _f(candidate), _f(stable)
    nc, ns = c.sum(axis=-1, keepdims=True), s.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = np.abs(np.cumsum(c, axis=-1) / nc - np.cumsum(s, axis=-1) / ns)
    d = np.max(gap, axis=-1, initial=0.0)  # initial: no buckets at all is no gap
    return np.where((nc[..., 0] > 0) & (ns[..., 0] > 0), d, 0.0)


def ks_distance(candidate: np.ndarray, stable: np.ndarray) -> float:
    return float(ks_distance_v(candidate, stable))


def ks_two_sample_v(candidate: np.ndarray, stable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided two-sample KS on bucketed data (scipy's ``method='asymp'`` p-value) -> (D, p).

    With ties inside buckets D is the exact KS statistic of the data as recorded; the p-value is
    then slightly conservative.
    """
    n1, n2 = _f(candidate).sum(axis=-1), _f(stable).sum(axis=-1)
    d = ks_distance_v(candidate, stable)
    with np.errstate(invalid="ignore", divide="ignore"):
        en = np.maximum(1.0, np.round(n1 * n2 / (n1 + n2)))
    en = np.nan_to_num(en, nan=1.0)
    p = np.where((n1 > 0) & (n2 > 0), np.clip(kstwo.sf(d, en), 0.0, 1.0), 1.0)
    return d, p


def ks_two_sample(candidate: np.ndarray, stable: np.ndarray) -> TestResult:
    d, p = ks_two_sample_v(candidate, stable)
    return TestResult(float(d), float(p))


# --- the sequential test: a scale mixture of normal priors (mSPRT) ---------------------------------

# the mixing prior: N(0, tau^2) with tau = minEffect x each scale, equal weights. A mixture of
# martingales is a martingale, so the guarantee holds; the spread adapts to small and large effects.
TAU_SCALES = (1.0, 2.0, 4.0, 8.0)


def log_mixture_ratio(distance: np.ndarray, variance: np.ndarray, tau: float) -> np.ndarray:
    """log of the mixture likelihood ratio for an estimate ``distance`` away from the hypothesis,
    the estimate ~ N(theta, variance), prior N(0, (tau * scale)^2) averaged over ``TAU_SCALES``."""
    d, v = _f(distance)[..., None], _f(variance)[..., None]
    t2 = (tau * np.asarray(TAU_SCALES)) ** 2
    terms = 0.5 * np.log(v / (v + t2)) + d * d * t2 / (2 * v * (v + t2))
    top = terms.max(axis=-1, keepdims=True)
    return (top + np.log(np.mean(np.exp(terms - top), axis=-1, keepdims=True)))[..., 0]


def _log_mixture_ratio_scalar(d: float, v: float, tau: float) -> float:
    terms = [
        0.5 * math.log(v / (v + t2)) + d * d * t2 / (2 * v * (v + t2))
        for t2 in ((tau * scale) ** 2 for scale in TAU_SCALES)
    ]
    top = max(terms)
    return top + math.log(sum(math.exp(t - top) for t in terms) / len(terms))


def half_width(variance: float, tau: float, alpha: float) -> float:
    """Half-width of the always-valid (1 - alpha) confidence sequence around the estimate: the
    distance at which the mixture ratio reaches 1/alpha (it grows with the distance)."""
    if not (0.0 < variance < math.inf):
        return math.nan  # no spread to build a sequence from (only on data the judges refuse)
    target = math.log(1 / alpha)
    lo, hi = 0.0, math.sqrt(variance)
    while _log_mixture_ratio_scalar(hi, variance, tau) < target:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _log_mixture_ratio_scalar(mid, variance, tau) < target else (lo, mid)
    return hi


def log_one_sided_ratio(distance: np.ndarray, variance: np.ndarray, tau: float, side: float) -> np.ndarray:
    """log of the mixture likelihood ratio for an estimate ``distance`` away from the hypothesis,
    the estimate ~ N(theta, variance), with a half-normal prior of scale ``tau`` on one side only
    (``side`` +1: alternatives above the hypothesis, -1: below). A one-sided test of the
    hypothesis: where the estimate lies on that side the ratio is about twice the two-sided one;
    it is a martingale under the hypothesis, so ``>= 1/alpha`` at any look happens with
    probability at most alpha."""
    d, v = _f(distance), _f(variance)
    t2 = tau * tau
    with np.errstate(invalid="ignore", divide="ignore"):
        z = side * d * tau / np.sqrt(v * (v + t2))
        return 0.5 * np.log(v / (v + t2)) + d * d * t2 / (2 * v * (v + t2)) + math.log(2.0) + log_ndtr(z)
