"""The A/B test's decision: is one version better on the deciding metric, and is it proven?

An A/B experiment is looked at every analysis interval on cumulative data, so a fixed-sample
test (or "whichever leads once minSamples are in") picks a winner between two equal versions far
more often than its nominal rate. Here the difference ``theta`` (candidate minus stable, on the
scale of the metric's headline) gets the same always-valid confidence sequence as the sequential
judge (the mSPRT of ``stats.log_mixture_ratio``, mixing scale ``tau`` = the metric's
``judge.minEffect``): with ``alpha = 1 - confidence``, the chance that it *ever* excludes the true
difference, over any number of looks, is at most alpha. A winner is declared only once the
sequence excludes 0; so between two equal versions a false winner is declared in at most
``1 - confidence`` of experiments, however often they are looked at.

Scales: for proportions (error rate, accuracy from feedback labels) the difference of bad rates,
sign-flipped for a good-rate headline (accuracy: +0.02 = candidate two points more accurate);
for latency histograms the mean of log-latency (+0.1 = about 10 % slower), since a quantile has
no simple variance; for a regressor's mae (rmse) the difference of mean absolute (squared) errors,
mixing scale minEffect times the pooled mean (``means``: minEffect relative). Other samples (raw
values, distribution shifts) have no test: no winner.
Who calls it: ``rollout.gate.compare`` (the engine, for the A/B deciding metric) and the
simulator's A/B cells (``rollout.simulator.abtest``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rollout.analysis import means, stats
from rollout.analysis.batch import Batch, HistogramBatch, MeanBatch, ProportionBatch, to_batch
from rollout.analysis.checks import check_sample, complete
from rollout.analysis.sequential import log_mean_difference, proportion_difference
from rollout.metrics.templates import Headline, Template

NO_WINNER, CANDIDATE_WINS, STABLE_WINS = 0, 1, 2
WINNER_OF_CODE = (None, "candidate", "stable")


@dataclass(frozen=True)
class ExperimentTest:
    """How to test the deciding metric: the mixing scale and the confidence."""

    template: Template
    min_effect: float  # judge.minEffect: absolute for rates, relative for latency, mae and rmse
    higher_is_better: bool
    confidence: float = 0.95

    @property
    def alpha(self) -> float:
        return 1.0 - self.confidence

    def difference(self, batch: Batch) -> tuple[np.ndarray, np.ndarray, np.ndarray | float] | None:
        """(candidate - stable on the headline's scale, its variance, tau), or None (no test)."""
        if isinstance(batch, ProportionBatch):
            est, var = proportion_difference(batch)
            sign = -1.0 if self.template.headline == Headline.GOOD_RATE else 1.0
            return sign * est, var, self.min_effect
        if isinstance(batch, HistogramBatch) and self.template.headline == Headline.QUANTILE:
            est, var = log_mean_difference(batch)
            return est, var, math.log1p(self.min_effect)
        if isinstance(batch, MeanBatch) and self.template.headline in (Headline.MAE, Headline.RMSE):
            t = means.mean_test(batch, self.template.headline == Headline.RMSE, self.min_effect)
            return t.est, t.var, t.tau  # tau per sample: minEffect x the pooled mean
        return None

    def codes(self, batch: Batch) -> np.ndarray:
        """NO_WINNER / CANDIDATE_WINS / STABLE_WINS for every sample of the batch (no minimum
        sample count here: the strategy applies ``minSamples``)."""
        diff = self.difference(batch)
        if diff is None:
            return np.zeros(np.shape(batch.sizes[0]), dtype=np.int8)
        est, var, tau = diff
        with np.errstate(all="ignore"):
            if isinstance(tau, float):
                log_ratio = stats.log_mixture_ratio(est, var, tau)
            else:  # tau per sample (mae): the ratio of (d, V) at tau is that of (d / tau, V / tau^2)
                t = np.where(tau > 0, tau, np.nan)  # at 1; tau 0 (no error anywhere) proves nothing
                log_ratio = stats.log_mixture_ratio(est / t, var / t / t, 1.0)
            proven = log_ratio >= math.log(1 / self.alpha)
        n_c, n_s = batch.sizes
        proven &= (n_c > 0) & (n_s > 0) & (est != 0)
        candidate_better = (est > 0) == self.higher_is_better
        code = np.where(proven, np.where(candidate_better, CANDIDATE_WINS, STABLE_WINS), NO_WINNER)
        return code.astype(np.int8)


@dataclass(frozen=True)
class ExperimentResult:
    """One look at the experiment: the winner (None until proven) and the always-valid interval
    of the difference candidate - stable on the headline's scale (``what`` names the scale)."""

    winner: str | None
    difference: float
    lower: float
    upper: float
    confidence: float
    what: str

    def describe(self) -> str:
        return (
            f"{self.what} {self.difference:+.4g}, [{self.lower:+.4g}, {self.upper:+.4g}] "
            f"({100 * self.confidence:.4g}% always-valid)"
        )


def decide(test: ExperimentTest, sample: object) -> ExperimentResult | None:
    """The experiment's state for one cumulative sample; None when the sample cannot be tested
    (no test for its kind, no observations of a version, or malformed: ``checks.check_sample``)."""
    if check_sample(sample, test.template) is not None:
        return None
    batch = to_batch(complete(sample))  # type: ignore[arg-type]
    if batch is None:
        return None
    diff = test.difference(batch)
    n_c, n_s = (float(x) for x in batch.sizes)
    if diff is None or n_c <= 0 or n_s <= 0:
        return None
    est, var, tau = float(diff[0]), float(diff[1]), diff[2]
    what = "log-latency difference" if isinstance(batch, HistogramBatch) else "difference"
    if isinstance(batch, MeanBatch):
        what = f"{'MSE' if test.template.headline == Headline.RMSE else 'MAE'} difference"
        t = float(tau)
        h = t * stats.half_width(var / t / t, 1.0, test.alpha) if t > 0 else math.nan
    else:
        h = stats.half_width(var, float(tau), test.alpha)
    code = int(test.codes(batch))
    return ExperimentResult(WINNER_OF_CODE[code], est, est - h, est + h, test.confidence, what)
