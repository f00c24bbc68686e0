"""A rollout that cannot make progress ends: ``progressDeadline`` and the edges' ``hold_on_error``.

With no traffic at all every measurement is Inconclusive: the rollout holds, then rolls back at
the deadline (reason ProgressDeadlineExceeded) instead of waiting forever. A human's pause does
not count against it. An edge that fails inside one reconcile holds the rollout (Paused,
ReconcileError) with one event per distinct error, and the next clean step progresses again.
"""

from __future__ import annotations

import pytest

from rollout.actions import Observations
from rollout.analysis.base import ProportionSample
from rollout.engine import hold_on_error, new_rollout, step
from rollout.errors import SpecError
from rollout.model import Phase, Reason
from rollout.spec import RolloutSpec, parse_rollout
from tests.unit.enginekit import ERROR_RATE_TEMPLATE, FakeEdge, make_spec, reasons, run, value

CANARY = {"canary": {"steps": [{"setWeight": 10}, {"analysis": {"intervals": 2}}, {"setWeight": 100}]}}


def no_traffic(_m: str, _t: float, _r: object) -> ProportionSample:
    return ProportionSample(0.0, 0.0, 0.0, 0.0)


def with_deadline(deadline: str) -> RolloutSpec:
    """The canary with ``progressDeadline: <deadline>``, read as a user's YAML would be."""
    doc = make_spec(CANARY, [ERROR_RATE_TEMPLATE], interval="5s").model_dump(
        by_alias=True, mode="json", exclude_unset=True
    )
    doc["progressDeadline"] = deadline
    wire = {"apiVersion": "bento-rollout.io/v1alpha1", "kind": "ModelRollout", "metadata": {"name": "x"}}
    return parse_rollout({**wire, "spec": doc}).spec


def test_the_default_deadline_is_ten_minutes_like_flagger_and_argo() -> None:
    assert make_spec(CANARY).progress_deadline == 600.0


def test_no_traffic_ends_in_a_rollback_at_the_progress_deadline_not_in_an_endless_hold() -> None:
    spec = with_deadline("60s")
    state = run(spec, FakeEdge(source=no_traffic), max_steps=500)
    assert state.phase == Phase.ROLLED_BACK and state.reason == Reason.PROGRESS_DEADLINE
    assert "progressDeadline 1m" in state.message and "Inconclusive" in state.message
    assert state.desired_routes.candidate_weight == 0
    # it held (Inconclusive) for the whole deadline first, at the 10 % step
    assert 60 < state.finished_at - state.started_at < 80
    assert Reason.MEASUREMENT_INCONCLUSIVE in reasons(state)


def test_a_rollout_with_evidence_is_not_cut_short_by_the_deadline() -> None:
    spec = with_deadline("12s")
    state = run(spec, FakeEdge(source=value(0.0)), max_steps=500)
    assert state.phase == Phase.PROMOTED


def test_a_deadline_shorter_than_an_interval_is_refused_one_as_long_survives_an_inconclusive() -> None:
    """Shorter, one Inconclusive measurement (the first window after a step often has no requests
    yet) would roll back before the next measurement is taken."""
    with pytest.raises(
        SpecError, match=r"spec.progressDeadline: 4s is shorter than analysis.interval \(5s\)"
    ):
        with_deadline("4s")
    answers = iter([ProportionSample(0.0, 0.0, 0.0, 0.0)])

    def one_empty_window(_m: str, _t: float, _r: object) -> ProportionSample:
        return next(answers, ProportionSample(0.0, 1000.0, 0.0, 1000.0))

    state = run(with_deadline("5s"), FakeEdge(source=one_empty_window), max_steps=500)
    assert state.phase == Phase.PROMOTED and Reason.MEASUREMENT_INCONCLUSIVE in reasons(state)


def test_zero_means_no_deadline() -> None:
    spec = with_deadline("0s")
    edge = FakeEdge(source=no_traffic)
    state = run(spec, edge, max_steps=5000, until=lambda s: edge.now >= 3000)
    assert not state.done and state.desired_routes.candidate_weight == 10


def test_a_candidate_that_never_becomes_ready_is_rolled_back_at_the_deadline() -> None:
    spec = with_deadline("30s")
    state = run(spec, FakeEdge(ready_after=10_000), max_steps=500)
    assert state.phase == Phase.ROLLED_BACK and state.reason == Reason.PROGRESS_DEADLINE
    assert "candidate iris:v2 is not ready" in state.message


def test_a_human_pause_does_not_count_against_the_deadline() -> None:
    spec = with_deadline("20s")
    edge = FakeEdge(source=no_traffic)
    edge.command("pause")
    state = run(spec, edge, max_steps=100, until=lambda s: edge.now >= 90)
    assert state.phase == Phase.PAUSED and state.reason == Reason.PAUSED and state.held_since is None
    edge.command("resume", "resume-1")
    state = run(spec, edge, state, max_steps=500)
    assert state.reason == Reason.PROGRESS_DEADLINE
    resumed = next(e.at for e in state.events if e.reason == Reason.RESUMED)
    assert state.finished_at - resumed > 20


