"""Canary: move user traffic to the candidate step by step, gated on analysis.

Steps come from ``strategy.canary.steps`` (setWeight / pause / analysis) or are generated from
``stepWeight``, ``maxWeight`` and ``stepInterval`` (setWeight w, analysis for stepInterval, ...
up to maxWeight). After the last step the candidate is promoted (100%, the new stable).

Rules:
- a setWeight step is done when the router reports the new routes applied;
- a pause with a duration is done when the time has passed; without one it waits for `promote`
  (phase Paused, ``awaiting_promotion``);
- an analysis step is done when its duration has passed and every metric was measured at least
  ``intervals`` times (1 if not given) since the step started, newest verdict Successful;
- no step ever completes while the analysis gate holds (a metric Failed under its limit,
  Inconclusive, or Error — e.g. Prometheus unreachable), so weights are held;
- analysis runs from the moment the router reports candidate traffic to the end;
- promotion needs the newest verdict of every metric Successful;
- a `promote` command completes the current step (one step per command).
Who calls it: the engine, through the strategy registry.
"""

from __future__ import annotations

from rollout.model import EventType, Progress, Reason
from rollout.routers.base import Routes
from rollout.spec import CanaryStep, CanaryStrategy, Pause, RolloutSpec, StepAnalysis, format_duration
from rollout.strategies.base import Context, Decision, DecisionKind, Gate, Note, Plan, start_step

_plans: dict[int, tuple[CanaryStrategy, tuple[CanaryStep, ...], tuple[str, ...]]] = {}


def _plan_of(canary: CanaryStrategy) -> tuple[tuple[CanaryStep, ...], tuple[str, ...]]:
    """Steps and their names, worked out once per (frozen) spec object."""
    hit = _plans.get(id(canary))
    if hit is not None and hit[0] is canary:  # the entry keeps the object alive: ids stay unique
        return hit[1], hit[2]
    steps = tuple(canary_steps(canary))
    names = tuple(describe(s) for s in steps)
    if len(_plans) >= 64:
        _plans.clear()
    _plans[id(canary)] = (canary, steps, names)
    return steps, names


def canary_steps(canary: CanaryStrategy) -> list[CanaryStep]:
    """The explicit steps, or those generated from stepWeight/maxWeight/stepInterval."""
    if canary.steps is not None:
        return list(canary.steps)
    assert canary.step_weight is not None  # validated by the spec
    weights: list[int] = []
    w = canary.step_weight
    while w < canary.max_weight:
        weights.append(w)
        w += canary.step_weight
    weights.append(canary.max_weight)
    out: list[CanaryStep] = []
    for w in weights:
        out.append(CanaryStep(set_weight=w))
        out.append(CanaryStep(analysis=StepAnalysis(duration=canary.step_interval)))
    return out


def describe(step: CanaryStep) -> str:
    if step.set_weight is not None:
        return f"setWeight {step.set_weight}"
    if step.pause is not None:
        d = step.pause.duration
        return "pause until promoted" if d is None else f"pause {format_duration(d)}"
    a = step.analysis
    assert a is not None
    parts = []
    if a.duration is not None:
        parts.append(format_duration(a.duration))
    if a.intervals is not None:
        parts.append(f"{a.intervals} intervals")
    return "analysis " + (", ".join(parts) or "1 interval")


def _gives_traffic(routes: Routes | None) -> bool:
    return routes is not None and (routes.candidate_weight > 0 or bool(routes.match))


class CanaryPlanner:
    name = "canary"

    def step_names(self, spec: RolloutSpec) -> list[str]:
        assert spec.strategy.canary is not None
        return [describe(s) for s in canary_steps(spec.strategy.canary)]

    def _routes(self, canary: CanaryStrategy, weight: int) -> Routes:
        return Routes(candidate_weight=weight, sticky=canary.sticky if weight else None)

    def _step_done(self, ctx: Context, step: CanaryStep, progress: Progress, routes: Routes) -> bool:
        if step.set_weight is not None:
            return ctx.applied(routes)
        if step.pause is not None:
            return self._pause_done(ctx, step.pause, progress)
        a = step.analysis
        assert a is not None
        if a.duration is not None and ctx.elapsed(progress) < a.duration:
            return False
        intervals = a.intervals or 1
        if not ctx.metric_names or ctx.state.analysis_started_at is None:
            # nothing to measure (no metrics, or no candidate traffic yet): the step is a wait
            return ctx.elapsed(progress) >= (a.duration or intervals * ctx.spec.analysis.interval)
        return ctx.measured_since(progress, intervals)

    def _pause_done(self, ctx: Context, pause: Pause, progress: Progress) -> bool:
        return pause.duration is not None and ctx.elapsed(progress) >= pause.duration

    def plan(self, ctx: Context) -> Plan:
        canary = ctx.spec.strategy.canary
        assert canary is not None
        steps, names = _plan_of(canary)
        notes: list[Note] = []
        progress = ctx.state.progress
        routes = ctx.state.desired_routes
        if progress.step_started_at is None:
            progress, note = start_step(ctx, progress, 0, names[0], len(steps))
            notes.append(note)
        promote = ctx.promote_requested
        # complete as many steps as are done now (a setWeight is never done in the step it starts)
        while progress.step_index < len(steps):
            step = steps[progress.step_index]
            if step.set_weight is not None:
                routes = self._routes(canary, step.set_weight)
            waiting = step.pause is not None and step.pause.duration is None
            progress = progress.model_copy(update={"awaiting_promotion": waiting and not promote})
            done = self._step_done(ctx, step, progress, routes)
            if done and ctx.gate != Gate.PASSING:
                done = False  # hold: never move on while a metric is bad or unmeasurable
            if promote and step.set_weight is None:
                done, promote = True, False  # the user's promote overrides waits and holds
                notes.append(
                    Note(
                        EventType.NORMAL,
                        Reason.PROMOTE_REQUESTED,
                        f"{names[progress.step_index]} ended by promote",
                    )
                )
            if not done:
                break
            nxt = progress.step_index + 1
            progress, note = start_step(
                ctx, progress, nxt, names[nxt] if nxt < len(steps) else "promote", len(steps)
            )
            notes.append(note)
        if promote and progress.step_index < len(steps):
            notes.append(
                Note(
                    EventType.WARNING,
                    Reason.COMMAND_IGNORED,
                    f"promote ignored during {names[progress.step_index]}: send it again once the weight is applied",
                )
            )
        analysis = (
            bool(ctx.metric_names)
            and _gives_traffic(routes)
            and (ctx.state.analysis_started_at is not None or _gives_traffic(ctx.routes_applied))
        )
        decision = None
        if progress.step_index >= len(steps) and ctx.gate == Gate.PASSING:
            if ctx.state.analysis_started_at is None or ctx.all_latest_successful() or not ctx.metric_names:
                decision = Decision(
                    DecisionKind.PROMOTE, Reason.PROMOTED, f"all {len(steps)} canary steps passed"
                )
        if progress.awaiting_promotion and not ctx.state.progress.awaiting_promotion:
            notes.append(
                Note(
                    EventType.NORMAL,
                    Reason.WAITING_FOR_PROMOTION,
                    f"step {names[progress.step_index]}: run `rollout promote` to go on",
                )
            )
        return Plan(
            progress=progress, routes=routes, analysis=analysis, decision=decision, notes=tuple(notes)
        )
