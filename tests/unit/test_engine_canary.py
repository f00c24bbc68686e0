"""Canary rollouts driven end to end through the engine with a fake clock and synthetic metrics.

The judges are the real ones (rollout.analysis.registry); only the world (router, backends,
Prometheus answers) is simulated by tests/unit/enginekit.py.
"""

from __future__ import annotations

import pytest

from rollout.actions import EnsureBackend, Finalize, MetricResult, Observations, Outcome, SetRoutes
from rollout.analysis.base import ValueSample
from rollout.engine import new_rollout, step
from rollout.model import Phase, Reason
from tests.unit.enginekit import ERROR_RATE, FakeEdge, errors, make_spec, reasons, run, value

STEPS = {
    "canary": {
        "steps": [
            {"setWeight": 10},
            {"pause": {"duration": "10s"}},
            {"setWeight": 50},
            {"analysis": {"duration": "10s"}},
            {"setWeight": 100},
        ]
    }
}


def started_steps(state) -> list[str]:
    return [e.message for e in state.events if e.reason == Reason.STEP_STARTED]


def test_good_canary_is_promoted_step_by_step():
    spec = make_spec(STEPS, [ERROR_RATE])
    edge = FakeEdge(source=value(0.01))
    state = run(spec, edge)
    assert state.phase == Phase.PROMOTED and state.succeeded
    assert edge.weights == [10, 50, 100]
    assert started_steps(state) == [
        "step 1/5: setWeight 10",
        "step 2/5: pause 10s",
        "step 3/5: setWeight 50",
        "step 4/5: analysis 10s",
        "step 5/5: setWeight 100",
        "final: promote",
    ]
    assert reasons(state)[:3] == [Reason.STARTED, Reason.CANDIDATE_READY, Reason.STEP_STARTED]
    assert reasons(state)[-1] == Reason.PROMOTED
    assert edge.finalized == [Finalize(Outcome.PROMOTED, edge.routes, stop="stable", new_stable="iris:v2")]
    assert not edge.stable_running
    # the pause and the analysis step each took their 10 s (no sleeping: the clock is fake)
    assert state.finished_at - state.started_at >= 20
    statuses = state.metrics["errors"]
    assert statuses.count >= 3 and statuses.failed == 0 and statuses.latest == "Successful"


def test_generated_steps_follow_step_weight_up_to_max_weight():
    spec = make_spec({"canary": {"stepWeight": 20, "maxWeight": 50, "stepInterval": "5s"}}, [ERROR_RATE])
    edge = FakeEdge()
    state = run(spec, edge)
    assert state.phase == Phase.PROMOTED
    assert edge.weights == [20, 40, 50, 100]
    assert [m for m in started_steps(state) if "analysis" in m] == [
        "step 2/6: analysis 5s",
        "step 4/6: analysis 5s",
        "step 6/6: analysis 5s",
    ]


def test_sticky_key_is_part_of_the_routes():
    spec = make_spec({"canary": {"stepWeight": 50, "stepInterval": "1s", "sticky": {"cookie": "uid"}}})
    edge = FakeEdge()
    run(spec, edge)
    assert edge.route_log[0].candidate_weight == 50 and edge.route_log[0].sticky.cookie == "uid"


def test_bad_canary_rolls_back_after_failure_limit():
    spec = make_spec(STEPS, [{**ERROR_RATE, "failureLimit": 2}])
    edge = FakeEdge(source=value(0.30))
    state = run(spec, edge)
    assert state.phase == Phase.ROLLED_BACK and not state.succeeded
    assert state.reason == Reason.ANALYSIS_FAILED
    assert "failed 3 times in a row (failureLimit 2)" in state.message
    assert "0.3 is above the maximum 0.05" in state.message
    # the bad version never got more than the first step's 10 %, then everything went back to stable
    assert edge.weights == [10, 0]
    assert reasons(state).count(Reason.MEASUREMENT_FAILED) == 3
    assert reasons(state)[-2:] == [Reason.ANALYSIS_FAILED, Reason.ROLLED_BACK]
    assert edge.finalized[-1].outcome == Outcome.ROLLED_BACK and edge.finalized[-1].stop == "candidate"
    assert edge.stable_running


def test_failure_limit_zero_rolls_back_on_the_first_failure():
    spec = make_spec(STEPS, [{**ERROR_RATE, "failureLimit": 0}])
    state = run(spec, FakeEdge(source=value(0.30)))
    assert state.phase == Phase.ROLLED_BACK and state.metrics["errors"].count == 1


