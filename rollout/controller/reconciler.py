"""One reconcile of one ModelRollout: observe, ``engine.step``, persist status, then act.

The same engine and the same contract as the local runner (see ``rollout.engine``): the new state
is written to ``.status`` (conditional on the ``resourceVersion`` that was read, so a concurrent
writer causes a 409 -> ``ConflictError`` -> the whole reconcile is retried on fresh data, nothing
lost and nothing acted on) *before* any action runs. Actions are level-based, so a controller
killed between the write and the action repeats the action on restart, and never a step.

Cluster conventions (the Helm chart's names, in ``conventions.py``): InferenceServices
``<service>`` or ``<service>-stable`` / ``<service>-candidate``, predictor Services as route
backends. Candidate and stable readiness come from their InferenceServices' status
(``readiness.py``) before each step: no traffic moves to a candidate that is not ready, and a
rollout whose stable does not serve holds (Paused, StableUnavailable) until it does. In istio /
gateway-api / traefik mode a candidate is ready only once its pods answer the ModelRollout's candidate model
(``served.py``, asked through ``probe``, once per reconcile): until they do, no traffic moves to
it, its CandidateReady condition (ServedModelMismatch / ServedModelUnknown) and a Warning Event
(once per distinct message) name what was expected and what was found.
``KeepWarm`` needs no action here (the chart keeps both InferenceServices running), and
``Finalize`` only sets the routes: scaling the old version down is left to the deployer (GitOps).
After a promotion in istio / gateway-api / traefik mode the stable InferenceService takes the candidate's
model over and traffic returns to stable (``handoff.py``, recorded in ``.status.handoff``).

A ``spec.metricsAddress`` the controller's allow-list does not name, or one that is or resolves to a
link-local or cloud metadata address (rollout/addresses.py), is refused like an invalid spec
(Invalid, MetricsAddressRefused, one Warning Event): nothing moves and nothing is fetched.

One rollout per service (``ownership.py``): a rollout whose service another ModelRollout is
rolling out waits (Paused, ServiceBusy) and moves nothing, unless it supersedes it. An error inside
a reconcile that retrying at once cannot mend - a bug, a 403 from the controller's Role, an object
the API server rejects - holds the rollout (Paused, ReconcileError, one Event, the message in
``.status``) and is retried with a growing delay (``defence.py``); a measurement's is a
measurement in phase Error.
Who calls it: rollout.controller.handlers (kopf timer and delete handlers) and tests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rollout.actions import (
    Command,
    CommandKind,
    EnsureBackend,
    Finalize,
    Measure,
    MetricResult,
    Observations,
    SetRoutes,
    Transition,
)
from rollout.addresses import AddressPolicy
from rollout.engine import hold_on_error, is_rollout_of, new_rollout, step
from rollout.errors import (
    ApiUnavailableError,
    ConflictError,
    MetricsAddressRefusedError,
    ModelError,
    NotFoundError,
    PermanentError,
    RolloutError,
    SpecError,
)
from rollout.exporter import RolloutCollector
from rollout.gate import JudgeFactory
from rollout.k8s.client import MODEL_ROLLOUT, KubeClient, Obj
from rollout.metrics.base import MetricProvider
from rollout.metrics.guard import system_resolve
from rollout.model import EventType, Reason, RolloutState
from rollout.routers.base import Routes, RouteTarget, TrafficRouter
from rollout.spec import RolloutSpec, RouterProvider, parse_rollout

from . import failover, handoff, ownership, readiness, served
from .conventions import default_router, isvc_name, route_target
from .defence import ErrorLog, HeldError
from .measure import measure
from .ownership import Turn, TurnKind
from .status import applied_command_keys, commands_from_annotations, state_from_status, status_from_state

log = logging.getLogger("rollout.controller")
MAX_STEPS_PER_RECONCILE = 4
ADDRESS_REFUSED = "MetricsAddressRefused"

MetricsFactory = Callable[[RolloutSpec], MetricProvider]
RouterFactory = Callable[[RolloutSpec, str, KubeClient], TrafficRouter]
__all__ = ["MetricsFactory", "Reconciler", "RouterFactory", "default_router", "isvc_name", "route_target"]


@dataclass
class _Memory:
    """What the controller keeps between reconciles of one rollout (lost on restart, by design:
    a Measure is repeated until its result arrives, and ``ensure`` is idempotent)."""

    results: tuple[MetricResult, ...] = ()
    ensured: RouteTarget | None = None
    router: TrafficRouter | None = None
    said: str | None = None  # the last served-model verdict told in an Event
    failed_over: str | None = None  # the FailoverStarted message in force (failover.py)


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
    # the judge of a metric (None: the analysis registry's); a seam for embedders and fault drills
    judge_of: JudgeFactory | None = None
    # the metrics addresses a spec may name (none by default: only the controller's own default)
    addresses: AddressPolicy = field(default_factory=lambda: AddressPolicy((), system_resolve))
    errors: ErrorLog = field(default_factory=ErrorLog)  # unexpected errors per rollout
    measure_errors: ErrorLog = field(default_factory=ErrorLog)  # ... per rollout and metric
    # what the backends' pods serve (None: ask them over HTTP, served.PodProbe on ``client``)
    probe: served.ServingProbe | None = None
    _locks: dict[tuple[str, str], threading.Lock] = field(default_factory=dict, repr=False)
    _locks_guard: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.probe is None:
            self.probe = served.PodProbe(self.client)

    def _cluster_spec(self, spec: RolloutSpec) -> RolloutSpec:
        """``spec`` with a cluster router. A spec that names no provider gets the controller's
        (``--router``, the chart's ``routing.mode``): the documented default of a cluster, as
        nginx is of ``rollout run``. One that names nginx, the local data plane, is refused: no
        provider ever stands in for another (routers/registry.py)."""
        if spec.router.provider != RouterProvider.NGINX:
            return spec
        if "provider" in spec.router.model_fields_set or self.default_provider == RouterProvider.NGINX.value:
            raise PermanentError(
                "router.provider nginx is the local data plane (`rollout run`); in a cluster use kserve, "
                f"istio, gateway-api or traefik, or leave router.provider out for the controller's ({self.default_provider})"
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

    def _save(
        self,
        obj: Obj,
        state: RolloutState,
        now: float,
        busy: Turn | None = None,
        verdict: served.Verdict | None = None,
    ) -> Obj:
        """Write ``state`` to ``.status``, conditional on ``obj``'s resourceVersion (409: ConflictError).
        ``busy``: overlaid with that ServiceBusy hold; ``verdict``: with what the candidate's pods serve."""
        status = status_from_state(state, now, obj["metadata"].get("generation"), obj.get("status"))
        if busy is not None:
            status = ownership.busy_status(status, busy)
        if not state.done:
            status = served.overlay(status, verdict)
        body = {
            "apiVersion": obj["apiVersion"],
            "kind": obj["kind"],
            "metadata": {
                "name": obj["metadata"]["name"],
                "namespace": obj["metadata"]["namespace"],
                "resourceVersion": obj["metadata"]["resourceVersion"],
            },
            "status": status,
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
        """Run up to a few engine steps for one ModelRollout. Returns the state (None: invalid spec).

        A conflict (409: retried on fresh data) and an API server away keep their retry policy; any
        other exception, ours (forbidden by the Role, rejected by the API server, a route the
        provider cannot express) or not, holds the rollout with its message (defence.py) and
        raises ``HeldError`` with a growing delay."""
        obj = self.client.get(MODEL_ROLLOUT, namespace, name)
        if obj["metadata"].get("deletionTimestamp"):
            return None
        try:
            spec = self._cluster_spec(parse_rollout(obj).spec)
            new_rollout(spec)  # a metric no judge takes, an unknown template: refused before anything moves
            if spec.metrics_address is not None:  # before anything moves, and never fetched if refused
                self.addresses.check(spec.metrics_address)
        except MetricsAddressRefusedError as exc:
            self._invalid(obj, str(exc), reason=ADDRESS_REFUSED)
            return None
        except (SpecError, PermanentError) as exc:
            self._invalid(obj, str(exc))
            return None
        key = (namespace, name)
        with self._service_lock(namespace, spec.service):
            try:
                state = self._reconcile(obj, spec, self.memory.setdefault(key, _Memory()))
            except (ConflictError, ApiUnavailableError):  # re-read and retry; or nothing can be written
                raise
            except Exception as exc:  # the last line of defence: held, one event, backed off
                raise self._hold(namespace, name, spec, exc) from None
        self.errors.clear(key)
        return state

    def _reconcile(self, obj: Obj, spec: RolloutSpec, mem: _Memory) -> RolloutState:
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        state = state_from_status(obj.get("status"))
        if not is_rollout_of(state, spec):
            if state is not None:
                self.client.emit_event(
                    obj,
                    "SpecChanged",
                    f"new rollout of {spec.candidate.model} (was {state.candidate}, {state.phase.value})",
                    "Warning",
                )
            state = new_rollout(spec)
            mem.results = ()
        annotations = obj["metadata"].get("annotations") or {}
        commands = commands_from_annotations(annotations)
        others = ownership.claims_on(spec.service, self.client.list(MODEL_ROLLOUT, namespace), name)
        turn = ownership.turn(ownership.claim_of(obj, state), others, spec.service)
        if turn.kind == TurnKind.WAIT:
            state = self._wait(obj, spec, state, turn, commands)
        else:
            if turn.kind == TurnKind.SUPERSEDED:
                commands = (*commands, ownership.abort_command(turn))
            state = self._steps(obj, spec, state, mem, commands, act=turn.kind != TurnKind.QUIET)
        stale = applied_command_keys(annotations, state)
        if stale:
            self.client.patch(
                MODEL_ROLLOUT, namespace, name, {"metadata": {"annotations": dict.fromkeys(stale)}}
            )
        return state

    def _steps(
        self,
        obj: Obj,
        spec: RolloutSpec,
        state: RolloutState,
        mem: _Memory,
        commands: tuple[Command, ...],
        act: bool = True,
    ) -> RolloutState:
        """Observe, step, persist, act - up to a few times. ``act`` False: persist only (a quiet or
        waiting rollout touches no routing object)."""
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        router = self._router(mem, spec, namespace) if act else None
        force = ownership.is_busy(obj.get("status"))  # a ServiceBusy status is rewritten from the state
        assert self.probe is not None
        probe = served.Memo(self.probe)  # the pods are asked once per reconcile
        for _ in range(MAX_STEPS_PER_RECONCILE):
            seen = None
            if router is not None:
                seen = readiness.observe(self.client, spec, namespace, None if state.done else probe)
            if seen is not None and seen.mismatch and not state.done:
                raise ModelError(seen.mismatch)  # held with its message (Event, status) until fixed
            verdict = seen.served if seen is not None and not state.done else None
            force = force or served.stale(obj.get("status"), verdict)
            now = self.clock()
            obs = Observations(
                candidate_ready=seen.candidate.ready if seen is not None else None,
                stable_ready=seen.stable.ready if seen is not None else None,
                routes=_as_applied(router.get_routes(), state.desired_routes) if router is not None else None,
                metrics=mem.results,
                commands=commands,
                edge_error=self.errors.last((namespace, name)),  # held until a reconcile goes through
            )
            t = step(spec, state, obs, now, judge_of=self.judge_of)
            if t.changed or force:
                obj = self._save(obj, t.state, now, verdict=verdict)  # persist first; a 409 aborts all
                self._events(obj, t)
                force = False
            self._tell_served(obj, mem, None if t.state.done else verdict)
            mem.results = ()
            state = t.state
            self._export(namespace, name, state)
            if router is None or seen is None:
                break
            if not state.done:
                _log_readiness(namespace, name, seen)
            moved = self._act(
                t, router, handoff.hold_routes(obj.get("status"), state), (obj, spec, seen, mem)
            )
            mem.results = measure(
                self.metrics, self.measure_errors, self.clock, (namespace, name), spec, state, t.of(Measure)
            )
            if not (t.changed or moved or mem.results) or state.done:
                break
        if router is not None and handoff.applies(spec, state):
            names = (isvc_name(spec, "stable"), isvc_name(spec, "candidate"))
            handoff.HandOff(self.client, self.clock, probe).advance(obj, spec, state, router, names)
        return state

    def _tell_served(self, obj: Obj, mem: _Memory, verdict: served.Verdict | None) -> None:
        """A Warning Event for a verdict that holds the candidate, once per distinct message."""
        if verdict is None or verdict.ok:
            mem.said = None
            return
        if mem.said == verdict.message:
            return
        mem.said = verdict.message
        meta = obj["metadata"]
        log.warning("%s/%s: candidate held: %s", meta["namespace"], meta["name"], verdict.message)
        try:
            self.client.emit_event(obj, verdict.reason, verdict.message, "Warning")
        except RolloutError as exc:
            log.warning("could not record event %s: %s", verdict.reason, exc)

    def _wait(
        self, obj: Obj, spec: RolloutSpec, state: RolloutState, turn: Turn, commands: tuple[Command, ...]
    ) -> RolloutState:
        """Another rollout owns the service: write the ServiceBusy hold (once per distinct message,
        with one event), move nothing. An ``abort`` still ends this rollout (without traffic)."""
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        aborts = tuple(
            c for c in commands if c.kind == CommandKind.ABORT and c.id not in state.applied_commands
        )
        if aborts:
            return self._steps(obj, spec, state, _Memory(), aborts, act=False)
        self._export(namespace, name, state)
        old = obj.get("status") or {}
        if ownership.is_busy(old) and old.get("message") == turn.message and old.get("state"):
            return state
        obj = self._save(obj, state, self.clock(), busy=turn)
        try:
            self.client.emit_event(obj, ownership.SERVICE_BUSY, turn.message, "Normal")
        except RolloutError as exc:
            log.warning("could not record event %s: %s", ownership.SERVICE_BUSY, exc)
        log.info("%s/%s: %s", namespace, name, turn.message)
        return state

    def _hold(self, namespace: str, name: str, spec: RolloutSpec, exc: Exception) -> HeldError:
        """Hold the rollout on an unexpected error (``engine.hold_on_error``), written like every
        state: on a fresh read, conditional on its resourceVersion. Returns the error to raise."""
        message, delay = self.errors.record((namespace, name), exc, f"{namespace}/{name}: reconcile failed")
        obj = self.client.get(MODEL_ROLLOUT, namespace, name)
        state = state_from_status(obj.get("status"))
        if not is_rollout_of(state, spec):
            state = new_rollout(spec)
        assert state is not None
        now = self.clock()
        t = hold_on_error(state, message, now)
        if t.changed:
            obj = self._save(obj, t.state, now)
            self._events(obj, t)
        self._export(namespace, name, t.state)
        return HeldError(f"{namespace}/{name} held: {message}", delay=delay)

    def _service_lock(self, namespace: str, service: str) -> threading.Lock:
        """One reconcile at a time per service, so ownership is decided and acted on atomically."""
        with self._locks_guard:
            return self._locks.setdefault((namespace, service), threading.Lock())

    def _act(
        self,
        t: Transition,
        router: TrafficRouter,
        hold: Routes | None = None,
        health: tuple[Obj, RolloutSpec, readiness.Backends, _Memory] | None = None,
    ) -> bool:
        """Execute SetRoutes/Finalize (``hold``: these routes instead, after a promotion's hand-off;
        ``health``: fail over from a version with no Ready pod, failover.py). Returns True when the
        routes changed."""
        wanted: Routes | None = None
        for a in t.actions:
            if isinstance(a, SetRoutes | Finalize):
                wanted = hold or a.routes
            elif isinstance(a, EnsureBackend):
                pass  # the InferenceServices are deployed by the chart; readiness is observed each step
        if wanted is None:
            return False
        current = router.get_routes()
        if health is not None and health[1].router.provider.value in failover.PROVIDERS:
            obj, spec, seen, mem = health
            desired = wanted
            wanted = failover.effective(desired, seen.stable.ready, seen.candidate.ready, not t.state.done)
            if _normal(wanted) != _normal(desired):
                message = failover.why(desired, wanted, spec.stable.model, spec.candidate.model)
                if message != mem.failed_over:
                    self.client.emit_event(obj, failover.STARTED, message, "Warning")
                    mem.failed_over = message
            elif mem.failed_over is not None:
                self.client.emit_event(
                    obj, failover.ENDED, "both versions Ready: the rollout's routes again", "Normal"
                )
                mem.failed_over = None
        if current == _normal(wanted):
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

    def _invalid(self, obj: Obj, message: str, reason: str = "InvalidSpec") -> None:
        """Phase Invalid, nothing moved: written, raised (kopf logs it) and, for a refused metrics
        address, a Warning Event - once per distinct message; a tick that finds it said returns."""
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        self._export(namespace, name, None)
        old = obj.get("status") or {}
        if (old.get("phase"), old.get("reason"), old.get("message")) == ("Invalid", reason, message):
            return  # not an error line per tick for as long as the spec stays as it is
        status = {"phase": "Invalid", "reason": reason, "message": message}
        self.client.patch_status(MODEL_ROLLOUT, namespace, name, status)
        if reason == ADDRESS_REFUSED:
            try:
                self.client.emit_event(obj, reason, message, "Warning")
            except RolloutError as exc:
                log.warning("could not record event %s: %s", reason, exc)
        raise PermanentError(f"ModelRollout {name}: {message}")

    def finalize(self, namespace: str, obj: Obj) -> str:
        """On delete: a rollout still in flight sends all traffic back to stable. Returns what it did."""
        try:
            spec = self._cluster_spec(parse_rollout({**obj, "status": None}).spec)
        except (SpecError, PermanentError):
            return "invalid spec: routing left as it is"
        name = obj["metadata"]["name"]
        state = state_from_status(obj.get("status"))
        self.memory.pop((namespace, name), None)
        self._export(namespace, name, None)
        if state is not None and state.done:
            return f"rollout already {state.phase.value}: routing left as it is"
        with self._service_lock(namespace, spec.service):
            others = ownership.claims_on(spec.service, self.client.list(MODEL_ROLLOUT, namespace), name)
            turn = ownership.turn(ownership.claim_of(obj), others, spec.service)
            if turn.kind == TurnKind.WAIT:  # it never moved traffic: the owner's routes stay
                return f"it waited for ModelRollout {turn.other}: routing left as it is"
            return self._restore_stable(namespace, obj, spec)

    def _restore_stable(self, namespace: str, obj: Obj, spec: RolloutSpec) -> str:
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


def _log_readiness(namespace: str, name: str, seen: readiness.Backends) -> None:
    if not seen.candidate.ready:
        log.info("%s/%s: candidate not ready: %s", namespace, name, seen.candidate.reason)
    if seen.stable.ready is False:
        log.info("%s/%s: stable not serving: %s", namespace, name, seen.stable.reason)


def _as_applied(read: Routes, desired: Routes) -> Routes:
    """The routes read back, as the engine compares them with its own: the cluster routers write
    header names lower-cased (HTTP names are case-insensitive), so routes that differ from the
    desired ones only in that case are the desired ones (else a sticky split by ``X-User-ID`` was
    never "applied" and its experiment never started)."""
    return desired if _normal(read) == _normal(desired) else read


def _normal(routes: Routes) -> Routes:
    from rollout.routers.matching import normalize_routes

    return normalize_routes(routes)
