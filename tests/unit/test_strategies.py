"""Blue/green, shadow and A/B rollouts end to end through the engine (fake clock, real judges),
and the strategy registry."""

from __future__ import annotations

import pytest

from rollout.actions import KeepWarm, Outcome, PreviewTraffic
from rollout.errors import UnknownProviderError
from rollout.model import Phase, Reason
from rollout.routers.base import Routes
from rollout.strategies import STRATEGIES, get_planner
from rollout.strategies.bluegreen import preview_routes
from tests.unit.enginekit import (
    ERROR_RATE,
    ERROR_RATE_TEMPLATE,
    FakeEdge,
    make_spec,
    proportions,
    reasons,
    run,
    value,
)

BLUE_GREEN = {"blueGreen": {"previewDuration": "10s", "postPromotionDuration": "10s", "scaleDownDelay": "5s"}}


# --- blue/green ----------------------------------------------------------------------------------


def test_blue_green_previews_switches_atomically_and_retires_the_old_version_after_the_delay():
    spec = make_spec(BLUE_GREEN, [ERROR_RATE])
    edge = FakeEdge()
    transitions = []
    state = run(spec, edge, transitions=transitions)
    assert state.phase == Phase.PROMOTED
    assert edge.weights == [0, 100]  # one atomic switch: never a mix of versions
    # before: users on stable; a mirror and preview requests reach the candidate
    assert edge.route_log[0] == preview_routes(100)
    assert edge.route_log[0].match[0].header == "X-Rollout-Preview"
    # the edge was asked for preview traffic during the preview, and only then
    preview = [t for t in transitions if t.of(PreviewTraffic)]
    assert preview and preview[0].of(PreviewTraffic)[0] == PreviewTraffic("X-Rollout-Preview", "1")
    assert all(t.state.progress.step_index == 0 for t in preview)
    assert not transitions[-1].of(PreviewTraffic)
    # no user traffic before the preview analysis passed
    switched = next(e for e in state.events if e.reason == Reason.SWITCHED)
    preview_measurements = [t for t, _, _ in edge.measured if t < switched.at]
    assert preview_measurements, "the preview analysis ran before the switch"
    # the old version was kept warm for scaleDownDelay after the post-promotion analysis
    warm = [a for t in transitions for a in t.actions if isinstance(a, KeepWarm)]
    assert warm and warm[0].role == "stable"
    assert state.finished_at >= warm[0].until
    assert Reason.SCALE_DOWN_DELAY in reasons(state)
    assert not edge.stable_running and edge.finalized[-1].new_stable == "iris:v2"


def test_blue_green_preview_failure_rolls_back_without_ever_switching():
    spec = make_spec(BLUE_GREEN, [ERROR_RATE])
    edge = FakeEdge(source=value(0.4))
    state = run(spec, edge)
    assert state.phase == Phase.ROLLED_BACK and state.reason == Reason.ANALYSIS_FAILED
    assert edge.weights == [0, 0]  # the candidate never received a single user request
    assert edge.route_log == [preview_routes(100), Routes()]
    assert Reason.SWITCHED not in reasons(state) and Reason.SWITCHED_BACK not in reasons(state)


def test_blue_green_failure_after_the_switch_switches_back_instantly():
    spec = make_spec(BLUE_GREEN, [ERROR_RATE])
    edge = FakeEdge()
    state = run(spec, edge, until=lambda s: s.progress.switched_at is not None)
    switched_at = edge.now
    edge.source = value(0.4)
    state = run(spec, edge, state)
    assert state.phase == Phase.ROLLED_BACK and state.reason == Reason.ANALYSIS_FAILED
    assert edge.weights == [0, 100, 0]  # all back to stable in one change
    assert Reason.SWITCHED_BACK in reasons(state)
    assert edge.stable_running  # stable had been kept warm, so it served at once
    # failureLimit 1: two failed post-promotion measurements, 5 s apart, then the switch back
    assert state.finished_at - switched_at <= 12


def test_blue_green_without_auto_promote_waits_for_promote():
    spec = make_spec({"blueGreen": {**BLUE_GREEN["blueGreen"], "autoPromote": False}}, [ERROR_RATE])
    edge = FakeEdge()
    state = run(spec, edge, until=lambda s: s.phase == Phase.PAUSED)
    assert state.reason == Reason.WAITING_FOR_PROMOTION
    state = run(spec, edge, state, until=lambda s: edge.now > 200)
    assert state.phase == Phase.PAUSED and edge.weights == [0]
    edge.command("promote")
    state = run(spec, edge, state)
    assert state.phase == Phase.PROMOTED and edge.weights == [0, 100]


