"""The rollout's state: everything the engine remembers between two steps, JSON-serialisable.

``RolloutState`` is what ``rollout.state`` persists after every transition, what ``rollout status``
shows and what the Kubernetes controller writes into ``ModelRollout.status``. It is plain data:
the engine (``rollout.engine.step``) is the only code that produces new states, the strategies
read it, the edges (local runner, controller) store and display it.

This module imports nothing above ``rollout.routers.base`` and ``rollout.spec`` so that the
strategies may use it without depending on the engine or on the analysis package (the layering
contract in pyproject.toml). Verdicts are stored by their names ("Successful", "Failed",
"Inconclusive", "Error"), the values of ``rollout.analysis.base.Verdict``.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from rollout.routers.base import Routes

MAX_EVENTS = 200  # bounded event history kept in the state
MAX_MEASUREMENTS = 10  # last measurements kept per metric
MAX_COMMAND_IDS = 200  # ids of the user commands already applied

SUCCESSFUL, FAILED, INCONCLUSIVE, ERROR = "Successful", "Failed", "Inconclusive", "Error"


class Phase(StrEnum):
    PENDING = "Pending"  # nothing done yet
    PROGRESSING = "Progressing"  # moving through the strategy's steps
    PAUSED = "Paused"  # paused by the user, waiting for `promote`, or too many inconclusive results
    PROMOTED = "Promoted"  # the candidate is the new stable
    ROLLED_BACK = "RolledBack"  # analysis (or the candidate itself) failed; stable serves everything
    ABORTED = "Aborted"  # the user aborted; stable serves everything
    SUCCEEDED = "Succeeded"  # shadow without promotion: the candidate passed, stable still serves

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_PHASES


TERMINAL_PHASES = frozenset({Phase.PROMOTED, Phase.ROLLED_BACK, Phase.ABORTED, Phase.SUCCEEDED})


class EventType(StrEnum):
    NORMAL = "Normal"
    WARNING = "Warning"


class Reason:
    """The ``reason`` of every event the engine emits (CamelCase, as Kubernetes events)."""

    STARTED = "RolloutStarted"
    CANDIDATE_READY = "CandidateReady"
    CANDIDATE_NOT_READY = "CandidateNotReady"
    CANDIDATE_FAILED = "CandidateFailed"
    STEP_STARTED = "StepStarted"
    ANALYSIS_STARTED = "AnalysisStarted"
    ANALYSIS_STOPPED = "AnalysisStopped"
    METRIC_PARKED = "MetricParked"
    MEASUREMENT_FAILED = "MeasurementFailed"
    MEASUREMENT_INCONCLUSIVE = "MeasurementInconclusive"
    MEASUREMENT_ERROR = "MeasurementError"
    ANALYSIS_RECOVERED = "AnalysisRecovered"
    ANALYSIS_FAILED = "AnalysisFailed"
    METRICS_UNAVAILABLE = "MetricsUnavailable"
    INCONCLUSIVE_LIMIT = "InconclusiveLimit"
    WAITING_FOR_PROMOTION = "WaitingForPromotion"
    PAUSED = "Paused"
    RESUMED = "Resumed"
    PROMOTE_REQUESTED = "PromoteRequested"
    COMMAND_IGNORED = "CommandIgnored"
    SWITCHED = "SwitchedToCandidate"
    SWITCHED_BACK = "SwitchedBack"
    SCALE_DOWN_DELAY = "ScaleDownDelay"
    SHADOW_PASSED = "ShadowPassed"
    EXPERIMENT_UPDATED = "ExperimentUpdated"
    CANDIDATE_WON = "CandidateWon"
    STABLE_WON = "StableWon"
    EXPERIMENT_INCONCLUSIVE = "ExperimentInconclusive"
    PROGRESS_DEADLINE = "ProgressDeadlineExceeded"  # held by itself longer than spec.progressDeadline
    RECONCILE_ERROR = "ReconcileError"  # the edge failed unexpectedly inside one reconcile: held
    STABLE_UNAVAILABLE = "StableUnavailable"  # stable does not serve: no step, no comparison judged
    STABLE_RECOVERED = "StableRecovered"
    RESTARTED = "Restarted"  # the edge restarted a server that died (the local supervisor)
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"
    ABORTED = "Aborted"
    SUCCEEDED = "Succeeded"


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=False)


class Event(_Data):
    at: float
    type: EventType
    reason: str
    message: str
    revision: int = 0  # the state revision that recorded it


class MeasurementRecord(_Data):
    """One judged measurement, as kept in the state (the last few per metric)."""

    at: float
    verdict: str  # Successful | Failed | Inconclusive | Error
    value: float | None = None
    message: str = ""
    details: dict[str, float] = Field(default_factory=dict)


class MetricStatus(_Data):
    """Analysis status of one metric of ``spec.analysis.metrics``."""

    name: str
    measurements: list[MeasurementRecord] = Field(default_factory=list)  # newest last, bounded
    count: int = 0  # measurements taken over the whole rollout
    successful: int = 0
    failed: int = 0
    inconclusive: int = 0
    errors: int = 0
    consecutive_failed: int = 0
    consecutive_inconclusive: int = 0
    consecutive_errors: int = 0
    latest: str | None = None  # verdict of the newest measurement of the current analysis run
    next_due: float | None = None  # when the next measurement is due; None while analysis is off
    last_elapsed: float | None = None  # seconds the edge took for the last measurement

    @property
    def evidence(self) -> int:
        """Measurements that carried data (every verdict but Error); marks are positions in it."""
        return self.count - self.errors

    def since(self, mark: int) -> int:
        """How many measurements with data were taken after the mark (a value of ``evidence``):
        an Error (Prometheus away) is not an interval of analysis."""
        return max(0, self.evidence - mark)


class Experiment(_Data):
    """A/B test: the deciding metric's latest comparison of candidate against stable."""

    metric: str
    samples: float = 0.0  # the smaller of the two versions' sample counts
    candidate_value: float | None = None
    stable_value: float | None = None
    leader: str | None = None  # "candidate" | "stable" | None (tie / no data)
    # the version proven better at the A/B confidence (None until the difference is significant)
    winner: str | None = None
    # always-valid interval of candidate - stable on the headline's scale (None: no test)
    lower: float | None = None
    upper: float | None = None
    at: float | None = None


