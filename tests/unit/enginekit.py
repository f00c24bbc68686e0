"""A fake edge for the engine's unit tests: a router, a candidate backend and a metric source in
memory, a fake clock, and the edge loop of the engine's contract (persist, then act).

Only the world around the engine is simulated; the engine, the strategies and the judges
(``rollout.analysis.registry``) are the real ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rollout.actions import (
    Command,
    CommandKind,
    EnsureBackend,
    Finalize,
    KeepWarm,
    Measure,
    MetricResult,
    Observations,
    SetRoutes,
    Transition,
)
from rollout.analysis.base import ProportionSample, ValueSample
from rollout.engine import new_rollout, step
from rollout.model import RolloutState
from rollout.routers.base import Routes
from rollout.spec import RolloutSpec, parse_rollout
from rollout.state import StateStore

# metric source: (metric name, time, routes applied now) -> a sample, or a string = provider error
Source = Callable[[str, float, Routes], Any]


def make_spec(strategy: dict, metrics: list[dict] | None = None, **analysis: Any) -> RolloutSpec:
    doc = {
        "apiVersion": "bento-rollout.io/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {"name": "iris"},
        "spec": {
            "service": "iris",
            "stable": {"model": "iris:v1"},
            "candidate": {"model": "iris:v2"},
            "strategy": strategy,
            "analysis": {"interval": "5s", "metrics": metrics or [], **analysis},
        },
    }
    return parse_rollout(doc).spec


ERROR_RATE = {"name": "errors", "query": "error_ratio", "threshold": {"max": 0.05}}
ERROR_RATE_TEMPLATE = {"name": "error-rate", "template": "error-rate", "threshold": {"max": 0.05}}


def value(v: float) -> Source:
    return lambda _m, _t, _r: ValueSample(v)


def errors(message: str = "connection refused: prometheus at 127.0.0.1:9090") -> Source:
    return lambda _m, _t, _r: message


def proportions(cand_rate: float, stable_rate: float, per_step: float) -> Source:
    """Error-rate style counts that grow with time (``per_step`` requests per version per second)."""

    def src(_m: str, t: float, _r: Routes) -> ProportionSample:
        n = per_step * t
        return ProportionSample(cand_rate * n, n, stable_rate * n, n)

    return src


@dataclass
class FakeEdge:
    """The world: router, backends, metric source; executes actions and reports observations."""

    source: Source = field(default_factory=lambda: value(0.01))
    ready_after: float = 0.0  # the candidate becomes ready this long after it was first ensured
    now: float = 0.0
    routes: Routes = field(default_factory=Routes)
    candidate_running_since: float | None = None
    stable_running: bool = True
    results: list[MetricResult] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)
    weights: list[int] = field(default_factory=list)  # candidate weight after each change
    route_log: list[Routes] = field(default_factory=list)
    finalized: list[Finalize] = field(default_factory=list)
    measured: list[tuple[float, str, float]] = field(default_factory=list)
    warm_until: float | None = None
    window: float = 0.0
    stopped: list[str] = field(default_factory=list)

    def command(self, kind: CommandKind | str, cid: str | None = None) -> None:
        self.commands.append(Command(id=cid or f"cmd-{len(self.commands)}", kind=CommandKind(kind)))

    def observe(self) -> Observations:
        ready = (
            self.candidate_running_since is not None
            and self.now - self.candidate_running_since >= self.ready_after
        )
        obs = Observations(
            candidate_ready=ready,
            routes=self.routes,
            metrics=tuple(self.results),
            commands=tuple(self.commands),
        )
        self.results = []
        return obs

    def execute(self, t: Transition) -> None:
        # the edge drops commands the engine has applied (it may re-send the others)
        self.commands = [c for c in self.commands if c.id not in t.state.applied_commands]
        for a in t.actions:
            if (
                isinstance(a, EnsureBackend)
                and a.role == "candidate"
                and self.candidate_running_since is None
            ):
                self.candidate_running_since = self.now
            elif isinstance(a, SetRoutes):
                self._apply(a.routes)
            elif isinstance(a, Measure):
                self.window = a.window  # sources may look at the window asked for
                got = self.source(a.metric, self.now, self.routes)
                if isinstance(got, str):
                    self.results.append(MetricResult(a.metric, at=self.now, error=got))
                else:
                    self.results.append(MetricResult(a.metric, at=self.now, sample=got, elapsed=0.01))
                self.measured.append((self.now, a.metric, a.window))
            elif isinstance(a, KeepWarm):
                assert self.stable_running, "the engine asked to keep a stopped version warm"
                self.warm_until = a.until
            elif isinstance(a, Finalize):
                self._apply(a.routes)
                if not self.finalized or self.finalized[-1] != a:
                    self.finalized.append(a)
                if a.stop == "stable":
                    self.stable_running = False
                self.stopped.append(a.stop)

    def _apply(self, routes: Routes) -> None:
        if routes != self.routes:
            self.routes = routes
            self.route_log.append(routes)
            self.weights.append(routes.candidate_weight)


def run(
    spec: RolloutSpec,
    edge: FakeEdge,
    state: RolloutState | None = None,
    *,
    dt: float = 1.0,
    max_steps: int = 5000,
    until: Callable[[RolloutState], bool] | None = None,
    store: StateStore | None = None,
    transitions: list[Transition] | None = None,
) -> RolloutState:
    """Drive the engine until the rollout is done (or ``until`` holds): observe, step, persist, act."""
    state = state or new_rollout(spec)
    for _ in range(max_steps):
        t = step(spec, state, edge.observe(), edge.now)
        if t.changed and store is not None:
            store.save(t.state)
        edge.execute(t)
        if transitions is not None:
            transitions.append(t)
        state = t.state
        if state.done or (until is not None and until(state)):
            return state
        edge.now += dt
    raise AssertionError(f"rollout not finished after {max_steps} steps: {state.phase} {state.progress}")


def reasons(state: RolloutState) -> list[str]:
    return [e.reason for e in state.events]


def tmp_store(tmp: Path) -> StateStore:
    return StateStore(tmp / "rollout.json")
