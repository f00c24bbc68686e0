"""No verdict without a live baseline: while stable does not serve, the rollout holds.

Stable killed at a 10 % canary (as an OOM kill does): the edge reports ``stable_ready=False``. The
engine holds (Paused, StableUnavailable): no step completes, weights stay, comparisons with stable
are Inconclusive (their stable side is data from before it died), the step's timer stops. When it
serves again the rollout resumes by itself; if it never does, progressDeadline rolls it back.
"""

from __future__ import annotations

from rollout.actions import Observations
from rollout.analysis.base import ProportionSample
from rollout.engine import new_rollout, step
from rollout.model import Phase, Reason
from tests.unit.enginekit import ERROR_RATE_TEMPLATE, FakeEdge, make_spec, reasons, run

CANARY = {"canary": {"steps": [{"setWeight": 10}, {"analysis": {"intervals": 2}}, {"setWeight": 100}]}}
COMPARATIVE = {
    "name": "errors-vs-stable",
    "template": "error-rate",
    "judge": {"kind": "comparative", "minEffect": 0.05, "minSamples": 10},
}


class StableEdge(FakeEdge):
    """The fake edge, with stable's readiness reported every step."""

    stable_up: bool = True

    def observe(self) -> Observations:
        obs = super().observe()
        return Observations(
            candidate_ready=obs.candidate_ready,
            stable_ready=self.stable_up,
            routes=obs.routes,
            metrics=obs.metrics,
            commands=obs.commands,
        )


def good(_m: str, t: float, _r: object) -> ProportionSample:
    return ProportionSample(0.0, 50.0 * t, 0.0, 50.0 * t)


def test_a_dead_stable_holds_the_rollout_and_nothing_is_judged_against_it() -> None:
    spec = make_spec(CANARY, [COMPARATIVE], interval="5s")
    edge = StableEdge(source=good)
    state = run(spec, edge, max_steps=50, until=lambda s: s.analysis_started_at is not None)
    edge.stable_up = False
    state = run(spec, edge, state, max_steps=200, until=lambda s: edge.now >= 150)
    assert state.phase == Phase.PAUSED and state.reason == Reason.STABLE_UNAVAILABLE
    assert state.desired_routes.candidate_weight == 10, "a step completed while stable was down"
    last = state.metrics["errors-vs-stable"].measurements[-1]
    assert last.verdict == "Inconclusive" and "no baseline" in last.message
    assert reasons(state).count(Reason.STABLE_UNAVAILABLE) == 1
    edge.stable_up = True
    state = run(spec, edge, state)
    assert state.phase == Phase.PROMOTED
    assert Reason.STABLE_RECOVERED in reasons(state)


def test_a_stable_that_never_comes_back_ends_at_the_progress_deadline() -> None:
    spec = make_spec(CANARY, [COMPARATIVE], interval="5s").model_copy(update={"progress_deadline": 60.0})
    edge = StableEdge(source=good)
    state = run(spec, edge, max_steps=50, until=lambda s: s.desired_routes.candidate_weight == 10)
    edge.stable_up = False
    state = run(spec, edge, state, max_steps=200)
    assert state.phase == Phase.ROLLED_BACK and state.reason == Reason.PROGRESS_DEADLINE
    assert "stable iris:v1 is not serving" in state.message


def test_the_edges_notices_become_events() -> None:
    spec = make_spec(CANARY, [ERROR_RATE_TEMPLATE])
    t = step(spec, new_rollout(spec), Observations(notices=("restarted stable iris-v1 (exit -9)",)), 0.0)
    assert [e.message for e in t.state.events if e.reason == Reason.RESTARTED] == [
        "restarted stable iris-v1 (exit -9)"
    ]


def test_after_stable_is_back_no_window_reaches_back_into_the_outage() -> None:
    """While stable was down the candidate took its share (slower, busier): the first measurement
    after recovery is a full window later, so it compares only data from after the outage."""
    spec = make_spec(CANARY, [COMPARATIVE], interval="5s", window="20s")
    edge = StableEdge(source=good)
    state = run(spec, edge, max_steps=50, until=lambda s: s.analysis_started_at is not None)
    edge.stable_up = False
    state = run(spec, edge, state, max_steps=200, until=lambda s: edge.now >= 60)
    edge.stable_up = True
    back = edge.now
    state = run(spec, edge, state, max_steps=3, until=lambda s: s.stable_down_since is None)
    assert state.analysis_started_at == back
    state = run(spec, edge, state)
    after = [t for t, name, _ in edge.measured if name == "errors-vs-stable" and t >= back]
    assert after and after[0] >= back + 20, "a window reached back into the outage"
    assert state.phase == Phase.PROMOTED


def test_the_steps_timer_stops_while_stable_is_down() -> None:
    """A 30 s pause with stable down for 60 s of it still pauses 30 s of serving stable."""
    spec = make_spec(
        {"canary": {"steps": [{"setWeight": 10}, {"pause": {"duration": "30s"}}, {"setWeight": 100}]}}
    )
    edge = StableEdge()
    state = run(spec, edge, max_steps=50, until=lambda s: s.progress.step_name.startswith("pause"))
    paused_at = edge.now
    state = run(spec, edge, state, max_steps=50, until=lambda s: edge.now >= paused_at + 10)
    edge.stable_up = False
    state = run(spec, edge, state, max_steps=100, until=lambda s: edge.now >= paused_at + 70)
    edge.stable_up = True
    state = run(spec, edge, state, max_steps=50, until=lambda s: edge.now >= paused_at + 85)
    assert state.progress.step_name.startswith("pause"), "the outage counted as pause time"
    state = run(spec, edge, state)
    assert state.phase == Phase.PROMOTED
    assert paused_at + 90 <= next(
        e.at for e in state.events if e.reason == Reason.STEP_STARTED and e.at > paused_at
    )