class Progress(_Data):
    """Where the strategy is. Owned by the strategy: the engine stores what the planner returns."""

    step_index: int = 0
    step_name: str = ""
    step_started_at: float | None = None
    # analysis marks: MetricStatus.evidence of every metric when the current step started
    marks: dict[str, int] = Field(default_factory=dict)
    awaiting_promotion: bool = False  # waiting for a `promote` command (phase Paused)
    applied_at: float | None = None  # when the router first reported this step's routes applied
    preview_header: str | None = None  # blue/green preview: send test traffic with this header = "1"
    switched_at: float | None = None  # blue/green: when user traffic moved to the candidate
    warm_until: float | None = None  # blue/green: keep the old version running until then
    experiment: Experiment | None = None  # A/B test


class PauseInfo(_Data):
    reason: str  # Reason.PAUSED (user) or Reason.INCONCLUSIVE_LIMIT
    message: str
    since: float


class RolloutState(_Data):
    """The whole state of one rollout. ``revision`` grows by one with every change."""

    service: str
    strategy: str  # canary | blue_green | shadow | ab_test
    stable: str  # model tags
    candidate: str
    phase: Phase = Phase.PENDING
    revision: int = 0
    reason: str = ""  # reason of the latest phase change (the decision reason once finished)
    message: str = ""
    started_at: float | None = None
    updated_at: float | None = None
    finished_at: float | None = None
    candidate_ready_at: float | None = None
    candidate_ready: bool = False
    desired_routes: Routes = Field(default_factory=Routes)
    analysis_started_at: float | None = None  # None while no analysis runs
    metrics: dict[str, MetricStatus] = Field(default_factory=dict)
    progress: Progress = Field(default_factory=Progress)
    pause: PauseInfo | None = None  # user pause or inconclusive-limit pause (cleared by resume)
    # since when the rollout holds by itself (gate holding, candidate not ready, metrics
    # unavailable) without a pause of a human's; past spec.progressDeadline it is rolled back
    held_since: float | None = None
    stable_down_since: float | None = None  # stable reported not ready since then (held meanwhile)
    applied_commands: list[str] = Field(default_factory=list)
    events: list[Event] = Field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.phase.terminal

    @property
    def succeeded(self) -> bool:
        """True when the rollout ended well (promoted, or a shadow that passed)."""
        return self.phase in (Phase.PROMOTED, Phase.SUCCEEDED)

    def to_json(self) -> str:
        return self.model_dump_json(indent=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> RolloutState:
        return cls.model_validate_json(text)

    def recent_events(self, n: int = 10) -> list[Event]:
        return self.events[-n:]
