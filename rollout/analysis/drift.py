"""ML-aware gates: distribution shift of the candidate against stable over the same traffic.

- prediction shift: PSI and a chi-square test of homogeneity on predicted-class counts;
- confidence shift: two-sample KS on the prediction-confidence histogram;
- input drift: per feature, PSI and chi-square on the z-score buckets; the worst feature decides
  (p-values Bonferroni-corrected over features);
- shadow agreement: the share of mirrored requests where the candidate gave the stable answer,
  from ``model_shadow_agreements_total / model_shadow_comparisons_total``; ``join_answers`` is the
  join by request id that an exporter of those counters performs.
Who calls it: the threshold judge (headline numbers), the comparative judge (tests) and whoever
exports the shadow counters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from rollout.analysis import stats
from rollout.analysis.base import CategoricalSample, FeatureSample, HistogramSample, ProportionSample


@dataclass(frozen=True)
class Drift:
    """How far the candidate's distribution moved from stable's, and how sure we are it moved."""

    effect: float  # PSI, or KS distance for confidence
    p_value: float
    what: str


def _has_data(c: np.ndarray, s: np.ndarray) -> bool:
    return bool(c.sum() > 0 and s.sum() > 0)


def prediction_shift(sample: CategoricalSample) -> Drift | None:
    """PSI and chi-square of predicted classes; None while either side has no predictions."""
    c, s = np.asarray(sample.candidate_counts, float), np.asarray(sample.stable_counts, float)
    if not _has_data(c, s):
        return None
    return Drift(stats.psi(c, s), stats.chi_square(c, s).p_value, "PSI of predicted classes")


def confidence_shift(sample: HistogramSample) -> Drift | None:
    """KS distance and p-value of the confidence histograms; None while either side is empty."""
    c, s = np.asarray(sample.candidate_counts, float), np.asarray(sample.stable_counts, float)
    if not _has_data(c, s):
        return None
    res = stats.ks_two_sample(c, s)
    return Drift(res.statistic, res.p_value, "KS distance of confidence")


def feature_drift(sample: FeatureSample, alpha: float) -> Drift | None:
    """The worst feature: the largest PSI among features whose (Bonferroni) chi-square p < alpha,
    else the largest PSI overall. None when no feature has data on both sides."""
    k = max(1, len(sample.features))
    per_feature = []
    for name, h in zip(sample.features, sample.histograms, strict=True):
        c, s = np.asarray(h.candidate_counts, float), np.asarray(h.stable_counts, float)
        if _has_data(c, s):
            p = min(1.0, stats.chi_square(c, s).p_value * k)
            per_feature.append(Drift(stats.psi(c, s), p, f"PSI of feature {name}"))
    if not per_feature:
        return None
    return max(per_feature, key=lambda d: (d.p_value < alpha, d.effect))


def agreement_rate(sample: ProportionSample) -> float | None:
    """Agreements / comparisons (the sample counts disagreements as bad); None before any comparison."""
    if sample.candidate_total <= 0:
        return None
    return 1.0 - sample.candidate_bad / sample.candidate_total


def join_answers(stable: Mapping[str, str], candidate: Mapping[str, str]) -> tuple[int, int]:
    """(comparisons, agreements) of the answers both versions gave to the same request ids."""
    shared = stable.keys() & candidate.keys()
    return len(shared), sum(1 for rid in shared if stable[rid] == candidate[rid])
