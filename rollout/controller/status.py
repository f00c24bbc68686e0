"""ModelRollout ``.status`` <-> the engine's ``RolloutState``, and user commands as annotations.

Pure functions, no API calls. The status carries what people and printer columns read (phase,
message, current step, weights, conditions, per-metric analysis, a bounded history of
transitions) and, under ``state``, the whole ``RolloutState`` so that a restarted controller
resumes exactly where the last one stopped (the engine then repeats, never doubles, the step).

Commands (promote, promote-full, abort, pause, resume) are written by the CLI as annotations
``command.bento-rollout.io/<id>: <kind>``; ``<id>`` starts with the time in milliseconds so the
keys sort in the order they were given. The engine applies each id once (``applied_commands``);
the controller then removes the annotation. One annotation per command, so two quick commands
never overwrite each other. Who calls it: rollout.controller.reconciler and rollout.cli.cluster.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from rollout.actions import Command, CommandKind
from rollout.errors import StateError, UsageError
from rollout.model import Phase, RolloutState

COMMAND_PREFIX = "command.bento-rollout.io/"
HISTORY_LIMIT = 30
Obj = dict[str, Any]


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(ctype: str, ok: bool, reason: str, message: str, now: float, old: dict[str, Obj]) -> Obj:
    status = "True" if ok else "False"
    prev = old.get(ctype)
    since = prev["lastTransitionTime"] if prev and prev.get("status") == status else iso(now)
    return {
        "type": ctype,
        "status": status,
        "reason": reason or "None",
        "message": message,
        "lastTransitionTime": since,
    }


def conditions(state: RolloutState, now: float, old: list[Obj] | None = None) -> list[Obj]:
    """Kubernetes-style conditions; ``lastTransitionTime`` moves only when a status flips."""
    prev = {c.get("type", ""): c for c in old or []}
    p = state.phase
    reason, msg = state.reason or p.value, state.message
    return [
        _condition(
            "CandidateReady",
            state.candidate_ready,
            "CandidateReady" if state.candidate_ready else "CandidateNotReady",
            "",
            now,
            prev,
        ),
        _condition(
            "StableReady",
            state.stable_down_since is None,
            "StableReady" if state.stable_down_since is None else "StableUnavailable",
            "" if state.stable_down_since is None else f"not serving since {iso(state.stable_down_since)}",
            now,
            prev,
        ),
        _condition("Progressing", not p.terminal and p != Phase.PAUSED, reason, msg, now, prev),
        _condition(
            "Paused",
            p == Phase.PAUSED,
            reason if p == Phase.PAUSED else "NotPaused",
            msg if p == Phase.PAUSED else "",
            now,
            prev,
        ),
        _condition(
            "Completed",
            p.terminal,
            reason if p.terminal else "InProgress",
            msg if p.terminal else "",
            now,
            prev,
        ),
        _condition(
            "Succeeded",
            state.succeeded,
            reason if p.terminal else "InProgress",
            msg if p.terminal else "",
            now,
            prev,
        ),
    ]


def status_from_state(
    state: RolloutState, now: float, generation: int | None = None, old: Obj | None = None
) -> Obj:
    """The whole ``.status`` for ``state``."""
    routes = state.desired_routes
    analysis = []
    for m in state.metrics.values():
        last = m.measurements[-1] if m.measurements else None
        analysis.append(
            {
                "name": m.name,
                "latest": m.latest,
                "value": last.value if last else None,
                "message": last.message if last else "",
                "count": m.count,
                "successful": m.successful,
                "failed": m.failed,
                "inconclusive": m.inconclusive,
                "errors": m.errors,
            }
        )
    history = [
        {
            "time": iso(e.at),
            "type": e.type.value,
            "reason": e.reason,
            "message": e.message,
            "revision": e.revision,
        }
        for e in state.events[-HISTORY_LIMIT:]
    ]
    out: Obj = {
        "phase": state.phase.value,
        "reason": state.reason,
        "message": state.message,
        "currentStep": state.progress.step_index,
        "stepName": state.progress.step_name,
        "candidateWeight": routes.candidate_weight,
        "weights": {
            "stable": routes.stable_weight,
            "candidate": routes.candidate_weight,
            "mirror": routes.mirror_percent,
        },
        "stable": state.stable,
        "candidate": state.candidate,
        "revision": state.revision,
        "conditions": conditions(state, now, (old or {}).get("conditions")),
        "analysis": analysis,
        "history": history,
        "startedAt": iso(state.started_at),
        "finishedAt": iso(state.finished_at),
        "state": state.model_dump(mode="json"),
    }
    handoff = (old or {}).get("handoff")  # written by handoff.py; kept while it is this rollout's
    if handoff and state.phase == Phase.PROMOTED and handoff.get("model") == state.candidate:
        out["handoff"] = handoff
    if generation is not None:
        out["observedGeneration"] = generation
    return out


def state_from_status(status: Obj | None) -> RolloutState | None:
    """The saved engine state, or None when the rollout has not started. StateError if unreadable."""
    raw = (status or {}).get("state")
    if not raw:
        return None
    try:
        return RolloutState.model_validate(raw)
    except ValidationError as exc:
        raise StateError(
            f"status.state is not a rollout state this controller can read: {exc.errors()[0]['msg']}"
        ) from None


# --- commands ------------------------------------------------------------------------------------


def new_command_id(now: float | None = None) -> str:
    return f"{int((now if now is not None else time.time()) * 1000)}-{uuid.uuid4().hex[:8]}"


def command_annotation(kind: str, command_id: str | None = None) -> tuple[str, dict[str, str]]:
    """(id, annotations) for a command; UsageError for an unknown kind."""
    try:
        CommandKind(kind)
    except ValueError:
        raise UsageError(
            f"unknown command {kind!r}; use one of {', '.join(k.value for k in CommandKind)}"
        ) from None
    cid = command_id or new_command_id()
    return cid, {COMMAND_PREFIX + cid: kind}


def commands_from_annotations(annotations: dict[str, str] | None) -> tuple[Command, ...]:
    """The pending commands, oldest first. Unknown kinds are ignored (reported by the caller)."""
    out = []
    for key in sorted(k for k in annotations or {} if k.startswith(COMMAND_PREFIX)):
        value = (annotations or {})[key]
        try:
            out.append(Command(id=key.removeprefix(COMMAND_PREFIX), kind=CommandKind(value)))
        except ValueError:
            continue
    return tuple(out)


def applied_command_keys(annotations: dict[str, str] | None, state: RolloutState) -> list[str]:
    """Annotation keys of commands the engine has applied: the controller may remove them."""
    done = set(state.applied_commands)
    return [
        k
        for k in annotations or {}
        if k.startswith(COMMAND_PREFIX) and k.removeprefix(COMMAND_PREFIX) in done
    ]
