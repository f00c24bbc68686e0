"""Drive judges over simulated traffic the way the engine does, for thousands of rollouts at once.

The engine (``rollout.gate``) measures each metric every interval: a window of the last interval
for threshold and comparative judges, everything since the analysis started for the sequential
judge. It counts consecutive Failed measurements (Inconclusive leaves the count alone, Successful
resets it) and rolls back once the count exceeds ``failureLimit``; a step moves on once its
analysis ran ``min_checks`` intervals and the newest verdict is Successful, and holds otherwise.
Here the same rules run over arrays of runs, with the judge built by ``make_judge`` from the spec
a user would write and judged through its vectorised ``verdicts`` (the rule ``judge`` uses).
Who calls it: ``rollout.simulate``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rollout.analysis.batch import FAILED, SUCCESSFUL, Batch, HistogramBatch, MeanBatch, ProportionBatch
from rollout.analysis.registry import make_judge
from rollout.simulator.traffic import BASELINE_MAE, BOUNDS, TICK_SECONDS, Traffic
from rollout.spec import JudgeKind, MetricSpec

PROMOTED, ROLLED_BACK, UNDECIDED = 0, 1, 2


@dataclass(frozen=True)
class JudgeSetup:
    """One judge as a user would configure it, plus the analysis length of the step."""

    label: str
    metric: MetricSpec
    min_checks: int  # intervals the step's analysis runs before it may move on

    @property
    def interval(self) -> float:
        return float(self.metric.interval or 60.0)

    @property
    def cumulative(self) -> bool:
        return self.metric.judge.kind == JudgeKind.SEQUENTIAL


@dataclass
class Outcomes:
    """Per run: PROMOTED / ROLLED_BACK / UNDECIDED, seconds and candidate requests to the decision
    (the horizon for undecided runs)."""

    outcome: np.ndarray
    seconds: np.ndarray
    requests: np.ndarray
    requests_by_horizon: np.ndarray  # candidate requests had the rollout run to the horizon


def _window(cum: np.ndarray, end: int, start: int) -> np.ndarray:
    """Sum of ticks [start, end) from a cumulative array along axis 1 (shape (runs, T+1, ...))."""
    return cum[:, end] - cum[:, start]


def _cumulative(x: np.ndarray) -> np.ndarray:
    zeros = np.zeros((x.shape[0], 1, *x.shape[2:]))
    return np.concatenate([zeros, np.cumsum(x, axis=1)], axis=1)


def _windows(traffic: Traffic) -> Callable[[int, int], Batch]:
    """The batch of ticks [start, end) of every run, for the traffic's kind of sample."""
    if traffic.histogram:
        cc, sc = _cumulative(traffic.candidate_buckets), _cumulative(traffic.stable_buckets)
        return lambda end, start: HistogramBatch(BOUNDS, _window(cc, end, start), _window(sc, end, start))
    if traffic.mean:
        sums = [_cumulative(x) for x in (*traffic.candidate_errors, *traffic.stable_errors)]
        return lambda end, start: MeanBatch(*(_window(x, end, start) for x in sums))
    parts = [
        _cumulative(x)
        for x in (traffic.candidate_bad, traffic.candidate_total, traffic.stable_bad, traffic.stable_total)
    ]
    return lambda end, start: ProportionBatch(*(_window(x, end, start) for x in parts))


def drive(setup: JudgeSetup, traffic: Traffic, horizon_seconds: float) -> Outcomes:
    judge = make_judge(setup.metric)
    every = max(1, round(setup.interval / TICK_SECONDS))
    ticks = traffic.candidate_requests.shape[1]
    last = min(ticks, int(horizon_seconds // TICK_SECONDS))
    runs = traffic.candidate_requests.shape[0]
    req = _cumulative(traffic.candidate_requests)
    window = _windows(traffic)

    outcome = np.full(runs, UNDECIDED, dtype=np.int8)
    at_tick = np.full(runs, last)
    failed_in_a_row = np.zeros(runs, dtype=int)
    open_ = np.ones(runs, dtype=bool)
    check = 0
    for end in range(every, last + 1, every):
        check += 1
        batch = window(end, 0 if setup.cumulative else end - every)
        code = judge.verdicts(batch).code
        failed_in_a_row = np.where(
            code == FAILED, failed_in_a_row + 1, np.where(code == SUCCESSFUL, 0, failed_in_a_row)
        )
        back = open_ & (failed_in_a_row > setup.metric.failure_limit)
        ahead = open_ & ~back & (code == SUCCESSFUL) & (check >= setup.min_checks)
        outcome[back], outcome[ahead] = ROLLED_BACK, PROMOTED
        at_tick[back | ahead] = end
        open_ &= ~(back | ahead)
        if not open_.any():
            break
    seconds = at_tick * TICK_SECONDS
    requests = req[np.arange(runs), at_tick]
    return Outcomes(outcome, seconds.astype(float), requests, req[:, last])


def user_setups(metric: str, threshold_max_p99: float) -> list[JudgeSetup]:
    """The judges of the comparison, each configured as a user would for this metric.

    - threshold: the common defaults — 1-minute interval, failureLimit 5, a 99 % success rate
      (error rate <= 1 %), accuracy >= 93 %, p99 at most 10 % above today's, MAE at most 10 %
      above today's; 5 intervals;
    - comparative: 1-minute windows, alpha 0.01, failureLimit 1 (two failures in a row), 5 intervals;
    - sequential: checked every 10 s on cumulative data, alpha 0.01, failureLimit 0, decides as soon
      as the evidence is enough.
    ``minEffect``: 1 point of error rate, 2 points of accuracy, 10 % of latency and of MAE.
    """
    template = {"error-rate": "error-rate", "latency": "latency-p99", "accuracy": "accuracy", "mae": "mae"}[
        metric
    ]
    effect = {"error-rate": 0.01, "latency": 0.1, "accuracy": 0.02, "mae": 0.1}[metric]
    threshold = {
        "error-rate": {"max": 0.01},
        "latency": {"max": threshold_max_p99},
        "accuracy": {"min": 0.93},
        "mae": {"max": round(1.1 * BASELINE_MAE, 4)},
    }[metric]
    base = {"name": metric.replace("latency", "latency-p99"), "template": template}
    return [
        JudgeSetup(
            "threshold",
            MetricSpec.model_validate({**base, "threshold": threshold, "interval": "60s", "failureLimit": 5}),
            min_checks=5,
        ),
        JudgeSetup(
            "comparative",
            MetricSpec.model_validate(
                {
                    **base,
                    "interval": "60s",
                    "failureLimit": 1,
                    "judge": {"kind": "comparative", "alpha": 0.01, "minEffect": effect, "minSamples": 50},
                }
            ),
            min_checks=5,
        ),
        JudgeSetup(
            "sequential",
            MetricSpec.model_validate(
                {
                    **base,
                    "interval": "10s",
                    "failureLimit": 0,
                    "judge": {"kind": "sequential", "alpha": 0.01, "minEffect": effect, "minSamples": 50},
                }
            ),
            min_checks=1,
        ),
    ]


def threshold_setup(metric: MetricSpec, max_error_rate: float) -> JudgeSetup:
    """The threshold judge with its error-rate limit moved (for calibration at equal false rollbacks)."""
    tuned = metric.model_copy(
        update={"threshold": metric.threshold.model_copy(update={"max": max_error_rate})}
    )
    return JudgeSetup(f"threshold (max {max_error_rate:g})", tuned, min_checks=5)
