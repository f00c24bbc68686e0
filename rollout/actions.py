"""What goes into the engine (observations) and what comes out (actions, a transition).

The edge (the local runner, the Kubernetes controller, the simulator) gathers ``Observations``
before each ``rollout.engine.step`` and executes the returned ``Action``s after persisting the new
state. Every action is level-based: it states a desired condition, so executing it twice (after a
crash, or because the engine repeats it on the next step) does no harm. See ``rollout.engine``
for the whole contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from rollout.model import Event, RolloutState
from rollout.routers.base import Routes

Role = Literal["stable", "candidate"]


# --- observations --------------------------------------------------------------------------------


class CommandKind(StrEnum):
    PROMOTE = "promote"  # finish the current step / pause / preview and go on
    PROMOTE_FULL = "promote-full"  # skip everything left: promote the candidate now
    ABORT = "abort"  # stop now: stable takes all traffic, the candidate is stopped
    PAUSE = "pause"  # hold where we are (analysis keeps running and may still roll back)
    RESUME = "resume"  # undo a pause


@dataclass(frozen=True)
class Command:
    """A user command. ``id`` is unique; the engine applies each id once (see ``applied_commands``)."""

    id: str
    kind: CommandKind
    message: str = ""


@dataclass(frozen=True)
class MetricResult:
    """The outcome of one ``Measure`` action: a sample, or an error (provider failed/unreachable).

    ``sample`` is one of the sample types of ``rollout.analysis.base`` (``Sample``); typed loosely
    here so that this module does not depend on the analysis package.
    """

    metric: str
    at: float  # when it was measured (the edge's clock, the same one that gives ``now``)
    sample: Any = None
    error: str | None = None
    elapsed: float = 0.0  # seconds the query took

    def __post_init__(self) -> None:
        if (self.sample is None) == (self.error is None):
            raise ValueError(f"result for metric {self.metric!r} needs exactly one of sample, error")


@dataclass(frozen=True)
class Observations:
    """What the edge saw since the last step. Every field may be left at its default."""

    candidate_ready: bool | None = None  # None: not checked this time
    candidate_error: str | None = None  # the candidate cannot run (crashed, failed to start)
    stable_ready: bool | None = None  # stable answers its readiness check (None: not checked)
    notices: tuple[str, ...] = ()  # what the edge did by itself (a server restarted): events
    # the edge's last iteration failed unexpectedly (hold_on_error) and none has gone through
    # since: the rollout stays held (ReconcileError) instead of flapping Resumed/held per retry
    edge_error: str | None = None
    routes: Routes | None = None  # routes applied now, read back from the router; None: unknown
    metrics: tuple[MetricResult, ...] = ()
    commands: tuple[Command, ...] = ()


# --- actions -------------------------------------------------------------------------------------


class Outcome(StrEnum):
    PROMOTED = "promoted"  # the candidate becomes the new stable
    ROLLED_BACK = "rolled-back"
    ABORTED = "aborted"
    SUCCEEDED = "succeeded"  # shadow without promotion: stable keeps serving, candidate stopped


@dataclass(frozen=True)
class EnsureBackend:
    """Make sure this version runs and is (becoming) ready; report readiness in the observations."""

    role: Role


@dataclass(frozen=True)
class SetRoutes:
    """Make the router match these routes (all of them: weights, mirror, match, sticky)."""

    routes: Routes


@dataclass(frozen=True)
class Measure:
    """Measure one metric over the last ``window`` seconds; report a ``MetricResult`` next step.

    Repeated on every step until a result for the metric arrives: an edge that measures
    asynchronously must not start a second query for a metric while one is in flight.
    """

    metric: str
    window: float


@dataclass(frozen=True)
class PreviewTraffic:
    """Blue/green preview: send test requests carrying ``header: value`` to the service; the router
    sends them (and only them) to the candidate, so the preview analysis has data. Emitted on
    every step of the preview; stop when it is no longer in the actions."""

    header: str
    value: str = "1"


@dataclass(frozen=True)
class KeepWarm:
    """Keep this version running (it may take traffic back instantly) at least until ``until``."""

    role: Role
    until: float


@dataclass(frozen=True)
class Finalize:
    """End the rollout.

    - PROMOTED: route 100% to the candidate, make it the new stable, stop the old stable;
    - ROLLED_BACK / ABORTED / SUCCEEDED: route 100% to stable (no mirror, no match), stop the
      candidate.
    ``routes`` are the final routes relative to the versions *before* the swap.
    """

    outcome: Outcome
    routes: Routes
    stop: Role
    new_stable: str  # model tag serving as stable afterwards

    @property
    def promoted(self) -> bool:
        return self.outcome == Outcome.PROMOTED


Action = EnsureBackend | SetRoutes | Measure | PreviewTraffic | KeepWarm | Finalize


@dataclass(frozen=True)
class Transition:
    """The result of one step: the new state, what to do, and what happened."""

    state: RolloutState
    actions: tuple[Action, ...] = ()
    events: tuple[Event, ...] = ()
    changed: bool = False  # the state differs from the input (its revision grew): persist it

    def of(self, kind: type) -> list[Any]:
        """The actions of one type, e.g. ``t.of(SetRoutes)``."""
        return [a for a in self.actions if isinstance(a, kind)]

    @property
    def routes(self) -> Routes | None:
        """The routes this transition asks for (the last SetRoutes, or the Finalize routes)."""
        for a in reversed(self.actions):
            if isinstance(a, SetRoutes | Finalize):
                return a.routes
        return None


ALL_STABLE = Routes()
ALL_CANDIDATE = Routes(candidate_weight=100)
