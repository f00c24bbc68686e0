"""Feedback labels reach the version that answered the prediction, whatever the weights.

Locust (and any labelling pipeline) sends the ``X-Model-Version`` it got with the prediction along
with the label; nginx routes such requests back to the backend serving that version, so a 10 %
canary gets all of its own feedback, not 10 % of everyone's. Real nginx, real backend processes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from rollout.local.nginx import NginxConfig, NginxServer
from rollout.local.processes import Supervisor, free_port
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
