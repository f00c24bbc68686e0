"""The sequential judge: a test that stays valid when checked at every interval on cumulative data.

It is a mixture sequential probability ratio test (mSPRT; Robbins 1970, Johari et al. 2017) on the
difference ``theta`` between candidate and stable. With ``theta_hat ~ N(theta, V)`` and a normal
mixing prior N(0, tau^2), the likelihood ratio of the data against ``theta = theta0`` is

    Lambda(theta0) = sqrt(V / (V + tau^2)) * exp((theta_hat - theta0)^2 * tau^2 / (2 V (V + tau^2)))

averaged here over ``tau = minEffect x (1, 2, 4, 8)`` (``stats.TAU_SCALES``), so it is quick on
large regressions and still efficient at the minimum effect. ``{theta0 : Lambda(theta0) < 1/alpha}``
is an always-valid (1 - alpha) confidence sequence: the chance that it ever excludes the true
difference, over any number of checks, is at most alpha. At every check:
- Failed when the lower bound is above 0 (a regression is proven; false-rollback rate <= alpha);
- Successful when a one-sided test at ``alpha / 2`` proves the difference below ``minEffect`` (the
  upper end of a two-sided (1 - alpha) sequence): a candidate exactly ``minEffect`` worse is
  promoted with probability at most alpha / 2. This side mixes over ``tau = minEffect`` alone (the
  wider priors only help to catch large regressions fast) and, for rates, takes the variance the
  difference would have if the candidate were exactly ``minEffect`` worse (both rates from the
  pooled counts, shifted apart by it: the score test's restricted estimate). With the observed
  rates instead, a 10 % canary whose candidate has few errors looks more certain than it is: a
  candidate 1 point worse was promoted 2.4 % of the time at alpha 1 %;
- Inconclusive otherwise, and while either side has fewer than ``minSamples`` observations (so
  never Successful while stable has none). A malformed sample (``checks.check_sample``) is an
  Error naming what is wrong.

Differences: bad rates (absolute) for error rate and accuracy; the mean of log-latency from the
buckets for latency (``minEffect: 0.2`` = 20 % slower, i.e. log 1.2). Variances use +1/+2
pseudo-counts so a run of zero errors does not look like certainty. The sample must be cumulative
since the analysis started (the engine asks for that window for sequential metrics).

A regressor's mae and rmse: the difference of the versions' mean absolute (rmse: squared) error,
normal approximation, variance from the error sums (``means``: exact for mae, approximated for
rmse). Failed when the difference is proven above 0; Successful when ``candidate - (1 +
minEffect) x stable`` (rmse: (1 + minEffect)^2 on the MSE) is proven below 0 by the one-sided
test at ``alpha / 2``: the candidate's MAE (RMSE) is then proven less than minEffect above
stable's, relative (0.1 = 10 %). The mixing scale is minEffect times the pooled mean of both
versions (stable's alone may be 0): a scale read from the data, so the always-valid guarantee is
approximate while that mean still moves (``rollout simulate`` measures it, scenarios "mae").

Latency also gets a tail test alongside, because a mean of log-latency misses a candidate whose
p99 doubles while its median stays put: the bucket bound where stable's cumulative share is
nearest the template's quantile ``q`` (0.99 for latency-p99) splits each version's requests into
"slower than that" or not, and the same mSPRT runs on the difference of those shares — candidate's
against *stable's own share at that bound* (not the nominal 1 - q, so coarse buckets do not bias
it), mixing scale ``1 - q``. Latency is Failed when either test proves a regression, each at
``alpha / 2`` (so the false-rollback rate stays <= alpha), and Successful only when the mean is
proven within ``minEffect`` and the tail share is proven at most ``1 - q`` above stable's (at
most 2 % of requests slower than stable's p99 where stable has 1 %).
Who calls it: ``registry.make_judge`` (the engine) and the simulator (``verdicts``).
"""

from __future__ import annotations

import math

import numpy as np

from rollout.analysis import means, stats
from rollout.analysis.base import Measurement, Sample, Verdict
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
from rollout.analysis.threshold import headline, headline_batch, sample_size
from rollout.metrics.templates import Headline, Template
from rollout.spec import MetricSpec


def proportion_difference(b: ProportionBatch) -> tuple[np.ndarray, np.ndarray]:
    """(candidate bad rate - stable bad rate, its variance with +1/+2 pseudo-counts)."""
    nc = np.maximum(b.candidate_total, 1e-12)
    ns = np.maximum(b.stable_total, 1e-12)
    pc_v = (b.candidate_bad + 1) / (b.candidate_total + 2)
    ps_v = (b.stable_bad + 1) / (b.stable_total + 2)
    var = pc_v * (1 - pc_v) / nc + ps_v * (1 - ps_v) / ns
    return b.candidate_bad / nc - b.stable_bad / ns, var


