"""The comparative judge: candidate against stable over the same window, with a minimum effect.

The template picks the test (``rollout.metrics.templates.Test``):
- error or accuracy rates: one-sided two-proportion z test on the bad rate, effect = the absolute
  difference of bad rates (``minEffect: 0.01`` = one percentage point);
- latency: one-sided Mann-Whitney U on the buckets (ties handled), effect = the relative increase
  of the median or of the template's quantile, whichever is larger (``0.2`` = 20 % slower);
- predicted classes: chi-square, effect = PSI; confidence: two-sample KS, effect = KS distance;
- input features: chi-square per feature (Bonferroni over features), effect = that feature's PSI.
Failed only when the regression is significant at ``alpha`` AND at least ``minEffect``;
Inconclusive while either version has fewer than ``minSamples`` observations; Successful otherwise.
Each check is a fixed-sample test of one window: checking it every interval on cumulative data
inflates the false-positive rate (use the sequential judge for that).
Who calls it: ``registry.make_judge`` (the engine) and the simulator.
"""

from __future__ import annotations

import numpy as np

from rollout.analysis import stats
from rollout.analysis.base import (
    CategoricalSample,
    FeatureSample,
    HistogramSample,
    Measurement,
    ProportionSample,
    Sample,
    Verdict,
)
from rollout.analysis.threshold import headline, sample_size
from rollout.metrics.templates import Template, Test
from rollout.spec import MetricSpec


def latency_effect(bounds: tuple[float, ...], cand: np.ndarray, stab: np.ndarray, q: float) -> float:
    """Relative increase of the median or the q-quantile of candidate over stable (the larger)."""
    effects = []
    for quant in (0.5, q):
        c = stats.histogram_quantile(quant, bounds, tuple(cand))
        s = stats.histogram_quantile(quant, bounds, tuple(stab))
        if c is not None and s is not None and s > 0:
            effects.append(c / s - 1.0)
    return max(effects) if effects else 0.0


class ComparativeJudge:
    def __init__(self, spec: MetricSpec, template: Template | None) -> None:
        if template is None:
            raise ValueError(f"metric {spec.name!r}: the comparative judge needs a template")
        self.template = template
        self.alpha = spec.judge.alpha
        self.min_effect = spec.judge.min_effect
        self.min_samples = spec.judge.min_samples

    def judge(self, metric: str, sample: Sample, now: float) -> Measurement:
        n_c, n_s = sample_size(sample)
        value = headline(self.template, sample)
        if n_c < self.min_samples or n_s < self.min_samples:
            return Measurement(
                metric,
                Verdict.INCONCLUSIVE,
                value,
                now,
                f"too few samples: candidate {n_c:.0f}, stable {n_s:.0f} (need {self.min_samples} each)",
                {"candidate_n": n_c, "stable_n": n_s},
            )
        effect, p_value, what = self._test(sample)
        details = {"candidate_n": n_c, "stable_n": n_s, "effect": effect, "p_value": p_value}
        significant = p_value < self.alpha
        if significant and effect >= self.min_effect:
            verdict = Verdict.FAILED
            msg = (
                f"{what} {effect:.4g} >= {self.min_effect:g}, significant (p={p_value:.2g} < {self.alpha:g})"
            )
        elif significant:
            verdict = Verdict.SUCCESSFUL
            msg = f"{what} {effect:.4g} is significant (p={p_value:.2g}) but below the minimum effect {self.min_effect:g}"
        else:
            verdict = Verdict.SUCCESSFUL
            msg = f"no significant regression: {what} {effect:.4g}, p={p_value:.2g}"
        return Measurement(metric, verdict, value, now, msg, details)

    def _test(self, sample: Sample) -> tuple[float, float, str]:
        """(effect, p-value, what the effect is) of the template's test."""
        test = self.template.test
        if test == Test.TWO_PROPORTION and isinstance(sample, ProportionSample):
            s = sample
            res = stats.two_proportion_z(s.candidate_bad, s.candidate_total, s.stable_bad, s.stable_total)
            diff = s.candidate_bad / s.candidate_total - s.stable_bad / s.stable_total
            return diff, res.p_value, "bad-rate increase"
        if test == Test.MANN_WHITNEY and isinstance(sample, HistogramSample):
            c, s_ = np.asarray(sample.candidate_counts), np.asarray(sample.stable_counts)
            res = stats.mann_whitney_greater(c, s_)
            q = self.template.quantile or 0.99
            return latency_effect(sample.bounds, c, s_, q), res.p_value, "relative slow-down"
        if test == Test.CHI_SQUARE and isinstance(sample, CategoricalSample):
            c, s_ = np.asarray(sample.candidate_counts), np.asarray(sample.stable_counts)
            return stats.psi(c, s_), stats.chi_square(c, s_).p_value, "PSI"
        if test == Test.KS and isinstance(sample, HistogramSample):
            res = stats.ks_two_sample(np.asarray(sample.candidate_counts), np.asarray(sample.stable_counts))
            return res.statistic, res.p_value, "KS distance"
        if test == Test.FEATURE_CHI_SQUARE and isinstance(sample, FeatureSample):
            return self._features(sample)
        raise TypeError(
            f"template {self.template.name!r} ({test.value}) cannot judge {type(sample).__name__}"
        )

    def _features(self, sample: FeatureSample) -> tuple[float, float, str]:
        """The worst feature: the largest PSI among features significant after Bonferroni."""
        k = max(1, len(sample.features))
        worst: tuple[float, float, str] = (0.0, 1.0, "PSI")
        for name, h in zip(sample.features, sample.histograms, strict=True):
            c, s_ = np.asarray(h.candidate_counts), np.asarray(h.stable_counts)
            p = min(1.0, stats.chi_square(c, s_).p_value * k)
            effect = stats.psi(c, s_)
            significant = p < self.alpha
            worst_significant = worst[1] < self.alpha
            if (significant, effect) > (worst_significant, worst[0]):
                worst = (effect, p, f"PSI of feature {name}")
        return worst
