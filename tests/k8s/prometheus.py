"""A real Prometheus for the cluster-tier tests, fed by series written straight into its TSDB.

No model pods run in the test cluster, so nothing could be scraped: instead ``request_series``
renders OpenMetrics text of ``model_requests_total`` counters (per service, version and status
code, with the 5xx share chosen per version) from before the test to well after it, ``promtool
tsdb create-blocks-from openmetrics`` turns it into blocks, and ``backfilled`` starts a real
``prometheus`` on them and waits until a query answers. The process is the test's own child
(``PrometheusServer.proc``), so a fault drill can signal it by its pid, never by name.
Who calls it: tests/e2e/test_cluster_hung_prometheus.py (tests/e2e/test_controller_strategies.py
has an older copy of the same set-up).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.k8s.harness import _die_with_parent, free_port


def request_series(
    errors: dict[str, tuple[float, float]],
    now: float,
    before: float = 600,
    after: float = 1800,
    rate: float = 20,
    step: int = 5,
) -> str:
    """OpenMetrics text: for each service, ``(stable 5xx share, candidate 5xx share)`` of ``rate``
    requests per second to versions v1 (stable) and v2 (candidate), a sample every ``step`` s."""
    rows = ["# TYPE model_requests counter"]
    totals: dict[tuple[str, str, str], float] = defaultdict(float)
    for t in range(int(now - before), int(now + after), step):
        for svc, shares in errors.items():
            for version, share in zip(("v1", "v2"), shares, strict=True):
                bad = rate * step * share
                totals[(svc, version, "500")] += bad
                totals[(svc, version, "200")] += rate * step - bad
                for code in ("200", "500"):
                    labels = f'model="{svc}",version="{version}",endpoint="predict",code="{code}"'
                    rows.append(f"model_requests_total{{{labels}}} {totals[(svc, version, code)]} {t}")
    return "\n".join([*rows, "# EOF"]) + "\n"


@dataclass
class PrometheusServer:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def query(self, q: str) -> float:
        """The first value of an instant query (0.0 when there is none or it fails)."""
        try:
            res = httpx.get(self.url + "/api/v1/query", params={"query": q}, timeout=5).json()
            result = res["data"]["result"]
        except (httpx.HTTPError, KeyError, ValueError):
            return 0.0
        return float(result[0]["value"][1]) if result else 0.0

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)  # a drill may have left it stopped
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/-/ready", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _wait(what: str, probe: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


@contextmanager
def backfilled(
    home: Path, openmetrics: str, probe_query: str, timeout: float = 120
) -> Iterator[PrometheusServer]:
    """A Prometheus on 127.0.0.1 serving ``openmetrics`` (backfilled), ready once ``probe_query``
    yields a value above 0; stopped (SIGCONT first) on exit."""
    (home / "series.om").write_text(openmetrics)
    data = home / "data"
    promtool = shutil.which("promtool") or "promtool"
    subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(home / "series.om"), str(data)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (home / "prometheus.yml").write_text("global: {scrape_interval: 15s}\nscrape_configs: []\n")
    port = free_port()
    log = home / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                shutil.which("prometheus") or "prometheus",
                f"--config.file={home / 'prometheus.yml'}",
                f"--storage.tsdb.path={data}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=30d",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    server = PrometheusServer(f"http://127.0.0.1:{port}", proc, log)
    try:
        _wait("Prometheus ready", lambda: _ready(server.url), timeout)
        _wait("the backfilled series", lambda: server.query(probe_query) > 0, timeout)
        yield server
    finally:
        server.stop()
