"""The probes the chart's controller Deployment points at: ``/healthz`` and ``/readyz`` on the
rollout_* metrics server (rollout/exporter.py), next to an unchanged ``/metrics``; and the Lease's
readiness (rollout/k8s/lease.py): ready once the API server answered, leader or standby.

A real HTTP server on 127.0.0.1; the Lease API is a fake here (tests/e2e/test_controller_probes.py
runs both against the real kube-apiserver)."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import pytest

from rollout.errors import RolloutError, TemporaryError
from rollout.exporter import HEALTH_PATH, READY_PATH, MetricsServer, RolloutCollector
from rollout.k8s.lease import LeaderElector


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_healthz_and_readyz_answer_and_metrics_are_unchanged() -> None:
    with MetricsServer(RolloutCollector(), "127.0.0.1", 0) as server:
        base = f"http://{server.address}"
        assert get(base + HEALTH_PATH) == (200, "ok\n")
        assert get(base + READY_PATH) == (200, "ok\n")  # nothing to wait for: ready once serving
        status, body = get(base + "/metrics")
        assert status == 200 and "# TYPE rollout_phase gauge" in body
        assert "rollout_phase" in get(base + "/")[1]  # prometheus_client serves any other path


def test_readyz_is_503_with_the_reason_until_ready() -> None:
    reason: list[str | None] = ["has not reached the Lease ns/ctl on the API server yet"]
    with MetricsServer(RolloutCollector(), "127.0.0.1", 0, readiness=lambda: reason[0]) as server:
        base = f"http://{server.address}"
        assert get(base + READY_PATH) == (503, f"not ready: {reason[0]}\n")
        assert get(base + HEALTH_PATH) == (200, "ok\n")  # alive while not ready: never restarted for it
        reason[0] = None
        assert get(base + READY_PATH) == (200, "ok\n")


def test_a_readiness_check_that_raises_is_not_ready_not_a_dead_server() -> None:
    def broken() -> str | None:
        raise RuntimeError("boom")

    server = MetricsServer(RolloutCollector(), "127.0.0.1", 0)
    server.readiness = broken  # may be set after construction, once the caller has the check
    with server:
        status, body = get(f"http://{server.address}{READY_PATH}")
        assert status == 503 and "RuntimeError: boom" in body
        assert get(f"http://{server.address}{HEALTH_PATH}")[0] == 200


class FakeClient:
    """KubeClient.call over a fake CoordinationV1Api."""

    api_client: Any = None

    def call(self, what: str, fn: Any, *args: Any) -> Any:
        return fn(*args)


class FakeLeaseApi:
    def __init__(self) -> None:
        self.lease: Any = None
        self.fail: RolloutError | None = None

    def read_namespaced_lease(self, name: str, namespace: str) -> Any:
        if self.fail is not None:
            raise self.fail
        if self.lease is None:
            from rollout.errors import NotFoundError

            raise NotFoundError("no Lease")
        return self.lease

    def create_namespaced_lease(self, namespace: str, body: Any) -> Any:
        self.lease = body
        return body

    def replace_namespaced_lease(self, name: str, namespace: str, body: Any) -> Any:
        self.lease = body
        return body


def elector(api: FakeLeaseApi, identity: str) -> LeaderElector:
    e = LeaderElector(FakeClient(), "ns", "ctl", identity)  # type: ignore[arg-type]
    e.api = api  # type: ignore[assignment]
    return e


def test_the_lease_makes_leader_and_standby_ready_once_the_api_server_answered() -> None:
    api = FakeLeaseApi()
    a, b = elector(api, "a"), elector(api, "b")
    assert "has not reached the Lease ns/ctl" in (a.readiness() or "")
    assert a.try_acquire() and a.readiness() is None  # the leader
    assert not b.try_acquire() and b.readiness() is None  # the standby: ready too, it waits
    assert b.readiness() is None and not b.is_leader


def test_an_unreachable_api_server_is_not_ready_and_says_why() -> None:
    api = FakeLeaseApi()
    api.fail = TemporaryError("Lease ns/ctl: connection refused (https://10.0.0.1:443)")
    e = elector(api, "a")
    with pytest.raises(TemporaryError):
        e.try_acquire()
    reason = e.readiness() or ""
    assert "has not reached the Lease ns/ctl" in reason and "connection refused" in reason
    api.fail = None
    assert e.try_acquire() and e.readiness() is None
