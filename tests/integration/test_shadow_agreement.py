"""Shadow agreement and fault injection, end to end on the embedded stack.

While the candidate is mirrored, nginx sends it a copy of each mirrored request under the same
X-Request-ID once the client has stable's answer; both servers record their answer in the stack's
join store (Redis), which compares the two, and the ``shadow-agreement`` gate reads the agreement
rate from Prometheus, which scrapes the store's exporter - the path a cluster's gates read too.
Nothing of stable's answer passes through the router (the servers have no endpoint for it). A
label for a mirrored request counts for both versions: the shadow's accuracy. Real nginx, Prometheus, Redis and `bentoml serve`. Also:
``BENTO_FAULT_ERROR_RATE`` makes a server fail that share of predictions with a 500 (used by the
rollback benchmark and fault drills), and a bad value stops it at start-up.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bentos.redis_join import connect, counters
from rollout.local.bento import start_bento_server
from rollout.local.processes import free_port
from rollout.local.stack import LocalStack
from rollout.metrics import names as n
from rollout.metrics.sampler import SampleContext, collect
from rollout.routers.base import Routes, RouteTarget
from rollout.spec import MetricSpec

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5], [6.0, 2.2, 5.0, 1.5]]


@pytest.fixture(scope="module")
def stack(bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    os.environ["BENTOML_HOME"] = str(bentoml_home)
    s = LocalStack.up(home=tmp_path_factory.mktemp("shadow"), services=["iris"])
    try:
        yield s
    finally:
        s.stop()


def test_poisoned_shadow_disagrees_and_the_gate_sees_it(stack: LocalStack) -> None:
    stable = stack.start_bento("iris", "iris:v1")
    shadow = stack.start_bento("iris", "iris:poisoned")
    router = stack.router("iris")
    router.ensure(RouteTarget("iris", stable, shadow))
    router.set_routes(Routes(mirror_percent=100))
    # as in a rollout, Prometheus scrapes the candidate before its traffic starts (counters must
    # be seen at 0 first for increase() to count them), and the store's series of the candidate
    # exist at 0 from its start (LocalStack.start_bento), scraped from the exporter
    deadline = time.monotonic() + 60
    for query in ('up{backend="iris-poisoned"} == 1',
                  f'{n.SHADOW_COMPARISONS_TOTAL}{{component="join",version="poisoned"}} == 0'):  # fmt: skip
        while stack.metrics().query_vector(query) == {}:
            assert time.monotonic() < deadline, f"Prometheus never saw {query}"
            time.sleep(0.5)
    seen: Counter[str] = Counter()
    with httpx.Client(timeout=10) as c:
        for i in range(80):
            r = c.post(stack.service_url("iris") + "/predict", json={"instances": [ROWS[i % len(ROWS)]]})
            seen[r.headers["x-model-version"]] += 1
    assert seen == Counter({"v1": 80})  # clients only ever get stable's answer
    metric = MetricSpec(
        name="agreement", template="shadow-agreement", threshold={"min": 0.95}, direction="higher"
    )
    ctx = SampleContext("iris", "iris:v1", "iris:poisoned", window=60.0)
    deadline = time.monotonic() + 90
    while True:
        sample = collect(metric, stack.metrics(), ctx)
        if sample.candidate_total >= 70 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert sample.candidate_total >= 70, sample  # a few comparisons may time out on a loaded machine
    agreement = 1 - sample.candidate_bad / sample.candidate_total
    assert 0.3 < agreement < 0.95, (
        f"the poisoned model should disagree on some rows, agreement {agreement:.2f}"
    )
    # counted once, in the store, for both versions; the servers' own /metrics count nothing
    provider = stack.metrics()
    assert provider.run_query(f'sum({n.SHADOW_COMPARISONS_TOTAL}{{component="join"}})') >= 2 * 70
    router = httpx.get(stack.nginx.admin_url + "/metrics").text
    assert "shadow_comparisons_sent" not in router and 'mirror_copies_total{status="200"}' in router


def test_a_label_for_a_mirrored_request_counts_for_both_versions(stack: LocalStack) -> None:
    backends = stack.backends("iris")
    stable, shadow = backends["iris-v1"], backends["iris-poisoned"]
    stack.router("iris").ensure(RouteTarget("iris", stable, shadow))
    stack.router("iris").set_routes(Routes(mirror_percent=100))
    store = connect(stack.join.url, stack.join.redis.password)
    before = counters(store)
    with httpx.Client(timeout=10) as c:
        answer = c.post(stack.service_url("iris") + "/predict", json={"instances": [ROWS[1]]})
        time.sleep(0.5)  # the mirror copy is sent after the answer, and recorded within 50 ms
        label = c.post(
            stack.service_url("iris") + "/feedback",
            json={"request_id": answer.headers["x-request-id"], "label": "virginica"},
            headers={"Authorization": f"Bearer {stack.feedback_token}", "X-Model-Version": "v1"},
        )
    assert label.status_code == 200, label.text
    assert sorted(label.json()["counted_for"]) == ["poisoned", "v1"]
    after = counters(store)
    for version in ("v1", "poisoned"):
        key = (n.FEEDBACK_TOTAL, "iris", version)
        assert after[key] - before.get(key, 0) == 1, (version, before, after)


def test_fault_injection_fails_that_share_of_predictions(bentoml_home: Path) -> None:
    server = start_bento_server(
        "iris:v2",
        free_port(),
        1,
        extra_env={"BENTO_FAULT_ERROR_RATE": "0.5"},
        bentoml_home=bentoml_home,
        timeout=180,
    )
    try:
        codes: Counter[int] = Counter()
        with httpx.Client(timeout=10) as c:
            for _ in range(200):
                r = c.post(server.url + "/predict", json={"instances": [ROWS[0]]})
                codes[r.status_code] += 1
                if r.status_code == 500:
                    assert r.json()["error"]["code"] == "injected_fault"
        assert set(codes) == {200, 500} and 60 < codes[500] < 140, codes
    finally:
        server.stop()  # SIGTERM first: BentoML's workers are in process groups of their own


def test_a_bad_fault_rate_stops_the_server_with_a_clear_error(bentoml_home: Path) -> None:
    env = {**os.environ, "BENTO_FAULT_ERROR_RATE": "lots", "BENTOML_HOME": str(bentoml_home)}
    out = subprocess.run([sys.executable, "-c", "import bentos.app as a; a.ModelApp(a.Limits())"],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode != 0
    assert "BENTO_FAULT_ERROR_RATE must be a number between 0 and 1, not 'lots'" in out.stderr
