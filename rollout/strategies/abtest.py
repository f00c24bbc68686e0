"""A/B test: split users between the versions, then promote the one *proven* better on one metric.

One step: ``weight`` percent of users go to the candidate — sticky per user when ``sticky`` names
a header or cookie (the router hashes it), and requests matching ``match`` always go to the
candidate. Once the router reports the split applied, the analysis runs; the deciding metric
(``abTest.metric``) is measured over everything since the experiment started, and the engine
reduces each sample to a number per version (its headline: error rate, accuracy, p99 ...) and
runs the significance test of ``rollout.analysis.experiment``: an always-valid sequential test at
``confidence`` (0.95 by default), so looking at every interval does not inflate false winners.
Once both versions have ``minSamples`` observations and the test proves a difference, the better
version by the metric's ``direction`` wins: the candidate -> Promoted (CandidateWon); stable ->
RolledBack (StableWon). Until then the experiment goes on, whoever leads. At ``maxDuration`` (or
``maxSamples`` per version) without a proven winner it ends by ``onInconclusive`` (keep-stable:
RolledBack; promote-candidate: Promoted), reason ExperimentInconclusive, and the message says
"no significant difference". The other metrics guard as usual (failures roll back), and no
decision is taken while the gate holds. `promote` picks the candidate.
Who calls it: the engine, through the strategy registry.
"""

from __future__ import annotations

from rollout.model import EventType, Experiment, Reason
from rollout.routers.base import Routes
from rollout.spec import ABTestStrategy, InconclusiveOutcome, RolloutSpec, format_duration
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


def _evidence(e: Experiment, confidence: float) -> str:
    if e.lower is None or e.upper is None:
        return ""
    return f"; candidate - stable in [{e.lower:+.4g}, {e.upper:+.4g}] ({100 * confidence:.4g}% always-valid)"


class ABTestPlanner:
    name = "ab_test"

    def step_names(self, spec: RolloutSpec) -> list[str]:
        ab = spec.strategy.ab_test
        assert ab is not None
        how = f"{ab.weight}% to the candidate" + (" (sticky)" if ab.sticky else "")
        if ab.match:
            how += f", {len(ab.match)} header/cookie match(es)"
        cap = format_duration(ab.max_duration)
        if ab.max_samples is not None:
            cap += f" or {ab.max_samples} samples"
        return [
            f"experiment: {how}; winner on {ab.metric} when significant at {100 * ab.confidence:.4g}% "
            f"(after {ab.min_samples} samples), at most {cap}"
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
        capped = ab.max_samples is not None and exp is not None and exp.samples >= ab.max_samples
        if ctx.promote_requested and running:
            summary = _summary(exp) if exp is not None else "no samples yet"
            decision = Decision(
                DecisionKind.PROMOTE, Reason.PROMOTED, f"candidate promoted by the user ({summary})"
            )
        elif running and enough and ctx.gate == Gate.PASSING and exp is not None and exp.winner is not None:
            why = f"{_summary(exp)}{_evidence(exp, ab.confidence)}"
            if exp.winner == "candidate":
                decision = Decision(DecisionKind.PROMOTE, Reason.CANDIDATE_WON, f"candidate won on {why}")
            else:
                decision = Decision(DecisionKind.ROLL_BACK, Reason.STABLE_WON, f"stable won on {why}")
        elif running and (since_applied(ctx, progress) >= ab.max_duration or capped):
            decision = self._inconclusive(ab, exp, capped, ctx.gate == Gate.PASSING)
        return Plan(
            progress=progress,
            routes=routes,
            analysis=running and bool(ctx.metric_names),
            decision=decision,
            notes=tuple(notes),
        )

    def _inconclusive(
        self, ab: ABTestStrategy, exp: Experiment | None, capped: bool, passing: bool
    ) -> Decision:
        """The end without a proven winner, as ``onInconclusive`` says (never promoting while
        another metric holds the gate)."""
        if exp is None:
            why = f"no comparable samples of {ab.metric}"
        elif exp.samples < ab.min_samples:
            why = f"only {exp.samples:.0f} of {ab.min_samples} samples ({_summary(exp)})"
        elif exp.winner is None:
            why = f"no significant difference at {100 * ab.confidence:.4g}% ({_summary(exp)}{_evidence(exp, ab.confidence)})"
        else:
            why = f"the analysis still holds ({_summary(exp)})"
        cap = f"maxSamples {ab.max_samples}" if capped else f"maxDuration {format_duration(ab.max_duration)}"
        if ab.on_inconclusive == InconclusiveOutcome.PROMOTE_CANDIDATE and passing:
            kind, outcome = DecisionKind.PROMOTE, "candidate promoted (onInconclusive: promote-candidate)"
        else:
            kind, outcome = DecisionKind.ROLL_BACK, "stable kept"
        return Decision(kind, Reason.EXPERIMENT_INCONCLUSIVE, f"no winner after {cap}: {why}; {outcome}")
