"""Mean errors of a regressor from three Prometheus sums: what the mae and rmse gates test.

For each version the server counts the labelled rows ``n``, ``S1`` = sum of |e| and ``S2`` = sum
of e^2, with e = prediction - label (``rollout.metrics.names``; a ``MeanSample``). With a = |e|:

- **MAE** = S1 / n. The absolute errors' sample variance is (S2 - S1^2 / n) / (n - 1): both
  moments are exact from the two sums, so the mae tests assume nothing about the errors beyond
  the normal approximation of a mean (the central limit theorem; ``minSamples`` rows a side).
- **RMSE** = sqrt(S2 / n). The judges test the mean squared error S2 / n (RMSE is its square
  root, so the direction is the same). Its variance needs the sum of e^4, which no counter holds,
  so it is *approximated*: Var(e^2) = (kurtosis - 1) x MSE^2, with the kurtosis of the
  generalized normal (exponential power) distribution whose ratio E[e^2] / E[|e|]^2 equals the
  observed n S2 / S1^2 (pi/2 for normal errors: kurtosis 3; 2 for Laplace errors: 6; larger for
  heavier tails), and never below the normal's 3. That is exact for errors of that family around
  0, and errs on the safe side for lighter tails; errors with rarer, larger outliers than the two
  sums can reveal make the rmse tests over-confident. Prefer mae for comparative and sequential
  gates; rmse with a threshold needs no variance at all.

``minEffect`` is relative on the headline's scale: 0.1 = MAE (or RMSE) 10 % above stable's; for
rmse the test on the MSE uses (1 + minEffect)^2 - 1 (RMSE 10 % worse = MSE 21 % worse).
Everything is vectorised over leading axes (the simulator judges thousands of rollouts at once).
Who calls it: the threshold (headline), comparative (Welch test) and sequential (mSPRT) judges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln
from scipy.stats import t as student_t

from rollout.analysis.batch import MeanBatch

NORMAL_KURTOSIS = 3.0


def _generalized_normal_table() -> tuple[np.ndarray, np.ndarray]:
    """(log ratio E[e^2]/E[|e|]^2, log kurtosis) of the generalized normal distribution for shape
    beta from 2 (normal) down to 0.1 (very heavy tails); both grow as beta falls."""
    beta = np.geomspace(2.0, 0.1, 200)

    def g(k: float) -> np.ndarray:  # log Gamma(k / beta)
        return gammaln(k / beta)

    return g(3) + g(1) - 2 * g(2), g(5) + g(1) - 2 * g(3)


_LOG_RATIO, _LOG_KURTOSIS = _generalized_normal_table()


def kurtosis_for_ratio(ratio: np.ndarray) -> np.ndarray:
    """The kurtosis E[e^4]/E[e^2]^2 of the generalized normal with this E[e^2]/E[|e|]^2, at least 3
    (ratios at or below the normal's pi/2 give 3; beyond the table, its heaviest tail)."""
    r = np.log(np.maximum(np.asarray(ratio, dtype=float), math.pi / 2))
    return np.exp(np.interp(r, _LOG_RATIO, _LOG_KURTOSIS))


def _safe(n: np.ndarray) -> np.ndarray:
    return np.maximum(np.asarray(n, dtype=float), 1e-12)


def version_moments(
    n: np.ndarray, total: np.ndarray, total_sq: np.ndarray, squared: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(mean, per-row variance) of the absolute error (``squared`` False: mae) or of the squared
    error (rmse: the variance approximated as the module docstring says), for one version."""
    n, s1, s2 = (np.asarray(x, dtype=float) for x in (n, total, total_sq))
    with np.errstate(all="ignore"):  # subnormal or huge sums: inf or NaN, never a warning
        mean_abs, mean_sq = s1 / _safe(n), s2 / _safe(n)
        if not squared:
            return mean_abs, np.maximum(s2 - s1 * mean_abs, 0.0) / np.maximum(n - 1.0, 1.0)
        ratio = np.where(s1 > 0, s2 * n / np.where(s1 > 0, s1 * s1, 1.0), math.pi / 2)
        return mean_sq, (kurtosis_for_ratio(ratio) - 1.0) * mean_sq * mean_sq


def margin_factor(min_effect: float, squared: bool) -> float:
    """minEffect on the tested mean's scale: as it is for MAE, (1 + e)^2 - 1 for the MSE of rmse."""
    return (1.0 + min_effect) ** 2 - 1.0 if squared else min_effect


@dataclass(frozen=True)
class MeanTest:
    """Candidate against stable on the tested mean (of |e| for mae, of e^2 for rmse), arrays."""

    n_c: np.ndarray
    n_s: np.ndarray
    mean_c: np.ndarray
    mean_s: np.ndarray
    est: np.ndarray  # candidate mean - stable mean
    var: np.ndarray  # its variance (> 0)
    var_c: np.ndarray  # the candidate's part of it, v_c / n_c
    var_s: np.ndarray  # stable's, v_s / n_s
    contrast: np.ndarray  # candidate - (1 + margin) x stable: below 0 = within minEffect
    contrast_var: np.ndarray
    tau: np.ndarray  # the mixing scale: margin x the pooled mean (stable's may be 0)
    relative: np.ndarray  # the headline's relative increase: MAE (or RMSE) ratio - 1, 0 without data


def mean_test(batch: MeanBatch, squared: bool, min_effect: float) -> MeanTest:
    """The difference of the versions' means, its variance (normal approximation), and the
    contrast that is below 0 when the candidate is within ``minEffect`` of stable."""
    n_c, n_s = np.asarray(batch.candidate_n, dtype=float), np.asarray(batch.stable_n, dtype=float)
    m_c, v_c = version_moments(n_c, batch.candidate_total, batch.candidate_total_sq, squared)
    m_s, v_s = version_moments(n_s, batch.stable_total, batch.stable_total_sq, squared)
    k = margin_factor(min_effect, squared)
    with np.errstate(all="ignore"):  # subnormal or huge sums: inf or NaN, never a warning
        pooled = (m_c * n_c + m_s * n_s) / _safe(n_c + n_s)
        part_c, part_s = v_c / _safe(n_c), v_s / _safe(n_s)
        # every row's error the same (all exact predictions): no spread is not certainty
        floor = np.maximum((1e-3 * pooled) ** 2, 1e-300)
        var = np.maximum(part_c + part_s, floor)
        contrast_var = np.maximum(part_c + (1 + k) ** 2 * part_s, floor)
        ratio = np.where(m_s > 0, m_c / np.where(m_s > 0, m_s, 1.0), np.where(m_c > 0, np.inf, 1.0))
        relative = (np.sqrt(ratio) if squared else ratio) - 1.0
    return MeanTest(
        n_c=n_c,
        n_s=n_s,
        mean_c=m_c,
        mean_s=m_s,
        est=m_c - m_s,
        var=var,
        var_c=part_c,
        var_s=part_s,
        contrast=m_c - (1 + k) * m_s,
        contrast_var=contrast_var,
        tau=k * pooled,
        relative=relative,
    )


def welch_greater_v(test: MeanTest) -> np.ndarray:
    """One-sided Welch t test of H1: the candidate's mean is larger -> p-value (Welch-Satterthwaite
    degrees of freedom; 1 without observations)."""
    with np.errstate(all="ignore"):  # subnormal or huge sums: inf or NaN, never a warning
        t_stat = test.est / np.sqrt(test.var)
        df = test.var**2 / (
            test.var_c**2 / np.maximum(test.n_c - 1, 1.0) + test.var_s**2 / np.maximum(test.n_s - 1, 1.0)
        )
        df = np.clip(np.nan_to_num(df, nan=1.0, posinf=1e9), 1.0, 1e9)
        p = student_t.sf(np.nan_to_num(t_stat, nan=0.0), df)
    return np.where((test.n_c > 0) & (test.n_s > 0), p, 1.0)


def headline_v(batch: MeanBatch, squared: bool) -> np.ndarray:
    """The candidate's MAE (or RMSE) per sample; NaN without labelled rows."""
    n = np.asarray(batch.candidate_n, dtype=float)
    total = np.asarray(batch.candidate_total_sq if squared else batch.candidate_total, dtype=float)
    with np.errstate(all="ignore"):  # subnormal or huge sums: inf or NaN, never a warning
        mean = total / _safe(n)
        value = np.sqrt(np.maximum(mean, 0.0)) if squared else mean
    return np.where(n > 0, value, np.nan)
