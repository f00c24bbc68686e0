"""The rollout_* series (rollout/metrics/names.py) computed from rollout states, served over HTTP.

``RolloutCollector`` keeps the latest ``RolloutState`` of every rollout it is told about
(``update``/``remove``) and turns them into Prometheus series at scrape time, in its own
``CollectorRegistry`` (never the process-global one):

- ``rollout_phase{rollout, service, namespace, phase}``: 1 for the current phase, 0 for every other;
- ``rollout_candidate_weight_percent``: the engine's candidate weight (what ``.status.candidateWeight``
  says: 100 once promoted, 0 once rolled back);
- ``rollout_last_transition_timestamp_seconds``: the latest step or phase change (read from the
  state, so a restarted controller reports the same time and ``ModelRolloutStuck`` is not reset);
- ``rollout_rollbacks_total{..., reason}``: one series per rollback reason the engine can give,
  0 from the start of the rollout and 1 once it ended with that reason. The value is derived from
  the persisted state, not counted in memory, so a restarted controller exports the same value
  (no false reset for ``increase()``); a new rollout of the same ModelRollout starts again at 0,
  which Prometheus treats as a counter reset;
- ``rollout_version_info{..., model, version, role}``: 1 per version that serves the rollout now
  (both while in flight; the candidate as "stable" once promoted; stable alone once rolled back).

``namespace`` is the ModelRollout's namespace ("" in local mode, which Prometheus drops), so two
rollouts of the same name in different namespaces never give duplicate series.
``MetricsServer`` serves a collector's registry on ``host:port`` (port 0: a free one) and tells
whether a scrape happened after a time (``wait_scraped``), so the local runner can make sure the
final state was seen before it exits. Beside ``/metrics`` it answers the kubelet's probes, so that a
controller replica that stands by (it waits for the Lease in kopf's startup, before kopf's own
``/healthz`` exists) is probed like the leader:

- ``/healthz`` (liveness): 200 ``ok`` while the process serves HTTP at all;
- ``/readyz`` (readiness): 200 ``ok`` once ``readiness()`` says so (it returns None when ready, or
  why not: the controller's Lease has not been reached yet), 503 and the reason until then; with
  no ``readiness`` given, ready as soon as it serves.
Who calls it: the controller (rollout/controller/handlers.py, reconciler.py) and the local runner
(rollout/local/runner.py); tests. It lives beside rollout/model.py, not in rollout/metrics/ (the
layer that only queries metrics and may not import the state model).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer, generate_latest, make_wsgi_app

from rollout.errors import UsageError
from rollout.metrics import names as n
from rollout.model import Phase, Reason, RolloutState

LABEL_ROLLOUT, LABEL_SERVICE, LABEL_NAMESPACE = "rollout", "service", "namespace"
# every reason the engine gives a rollback (phase RolledBack) or an abort (phase Aborted)
ROLLBACK_REASONS: tuple[str, ...] = (
    Reason.ANALYSIS_FAILED,
    Reason.METRICS_UNAVAILABLE,
    Reason.CANDIDATE_FAILED,
    Reason.STABLE_WON,
    Reason.EXPERIMENT_INCONCLUSIVE,
    Reason.ABORTED,
)
ROLLBACK_PHASES = frozenset({Phase.ROLLED_BACK, Phase.ABORTED})
# events that mark a step or phase change (measurements and ignored commands do not)
TRANSITION_REASONS = frozenset(
    {
        Reason.STARTED,
        Reason.STEP_STARTED,
        Reason.PAUSED,
        Reason.RESUMED,
        Reason.WAITING_FOR_PROMOTION,
        Reason.INCONCLUSIVE_LIMIT,
        Reason.METRICS_UNAVAILABLE,
        Reason.SWITCHED,
        Reason.SWITCHED_BACK,
        Reason.PROMOTED,
        Reason.ROLLED_BACK,
        Reason.ABORTED,
        Reason.SUCCEEDED,
    }
)


def split_tag(tag: str) -> tuple[str, str]:
    """("iris", "v2") for "iris:v2": the model/version labels of the model_* series."""
    model, _, version = tag.partition(":")
    return model, version or tag


def last_transition(state: RolloutState) -> float | None:
    """Unix time of the rollout's latest step or phase change; None before it started."""
    times = [state.started_at, state.progress.step_started_at, state.finished_at]
    if state.pause is not None:
        times.append(state.pause.since)
    for e in reversed(state.events):
        if e.reason in TRANSITION_REASONS:
            times.append(e.at)
            break
    known = [t for t in times if t is not None]
    return max(known) if known else None


def serving_versions(state: RolloutState) -> list[tuple[str, str]]:
    """(tag, role) of the versions serving the rollout now."""
    if state.phase == Phase.PROMOTED:
        return [(state.candidate, "stable")]
    if state.done:
        return [(state.stable, "stable")]
    return [(state.stable, "stable"), (state.candidate, "candidate")]


