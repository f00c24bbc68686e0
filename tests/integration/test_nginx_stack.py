"""LocalStack life cycle: Ctrl-C and SIGTERM stop every process; a new service is added by a reload.

A child Python process brings a stack up (nginx, Prometheus, the join store's Redis and exporter,
a stand-in model server), prints the pids, and is then interrupted the way a user would; nothing
it started may survive. Every process binds 127.0.0.1 only.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from rollout.local.processes import is_running
from rollout.local.stack import LocalStack
from rollout.routers.base import RouteTarget

pytestmark = pytest.mark.integration
ECHO = str(Path(__file__).with_name("echo_server.py"))

CHILD = """
import json, sys, time
from pathlib import Path
from rollout.local.stack import LocalStack
stack = LocalStack.up(Path(sys.argv[1]), services=["iris"])
stack.start_backend("iris", "echo", "v0", [sys.executable, sys.argv[2], "echo", "{port}"])
s = stack.state
pids = [s[c]["pid"] for c in ("nginx", "prometheus", "redis", "joinExporter")]
print(json.dumps(pids + [s["backends"]["echo"]["pid"]]), flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupting_the_owner_stops_every_process(tmp_path: Path, sig: signal.Signals) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path / "home"), ECHO], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        pids = json.loads(child.stdout.readline())
        assert len(pids) == 5 and all(is_running(p) for p in pids)
        for pid in pids[:4]:  # nginx, Prometheus, Redis, the exporter listen on loopback only
            listening = {c.laddr.ip for c in psutil.Process(pid).net_connections() if c.status == "LISTEN"}
            assert listening == {"127.0.0.1"}, (pid, listening)
        child.send_signal(sig)
        child.wait(timeout=60)
        deadline = time.monotonic() + 10
        while any(is_running(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in pids if is_running(p)], "processes survived the interrupt"
        assert child.returncode != 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_adding_a_service_reloads_without_losing_routes(tmp_path: Path) -> None:
    stack = LocalStack.up(tmp_path / "home", services=["iris"])
    try:
        echo = stack.start_backend("iris", "echo", "v0", [sys.executable, ECHO, "echo", "{port}"])
        stack.router("iris").ensure(RouteTarget("iris", echo))
        url = stack.add_service("wine")
        assert url != stack.service_url("iris")
        assert httpx.post(stack.service_url("iris") + "/predict", json={}).json()["server"] == "echo"
        nothing = httpx.post(url + "/predict", json={})
        assert nothing.status_code == 503 and "wine" in nothing.text  # no backend for it yet
        assert LocalStack.attach(tmp_path / "home").service_url("wine") == url
    finally:
        stack.stop()


def test_prometheus_can_be_stopped_and_started_again_and_nginx_restarted(tmp_path: Path) -> None:
    from rollout.errors import MetricsUnavailableError
    from rollout.routers.base import Routes

    stack = LocalStack.up(tmp_path / "home", services=["iris"])
    try:
        echo = stack.start_backend("iris", "echo", "v0", [sys.executable, ECHO, "echo", "{port}"])
        other = stack.start_backend("iris", "echo2", "v1", [sys.executable, ECHO, "echo2", "{port}"])
        router = stack.router("iris")
        router.ensure(RouteTarget("iris", echo, other))
        router.set_routes(Routes(candidate_weight=100))
        provider = stack.metrics()
        assert provider.run_query("vector(1)") == 1
        stack.stop_prometheus()
        with pytest.raises(MetricsUnavailableError):
            provider.run_query("vector(1)")
        stack.start_prometheus()
        assert provider.run_query("vector(1)") == 1
        old_pid = stack.state["nginx"]["pid"]
        stack.restart("nginx")
        assert stack.state["nginx"]["pid"] != old_pid and not is_running(old_pid)
        assert router.get_routes() == Routes(candidate_weight=100)
        assert httpx.post(stack.service_url("iris") + "/predict", json={}).json()["server"] == "echo2"
        assert LocalStack.attach(tmp_path / "home").state["nginx"]["pid"] == stack.state["nginx"]["pid"]
    finally:
        stack.stop()
