"""The nginx router as users see it: real nginx (+Lua), real backend processes on 127.0.0.1.

Backends are stand-in model servers (tests/integration/echo_server.py) that answer with their name,
so each test can tell which version answered; the router's decision is in ``X-Routed-To``.
"""

from __future__ import annotations

import socket
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rollout.errors import RouterError, UnknownProviderError
from rollout.local.nginx import NginxConfig, NginxServer
from rollout.local.processes import Supervisor, free_port
from rollout.routers.base import Backend, Routes, RouteTarget
from rollout.routers.nginx import NginxRouter
from rollout.routers.registry import make_router
from rollout.spec import HeaderMatch, StickyKey
from tests.integration.echo_server import start_echo

pytestmark = pytest.mark.integration
SERVICE = "iris"


class Plane:
    def __init__(self, sup: Supervisor, nginx: NginxServer, stable: Backend, candidate: Backend) -> None:
        self.sup, self.nginx, self.stable, self.candidate = sup, nginx, stable, candidate
        self.router = NginxRouter(nginx.admin_url, SERVICE, token=nginx.admin_token)
        self.url = nginx.service_url(SERVICE)
        self.target = RouteTarget(SERVICE, stable, candidate)

    def send(
        self, n: int, headers: dict[str, str] | None = None, cookies: dict[str, str] | None = None
    ) -> Counter:
        seen: Counter[tuple[str, str]] = Counter()
        with httpx.Client(timeout=10, cookies=cookies) as c:
            for _ in range(n):
                r = c.post(self.url + "/predict", json={"x": 1}, headers=headers)
                assert r.status_code == 200, r.text
                seen[(r.headers["x-routed-to"], r.json()["server"])] += 1
        return seen


def auth(plane: Plane) -> dict[str, str]:
    return {"Authorization": f"Bearer {plane.nginx.admin_token}"}


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    tmp = tmp_path_factory.mktemp("nginx")
    sup = Supervisor()
    try:
        stable = Backend("stable", "v1", f"127.0.0.1:{start_echo(sup, 'stable', tmp)}")
        candidate = Backend("candidate", "v2", f"127.0.0.1:{start_echo(sup, 'candidate', tmp)}")
        nginx = NginxServer(
            sup, NginxConfig(prefix=tmp / "prefix", admin_port=free_port(), services={SERVICE: free_port()})
        )
        nginx.start()
        yield Plane(sup, nginx, stable, candidate)
    finally:
        sup.stop_all()


@pytest.fixture
def routed(plane: Plane) -> Plane:
    plane.router.finalize(RouteTarget(SERVICE, plane.stable))
    plane.router.ensure(plane.target)
    return plane


def test_all_traffic_goes_to_stable_until_routes_change(routed: Plane) -> None:
    assert routed.router.get_routes() == Routes.all_stable()
    assert routed.send(50) == Counter({("stable", "stable"): 50})


def test_weights_split_traffic_within_tolerance(routed: Plane) -> None:
    routed.router.set_routes(Routes(candidate_weight=30))
    seen = routed.send(600)
    assert set(seen) <= {("stable", "stable"), ("candidate", "candidate")}, (
        "X-Routed-To must name the answering server"
    )
    share = seen[("candidate", "candidate")] / 600
    assert 0.22 <= share <= 0.38, f"candidate got {share:.1%} at weight 30"
    routed.router.set_routes(Routes(candidate_weight=100))
    assert routed.send(50) == Counter({("candidate", "candidate"): 50})


def test_header_match_sends_matching_requests_to_candidate(routed: Plane) -> None:
    routed.router.set_routes(Routes(match=(HeaderMatch(header="X-Canary", value="always"),)))
    assert routed.send(30, headers={"X-Canary": "always"}) == Counter({("candidate", "candidate"): 30})
    assert routed.send(30, headers={"X-Canary": "never"}) == Counter({("stable", "stable"): 30})
    assert routed.send(30) == Counter({("stable", "stable"): 30})


