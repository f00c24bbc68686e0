"""Shadow: mirror a share of live traffic to the candidate; clients only ever get stable's answer.

One step: routes keep every user request on stable (candidate weight 0) and mirror
``mirrorPercent`` percent of them to the candidate, whose answers are discarded. The analysis
(latency, errors, agreement with stable, prediction shift...) runs once the router reports the
mirror applied. After ``duration`` with every metric's newest verdict Successful the shadow has
passed: Promoted when ``promoteOnSuccess`` (all traffic moves to the candidate), otherwise
Succeeded (mirror removed, candidate stopped, stable keeps serving). A failure rolls back, which
here only removes the mirror. `promote` ends the shadow as passed.
Who calls it: the engine, through the strategy registry.
"""

from __future__ import annotations

from rollout.model import Reason
from rollout.routers.base import Routes
from rollout.spec import RolloutSpec, format_duration
from rollout.strategies.base import (
    Context,
    Decision,
    DecisionKind,
    Gate,
    Note,
    Plan,
    since_applied,
    start_step,
    track_applied,
)


class ShadowPlanner:
    name = "shadow"

    def step_names(self, spec: RolloutSpec) -> list[str]:
        sh = spec.strategy.shadow
        assert sh is not None
        return [f"mirror {sh.mirror_percent}% for {format_duration(sh.duration)}"]

    def plan(self, ctx: Context) -> Plan:
        sh = ctx.spec.strategy.shadow
        assert sh is not None
        notes: list[Note] = []
        progress = ctx.state.progress
        if progress.step_started_at is None:
            progress, note = start_step(ctx, progress, 0, self.step_names(ctx.spec)[0], 1)
            notes.append(note)
        routes = Routes(candidate_weight=0, mirror_percent=sh.mirror_percent)
        progress = track_applied(ctx, progress, routes)
        mirrored = progress.applied_at is not None
        done = (
            mirrored
            and since_applied(ctx, progress) >= sh.duration
            and (not ctx.metric_names or ctx.measured_since(progress))
            and ctx.gate == Gate.PASSING
        )
        decision = None
        if done or (ctx.promote_requested and mirrored):
            how = "ended by promote" if not done else f"passed after {format_duration(sh.duration)}"
            if sh.promote_on_success:
                decision = Decision(
                    DecisionKind.PROMOTE, Reason.SHADOW_PASSED, f"shadow {how}; promoting the candidate"
                )
            else:
                decision = Decision(
                    DecisionKind.SUCCEED,
                    Reason.SHADOW_PASSED,
                    f"shadow {how}; stable keeps serving (promoteOnSuccess is false)",
                )
        return Plan(
            progress=progress,
            routes=routes,
            analysis=mirrored and bool(ctx.metric_names),
            decision=decision,
            notes=tuple(notes),
        )
