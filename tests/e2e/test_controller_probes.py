"""The controller's probes against the real kube-apiserver: what the chart's Deployment probes.

- a standby ``rollout controller`` (waiting for the Lease) answers ``/healthz`` and ``/readyz`` on
  its metrics port, while kopf's own ``/healthz`` (``--health-port``, the chart's probe target
  before) is not even open: probed there, every standby was restarted;
- the Lease's readiness served by the metrics server: 503 naming the Lease before the API server
  was reached, 200 for the leader and for the standby once it was, 503 with the error while the
  API server cannot be reached.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollout.errors import RolloutError
from rollout.exporter import HEALTH_PATH, READY_PATH, MetricsServer, RolloutCollector
from rollout.k8s.client import KubeClient
from rollout.k8s.lease import LeaderElector
from rollout.local.processes import free_port
from tests.k8s import crds

pytestmark = pytest.mark.k8s
ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "k8s" / "crd" / "modelrollouts.bento-rollout.io.yaml"


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := probe():
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


@pytest.fixture
def kube(k8s_cluster: Any) -> Iterator[KubeClient]:
    with k8s_cluster.http(timeout=60) as http:
        crds.apply_crd_documents(http, [yaml.safe_load(CRD_FILE.read_text())])
    client = KubeClient.from_kubeconfig(str(k8s_cluster.kubeconfig))
    yield client
    client.close()


class Controller:
    """``rollout controller`` with its metrics port and kopf's health port, in its own group."""

    def __init__(self, kubeconfig: Path, namespace: str, log: Path, identity: str) -> None:
        self.log, self.metrics_port, self.health_port = log, free_port(), free_port()
        cmd = [
            str(Path(sys.executable).parent / "rollout"), "controller", "-n", namespace, "--kubeconfig",
            str(kubeconfig), "--interval", "0.5", "--lease-namespace", namespace, "--lease-name", "ctl",
            "--lease-duration", "30", "--identity", identity, "--metrics-port", str(self.metrics_port),
            "--health-port", str(self.health_port),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        self.proc = subprocess.Popen(
            cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=ROOT
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.metrics_port}{path}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@pytest.fixture
def controllers(
    k8s_cluster: Any, k8s_namespace: str, tmp_path: Path
) -> Iterator[Callable[[str], Controller]]:
    started: list[Controller] = []

    def start(identity: str) -> Controller:
        c = Controller(
            k8s_cluster.kubeconfig, k8s_namespace, tmp_path / f"controller-{identity}.log", identity
        )
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()
    for c in started:
        print(f"--- {c.log.name}\n{c.log.read_text(errors='replace')[-3000:]}")


def test_a_standby_answers_its_probes_on_the_metrics_port_where_kopfs_healthz_is_not_open(
    kube: KubeClient, controllers: Callable[[str], Controller]
) -> None:
    a = controllers("a")
    # the leader: kopf's startup is done, so kopf's /healthz is open as well
    wait_for("a to lead", lambda: "a is the leader" in a.log.read_text(errors="replace"))
    wait_for("kopf's /healthz on a", lambda: not refused(a.health_port), timeout=30)
    b = controllers("b")
    wait_for(
        "b waiting for the Lease", lambda: "b waiting for the Lease" in b.log.read_text(errors="replace")
    )
    for c in (a, b):
        assert get(c.url(HEALTH_PATH)) == (200, "ok\n"), c.log.name
        # ready once its first attempt at the Lease has been answered (just after that log line)
        wait_for(f"{c.log.name} ready", lambda c=c: get(c.url(READY_PATH))[0] == 200, timeout=15)
        assert "rollout_phase" in get(c.url("/metrics"))[1]
    time.sleep(2)  # well past kopf's start-up on a: b's stays shut while it stands by
    assert refused(b.health_port), "kopf's /healthz opened on a standby: the probes could go back there"
    assert b.proc.poll() is None and a.proc.poll() is None


def test_the_leases_readiness_on_the_real_api_server(kube: KubeClient, k8s_namespace: str) -> None:
    a = LeaderElector(kube, k8s_namespace, "probe-lease", "a", duration=30)
    b = LeaderElector(kube, k8s_namespace, "probe-lease", "b", duration=30)
    with (
        MetricsServer(RolloutCollector(), "127.0.0.1", 0, readiness=a.readiness) as sa,
        MetricsServer(RolloutCollector(), "127.0.0.1", 0, readiness=b.readiness) as sb,
    ):
        status, body = get(f"http://{sa.address}{READY_PATH}")
        assert status == 503 and f"Lease {k8s_namespace}/probe-lease" in body
        assert a.try_acquire()  # the leader
        assert not b.try_acquire()  # the standby: the API server answered, someone else leads
        assert get(f"http://{sa.address}{READY_PATH}") == (200, "ok\n")
        assert get(f"http://{sb.address}{READY_PATH}") == (200, "ok\n")
    a.release()
    b.release()


def test_an_unreachable_api_server_is_not_ready_and_the_probe_says_why(
    k8s_cluster: Any, k8s_namespace: str
) -> None:
    from kubernetes import client as k8s

    config = k8s.Configuration()
    config.host = f"https://127.0.0.1:{free_port()}"  # nothing listens there
    config.verify_ssl = False
    unreachable = KubeClient(k8s.ApiClient(config))
    e = LeaderElector(unreachable, k8s_namespace, "probe-lease", "c", duration=30)
    with MetricsServer(RolloutCollector(), "127.0.0.1", 0, readiness=e.readiness) as server:
        with pytest.raises(RolloutError):
            e.try_acquire()
        status, body = get(f"http://{server.address}{READY_PATH}")
        assert status == 503 and "has not reached the Lease" in body and "127.0.0.1" in body, body
        assert get(f"http://{server.address}{HEALTH_PATH}") == (200, "ok\n")
    unreachable.close()
