"""The engine never dies of what the world says: any spec-valid rollout, any observation sequence.

Hypothesis writes ModelRollouts (every strategy, every built-in template, raw queries, every judge
kind) and drives ``engine.step`` with arbitrary observations: metric results of every shape a
provider can return (empty, zero-count, NaN, negative after a counter reset, mismatched lengths,
one version missing; ``tests.unit.samplekit.any_sample``), provider errors, results for metrics
that were not asked for, readiness flapping, routes that lag or were changed behind its back,
duplicated and late user commands, and a clock that jumps forward and backward. Whatever happens:
``step`` never raises; it never promotes by itself while a metric's newest verdict is Failed,
Inconclusive or Error; and it never asks for traffic to move to routes that the state it returns
(and that the edge persists before acting) does not hold. Seeded and bounded, so it runs in the
unit tier in a few seconds.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from rollout.actions import Command, CommandKind, Finalize, Measure, MetricResult, Observations, SetRoutes
from rollout.engine import new_rollout, step
from rollout.errors import SpecError
from rollout.metrics.templates import TEMPLATES
from rollout.model import Phase
from rollout.routers.base import Routes
from rollout.spec import RolloutSpec, parse_rollout
from tests.unit.samplekit import any_sample

durations = st.sampled_from(["0s", "1s", "2s", "5s", "30s", "2m"])
judges = st.one_of(
    st.just({}),
    st.fixed_dictionaries(
        {"kind": st.sampled_from(["threshold", "comparative", "sequential"])},
        optional={
            "minEffect": st.sampled_from([0.01, 0.1, 0.5]),
            "alpha": st.sampled_from([0.01, 0.05]),
            "minSamples": st.sampled_from([1, 10, 100]),
        },
    ),
)


@st.composite
def metric(draw: st.DrawFn, i: int) -> dict[str, Any]:
    m: dict[str, Any] = {"name": f"m{i}"}
    if draw(st.booleans()):
        m["template"] = draw(st.sampled_from(sorted(TEMPLATES)))
    else:
        m["query"] = "sum(rate(model_requests_total[{{window}}]))"
    m["judge"] = draw(judges)
    if m["judge"].get("kind", "threshold") == "threshold" or draw(st.booleans()):
        m["threshold"] = draw(st.sampled_from([{"max": 0.05}, {"min": 0.9}, {"min": 0.0, "max": 1.0}]))
    for key, values in (("failureLimit", [0, 1, 3]), ("inconclusiveLimit", [0, 2])):
        if draw(st.booleans()):
            m[key] = draw(st.sampled_from(values))
    if draw(st.booleans()):
        m["direction"] = draw(st.sampled_from(["higher", "lower"]))
    return m


canary_steps = st.lists(
    st.one_of(
        st.builds(lambda w: {"setWeight": w}, st.sampled_from([0, 5, 10, 50, 100])),
        st.builds(lambda d: {"pause": {"duration": d}}, durations),
        st.just({"pause": {}}),
        st.builds(lambda n: {"analysis": {"intervals": n}}, st.integers(1, 3)),
    ),
    min_size=1,
    max_size=6,
)
strategies = st.one_of(
    st.builds(lambda s: {"canary": {"steps": s}}, canary_steps),
    st.builds(
        lambda w, m: {"canary": {"stepWeight": w, "maxWeight": m, "stepInterval": "3s"}},
        st.sampled_from([10, 25, 50]),
        st.sampled_from([50, 100]),
    ),
    st.builds(
        lambda p, a, mirror: {
            "blueGreen": {
                "previewDuration": p,
                "autoPromote": a,
                "postPromotionDuration": p,
                "scaleDownDelay": "2s",
                "previewMirrorPercent": mirror,
            }
        },
        durations,
        st.booleans(),
        st.sampled_from([0, 50, 100]),
    ),
    st.builds(
        lambda d, p: {"shadow": {"mirrorPercent": 50, "duration": d, "promoteOnSuccess": p}},
        durations,
        st.booleans(),
    ),
    st.just({"abTest": {"weight": 50, "metric": "m0", "minSamples": 10, "maxDuration": "1m"}}),
)


@st.composite
def rollout_spec(draw: st.DrawFn) -> RolloutSpec:
    metrics = [draw(metric(i)) for i in range(draw(st.integers(0, 3)))]
    strategy = draw(strategies)
    if "abTest" in strategy and not metrics:
        metrics = [draw(metric(0))]
    doc = {
        "apiVersion": "bento-rollout.io/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {"name": "fuzz"},
        "spec": {
            "service": "iris",
            "stable": {"model": "iris:v1"},
            "candidate": {"model": "iris:v2"},
            "strategy": strategy,
            "progressDeadline": draw(st.sampled_from(["0s", "20s", "10m"])),
            "analysis": {
                "interval": draw(st.sampled_from(["1s", "2s", "5s"])),
                "errorLimit": draw(st.integers(1, 4)),
                "metrics": metrics,
            },
        },
    }
    try:
        spec = parse_rollout(doc).spec
        new_rollout(spec)  # a metric its judge cannot take is refused before the rollout starts
    except SpecError:
        from hypothesis import assume

        assume(False)
    return spec


ROUTES = st.sampled_from(
    [Routes(), Routes(candidate_weight=30), Routes(candidate_weight=100), Routes(mirror_percent=50)]
)
tick = st.fixed_dictionaries(
    {
        "dt": st.sampled_from([-60.0, -1.0, 0.0, 0.5, 1.0, 1.0, 3.0, 10.0, 120.0]),
        "ready": st.sampled_from([True, True, True, False, None]),
        "stable": st.sampled_from([True, True, True, False, None]),
        "routes": st.sampled_from(["applied", "applied", "lag", "other"]),
        "result": st.sampled_from(["sample", "sample", "sample", "error", "none", "stray"]),
        "command": st.sampled_from([None] * 30 + list(CommandKind) + ["repeat"]),
        "crash": st.sampled_from([False] * 9 + [True]),
    }
)


def user_promoted(commands: tuple[Command, ...]) -> bool:
    return any(c.kind in (CommandKind.PROMOTE, CommandKind.PROMOTE_FULL) for c in commands)


@seed(20261201)
@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(spec=rollout_spec(), ticks=st.lists(tick, min_size=1, max_size=60), data=st.data())
def test_step_never_raises_never_promotes_on_bad_evidence_and_never_moves_unpersisted_traffic(
    spec: RolloutSpec, ticks: list[dict[str, Any]], data: st.DataObject
) -> None:
    state = saved = new_rollout(spec)
    applied, other = Routes(), data.draw(ROUTES)
    results: list[MetricResult] = []
    commands: tuple[Command, ...] = ()
    now = 1_000.0
    promoted_by_user = False
    for i, w in enumerate(ticks):
        if w["command"] == "repeat":
            pass  # the edge re-sends what it has not seen applied yet (and maybe what it has)
        elif w["command"] is not None:
            commands = (Command(f"c{i}", w["command"]),)
        else:
            commands = ()
        routes = {"applied": applied, "lag": Routes(), "other": other}[w["routes"]]
        obs = Observations(
            candidate_ready=w["ready"],
            stable_ready=w["stable"],
            routes=routes,
            metrics=tuple(results),
            commands=commands,
        )
        t = step(spec, state, obs, now)  # must not raise, whatever obs holds

        # never promotes by itself on evidence that is not Successful (a user's promote ends a
        # step whatever it says, and what follows from it - blue/green's scale-down - is theirs)
        sticky = spec.strategy.name == "blue_green" and promoted_by_user
        promoted_by_user = sticky or user_promoted(commands)
        if t.state.phase == Phase.PROMOTED and not state.done and not promoted_by_user:
            bad = {m: s.latest for m, s in t.state.metrics.items() if s.latest not in (None, "Successful")}
            assert not bad, f"promoted on its own with {bad}"
        # traffic only moves to routes the returned (persisted-first) state holds
        for a in t.actions:
            if isinstance(a, SetRoutes):
                assert a.routes == t.state.desired_routes
            if isinstance(a, Finalize):
                assert t.state.done and a.routes == t.state.desired_routes
        if t.state.desired_routes != state.desired_routes:
            assert t.changed, "routes changed without a state to persist"
        assert t.state.revision == state.revision + (1 if t.changed else 0)
        if state.done:
            assert t.state.phase == state.phase
        if t.state.stable_down_since is not None and not t.state.done and not commands:
            assert t.state.phase == Phase.PAUSED, "stable down, yet not held"
            assert t.state.progress.step_index == state.progress.step_index or state.stable_down_since is None

        if t.changed:
            saved = t.state
        if w["crash"]:  # the process dies before acting; a new one starts from what was saved
            state, results = saved, []
            now += w["dt"]
            continue
        results = []
        for a in t.actions:
            if isinstance(a, SetRoutes | Finalize):
                applied = a.routes
            elif isinstance(a, Measure):
                kind = w["result"]
                if kind == "error":
                    results.append(MetricResult(a.metric, at=now, error="Prometheus timed out"))
                elif kind == "sample":
                    results.append(MetricResult(a.metric, at=now, sample=data.draw(any_sample())))
                elif kind == "stray":  # a result for a metric nobody asked for, or a stale one
                    results.append(
                        MetricResult("no-such-metric", at=now - 500, sample=data.draw(any_sample()))
                    )
        state = t.state
        now += w["dt"]
