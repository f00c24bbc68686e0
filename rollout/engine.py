"""The rollout engine: a pure state machine, ``step(spec, state, observations, now) -> Transition``.

It decides; it never acts. No I/O, no clock (``now`` is passed in), no router, metric client or
subprocess. It never mutates its input and is deterministic: the same arguments give the same
transition. Strategies (``rollout.strategies``) plan the steps; judges (``rollout.analysis``)
turn samples into verdicts; this module applies what is common to all strategies: user commands,
candidate health, analysis limits, pauses, the final decision, and the bookkeeping (revision,
events).

The contract with the edge (the local runner, the Kubernetes controller, the simulator)::

    state = store.load() or new_rollout(spec)
    while True:
        obs = Observations(candidate_ready=..., routes=router.get_routes(),
                           metrics=<results of the Measure actions of the last step>,
                           commands=<pending user commands>)
        t = step(spec, state, obs, now=clock())
        if t.changed:
            store.save(t.state)          # 1. persist FIRST (atomic) ...
        execute(t.actions)               # 2. ... then act; every action is level-based
        state = t.state
        if state.done:                   # after Finalize has been executed
            break
        sleep(a second or so)

Observations (``rollout.actions.Observations``) — what the edge saw since the last step:
- ``candidate_ready``: the candidate backend answers its readiness check (None: not checked);
  ``candidate_error``: it cannot run (crashed, failed to start) -> roll back (CandidateFailed);
- ``stable_ready``: stable answers its readiness check (None: not checked). While it is False the
  rollout holds (Paused, StableUnavailable): no step completes, metrics that compare with stable
  are Inconclusive (no baseline), the step's timer stops; past ``progressDeadline`` it is rolled
  back (a supervised stable is being restarted meanwhile);
- ``notices``: what the edge did by itself (a supervised server restarted), recorded as events;
- ``edge_error``: the edge's last iteration failed unexpectedly (it called ``hold_on_error``) and
  none has gone through since: the rollout stays Paused (ReconcileError) until one does;
- ``routes``: the routes applied now, read back from the router (``get_routes``). Steps that
  change traffic are only complete once the router reports them applied (compared with ``==``,
  so read back exactly what ``set_routes`` applied: weights, mirror, match, sticky); report them
  on every step;
- ``metrics``: one ``MetricResult`` per executed ``Measure``: a sample (``rollout.analysis.base``)
  or an error string when the provider failed (Prometheus unreachable...), with the time taken;
- ``commands``: user commands (promote, promote-full, abort, pause, resume), each with a unique id.
  The engine applies an id once and lists it in ``state.applied_commands``; the edge may keep
  re-sending a command until its id appears there (and should then drop it).

Actions (``rollout.actions``) — what the edge must make true, each safe to repeat:
- ``EnsureBackend(role)``: that version runs and is (becoming) ready; report the candidate's
  readiness. Emitted for both versions on every step until the end; nothing but ``Finalize``
  ever stops a version;
- ``SetRoutes(routes)``: the router matches these routes (weights, mirror, match, sticky);
- ``Measure(metric, window)``: measure the metric over the last ``window`` seconds and report the
  result next step (with ``rollout.metrics.sampler.collect``: ``SampleContext(window=window)``;
  the window is already cumulative since the analysis started for sequential judges and for the
  A/B deciding metric, and widened after Inconclusive results). Repeated every step until a result for the metric arrives; a provider
  failure is reported as ``MetricResult(error=...)``, never raised;
- ``PreviewTraffic(header, value)``: blue/green preview - send test requests with that header
  to the service (the router gives them, and only them, to the candidate) so that the preview
  analysis has data; users get no candidate answer. Without it the preview waits (Inconclusive);
- ``KeepWarm(role, until)``: do not stop that version before ``until`` (blue/green);
- ``Finalize(outcome, routes, stop, new_stable)``: the end. PROMOTED: 100% to the candidate, the
  candidate becomes the new stable, the old stable stops. Otherwise 100% to stable, the candidate
  stops. A finished state returns its Finalize on every step (and ``changed`` False), so an edge
  restarting after a crash re-applies it.

Because the edge persists the new state before acting and every action is level-based, the
process can be killed at any point: on restart the engine sees the persisted state and fresh
observations and repeats, never doubles, the current step. ``changed`` is False when nothing
changed (no need to write); ``revision`` grows by one with every change.

Analysis rules (per metric, "past the limit" means more consecutive results than the limit):
Failed past ``failureLimit`` -> roll back (AnalysisFailed); Error (provider unreachable or query
failed) past ``analysis.errorLimit`` -> roll back (MetricsUnavailable); Inconclusive past a
non-zero ``inconclusiveLimit`` -> pause for a human (InconclusiveLimit). Held by itself (gate
holding, candidate not ready) longer than ``progressDeadline`` -> roll back
(ProgressDeadlineExceeded): with no traffic at all a rollout ends, it does not wait forever. While any metric's newest
verdict is not Successful the gate HOLDS: no step completes, weights stay, nothing is promoted;
while a metric's newest measurement is an Error the phase is Paused (reason MetricsUnavailable)
and it goes back to Progressing by itself when the provider answers again. Metrics that compare
the candidate with stable (comparative/sequential judges, shift headlines) are parked - not
measured, not holding - while stable serves no user traffic (after a blue/green switch, a canary
at 100%); threshold metrics keep guarding.
User commands override holds: ``promote`` ends the current step or wait, ``promote-full``
promotes now (if the candidate is ready), ``abort`` rolls back now. Analysis keeps running while
paused, and still rolls back on failure.
Who calls it: rollout.local (the runner), rollout.controller, the simulator, tests.
"""

