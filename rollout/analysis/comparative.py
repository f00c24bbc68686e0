"""The comparative judge: candidate against stable over the same window, with a minimum effect.

The template picks the test (``rollout.metrics.templates.Test``):
- error or accuracy rates: one-sided two-proportion z test on the bad rate, effect = the absolute
  difference of bad rates (``minEffect: 0.01`` = one percentage point);
- latency: one-sided Mann-Whitney U on the buckets (ties handled), effect = the relative increase
  of the median or of the template's quantile, whichever is larger (``0.2`` = 20 % slower);
- predicted classes: chi-square, effect = PSI; confidence: two-sample KS, effect = KS distance;
- input features: chi-square per feature (Bonferroni over features), effect = that feature's PSI;
- a regressor's mae or rmse: one-sided Welch t test of the mean absolute (rmse: squared) error,
  effect = the relative increase of MAE or RMSE (``minEffect: 0.1`` = 10 % worse; ``means``).
Failed only when the regression is significant at ``alpha`` AND at least ``minEffect``;
Inconclusive while either version has fewer than ``minSamples`` observations (never Successful
while stable has none); Successful otherwise. A malformed sample (``checks.check_sample``) is an
Error naming what is wrong.
Each check is a fixed-sample test of one window: checking it every interval on cumulative data
inflates the false-positive rate (use the sequential judge for that).
Who calls it: ``registry.make_judge`` (the engine) and the simulator (``verdicts``).
"""

from __future__ import annotations

import numpy as np

from rollout.analysis import means, stats
from rollout.analysis.base import CategoricalSample, FeatureSample, Measurement, Sample, Verdict
from rollout.analysis.batch import (
    FAILED,
    INCONCLUSIVE,
    SUCCESSFUL,
    VERDICT_OF_CODE,
    Batch,
    HistogramBatch,
    MeanBatch,
    ProportionBatch,
    Verdicts,
    scalar,
    to_batch,
)
from rollout.analysis.checks import screen
from rollout.analysis.drift import Drift, feature_drift, prediction_shift
from rollout.analysis.threshold import headline, headline_batch, sample_size
from rollout.metrics.templates import Headline, Template, Test
from rollout.spec import MetricSpec


def latency_effect(bounds: tuple[float, ...], cand: np.ndarray, stab: np.ndarray, q: float) -> np.ndarray:
    """Relative increase of the median or the q-quantile of candidate over stable (the larger)."""
    effects = []
    for quant in (0.5, q):
        c = stats.histogram_quantile_v(quant, bounds, cand)
        s = stats.histogram_quantile_v(quant, bounds, stab)
        with np.errstate(invalid="ignore", divide="ignore"):
            effects.append(np.where(s > 0, c / np.where(s > 0, s, 1.0) - 1.0, np.nan))
    return np.nan_to_num(np.fmax(effects[0], effects[1]), nan=0.0)


