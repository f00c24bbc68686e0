"""Properties of the engine under arbitrary worlds: random readiness, routes that lag, metrics that
pass, fail, go missing or cannot be measured, user commands at random moments.

Whatever happens, the engine never mutates its input, is deterministic, counts revisions one by
one, never leaves a finished state, never promotes on its own while a metric is bad or cannot be
measured, and never gives a shadow's candidate user traffic.
"""

from __future__ import annotations

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from rollout.actions import Command, CommandKind, MetricResult, Observations, SetRoutes
from rollout.analysis.base import ValueSample
from rollout.engine import new_rollout, step
from rollout.model import Phase
from rollout.routers.base import Routes
from tests.unit.enginekit import ERROR_RATE, make_spec

SPECS = {
    "canary": make_spec(
        {
            "canary": {
                "steps": [
                    {"setWeight": 10},
                    {"pause": {"duration": "5s"}},
                    {"setWeight": 40},
                    {"pause": {}},
                    {"analysis": {"intervals": 2}},
                    {"setWeight": 80},
                ]
            }
        },
        [{**ERROR_RATE, "failureLimit": 2, "inconclusiveLimit": 3}],
        interval="2s",
        errorLimit=3,
    ),
    "blue_green": make_spec(
        {"blueGreen": {"previewDuration": "4s", "postPromotionDuration": "4s", "scaleDownDelay": "3s"}},
        [ERROR_RATE],
        interval="2s",
    ),
    "shadow": make_spec({"shadow": {"mirrorPercent": 20, "duration": "6s"}}, [ERROR_RATE], interval="2s"),
}
CANARY_WEIGHTS = {0, 10, 40, 80, 100}

tick = st.fixed_dictionaries(
    {
        "dt": st.sampled_from([0.5, 1.0, 3.0, 10.0]),
        "ready": st.sampled_from([True, True, True, False, None]),
        "apply_routes": st.sampled_from([True, True, False]),
        "roll": st.integers(0, 9),  # the metric's outcome, through the world's mode
        "command": st.sampled_from([None] * 40 + list(CommandKind)),
        "crash": st.sampled_from([False] * 9 + [True]),
    }
)


# per world, the outcome of a measurement by roll 0..9
MODES = {
    "good": ["good"] * 9 + ["nan"],
    "flaky": ["good"] * 6 + ["bad", "nan", "error", "good"],
    "bad": ["bad"] * 8 + ["good", "error"],
    "down": ["error"] * 8 + ["good", "good"],
}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(SPECS)),
    mode=st.sampled_from(sorted(MODES)),
    ticks=st.lists(tick, min_size=1, max_size=80),
)
def test_engine_invariants_hold_in_any_world(name, mode, ticks):
    spec = SPECS[name]
    state = new_rollout(spec)
    saved = state  # what a store would hold
    applied = Routes()
    results: list[MetricResult] = []
    now = 0.0
    user_promoted = False
    for i, w in enumerate(ticks):
        commands = (Command(f"c{i}", w["command"]),) if w["command"] else ()
        obs = Observations(
            candidate_ready=w["ready"], routes=applied, metrics=tuple(results), commands=commands
        )
        before = state.model_dump()
        t = step(spec, state, obs, now)
        again = step(spec, state, obs, now)
        assert state.model_dump() == before, "step mutated its input"
        assert t.state.model_dump() == again.state.model_dump() and t.actions == again.actions
        assert t.state.revision == state.revision + (1 if t.changed else 0)
        if state.done:
            assert t.state.phase == state.phase
        # a user's promote ends the current step whatever its analysis says; in blue/green the
        # promotion follows it a scale-down delay later, and is still the user's, not the engine's
        promote = w["command"] in (CommandKind.PROMOTE, CommandKind.PROMOTE_FULL)
        user_promoted = promote or (name == "blue_green" and user_promoted)
        if t.state.phase == Phase.PROMOTED and not state.done and not user_promoted:
            bad = {m: s.latest for m, s in t.state.metrics.items() if s.latest not in (None, "Successful")}
            assert not bad, f"promoted on its own with {bad}"
        if name == "shadow" and not t.state.done:
            assert t.state.desired_routes.candidate_weight == 0
        if name == "canary":
            assert t.state.desired_routes.candidate_weight in CANARY_WEIGHTS
        if t.changed:
            saved = t.state
        if w["crash"]:  # the process dies before acting; a new one starts from what was saved
            state, results = saved, []
            now += w["dt"]
            continue
        results = []
        for a in t.actions:
            if isinstance(a, SetRoutes) and w["apply_routes"]:
                applied = a.routes
            elif type(a).__name__ == "Finalize":
                applied = a.routes
            elif type(a).__name__ == "Measure":
                outcome = MODES[mode][w["roll"]]
                if outcome == "error":
                    results.append(MetricResult(a.metric, at=now, error="prometheus unreachable"))
                else:
                    v = {"good": 0.01, "bad": 0.5, "nan": float("nan")}[outcome]
                    results.append(MetricResult(a.metric, at=now, sample=ValueSample(v)))
        state = t.state
        now += w["dt"]
    event(f"{name} ended {state.phase.value}")
