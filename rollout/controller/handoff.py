"""Promotion hand-off in istio / gateway-api / traefik mode: the stable InferenceService takes over the
candidate's model, then all traffic goes back to stable.

The engine's promotion ends with 100% of traffic on ``<service>-candidate``. Left there, the next
rollout would have to start from the candidate object, and the chart's ``models.stable`` would
name a version nothing serves. So, as Flagger promotes (copy the canary's spec to the primary, wait
for the primary's rollout, route everything to the primary), the controller then:

1. **UpdatingStable** - makes the stable InferenceService's predictor the candidate's (image, env
   ``BENTO_MODEL_TAG``, resources, replicas; the stable's own ``bento-rollout.io/role`` label is
   kept) and sets its ``bento-rollout.io/model`` annotation to the candidate's tag. Idempotent:
   repeated on every reconcile until the object says so.
2. waits until stable **serves** it, which three things must say (no traffic moves before):
   - the InferenceService: its ``status.observedGeneration`` has reached the ``metadata.generation``
     that carries the new predictor and its ``Ready`` condition is True (``serves``). Not enough
     alone: KServe v0.20.0 in Standard mode writes there the predictor Deployment's own
     observedGeneration and keeps Ready True through the rolling update, while the old pods serve;
   - the predictor Deployment ``<stable>-predictor``: its rollout is done - every replica updated
     and available, no old one left (``served.rollout_progress``);
   - the pods: every Ready endpoint of the ``<stable>-predictor`` Service answers the candidate's
     model, tag and pinned digest (``served.check``; ``settled`` takes both).
3. **Complete** - routes 100% to stable; the candidate keeps running at weight 0 (scaling it down
   is left to the deployer, as for the rest of the chart's objects).

Each phase is written to ``.status.handoff`` (phase, model, message, times) *before* the action
that follows it, so a controller killed at any point repeats the action on restart, never skips it;
once Complete, every later reconcile holds the routes on stable (``hold_routes``). A new candidate
in the spec starts a new rollout whose status has no hand-off. KServe mode needs none: KServe
promotes its latest revision itself.
Who calls it: rollout.controller.reconciler, after a reconcile that finds the rollout Promoted.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

from rollout.errors import NotFoundError, RolloutError
from rollout.k8s.client import INFERENCE_SERVICE, MODEL_ROLLOUT, KubeClient, Obj
from rollout.model import Phase, RolloutState
from rollout.registry import MODEL_TAG_ENV
from rollout.routers.base import Routes, TrafficRouter
from rollout.spec import RolloutSpec

from . import served
from .conventions import STANDARD_PROVIDERS, server_env
from .conventions import predictor as predictor_service
from .status import iso

log = logging.getLogger("rollout.controller")
PROVIDERS = STANDARD_PROVIDERS
MODEL_ANNOTATION = "bento-rollout.io/model"
ROLE_LABEL = "bento-rollout.io/role"
UPDATING, COMPLETE = "UpdatingStable", "Complete"
REASON = "StableTookOver"


def applies(spec: RolloutSpec, state: RolloutState | None) -> bool:
    return state is not None and state.phase == Phase.PROMOTED and spec.router.provider.value in PROVIDERS


def current(status: Obj | None, state: RolloutState | None) -> Obj | None:
    """The hand-off recorded in ``status`` for this rollout (None: none, or another rollout's)."""
    h = (status or {}).get("handoff")
    if not h or state is None or state.phase != Phase.PROMOTED or h.get("model") != state.candidate:
        return None
    return dict(h)


def hold_routes(status: Obj | None, state: RolloutState | None) -> Routes | None:
    """All traffic to stable once the hand-off is Complete; None while the engine's routes apply."""
    h = current(status, state)
    return Routes.all_stable() if h and h.get("phase") == COMPLETE else None


def model_of(isvc: Obj) -> str | None:
    """The model tag an InferenceService serves: its annotation, else its predictor's env."""
    tag = (isvc.get("metadata", {}).get("annotations") or {}).get(MODEL_ANNOTATION)
    if tag:
        return str(tag)
    return server_env(isvc).get(MODEL_TAG_ENV) or None


def stable_predictor(stable: Obj, candidate: Obj) -> Obj:
    """The predictor stable must run: the candidate's, with stable's role label. Pure."""
    predictor = copy.deepcopy(candidate.get("spec", {}).get("predictor") or {})
    role = (stable.get("spec", {}).get("predictor", {}).get("labels") or {}).get(ROLE_LABEL)
    if role is not None:
        predictor.setdefault("labels", {})[ROLE_LABEL] = role
    elif ROLE_LABEL in (predictor.get("labels") or {}):
        del predictor["labels"][ROLE_LABEL]
    return predictor


def serves(stable: Obj, predictor: Obj, model: str) -> tuple[bool, str]:
    """(True, "") when ``stable`` runs ``predictor`` and reports it ready, else (False, why). Pure."""
    name = stable["metadata"]["name"]
    if stable.get("spec", {}).get("predictor") != predictor or model_of(stable) != model:
        return False, f"InferenceService {name} does not run {model} yet"
    st = stable.get("status") or {}
    generation = stable["metadata"].get("generation", 0)
    if st.get("observedGeneration", 0) < generation:
        return False, f"InferenceService {name}: generation {generation} not observed yet"
    ready = {c.get("type"): c.get("status") for c in st.get("conditions") or []}.get("Ready")
    if ready != "True":
        return False, f"InferenceService {name} is not Ready with {model} yet"
    return True, ""


def settled(progress: served.Progress, verdict: served.Verdict) -> tuple[bool, str]:
    """(True, "") once the stable predictor's Deployment is rolled out and all its Ready pods
    answer the new model, else (False, why). Pure."""
    if not progress.done:
        return False, progress.message
    if not verdict.ok:
        return False, verdict.message
    return True, ""


class HandOff:
    """Drives the hand-off of one promoted rollout a step further on each call of ``advance``."""

    def __init__(self, client: KubeClient, clock: Callable[[], float], probe: served.ServingProbe) -> None:
        self.client = client
        self.clock = clock
        self.probe = probe

    def advance(
        self, obj: Obj, spec: RolloutSpec, state: RolloutState, router: TrafficRouter, names: tuple[str, str]
    ) -> Obj | None:
        """One level-based pass. ``names`` = (stable, candidate) InferenceService names. Returns the
        hand-off as recorded now (None: not applicable)."""
        if not applies(spec, state):
            return None
        ns = obj["metadata"]["namespace"]
        h = current(obj.get("status"), state)
        if h is not None and h.get("phase") == COMPLETE:
            return h
        stable_name, candidate_name = names
        if h is None:
            h = {
                "phase": UPDATING,
                "model": state.candidate,
                "stable": stable_name,
                "startedAt": iso(self.clock()),
            }
            h["message"] = f"updating {stable_name} to {state.candidate}"
            self._record(obj, h)
        try:
            candidate = self.client.get(INFERENCE_SERVICE, ns, candidate_name)
            wanted = stable_predictor(self.client.get(INFERENCE_SERVICE, ns, stable_name), candidate)
        except NotFoundError as exc:
            return self._record(obj, {**h, "message": f"waiting: {exc}"})
        stable = self.client.update(
            INFERENCE_SERVICE, ns, stable_name, lambda o: _take_over(o, wanted, state.candidate)
        )
        ok, why = serves(stable, wanted, state.candidate)
        if not ok:
            return self._record(obj, {**h, "message": why})
        service = predictor_service(stable_name)  # its Deployment has the same name
        verdict = served.check(self.probe.serving(ns, service, spec.candidate), spec.candidate, "candidate")
        ok, why = settled(self.probe.progress(ns, service), verdict)
        if not ok:
            return self._record(obj, {**h, "message": why})
        done = {
            **h,
            "phase": COMPLETE,
            "message": f"{stable_name} serves {state.candidate} ({verdict.message}); all traffic to stable",
            "completedAt": iso(self.clock()),
        }
        self._record(obj, done)  # persist first, then route (repeated by hold_routes if we die here)
        router.set_routes(Routes.all_stable())
        try:
            self.client.emit_event(obj, REASON, done["message"], "Normal")
        except RolloutError as exc:
            log.warning("could not record event %s: %s", REASON, exc)
        return done

    def _record(self, obj: Obj, h: Obj) -> Obj:
        if (obj.get("status") or {}).get("handoff") != h:
            meta = obj["metadata"]
            out = self.client.patch_status(MODEL_ROLLOUT, meta["namespace"], meta["name"], {"handoff": h})
            obj["status"] = out.get("status") or {**(obj.get("status") or {}), "handoff": h}
        return h


def _take_over(isvc: Obj, predictor: Obj, model: str) -> Obj | None:
    """``isvc`` with the candidate's predictor and model annotation; None when it has them."""
    annotations = isvc["metadata"].setdefault("annotations", {})
    if isvc.get("spec", {}).get("predictor") == predictor and annotations.get(MODEL_ANNOTATION) == model:
        return None
    isvc.setdefault("spec", {})["predictor"] = predictor
    annotations[MODEL_ANNOTATION] = model
    return isvc