def proportion_variance_at(b: ProportionBatch, margin: float) -> np.ndarray:
    """Variance of the bad-rate difference if the candidate's rate were exactly ``margin`` above
    stable's: both rates from the pooled counts, shifted apart by the margin (no pseudo-counts
    needed: the candidate's rate is at least the margin)."""
    m = min(margin, 1.0 - 1e-6)
    nc = np.maximum(b.candidate_total, 1e-12)
    ns = np.maximum(b.stable_total, 1e-12)
    ps = np.clip((b.candidate_bad + b.stable_bad - m * nc) / (nc + ns), 1e-9, 1.0 - m - 1e-9)
    pc = ps + m
    return pc * (1 - pc) / nc + ps * (1 - ps) / ns


def log_representatives(bounds: tuple[float, ...]) -> np.ndarray:
    """log of a representative value per bucket: the geometric middle of (lower, upper]."""
    reps, prev = [], 0.0
    for b in bounds:
        if math.isinf(b):
            reps.append(prev * 2 if prev > 0 else 1.0)
        elif prev > 0:
            reps.append(math.sqrt(prev * b))
        else:
            reps.append(b / 2 if b > 0 else 1e-9)
        prev = prev if math.isinf(b) else b
    return np.log(np.maximum(np.asarray(reps), 1e-12))


def log_mean_difference(b: HistogramBatch) -> tuple[np.ndarray, np.ndarray]:
    """(mean log-value of candidate - of stable, its variance), from bucket counts."""
    x = log_representatives(b.bounds)
    parts = []
    for counts in (b.candidate_counts, b.stable_counts):
        n = np.maximum(counts.sum(axis=-1), 1e-12)
        mean = np.sum(counts * x, axis=-1) / n
        var = np.sum(counts * (x - mean[..., None]) ** 2, axis=-1) / np.maximum(n - 1, 1)
        # everything in one bucket so far: assume some spread rather than certainty
        parts.append((mean, np.maximum(var, 1e-2) / n))
    (mc, vc), (ms, vs) = parts
    return mc - ms, vc + vs


def tail_exceedance(b: HistogramBatch, q: float) -> tuple[ProportionBatch, np.ndarray]:
    """Per version, the requests slower than the finite bucket bound where stable's cumulative
    share is nearest ``q`` (as 'bad' out of all requests), and that bound (seconds)."""
    bounds = np.asarray(b.bounds, dtype=float)
    if bounds.size == 0:  # no buckets: nobody is slower than anything
        zero = np.zeros(np.shape(b.candidate_counts)[:-1])
        return ProportionBatch(zero, zero, zero, zero), np.full(zero.shape, np.nan)
    cum_c, cum_s = np.cumsum(b.candidate_counts, axis=-1), np.cumsum(b.stable_counts, axis=-1)
    n_c, n_s = cum_c[..., -1], cum_s[..., -1]
    share_below = cum_s / np.maximum(n_s, 1e-12)[..., None]
    k = np.argmin(np.where(np.isfinite(bounds), np.abs(share_below - q), np.inf), axis=-1)
    below_c = np.take_along_axis(cum_c, k[..., None], -1)[..., 0]
    below_s = np.take_along_axis(cum_s, k[..., None], -1)[..., 0]
    return ProportionBatch(n_c - below_c, n_c, n_s - below_s, n_s), bounds[k]


