"""A rollout's state reduced to what a person (or ``ModelRollout.status``) wants to see.

``summarize(spec, state)`` gives a JSON-ready dict with camelCase keys: phase and reason, the
current step of the strategy's steps, the desired routes (weights, mirror, match, sticky), per
metric the newest verdict and value with its counts, the A/B experiment, and the latest events.
Pure: no I/O. Who calls it: ``rollout status`` (CLI), the Kubernetes controller (status
subresource), the demo's report.
"""

from __future__ import annotations

from typing import Any

from rollout.model import RolloutState
from rollout.routers.base import Routes
from rollout.spec import RolloutSpec
from rollout.strategies import get_planner


def routes_view(routes: Routes) -> dict[str, Any]:
    return {
        "candidateWeight": routes.candidate_weight,
        "stableWeight": routes.stable_weight,
        "mirrorPercent": routes.mirror_percent,
        "match": [m.model_dump(by_alias=True, exclude_none=True) for m in routes.match],
        "sticky": routes.sticky.model_dump(by_alias=True, exclude_none=True) if routes.sticky else None,
    }


def summarize(spec: RolloutSpec, state: RolloutState, events: int = 10) -> dict[str, Any]:
    steps = get_planner(state.strategy).step_names(spec)
    p = state.progress
    metrics = []
    for m in spec.analysis.metrics:
        st = state.metrics.get(m.name)
        last = st.measurements[-1] if st and st.measurements else None
        metrics.append(
            {
                "name": m.name,
                "latest": st.latest if st else None,
                "value": last.value if last else None,
                "message": last.message if last else "",
                "measuredAt": last.at if last else None,
                "count": st.count if st else 0,
                "successful": st.successful if st else 0,
                "failed": st.failed if st else 0,
                "inconclusive": st.inconclusive if st else 0,
                "errors": st.errors if st else 0,
                "consecutiveFailed": st.consecutive_failed if st else 0,
                "consecutiveErrors": st.consecutive_errors if st else 0,
                "failureLimit": m.failure_limit,
                "nextDue": st.next_due if st else None,
            }
        )
    exp = p.experiment
    return {
        "phase": state.phase.value,
        "reason": state.reason,
        "message": state.message,
        "revision": state.revision,
        "strategy": state.strategy,
        "stable": state.stable,
        "candidate": state.candidate,
        "candidateReady": state.candidate_ready,
        "step": {
            "index": min(p.step_index, len(steps)),
            "total": len(steps),
            "name": p.step_name,
            "startedAt": p.step_started_at,
            "awaitingPromotion": p.awaiting_promotion,
        },
        "steps": steps,
        "routes": routes_view(state.desired_routes),
        "analysisRunning": state.analysis_started_at is not None,
        "metrics": metrics,
        "experiment": None
        if exp is None
        else {
            "metric": exp.metric,
            "samples": exp.samples,
            "candidate": exp.candidate_value,
            "stable": exp.stable_value,
            "leader": exp.leader,
            "winner": exp.winner,
            "lower": exp.lower,
            "upper": exp.upper,
        },
        "paused": None if state.pause is None else {"reason": state.pause.reason, "since": state.pause.since},
        "startedAt": state.started_at,
        "updatedAt": state.updated_at,
        "finishedAt": state.finished_at,
        "events": [
            {"at": e.at, "type": e.type.value, "reason": e.reason, "message": e.message}
            for e in state.events[-events:]
        ],
    }
