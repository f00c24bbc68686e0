"""The sequential judge: a test that stays valid when checked at every interval on cumulative data.

It is a mixture sequential probability ratio test (mSPRT; Robbins 1970, Johari et al. 2017) on the
difference ``theta`` between candidate and stable, with a normal mixing prior N(0, tau^2) and
``tau = minEffect``. With ``theta_hat ~ N(theta, V)`` the mixture likelihood ratio against
``theta = theta0`` is

    Lambda(theta0) = sqrt(V / (V + tau^2)) * exp((theta_hat - theta0)^2 * tau^2 / (2 V (V + tau^2)))

and ``{theta0 : Lambda(theta0) < 1/alpha}`` is an always-valid (1 - alpha) confidence sequence:
the chance that it ever excludes the true difference, at any of any number of checks, is at most
alpha. So, at every check:
- Successful when the upper bound is below ``minEffect`` (candidate proven not worse by that much);
- Failed when the lower bound is above 0 (a regression is proven; false-rollback rate <= alpha);
- Inconclusive otherwise, and while either side has fewer than ``minSamples`` observations.

Differences: bad rates (absolute) for error rate and accuracy; the mean of log-latency from the
buckets for latency (``minEffect: 0.2`` = 20 % slower, tau = log 1.2). Variances use a +1/+2
pseudo-count so a run of zero errors does not look like certainty. The sample must be cumulative
since the analysis started (the sampler does this for sequential metrics).
Who calls it: ``registry.make_judge`` (the engine) and the simulator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rollout.analysis.base import HistogramSample, Measurement, ProportionSample, Sample, Verdict
from rollout.analysis.threshold import headline, sample_size
from rollout.metrics.templates import Template
from rollout.spec import MetricSpec


@dataclass(frozen=True)
class Bounds:
    estimate: float
    lower: float
    upper: float
    p_value: float  # 1 / Lambda(0), capped at 1: always-valid against "no difference"


def confidence_sequence(estimate: float, variance: float, tau: float, alpha: float) -> Bounds:
    """The mSPRT confidence sequence of a difference whose estimate has this variance."""
    v, t2 = variance, tau * tau
    log_threshold = math.log(1 / alpha) + 0.5 * math.log((v + t2) / v)
    half = math.sqrt(2 * v * (v + t2) / t2 * log_threshold)
    log_lambda0 = 0.5 * math.log(v / (v + t2)) + estimate * estimate * t2 / (2 * v * (v + t2))
    p = math.exp(-log_lambda0) if log_lambda0 > 0 else 1.0
    return Bounds(estimate, estimate - half, estimate + half, min(1.0, p))


def proportion_difference(s: ProportionSample) -> tuple[float, float]:
    """(candidate bad rate - stable bad rate, its variance with +1/+2 pseudo-counts)."""
    pc = s.candidate_bad / s.candidate_total
    ps = s.stable_bad / s.stable_total
    pc_v = (s.candidate_bad + 1) / (s.candidate_total + 2)
    ps_v = (s.stable_bad + 1) / (s.stable_total + 2)
    var = pc_v * (1 - pc_v) / s.candidate_total + ps_v * (1 - ps_v) / s.stable_total
    return pc - ps, var


def log_representatives(bounds: tuple[float, ...]) -> np.ndarray:
    """log of a representative value per bucket: geometric middle of (lower, upper]."""
    reps = []
    prev = 0.0
    for b in bounds:
        if math.isinf(b):
            reps.append(prev * 2 if prev > 0 else 1.0)
        elif prev > 0:
            reps.append(math.sqrt(prev * b))
        else:
            reps.append(b / 2 if b > 0 else 1e-9)
        prev = b if not math.isinf(b) else prev
    return np.log(np.maximum(np.asarray(reps), 1e-12))


def log_mean_difference(s: HistogramSample) -> tuple[float, float]:
    """(mean log-value of candidate - of stable, its variance), from bucket counts."""
    x = log_representatives(s.bounds)
    out = []
    for counts in (np.asarray(s.candidate_counts, float), np.asarray(s.stable_counts, float)):
        n = counts.sum()
        mean = float(np.sum(counts * x) / n)
        var = float(np.sum(counts * (x - mean) ** 2) / max(n - 1, 1))
        # one bucket only: no spread seen yet; assume a bucket's width of spread rather than none
        out.append((mean, max(var, 1e-4), n))
    (mc, vc, nc), (ms, vs, ns) = out
    return mc - ms, vc / nc + vs / ns


class SequentialJudge:
    def __init__(self, spec: MetricSpec, template: Template | None) -> None:
        if template is None:
            raise ValueError(f"metric {spec.name!r}: the sequential judge needs a template")
        self.template = template
        self.alpha = spec.judge.alpha
        self.min_effect = spec.judge.min_effect
        self.min_samples = spec.judge.min_samples

    def bounds(self, sample: Sample) -> tuple[Bounds, float, str]:
        """(confidence sequence, the effect that matters on the same scale, what it measures)."""
        if isinstance(sample, ProportionSample):
            est, var = proportion_difference(sample)
            return (
                confidence_sequence(est, var, self.min_effect, self.alpha),
                self.min_effect,
                "bad-rate increase",
            )
        if isinstance(sample, HistogramSample):
            effect = math.log1p(self.min_effect)
            est, var = log_mean_difference(sample)
            return confidence_sequence(est, var, effect, self.alpha), effect, "log slow-down"
        raise TypeError(f"the sequential judge cannot judge {type(sample).__name__}")

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
        b, effect, what = self.bounds(sample)
        details = {
            "candidate_n": n_c,
            "stable_n": n_s,
            "effect": b.estimate,
            "lower": b.lower,
            "upper": b.upper,
            "p_value": b.p_value,
        }
        ci = f"[{b.lower:.4g}, {b.upper:.4g}]"
        if b.upper < effect:
            return Measurement(
                metric, Verdict.SUCCESSFUL, value, now, f"{what} {ci} is below {effect:.4g}", details
            )
        if b.lower > 0:
            return Measurement(
                metric,
                Verdict.FAILED,
                value,
                now,
                f"regression proven: {what} {ci} (p={b.p_value:.2g})",
                details,
            )
        return Measurement(metric, Verdict.INCONCLUSIVE, value, now, f"{what} {ci}: not decided yet", details)