def test_a_failure_under_the_limit_holds_then_recovers():
    seen = []

    def flaky(_m, t, _r):
        seen.append(t)
        return value(0.30 if len(seen) == 2 else 0.01)(_m, t, _r)

    spec = make_spec(STEPS, [{**ERROR_RATE, "failureLimit": 1}])
    state = run(spec, FakeEdge(source=flaky))
    assert state.phase == Phase.PROMOTED
    assert Reason.MEASUREMENT_FAILED in reasons(state) and Reason.ANALYSIS_RECOVERED in reasons(state)


def test_prometheus_errors_hold_weights_never_promote_then_roll_back():
    spec = make_spec(STEPS, [ERROR_RATE], errorLimit=4)
    edge = FakeEdge(source=errors())
    transitions = []
    state = run(spec, edge, transitions=transitions)
    assert state.phase == Phase.ROLLED_BACK
    assert state.reason == Reason.METRICS_UNAVAILABLE
    assert "could not be measured 5 times in a row (errorLimit 4)" in state.message
    assert "connection refused" in state.message
    # weights were held at the first step while Prometheus was down (never 50, never promoted)
    assert max(edge.weights) == 10 and edge.weights[-1] == 0
    assert all(t.state.phase != Phase.PROMOTED for t in transitions)
    assert reasons(state).count(Reason.MEASUREMENT_ERROR) == 5


def test_prometheus_outage_pauses_progression_and_resumes_when_it_returns():
    down = (5.0, 40.0)

    def outage(_m, t, _r):
        return "prometheus: connection refused" if down[0] <= t < down[1] else value(0.01)(_m, t, _r)

    spec = make_spec(STEPS, [ERROR_RATE], errorLimit=20)
    edge = FakeEdge(source=outage)
    transitions = []
    state = run(spec, edge, transitions=transitions)
    assert state.phase == Phase.PROMOTED
    # nothing moved while the provider was down: the 10 s pause ended at ~12 s, but the next
    # step only started after Prometheus answered again at 40 s
    weight_50 = next(t for t in transitions if t.routes is not None and t.routes.candidate_weight == 50)
    assert weight_50.state.updated_at >= down[1]
    assert Reason.ANALYSIS_RECOVERED in reasons(state)
    # while it was down the rollout said so: Paused (MetricsUnavailable), then Progressing again
    during = [t.state for t in transitions if down[0] + 1 < t.state.updated_at < down[1]]
    assert during and all(s.phase == Phase.PAUSED and s.reason == Reason.METRICS_UNAVAILABLE for s in during)
    assert "cannot be measured (" in during[-1].message and "7 in a row" in during[-1].message
    assert [r for r in reasons(state) if r in (Reason.METRICS_UNAVAILABLE, Reason.RESUMED)] == [
        Reason.METRICS_UNAVAILABLE,
        Reason.RESUMED,
    ]


def test_pause_until_promoted_waits_for_the_promote_command():
    spec = make_spec(
        {"canary": {"steps": [{"setWeight": 20}, {"pause": {}}, {"setWeight": 60}]}}, [ERROR_RATE]
    )
    edge = FakeEdge()
    state = run(spec, edge, until=lambda s: s.phase == Phase.PAUSED)
    assert state.progress.awaiting_promotion and state.reason == Reason.WAITING_FOR_PROMOTION
    # nothing happens for a long time without the command
    edge.now += 1
    state = run(spec, edge, state, max_steps=300, until=lambda s: edge.now > 250)
    assert state.phase == Phase.PAUSED and edge.weights == [20]
    edge.command("promote", "p1")
    state = run(spec, edge, state)
    assert state.phase == Phase.PROMOTED and edge.weights == [20, 60, 100]
    assert "p1" in state.applied_commands
    assert Reason.PROMOTE_REQUESTED in reasons(state)


def test_abort_routes_everything_to_stable_and_stops_the_candidate():
    spec = make_spec(STEPS, [ERROR_RATE])
    edge = FakeEdge()
    state = run(spec, edge, until=lambda s: s.desired_routes.candidate_weight == 50)
    edge.command("abort", "a1")
    state = run(spec, edge, state)
    assert state.phase == Phase.ABORTED and state.reason == Reason.ABORTED
    assert edge.weights[-1] == 0 and edge.finalized[-1].outcome == Outcome.ABORTED
    assert edge.stopped[-1] == "candidate"


