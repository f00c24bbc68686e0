"""The sequential judge's promotion side: a one-sided always-valid test that the candidate is less
than ``minEffect`` worse, mixing over ``tau = minEffect`` alone, with the variance the difference
would have at the margin. A candidate exactly ``minEffect`` worse is promoted at most alpha / 2 of
the time, with an even split and with a 10 % canary (the observed-variance rule promoted it 2.4 %
of the time at alpha 1 % with a 10 % canary); good candidates are promoted on fewer requests."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate

from rollout.analysis import stats
from rollout.analysis.base import ProportionSample, Verdict
from rollout.analysis.batch import ProportionBatch
from rollout.analysis.registry import make_judge
from rollout.analysis.sequential import proportion_variance_at
from rollout.simulate import SimulationConfig, simulate
from rollout.simulator.drive import PROMOTED, drive, user_setups
from rollout.simulator.traffic import Scenario, generate
from rollout.spec import MetricSpec


@pytest.mark.parametrize(
    "d, v, tau, side", [(-0.01, 2e-5, 0.01, -1.0), (0.004, 1e-5, 0.01, 1.0), (0.003, 4e-6, 0.02, -1.0)]
)
def test_one_sided_ratio_is_the_likelihood_ratio_averaged_over_a_half_normal_prior(d, v, tau, side):
    def integrand(theta: float) -> float:
        prior = 2 * math.exp(-theta * theta / (2 * tau * tau)) / (tau * math.sqrt(2 * math.pi))
        return prior * math.exp((theta * d - theta * theta / 2) / v)

    lo, hi = (0.0, 12 * tau) if side > 0 else (-12 * tau, 0.0)
    expected, _ = integrate.quad(integrand, lo, hi, points=[d], limit=200)
    assert float(stats.log_one_sided_ratio(d, v, tau, side)) == pytest.approx(math.log(expected), rel=1e-6)


def test_variance_at_the_margin_is_what_the_difference_has_if_the_candidate_is_that_much_worse():
    # 1 % errors on both sides and a 1-point margin: 0.5 % and 1.5 % from the pooled counts
    b = ProportionBatch(np.asarray(10.0), np.asarray(1000.0), np.asarray(10.0), np.asarray(1000.0))
    expected = 0.015 * 0.985 / 1000 + 0.005 * 0.995 / 1000
    assert float(proportion_variance_at(b, 0.01)) == pytest.approx(expected)
    # no errors yet: the candidate's rate at the margin, not zero variance
    none = ProportionBatch(np.asarray(0.0), np.asarray(100.0), np.asarray(0.0), np.asarray(100.0))
    assert float(proportion_variance_at(none, 0.01)) >= 0.01 * 0.99 / 100


@pytest.mark.parametrize("stable_ratio", [1.0, 9.0])
def test_a_candidate_exactly_min_effect_worse_is_promoted_at_most_half_alpha(stable_ratio):
    seq = next(s for s in user_setups("error-rate", 0.1) if s.label == "sequential")  # alpha 1 %, 1 point
    rng = np.random.default_rng(77)
    traffic = generate(Scenario("error-rate", 0.01), 10.0, 6000, 120, rng, stable_ratio)
    promoted = float((drive(seq, traffic, 1200).outcome == PROMOTED).mean())
    assert promoted <= 0.005, promoted


def test_good_candidates_are_promoted_on_fewer_requests_than_the_calibrated_threshold():
    result = simulate(SimulationConfig(runs=1000, rps=(10.0,), horizon_seconds=900, ab=False))
    ratio = result["targets"]["requests_to_decision_ratio"][
        "threshold (calibrated) / sequential, error-rate good @ 10 req/s"
    ]
    assert ratio >= 1.3  # 1.19 with the symmetric four-scale sequence on both sides
    rows = {(r["judge"], r["scenario"]): r for r in result["rows"]}
    assert rows[("sequential", "error-rate good")]["false_rollback_rate"] < 0.01
    assert rows[("sequential", "error-rate +1%")]["promoted"] < 0.005


def test_a_success_message_says_what_was_proven():
    spec = MetricSpec.model_validate(
        {"name": "e", "template": "error-rate", "judge": {"kind": "sequential", "minEffect": 0.02}}
    )
    m = make_judge(spec).judge("e", ProportionSample(50, 5000, 50, 5000), 0.0)
    assert m.verdict == Verdict.SUCCESSFUL
    assert m.message.startswith("bad-rate increase 0 proven below 0.02 (always-valid, p=")
    assert m.details["p_value_ok"] < 0.005
