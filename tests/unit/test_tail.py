"""The sequential judge's tail test: a candidate whose p99 doubles while its median stays put is
rolled back (the mean of log-latency alone misses it), identical versions are not (at most alpha
false alarms however often they are looked at), and the baseline is stable's own share over the
chosen bucket bound, so coarse buckets do not bias it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rollout.analysis.base import HistogramSample, Verdict
from rollout.analysis.batch import FAILED, VERDICT_OF_CODE, HistogramBatch
from rollout.analysis.registry import make_judge
from rollout.analysis.sequential import tail_exceedance
from rollout.analysis.stats import histogram_quantile
from rollout.simulate import SimulationConfig, simulate
from rollout.simulator.traffic import (
    BOUNDS,
    TAIL_SHARE,
    latency_bucket_probabilities,
    tail_bucket_probabilities,
)
from rollout.spec import MetricSpec


def judge(alpha: float = 0.01, min_effect: float = 0.1):
    spec = {
        "name": "latency-p99",
        "template": "latency-p99",
        "judge": {"kind": "sequential", "alpha": alpha, "minEffect": min_effect, "minSamples": 50},
    }
    return make_judge(MetricSpec.model_validate(spec))


def counts(p: np.ndarray, n: float) -> tuple[float, ...]:
    return tuple(float(x) for x in p * n)


def test_the_tail_scenario_doubles_p99_and_keeps_the_median():
    stable, tail = latency_bucket_probabilities(0.02), tail_bucket_probabilities(0.02, 1.0)
    p99 = [histogram_quantile(0.99, BOUNDS, counts(p, 1e6)) for p in (stable, tail)]
    p50 = [histogram_quantile(0.5, BOUNDS, counts(p, 1e6)) for p in (stable, tail)]
    assert p99[1] / p99[0] > 1.6  # as far as the buckets can tell (0.1 and 0.25 s are wide)
    assert p50[1] / p50[0] == pytest.approx(1.0, abs=0.03)


def test_a_tail_only_regression_is_rolled_back_on_the_tail():
    n = 3000.0
    m = judge().judge(
        "latency-p99",
        HistogramSample(
            BOUNDS,
            counts(tail_bucket_probabilities(0.02, 1.0), n),
            counts(latency_bucket_probabilities(0.02), n),
        ),
        0.0,
    )
    assert m.verdict == Verdict.FAILED
    assert m.message.startswith("tail regression proven") and "slower than 0.1 s" in m.message
    # the mean of log-latency moved by less than the 10 % that matters: it alone would not fail
    assert m.details["effect"] < math.log(1.1) and m.details["p_value"] > 0.01
    assert m.details["tail_candidate"] > 10 * m.details["tail_stable"]


def test_a_uniformly_slower_candidate_still_fails_on_the_mean():
    n = 2000.0
    m = judge().judge(
        "latency-p99",
        HistogramSample(
            BOUNDS,
            counts(latency_bucket_probabilities(0.03), n),
            counts(latency_bucket_probabilities(0.02), n),
        ),
        0.0,
    )
    assert m.verdict == Verdict.FAILED and m.details["effect"] > math.log(1.3)


def test_identical_versions_pass_with_a_tail_share_that_is_fine():
    same = counts(latency_bucket_probabilities(0.02), 5000)
    m = judge().judge("latency-p99", HistogramSample(BOUNDS, same, same), 0.0)
    assert m.verdict == Verdict.SUCCESSFUL and "tail:" in m.message


@pytest.mark.parametrize("median", [0.004, 0.012, 0.02, 0.03])
def test_identical_versions_looked_at_60_times_alarm_at_most_alpha(median):
    rng = np.random.default_rng(int(median * 1000))
    runs, looks, per_look, alpha = 2000, 60, 50, 0.05
    p = latency_bucket_probabilities(median)
    cand = np.cumsum(rng.multinomial(per_look, p, size=(runs, looks)), axis=1).astype(float)
    stab = np.cumsum(rng.multinomial(per_look, p, size=(runs, looks)), axis=1).astype(float)
    j = judge(alpha)
    alarmed = np.zeros(runs, dtype=bool)
    for k in range(looks):  # keep looking even after a Successful verdict: the worst case
        alarmed |= j.verdicts(HistogramBatch(BOUNDS, cand[:, k], stab[:, k])).code == FAILED
    assert float(alarmed.mean()) <= alpha


def test_the_baseline_is_stables_own_share_over_the_bound_not_the_nominal_one():
    # coarse buckets: the only finite bound (10 ms) has 3 % of stable's requests above it, not 1 %
    bounds = (0.01, math.inf)
    stable = (9700.0, 300.0)
    batch = HistogramBatch(bounds, np.asarray(stable), np.asarray(stable))
    exceed, bound = tail_exceedance(batch, 0.99)
    assert float(bound) == 0.01 and float(exceed.stable_bad) == 300.0
    j = judge()
    assert j.judge("l", HistogramSample(bounds, stable, stable), 0).verdict != Verdict.FAILED
    heavier = j.judge("l", HistogramSample(bounds, (9400.0, 600.0), stable), 0)
    assert heavier.verdict == Verdict.FAILED and "6.00% of candidate" in heavier.message


def test_batch_verdicts_of_histograms_are_the_verdicts_of_the_judge():
    rng = np.random.default_rng(9)
    j = judge(0.05)
    p_s, p_c = latency_bucket_probabilities(0.02), tail_bucket_probabilities(0.02, 1.0)
    cand = rng.multinomial(rng.integers(50, 3000, 40), p_c).astype(float)
    stab = rng.multinomial(rng.integers(50, 3000, 40), p_s).astype(float)
    batch = j.verdicts(HistogramBatch(BOUNDS, cand, stab))
    for i in range(40):
        one = j.judge("l", HistogramSample(BOUNDS, tuple(cand[i]), tuple(stab[i])), 0.0)
        assert one.verdict == VERDICT_OF_CODE[int(batch.code[i])], (i, one)


def test_the_simulator_shows_the_tail_regression_detected():
    result = simulate(SimulationConfig(runs=300, rps=(10.0,), horizon_seconds=900, calibrate=False, ab=False))
    rows = {(r["judge"], r["scenario"]): r for r in result["rows"]}
    tail = rows[("sequential", "latency tail p99 +100%")]
    assert tail["missed_regression_rate"] < 0.02
    assert tail["mean_requests_hurt"] <= TAIL_SHARE * 900 * 10
    assert rows[("sequential", "latency good")]["false_rollback_rate"] < 0.01