class RolloutCollector:
    """A custom collector over the latest state of each rollout; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[tuple[str, str], RolloutState] = {}
        self._scraped_at = 0.0  # time.time() of the latest collect()
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self)

    def update(self, rollout: str, state: RolloutState, namespace: str = "") -> None:
        with self._lock:
            self._states[(namespace, rollout)] = state

    def remove(self, rollout: str, namespace: str = "") -> None:
        with self._lock:
            self._states.pop((namespace, rollout), None)

    def rollouts(self) -> list[tuple[str, str]]:
        """(namespace, rollout) of every rollout exported."""
        with self._lock:
            return sorted(self._states)

    @property
    def scraped_at(self) -> float:
        return self._scraped_at

    def exposition(self) -> str:
        """The text a scrape returns (tests, debugging)."""
        return generate_latest(self.registry).decode("utf-8")

    # --- prometheus_client's collector protocol ---------------------------------------------------

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            states = dict(self._states)
            self._scraped_at = time.time()
        families = self._families()
        phase, weight, transition, rollbacks, info = families
        for (namespace, rollout), s in sorted(states.items()):
            base = [rollout, s.service, namespace]
            for p in Phase:
                phase.add_metric([*base, p.value], 1.0 if s.phase == p else 0.0)
            weight.add_metric(base, float(s.desired_routes.candidate_weight))
            at = last_transition(s)
            if at is not None:
                transition.add_metric(base, at)
            rolled_back = s.phase in ROLLBACK_PHASES
            reasons = list(ROLLBACK_REASONS)
            if rolled_back and s.reason not in reasons:  # a reason added to the engine later
                reasons.append(s.reason)
            for reason in reasons:
                rollbacks.add_metric([*base, reason], 1.0 if rolled_back and s.reason == reason else 0.0)
            for tag, role in serving_versions(s):
                model, version = split_tag(tag)
                info.add_metric([*base, model, version, role], 1.0)
        yield from families

    @staticmethod
    def _families() -> list[Any]:
        base = [LABEL_ROLLOUT, LABEL_SERVICE, LABEL_NAMESPACE]
        return [
            GaugeMetricFamily(
                n.ROLLOUT_PHASE,
                "1 for the rollout's current phase, 0 for the others",
                labels=[*base, "phase"],
            ),
            GaugeMetricFamily(
                n.ROLLOUT_CANDIDATE_WEIGHT, "Percent of user traffic the candidate receives", labels=base
            ),
            GaugeMetricFamily(
                n.ROLLOUT_LAST_TRANSITION, "Unix time of the rollout's last step or phase change", labels=base
            ),
            CounterMetricFamily(
                n.ROLLOUT_ROLLBACKS_TOTAL,
                "Rollbacks (automatic) and aborts (manual) of the rollout, by reason",
                labels=[*base, "reason"],
            ),
            GaugeMetricFamily(
                n.ROLLOUT_VERSION_INFO,
                "1 per model version serving the rollout, role stable or candidate",
                labels=[*base, n.LABEL_MODEL, n.LABEL_VERSION, "role"],
            ),
        ]


HEALTH_PATH, READY_PATH = "/healthz", "/readyz"
Readiness = Callable[[], str | None]  # None: ready; else why not


class _QuietHandler(WSGIRequestHandler):
    """No access log line per scrape or probe."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class MetricsServer:
    """HTTP ``/metrics`` for one collector on ``host:port`` (a daemon thread), and ``/healthz`` and
    ``/readyz`` for probes (see the module docstring); ``stop`` to close. ``readiness`` may also be
    set after construction (the attribute of that name)."""

    def __init__(
        self,
        collector: RolloutCollector,
        host: str = "127.0.0.1",
        port: int = 0,
        readiness: Readiness | None = None,
    ) -> None:
        self.collector = collector
        self.host = host
        self._port = port
        self.readiness = readiness
        self._metrics_app = make_wsgi_app(collector.registry)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_port) if self._server is not None else self._port

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def not_ready(self) -> str | None:
        """Why ``/readyz`` answers 503 now; None when it answers 200."""
        if self.readiness is None:
            return None
        try:
            return self.readiness()
        except Exception as exc:  # a probe must answer, whatever the check does
            return f"readiness check failed: {type(exc).__name__}: {exc}"

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path not in (HEALTH_PATH, READY_PATH):
            return list(self._metrics_app(environ, start_response))  # /metrics, as before
        reason = self.not_ready() if path == READY_PATH else None
        body = ("ok\n" if reason is None else f"not ready: {reason}\n").encode()
        status = "200 OK" if reason is None else "503 Service Unavailable"
        headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
        start_response(status, headers)
        return [body]

    def start(self) -> MetricsServer:
        try:
            family = socket.getaddrinfo(self.host, self._port, type=socket.SOCK_STREAM)[0][0]
            server_class = type("Server", (ThreadingWSGIServer,), {"address_family": family})
            self._server = make_server(
                self.host, self._port, self._app, server_class, handler_class=_QuietHandler
            )
        except OSError as exc:
            raise UsageError(
                f"cannot serve rollout metrics on {self.host}:{self._port}: {exc.strerror or exc}; "
                "choose another --metrics-port (ROLLOUT_METRICS_PORT) or --metrics-host"
            ) from None
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="rollout-metrics", daemon=True
        )
        self._thread.start()
        return self

    def wait_scraped(self, after: float, timeout: float) -> bool:
        """True once a scrape happened after unix time ``after`` (within ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while self.collector.scraped_at <= after:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
