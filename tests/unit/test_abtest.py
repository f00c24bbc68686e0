"""The A/B test declares a winner only when the difference is significant (an always-valid test, so
looking every interval does not inflate false winners), ends by ``onInconclusive`` with "no
significant difference" otherwise, and its rule is what the simulator's A/B cells measure."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rollout.analysis.base import HistogramSample, ProportionSample
from rollout.errors import SpecError
from rollout.gate import compare
from rollout.metrics.names import LATENCY_BUCKETS
from rollout.model import Phase, Reason
from rollout.simulator.abtest import (
    AB_SCENARIOS,
    CANDIDATE_WINS,
    STABLE_WINS,
    ab_rules,
    drive_ab,
    simulate_ab,
)
from rollout.simulator.traffic import Scenario, Traffic, generate
from rollout.spec import MetricSpec
from tests.unit.enginekit import FakeEdge, make_spec, proportions, reasons, run

ACCURACY = {"name": "accuracy", "template": "accuracy", "direction": "higher", "threshold": {"min": 0.5}}


def ab_spec(**ab):
    strategy = {"abTest": {"weight": 50, "metric": "accuracy", "minSamples": 300, **ab}}
    return make_spec(strategy, [ACCURACY])


def labelled(
    acc_cand: float, acc_stable: float, runs: int, ticks: int, per_tick: float, seed: int
) -> Traffic:
    """Feedback labels per version per 10 s tick, wrong answers drawn binomially."""
    rng = np.random.default_rng(seed)
    nc = rng.poisson(per_tick, (runs, ticks)).astype(float)
    ns = rng.poisson(per_tick, (runs, ticks)).astype(float)
    t = Traffic(Scenario("accuracy", acc_cand - acc_stable), per_tick / 10, nc)
    t.candidate_total, t.stable_total = nc, ns
    t.candidate_bad = rng.binomial(nc.astype(int), 1 - acc_cand).astype(float)
    t.stable_bad = rng.binomial(ns.astype(int), 1 - acc_stable).astype(float)
    return t


# --- the rule, over many seeded experiments ---------------------------------------------------------


def test_equal_versions_looked_at_every_interval_almost_never_get_a_winner():
    # 500 A/A experiments, 50 labels per version every 10 s, looked at 120 times each
    traffic = labelled(0.95, 0.95, runs=500, ticks=120, per_tick=50, seed=11)
    significant, leader = ab_rules(0.95)
    out = drive_ab(significant, traffic, 1200)
    false_winners = float((out.winner != 0).mean())
    assert false_winners <= 0.05 + 0.015, false_winners
    # the rule it replaced names a winner in every A/A experiment
    assert float((drive_ab(leader, traffic, 1200).winner != 0).mean()) > 0.95


def test_a_ten_point_accuracy_gap_is_detected_both_ways():
    better = drive_ab(ab_rules()[0], labelled(0.90, 0.80, runs=500, ticks=60, per_tick=25, seed=12), 600)
    assert (
        float((better.winner == CANDIDATE_WINS).mean()) >= 0.99 and not (better.winner == STABLE_WINS).any()
    )
    assert float(np.median(better.samples)) < 600  # labels per version to the decision
    worse = drive_ab(ab_rules()[0], labelled(0.80, 0.90, runs=500, ticks=60, per_tick=25, seed=13), 600)
    assert float((worse.winner == STABLE_WINS).mean()) >= 0.99 and not (worse.winner == CANDIDATE_WINS).any()


def test_the_simulator_runs_ab_cells_for_every_scenario():
    rows = simulate_ab((10.0,), runs=300, horizon_seconds=900, seed=5)
    assert len(rows) == 2 * len(AB_SCENARIOS)
    cell = {(r["rule"], r["scenario"]): r for r in rows}
    assert cell[("significant (95%)", "A/B accuracy equal")]["false_winner_rate"] <= 0.05
    assert cell[("leader at minSamples", "A/B accuracy equal")]["false_winner_rate"] > 0.9
    assert cell[("significant (95%)", "A/B accuracy +3%")]["right_winner_rate"] > 0.95
    assert cell[("significant (95%)", "A/B accuracy -5%")]["wrong_winner_rate"] == 0.0


def test_simulated_traffic_feeds_the_same_rule_the_engine_uses():
    # a run the vectorised rule calls for the candidate: the engine's comparison calls it too
    traffic = generate(Scenario("accuracy", 0.03), 10.0, 20, 60, np.random.default_rng(2))
    out = drive_ab(ab_rules()[0], traffic, 600)
    metric = MetricSpec.model_validate({**ACCURACY, "judge": {"minEffect": 0.02}})
    for r in np.flatnonzero(out.winner == CANDIDATE_WINS)[:5]:
        k = int(out.seconds[r] // 10)
        sample = ProportionSample(
            traffic.candidate_bad[r, :k].sum(),
            traffic.candidate_total[r, :k].sum(),
            traffic.stable_bad[r, :k].sum(),
            traffic.stable_total[r, :k].sum(),
        )
        assert compare(metric, sample, 0.95).winner == "candidate"


# --- the strategy, through the engine ---------------------------------------------------------------


def test_a_clear_winner_is_promoted_with_its_evidence():
    # ProportionSample "bad" = wrong answers: candidate 90 % accurate, stable 80 %
    state = run(ab_spec(), FakeEdge(source=proportions(0.10, 0.20, 10)))
    assert state.phase == Phase.PROMOTED and state.reason == Reason.CANDIDATE_WON
    assert "always-valid" in state.message and "candidate - stable in [+" in state.message
    exp = state.progress.experiment
    assert exp.winner == "candidate" and exp.lower > 0 and exp.upper < 0.2


def test_a_lead_that_is_not_significant_picks_no_winner_and_keeps_stable():
    # 95 % against 94 %: the candidate leads all along, but 1 point is not proven in 60 s
    state = run(ab_spec(maxDuration="60s"), FakeEdge(source=proportions(0.05, 0.06, 10)))
    assert state.phase == Phase.ROLLED_BACK and state.reason == Reason.EXPERIMENT_INCONCLUSIVE
    assert "no significant difference at 95%" in state.message and "stable kept" in state.message
    assert state.progress.experiment.leader == "candidate" and state.progress.experiment.winner is None
    assert Reason.CANDIDATE_WON not in reasons(state)


def test_on_inconclusive_can_promote_the_candidate():
    spec = ab_spec(maxDuration="60s", onInconclusive="promote-candidate")
    state = run(spec, FakeEdge(source=proportions(0.05, 0.05, 10)))
    assert state.phase == Phase.PROMOTED and state.reason == Reason.EXPERIMENT_INCONCLUSIVE
    assert "no significant difference" in state.message and "promote-candidate" in state.message


def test_max_samples_ends_the_experiment_before_max_duration():
    state = run(ab_spec(maxSamples=400), FakeEdge(source=proportions(0.05, 0.05, 10)))
    started = next(e.at for e in state.events if e.reason == Reason.ANALYSIS_STARTED)
    assert state.reason == Reason.EXPERIMENT_INCONCLUSIVE and "maxSamples 400" in state.message
    assert state.finished_at - started < 60  # 400 samples at 10/s, far from the 600 s maxDuration


def test_a_higher_confidence_needs_more_evidence():
    source = proportions(0.10, 0.16, 10)
    at = {}
    for confidence in (0.9, 0.999):
        state = run(ab_spec(confidence=confidence), FakeEdge(source=source))
        assert state.reason == Reason.CANDIDATE_WON
        at[confidence] = state.progress.experiment.samples
    assert at[0.999] > at[0.9]


def test_latency_ab_compares_mean_log_latency_lower_is_better():
    metric = MetricSpec.model_validate(
        {"name": "latency", "template": "latency-p99", "threshold": {"max": 1}, "judge": {"minEffect": 0.1}}
    )
    bounds = (*LATENCY_BUCKETS, math.inf)
    fast = tuple(100.0 if b == 0.01 else 20.0 if b in (0.0075, 0.015) else 0.0 for b in bounds)
    slow = tuple(100.0 if b == 0.025 else 20.0 if b in (0.015, 0.05) else 0.0 for b in bounds)
    cmp = compare(metric, HistogramSample(bounds, fast, slow), 0.95)
    assert cmp.winner == "candidate" and cmp.upper < 0
    assert compare(metric, HistogramSample(bounds, fast, fast), 0.95).winner is None
    assert compare(metric, HistogramSample(bounds, fast, slow)).winner is None  # no test asked for


# --- the spec ---------------------------------------------------------------------------------------


def test_spec_defaults_and_wire_names():
    ab = ab_spec().strategy.ab_test
    assert ab.confidence == 0.95 and ab.max_samples is None and ab.on_inconclusive == "keep-stable"
    wire = ab_spec(confidence=0.99, maxSamples=5000).strategy.ab_test.model_dump(by_alias=True)
    assert (
        wire["confidence"] == 0.99 and wire["maxSamples"] == 5000 and wire["onInconclusive"] == "keep-stable"
    )


@pytest.mark.parametrize(
    "ab, message",
    [
        ({"maxSamples": 100}, "maxSamples (100) is below minSamples (300)"),
        ({"confidence": 1.0}, "confidence"),
        ({"onInconclusive": "coin-flip"}, "onInconclusive"),
    ],
)
def test_spec_rejects_impossible_settings(ab, message):
    with pytest.raises(SpecError) as err:
        ab_spec(**ab)
    assert message in str(err.value)
