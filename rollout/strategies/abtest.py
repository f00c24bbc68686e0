"""A/B test: split users between the versions, then promote whichever wins on one metric.

One step: ``weight`` percent of users go to the candidate — sticky per user when ``sticky`` names
a header or cookie (the router hashes it), and requests matching ``match`` always go to the
candidate. Once the router reports the split applied, the analysis runs; the deciding metric
(``abTest.metric``) is measured over everything since the experiment started, and the engine
reduces each sample to a number per version (its headline: error rate, accuracy, p99 ...).
When both versions have at least ``minSamples`` observations, the better one by the metric's
``direction`` wins: the candidate -> Promoted (CandidateWon); stable -> RolledBack (StableWon,
"stable won"). A tie keeps the experiment going. At ``maxDuration`` without a winner (too few
samples, a tie, or a sample with no per-version number) it ends RolledBack with reason
ExperimentInconclusive. The other metrics guard as usual (failures roll back), and no decision is
taken while the gate holds. `promote` picks the candidate.
Who calls it: the engine, through the strategy registry.
"""

from __future__ import annotations

from rollout.model import EventType, Experiment, Reason
from rollout.routers.base import Routes
from rollout.spec import ABTestStrategy, RolloutSpec, format_duration
from rollout.strategies.base import (
    Context,
    Decision,
    DecisionKind,
    Gate,
    Note,
    Plan,
    experiment_from,
    since_applied,
    start_step,
    track_applied,
)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def _summary(e: Experiment) -> str:
    return (
        f"{e.metric}: candidate {_fmt(e.candidate_value)} vs stable {_fmt(e.stable_value)} "
        f"after {e.samples:.0f} samples per version"
    )


class ABTestPlanner:
    name = "ab_test"

    def step_names(self, spec: RolloutSpec) -> list[str]:
        ab = spec.strategy.ab_test
        assert ab is not None
        how = f"{ab.weight}% to the candidate" + (" (sticky)" if ab.sticky else "")
        if ab.match:
            how += f", {len(ab.match)} header/cookie match(es)"
        return [
            f"experiment: {how}; winner on {ab.metric} after {ab.min_samples} samples, "
            f"at most {format_duration(ab.max_duration)}"
        ]

    def routes(self, ab: ABTestStrategy) -> Routes:
        return Routes(candidate_weight=ab.weight, sticky=ab.sticky, match=tuple(ab.match or ()))

    def plan(self, ctx: Context) -> Plan:
        ab = ctx.spec.strategy.ab_test
        assert ab is not None
        notes: list[Note] = []
        progress = ctx.state.progress
        if progress.step_started_at is None:
            progress, note = start_step(ctx, progress, 0, self.step_names(ctx.spec)[0], 1)
            notes.append(note)
        routes = self.routes(ab)
        progress = track_applied(ctx, progress, routes)
        running = progress.applied_at is not None
        cmp = ctx.comparisons.get(ab.metric)
        exp = progress.experiment
        if cmp is not None:
            exp = experiment_from(ab.metric, cmp, ctx.now)
            old = progress.experiment
            if exp.samples >= ab.min_samples and (old is None or old.samples < ab.min_samples):
                notes.append(
                    Note(EventType.NORMAL, Reason.EXPERIMENT_UPDATED, f"minSamples reached: {_summary(exp)}")
                )
            progress = progress.model_copy(update={"experiment": exp})
        decision = None
        enough = exp is not None and exp.samples >= ab.min_samples
        if ctx.promote_requested and running:
            summary = _summary(exp) if exp is not None else "no samples yet"
            decision = Decision(
                DecisionKind.PROMOTE, Reason.PROMOTED, f"candidate promoted by the user ({summary})"
            )
        elif running and enough and ctx.gate == Gate.PASSING and exp is not None and exp.leader is not None:
            if exp.leader == "candidate":
                decision = Decision(
                    DecisionKind.PROMOTE, Reason.CANDIDATE_WON, f"candidate won on {_summary(exp)}"
                )
            else:
                decision = Decision(
                    DecisionKind.ROLL_BACK, Reason.STABLE_WON, f"stable won on {_summary(exp)}"
                )
        elif running and since_applied(ctx, progress) >= ab.max_duration:
            if exp is None:
                why = f"no comparable samples of {ab.metric}"
            elif not enough:
                why = f"only {exp.samples:.0f} of {ab.min_samples} samples ({_summary(exp)})"
            elif exp.leader is None:
                why = f"no difference ({_summary(exp)})"
            else:
                why = f"the analysis still holds ({_summary(exp)})"
            decision = Decision(
                DecisionKind.ROLL_BACK,
                Reason.EXPERIMENT_INCONCLUSIVE,
                f"no winner after maxDuration {format_duration(ab.max_duration)}: {why}",
            )
        return Plan(
            progress=progress,
            routes=routes,
            analysis=running and bool(ctx.metric_names),
            decision=decision,
            notes=tuple(notes),
        )