def test_a_clock_that_jumps_back_restarts_the_count_and_never_raises() -> None:
    spec = with_deadline("30s")
    edge = FakeEdge(source=no_traffic, now=10_000.0)
    state = run(spec, edge, max_steps=100, until=lambda s: edge.now >= 10_025)
    assert state.held_since is not None and not state.done
    edge.now = 9_000.0  # NTP stepped the clock back by 1000 s
    state = run(spec, edge, state, max_steps=100, until=lambda s: edge.now >= 9_020)
    assert not state.done, "the 25 s held before the jump still counted"
    state = run(spec, edge, state, max_steps=500)
    assert state.reason == Reason.PROGRESS_DEADLINE
    # counted afresh from the jump: not 1000 s later, when the clock is back where the hold began
    assert 9_030 < state.finished_at < 9_040


def test_an_edge_error_holds_the_rollout_with_one_event_and_the_next_clean_step_progresses() -> None:
    spec = make_spec(CANARY, [ERROR_RATE_TEMPLATE], interval="5s")
    edge = FakeEdge()
    state = run(spec, edge, max_steps=20, until=lambda s: s.desired_routes.candidate_weight == 10)
    weight = state.desired_routes.candidate_weight
    t = hold_on_error(state, "IndexError: index 0 is out of bounds", edge.now)
    assert t.changed and t.actions == () and t.state.revision == state.revision + 1
    assert t.state.phase == Phase.PAUSED and t.state.reason == Reason.RECONCILE_ERROR
    assert t.state.desired_routes.candidate_weight == weight
    again = hold_on_error(t.state, "IndexError: index 0 is out of bounds", edge.now + 1)
    assert not again.changed and again.state is t.state, "the same error repeating adds no event"
    other = hold_on_error(t.state, "KeyError: 'data'", edge.now + 2)
    assert other.changed and reasons(other.state).count(Reason.RECONCILE_ERROR) == 2
    edge.now += 3
    after = step(spec, other.state, edge.observe(), edge.now)
    assert after.state.phase == Phase.PROGRESSING and after.state.reason == Reason.RESUMED
    assert "reconciles again" in after.state.events[-1].message
    assert run(spec, edge, after.state).phase == Phase.PROMOTED


def test_an_edge_error_on_a_finished_rollout_keeps_its_outcome() -> None:
    spec = make_spec(CANARY, [ERROR_RATE_TEMPLATE], interval="5s")
    done = run(spec, FakeEdge())
    t = hold_on_error(done, "boom", 1e9)
    assert t.state.phase == Phase.PROMOTED and t.state.events[-1].reason == Reason.RECONCILE_ERROR
    assert new_rollout(spec).held_since is None


def test_errors_are_not_intervals_of_analysis() -> None:
    """Prometheus away for three rounds, then one Successful: an `analysis: {intervals: 2}` step
    still needs a second measurement with data (found by the hung-Prometheus drill)."""
    spec = make_spec(CANARY, [ERROR_RATE_TEMPLATE], interval="5s", errorLimit=10)
    answers = iter(["down", "down", "down"])

    def source(m: str, t: float, r: object) -> object:
        got = next(answers, None)
        return "Prometheus timed out" if got else ProportionSample(0.0, 1000.0, 0.0, 1000.0)

    edge = FakeEdge(source=source)
    state = run(spec, edge, until=lambda s: s.metrics["error-rate"].successful >= 1)
    assert state.desired_routes.candidate_weight == 10, "the step ended on one interval of data"
    state = run(spec, edge, state)
    assert state.phase == Phase.PROMOTED and state.metrics["error-rate"].successful >= 2


def test_a_failure_on_the_first_step_keeps_the_rollout_pending_so_it_still_starts() -> None:
    spec = make_spec(CANARY, [ERROR_RATE_TEMPLATE], interval="5s")
    held = hold_on_error(new_rollout(spec), "RouterError: nginx is down", 0.0).state
    assert held.phase == Phase.PENDING and held.events[-1].reason == Reason.RECONCILE_ERROR
    state = run(spec, FakeEdge(), held)
    assert state.phase == Phase.PROMOTED and state.started_at is not None
    assert Reason.STARTED in reasons(state)


def test_while_acting_keeps_failing_the_rollout_stays_held_without_flapping() -> None:
    """The step goes through but acting on it fails (nginx down): each retry's step must not say
    Resumed and then be held again; it resumes once an iteration went through."""
    spec = make_spec(CANARY, [ERROR_RATE_TEMPLATE], interval="5s")
    edge = FakeEdge()
    state = run(spec, edge, max_steps=20, until=lambda s: s.desired_routes.candidate_weight == 10)
    state = hold_on_error(state, "RouterError: nginx is down", edge.now).state
    for _ in range(5):  # five retries, every one failing after its step
        edge.now += 1
        obs = edge.observe()
        t = step(
            spec, state, Observations(routes=obs.routes, edge_error="RouterError: nginx is down"), edge.now
        )
        assert t.state.phase == Phase.PAUSED and t.state.reason == Reason.RECONCILE_ERROR
        state = hold_on_error(t.state, "RouterError: nginx is down", edge.now).state
    assert reasons(state).count(Reason.RECONCILE_ERROR) == 1 and Reason.RESUMED not in reasons(state)[-5:]
    edge.now += 1
    state = step(spec, state, edge.observe(), edge.now).state  # an iteration went through
    assert state.phase == Phase.PROGRESSING and state.events[-1].reason == Reason.RESUMED