def test_cookie_match_sends_matching_requests_to_candidate(routed: Plane) -> None:
    routed.router.set_routes(Routes(match=(HeaderMatch(cookie="beta", value="yes"),)))
    assert routed.send(20, cookies={"beta": "yes"}) == Counter({("candidate", "candidate"): 20})
    assert routed.send(20, cookies={"beta": "no"}) == Counter({("stable", "stable"): 20})
    assert routed.router.get_routes().match == (HeaderMatch(cookie="beta", value="yes"),)


def test_sticky_assignment_is_stable_per_user_and_monotonic_in_weight(routed: Plane) -> None:
    routed.router.set_routes(Routes(candidate_weight=50, sticky=StickyKey(header="X-User-ID")))
    users = [f"user-{i}" for i in range(40)]
    at_50: dict[str, str] = {}
    for u in users:
        seen = routed.send(4, headers={"X-User-ID": u})
        assert len(seen) == 1, f"{u} was split across versions: {seen}"
        at_50[u] = next(iter(seen))[1]
    assert 8 <= sum(v == "candidate" for v in at_50.values()) <= 32
    routed.router.set_routes(Routes(candidate_weight=80, sticky=StickyKey(header="X-User-ID")))
    for u, version in at_50.items():
        if version == "candidate":  # raising the weight never moves a user back to stable
            assert routed.send(2, headers={"X-User-ID": u}) == Counter({("candidate", "candidate"): 2})


def test_sticky_cookie_assignment(routed: Plane) -> None:
    routed.router.set_routes(Routes(candidate_weight=50, sticky=StickyKey(cookie="uid")))
    versions = set()
    for i in range(20):
        seen = routed.send(3, cookies={"uid": f"u{i}"})
        assert len(seen) == 1
        versions |= {server for _, server in seen}
    assert versions == {"stable", "candidate"}


def _settled(seen_url: str, before: int, quiet: float = 0.5, limit: float = 10.0) -> list[dict]:
    """What the echo server saw after ``before``, once nothing new arrived for ``quiet`` seconds (at
    most ``limit``): mirror copies are sent after the client's answer, from a timer, so on a busy
    machine the last ones arrive a moment after the client's loop ended."""
    deadline = time.monotonic() + limit
    seen = httpx.get(seen_url).json()[before:]
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = httpx.get(seen_url).json()[before:]
        if len(now) == len(seen):
            return now
        seen = now
    return seen


def test_mirror_reaches_candidate_while_clients_only_get_stable(routed: Plane) -> None:
    cand = f"http://{routed.candidate.address}"
    before = len(httpx.get(cand + "/_seen").json())
    routed.router.set_routes(Routes(mirror_percent=40))
    client_ids = set()
    with httpx.Client(timeout=10) as c:
        for i in range(300):
            rid = f"req-{i}"
            r = c.post(routed.url + "/predict", json={"x": i}, headers={"X-Request-ID": rid})
            assert r.json()["server"] == "stable" and r.headers["x-routed-to"] == "stable"
            assert r.headers["x-request-id"] == rid
            client_ids.add(rid)
        generated = c.post(routed.url + "/predict", json={})
        assert len(generated.headers["x-request-id"]) == 32, (
            "nginx generates an id when the client sends none"
        )
        assert generated.json()["requestId"] == generated.headers["x-request-id"]
    mirrored = _settled(cand + "/_seen", before)  # copies go after the answers: some still on their way
    assert all(m["mirror"] for m in mirrored)
    share = len([m for m in mirrored if m["rid"] in client_ids]) / 300
    assert 0.28 <= share <= 0.52, f"mirror reached the candidate for {share:.1%} of requests at 40%"
    assert {m["rid"] for m in mirrored} <= client_ids | {generated.headers["x-request-id"]}


