"""A real Prometheus that scrapes the pods of the single-node cluster (tests/k8s/node.py), its scrape
configuration generated from the cluster's PodMonitor and ServiceMonitor objects as the Prometheus
Operator generates it (tests/k8s/monitor_config.py says what each field means there).

Prometheus 3.5.0 (``build()``: Debian's 2.42 has no Kubernetes service discovery) runs inside the
node's network namespace (``nsenter --net``: pod IPs are reachable only there), started by
``start()`` as the test's own child and stopped by its pid. Its web port is bound to 127.0.0.1
inside the netns and reached from the host through ``Node.forward``. It discovers pods (and
Endpoints, for ServiceMonitors) with ``kubernetes_sd_configs`` against the node's API server at
``https://10.200.0.2:P`` (the netns side of the API server's forward), authenticating with the
harness's admin client certificate and trusting its CA (file paths in the config).

``PodPrometheus.sync()`` re-reads the monitors and, when the generated configuration changed,
writes it and reloads Prometheus (``POST /-/reload``, ``--web.enable-lifecycle``); ``query()``,
``vector()``, ``targets()`` and ``dropped()`` read its HTTP API. Called by
tests/e2e/test_k8s_pod_prometheus.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from rollout.errors import ProcessError
from tests.k8s.harness import _die_with_parent
from tests.k8s.monitor_config import GLOBAL, scrape_configs
from tests.k8s.node import NODE_IP, Node

__all__ = ["PodPrometheus", "Target", "build", "list_monitors", "render_config", "start"]

# Debian's prometheus (2.42, /usr/bin/prometheus) is built without Kubernetes service discovery
# (``field kubernetes_sd_configs not found in type config.ScrapeConfig``), so this builds the
# version prometheus-operator v0.85.0 runs by default (operator.DefaultPrometheusVersion) from its
# Go module, once, into .cache/prometheus (git-ignored): tests/k8s/build-tools.sh reads these two
# lines (the one place the version is written) and builds it with the other Go tools.
PROMETHEUS_VERSION = "v3.5.0"
PROMETHEUS_MODULE = "github.com/prometheus/prometheus@v0.305.0"  # Prometheus 3.5.0's Go module version
ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / ".cache" / "prometheus" / f"prometheus-{PROMETHEUS_VERSION}"


def list_monitors(api_client: Any, plural: str) -> list[dict[str, Any]]:
    """Every object of ``plural`` (podmonitors, servicemonitors) in the cluster."""
    from kubernetes import client

    found = client.CustomObjectsApi(api_client).list_cluster_custom_object(
        "monitoring.coreos.com", "v1", plural
    )
    return list(found["items"])


def render_config(node: Node, sd: dict[str, Any]) -> str:
    """The whole prometheus.yml for the monitors in ``node``'s cluster now."""
    api = node.control_plane.api_client()
    try:
        configs = scrape_configs(list_monitors(api, "podmonitors"), sd, list_monitors(api, "servicemonitors"))
    finally:
        api.close()
    return yaml.safe_dump({"global": GLOBAL, "scrape_configs": configs}, sort_keys=False)


@dataclass(frozen=True)
class Target:
    """One active target of Prometheus' /api/v1/targets."""

    pool: str  # the scrape config's job_name: podMonitor/<ns>/<name>/<i>, serviceMonitor/...
    labels: dict[str, str]
    url: str
    health: str  # "up", "down" or "unknown" (not scraped yet)
    last_error: str


