"""One rollout per service: which ModelRollout of a namespace may move a service's traffic.

Two ModelRollouts naming the same ``spec.service`` would fight over one routing object. So, among
the rollouts of a service that are not settled (settled: finished, and a promotion's hand-off to
stable complete), one **owns** the service: the one that has started, else the earliest by
(``creationTimestamp``, name). Every other one **waits**: phase Paused, reason ServiceBusy, a
message and ``.status.waitingFor`` naming the owner; it moves no traffic, does not even adopt the
routing object, and starts once the owner is settled. A waiting rollout still takes ``abort``
(it ends Aborted without touching traffic); deleting it leaves the routing alone.

A rollout annotated ``bento-rollout.io/supersede: "true"`` takes the service over instead: every
earlier unsettled rollout of the service is **superseded** - it aborts itself through the engine
(a command with a fixed id, so it is applied once; stable restored by its Finalize) - and the
superseding one waits until they are all settled, then starts. Of several superseding rollouts
the latest wins.

A settled rollout keeps re-applying its Finalize (the engine's contract) only while it is the
service's latest word: once another rollout of the service is unsettled, or settled later, it is
**quiet** (no routing, no hand-off), so it never undoes its successor's traffic.

Pure functions over the objects as listed (``rollout.k8s.client.KubeClient.list``); the
reconciler lists the namespace's ModelRollouts on every reconcile and holds a per-service lock
while it decides and acts, so two rollouts of one service never start in one controller at once.
Who calls it: rollout.controller.reconciler.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from rollout.actions import Command, CommandKind
from rollout.model import TERMINAL_PHASES, Phase, RolloutState

from .handoff import COMPLETE

Obj = dict[str, Any]
SUPERSEDE_ANNOTATION = "bento-rollout.io/supersede"
SERVICE_BUSY = "ServiceBusy"  # status.reason and Event reason of a rollout waiting for another
_TERMINAL = frozenset(p.value for p in TERMINAL_PHASES)


class TurnKind(StrEnum):
    OWN = "own"  # this rollout moves the service's traffic
    WAIT = "wait"  # another rollout owns the service: hold, move nothing
    SUPERSEDED = "superseded"  # a later rollout supersedes this one: abort (stable restored)
    QUIET = "quiet"  # settled, and the service has moved on: re-apply nothing


@dataclass(frozen=True)
class Turn:
    kind: TurnKind
    other: str | None = None  # the ModelRollout this turn is about
    other_uid: str = ""
    message: str = ""


@dataclass(frozen=True)
class Claim:
    """What one ModelRollout says about its service, read from its metadata and status."""

    name: str
    created: str  # creationTimestamp, RFC 3339 (sorts as text)
    uid: str
    phase: str
    settled: bool
    started: bool
    supersede: bool
    invalid: bool
    finished_at: float

    @property
    def order(self) -> tuple[str, str]:
        return (self.created, self.name)

    @property
    def finish_order(self) -> tuple[float, str, str]:
        return (self.finished_at, self.created, self.name)


def supersedes(obj: Obj) -> bool:
    annotations = obj.get("metadata", {}).get("annotations") or {}
    return str(annotations.get(SUPERSEDE_ANNOTATION, "")).strip().lower() == "true"


def claim_of(obj: Obj, state: RolloutState | None = None) -> Claim:
    """The claim of a listed ModelRollout; ``state``: its state as this reconcile sees it (for the
    rollout being reconciled, after a changed spec has started a new rollout)."""
    meta = obj["metadata"]
    status = obj.get("status") or {}
    raw = status.get("state") or {}
    phase = state.phase.value if state is not None else str(raw.get("phase") or Phase.PENDING.value)
    candidate = state.candidate if state is not None else raw.get("candidate")
    finished = state.finished_at if state is not None else raw.get("finished_at")
    handoff = status.get("handoff") or {}
    handing_off = (
        phase == Phase.PROMOTED.value
        and handoff.get("model") == candidate
        and handoff.get("phase") not in (None, COMPLETE)
    )
    return Claim(
        name=meta["name"],
        created=str(meta.get("creationTimestamp") or ""),
        uid=str(meta.get("uid") or ""),
        phase=phase,
        settled=phase in _TERMINAL and not handing_off,
        started=phase != Phase.PENDING.value and status.get("reason") != SERVICE_BUSY,
        supersede=supersedes(obj),
        invalid=status.get("phase") == "Invalid",
        finished_at=float(finished or 0.0),
    )


def claims_on(service: str, objs: list[Obj], me: str) -> list[Claim]:
    """The claims of the other ModelRollouts (not ``me``) of ``service`` among ``objs``."""
    return [
        claim_of(o)
        for o in objs
        if o["metadata"]["name"] != me and (o.get("spec") or {}).get("service") == service
    ]


def turn(me: Claim, others: list[Claim], service: str) -> Turn:
    """What ``me`` may do with ``service``'s traffic, given the other rollouts' claims."""
    others = [c for c in others if not c.invalid]
    if me.settled:
        later = [c for c in others if not c.settled or c.finish_order > me.finish_order]
        if later:
            c = later[0]
            return Turn(
                TurnKind.QUIET, c.name, c.uid, f"ModelRollout {c.name} has taken service {service} over"
            )
        return Turn(TurnKind.OWN)
    unsettled = [c for c in others if not c.settled]
    everyone = [me, *unsettled]
    superseding = [c for c in everyone if c.supersede]
    if superseding:
        owner = max(superseding, key=lambda c: c.order)
    else:
        owner = min(everyone, key=lambda c: (not c.started, c.order))
    if owner is me:
        earlier = sorted((c for c in unsettled if c.order < me.order), key=lambda c: c.order)
        if me.supersede and earlier:
            names = ", ".join(c.name for c in earlier)
            return Turn(
                TurnKind.WAIT,
                earlier[0].name,
                earlier[0].uid,
                f"superseding ModelRollout {names} on service {service}: waiting for it to abort "
                "and restore stable",
            )
        return Turn(TurnKind.OWN)
    if owner.supersede and me.order < owner.order:
        return Turn(TurnKind.SUPERSEDED, owner.name, owner.uid, f"superseded by ModelRollout {owner.name}")
    return Turn(
        TurnKind.WAIT,
        owner.name,
        owner.uid,
        f"service {service} is being rolled out by ModelRollout {owner.name} ({owner.phase}): waiting "
        f"for it to finish (annotate {SUPERSEDE_ANNOTATION}=true to abort it and take over)",
    )


def abort_command(t: Turn) -> Command:
    """The abort a superseded rollout gives itself: one fixed id per superseding rollout, so the
    engine applies it once however often it is seen."""
    return Command(id=f"superseded-by-{t.other_uid or t.other}", kind=CommandKind.ABORT, message=t.message)


def busy_status(status: Obj, t: Turn) -> Obj:
    """``status`` (written from the rollout's state) overlaid with the ServiceBusy hold. Pure."""
    out = {**status, "phase": Phase.PAUSED.value, "reason": SERVICE_BUSY, "message": t.message}
    out["waitingFor"] = t.other
    conditions = []
    for c in status.get("conditions") or []:
        if c.get("type") == "Paused":
            c = {**c, "status": "True", "reason": SERVICE_BUSY, "message": t.message}
        elif c.get("type") == "Progressing":
            c = {**c, "status": "False", "reason": SERVICE_BUSY, "message": t.message}
        conditions.append(c)
    out["conditions"] = conditions
    return out


def is_busy(status: Obj | None) -> bool:
    """True when ``status`` shows a ServiceBusy hold (rewritten from the state once it may run)."""
    return (status or {}).get("reason") == SERVICE_BUSY
