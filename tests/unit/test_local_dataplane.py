"""Pure parts of the local data plane: nginx config rendering, the routes wire format, the router
registry, Prometheus series naming, the join store's secrets and the wrk output parser. No
processes are started."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.router import parse_wrk
from rollout.errors import ProcessError, RouterError, UnknownProviderError
from rollout.local.join import SECRET_ENV, JoinStore, load_feedback_token
from rollout.local.nginx import NginxConfig, render_config
from rollout.local.processes import Supervisor
from rollout.local.prometheus import render_config as render_prometheus
from rollout.metrics.prometheus import series_key
from rollout.routers.base import Routes
from rollout.routers.nginx import routes_from_wire, routes_to_wire
from rollout.routers.registry import make_router
from rollout.spec import HeaderMatch, StickyKey


def test_rendered_nginx_config_binds_loopback_only_and_keeps_upstream_keepalive(tmp_path: Path) -> None:
    text = render_config(NginxConfig(prefix=tmp_path, admin_port=9001, services={"iris": 9002, "wine": 9003}))
    listens = [
        line.split()[1].rstrip(";") for line in text.splitlines() if line.strip().startswith("listen ")
    ]
    assert listens == ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]
    assert "keepalive 64;" in text and "balancer_by_lua_block" in text
    assert "daemon off;" in text and f"pid {tmp_path}/nginx.pid;" in text
    assert "/etc/nginx" not in text


def test_service_names_must_be_dns_labels(tmp_path: Path) -> None:
    with pytest.raises(RouterError, match="DNS label"):
        render_config(NginxConfig(prefix=tmp_path, admin_port=1, services={'x"; evil': 2}))


@pytest.mark.parametrize(
    "routes",
    [
        Routes.all_stable(),
        Routes(candidate_weight=25, mirror_percent=5),
        Routes(candidate_weight=50, sticky=StickyKey(cookie="uid")),
        Routes(match=(HeaderMatch(header="X-Canary", value="1"), HeaderMatch(cookie="beta", value="yes"))),
    ],
)
def test_routes_round_trip_through_the_admin_wire_format(routes: Routes) -> None:
    assert routes_from_wire(routes_to_wire(routes)) == routes


def test_lua_empty_list_reads_back_as_no_match() -> None:
    assert routes_from_wire({"candidateWeight": 10, "match": {}}) == Routes(candidate_weight=10)


def test_unknown_router_provider_is_an_error_not_a_fallback() -> None:
    with pytest.raises(UnknownProviderError, match="known providers: .*nginx"):
        make_router("haproxy")


def test_prometheus_config_scrapes_every_second_from_file_sd(tmp_path: Path) -> None:
    text = render_prometheus(tmp_path / "targets")
    assert "scrape_interval: 1s" in text and f"{tmp_path}/targets/*.json" in text


def test_series_keys() -> None:
    assert series_key({"__name__": "x", "version": "v2"}) == "v2"
    assert series_key({"version": "v2", "class": "setosa"}) == "class=setosa,version=v2"


def test_wrk_output_is_parsed() -> None:
    out = """Running 5s test @ http://127.0.0.1:1/predict
  Latency Distribution
     50%  612.00us
     90%    1.20ms
     99%    2.50s
  5004 requests in 5.00s, 1.00MB read
  Socket errors: connect 0, read 3, write 0, timeout 1
  Non-2xx or 3xx responses: 2
Requests/sec:   1000.80
"""
    res = parse_wrk(out)
    assert res["p50_ms"] == pytest.approx(0.612) and res["p99_ms"] == 2500.0
    assert res["rps"] == 1000.8 and res["requests"] == 5004 and res["errors"] == 6


def test_the_join_stores_secrets_live_in_0600_files_and_a_server_records_none(tmp_path: Path) -> None:
    join = JoinStore(Supervisor(cleanup_on_exit=False), tmp_path / "join", 6390, 9108)
    for secret in (join.token_file, join.redis.home / "password"):
        assert secret.stat().st_mode & 0o777 == 0o600, secret
    assert load_feedback_token(tmp_path / "join") == join.token  # kept: an attached stack reads it
    env = join.server_env()
    assert env["BENTO_JOIN_STORE"] == "redis://127.0.0.1:6390/0"
    assert env["BENTO_FEEDBACK_TOKEN_FILE"] == str(join.token_file) and join.token not in env.values()
    recorded = {k: v for k, v in env.items() if k not in SECRET_ENV}  # what LocalStack._start keeps
    assert join.redis.password not in recorded.values()
    assert join.secret_env(recorded) == {"BENTO_JOIN_PASSWORD": join.redis.password}  # a restart's
    assert join.secret_env({"BENTO_JOIN_STORE": "local"}) == {}  # not this store's server: nothing
    (tmp_path / "short").mkdir()
    (tmp_path / "short" / "feedback-token").write_text("short\n")
    with pytest.raises(ProcessError, match="delete it"):
        load_feedback_token(tmp_path / "short")