def test_only_predictions_are_mirrored_not_labels_or_reads(routed: Plane) -> None:
    """At 100 % shadow a label (POST /feedback, no X-Model-Version) and a GET reach stable alone: a
    copied label would label the candidate's answer to a request it never answered to the client."""
    cand = f"http://{routed.candidate.address}"
    before = len(httpx.get(cand + "/_seen").json())
    routed.router.set_routes(Routes(mirror_percent=100))
    with httpx.Client(timeout=10) as c:
        for i in range(10):
            assert (
                c.post(routed.url + "/feedback", json={"request_id": f"l-{i}", "label": 1}).status_code == 200
            )
            assert c.get(routed.url + "/predict", headers={"X-Request-ID": f"g-{i}"}).status_code == 200
            c.post(routed.url + "/predict", json={"x": i}, headers={"X-Request-ID": f"p-{i}"})
    mirrored = _settled(cand + "/_seen", before)
    assert sorted(m["rid"] for m in mirrored) == sorted(f"p-{i}" for i in range(10)), mirrored
    assert {m["path"] for m in mirrored} == {"/predict"}


def test_weight_changes_under_load_fail_no_request(routed: Plane) -> None:
    from tests.integration.loadkit import run_load

    changes = []

    def change_weights(stop: object) -> None:
        import time

        for i in range(40):
            w = [0, 10, 25, 50, 75, 100, 50, 5][i % 8]
            routed.router.set_routes(Routes(candidate_weight=w, mirror_percent=10 if w < 100 else 0))
            changes.append(w)
            time.sleep(0.1)

    res = run_load(
        routed.url, threads=4, seconds=6, max_requests=8000, expect_server=lambda r: r, during=change_weights
    )
    print(
        f"weight changes under load: {len(changes)} changes, {res.total} requests, {len(res.failures)} failed"
    )
    assert len(changes) == 40
    assert res.total > 200, "the load generator barely ran"
    assert res.failures == [], res.failures[:5]
    assert res.mismatched == 0
    assert res.servers["stable"] > 0 and res.servers["candidate"] > 0


def test_graceful_reloads_under_load_fail_no_request(routed: Plane) -> None:
    """Reloads are only for static changes (a new service); drained first, they cost no request."""
    from tests.integration.loadkit import run_load

    routed.router.set_routes(Routes(candidate_weight=50))
    apply_times: list[float] = []

    def reload(stop: object) -> None:
        for _ in range(20):
            apply_times.append(routed.nginx.reload())

    res = run_load(routed.url, threads=4, seconds=10, max_requests=20_000, during=reload)
    print(
        f"20 drained reloads under load: {res.total} requests, {len(res.failures)} failed "
        f"({set(f.split(':')[0] for f in res.failures)}), new workers serving after median "
        f"{statistics.median(apply_times) * 1000:.0f} ms"
    )
    assert len(apply_times) == 20
    assert routed.router.get_routes() == Routes(candidate_weight=50), "routes survive a reload"
    assert res.total > 200, "the load generator barely ran"
    assert res.failures == [], res.failures[:5]


