"""The threshold judge: the simple default, a headline number against ``threshold: {min, max}``.

The headline of a sample depends on its template (``rollout.metrics.templates``): the candidate's
bad rate for error-rate, its good rate for accuracy and shadow agreement, the template's quantile
(p99) interpolated from latency buckets, PSI of predicted classes against stable, KS distance of
confidence, the largest per-feature PSI, a regressor's MAE or RMSE (``means``); a raw query's
value as it is. No data is Inconclusive,
never a pass; so is a candidate sample smaller than ``judge.minSamples`` when the user set one.
A malformed sample (``checks.check_sample``) is an Error naming what is wrong, never an exception.
Who calls it: ``registry.make_judge`` (the engine) and the simulator (``verdicts``).
"""

from __future__ import annotations

import math

import numpy as np

from rollout.analysis import means, stats
from rollout.analysis.base import (
    CategoricalSample,
    FeatureSample,
    Measurement,
    Sample,
    ValueSample,
    Verdict,
)
from rollout.analysis.batch import (
    FAILED,
    INCONCLUSIVE,
    SUCCESSFUL,
    VERDICT_OF_CODE,
    Batch,
    MeanBatch,
    ProportionBatch,
    Verdicts,
    scalar,
    to_batch,
)
from rollout.analysis.checks import check_sample, complete, observed, screen
from rollout.analysis.drift import feature_drift, prediction_shift
from rollout.metrics.templates import Headline, Template
from rollout.spec import MetricSpec


def headline_batch(template: Template | None, batch: Batch) -> np.ndarray:
    """The headline of every sample in a batch; NaN where there is no data."""
    kind = template.headline if template is not None else Headline.VALUE
    if isinstance(batch, ProportionBatch):
        total = np.asarray(batch.candidate_total, dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = np.clip(batch.candidate_bad / np.where(total > 0, total, 1.0), 0.0, 1.0)
        rate = 1.0 - rate if kind == Headline.GOOD_RATE else rate
        return np.where(total > 0, rate, np.nan)
    if isinstance(batch, MeanBatch):
        return means.headline_v(batch, squared=kind == Headline.RMSE)
    if kind == Headline.KS:
        n_c, n_s = batch.sizes
        return np.where(
            (n_c > 0) & (n_s > 0), stats.ks_distance_v(batch.candidate_counts, batch.stable_counts), np.nan
        )
    q = template.quantile if template is not None and template.quantile is not None else 0.99
    return stats.histogram_quantile_v(q, batch.bounds, batch.candidate_counts)


def headline(template: Template | None, sample: Sample) -> float | None:
    """The one number that stands for a sample; None when there is no data to compute it from,
    or the sample is malformed (``checks.check_sample``)."""
    if check_sample(sample, template) is not None:
        return None
    sample = complete(sample)
    batch = to_batch(sample)
    if batch is not None:
        return scalar(headline_batch(template, batch))
    match sample:
        case ValueSample(value=v):
            return None if v is None or math.isnan(v) else float(v)
        case CategoricalSample():
            shift = prediction_shift(sample)
            return None if shift is None else shift.effect
        case FeatureSample():
            drift = feature_drift(sample, alpha=0.0)  # the largest PSI of any feature
            return None if drift is None else drift.effect
    raise TypeError(f"not a sample: {sample!r}")


def sample_size(sample: Sample) -> tuple[float, float]:
    """(candidate, stable) number of observations behind a sample (``checks.observed``; for input
    features, those of the least-observed feature; NaN, NaN for a malformed sample:
    ``checks.check_sample``)."""
    if check_sample(sample) is not None:
        return math.nan, math.nan
    if isinstance(sample, FeatureSample):
        sizes = [observed(h) for h in sample.histograms] or [(0.0, 0.0)]
        return min(c for c, _ in sizes), min(s for _, s in sizes)
    return observed(sample)


class ThresholdJudge:
    """Successful when the headline lies inside ``[min, max]``; Failed outside; Inconclusive without data."""

    def __init__(self, spec: MetricSpec, template: Template | None) -> None:
        if spec.threshold is None:
            raise ValueError(f"metric {spec.name!r}: the threshold judge needs a threshold")
        self.min = spec.threshold.min
        self.max = spec.threshold.max
        self.template = template
        # like the common tools, no minimum by default; a minSamples the user wrote is honoured
        self.min_samples = spec.judge.min_samples if "min_samples" in spec.judge.model_fields_set else 0

    def _codes(self, value: np.ndarray) -> np.ndarray:
        v = np.asarray(value, dtype=float)
        outside = np.zeros(v.shape, dtype=bool)
        if self.min is not None:
            outside |= v < self.min
        if self.max is not None:
            outside |= v > self.max
        return np.where(np.isnan(v), INCONCLUSIVE, np.where(outside, FAILED, SUCCESSFUL)).astype(np.int8)

    def verdicts(self, batch: Batch) -> Verdicts:
        value = headline_batch(self.template, batch)
        code = np.where(batch.sizes[0] < self.min_samples, INCONCLUSIVE, self._codes(value)).astype(np.int8)
        return Verdicts(code, value)

    def judge(self, metric: str, sample: Sample, now: float) -> Measurement:
        n_c, n_s = sample_size(sample)
        early, sample = screen(metric, sample, self.template, now, comparative=False, sizes=(n_c, n_s))
        if early is not None:
            return early
        value = headline(self.template, sample)
        details = {"candidate_n": n_c, "stable_n": n_s}
        verdict = VERDICT_OF_CODE[int(self._codes(np.asarray(np.nan if value is None else value)))]
        if verdict == Verdict.INCONCLUSIVE or value is None:
            return Measurement(metric, Verdict.INCONCLUSIVE, None, now, "no data in the window yet", details)
        if n_c < self.min_samples:
            msg = f"too few samples: candidate {n_c:.0f} (need {self.min_samples})"
            return Measurement(metric, Verdict.INCONCLUSIVE, value, now, msg, details)
        if verdict == Verdict.FAILED:
            below = self.min is not None and value < self.min
            limit = f"below the minimum {self.min:g}" if below else f"above the maximum {self.max:g}"
            return Measurement(metric, verdict, value, now, f"{value:.4g} is {limit}", details)
        return Measurement(metric, verdict, value, now, f"{value:.4g} is within the threshold", details)