from __future__ import annotations

from rollout import gate as gates
from rollout.actions import (
    ALL_CANDIDATE,
    ALL_STABLE,
    Action,
    Command,
    CommandKind,
    EnsureBackend,
    Finalize,
    KeepWarm,
    Observations,
    Outcome,
    PreviewTraffic,
    SetRoutes,
    Transition,
)
from rollout.errors import StateError
from rollout.model import (
    MAX_COMMAND_IDS,
    MAX_EVENTS,
    Event,
    EventType,
    MetricStatus,
    PauseInfo,
    Phase,
    Reason,
    RolloutState,
)
from rollout.spec import RolloutSpec, format_duration
from rollout.strategies import get_planner
from rollout.strategies.base import Context, Decision, DecisionKind, Note

__all__ = ["new_rollout", "step", "finalize_action", "hold_on_error"]

_OUTCOME = {
    Phase.PROMOTED: Outcome.PROMOTED,
    Phase.ROLLED_BACK: Outcome.ROLLED_BACK,
    Phase.ABORTED: Outcome.ABORTED,
    Phase.SUCCEEDED: Outcome.SUCCEEDED,
}
_ENDING = {
    Phase.PROMOTED: "the candidate is the new stable",
    Phase.ROLLED_BACK: "rolled back: stable serves all traffic, the candidate is stopped",
    Phase.ABORTED: "aborted: stable serves all traffic, the candidate is stopped",
    Phase.SUCCEEDED: "succeeded: stable keeps serving, the candidate is stopped",
}
_PHASE = {
    DecisionKind.PROMOTE: Phase.PROMOTED,
    DecisionKind.ROLL_BACK: Phase.ROLLED_BACK,
    DecisionKind.SUCCEED: Phase.SUCCEEDED,
}


def new_rollout(spec: RolloutSpec) -> RolloutState:
    """The state of a rollout that has not started (phase Pending). Raises SpecError when a metric
    cannot be judged as configured, UnknownProviderError for an unknown strategy."""
    get_planner(spec.strategy.name)  # an unknown strategy is an error, never a fallback
    for metric in spec.analysis.metrics:  # a metric that cannot be judged is a SpecError now, not later
        gates.default_judge(metric)
    return RolloutState(
        service=spec.service,
        strategy=spec.strategy.name,
        stable=spec.stable.model,
        candidate=spec.candidate.model,
        metrics={m.name: MetricStatus(name=m.name) for m in spec.analysis.metrics},
    )