@pytest.mark.parametrize(
    "routes", [Routes(candidate_weight=50), Routes(mirror_percent=100)], ids=["split", "shadow"]
)
def test_while_draining_nginx_itself_says_close_and_closes(routed: Plane, routes: Routes) -> None:
    """During a drain a keep-alive client is told once, by nginx, to close; then nginx closes.

    python-requests / http.client obey the first Connection header only, so a second
    "Connection: close" after nginx's own "keep-alive" would not do (that was the reload gap).
    """
    import http.client

    routed.router.set_routes(routes)
    host, port = routed.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("POST", "/predict", body=b'{"x": 1}', headers={"Content-Type": "application/json"})
        first = conn.getresponse()
        first.read()
        assert first.getheader("Connection") != "close", "keep-alive outside a drain"
        httpx.post(
            routed.nginx.admin_url + "/drain?seconds=30", headers=auth(routed), timeout=5
        ).raise_for_status()
        conn.request("POST", "/predict", body=b'{"x": 1}', headers={"Content-Type": "application/json"})
        draining = conn.getresponse()
        draining.read()
        assert draining.status == 200
        assert [v for k, v in draining.getheaders() if k.lower() == "connection"] == ["close"]
        # http.client drops its socket on "close" by itself, so look at the wire: on a raw socket,
        # nginx must end the connection after the answer (a keep-alive one would time out here)
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            raw.sendall(
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 8\r\n\r\n{"x": 1}'
            )
            received = b""
            while chunk := raw.recv(65536):  # socket.timeout fails the test: nginx kept it open
                received += chunk
        assert received.startswith(b"HTTP/1.1 200") and received.lower().count(b"\r\nconnection:") == 1
    finally:
        conn.close()
        httpx.delete(routed.nginx.admin_url + "/drain", headers=auth(routed), timeout=5).raise_for_status()
    assert routed.send(3).total() == 3, "after the drain, requests are served as before"


def test_plain_reload_without_drain_still_serves(routed: Plane) -> None:
    """The undrained SIGHUP path works too (its cost under load is measured in bench/router.py)."""
    routed.router.set_routes(Routes(candidate_weight=100))
    assert routed.nginx.reload(drain=0) < 30
    assert routed.send(5) == Counter({("candidate", "candidate"): 5})


def test_candidate_killed_mid_canary_gives_clients_no_errors(plane: Plane, tmp_path: Path) -> None:
    from tests.integration.loadkit import run_load

    port = start_echo(plane.sup, "doomed", tmp_path)
    doomed = Backend("doomed", "v3", f"127.0.0.1:{port}")
    plane.router.ensure(RouteTarget(SERVICE, plane.stable, doomed))
    plane.router.set_routes(Routes(candidate_weight=50))

    def kill(stop: object) -> None:
        import signal
        import time

        time.sleep(1.5)
        plane.sup.stop("doomed", sig=signal.SIGKILL)

    res = run_load(plane.url, threads=4, seconds=4, max_requests=6000, during=kill)
    print(f"candidate SIGKILLed under load: {res.total} requests, {len(res.failures)} failed, {res.servers}")
    assert res.failures == [], res.failures[:5]
    assert res.servers["doomed"] > 0 and res.servers["stable"] > res.servers["doomed"]
    after = plane.send(30)  # the dead candidate still has weight 50: every request is retried on stable
    assert after == Counter({("stable", "stable"): 30})
    metrics = httpx.get(plane.nginx.admin_url + "/metrics").text
    retried = [line for line in metrics.splitlines() if line.startswith("rollout_router_retries_total{")]
    assert retried and 'failed="candidate"' in retried[0] and float(retried[0].split()[-1]) >= 3
    # after a few failed connections the dead candidate is marked down (passive health check):
    # its share goes straight to stable, without a failed try first
    failovers = [ln for ln in metrics.splitlines() if ln.startswith("rollout_router_failovers_total{")]
    assert any('down="candidate"' in ln and float(ln.split()[-1]) >= 10 for ln in failovers), failovers
    plane.router.finalize(RouteTarget(SERVICE, plane.stable))


