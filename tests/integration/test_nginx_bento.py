"""The whole local data plane with real model servers: LocalStack = nginx + Prometheus + the join
store (Redis and its exporter) + bentoml serve.

A canary split through nginx reaches two real ``bentoml serve`` processes (iris:v1 stable,
iris:v2 candidate); every answer's model version agrees with the router's ``X-Routed-To``, the
request id is kept end to end, Prometheus scrapes both servers and the join store's exporter, and
``LocalStack.down`` from another process stops everything ``up`` started, Redis and the exporter
included.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rollout.errors import MetricQueryError, NotFoundError
from rollout.local.processes import is_running
from rollout.local.stack import LocalStack
from rollout.local.stackfile import COMPONENTS
from rollout.routers.base import Routes, RouteTarget
from rollout.spec import StickyKey

pytestmark = pytest.mark.integration
ROW = {"instances": [[5.1, 3.5, 1.4, 0.2]]}


@pytest.fixture(scope="module")
def stack(bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    mp = pytest.MonkeyPatch()
    mp.setenv("BENTOML_HOME", str(bentoml_home))
    home = tmp_path_factory.mktemp("rollout-home")
    s = LocalStack.up(home, services=["iris"])
    try:
        yield s
    finally:
        s.stop()
        mp.undo()


def test_canary_through_nginx_reaches_real_bento_servers(stack: LocalStack) -> None:
    stable = stack.start_bento("iris", "iris:v1")
    candidate = stack.start_bento("iris", "iris:v2")
    router = stack.router("iris")
    router.ensure(RouteTarget("iris", stable, candidate))
    router.set_routes(Routes(candidate_weight=30))
    seen: Counter[tuple[str, str]] = Counter()
    with httpx.Client(timeout=30) as c:
        for i in range(200):
            r = c.post(
                stack.service_url("iris") + "/predict", json=ROW, headers={"X-Request-ID": f"canary-{i}"}
            )
            assert r.status_code == 200, r.text
            assert r.headers["x-request-id"] == f"canary-{i}"
            seen[(r.headers["x-routed-to"], r.headers["x-model-version"])] += 1
    assert set(seen) == {("stable", "v1"), ("candidate", "v2")}, seen
    assert 0.18 <= seen[("candidate", "v2")] / 200 <= 0.42

    # Prometheus scrapes both servers: the per-version request counters reach it within seconds
    provider = stack.metrics()
    query = 'sum by (version) (model_requests_total{endpoint=~".*predict.*"})'
    deadline = time.monotonic() + 60
    counts: dict[str, float] = {}
    while time.monotonic() < deadline:
        counts = provider.query_vector(query)
        if counts.get("v1", 0) + counts.get("v2", 0) >= 200:
            break
        time.sleep(1)
    assert counts.get("v1") == seen[("stable", "v1")] and counts.get("v2") == seen[("candidate", "v2")], (
        counts
    )
    with pytest.raises(MetricQueryError):
        provider.run_query("model_requests_total")  # several series: the provider refuses to guess
    # the join store's exporter is a target too: the series of both versions' labels exist, at 0
    joined = provider.query_vector('sum by (version) (model_feedback_total{component="join"})')
    assert joined == {"v1": 0, "v2": 0}, joined


def test_promotion_switches_every_user_to_the_new_version(stack: LocalStack) -> None:
    backends = stack.backends("iris")
    router = stack.router("iris")
    router.ensure(RouteTarget("iris", backends["iris-v1"], backends["iris-v2"]))
    router.set_routes(Routes(candidate_weight=50, sticky=StickyKey(header="X-User-ID")))
    with httpx.Client(timeout=30) as c:
        before = {
            u: c.post(stack.service_url("iris") + "/predict", json=ROW, headers={"X-User-ID": u}).headers[
                "x-model-version"
            ]
            for u in (f"user{i}" for i in range(30))
        }
        assert set(before.values()) == {"v1", "v2"}
        router.finalize(RouteTarget("iris", backends["iris-v2"]))  # promote: v2 becomes stable
        after = {
            c.post(stack.service_url("iris") + "/predict", json=ROW, headers={"X-User-ID": u}).headers[
                "x-model-version"
            ]
            for u in before
        }
    assert after == {"v2"}
    assert router.get_routes() == Routes.all_stable()


def test_down_from_another_process_stops_everything(bentoml_home: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    stack = LocalStack.up(home, services=["iris"], detach=True)
    backend = stack.start_backend(
        "iris",
        "echo",
        "v0",
        [sys.executable, str(Path(__file__).with_name("echo_server.py")), "echo", "{port}"],
    )
    pids = [stack.state[c]["pid"] for c in COMPONENTS] + [stack.state["backends"]["echo"]["pid"]]
    assert len(pids) == 5 and all(is_running(pid) for pid in pids)
    assert LocalStack.attach(home).service_url("iris") == stack.service_url("iris")
    code = (
        "import sys; from pathlib import Path; from rollout.local.stack import LocalStack; "
        "sys.exit(0 if LocalStack.down(Path(sys.argv[1])) else 1)"
    )
    subprocess.run([sys.executable, "-c", code, str(home)], check=True, timeout=60)
    assert not any(is_running(pid) for pid in pids)
    with pytest.raises(NotFoundError, match="rollout up"):
        LocalStack.attach(home)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{backend.address}/readyz", timeout=2)