def test_pause_and_resume_hold_the_step_timer():
    spec = make_spec(STEPS, [ERROR_RATE])
    edge = FakeEdge()
    state = run(spec, edge, until=lambda s: s.progress.step_name == "pause 10s")
    edge.command("pause", "u1")
    state = run(spec, edge, state, until=lambda s: s.phase == Phase.PAUSED)
    paused_at = edge.now
    state = run(spec, edge, state, until=lambda s: edge.now >= paused_at + 60)
    assert state.phase == Phase.PAUSED and edge.weights == [10]  # 60 s paused: the 10 s pause did not end
    assert state.metrics["errors"].count >= 10  # analysis kept running while paused
    edge.command("resume", "u2")
    state = run(spec, edge, state, until=lambda s: s.desired_routes.candidate_weight == 50)
    # the pause step had ~9 s left when paused; it ends ~9 s after the resume, not at once
    assert edge.now - (paused_at + 60) >= 7
    state = run(spec, edge, state)
    assert state.phase == Phase.PROMOTED
    assert [r for r in reasons(state) if r in (Reason.PAUSED, Reason.RESUMED)] == [
        Reason.PAUSED,
        Reason.RESUMED,
    ]


def test_failure_while_paused_still_rolls_back():
    spec = make_spec(STEPS, [ERROR_RATE])
    edge = FakeEdge()
    state = run(spec, edge, until=lambda s: s.analysis_started_at is not None)
    edge.command("pause")
    edge.source = value(0.5)
    state = run(spec, edge, state)
    assert state.phase == Phase.ROLLED_BACK and state.reason == Reason.ANALYSIS_FAILED


def test_a_command_is_applied_once():
    spec = make_spec(
        {"canary": {"steps": [{"setWeight": 10}, {"pause": {}}, {"pause": {}}, {"setWeight": 50}]}}
    )
    state = run(spec, edge := FakeEdge(), until=lambda s: s.phase == Phase.PAUSED)
    from rollout.actions import Command, CommandKind

    promote = Command("same-id", CommandKind.PROMOTE)
    t1 = step(
        spec, state, Observations(candidate_ready=True, routes=edge.routes, commands=(promote,)), edge.now + 1
    )
    assert t1.state.progress.step_index == 2 and "same-id" in t1.state.applied_commands
    t2 = step(
        spec,
        t1.state,
        Observations(candidate_ready=True, routes=edge.routes, commands=(promote,)),
        edge.now + 2,
    )
    assert t2.state.progress.step_index == 2  # the re-delivered command did not skip the second pause
    assert t2.state.phase == Phase.PAUSED


def test_promote_full_skips_everything_left():
    spec = make_spec(STEPS, [ERROR_RATE])
    edge = FakeEdge()
    state = run(spec, edge, until=lambda s: s.desired_routes.candidate_weight == 10)
    edge.command("promote-full")
    state = run(spec, edge, state)
    assert state.phase == Phase.PROMOTED and edge.weights == [10, 100]
    assert "remaining steps skipped" in state.message


def test_promote_full_is_refused_while_the_candidate_is_not_ready():
    spec = make_spec(STEPS)
    edge = FakeEdge(ready_after=30)
    edge.command("promote-full")
    state = run(spec, edge, until=lambda s: edge.now > 5)
    assert state.phase == Phase.PROGRESSING and Reason.COMMAND_IGNORED in reasons(state)
    assert edge.weights == []


def test_waits_for_the_candidate_to_be_ready_before_any_traffic():
    spec = make_spec(STEPS)
    edge = FakeEdge(ready_after=20)
    state = run(spec, edge)
    first_weight = next(e for e in state.events if e.reason == Reason.STEP_STARTED)
    assert first_weight.at >= 20 and state.phase == Phase.PROMOTED


def test_candidate_crash_rolls_back():
    spec = make_spec(STEPS)
    state = new_rollout(spec)
    t = step(spec, state, Observations(candidate_ready=True), 0.0)
    t = step(spec, t.state, Observations(candidate_error="exited with code 1: ModuleNotFoundError"), 1.0)
    assert t.state.phase == Phase.ROLLED_BACK and t.state.reason == Reason.CANDIDATE_FAILED
    assert "ModuleNotFoundError" in t.state.message


def test_inconclusive_holds_and_pauses_past_the_inconclusive_limit():
    spec = make_spec(STEPS, [{**ERROR_RATE, "inconclusiveLimit": 2}])
    edge = FakeEdge(source=value(float("nan")))  # no data: the threshold judge says Inconclusive
    state = run(spec, edge, until=lambda s: s.phase == Phase.PAUSED)
    assert state.reason == Reason.INCONCLUSIVE_LIMIT and edge.weights == [10]
    assert "inconclusive 3 times in a row" in state.message
    edge.source = value(0.01)
    edge.command("resume")
    state = run(spec, edge, state)
    assert state.phase == Phase.PROMOTED