def test_admin_api_refuses_requests_without_the_token(routed: Plane) -> None:
    """Another local user (or a web page posting to 127.0.0.1) cannot move traffic."""
    routed.router.set_routes(Routes(candidate_weight=20))
    url = f"{routed.nginx.admin_url}/routes/{SERVICE}"
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": "Basic eDp5"}):
        stolen = httpx.post(url, json={"routes": {"candidateWeight": 100}}, headers=headers)
        assert stolen.status_code == 401, stolen.text
        assert "Bearer" in stolen.json()["error"] and stolen.headers["www-authenticate"].startswith("Bearer")
        assert httpx.get(url, headers=headers).status_code == 401
        assert httpx.post(routed.nginx.admin_url + "/drain?seconds=60", headers=headers).status_code == 401
    assert routed.router.get_routes() == Routes(candidate_weight=20), "routing unchanged"
    token_file = routed.nginx.cfg.prefix / "admin-token"
    assert token_file.read_text().strip() == routed.nginx.admin_token
    assert token_file.stat().st_mode & 0o077 == 0, "the token file is readable by its owner only"
    assert routed.nginx.conf_path.stat().st_mode & 0o077 == 0, "nginx.conf holds the token: owner only"
    assert httpx.get(routed.nginx.admin_url + "/metrics").status_code == 200, (
        "metrics stay open to Prometheus"
    )


def test_invalid_routes_are_refused_and_leave_routing_unchanged(routed: Plane) -> None:
    routed.router.set_routes(Routes(candidate_weight=20))
    bad = httpx.post(
        f"{routed.nginx.admin_url}/routes/{SERVICE}",
        json={"routes": {"candidateWeight": 150}},
        headers=auth(routed),
    )
    assert bad.status_code == 400 and "candidateWeight" in bad.json()["error"]
    routed.router.finalize(RouteTarget(SERVICE, routed.stable))
    with pytest.raises(RouterError, match="candidate is not set"):
        routed.router.set_routes(Routes(candidate_weight=10))
    assert routed.router.get_routes() == Routes.all_stable()


def test_routes_survive_an_nginx_restart(routed: Plane) -> None:
    routes = Routes(candidate_weight=35, match=(HeaderMatch(header="X-Beta", value="1"),))
    routed.router.set_routes(routes)
    routed.nginx.stop()
    routed.nginx.start()
    assert routed.router.get_routes() == routes
    assert routed.router.get_backends() == {
        "stable": routed.stable.address,
        "candidate": routed.candidate.address,
    }
    assert routed.send(10, headers={"X-Beta": "1"}) == Counter({("candidate", "candidate"): 10})


def test_router_metrics_count_decisions(routed: Plane) -> None:
    def count(routed_to: str) -> float:
        text = httpx.get(routed.nginx.admin_url + "/metrics").text
        needle = f'rollout_router_requests_total{{service="{SERVICE}",routed_to="{routed_to}",code="200"}} '
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(needle))

    before = count("candidate")
    routed.router.set_routes(Routes(candidate_weight=100))
    routed.send(25)
    assert count("candidate") - before == 25


def test_registry_builds_nginx_router_and_refuses_unknown(plane: Plane) -> None:
    router = make_router(
        "nginx", admin_url=plane.nginx.admin_url, service=SERVICE, token=plane.nginx.admin_token
    )
    assert isinstance(router, NginxRouter)
    with pytest.raises(UnknownProviderError, match="linkerd"):
        make_router("linkerd")


def test_unreachable_admin_api_is_a_router_error(tmp_path: Path) -> None:
    router = NginxRouter(f"http://127.0.0.1:{free_port()}", SERVICE, timeout=2)
    with pytest.raises(RouterError, match="unreachable"):
        router.get_routes()


def test_shadow_of_a_slow_candidate_does_not_slow_clients(plane: Plane, tmp_path: Path) -> None:
    port = start_echo(plane.sup, "sluggish", tmp_path, delay_ms=300)
    sluggish = Backend("sluggish", "v4", f"127.0.0.1:{port}")
    plane.router.ensure(RouteTarget(SERVICE, plane.stable, sluggish))
    plane.router.set_routes(Routes(mirror_percent=100))
    import time

    latencies = []
    with httpx.Client(timeout=10) as c:
        for _ in range(30):
            t = time.perf_counter()
            r = c.post(plane.url + "/predict", json={})
            latencies.append(time.perf_counter() - t)
            assert r.json()["server"] == "stable"
    mirrored = [m for m in _settled(f"http://{sluggish.address}/_seen", 0) if m["mirror"]]
    plane.router.finalize(RouteTarget(SERVICE, plane.stable))
    plane.sup.stop("sluggish")
    assert len(mirrored) >= 25
    assert statistics.median(latencies) < 0.15, f"clients waited for the 300 ms shadow: {latencies}"


