"""Blue/green: preview the candidate with no user traffic, switch all traffic at once, watch it,
then retire the old version after a delay during which switching back is instant.

Steps (``Progress.step_index``):
0. preview — every user is answered by stable (candidate weight 0). The candidate sees
   ``previewMirrorPercent`` of live traffic as a mirror (its answers are discarded), and requests
   that carry the preview header ``X-Rollout-Preview: 1`` (``PREVIEW_MATCH``: smoke tests — never
   ordinary users); the analysis runs on both. With neither (mirror 0 and no preview requests)
   the metrics stay Inconclusive and the preview waits. Done when
   ``previewDuration`` has passed and every metric has a fresh Successful measurement. A failure
   here rolls back without the candidate ever having served a user.
1. awaiting promotion — only when ``autoPromote`` is false: Paused until `promote`.
2. post-promotion — routes 100% candidate in one atomic change; once the router reports it,
   ``switched_at`` is set and the post-promotion analysis runs for ``postPromotionDuration``.
   A failure (or abort) switches every request back to stable at once: it is still running.
3. scale-down delay — the old version is kept warm (``KeepWarm``) for ``scaleDownDelay``;
   then the rollout is Promoted and the old version stops.
No step completes while the analysis gate holds; `promote` ends the current step.
Who calls it: the engine, through the strategy registry.
"""

from __future__ import annotations

from rollout.model import EventType, Progress, Reason
from rollout.routers.base import Routes
from rollout.spec import HeaderMatch, RolloutSpec, format_duration
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

PREVIEW, AWAITING, POST_PROMOTION, SCALE_DOWN = range(4)
PREVIEW_HEADER = "X-Rollout-Preview"
PREVIEW_MATCH = HeaderMatch(header=PREVIEW_HEADER, value="1")
PREVIEW_ROUTES = Routes(candidate_weight=0, match=(PREVIEW_MATCH,))  # users: stable; preview: candidate


def preview_routes(mirror_percent: int) -> Routes:
    """Users on stable; a mirror of live traffic and preview-header requests reach the candidate."""
    return Routes(candidate_weight=0, mirror_percent=mirror_percent, match=(PREVIEW_MATCH,))


ALL_CANDIDATE = Routes(candidate_weight=100)


class BlueGreenPlanner:
    name = "blue_green"

    def step_names(self, spec: RolloutSpec) -> list[str]:
        bg = spec.strategy.blue_green
        assert bg is not None
        return [
            f"preview {format_duration(bg.preview_duration)} (no user traffic)",
            "wait for promote" if not bg.auto_promote else "auto-promote",
            f"switch + post-promotion analysis {format_duration(bg.post_promotion_duration)}",
            f"keep old version warm {format_duration(bg.scale_down_delay)}",
        ]

    def plan(self, ctx: Context) -> Plan:
        bg = ctx.spec.strategy.blue_green
        assert bg is not None
        names = self.step_names(ctx.spec)
        notes: list[Note] = []
        progress = ctx.state.progress
        if progress.step_started_at is None:
            progress, note = start_step(ctx, progress, PREVIEW, names[PREVIEW], len(names))
            notes.append(note)
        promote = ctx.promote_requested
        passing = ctx.gate == Gate.PASSING
        metrics = bool(ctx.metric_names)
        decision: Decision | None = None

        def go(index: int) -> None:
            nonlocal progress
            progress, note = start_step(ctx, progress, index, names[index], len(names))
            notes.append(note)

        i = progress.step_index
        if i == PREVIEW:
            done = ctx.elapsed(progress) >= bg.preview_duration and (
                not metrics or ctx.measured_since(progress)
            )
            if promote or (done and passing):
                go(POST_PROMOTION if bg.auto_promote or promote else AWAITING)
                promote = False
        elif i == AWAITING and promote:
            go(POST_PROMOTION)
            promote = False
        elif i == POST_PROMOTION:
            progress = self._switch(ctx, progress, notes)
            done = (
                progress.switched_at is not None
                and since_applied(ctx, progress) >= bg.post_promotion_duration
                and (not metrics or ctx.measured_since(progress))
            )
            if progress.switched_at is not None and (promote or (done and passing)):
                go(SCALE_DOWN)
                progress = progress.model_copy(update={"warm_until": ctx.now + bg.scale_down_delay})
                notes.append(
                    Note(
                        EventType.NORMAL,
                        Reason.SCALE_DOWN_DELAY,
                        f"keeping {ctx.state.stable} warm until t={progress.warm_until:g} "
                        f"({format_duration(bg.scale_down_delay)}); abort switches back instantly",
                    )
                )
        elif i == SCALE_DOWN:
            assert progress.warm_until is not None
            if promote or ctx.now >= progress.warm_until:
                # the analysis ran to the end, or a user's `promote` cut it short: say which
                analysis = "passed" if ctx.all_latest_successful() else "cut short by `promote`"
                decision = Decision(
                    DecisionKind.PROMOTE,
                    Reason.PROMOTED,
                    f"blue/green: switched at t={progress.switched_at:g}, post-promotion analysis "
                    f"{analysis}, {ctx.state.stable} retired",
                )
        if progress.step_index == AWAITING and not progress.awaiting_promotion:
            progress = progress.model_copy(update={"awaiting_promotion": True})
            notes.append(
                Note(
                    EventType.NORMAL,
                    Reason.WAITING_FOR_PROMOTION,
                    "preview passed; run `rollout promote` to switch traffic to the candidate",
                )
            )
        in_preview = progress.step_index == PREVIEW
        if (progress.preview_header is not None) != in_preview:
            progress = progress.model_copy(update={"preview_header": PREVIEW_HEADER if in_preview else None})
        preview = preview_routes(bg.preview_mirror_percent)
        routes = preview if progress.step_index in (PREVIEW, AWAITING) else ALL_CANDIDATE
        if progress.step_index in (POST_PROMOTION, SCALE_DOWN):
            progress = self._switch(ctx, progress, notes)
        analysis = metrics and (
            progress.step_index == PREVIEW
            or (progress.step_index == POST_PROMOTION and progress.switched_at is not None)
        )
        return Plan(
            progress=progress, routes=routes, analysis=analysis, decision=decision, notes=tuple(notes)
        )

    def _switch(self, ctx: Context, progress: Progress, notes: list[Note]) -> Progress:
        """Note the moment the router reports all traffic on the candidate."""
        progress = track_applied(ctx, progress, ALL_CANDIDATE)
        if progress.switched_at is None and progress.applied_at is not None:
            progress = progress.model_copy(update={"switched_at": progress.applied_at})
            notes.append(
                Note(
                    EventType.NORMAL,
                    Reason.SWITCHED,
                    f"all user traffic switched to {ctx.state.candidate}; {ctx.state.stable} stays warm",
                )
            )
        return progress
