"""The operator: kopf handlers for ModelRollout, leader election, and ``run`` for the CLI.

- a **timer** (every ``interval`` seconds, per ModelRollout) runs ``Reconciler.reconcile``; our
  errors become kopf's (``TemporaryError`` -> retried after its delay; ``PermanentError`` -> logged,
  not retried until the next tick). Inside a reconcile only a conflict and an API server away get
  that far: any other exception, ours or not, holds the rollout (Paused, ReconcileError, one
  Event, the message in ``.status``) and raises ``HeldError``, and whatever escapes even that is
  logged once (defence.py) and retried with the same growing delay - never a hot loop with a
  traceback per tick. kopf runs one timer per object at a time, so a rollout is
  never stepped twice concurrently;
- an **on-delete** handler is a finalizer (``bento-rollout.io/finalizer``): deleting a rollout that
  is still in flight sends all traffic back to stable before the object goes away (one that was
  waiting for another rollout of its service leaves the routes alone: ownership.py);
- **leader election**: the startup handler blocks until this replica holds the Lease
  (``rollout.k8s.lease``), so a standby replica watches nothing and acts on nothing; a leader that
  loses its Lease stands by (its handlers act on nothing) until it holds the Lease again. kopf's
  own peering is off (it would need its cluster-wide peering CRDs and more RBAC);
- **metrics addresses**: a ModelRollout's ``spec.metricsAddress`` must match an entry of
  ``allowed_metrics_addresses`` (default: ``metrics_address``, the controller's own Prometheus) and
  must not be or resolve to a link-local or cloud metadata address, or it is refused like an
  invalid spec (reconciler.py, rollout/addresses.py); Prometheus is reached through
  ``PinnedTransport``, which checks the addresses again where it connects (metrics/guard.py);
- **metrics**: with ``metrics_port`` set, the rollout_* series (rollout/exporter.py) of every
  rollout this replica reconciles are served on ``metrics_host:metrics_port`` (127.0.0.1 unless
  the chart sets ROLLOUT_METRICS_HOST), refreshed on every reconcile. A standby serves none.
- **shutdown**: SIGTERM or SIGINT (kopf's own handlers), or ``run``'s ``stop`` event, ends the
  operator in well under a second with exit code 0; the Lease is released on the way out, so a
  standby takes over at its next attempt (``_operate`` says why kopf is not given ``stop``).
Who calls it: ``rollout controller`` (rollout/cli/cluster.py) and the controller e2e tests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import kopf

from rollout.addresses import AddressPolicy, check_metrics_url
from rollout.errors import PermanentError, RolloutError, TemporaryError, UsageError
from rollout.exporter import MetricsServer, RolloutCollector
from rollout.gate import JudgeFactory
from rollout.k8s.client import MODEL_ROLLOUT, KubeClient
from rollout.k8s.lease import LeaderElector
from rollout.metrics.base import MetricProvider
from rollout.metrics.guard import system_resolve
from rollout.spec import RolloutSpec

from .reconciler import MetricsFactory, Reconciler, RouterFactory, default_router
from .served import ServingProbe

log = logging.getLogger("rollout.controller")
FINALIZER = "bento-rollout.io/finalizer"
STOP_POLL = 0.2  # seconds between looks at run()'s stop event


@dataclass
class ControllerConfig:
    namespace: str | None = None  # None: every namespace
    kubeconfig: str | None = None
    context: str | None = None
    metrics_address: str | None = None  # default Prometheus when a spec names none
    # what a spec's metricsAddress may name: host, host:port or URL prefixes; empty: metrics_address
    allowed_metrics_addresses: tuple[str, ...] = ()
    interval: float = 2.0
    leader_election: bool = True
    lease_name: str = "bento-rollout-controller"
    lease_namespace: str | None = None
    lease_duration: float = 15.0
    identity: str = ""
    health_host: str = "127.0.0.1"
    health_port: int | None = None
    router: str = "kserve"  # for ModelRollouts that name no cluster router (spec.router.provider nginx)
    metrics_host: str = "127.0.0.1"  # the rollout_* series; the chart sets 0.0.0.0 in a Pod
    metrics_port: int | None = None  # None: not served


def address_policy(cfg: ControllerConfig) -> AddressPolicy:
    """The allow-list of ``cfg``; UsageError naming a malformed address (--metrics-address too)."""
    default = (cfg.metrics_address,) if cfg.metrics_address else ()
    try:
        if cfg.metrics_address:
            check_metrics_url(cfg.metrics_address)
    except ValueError as exc:
        raise UsageError(f"--metrics-address {cfg.metrics_address!r} {exc}") from None
    try:
        return AddressPolicy(cfg.allowed_metrics_addresses or default, system_resolve)
    except ValueError as exc:
        raise UsageError(f"--allowed-metrics-address: {exc}") from None


def _metrics_factory(default_url: str | None) -> Any:
    from rollout.metrics.guard import PinnedTransport
    from rollout.metrics.prometheus import PrometheusProvider

    def factory(spec: RolloutSpec) -> MetricProvider:
        url = spec.metrics_address or default_url
        if not url:
            raise PermanentError(
                f"rollout {spec.service}: no Prometheus address (spec.metricsAddress or --metrics-address)"
            )
        return PrometheusProvider(url, transport=PinnedTransport())

    return factory


def _connection(client: KubeClient) -> kopf.ConnectionInfo:
    """kopf logs in with the same credentials as our client (kubeconfig or in-cluster)."""
    cfg = client.api_client.configuration
    token = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken")
    if token and token.lower().startswith("bearer "):
        token = token[7:]
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
        token=token or None,
        scheme="Bearer" if token else None,
    )


def build_registry(
    reconciler: Reconciler, cfg: ControllerConfig, elector: LeaderElector | None, stop: threading.Event
) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    group, version, plural = MODEL_ROLLOUT.group, MODEL_ROLLOUT.version, MODEL_ROLLOUT.plural

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return _connection(reconciler.client)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = FINALIZER
        settings.posting.enabled = False  # our Events come from the engine's transitions
        settings.watching.server_timeout = 60
        settings.networking.request_timeout = 60
        # on delete, kopf waits for the running timer to exit before our finalizer runs; recheck
        # every second instead of kopf's default minute
        settings.background.cancellation_polling = 1.0
        if cfg.namespace is not None:
            # one namespace, named exactly: nothing to discover. The chart's namespaced Role may not
            # list namespaces nor watch CRDs, and kopf retried each 403 for 54 s before it started
            settings.scanning.disabled = True
        if elector is not None:
            log.info("%s waiting for the Lease %s/%s", elector.identity, elector.namespace, elector.name)
            if not await asyncio.to_thread(elector.acquire, stop):
                return
            log.info("%s is the leader", elector.identity)
            elector.start_renewing()

    @kopf.timer(group, version, plural, interval=cfg.interval, registry=registry)
    def tick(namespace: str, name: str, **_: Any) -> None:
        if elector is not None and not elector.is_leader:
            return  # standing by: nothing to do, and nothing to log per rollout on every tick
        try:
            reconciler.reconcile(namespace, name)
        except PermanentError as exc:
            raise kopf.PermanentError(str(exc)) from None
        except TemporaryError as exc:
            raise kopf.TemporaryError(str(exc), delay=exc.delay) from None
        except RolloutError as exc:
            raise kopf.PermanentError(str(exc)) from None
        except Exception as exc:  # escaped the reconciler's own defence: once in the log, backed off
            raise _retry(reconciler, namespace, name, exc, "reconcile failed") from None

    @kopf.on.delete(group, version, plural, registry=registry)
    def deleted(namespace: str, name: str, body: kopf.Body, **_: Any) -> None:
        if elector is not None and not elector.is_leader:
            raise kopf.TemporaryError("not the leader", delay=cfg.interval)
        try:
            outcome = reconciler.finalize(namespace, dict(body))
        except TemporaryError as exc:
            raise kopf.TemporaryError(str(exc), delay=exc.delay) from None
        except RolloutError:
            raise
        except Exception as exc:
            raise _retry(reconciler, namespace, name, exc, "finalizer failed") from None
        log.info("%s/%s deleted: %s", namespace, name, outcome)

    return registry


def _retry(
    reconciler: Reconciler, namespace: str, name: str, exc: Exception, what: str
) -> kopf.TemporaryError:
    message, delay = reconciler.errors.record((namespace, name), exc, f"{namespace}/{name}: {what}")
    return kopf.TemporaryError(f"{what}: {message}", delay=delay)


def run(
    cfg: ControllerConfig,
    stop: threading.Event | None = None,
    ready: threading.Event | None = None,
    *,
    metrics: MetricsFactory | None = None,
    router_factory: RouterFactory | None = None,
    judge_of: JudgeFactory | None = None,
    probe: Callable[[KubeClient], ServingProbe] | None = None,
) -> None:
    """Run the operator until ``stop`` is set (or SIGINT/SIGTERM). Blocks.

    ``metrics``, ``router_factory``, ``judge_of`` and ``probe`` replace the Reconciler's defaults
    (Prometheus at the spec's address, the spec's router, the analysis registry's judges, asking
    the pods what they serve): seams for embedders and for the tests of tests/e2e, where no pod
    runs."""
    addresses = address_policy(cfg)
    log.info("metrics addresses a ModelRollout may name: %s", addresses.describe())
    client = KubeClient.auto(cfg.kubeconfig, cfg.context)
    stop = stop or threading.Event()
    identity = cfg.identity or os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
    elector = None
    if cfg.leader_election:
        lease_ns = cfg.lease_namespace or cfg.namespace or os.environ.get("POD_NAMESPACE") or "default"
        elector = LeaderElector(client, lease_ns, cfg.lease_name, identity, cfg.lease_duration)
    exporter = RolloutCollector()
    server = None
    if cfg.metrics_port is not None:
        # /readyz: ready once the API server has answered for the Lease (leading or standing by)
        readiness = elector.readiness if elector is not None else None
        server = MetricsServer(exporter, cfg.metrics_host, cfg.metrics_port, readiness=readiness).start()
        log.info("rollout metrics on http://%s/metrics", server.address)
    reconciler = Reconciler(
        client,
        metrics or _metrics_factory(cfg.metrics_address),
        router_factory=router_factory or default_router,
        default_provider=cfg.router,
        exporter=exporter,
        judge_of=judge_of,
        addresses=addresses,
        probe=probe(client) if probe is not None else None,
    )
    registry = build_registry(reconciler, cfg, elector, stop)
    liveness = f"http://{cfg.health_host}:{cfg.health_port}/healthz" if cfg.health_port else None
    try:
        asyncio.run(
            _operate(
                stop,
                registry=registry,
                standalone=True,
                clusterwide=cfg.namespace is None,
                namespaces=[cfg.namespace] if cfg.namespace else (),
                ready_flag=ready,
                liveness_endpoint=liveness,
            )
        )
    finally:
        if elector is not None:
            elector.release()
        if server is not None:
            server.stop()
        client.close()


async def _operate(stop: threading.Event, **operator_kwargs: Any) -> None:
    """``kopf.operator`` until SIGINT/SIGTERM (kopf's own signal handlers) or until ``stop`` is set.

    ``stop`` is not kopf's ``stop_flag``: kopf waits for a ``threading.Event`` flag in a worker
    thread of the loop's default executor, and on a signal nothing sets it, so ``asyncio.run`` then
    waited forever for that thread (SIGTERM never ended the process); with an asyncio flag, its
    waiter is left pending and kopf gives it 5 s as a "hung task". So ``stop`` is polled here and
    cancels the operator (kopf stops its tasks at once), and it is set on the way out, so whatever
    still waits for it in a thread (a standby's ``LeaderElector.acquire``) returns."""
    operator = asyncio.create_task(kopf.operator(**operator_kwargs), name="kopf operator")
    try:
        while not operator.done() and not stop.is_set():
            await asyncio.wait({operator}, timeout=STOP_POLL)
        if not operator.done():
            operator.cancel()
        try:
            await operator
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # we are cancelled ourselves, not only the operator we stopped
    finally:
        stop.set()
