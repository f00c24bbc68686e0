"""Feedback labels count for the version that answered the prediction, whatever the weights.

Locust (and any labelling pipeline) sends the ``X-Model-Version`` it got with the prediction along
with the label; nginx routes such requests back to the backend serving that version (a server with
a join of its own, ``BENTO_JOIN_STORE=local``, can only join its own predictions). Real nginx, stand-in
backends. Then the local stack as it runs: its model servers join labels in its Redis, so a label
that reaches the other version (no ``X-Model-Version``, a 50 % split) still counts for the version
that answered, once; a label without the stack's feedback token is a 401 through nginx and changes
no counter. Real nginx, Redis, exporter and `bentoml serve`.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bentos.redis_join import connect, counters
from rollout.local.nginx import NginxConfig, NginxServer
from rollout.local.processes import Supervisor, free_port
from rollout.local.stack import LocalStack
from rollout.metrics import names as n
from rollout.routers.base import Backend, Routes, RouteTarget
from rollout.routers.nginx import NginxRouter
from tests.integration.echo_server import start_echo

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def routed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NginxRouter, str, Backend, Backend]]:
    tmp = tmp_path_factory.mktemp("feedback")
    sup = Supervisor()
    try:
        stable = Backend("stable", "v1", f"127.0.0.1:{start_echo(sup, 'stable', tmp)}")
        cand = Backend("candidate", "v2", f"127.0.0.1:{start_echo(sup, 'candidate', tmp)}")
        nginx = NginxServer(
            sup, NginxConfig(prefix=tmp / "p", admin_port=free_port(), services={"iris": free_port()})
        )
        nginx.start()
        router = NginxRouter(nginx.admin_url, "iris", token=nginx.admin_token)
        router.ensure(RouteTarget("iris", stable, cand))
        yield router, nginx.service_url("iris"), stable, cand
    finally:
        sup.stop_all()


def _servers(url: str, n: int, headers: dict[str, str]) -> Counter[str]:
    seen: Counter[str] = Counter()
    with httpx.Client(timeout=10) as c:
        for _ in range(n):
            r = c.post(url + "/feedback", json={"request_id": "x", "label": "setosa"}, headers=headers)
            assert r.status_code == 200, r.text
            seen[r.json()["server"]] += 1
    return seen


def test_feedback_goes_to_the_version_that_answered(
    routed: tuple[NginxRouter, str, Backend, Backend],
) -> None:
    router, url, _, _ = routed
    router.set_routes(Routes(candidate_weight=10))
    assert _servers(url, 40, {"X-Model-Version": "v2"}) == Counter({"candidate": 40})
    assert _servers(url, 40, {"X-Model-Version": "v1"}) == Counter({"stable": 40})


def test_unknown_version_follows_the_weights(routed: tuple[NginxRouter, str, Backend, Backend]) -> None:
    router, url, _, _ = routed
    router.set_routes(Routes(candidate_weight=0))
    assert _servers(url, 20, {"X-Model-Version": "v9"}) == Counter({"stable": 20})


def test_after_finalize_the_old_candidate_version_is_forgotten(
    routed: tuple[NginxRouter, str, Backend, Backend],
) -> None:
    router, url, stable, _ = routed
    router.finalize(RouteTarget("iris", stable))
    assert _servers(url, 20, {"X-Model-Version": "v2"}) == Counter({"stable": 20})
    assert router.get_routes() == Routes()


# --- the local stack: labels joined in its Redis, with its token --------------------------------

ROWS = [
    ([5.1, 3.5, 1.4, 0.2], "setosa"),
    ([6.7, 3.0, 5.2, 2.3], "virginica"),
    ([5.9, 3.0, 4.2, 1.5], "versicolor"),
]


@pytest.fixture(scope="module")
def stack(bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    os.environ["BENTOML_HOME"] = str(bentoml_home)
    s = LocalStack.up(home=tmp_path_factory.mktemp("labels"), services=["iris"])
    try:
        stable, candidate = s.start_bento("iris", "iris:v1"), s.start_bento("iris", "iris:poisoned")
        s.router("iris").ensure(RouteTarget("iris", stable, candidate))
        s.router("iris").set_routes(Routes(candidate_weight=50))
        yield s
    finally:
        s.stop()


def joined(stack: LocalStack) -> dict[tuple[str, str, str], int]:
    return counters(connect(stack.join.url, stack.join.redis.password))


def exported(stack: LocalStack) -> list[str]:
    """The exporter's feedback series (what Prometheus scrapes)."""
    text = httpx.get(f"http://{stack.join.exporter.address}/metrics").text
    return [line for line in text.splitlines() if line.startswith("model_feedback")]


def test_a_label_that_reaches_the_other_version_counts_for_the_version_that_answered(
    stack: LocalStack,
) -> None:
    url, token = stack.service_url("iris"), {"Authorization": f"Bearer {stack.feedback_token}"}
    before = joined(stack)
    answered: Counter[str] = Counter()
    crossed = 0
    with httpx.Client(timeout=10) as c:
        made = []
        for i in range(40):
            row, truth = ROWS[i % len(ROWS)]
            r = c.post(url + "/predict", json={"instances": [row]})
            assert r.status_code == 200, r.text
            made.append((r.headers["x-request-id"], r.headers["x-model-version"], truth))
        time.sleep(0.2)  # recorded within 50 ms
        for rid, version, truth in made:  # no X-Model-Version: the split picks the server
            label = c.post(url + "/feedback", json={"request_id": rid, "label": truth}, headers=token)
            assert label.status_code == 200, label.text
            assert label.json()["counted_for"] == [version] and label.json()["duplicate"] is False
            answered[version] += 1
            crossed += label.headers["x-model-version"] != version
    assert crossed > 0, "no label reached the version that did not answer: the test proves nothing"
    after = joined(stack)
    for version in ("v1", "poisoned"):
        key = (n.FEEDBACK_TOTAL, "iris", version)
        assert after.get(key, 0) - before.get(key, 0) == answered[version], (version, answered)
    assert f'model_feedback_total{{model="iris",version="v1"}} {after[(n.FEEDBACK_TOTAL, "iris", "v1")]}' in (
        exported(stack)
    )


def test_a_label_without_the_token_is_a_401_through_nginx_and_changes_no_counter(stack: LocalStack) -> None:
    url = stack.service_url("iris")
    with httpx.Client(timeout=10) as c:
        rids = [
            c.post(url + "/predict", json={"instances": [ROWS[0][0]]}).headers["x-request-id"]
            for _ in range(6)
        ]
        time.sleep(0.2)
        before, series = joined(stack), exported(stack)
        for i, rid in enumerate(rids):
            headers = ({}, {"Authorization": "Bearer forged-token-forged-token-0000"},
                       {"Authorization": f"Bearer {stack.feedback_token}x"})[i % 3]  # fmt: skip
            label = c.post(url + "/feedback", json={"request_id": rid, "label": "virginica"}, headers=headers)
            assert label.status_code == 401, label.text
            assert label.json()["error"]["code"] == "unauthorized"
        assert joined(stack) == before and exported(stack) == series
        real = c.post(url + "/feedback", json={"request_id": rids[0], "label": "setosa"},
                      headers={"Authorization": f"Bearer {stack.feedback_token}"})  # fmt: skip
    assert real.status_code == 200 and real.json()["correct"] in (0, 1), real.text
