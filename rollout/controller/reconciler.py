"""One reconcile of one ModelRollout: observe, ``engine.step``, persist status, then act.

The same engine and the same contract as the local runner (see ``rollout.engine``): the new state
is written to ``.status`` (conditional on the ``resourceVersion`` that was read, so a concurrent
writer causes a 409 -> ``ConflictError`` -> the whole reconcile is retried on fresh data, nothing
lost and nothing acted on) *before* any action runs. Actions are level-based, so a controller
killed between the write and the action repeats the action on restart, and never a step.

Cluster conventions (the Helm chart's): InferenceServices are ``<service>`` (kserve routing) or
``<service>-stable`` / ``<service>-candidate`` (istio, gateway-api), whose predictor Services
``<isvc>-predictor`` (port 80) are the route backends; the routing object is named
``spec.router.name`` or ``<service>``. Candidate readiness comes from the candidate
InferenceService's status (``routers.kserve.candidate_readiness``) before any traffic moves.
``KeepWarm`` needs no action here (the chart keeps both InferenceServices running), and
``Finalize`` only sets the routes: scaling the old version down is left to the deployer (GitOps).
After a promotion in istio / gateway-api mode the stable InferenceService takes the candidate's
model over and traffic returns to stable (``handoff.py``, recorded in ``.status.handoff``).
Who calls it: rollout.controller.handlers (kopf timer and delete handlers) and tests.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rollout.actions import (
    EnsureBackend,
    Finalize,
    Measure,
    MetricResult,
    Observations,
    SetRoutes,
    Transition,
)
from rollout.engine import new_rollout, step
from rollout.errors import NotFoundError, PermanentError, RolloutError, SpecError
from rollout.exporter import RolloutCollector
from rollout.k8s.client import INFERENCE_SERVICE, MODEL_ROLLOUT, KubeClient, Obj
from rollout.metrics.base import MetricProvider
from rollout.metrics.sampler import SampleContext, collect
from rollout.model import EventType, Reason, RolloutState
from rollout.routers.base import Backend, Routes, RouteTarget, TrafficRouter
from rollout.routers.kserve import candidate_readiness
from rollout.routers.registry import make_router
from rollout.spec import RolloutSpec, RouterProvider, parse_rollout

from . import handoff
from .status import applied_command_keys, commands_from_annotations, state_from_status, status_from_state

log = logging.getLogger("rollout.controller")
BACKEND_PORT = 80
MAX_STEPS_PER_RECONCILE = 4

MetricsFactory = Callable[[RolloutSpec], MetricProvider]
RouterFactory = Callable[[RolloutSpec, str, KubeClient], TrafficRouter]


def isvc_name(spec: RolloutSpec, role: str) -> str:
    if spec.router.provider.value == "kserve":
        return spec.router.name or spec.service
    return f"{spec.service}-{role}"


def route_target(spec: RolloutSpec) -> RouteTarget:
    """Backends of the rollout, named as the chart names the predictor Services."""
    if spec.router.provider.value == "kserve":
        name = isvc_name(spec, "candidate")
        return RouteTarget(
            spec.service, Backend(name, spec.stable.model), Backend(name, spec.candidate.model)
        )
    return RouteTarget(
        spec.service,
        Backend(f"{isvc_name(spec, 'stable')}-predictor", spec.stable.model),
        Backend(f"{isvc_name(spec, 'candidate')}-predictor", spec.candidate.model),
    )


def default_router(spec: RolloutSpec, namespace: str, client: KubeClient) -> TrafficRouter:
    provider = spec.router.provider.value
    kwargs: dict[str, Any] = {
        "client": client,
        "namespace": namespace,
        "name": spec.router.name or spec.service,
    }
    if provider in ("istio", "gateway-api"):
        kwargs.update(gateway=spec.router.gateway, port=BACKEND_PORT)
    return make_router(provider, **kwargs)


@dataclass
class _Memory:
    """What the controller keeps between reconciles of one rollout (lost on restart, by design:
    a Measure is repeated until its result arrives, and ``ensure`` is idempotent)."""

    results: tuple[MetricResult, ...] = ()
    ensured: RouteTarget | None = None
    router: TrafficRouter | None = None


@dataclass
class Reconciler:
    client: KubeClient
    metrics: MetricsFactory
    router_factory: RouterFactory = default_router
    clock: Callable[[], float] = time.time
    # provider for specs that leave router.provider at the local default ("nginx")
    default_provider: str = "kserve"
    memory: dict[tuple[str, str], _Memory] = field(default_factory=dict)
    # the rollout_* series: refreshed with every state this reconciler reads or writes
    exporter: RolloutCollector | None = None

    def _cluster_spec(self, spec: RolloutSpec) -> RolloutSpec:
        """``spec`` with a cluster router: the nginx router is the local mode's, never the cluster's."""
        if spec.router.provider != RouterProvider.NGINX:
            return spec
        if self.default_provider == RouterProvider.NGINX.value:
            raise PermanentError(
                "router.provider nginx is the local data plane; use kserve, istio or gateway-api"
            )
        router = spec.router.model_copy(update={"provider": RouterProvider(self.default_provider)})
        return spec.model_copy(update={"router": router})

    # --- helpers -----------------------------------------------------------------------------------

    def _router(self, mem: _Memory, spec: RolloutSpec, namespace: str) -> TrafficRouter:
        target = route_target(spec)
        if mem.router is None or mem.ensured != target:
            mem.router = self.router_factory(spec, namespace, self.client)
            mem.router.ensure(target)
            mem.ensured = target
        return mem.router

    def _readiness(self, spec: RolloutSpec, namespace: str) -> tuple[bool, str]:
        name = isvc_name(spec, "candidate")
        try:
            r = candidate_readiness(self.client.get(INFERENCE_SERVICE, namespace, name))
        except NotFoundError:
            return False, f"InferenceService {namespace}/{name} does not exist yet"
        return r.ready, r.reason

    def _measure(
        self, spec: RolloutSpec, state: RolloutState, actions: list[Measure]
    ) -> tuple[MetricResult, ...]:
        if not actions:
            return ()
        provider = self.metrics(spec)
        by_name = {m.name: m for m in spec.analysis.metrics}
        out = []
        for a in actions:
            started = self.clock()
            elapsed = started - state.analysis_started_at if state.analysis_started_at else None
            ctx = SampleContext(spec.service, spec.stable.model, spec.candidate.model, a.window, elapsed)
            try:
                sample = collect(by_name[a.metric], provider, ctx)
                out.append(MetricResult(a.metric, at=started, sample=sample, elapsed=self.clock() - started))
            except RolloutError as exc:  # unreachable Prometheus, no value: a measurement in phase Error
                out.append(MetricResult(a.metric, at=started, error=str(exc), elapsed=self.clock() - started))
        return tuple(out)

    def _save(self, obj: Obj, state: RolloutState, now: float) -> Obj:
        body = {
            "apiVersion": obj["apiVersion"],
            "kind": obj["kind"],
            "metadata": {
                "name": obj["metadata"]["name"],
                "namespace": obj["metadata"]["namespace"],
                "resourceVersion": obj["metadata"]["resourceVersion"],
            },
            "status": status_from_state(state, now, obj["metadata"].get("generation"), obj.get("status")),
        }
        return self.client.replace_status(MODEL_ROLLOUT, obj["metadata"]["namespace"], body)

    def _events(self, obj: Obj, t: Transition) -> None:
        for e in t.events:
            try:
                self.client.emit_event(
                    obj, e.reason, e.message, "Warning" if e.type == EventType.WARNING else "Normal"
                )
            except RolloutError as exc:  # an event is worth a log line, not a failed reconcile
                log.warning("could not record event %s: %s", e.reason, exc)

    # --- the reconcile -----------------------------------------------------------------------------

    def reconcile(self, namespace: str, name: str) -> RolloutState | None:
        """Run up to a few engine steps for one ModelRollout. Returns the state (None: invalid spec)."""
        obj = self.client.get(MODEL_ROLLOUT, namespace, name)
        if obj["metadata"].get("deletionTimestamp"):
            return None
        key = (namespace, name)
        mem = self.memory.setdefault(key, _Memory())
        try:
            spec = self._cluster_spec(parse_rollout(obj).spec)
        except (SpecError, PermanentError) as exc:
            self._invalid(obj, str(exc))
            return None
        state = state_from_status(obj.get("status"))
        if state is None or state.candidate != spec.candidate.model or state.strategy != spec.strategy.name:
            if state is not None:
                self.client.emit_event(
                    obj,
                    "SpecChanged",
                    f"new rollout of {spec.candidate.model} (was {state.candidate}, {state.phase.value})",
                    "Warning",
                )
            state = new_rollout(spec)
            mem.results = ()
        router = self._router(mem, spec, namespace)
        annotations = obj["metadata"].get("annotations") or {}
        commands = commands_from_annotations(annotations)
        for _ in range(MAX_STEPS_PER_RECONCILE):
            ready, why = self._readiness(spec, namespace)
            now = self.clock()
            obs = Observations(
                candidate_ready=ready, routes=router.get_routes(), metrics=mem.results, commands=commands
            )
            t = step(spec, state, obs, now)
            if t.changed:
                obj = self._save(obj, t.state, now)  # persist first; a 409 aborts before any action
                self._events(obj, t)
            mem.results = ()
            state = t.state
            self._export(namespace, name, state)
            if not ready and not state.done:
                log.info("%s/%s: candidate not ready: %s", namespace, name, why)
            try:
                moved = self._act(t, router, handoff.hold_routes(obj.get("status"), state))
            except PermanentError as exc:  # e.g. a route feature the provider cannot express
                self.client.emit_event(obj, "RouterFailed", str(exc), "Warning")
                raise
            mem.results = self._measure(spec, state, t.of(Measure))
            if not (t.changed or moved or mem.results) or state.done:
                break
        if handoff.applies(spec, state):
            names = (isvc_name(spec, "stable"), isvc_name(spec, "candidate"))
            handoff.HandOff(self.client, self.clock).advance(obj, spec, state, router, names)
        stale = applied_command_keys(annotations, state)
        if stale:
            self.client.patch(
                MODEL_ROLLOUT, namespace, name, {"metadata": {"annotations": dict.fromkeys(stale)}}
            )
        return state

    def _act(self, t: Transition, router: TrafficRouter, hold: Routes | None = None) -> bool:
        """Execute SetRoutes/Finalize (``hold``: these routes instead, after a promotion's hand-off).
        Returns True when the routes changed."""
        wanted: Routes | None = None
        for a in t.actions:
            if isinstance(a, SetRoutes | Finalize):
                wanted = hold or a.routes
            elif isinstance(a, EnsureBackend):
                pass  # the InferenceServices are deployed by the chart; readiness is observed each step
        if wanted is None or router.get_routes() == _normal(wanted):
            return False
        router.set_routes(wanted)
        return True

    def _export(self, namespace: str, name: str, state: RolloutState | None) -> None:
        if self.exporter is None:
            return
        if state is None:
            self.exporter.remove(name, namespace)
        else:
            self.exporter.update(name, state, namespace)

    def _invalid(self, obj: Obj, message: str) -> None:
        self._export(obj["metadata"]["namespace"], obj["metadata"]["name"], None)
        status = {"phase": "Invalid", "reason": "InvalidSpec", "message": message}
        self.client.patch_status(MODEL_ROLLOUT, obj["metadata"]["namespace"], obj["metadata"]["name"], status)
        raise PermanentError(f"ModelRollout {obj['metadata']['name']}: {message}")

    def finalize(self, namespace: str, obj: Obj) -> str:
        """On delete: a rollout still in flight sends all traffic back to stable. Returns what it did."""
        try:
            spec = self._cluster_spec(parse_rollout({**obj, "status": None}).spec)
        except (SpecError, PermanentError):
            return "invalid spec: routing left as it is"
        state = state_from_status(obj.get("status"))
        self.memory.pop((namespace, obj["metadata"]["name"]), None)
        self._export(namespace, obj["metadata"]["name"], None)
        if state is not None and state.done:
            return f"rollout already {state.phase.value}: routing left as it is"
        target = route_target(spec)
        router = self.router_factory(spec, namespace, self.client)
        try:
            router.finalize(target)
        except NotFoundError:
            return "routing object gone: nothing to restore"
        try:
            self.client.emit_event(
                obj, Reason.ABORTED, "ModelRollout deleted mid-flight: all traffic back to stable", "Warning"
            )
        except RolloutError:
            pass
        return "all traffic back to stable"


def _normal(routes: Routes) -> Routes:
    from rollout.routers.matching import normalize_routes

    return normalize_routes(routes)