def is_rollout_of(state: RolloutState | None, spec: RolloutSpec) -> bool:
    """True when ``state`` is ``spec``'s rollout: the same candidate and strategy. A new candidate
    or strategy starts a new rollout (on the cluster and locally alike)."""
    return (
        state is not None and state.candidate == spec.candidate.model and state.strategy == spec.strategy.name
    )


def finalize_action(state: RolloutState) -> Finalize:
    """The Finalize action of a finished rollout."""
    outcome = _OUTCOME[state.phase]
    if outcome == Outcome.PROMOTED:
        return Finalize(outcome, ALL_CANDIDATE, stop="stable", new_stable=state.candidate)
    return Finalize(outcome, ALL_STABLE, stop="candidate", new_stable=state.stable)


class _Step:
    """One step's working copy of the state and the events it produced."""

    def __init__(self, state: RolloutState, now: float) -> None:
        self.s = state
        self.now = now
        self.notes: list[Note] = []

    def note(self, type_: EventType, reason: str, message: str) -> None:
        self.notes.append(Note(type_, reason, message))

    def finish(self, phase: Phase, reason: str, message: str) -> None:
        s = self.s
        if s.desired_routes.candidate_weight == 100 and phase != Phase.PROMOTED:
            self.note(EventType.WARNING, Reason.SWITCHED_BACK, "all traffic switched back to stable")
        s.phase = phase
        s.reason, s.message = reason, message
        s.finished_at = self.now
        s.pause = None
        s.progress = s.progress.model_copy(update={"awaiting_promotion": False, "warm_until": None})
        s.desired_routes = ALL_CANDIDATE if phase == Phase.PROMOTED else ALL_STABLE
        gates.stop(s)
        good = phase in (Phase.PROMOTED, Phase.SUCCEEDED)
        self.note(EventType.NORMAL if good else EventType.WARNING, reason, message)
        if reason != phase.value:  # e.g. AnalysisFailed -> also say RolledBack
            self.note(EventType.NORMAL if good else EventType.WARNING, phase.value, _ENDING[phase])

    def decide(self, d: Decision) -> None:
        self.finish(_PHASE[d.kind], d.reason, d.message)


def _unpause(w: _Step) -> None:
    """Clear a pause, moving the current step's timer on by the time spent paused."""
    s = w.s
    assert s.pause is not None
    paused_for = max(0.0, w.now - s.pause.since)
    if s.progress.step_started_at is not None:
        s.progress = s.progress.model_copy(
            update={"step_started_at": s.progress.step_started_at + paused_for}
        )
    s.pause = None
    gates.reset_inconclusive(s)


def _commands(w: _Step, commands: tuple[Command, ...]) -> bool:
    """Apply new commands in order. Returns True when a `promote` asks to end the current step."""
    s = w.s
    promote = False
    for c in commands:
        if c.id in s.applied_commands:
            continue
        s.applied_commands = [*s.applied_commands, c.id][-MAX_COMMAND_IDS:]
        by = f" ({c.message})" if c.message else ""
        if s.done:
            w.note(
                EventType.WARNING, Reason.COMMAND_IGNORED, f"{c.kind} ignored: the rollout is {s.phase.value}"
            )
        elif c.kind == CommandKind.ABORT:
            w.finish(Phase.ABORTED, Reason.ABORTED, f"aborted by the user{by}")
        elif c.kind == CommandKind.PROMOTE_FULL:
            if not s.candidate_ready:
                w.note(
                    EventType.WARNING,
                    Reason.COMMAND_IGNORED,
                    "promote-full ignored: the candidate is not ready",
                )
            else:
                w.finish(
                    Phase.PROMOTED, Reason.PROMOTED, f"promoted by the user, remaining steps skipped{by}"
                )
        elif c.kind == CommandKind.PROMOTE:
            if s.pause is not None:
                _unpause(w)
            promote = True
            w.note(EventType.NORMAL, Reason.PROMOTE_REQUESTED, f"promote requested{by}")
        elif c.kind == CommandKind.PAUSE:
            if s.pause is not None:
                w.note(EventType.WARNING, Reason.COMMAND_IGNORED, "pause ignored: already paused")
            else:
                s.pause = PauseInfo(reason=Reason.PAUSED, message=f"paused by the user{by}", since=w.now)
                w.note(EventType.NORMAL, Reason.PAUSED, f"paused by the user{by}")
        elif c.kind == CommandKind.RESUME:
            if s.pause is not None:
                _unpause(w)
                w.note(EventType.NORMAL, Reason.RESUMED, f"resumed by the user{by}")
            elif s.progress.awaiting_promotion:
                w.note(
                    EventType.WARNING, Reason.COMMAND_IGNORED, "resume ignored: this step waits for `promote`"
                )
            else:
                w.note(EventType.WARNING, Reason.COMMAND_IGNORED, "resume ignored: not paused")
    return promote