class SequentialJudge:
    def __init__(self, spec: MetricSpec, template: Template | None) -> None:
        if template is None:
            raise ValueError(f"metric {spec.name!r}: the sequential judge needs a template")
        self.template = template
        self.alpha = spec.judge.alpha
        self.min_effect = spec.judge.min_effect
        self.min_samples = spec.judge.min_samples
        # the tail test (latency): the quantile whose bound splits "slow", and the tail share the
        # candidate may add before it is not proven fine (1 - q: 1 point over stable's p99 share)
        self.tail_q = template.quantile if template.quantile is not None else 0.99
        self.tail_effect = 1.0 - self.tail_q
        self.squared = template.headline == Headline.RMSE  # rmse: the test is on the squared error

    def _difference(self, batch: Batch) -> tuple[np.ndarray, np.ndarray, float, str]:
        """(estimate, variance, the effect that matters on the same scale, what it measures)."""
        if isinstance(batch, ProportionBatch):
            est, var = proportion_difference(batch)
            return est, var, self.min_effect, "bad-rate increase"
        if isinstance(batch, HistogramBatch):
            est, var = log_mean_difference(batch)
            return est, var, math.log1p(self.min_effect), "log slow-down"
        raise TypeError(f"the sequential judge cannot judge {type(batch).__name__}")

    def _mean_verdicts(self, batch: MeanBatch) -> Verdicts:
        """mae, rmse: the mSPRT on the difference of means, scaled by the mixing scale ``tau``
        (the mixture ratio of d, V at tau equals that of d / tau, V / tau^2 at 1)."""
        t = means.mean_test(batch, self.squared, self.min_effect)
        with np.errstate(all="ignore"):
            tau = np.where(t.tau > 0, t.tau, np.nan)  # no error anywhere: nothing to scale by
            log_l0 = np.nan_to_num(stats.log_mixture_ratio(t.est / tau, t.var / tau**2, 1.0), nan=-np.inf)
            log_ok = np.nan_to_num(
                stats.log_one_sided_ratio(t.contrast / tau, t.contrast_var / tau**2, 1.0, -1.0), nan=-np.inf
            )
        failed = (t.est > 0) & (log_l0 >= math.log(1 / self.alpha))
        proven_ok = (t.contrast < 0) & (log_ok >= math.log(2 / self.alpha))
        few = ~((t.n_c >= self.min_samples) & (t.n_s >= self.min_samples))
        code = np.where(
            few, INCONCLUSIVE, np.where(failed, FAILED, np.where(proven_ok, SUCCESSFUL, INCONCLUSIVE))
        )
        details = {
            "effect": t.est,
            "relative": t.relative,
            "p_value": np.minimum(1.0, np.exp(-np.maximum(log_l0, 0.0))),
            "p_value_ok": np.minimum(1.0, np.exp(-np.maximum(log_ok, 0.0))),
            "variance": t.var,
            "tau": t.tau,
            "stable": np.sqrt(t.mean_s) if self.squared else t.mean_s,  # stable's MAE or RMSE
        }
        return Verdicts(code.astype(np.int8), headline_batch(self.template, batch), details)

    def _judge_mean(self, metric: str, batch: MeanBatch, n: tuple[float, float], now: float) -> Measurement:
        v = self._mean_verdicts(batch)
        est, var, tau = (float(v.details[k]) for k in ("effect", "variance", "tau"))
        h = tau * stats.half_width(var / tau / tau, 1.0, self.alpha) if tau > 0 else math.nan
        name = self.template.headline.value.upper()
        scale = "MSE" if self.squared else "MAE"
        stable = float(v.details["stable"])
        details = {
            "candidate_n": n[0],
            "stable_n": n[1],
            "effect": est,
            "relative": float(v.details["relative"]),
            "lower": est - h,
            "upper": est + h,
            "p_value": float(v.details["p_value"]),
        }
        value = scalar(v.value)
        candidate = math.nan if value is None else value
        shown = f"{name} {candidate:.4g} vs stable's {stable:.4g} ({details['relative']:+.1%})"
        ci = f"{scale} difference [{est - h:.4g}, {est + h:.4g}] ({1 - self.alpha:.0%} always-valid)"
        verdict = VERDICT_OF_CODE[int(v.code)]
        if verdict == Verdict.FAILED:
            msg = f"regression proven: {shown}, {ci}, p={details['p_value']:.2g}"
        elif verdict == Verdict.SUCCESSFUL:
            details["p_value_ok"] = float(v.details["p_value_ok"])
            msg = (
                f"{shown} proven less than {self.min_effect:.0%} above stable's "
                f"(always-valid, p={details['p_value_ok']:.2g})"
            )
        else:
            msg = f"{shown}, {ci}: not decided yet"
        return Measurement(metric, verdict, value, now, msg, details)

    def verdicts(self, batch: Batch) -> Verdicts:
        if isinstance(batch, MeanBatch):
            return self._mean_verdicts(batch)
        n_c, n_s = batch.sizes
        est, var, effect, _ = self._difference(batch)
        tail = isinstance(batch, HistogramBatch)
        # with two tests (latency: mean and tail) each may fail at alpha / 2
        fail_at = math.log((2 if tail else 1) / self.alpha)
        ok_at = math.log(2 / self.alpha)  # one-sided at alpha / 2
        # the CS is {theta0 : |est - theta0| < h}: lower > 0 <=> est > 0 and Lambda(0) >= 1/alpha
        log_l0 = stats.log_mixture_ratio(est, var, effect)
        failed = (est > 0) & (log_l0 >= fail_at)
        ok_var = proportion_variance_at(batch, effect) if isinstance(batch, ProportionBatch) else var
        log_ok = stats.log_one_sided_ratio(est - effect, ok_var, effect, -1.0)
        proven_ok = (est < effect) & (log_ok >= ok_at)
        p0 = np.minimum(1.0, np.exp(-np.maximum(log_l0, 0.0)))
        p_ok = np.minimum(1.0, np.exp(-np.maximum(log_ok, 0.0)))
        details = {"effect": est, "p_value": p0, "p_value_ok": p_ok}
        if isinstance(batch, HistogramBatch):
            exceed, bound = tail_exceedance(batch, self.tail_q)
            t_est, t_var = proportion_difference(exceed)
            t_l0 = stats.log_mixture_ratio(t_est, t_var, self.tail_effect)
            # the observed variance here (with pseudo-counts): the restricted one at a 1-point margin
            # over a share near 0 would hold good candidates back 1.5x longer
            t_ok = stats.log_one_sided_ratio(t_est - self.tail_effect, t_var, self.tail_effect, -1.0)
            tail_failed = (t_est > 0) & (t_l0 >= fail_at)
            failed = failed | tail_failed
            proven_ok = proven_ok & (t_est < self.tail_effect) & (t_ok >= ok_at)
            with np.errstate(invalid="ignore", divide="ignore"):
                details.update(
                    tail_bound=bound,
                    tail_candidate=exceed.candidate_bad / exceed.candidate_total,
                    tail_stable=exceed.stable_bad / exceed.stable_total,
                    tail_effect=t_est,
                    tail_failed=tail_failed.astype(float),
                    tail_p_value=np.minimum(1.0, np.exp(-np.maximum(t_l0, 0.0))),
                )
        # written as ~(>=) so NaN sizes are too few as well; minSamples >= 1 (the spec), so no
        # verdict without observations of both versions
        few = ~((n_c >= self.min_samples) & (n_s >= self.min_samples))
        code = np.where(
            few, INCONCLUSIVE, np.where(failed, FAILED, np.where(proven_ok, SUCCESSFUL, INCONCLUSIVE))
        )
        return Verdicts(code.astype(np.int8), headline_batch(self.template, batch), details)

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
        if batch is None:
            raise TypeError(f"the sequential judge cannot judge {type(sample).__name__}")
        if isinstance(batch, MeanBatch):
            return self._judge_mean(metric, batch, (n_c, n_s), now)
        v = self.verdicts(batch)
        est_a, var_a, effect, what = self._difference(batch)
        est, var = float(est_a), float(var_a)
        h = stats.half_width(var, effect, self.alpha)
        p_value = float(v.details["p_value"])
        details = {
            "candidate_n": n_c,
            "stable_n": n_s,
            "effect": est,
            "lower": est - h,
            "upper": est + h,
            "p_value": p_value,
        }
        verdict = VERDICT_OF_CODE[int(v.code)]
        ci = f"[{est - h:.4g}, {est + h:.4g}] ({1 - self.alpha:.0%} always-valid)"
        tail = ""
        if "tail_bound" in v.details:
            for key in ("tail_bound", "tail_candidate", "tail_stable", "tail_effect", "tail_p_value"):
                details[key] = float(v.details[key])
            tail = (
                f"{details['tail_candidate']:.2%} of candidate requests slower than "
                f"{details['tail_bound']:g} s (the bound nearest stable's p{100 * self.tail_q:g}) "
                f"vs {details['tail_stable']:.2%} of stable's"
            )
        if verdict == Verdict.FAILED and tail and float(v.details["tail_failed"]):
            msg = f"tail regression proven: {tail}, p={details['tail_p_value']:.2g}"
        elif verdict == Verdict.FAILED:
            msg = f"regression proven: {what} {ci}, p={p_value:.2g}"
        elif verdict == Verdict.SUCCESSFUL:
            details["p_value_ok"] = float(v.details["p_value_ok"])
            msg = (
                f"{what} {est:.4g} proven below {effect:.4g} (always-valid, p={details['p_value_ok']:.2g})"
                + (f"; tail: {tail}" if tail else "")
            )
        else:
            msg = f"{what} {ci}: not decided yet" + (f"; tail: {tail}" if tail else "")
        return Measurement(metric, verdict, value, now, msg, details)