def test_blue_green_abort_during_the_scale_down_delay_switches_back():
    spec = make_spec({"blueGreen": {**BLUE_GREEN["blueGreen"], "scaleDownDelay": "1m"}}, [ERROR_RATE])
    edge = FakeEdge()
    state = run(spec, edge, until=lambda s: s.progress.warm_until is not None)
    edge.command("abort")
    state = run(spec, edge, state)
    assert state.phase == Phase.ABORTED and edge.weights == [0, 100, 0] and edge.stable_running


# --- shadow --------------------------------------------------------------------------------------


def test_shadow_never_sends_user_traffic_to_the_candidate():
    spec = make_spec({"shadow": {"mirrorPercent": 30, "duration": "20s"}}, [ERROR_RATE])
    edge = FakeEdge()
    transitions = []
    state = run(spec, edge, transitions=transitions)
    assert state.phase == Phase.SUCCEEDED and state.reason == Reason.SHADOW_PASSED
    assert all(r.candidate_weight == 0 for r in edge.route_log)
    assert edge.route_log[0] == Routes(candidate_weight=0, mirror_percent=30)
    assert edge.routes == Routes()  # mirror removed at the end
    assert edge.finalized[-1].outcome == Outcome.SUCCEEDED and edge.stopped[-1] == "candidate"
    assert edge.stable_running and state.succeeded
    assert state.finished_at - next(e.at for e in state.events if e.reason == Reason.ANALYSIS_STARTED) >= 20


def test_shadow_promotes_on_success_when_asked():
    spec = make_spec({"shadow": {"duration": "10s", "promoteOnSuccess": True}}, [ERROR_RATE])
    edge = FakeEdge()
    state = run(spec, edge)
    assert state.phase == Phase.PROMOTED and edge.weights == [0, 100]
    assert edge.route_log[0].mirror_percent == 100


def test_shadow_failure_rolls_back():
    spec = make_spec({"shadow": {"duration": "60s"}}, [ERROR_RATE])
    edge = FakeEdge(source=value(0.2))
    state = run(spec, edge)
    assert state.phase == Phase.ROLLED_BACK and state.reason == Reason.ANALYSIS_FAILED
    assert all(r.candidate_weight == 0 for r in edge.route_log) and edge.routes == Routes()


# --- A/B -----------------------------------------------------------------------------------------


def ab_spec(direction: str = "lower", **ab):
    metric = {**ERROR_RATE_TEMPLATE, "direction": direction, "threshold": {"max": 0.5}}
    if direction == "higher":
        metric = {
            "name": "accuracy",
            "template": "accuracy",
            "direction": "higher",
            "threshold": {"min": 0.5},
        }
    strategy = {"abTest": {"weight": 50, "metric": metric["name"], "minSamples": 300, **ab}}
    return make_spec(strategy, [metric])


def test_ab_promotes_the_candidate_when_it_wins():
    edge = FakeEdge(source=proportions(0.01, 0.04, 10))
    state = run(ab_spec(sticky={"header": "x-user"}), edge)
    assert state.phase == Phase.PROMOTED and state.reason == Reason.CANDIDATE_WON
    assert edge.route_log[0].candidate_weight == 50 and edge.route_log[0].sticky.header == "x-user"
    exp = state.progress.experiment
    assert exp.leader == "candidate" and exp.samples >= 300
    assert exp.candidate_value == pytest.approx(0.01) and exp.stable_value == pytest.approx(0.04)


def test_ab_rolls_back_when_stable_wins():
    edge = FakeEdge(source=proportions(0.04, 0.01, 10))
    state = run(ab_spec(), edge)
    assert state.phase == Phase.ROLLED_BACK and state.reason == Reason.STABLE_WON
    assert state.message.startswith("stable won")
    assert edge.weights == [50, 0]