def _candidate(w: _Step, obs: Observations) -> None:
    s = w.s
    if obs.candidate_error:
        w.finish(
            Phase.ROLLED_BACK,
            Reason.CANDIDATE_FAILED,
            f"candidate {s.candidate} failed: {obs.candidate_error}",
        )
        return
    if obs.candidate_ready is True and not s.candidate_ready:
        s.candidate_ready = True
        if s.candidate_ready_at is None:
            s.candidate_ready_at = w.now
        w.note(EventType.NORMAL, Reason.CANDIDATE_READY, f"candidate {s.candidate} is ready")
    elif obs.candidate_ready is False and s.candidate_ready:
        s.candidate_ready = False
        w.note(
            EventType.WARNING, Reason.CANDIDATE_NOT_READY, f"candidate {s.candidate} is not ready; holding"
        )


def _stable(spec: RolloutSpec, w: _Step, obs: Observations) -> None:
    """Stable stopped serving (killed, crashed): hold - no step completes, no comparison with it is
    judged (there is no baseline), the step's timer stops - until it serves again."""
    s = w.s
    if obs.stable_ready is False and s.stable_down_since is None:
        s.stable_down_since = w.now
        w.note(
            EventType.WARNING,
            Reason.STABLE_UNAVAILABLE,
            f"stable {s.stable} is not serving: holding (no step completes, nothing is compared "
            "with it) until it serves again",
        )
    elif obs.stable_ready is True and s.stable_down_since is not None:
        down = max(0.0, w.now - s.stable_down_since)
        if s.progress.step_started_at is not None:
            s.progress = s.progress.model_copy(update={"step_started_at": s.progress.step_started_at + down})
        s.stable_down_since = None
        gates.restart(spec, s, w.now)  # no window may reach back into the outage
        w.note(
            EventType.NORMAL,
            Reason.STABLE_RECOVERED,
            f"stable {s.stable} serves again after {format_duration(round(down))}; analysis starts "
            "afresh (no window reaches back into the outage); progressing",
        )


def _plan(w: _Step, spec: RolloutSpec, obs: Observations, promote: bool, comparisons: dict) -> None:
    s = w.s
    planner = get_planner(spec.strategy.name)
    ctx = Context(
        spec=spec,
        state=s,
        now=w.now,
        routes_applied=obs.routes,
        gate=gates.gate(spec, s),
        promote_requested=promote,
        comparisons=comparisons,
        active_metrics=gates.active(spec, s.desired_routes),
    )
    plan = planner.plan(ctx)
    s.progress = plan.progress
    s.desired_routes = plan.routes
    w.notes.extend(plan.notes)
    if plan.analysis and s.analysis_started_at is None:
        gates.start(spec, s, w.now)
        w.note(
            EventType.NORMAL,
            Reason.ANALYSIS_STARTED,
            f"analysis started: {', '.join(m.name for m in spec.analysis.metrics) or 'no metrics'}",
        )
    elif not plan.analysis and s.analysis_started_at is not None:
        gates.stop(s)
        w.note(EventType.NORMAL, Reason.ANALYSIS_STOPPED, "analysis stopped")
    w.notes.extend(gates.park(spec, s, s.desired_routes, w.now))
    if plan.decision is not None:
        w.decide(plan.decision)


