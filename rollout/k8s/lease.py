"""Leader election on a coordination.k8s.io/v1 Lease, so two controller replicas never both act.

The holder writes ``holderIdentity`` and renews ``renewTime`` every ``duration / 3`` seconds; a
candidate takes the Lease over only when it has not been renewed for ``duration`` seconds. Every
write is conditional on the ``resourceVersion`` read, so when two candidates race for an expired
Lease exactly one PUT succeeds and the other gets a 409. A holder that cannot renew within its
``duration`` stops acting (``is_leader`` turns False) before anyone else can take over.
Who calls it: rollout.controller.handlers (``rollout controller --leader-election``) and tests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from kubernetes import client as k8s

from rollout.errors import ConflictError, NotFoundError, RolloutError
from rollout.k8s.client import KubeClient

log = logging.getLogger("rollout.lease")


def _micro(ts: float) -> datetime:
    """``ts`` as a Lease's MicroTime. Never on a whole second: the client then writes no fraction
    (``isoformat``), and the API server refuses the Lease (it wants ``.000000``)."""
    at = datetime.fromtimestamp(ts, UTC)
    return at if at.microsecond else at.replace(microsecond=1)


class LeaderElector:
    """Acquire and keep one Lease. ``try_acquire`` is one attempt; ``run`` keeps renewing in a thread."""

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        name: str,
        identity: str,
        duration: float = 15.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client, self.namespace, self.name, self.identity = client, namespace, name, identity
        self.duration, self.clock = duration, clock
        self.api = k8s.CoordinationV1Api(client.api_client)
        self._renewed_at: float | None = None
        self._answered = False  # the API server answered an attempt: we hold the Lease or know who does
        self._last_error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def is_leader(self) -> bool:
        """True while our last successful renewal is younger than the lease duration."""
        return self._renewed_at is not None and self.clock() - self._renewed_at < self.duration

    def readiness(self) -> str | None:
        """None once an attempt reached the API server (this replica leads, or stands by for the
        Lease): a replica is ready then, leader or not. Until then, why not. For ``/readyz``
        (rollout/exporter.py ``MetricsServer(readiness=...)``)."""
        if self._answered:
            return None
        why = f": {self._last_error}" if self._last_error else ""
        return f"has not reached the Lease {self.namespace}/{self.name} on the API server yet{why}"

    def _spec(self, now: float, acquire: bool, transitions: int) -> k8s.V1LeaseSpec:
        spec = k8s.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=max(1, int(self.duration)),
            renew_time=_micro(now),
            lease_transitions=transitions,
        )
        if acquire:
            spec.acquire_time = _micro(now)
        return spec

    def try_acquire(self) -> bool:
        """One attempt to acquire or renew. True when we hold the Lease afterwards."""
        try:
            held = self._try_acquire()
        except RolloutError as exc:
            self._last_error = str(exc)[:200]
            raise
        self._answered = True
        return held

    def _try_acquire(self) -> bool:
        now = self.clock()
        what = f"Lease {self.namespace}/{self.name}"
        try:
            lease = self.client.call(what, self.api.read_namespaced_lease, self.name, self.namespace)
        except NotFoundError:
            body = k8s.V1Lease(
                metadata=k8s.V1ObjectMeta(name=self.name, namespace=self.namespace),
                spec=self._spec(now, True, 0),
            )
            try:
                self.client.call(what, self.api.create_namespaced_lease, self.namespace, body)
            except ConflictError:  # someone created it first
                return False
            self._renewed_at = now
            return True
        spec = lease.spec or k8s.V1LeaseSpec()
        holder = spec.holder_identity
        renewed = spec.renew_time.timestamp() if spec.renew_time else 0.0
        expired = now - renewed > float(spec.lease_duration_seconds or self.duration)
        if holder not in (self.identity, None, "") and not expired:
            self._renewed_at = None
            return False
        mine = holder == self.identity
        lease.spec = self._spec(now, not mine, (spec.lease_transitions or 0) + (0 if mine else 1))
        if mine and spec.acquire_time:
            lease.spec.acquire_time = spec.acquire_time
        try:
            self.client.call(what, self.api.replace_namespaced_lease, self.name, self.namespace, lease)
        except ConflictError:
            return False
        if not mine:
            log.info("%s acquired %s", self.identity, what)
        self._renewed_at = now
        return True

    def acquire(self, stop: threading.Event | None = None, poll: float | None = None) -> bool:
        """Block until we hold the Lease (True) or ``stop`` is set (False)."""
        stop = stop or self._stop
        while not stop.is_set():
            try:
                if self.try_acquire():
                    return True
            except RolloutError as exc:
                log.warning("leader election: %s", exc)
            stop.wait(poll if poll is not None else max(self.duration / 3, 0.2))
        return False

    def start_renewing(self, on_lost: Callable[[], None] | None = None) -> None:
        """Renew every ``duration / 3`` in a daemon thread.

        When leadership is lost (another holder took the Lease, or the API server could not be
        reached for longer than the Lease duration) the process stands by instead of exiting:
        ``is_leader`` turns false, so handlers act on nothing, ``on_lost`` is called, and the thread
        keeps trying to acquire the Lease; once it does, ``is_leader`` is true again. Acting twice is
        impossible either way: the reconciler writes status with the object's resourceVersion.
        """

        def loop() -> None:
            while not self._stop.wait(max(self.duration / 3, 0.2)):
                try:
                    held = self.try_acquire()
                except RolloutError as exc:
                    log.warning("lease renewal failed: %s", exc)
                    held = self.is_leader
                if held:
                    continue
                log.error(
                    "%s lost the Lease %s/%s: standing by until it can be acquired again",
                    self.identity,
                    self.namespace,
                    self.name,
                )
                self._renewed_at = None
                if on_lost is not None:
                    on_lost()
                if self.acquire(self._stop):
                    log.info("%s leads again (Lease %s/%s)", self.identity, self.namespace, self.name)

        self._thread = threading.Thread(target=loop, name="lease-renewal", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop renewing and give the Lease up (so a standby takes over at once)."""
        self._stop.set()
        if self._renewed_at is None:
            return
        self._renewed_at = None
        try:
            lease = self.client.call("Lease", self.api.read_namespaced_lease, self.name, self.namespace)
            if lease.spec and lease.spec.holder_identity == self.identity:
                lease.spec.holder_identity = None
                lease.spec.renew_time = None
                self.client.call("Lease", self.api.replace_namespaced_lease, self.name, self.namespace, lease)
        except RolloutError as exc:
            log.warning("could not release the Lease: %s", exc)
