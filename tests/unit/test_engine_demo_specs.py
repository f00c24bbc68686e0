"""The demo's five rollout specs (rollout/demo/specs/*.yaml) decided by the engine and the real
judges against a synthetic world whose truth is known: each spec must reach the outcome the demo
promises (good canary promoted, poisoned canary rolled back, slow shadow rejected, blue/green
promoted, A/B winner promoted), and for the right reason.

The world turns the routes the engine asked for into expected request counts per version over
the window asked for (40 requests/s, half of them with a feedback label), with the candidate's
true error rate, accuracy, latency and class distribution. Counts are expectations, not random
draws, so every run is the same; the statistics themselves are the judges' real ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pytest

from rollout.analysis.base import CategoricalSample, HistogramSample, ProportionSample
from rollout.metrics.names import LATENCY_BUCKETS
from rollout.model import Phase, Reason
from rollout.routers.base import Routes
from rollout.spec import RolloutSpec, load_rollout
from rollout.strategies.bluegreen import PREVIEW_HEADER
from tests.unit.enginekit import FakeEdge, reasons, run

SPECS = Path(__file__).resolve().parents[2] / "rollout" / "demo" / "specs"
RPS = 40.0  # user requests per second
PREVIEW_RPS = 5.0  # requests carrying the preview header (blue/green), when the router sends them on
FEEDBACK_SHARE = 0.5
CLASSES = ("setosa", "versicolor", "virginica")
BOUNDS = (*LATENCY_BUCKETS, math.inf)


@dataclass(frozen=True)
class Version:
    error_rate: float = 0.0
    accuracy: float = 0.95
    latency_s: float = 0.003  # typical server time; spread over neighbouring buckets
    classes: tuple[float, ...] = (0.33, 0.33, 0.34)

    def latency_counts(self, n: float) -> tuple[float, ...]:
        # a log-normal-ish spread: 60% in the bucket of the typical time, 20% either side
        i = next(k for k, b in enumerate(BOUNDS) if self.latency_s <= b)
        counts = [0.0] * len(BOUNDS)
        for k, share in ((i - 1, 0.2), (i, 0.6), (i + 1, 0.2)):
            counts[min(max(k, 0), len(BOUNDS) - 1)] += share * n
        return tuple(counts)


STABLE = Version()
TRUTH = {
    "iris:v2": Version(accuracy=0.97),
    "iris:poisoned": Version(accuracy=0.55, classes=(0.70, 0.20, 0.10)),
    "iris:slow": Version(latency_s=0.09),
}


def traffic(routes: Routes) -> tuple[float, float]:
    """(candidate, stable) requests per second under these routes."""
    stable = RPS * routes.stable_weight / 100
    candidate = RPS * routes.candidate_weight / 100 + stable * routes.mirror_percent / 100
    if any(m.header == PREVIEW_HEADER for m in routes.match):
        candidate += PREVIEW_RPS
    return candidate, stable


def world(spec: RolloutSpec, edge: FakeEdge):
    cand = TRUTH[spec.candidate.model]
    templates = {m.name: m.template for m in spec.analysis.metrics}

    def source(metric: str, _t: float, routes: Routes):
        rc, rs = traffic(routes)
        nc, ns = rc * edge.window, rs * edge.window
        template = templates[metric]
        if template == "error-rate":
            return ProportionSample(cand.error_rate * nc, nc, STABLE.error_rate * ns, ns)
        if template == "accuracy":
            fc, fs = nc * FEEDBACK_SHARE, ns * FEEDBACK_SHARE
            return ProportionSample((1 - cand.accuracy) * fc, fc, (1 - STABLE.accuracy) * fs, fs)
        if template == "latency-p99":
            return HistogramSample(BOUNDS, cand.latency_counts(nc), STABLE.latency_counts(ns))
        if template == "prediction-shift":
            return CategoricalSample(
                CLASSES, tuple(p * nc for p in cand.classes), tuple(p * ns for p in STABLE.classes)
            )
        raise AssertionError(f"the synthetic world has no template {template!r}")

    return source


def decide(name: str):
    spec = load_rollout(SPECS / f"{name}.yaml").spec
    edge = FakeEdge(ready_after=3)
    edge.source = world(spec, edge)
    state = run(spec, edge, dt=0.5, max_steps=4000)
    return spec, edge, state


def served_by_candidate(edge: FakeEdge) -> int:
    return max((r.candidate_weight for r in edge.route_log), default=0)


@pytest.mark.parametrize("name", ["canary-good", "bluegreen"])
def test_good_candidates_are_promoted(name):
    _, edge, state = decide(name)
    assert state.phase == Phase.PROMOTED, f"{state.reason}: {state.message}"
    assert served_by_candidate(edge) == 100
    assert Reason.MEASUREMENT_FAILED not in reasons(state)


def test_the_poisoned_canary_is_rolled_back_at_its_first_step():
    spec, edge, state = decide("canary-poisoned")
    assert state.phase == Phase.ROLLED_BACK and state.reason == Reason.ANALYSIS_FAILED, state.message
    failed = {e.message.split(":")[0] for e in state.events if e.reason == Reason.MEASUREMENT_FAILED}
    assert failed & {"accuracy", "prediction-shift"}, failed
    first_weight = spec.strategy.canary.steps[0].set_weight
    assert max(edge.weights) == first_weight  # never got past the first step
    started = next(e.at for e in state.events if e.reason == Reason.ANALYSIS_STARTED)
    assert state.finished_at - started < 30


def test_the_slow_shadow_is_rejected_on_latency_and_never_served_a_user():
    _, edge, state = decide("shadow-slow")
    assert state.phase == Phase.ROLLED_BACK and state.reason == Reason.ANALYSIS_FAILED, state.message
    assert "latency-p99" in state.message
    assert served_by_candidate(edge) == 0


def test_the_ab_test_promotes_the_more_accurate_candidate():
    spec, _, state = decide("abtest")
    assert state.phase == Phase.PROMOTED and state.reason == Reason.CANDIDATE_WON, state.message
    exp = state.progress.experiment
    assert exp.leader == "candidate" and exp.samples >= spec.strategy.ab_test.min_samples