def test_a_failing_candidates_5xx_is_answered_by_stable(plane: Plane, tmp_path: Path) -> None:
    """A request the split sends to a candidate that answers 500 gets stable's answer (one retry,
    predictions have no side effects); the candidate still saw it, so its own error metrics, which
    the gates read, count the failure. A feedback label pinned to the candidate's version is not
    retried elsewhere: it gets the candidate's own answer."""
    port = start_echo(plane.sup, "broken", tmp_path, fail_status=500)
    broken = Backend("broken", "v5", f"127.0.0.1:{port}")
    plane.router.ensure(RouteTarget(SERVICE, plane.stable, broken))
    plane.router.set_routes(Routes(candidate_weight=100))
    try:
        with httpx.Client(timeout=10) as c:
            answers = [c.post(plane.url + "/predict", json={"x": 1}) for _ in range(20)]
            pinned = c.post(plane.url + "/feedback", json={}, headers={"X-Model-Version": "v5"})
        assert [r.status_code for r in answers] == [200] * 20
        assert {(r.headers["x-routed-to"], r.json()["server"]) for r in answers} == {("stable", "stable")}
        seen = [m for m in httpx.get(f"http://{broken.address}/_seen").json() if m["path"] == "/predict"]
        assert len(seen) == 20, "every request reached the candidate first"
        assert pinned.status_code == 500, "a label for the candidate's answer goes to the candidate only"
        metrics = httpx.get(plane.nginx.admin_url + "/metrics").text
        retried = [ln for ln in metrics.splitlines() if ln.startswith("rollout_router_retries_total{")]
        assert any('failed="candidate"' in ln and float(ln.split()[-1]) >= 20 for ln in retried), retried
    finally:
        plane.router.finalize(RouteTarget(SERVICE, plane.stable))
        plane.sup.stop("broken")


def test_stable_killed_mid_canary_its_users_are_answered_by_the_candidate(
    plane: Plane, tmp_path: Path
) -> None:
    """Stable SIGKILLed under load at a 10 % canary: a failed try is retried on the candidate, and
    after a few failures stable is marked down (passive health check) so its share goes straight to
    the candidate until it is back. No client sees an error."""
    from tests.integration.loadkit import run_load

    port = start_echo(plane.sup, "mortal", tmp_path)
    mortal = Backend("mortal", "v6", f"127.0.0.1:{port}")
    plane.router.ensure(RouteTarget(SERVICE, mortal, plane.candidate))
    plane.router.set_routes(Routes(candidate_weight=10))

    def kill(stop: object) -> None:
        import signal
        import time

        time.sleep(1.5)
        plane.sup.stop("mortal", sig=signal.SIGKILL)

    try:
        res = run_load(plane.url, threads=4, seconds=4, max_requests=6000, during=kill)
        print(f"stable SIGKILLed under load: {res.total} requests, {len(res.failures)} failed, {res.servers}")
        assert res.failures == [], res.failures[:5]
        assert res.servers["mortal"] > 0 and res.servers["candidate"] > res.servers["mortal"] / 9
        metrics = httpx.get(plane.nginx.admin_url + "/metrics").text
        failovers = [ln for ln in metrics.splitlines() if ln.startswith("rollout_router_failovers_total{")]
        assert any('down="stable"' in ln and float(ln.split()[-1]) >= 10 for ln in failovers), failovers
    finally:
        plane.router.finalize(RouteTarget(SERVICE, plane.stable))