@dataclass
class PodPrometheus:
    """A running Prometheus in ``node``'s netns. ``url`` is its 127.0.0.1 address on the host."""

    node: Node
    workdir: Path
    proc: subprocess.Popen[bytes]
    url: str
    sd: dict[str, Any]
    port: int = 0  # its web port inside the node netns (on ``listen``, see start())
    config_text: str = ""
    reloads: int = 0
    started_in: float = 0.0  # seconds from exec to /-/ready
    _http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10))

    @property
    def config_file(self) -> Path:
        return self.workdir / "prometheus.yml"

    @property
    def log(self) -> Path:
        return self.workdir / "prometheus.log"

    def sync(self) -> bool:
        """Re-read the monitors; when the configuration they make changed, write it and reload
        Prometheus (a ProcessError with its message if it refuses it). True when it reloaded."""
        text = render_config(self.node, self.sd)
        if text == self.config_text:
            return False
        self.config_file.write_text(text)
        self.check_alive()
        resp = self._http.post(f"{self.url}/-/reload")
        if resp.status_code != 200:
            raise ProcessError(
                f"Prometheus refused the configuration ({resp.status_code}): {resp.text.strip()}"
            )
        self.config_text = text
        self.reloads += 1
        return True

    def _api(self, path: str, **params: str) -> Any:
        self.check_alive()
        resp = self._http.get(f"{self.url}/api/v1/{path}", params=params)
        body = resp.json()
        if body.get("status") != "success":
            raise ProcessError(f"Prometheus /api/v1/{path} {params}: {body.get('error', resp.text)}")
        return body["data"]

    def vector(self, promql: str) -> list[tuple[dict[str, str], float]]:
        """An instant query's series: (labels, value) for each."""
        data = self._api("query", query=promql)
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        return [(r["metric"], float(r["value"][1])) for r in data["result"]]

    def query(self, promql: str) -> float | None:
        """The value of an instant query that yields one series; None when it yields none."""
        found = self.vector(promql)
        if len(found) > 1:
            raise LookupError(f"{promql!r} yields {len(found)} series: {[labels for labels, _ in found]}")
        return found[0][1] if found else None

    def targets(self, pool_prefix: str = "") -> list[Target]:
        """The active targets (of the scrape pools whose name starts with ``pool_prefix``)."""
        data = self._api("targets", state="active")
        return [
            Target(t["scrapePool"], t["labels"], t["scrapeUrl"], t["health"], t.get("lastError", ""))
            for t in data["activeTargets"]
            if t["scrapePool"].startswith(pool_prefix)
        ]

    def dropped(self, pool_prefix: str = "") -> list[dict[str, str]]:
        """The discovered labels of the targets relabeling dropped (pod, container and port of each
        discovered container port, in the ``__meta_kubernetes_*`` labels), by scrape pool prefix."""
        data = self._api("targets", state="dropped")
        return [
            t["discoveredLabels"]
            for t in data["droppedTargets"]
            if t.get("scrapePool", t["discoveredLabels"].get("job", "")).startswith(pool_prefix)
        ]

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise ProcessError(f"prometheus exited with {self.proc.returncode}:\n{self.log_tail()}")

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def stop(self) -> None:
        """SIGTERM to the pid this started (SIGKILL after 10 s); the workdir stays."""
        self._http.close()
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def build() -> Path:
    """The Prometheus binary with Kubernetes service discovery; tests/k8s/build-tools.sh builds it
    (``make tools``: with the other Go tools, their caches and progress). ProcessError naming that
    command when it is not built."""
    if not os.access(PROMETHEUS, os.X_OK):
        raise ProcessError(f"{PROMETHEUS} is not built ({PROMETHEUS_MODULE}): run `make tools`")
    return PROMETHEUS


def _free_port_in_netns(node: Node) -> int:
    probe = "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"
    proc = node.run(sys.executable, "-c", probe)
    if proc.returncode != 0:
        raise ProcessError(f"no free port in {node.netns}: {proc.stderr.strip()}")
    return int(proc.stdout)


def _wait(what: str, probe: Callable[[], bool], timeout: float, prom: PodPrometheus) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        prom.check_alive()
        try:
            if probe():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise ProcessError(f"{what} not within {timeout:.0f} s:\n{prom.log_tail()}")


def start(node: Node, workdir: Path, timeout: float = 60.0, listen: str = "127.0.0.1") -> PodPrometheus:
    """Start Prometheus in ``node``'s netns with the monitors found now (``sync()`` later picks up
    changes); return once it is ready. Stop it with ``stop()``. ``listen``: the address its web port
    binds in the netns; ``NODE_IP`` (or 0.0.0.0) lets pods reach it at ``http://10.200.0.2:PORT``
    (``.port``), still only inside the netns (the host's namespace has no route there)."""
    binary = build()
    workdir.mkdir(parents=True, exist_ok=True)
    pki = node.control_plane.pki
    api_port = int(node.control_plane.server.rsplit(":", 1)[1])
    sd = {
        "api_server": f"https://{NODE_IP}:{api_port}",
        "tls_config": {"ca_file": str(pki / "ca.crt"), "cert_file": str(pki / "admin.crt"),
                       "key_file": str(pki / "admin.key")},
    }  # fmt: skip
    port = _free_port_in_netns(node)
    args = [
        str(binary),
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address={listen}:{port}",
        "--web.enable-lifecycle",
        "--storage.tsdb.retention.time=1d",
    ]
    config = render_config(node, sd)
    (workdir / "prometheus.yml").write_text(config)
    url = f"http://127.0.0.1:{node.forward('127.0.0.1' if listen == '0.0.0.0' else listen, port)}"
    begun = time.monotonic()
    with (workdir / "prometheus.log").open("ab") as log:
        proc = subprocess.Popen(
            node.nsenter(*args), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_die_with_parent,
        )  # fmt: skip
    prom = PodPrometheus(node, workdir, proc, url, sd, port=port, config_text=config)
    try:
        _wait(
            "Prometheus /-/ready", lambda: prom._http.get(f"{url}/-/ready").status_code == 200, timeout, prom
        )
    except BaseException:
        prom.stop()
        raise
    prom.started_in = time.monotonic() - begun
    return prom


if __name__ == "__main__":
    print(build())
