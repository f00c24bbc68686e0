"""The planner interface every strategy implements, and what the engine hands it.

A strategy is a pure planner: given the spec, the previous state, the time, what the router has
applied and how the analysis stands (``Context``), it returns a ``Plan``: its new progress (step
index, timers), the routes it wants, whether analysis should run, and possibly a decision
(promote, roll back, succeed). No I/O, no clocks, no mutation of its input.
Who calls it: ``rollout.engine.step`` only (tests call the planners through the engine too).
Failure handling that is common to all strategies (analysis failed, provider errors past the
limit, the candidate crashed, user abort and pause) lives in the engine, not here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from rollout.model import SUCCESSFUL, EventType, Experiment, Progress, Reason, RolloutState
from rollout.routers.base import Routes
from rollout.spec import RolloutSpec


class Gate(StrEnum):
    PASSING = "passing"  # no metric's latest verdict is bad: the strategy may go on
    HOLDING = "holding"  # some metric is Failed (under its limit), Inconclusive or Error: stay put


class DecisionKind(StrEnum):
    PROMOTE = "promote"
    ROLL_BACK = "roll-back"
    SUCCEED = "succeed"  # end well without promoting (shadow)


@dataclass(frozen=True)
class Decision:
    kind: DecisionKind
    reason: str  # a Reason.* constant
    message: str


@dataclass(frozen=True)
class Note:
    """An event to record; the engine stamps time and revision."""

    type: EventType
    reason: str
    message: str


@dataclass(frozen=True)
class Comparison:
    """One metric's sample reduced to a per-version number (computed by the engine)."""

    samples: float  # the smaller of the two versions' counts
    candidate: float | None
    stable: float | None
    higher_is_better: bool
    # the A/B significance test (``rollout.analysis.experiment``, run by the engine): the proven
    # winner (None until significant) and the always-valid interval of candidate - stable on the
    # headline's scale at ``confidence``; ``tested`` False where the sample has no test
    tested: bool = False
    winner: str | None = None
    lower: float | None = None
    upper: float | None = None
    confidence: float | None = None
    interval: str = ""  # the interval in words, for events and status messages

    @property
    def leader(self) -> str | None:
        if self.candidate is None or self.stable is None or self.candidate == self.stable:
            return None
        better = self.candidate > self.stable if self.higher_is_better else self.candidate < self.stable
        return "candidate" if better else "stable"


@dataclass(frozen=True)
class Context:
    spec: RolloutSpec
    state: RolloutState  # read-only; the previous progress is ``state.progress``
    now: float
    routes_applied: Routes | None  # read back from the router this step (None: unknown)
    gate: Gate
    promote_requested: bool  # a `promote` command arrived: finish the current step/pause now
    comparisons: Mapping[str, Comparison] = field(default_factory=dict)  # fresh this step
    # the metrics that can be measured under the current routes (None: all of them); those that
    # compare with stable are left out while stable serves no traffic
    active_metrics: tuple[str, ...] | None = None

    @property
    def metric_names(self) -> list[str]:
        if self.active_metrics is not None:
            return list(self.active_metrics)
        return [m.name for m in self.spec.analysis.metrics]

    def marks(self) -> dict[str, int]:
        """The current counts of measurements with data (``MetricStatus.evidence``: an Error is no
        interval of analysis), to remember at the start of a step."""
        return {n: s.evidence for n, s in self.state.metrics.items()}

    def applied(self, routes: Routes) -> bool:
        return self.routes_applied is not None and self.routes_applied == routes

    def measured_since(self, progress: Progress, intervals: int = 1) -> bool:
        """Every metric was measured at least ``intervals`` times since the step started, the
        newest verdict of each is Successful, and the gate passes."""
        if self.gate != Gate.PASSING:
            return False
        for name in self.metric_names:
            status = self.state.metrics.get(name)
            if status is None or status.since(progress.marks.get(name, 0)) < intervals:
                return False
            if status.latest != SUCCESSFUL:
                return False
        return True

    def all_latest_successful(self) -> bool:
        """Each metric's newest verdict (of the current analysis run) is Successful."""
        return all(
            (s := self.state.metrics.get(n)) is not None and s.latest == SUCCESSFUL for n in self.metric_names
        )

    def elapsed(self, progress: Progress) -> float:
        return 0.0 if progress.step_started_at is None else self.now - progress.step_started_at


@dataclass(frozen=True)
class Plan:
    progress: Progress
    routes: Routes
    analysis: bool  # analysis should run now (metrics are measured when due)
    decision: Decision | None = None
    notes: tuple[Note, ...] = ()


class StrategyPlanner(Protocol):
    name: str

    def step_names(self, spec: RolloutSpec) -> list[str]:
        """Human names of the strategy's steps, for status displays."""

    def plan(self, ctx: Context) -> Plan:
        """Decide what to do now. Pure."""


def start_step(ctx: Context, progress: Progress, index: int, name: str, total: int) -> tuple[Progress, Note]:
    """A copy of ``progress`` at the start of step ``index`` (timer reset, analysis marks taken)."""
    new = progress.model_copy(
        update={
            "step_index": index,
            "step_name": name,
            "step_started_at": ctx.now,
            "marks": ctx.marks(),
            "awaiting_promotion": False,
            "applied_at": None,
            "preview_header": None,
        }
    )
    where = f"step {index + 1}/{total}" if index < total else "final"
    return new, Note(EventType.NORMAL, Reason.STEP_STARTED, f"{where}: {name}")


def track_applied(ctx: Context, progress: Progress, routes: Routes) -> Progress:
    """Record when the router first reported ``routes`` applied during the current step."""
    if progress.applied_at is None and ctx.applied(routes):
        return progress.model_copy(update={"applied_at": ctx.now})
    return progress


def since_applied(ctx: Context, progress: Progress) -> float:
    return 0.0 if progress.applied_at is None else ctx.now - progress.applied_at


def experiment_from(metric: str, cmp: Comparison, now: float) -> Experiment:
    return Experiment(
        metric=metric,
        samples=cmp.samples,
        candidate_value=cmp.candidate,
        stable_value=cmp.stable,
        leader=cmp.leader,
        winner=cmp.winner,
        lower=cmp.lower,
        upper=cmp.upper,
        at=now,
    )
