"""Simulated traffic with known truth: per-tick request counts for stable and candidate.

A scenario is a metric (error rate, latency, accuracy from feedback labels, a regressor's mean
absolute error) and a regression of the candidate (0 for a good candidate). ``generate`` draws,
for many rollouts at once, what the model servers' Prometheus counters would gain every tick:
requests (Poisson), bad ones (binomial), latency buckets (multinomial over the service's histogram
buckets, ``LATENCY_BUCKETS``) or, for a regressor, labelled rows (binomial) and the sums of their
absolute and squared errors, each row's error drawn from a normal distribution (exact sums, not an
approximation of them). The
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
ERROR_SIGMA = 1.0  # a regressor's errors (prediction - label) ~ N(0, sigma^2): MAE sigma sqrt(2/pi)
BASELINE_MAE = ERROR_SIGMA * math.sqrt(2 / math.pi)


@dataclass(frozen=True)
class Scenario:
    """``metric``: error-rate | latency | accuracy | mae. ``regression``: absolute for rates (+0.05 =
    five points more errors, -0.03 = three points less accurate), relative for latency (0.2 = 20 %
    slower) and mae (0.15 = every error 15 % larger, so MAE and RMSE 15 % higher).
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
        if self.metric == "mae":
            return 1.0  # every answer is worse on average
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
# a regressor's candidates, simulated from their own random stream (``rollout.simulate``) so that
# adding them changed none of the figures of the scenarios above
REGRESSOR_SCENARIOS: tuple[Scenario, ...] = (Scenario("mae"), Scenario("mae", 0.15))


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
    # a regressor: per version, labelled rows and the sums of |error| and error^2 over them
    candidate_errors: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    stable_errors: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def histogram(self) -> bool:
        return self.candidate_buckets is not None

    @property
    def mean(self) -> bool:
        return self.candidate_errors is not None


def _rates(scenario: Scenario) -> tuple[float, float]:
    """(stable, candidate) probability that one observation is 'bad'."""
    if scenario.metric == "error-rate":
        return BASELINE_ERROR_RATE, BASELINE_ERROR_RATE + scenario.regression
    if scenario.metric == "accuracy":
        return 1 - BASELINE_ACCURACY, 1 - (BASELINE_ACCURACY + scenario.regression)
    raise ValueError(f"not a rate metric: {scenario.metric}")


def error_sums(
    rows: np.ndarray, sigma: float, rng: np.random.Generator, chunk: int = 4_000_000
) -> tuple[np.ndarray, np.ndarray]:
    """Per cell of ``rows`` (labelled rows per run and tick), the sums of |e| and e^2 over that many
    errors e ~ N(0, sigma^2), drawn row by row (float32 draws, float64 sums), ``chunk`` rows at a time."""
    flat = rows.ravel().astype(np.int64)
    s1, s2 = np.zeros(flat.size), np.zeros(flat.size)
    ends = np.cumsum(flat)
    i = 0
    while i < flat.size:
        base = int(ends[i - 1]) if i else 0
        j = max(int(np.searchsorted(ends, base + chunk, side="right")), i + 1)
        a = np.abs(rng.standard_normal(int(ends[j - 1]) - base, dtype=np.float32)) * np.float32(sigma)
        seg = flat[i:j]
        filled = np.flatnonzero(seg)
        if filled.size:  # reduceat over the non-empty cells: each runs to the next one's start
            starts = (np.cumsum(seg) - seg)[filled]
            s1[i + filled] = np.add.reduceat(a, starts, dtype=np.float64)
            s2[i + filled] = np.add.reduceat(np.square(a, dtype=np.float64), starts)
        i = j
    return s1.reshape(rows.shape), s2.reshape(rows.shape)


def generate(
    scenario: Scenario, rps: float, runs: int, ticks: int, rng: np.random.Generator, stable_ratio: float = 1.0
) -> Traffic:
    shape = (runs, ticks)
    cand_n = rng.poisson(rps * TICK_SECONDS, size=shape)
    stab_n = rng.poisson(rps * stable_ratio * TICK_SECONDS, size=shape)
    t = Traffic(scenario, rps, cand_n.astype(float))
    if scenario.metric == "mae":
        for version, n, sigma in (
            ("candidate", cand_n, ERROR_SIGMA * (1 + scenario.regression)),
            ("stable", stab_n, ERROR_SIGMA),
        ):
            labelled = rng.binomial(n, FEEDBACK_SHARE)
            s1, s2 = error_sums(labelled, sigma, rng)
            setattr(t, f"{version}_errors", (labelled.astype(float), s1, s2))
        return t
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