def _actions(spec: RolloutSpec, s: RolloutState, now: float) -> tuple[Action, ...]:
    if s.done:
        return (finalize_action(s),)
    out: list[Action] = [EnsureBackend("stable"), EnsureBackend("candidate"), SetRoutes(s.desired_routes)]
    if s.progress.preview_header is not None:
        out.append(PreviewTraffic(s.progress.preview_header))
    if s.progress.warm_until is not None:
        out.append(KeepWarm("stable", s.progress.warm_until))
    out.extend(gates.due(spec, s, now))
    return tuple(out)


def step(
    spec: RolloutSpec,
    state: RolloutState,
    obs: Observations,
    now: float,
    *,
    judge_of: gates.JudgeFactory | None = None,
) -> Transition:
    """One transition of the rollout. See the module docstring for the contract.

    ``judge_of`` builds the judge of a metric; the default is the analysis registry's.
    """
    if state.strategy != spec.strategy.name or state.candidate != spec.candidate.model:
        raise StateError(
            f"the saved rollout ({state.strategy}, candidate {state.candidate}) does not match the spec "
            f"({spec.strategy.name}, candidate {spec.candidate.model}); delete the state or use the original spec"
        )
    if state.done:
        stale = [c.id for c in obs.commands if c.id not in state.applied_commands]
        if not stale:
            return Transition(state=state, actions=_actions(spec, state, now))
    # a private working copy: the nested objects the engine changes in place are the metric
    # statuses (copied here); everything else is replaced whole (lists, progress, routes, pause)
    w = _Step(
        state.model_copy(update={"metrics": {k: v.model_copy() for k, v in state.metrics.items()}}), now
    )
    s = w.s
    if s.phase == Phase.PENDING:
        s.phase, s.started_at = Phase.PROGRESSING, now
        s.reason, s.message = Reason.STARTED, f"{s.strategy} of {s.candidate} against {s.stable}"
        w.note(EventType.NORMAL, Reason.STARTED, s.message)
    promote = _commands(w, obs.commands)
    for notice in obs.notices:
        w.note(EventType.WARNING, Reason.RESTARTED, notice)
    if not s.done:
        _candidate(w, obs)
        _stable(spec, w, obs)
    comparisons: dict = {}
    if not s.done:
        notes, comparisons = gates.ingest(
            spec, s, obs.metrics, judge_of or gates.default_judge, baseline=s.stable_down_since is None
        )
        w.notes.extend(notes)
        if (d := gates.verdict_limits(spec, s)) is not None:
            w.decide(d)
    if not s.done and s.pause is None and (msg := gates.inconclusive_limit(spec, s)) is not None:
        s.pause = PauseInfo(reason=Reason.INCONCLUSIVE_LIMIT, message=msg, since=now)
        w.note(EventType.WARNING, Reason.INCONCLUSIVE_LIMIT, msg)
    if not s.done and s.pause is None and s.candidate_ready and s.stable_down_since is None:
        _plan(w, spec, obs, promote, comparisons)
    if not s.done:
        _deadline(spec, w)
    if not s.done:
        _set_phase(spec, w, obs)
    return _commit(spec, state, w)


def _deadline(spec: RolloutSpec, w: _Step) -> None:
    """Roll back a rollout that has held by itself longer than ``spec.progressDeadline``: the gate
    holding (a metric Inconclusive, Failed under its limit, or unmeasurable), or the candidate not
    ready. A human's pause or a step waiting for ``promote`` does not count, and a clock that went
    backwards starts the count again."""
    s = w.s
    why = None
    if s.pause is None and not s.progress.awaiting_promotion:
        held = gates.holding(spec, s)
        why = held[0] if held else None
        if s.stable_down_since is not None:
            why = f"stable {s.stable} is not serving"
        if why is None and not s.candidate_ready:
            why = f"candidate {s.candidate} is not ready"
    if why is None:
        s.held_since = None
        return
    if s.held_since is None or s.held_since > w.now:
        s.held_since = w.now
    if spec.progress_deadline and w.now - s.held_since > spec.progress_deadline:
        w.finish(
            Phase.ROLLED_BACK,
            Reason.PROGRESS_DEADLINE,
            f"no progress for {format_duration(round(w.now - s.held_since))} "
            f"(progressDeadline {format_duration(spec.progress_deadline)}): {why}",
        )