def test_start_delay_and_per_metric_interval_decide_when_measurements_are_due():
    fast = {**ERROR_RATE, "name": "fast", "interval": "2s"}
    slow = {**ERROR_RATE, "name": "slow", "interval": "10s"}
    spec = make_spec(STEPS, [fast, slow], startDelay="5s", window="30s")
    edge = FakeEdge()
    state = run(spec, edge)
    started = next(e.at for e in state.events if e.reason == Reason.ANALYSIS_STARTED)
    times = {m: [t for t, name, _ in edge.measured if name == m] for m in ("fast", "slow")}
    assert times["fast"][0] == started + 5 and times["slow"][0] == started + 5
    assert all(b - a == 2 for a, b in zip(times["fast"], times["fast"][1:], strict=False))
    assert all(b - a == 10 for a, b in zip(times["slow"], times["slow"][1:], strict=False))
    assert {w for _, _, w in edge.measured} == {30.0}


def test_step_is_deterministic_and_does_not_mutate_its_input():
    spec = make_spec(STEPS, [ERROR_RATE])
    state = run(spec, FakeEdge(), until=lambda s: s.analysis_started_at is not None)
    before = state.model_dump()
    bad = MetricResult("errors", at=99.0, sample=ValueSample(0.9), elapsed=0.2)
    obs = Observations(candidate_ready=True, routes=state.desired_routes, metrics=(bad,))
    a = step(spec, state, obs, 100.0)
    b = step(spec, state, obs, 100.0)
    assert state.model_dump() == before
    assert a.state.model_dump() == b.state.model_dump() and a.actions == b.actions
    assert a.state.metrics["errors"].latest == "Failed" and state.metrics["errors"].latest is None
    assert a.state.metrics["errors"].next_due == 99.0 + 5
    assert {type(x) for x in a.actions} >= {EnsureBackend, SetRoutes}


def test_nothing_new_means_no_change_and_no_new_revision():
    spec = make_spec(STEPS, [ERROR_RATE], startDelay="1m")
    state = run(spec, edge := FakeEdge(), until=lambda s: s.progress.step_name == "pause 10s")
    t = step(spec, state, Observations(candidate_ready=True, routes=edge.routes), edge.now)
    assert not t.changed and t.state.revision == state.revision and t.events == ()


def test_every_change_bumps_the_revision_and_records_its_events():
    spec = make_spec(STEPS, [ERROR_RATE])
    transitions = []
    run(spec, FakeEdge(), transitions=transitions)
    revisions = [t.state.revision for t in transitions if t.changed]
    assert revisions == list(range(1, len(revisions) + 1))
    for t in transitions:
        assert all(e.revision == t.state.revision for e in t.events)


def test_a_finished_rollout_repeats_its_finalize_and_changes_nothing():
    spec = make_spec(STEPS)
    state = run(spec, FakeEdge())
    t = step(spec, state, Observations(), 1e6)
    assert not t.changed and t.state is state
    assert t.actions == (Finalize(Outcome.PROMOTED, t.routes, stop="stable", new_stable="iris:v2"),)


def test_state_from_another_rollout_is_refused():
    from rollout.errors import StateError

    state = new_rollout(make_spec(STEPS))
    other = make_spec({"shadow": {"duration": "10s"}})
    with pytest.raises(StateError, match="does not match the spec"):
        step(other, state, Observations(), 0.0)


def test_an_analysis_step_before_any_candidate_traffic_is_a_wait():
    spec = make_spec(
        {"canary": {"steps": [{"analysis": {"duration": "5s"}}, {"setWeight": 20}]}}, [ERROR_RATE]
    )
    edge = FakeEdge()
    state = run(spec, edge)
    assert state.phase == Phase.PROMOTED and edge.weights == [20, 100]
    first_weight = [e.at for e in state.events if e.message.endswith("setWeight 20")][0]
    assert first_weight - state.candidate_ready_at >= 5
    assert all(t >= first_weight for t, _, _ in edge.measured)  # nothing measured without traffic


def test_inconclusive_results_widen_the_window_until_there_is_enough_evidence():
    spec = make_spec(STEPS, [ERROR_RATE], window="10s")
    edge = FakeEdge()
    # too few requests in short windows: no data (Inconclusive) unless the window is >= 30 s
    edge.source = lambda m, t, r: value(0.01 if edge.window >= 30 else float("nan"))(m, t, r)
    state = run(spec, edge)
    assert state.phase == Phase.PROMOTED
    windows = [w for _, _, w in edge.measured]
    # 10 s, then wider after each inconclusive result (never reaching back before the analysis
    # started), until 30 s gives an answer
    first_ok = windows.index(30.0)
    assert (
        windows[0] == 10 and windows[:first_ok] == sorted(windows[:first_ok]) and windows[first_ok - 1] < 30
    )
    assert reasons(state).count(Reason.MEASUREMENT_INCONCLUSIVE) >= 2
    assert Reason.ANALYSIS_RECOVERED in reasons(state)