def test_errors_the_router_answers_itself_are_json_and_oip_shaped_on_v2(plane: Plane, tmp_path: Path) -> None:
    """Every version unreachable: a JSON 503 naming the problem (the OIP
    ``{"error": "..."}`` on /v2), with Retry-After; never nginx's HTML page. A feedback label for a
    version that is down is refused with a retryable 503 and is not handed to the other version."""
    nowhere = Backend("gone", "v7", f"127.0.0.1:{free_port()}")
    alive = plane.stable
    with httpx.Client(timeout=10) as c:
        plane.router.finalize(RouteTarget(SERVICE, nowhere))
        for path, oip in (("/predict", False), ("/v2/models/iris/infer", True)):
            r = c.post(plane.url + path, json={"x": 1})
            assert r.status_code == 503 and r.headers["content-type"] == "application/json", r.text
            assert r.headers["retry-after"] == "2"
            if oip:
                assert isinstance(r.json()["error"], str) and "could answer" in r.json()["error"]
            else:
                body = r.json()
                assert body["error"]["code"] == "upstream_unavailable", body
                assert body["request_id"] == r.headers["x-request-id"]
        plane.router.ensure(RouteTarget(SERVICE, alive, nowhere))
        before = len(httpx.get(f"http://{alive.address}/_seen").json())
        r = c.post(plane.url + "/feedback", json={}, headers={"X-Model-Version": "v7"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "version_unavailable", r.text
        assert "retry" in r.json()["error"]["message"] and r.headers["retry-after"]
        assert len(httpx.get(f"http://{alive.address}/_seen").json()) == before, "label given to stable"
        plane.router.finalize(RouteTarget(SERVICE, plane.stable))


def test_a_hung_model_server_costs_one_read_timeout_and_its_requests_go_to_the_other_version(
    plane: Plane, tmp_path: Path
) -> None:
    """A model server that hangs while alive (SIGSTOP, a deadlock): after ``read_timeout`` (10 s by
    default, 1 s here) a prediction is retried on the other version; with none, the client gets a
    JSON 504 (upstream_timeout) after that one time-out - it waited 60 s, twice on the same hung
    server, for a 503 that said no server could answer; a label pinned to it gets a retryable 503."""
    import os
    import signal
    import time

    hung = Backend("hung", "v5", f"127.0.0.1:{start_echo(plane.sup, 'hung', tmp_path)}")
    cfg = NginxConfig(prefix=tmp_path / "quick", admin_port=free_port(), services={SERVICE: free_port()},
                      read_timeout=1)  # fmt: skip
    nginx = NginxServer(plane.sup, cfg, name="nginx-quick")
    nginx.start()
    router = NginxRouter(nginx.admin_url, SERVICE, token=nginx.admin_token)
    url = nginx.service_url(SERVICE)
    os.kill(plane.sup.processes["hung"].pid, signal.SIGSTOP)
    try:
        router.finalize(RouteTarget(SERVICE, hung))
        with httpx.Client(timeout=30) as c:
            started = time.monotonic()
            r = c.post(url + "/predict", json={"x": 1})
            took = time.monotonic() - started
            assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout", r.text
            assert r.headers["retry-after"] and took < 1.9, f"{took:.1f} s: a second try on the hung server"
            r = c.post(url + "/v2/models/iris/infer", json={"x": 1})
            assert r.status_code == 504 and "did not answer" in r.json()["error"], r.text
            router.ensure(RouteTarget(SERVICE, hung, plane.candidate))
            r = c.post(url + "/predict", json={"x": 1})
            assert r.status_code == 200 and r.json()["server"] == "candidate", r.text
            assert r.headers["x-routed-to"] == "candidate"
            r = c.post(url + "/feedback", json={}, headers={"X-Model-Version": "v5"})
            assert r.status_code == 503 and r.json()["error"]["code"] == "version_unavailable", r.text
    finally:
        os.kill(plane.sup.processes["hung"].pid, signal.SIGCONT)
        plane.sup.stop("nginx-quick")
        plane.sup.stop("hung")
