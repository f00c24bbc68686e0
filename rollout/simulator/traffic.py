"""Simulated traffic with known truth: per-tick request counts for stable and candidate.

A scenario is a metric (error rate, latency, accuracy from feedback labels) and a regression of
the candidate (0 for a good candidate). ``generate`` draws, for many rollouts at once, what the
model servers' Prometheus counters would gain every tick: requests (Poisson), bad ones (binomial)
or latency buckets (multinomial over the service's histogram buckets, ``LATENCY_BUCKETS``). The
candidate serves ``rps`` requests per second; the stable serves ``stable_ratio`` times as many over
the same time (1 = an even split or a shadow). Who calls it: ``rollout.simulate``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq
from scipy.stats import norm

from rollout.metrics.names import LATENCY_BUCKETS

TICK_SECONDS = 10.0
BASELINE_ERROR_RATE = 0.01
BASELINE_ACCURACY = 0.95
FEEDBACK_SHARE = 0.5  # share of requests that later get a feedback label
LATENCY_MEDIAN_SECONDS = 0.02
LATENCY_LOG_SIGMA = 0.5
BOUNDS: tuple[float, ...] = (*LATENCY_BUCKETS, math.inf)
TAIL_SHARE = 0.02  # tail regressions: the share of requests that take the slow path


@dataclass(frozen=True)
class Scenario:
    """``metric``: error-rate | latency | accuracy. ``regression``: absolute for rates (+0.05 = five
    points more errors, -0.03 = three points less accurate), relative for latency (0.2 = 20 % slower).
    ``tail`` (latency): only ``TAIL_SHARE`` of the requests get slower (a slow path), by as much as
    makes the p99 ``regression`` higher (1.0 = p99 doubles) while the median barely moves."""

    metric: str
    regression: float = 0.0
    tail: bool = False

    @property
    def good(self) -> bool:
        return self.regression == 0.0

    @property
    def name(self) -> str:
        if self.good:
            return f"{self.metric} good"
        if self.metric == "latency" and self.tail:
            return f"latency tail p99 +{self.regression:.0%}"
        if self.metric == "latency":
            return f"latency +{self.regression:.0%}"
        return f"{self.metric} {self.regression * 100:+.0f}%"

    @property
    def hurt_per_request(self) -> float:
        """Bad requests beyond baseline per candidate request (every request is slower for latency,
        the slow-path share for a tail regression)."""
        if self.good:
            return 0.0
        if self.metric == "latency":
            return TAIL_SHARE if self.tail else 1.0
        return abs(self.regression)  # extra errors, or extra wrong answers (labelled or not)


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("error-rate"),
    Scenario("error-rate", 0.01),
    Scenario("error-rate", 0.05),
    Scenario("latency"),
    Scenario("latency", 0.2),
    Scenario("latency", 1.0, tail=True),
    Scenario("accuracy"),
    Scenario("accuracy", -0.03),
)


def latency_bucket_probabilities(median: float, sigma: float = LATENCY_LOG_SIGMA) -> np.ndarray:
    """Probability of each ``BOUNDS`` bucket for log-normal latency with this median."""
    finite = np.asarray(BOUNDS[:-1])
    cdf = norm.cdf((np.log(finite) - math.log(median)) / sigma)
    return np.diff(np.concatenate([[0.0], cdf, [1.0]]))


def tail_slowdown(p99_increase: float, sigma: float = LATENCY_LOG_SIGMA) -> float:
    """How much slower the ``TAIL_SHARE`` slow path must be for the p99 to rise by ``p99_increase``."""
    z99 = norm.ppf(0.99)
    target = (1 + p99_increase) * math.exp(sigma * z99)  # the new p99, in medians

    def over(m: float) -> float:  # share above the target, minus 1 %
        fast = norm.sf(math.log(target) / sigma)
        slow = norm.sf((math.log(target) - math.log(m)) / sigma)
        return (1 - TAIL_SHARE) * fast + TAIL_SHARE * slow - 0.01

    return float(brentq(over, 1.0, 1e4))


def tail_bucket_probabilities(median: float, p99_increase: float) -> np.ndarray:
    """``BOUNDS`` bucket probabilities of the tail regression: a log-normal mixture."""
    slow = latency_bucket_probabilities(median * tail_slowdown(p99_increase))
    return (1 - TAIL_SHARE) * latency_bucket_probabilities(median) + TAIL_SHARE * slow


@dataclass
class Traffic:
    """Per-tick increases, arrays of shape (runs, ticks) or (runs, ticks, buckets)."""

    scenario: Scenario
    rps: float
    candidate_requests: np.ndarray
    candidate_bad: np.ndarray | None = (
        None  # proportion metrics: bad and total (total = labelled for accuracy)
    )
    candidate_total: np.ndarray | None = None
    stable_bad: np.ndarray | None = None
    stable_total: np.ndarray | None = None
    candidate_buckets: np.ndarray | None = None  # latency
    stable_buckets: np.ndarray | None = None

    @property
    def histogram(self) -> bool:
        return self.candidate_buckets is not None


def _rates(scenario: Scenario) -> tuple[float, float]:
    """(stable, candidate) probability that one observation is 'bad'."""
    if scenario.metric == "error-rate":
        return BASELINE_ERROR_RATE, BASELINE_ERROR_RATE + scenario.regression
    if scenario.metric == "accuracy":
        return 1 - BASELINE_ACCURACY, 1 - (BASELINE_ACCURACY + scenario.regression)
    raise ValueError(f"not a rate metric: {scenario.metric}")


def generate(
    scenario: Scenario, rps: float, runs: int, ticks: int, rng: np.random.Generator, stable_ratio: float = 1.0
) -> Traffic:
    shape = (runs, ticks)
    cand_n = rng.poisson(rps * TICK_SECONDS, size=shape)
    stab_n = rng.poisson(rps * stable_ratio * TICK_SECONDS, size=shape)
    t = Traffic(scenario, rps, cand_n.astype(float))
    if scenario.metric == "latency":
        p_s = latency_bucket_probabilities(LATENCY_MEDIAN_SECONDS)
        if scenario.tail:
            p_c = tail_bucket_probabilities(LATENCY_MEDIAN_SECONDS, scenario.regression)
        else:
            p_c = latency_bucket_probabilities(LATENCY_MEDIAN_SECONDS * (1 + scenario.regression))
        t.candidate_buckets = rng.multinomial(cand_n, p_c).astype(float)
        t.stable_buckets = rng.multinomial(stab_n, p_s).astype(float)
        return t
    p_stable, p_cand = _rates(scenario)
    if scenario.metric == "accuracy":
        cand_n = rng.binomial(cand_n, FEEDBACK_SHARE)
        stab_n = rng.binomial(stab_n, FEEDBACK_SHARE)
    t.candidate_total, t.stable_total = cand_n.astype(float), stab_n.astype(float)
    t.candidate_bad = rng.binomial(cand_n, p_cand).astype(float)
    t.stable_bad = rng.binomial(stab_n, p_stable).astype(float)
    return t
