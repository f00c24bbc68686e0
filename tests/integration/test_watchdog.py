"""The local stack restarts what dies, as a kubelet would: model servers, nginx, Prometheus, the
join store's Redis and exporter.

Real nginx, Prometheus, Redis, the join exporter and stand-in model servers
(tests/integration/echo_server.py) under a stack brought up with ``supervise=True``. Each is
SIGKILLed and must come back on its address, with one line in the stack's events file; what was
stopped on purpose (``stop_backend``, ``stop_prometheus``) and what is frozen (SIGSTOP, alive) is
left alone; a server that keeps dying is restarted with a growing back-off; ``rollout down`` of a
detached stack stops the watchdog daemon first and leaves no process behind. With a real
``bentoml serve``: Redis and then the exporter SIGKILLed while labels are sent through nginx lose
no label that was accepted (200): Redis fsyncs before it answers, the exporter reads Redis.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bentos.redis_join import connect, counters
from rollout.local.processes import is_running
from rollout.local.stack import LocalStack
from rollout.local.stackfile import COMPONENTS
from rollout.local.watchdog import _History, read_events
from rollout.metrics import names as n
from rollout.routers.base import RouteTarget

pytestmark = pytest.mark.integration
ECHO = str(Path(__file__).with_name("echo_server.py"))


def wait_for(what: str, check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting until {what}")


def ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    s = LocalStack.up(home=tmp_path_factory.mktemp("watchdog"), services=["iris", "labels"], supervise=True)
    try:
        yield s
    finally:
        s.stop()


def echo(stack: LocalStack, name: str, version: str) -> object:
    return stack.start_backend("iris", name, version, [sys.executable, ECHO, name, "{port}"])


def pid_of(stack: LocalStack, component: str) -> int:
    state = stack.reload()
    info = state[component] if component in COMPONENTS else state["backends"][component]
    return int(info["pid"])


def events(stack: LocalStack) -> list[dict]:
    return read_events(stack.home)[0]


def test_a_killed_model_server_comes_back_on_its_address_and_says_so(stack: LocalStack) -> None:
    b = echo(stack, "iris-v1", "v1")
    stack.router("iris").ensure(RouteTarget("iris", b))
    old = pid_of(stack, "iris-v1")
    os.kill(old, signal.SIGKILL)
    wait_for(
        "iris-v1 is restarted", lambda: pid_of(stack, "iris-v1") != old and ok(f"http://{b.address}/readyz")
    )
    r = httpx.post(stack.service_url("iris") + "/predict", json={})
    assert r.status_code == 200 and r.json()["server"] == "iris-v1"
    # the event is written once the restarted server is ready, a moment after the test sees it ready
    wait_for("the restart event", lambda: any(e["component"] == "backend:iris-v1" for e in events(stack)), 10)
    last = [e for e in events(stack) if e["component"] == "backend:iris-v1"][-1]
    assert last["version"] == "v1" and last["service"] == "iris" and f"pid {old}" in last["message"]


def test_nginx_and_prometheus_come_back_with_their_routes_and_series(stack: LocalStack) -> None:
    for component in ("nginx", "prometheus"):
        old = pid_of(stack, component)
        os.kill(old, signal.SIGKILL)
        wait_for(f"{component} is restarted", lambda c=component, o=old: pid_of(stack, c) != o, 60)
    wait_for("prometheus answers", lambda: ok(stack.prometheus_url + "/-/ready"), 60)
    wait_for("nginx routes iris again", lambda: ok(stack.nginx.admin_url + "/healthz"))
    r = httpx.post(stack.service_url("iris") + "/predict", json={})
    assert r.status_code == 200, "routes were lost with nginx"
    assert {"nginx", "prometheus"} <= {e["component"] for e in events(stack)}


def test_a_killed_join_store_comes_back_and_loses_no_accepted_label(
    stack: LocalStack, bentoml_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BENTOML_HOME", str(bentoml_home))
    server = stack.start_bento("labels", "iris:v1")
    stack.router("labels").ensure(RouteTarget("labels", server))
    url, token = stack.service_url("labels"), {"Authorization": f"Bearer {stack.feedback_token}"}
    store = connect(stack.join.url, stack.join.redis.password)
    key = (n.FEEDBACK_TOTAL, "iris", "v1")
    accepted, refused = 0, 0
    with httpx.Client(timeout=10) as c:

        def predict() -> str:
            r = c.post(url + "/predict", json={"instances": [[5.1, 3.5, 1.4, 0.2]]})
            assert r.status_code == 200, r.text
            return r.headers["x-request-id"]

        def label(rid: str) -> None:
            """Send the label as a labelling pipeline does: again after a retryable 503."""
            nonlocal accepted, refused
            for _ in range(100):
                r = c.post(url + "/feedback", json={"request_id": rid, "label": "setosa"}, headers=token)
                if r.status_code != 503:
                    assert r.status_code == 200, r.text
                    accepted += 1
                    return
                refused += 1
                time.sleep(0.1)
            raise AssertionError("the join store did not come back")

        rids = [predict() for _ in range(30)]
        time.sleep(0.2)
        for rid in rids[:10]:
            label(rid)
        assert counters(store)[key] == accepted == 10
        for component, rid_batch in (("redis", rids[10:20]), ("joinExporter", rids[20:])):
            old = pid_of(stack, component)
            os.kill(old, signal.SIGKILL)
            for rid in rid_batch:  # while it is away and after it is back
                label(rid)
            wait_for(f"{component} is restarted", lambda c=component, o=old: pid_of(stack, c) != o, 60)
            wait_for("the exporter answers", lambda: ok(f"http://{stack.join.exporter.address}/healthz"))
            store = connect(stack.join.url, stack.join.redis.password)
            assert counters(store)[key] == accepted, f"{component} killed: labels were lost"
        for rid in rids[:3]:  # a label sent again counts once: the labels survived too
            r = c.post(url + "/feedback", json={"request_id": rid, "label": "setosa"}, headers=token)
            assert r.status_code == 200 and r.json()["duplicate"] is True, r.text
    assert accepted == 30 and counters(store)[key] == 30
    print(f"join store killed twice: {accepted} labels accepted, {refused} answered 503 and sent again")
    # (a scrape of the killed exporter failed: its series are stale until the next one)
    query = f'sum({key[0]}{{component="join",version="v1"}}) or vector(0)'
    wait_for(
        "Prometheus reads every label from the restarted exporter",
        lambda: stack.metrics().run_query(query) == 30,
        30,
    )
    assert {"redis", "joinExporter"} <= {e["component"] for e in events(stack)}
    stack.stop_backend(server.name)


def test_what_is_stopped_on_purpose_or_frozen_is_left_alone(stack: LocalStack) -> None:
    echo(stack, "iris-gone", "v9")
    stack.stop_backend("iris-gone")
    stack.stop_prometheus()
    try:
        frozen = echo(stack, "iris-frozen", "v8")
        pid = pid_of(stack, "iris-frozen")
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(2.5)  # five looks of the watchdog
            assert is_running(pid), "a frozen server was restarted"
            assert "iris-gone" not in stack.reload()["backends"]
            assert not ok(stack.prometheus_url + "/-/ready"), "Prometheus was started against the user's will"
        finally:
            os.kill(pid, signal.SIGCONT)
        assert ok(f"http://{frozen.address}/readyz")
        stack.stop_backend("iris-frozen")
    finally:
        stack.start_prometheus()
    mentioned = {e["component"] for e in events(stack)}
    assert "backend:iris-gone" not in mentioned and "backend:iris-frozen" not in mentioned


def test_a_server_that_keeps_dying_is_restarted_with_a_growing_back_off() -> None:
    h = _History()
    waits = []
    now = 0.0
    for _ in range(8):
        waits.append(h.wait(now))
        now += waits[-1]
        h.restarts.append(now)
    assert waits == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert h.wait(now + 301) == 0.0, "an old crash no longer slows the next restart"


def test_a_detached_stack_is_watched_by_a_daemon_that_down_stops_first(tmp_path: Path) -> None:
    s = LocalStack.up(home=tmp_path, services=["iris"], detach=True, supervise=True)
    s.detach()
    state = s.reload()
    dog = state["watchdog"]
    try:
        assert is_running(dog["pid"], dog["startTime"])
        old = state["nginx"]["pid"]
        os.kill(old, signal.SIGKILL)
        wait_for("the daemon restarts nginx", lambda: s.reload()["nginx"]["pid"] != old, 30)
        pids = [dog["pid"], *(s.reload()[c]["pid"] for c in COMPONENTS)]
        assert all(is_running(p) for p in pids)
    finally:
        assert LocalStack.down(tmp_path)
    time.sleep(1.5)  # a watchdog still alive would have restarted nginx by now
    assert not any(is_running(p) for p in pids), "down() left a process behind"