def hold_on_error(state: RolloutState, message: str, now: float) -> Transition:
    """The edge's last line of defence: something failed unexpectedly inside one reconcile (a bug,
    an answer nobody foresaw). The rollout holds: phase Paused (reason ReconcileError), weights as
    they are, no action; a Warning event says what failed (once while the same error repeats).
    The next step that goes through returns it to Progressing. A finished rollout keeps its phase."""
    last = next((e for e in reversed(state.events) if e.reason == Reason.RECONCILE_ERROR), None)
    held = state.done or state.phase == Phase.PENDING
    held = held or (state.phase == Phase.PAUSED and state.reason == Reason.RECONCILE_ERROR)
    if held and last is not None and last.message == message:
        return Transition(state=state, actions=(), changed=False)
    s = state.model_copy()
    s.revision, s.updated_at = state.revision + 1, now
    event = Event(
        at=now, type=EventType.WARNING, reason=Reason.RECONCILE_ERROR, message=message, revision=s.revision
    )
    s.events = [*state.events, event][-MAX_EVENTS:]
    if not s.done:
        if s.phase != Phase.PENDING:  # a rollout that never started stays Pending, saying why
            s.phase, s.reason = Phase.PAUSED, Reason.RECONCILE_ERROR
        s.message = f"held: {message}"
    return Transition(state=s, actions=(), events=(event,), changed=True)


def _set_phase(spec: RolloutSpec, w: _Step, obs: Observations) -> None:
    """Progressing or Paused: paused by the user or the inconclusive limit, waiting for promote,
    or - by itself, until the provider answers again - because a metric cannot be measured."""
    s = w.s
    unavailable = gates.unavailable(spec, s)
    if s.pause is not None:
        phase, reason, message = Phase.PAUSED, s.pause.reason, s.pause.message
    elif s.progress.awaiting_promotion:
        phase, reason, message = (
            Phase.PAUSED,
            Reason.WAITING_FOR_PROMOTION,
            f"{s.progress.step_name}: waiting for promote",
        )
    elif s.reason == Reason.RECONCILE_ERROR and s.phase == Phase.PAUSED and obs.edge_error:
        phase, reason, message = Phase.PAUSED, s.reason, s.message  # until an iteration goes through
    elif s.stable_down_since is not None:
        phase, reason = Phase.PAUSED, Reason.STABLE_UNAVAILABLE
        message = f"paused: stable {s.stable} is not serving; resumes by itself when it is back"
    elif unavailable is not None:
        phase, reason, message = Phase.PAUSED, Reason.METRICS_UNAVAILABLE, unavailable
    else:
        phase, reason, message = Phase.PROGRESSING, s.reason, s.message
        if s.phase == Phase.PAUSED:
            reason, message = Reason.RESUMED, f"progressing: {s.progress.step_name}"
            if s.reason == Reason.METRICS_UNAVAILABLE:
                w.note(EventType.NORMAL, Reason.RESUMED, "metrics can be measured again; progressing")
            elif s.reason == Reason.STABLE_UNAVAILABLE:
                pass  # StableRecovered said it
            elif s.reason == Reason.RECONCILE_ERROR:
                w.note(EventType.NORMAL, Reason.RESUMED, "the edge reconciles again; progressing")
    if phase != s.phase or (phase == Phase.PAUSED and reason != s.reason):
        if reason == Reason.METRICS_UNAVAILABLE:
            w.note(EventType.WARNING, Reason.METRICS_UNAVAILABLE, message)
        s.phase, s.reason, s.message = phase, reason, message
    elif phase == Phase.PAUSED:
        s.message = message  # e.g. the count of errors in a row


def _commit(spec: RolloutSpec, old: RolloutState, w: _Step) -> Transition:
    s = w.s
    changed = bool(w.notes) or s != old
    events: list[Event] = []
    if changed:
        s.revision = old.revision + 1
        s.updated_at = w.now
        events = [
            Event(at=w.now, type=n.type, reason=n.reason, message=n.message, revision=s.revision)
            for n in w.notes
        ]
        s.events = [*s.events, *events][-MAX_EVENTS:]
    return Transition(
        state=s if changed else old, actions=_actions(spec, s, w.now), events=tuple(events), changed=changed
    )