class ComparativeJudge:
    def __init__(self, spec: MetricSpec, template: Template | None) -> None:
        if template is None:
            raise ValueError(f"metric {spec.name!r}: the comparative judge needs a template")
        self.template = template
        self.alpha = spec.judge.alpha
        self.min_effect = spec.judge.min_effect
        self.min_samples = spec.judge.min_samples

    def _test_batch(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """(effect, p-value) arrays of the template's test."""
        test = self.template.test
        if test == Test.TWO_PROPORTION and isinstance(batch, ProportionBatch):
            _, p = stats.two_proportion_z_v(
                batch.candidate_bad, batch.candidate_total, batch.stable_bad, batch.stable_total
            )
            with np.errstate(invalid="ignore", divide="ignore"):
                effect = batch.candidate_bad / batch.candidate_total - batch.stable_bad / batch.stable_total
            return np.nan_to_num(effect), p
        if test == Test.MANN_WHITNEY and isinstance(batch, HistogramBatch):
            _, p = stats.mann_whitney_greater_v(batch.candidate_counts, batch.stable_counts)
            q = self.template.quantile or 0.99
            return latency_effect(batch.bounds, batch.candidate_counts, batch.stable_counts, q), p
        if test == Test.KS and isinstance(batch, HistogramBatch):
            return stats.ks_two_sample_v(batch.candidate_counts, batch.stable_counts)
        if test == Test.WELCH and isinstance(batch, MeanBatch):
            squared = self.template.headline == Headline.RMSE
            t = means.mean_test(batch, squared, self.min_effect)
            return np.nan_to_num(t.relative, nan=0.0, posinf=np.inf), means.welch_greater_v(t)
        raise TypeError(f"template {self.template.name!r} ({test.value}) cannot judge {type(batch).__name__}")

    def _codes(self, n_c: np.ndarray, n_s: np.ndarray, effect: np.ndarray, p: np.ndarray) -> np.ndarray:
        # written as ~(>=) so NaN sizes are too few as well; minSamples >= 1 (the spec), so no
        # verdict without observations of both versions
        few = ~((n_c >= self.min_samples) & (n_s >= self.min_samples))
        failed = (p < self.alpha) & (effect >= self.min_effect)
        return np.where(few, INCONCLUSIVE, np.where(failed, FAILED, SUCCESSFUL)).astype(np.int8)

    def verdicts(self, batch: Batch) -> Verdicts:
        n_c, n_s = batch.sizes
        effect, p = self._test_batch(batch)
        code = self._codes(n_c, n_s, effect, p)
        return Verdicts(code, headline_batch(self.template, batch), {"effect": effect, "p_value": p})

    def judge(self, metric: str, sample: Sample, now: float) -> Measurement:
        n_c, n_s = sample_size(sample)
        early, sample = screen(metric, sample, self.template, now, comparative=True, sizes=(n_c, n_s))
        if early is not None:
            return early
        value = headline(self.template, sample)
        if n_c < self.min_samples or n_s < self.min_samples:
            msg = f"too few samples: candidate {n_c:.0f}, stable {n_s:.0f} (need {self.min_samples} each)"
            return Measurement(
                metric, Verdict.INCONCLUSIVE, value, now, msg, {"candidate_n": n_c, "stable_n": n_s}
            )
        batch = to_batch(sample)
        if batch is not None:
            effect_a, p_a = self._test_batch(batch)
            effect, p_value = scalar(effect_a) or 0.0, float(p_a)
            what = {
                Test.TWO_PROPORTION: "bad-rate increase",
                Test.MANN_WHITNEY: "relative slow-down",
                Test.WELCH: f"relative {self.template.headline.value.upper()} increase",
            }.get(self.template.test, "KS distance")
        else:
            effect, p_value, what = self._scalar_test(sample)
        verdict = VERDICT_OF_CODE[
            int(self._codes(np.asarray(n_c), np.asarray(n_s), np.asarray(effect), np.asarray(p_value)))
        ]
        details = {"candidate_n": n_c, "stable_n": n_s, "effect": effect, "p_value": p_value}
        if verdict == Verdict.FAILED:
            msg = (
                f"{what} {effect:.4g} >= {self.min_effect:g}, significant (p={p_value:.2g} < {self.alpha:g})"
            )
        elif p_value < self.alpha:
            msg = f"{what} {effect:.4g} is significant (p={p_value:.2g}) but below the minimum effect {self.min_effect:g}"
        else:
            msg = f"no significant regression: {what} {effect:.4g}, p={p_value:.2g}"
        return Measurement(metric, verdict, value, now, msg, details)

    def _scalar_test(self, sample: Sample) -> tuple[float, float, str]:
        test = self.template.test
        drift: Drift | None = None
        if test == Test.CHI_SQUARE and isinstance(sample, CategoricalSample):
            drift = prediction_shift(sample)
        elif test == Test.FEATURE_CHI_SQUARE and isinstance(sample, FeatureSample):
            drift = feature_drift(sample, self.alpha)
        else:
            raise TypeError(
                f"template {self.template.name!r} ({test.value}) cannot judge {type(sample).__name__}"
            )
        if drift is None:
            return 0.0, 1.0, "PSI"
        return drift.effect, drift.p_value, drift.what