def test_ab_direction_higher_is_better_picks_the_more_accurate_version():
    # ProportionSample "bad" = wrong answers; accuracy = 1 - bad rate, higher is better
    edge = FakeEdge(source=proportions(0.05, 0.10, 10))
    state = run(ab_spec("higher"), edge)
    assert state.phase == Phase.PROMOTED and state.reason == Reason.CANDIDATE_WON
    assert state.progress.experiment.candidate_value == pytest.approx(0.95)
    edge = FakeEdge(source=proportions(0.10, 0.05, 10))
    state = run(ab_spec("higher"), edge)
    assert state.phase == Phase.ROLLED_BACK and state.reason == Reason.STABLE_WON


def test_ab_waits_for_min_samples_before_deciding():
    edge = FakeEdge(source=proportions(0.01, 0.04, 10))  # 10 requests per version per second
    state = run(ab_spec(), edge)
    started = next(e.at for e in state.events if e.reason == Reason.ANALYSIS_STARTED)
    assert state.finished_at - started >= 300 / 10 - 1  # not before 300 samples per version
    assert Reason.EXPERIMENT_UPDATED in reasons(state)
    # the deciding metric is measured over everything since the experiment started
    windows = [w for _, m, w in edge.measured if m == "error-rate"]
    assert windows == sorted(windows) and windows[-1] >= 29


def test_ab_without_enough_samples_ends_inconclusive_at_max_duration():
    edge = FakeEdge(source=proportions(0.01, 0.04, 0.5))
    state = run(ab_spec(maxDuration="60s"), edge)
    assert state.phase == Phase.ROLLED_BACK and state.reason == Reason.EXPERIMENT_INCONCLUSIVE
    assert "of 300 samples" in state.message


def test_ab_header_match_routes_to_the_candidate():
    spec = ab_spec(match=[{"header": "x-beta", "value": "1"}])
    edge = FakeEdge(source=proportions(0.01, 0.04, 10))
    run(spec, edge)
    assert edge.route_log[0].match[0].header == "x-beta"


# --- registry ------------------------------------------------------------------------------------


def test_every_strategy_of_the_spec_has_a_planner():
    for name in ("canary", "blue_green", "shadow", "ab_test"):
        assert get_planner(name).name == name
    assert set(STRATEGIES) == {"canary", "blue_green", "shadow", "ab_test"}


def test_an_unknown_strategy_is_an_error_not_a_fallback():
    with pytest.raises(UnknownProviderError, match="unknown rollout strategy 'rolling'"):
        get_planner("rolling")


@pytest.mark.parametrize(
    "spec, source",
    [
        (make_spec(BLUE_GREEN, [ERROR_RATE]), value(0.01)),
        (make_spec(BLUE_GREEN, [ERROR_RATE]), value(0.4)),
        (make_spec({"shadow": {"duration": "10s"}}, [ERROR_RATE]), value(0.01)),
        (ab_spec(), proportions(0.01, 0.04, 10)),
        (make_spec({"canary": {"stepWeight": 25, "stepInterval": "3s"}}, [ERROR_RATE]), value(0.01)),
    ],
    ids=["bg-good", "bg-bad", "shadow", "ab", "canary"],
)
def test_no_step_mutates_its_input(spec, source):
    from rollout.engine import new_rollout, step

    edge = FakeEdge(source=source)
    edge.command("pause", "p")
    state = new_rollout(spec)
    for _ in range(1000):
        before = state.model_dump()
        if edge.now == 20:
            edge.command("resume", "r")
        t = step(spec, state, edge.observe(), edge.now)
        assert state.model_dump() == before
        edge.execute(t)
        state = t.state
        if state.done:
            break
        edge.now += 1
    assert state.done


def test_ab_on_accuracy_without_a_direction_picks_the_more_accurate_version():
    """direction left out defaulted to lower for every metric: an A/B test on accuracy promoted
    the LESS accurate version. Now the template's way applies (accuracy: higher is better)."""
    metric = {"name": "accuracy", "template": "accuracy", "threshold": {"min": 0.5}}
    strategy = {"abTest": {"weight": 50, "metric": "accuracy", "minSamples": 300}}
    edge = FakeEdge(source=proportions(0.05, 0.10, 10))  # candidate 95 % right, stable 90 %
    state = run(make_spec(strategy, [metric]), edge)
    assert state.phase == Phase.PROMOTED and state.reason == Reason.CANDIDATE_WON
    edge = FakeEdge(source=proportions(0.10, 0.05, 10))
    assert run(make_spec(strategy, [metric]), edge).phase == Phase.ROLLED_BACK
