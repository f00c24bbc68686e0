"""Prometheus (the Debian binary, started by the project) and PrometheusProvider, for real.

A target added through file_sd is scraped within seconds with no restart; the provider returns its
values, names the problem for no value / several values / bad PromQL, and reports an unreachable
Prometheus as MetricsUnavailableError.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rollout.errors import MetricQueryError, MetricsUnavailableError
from rollout.local.processes import Supervisor, free_port
from rollout.local.prometheus import PrometheusServer
from rollout.metrics.base import MetricProvider
from rollout.metrics.prometheus import PrometheusProvider
from tests.integration.echo_server import start_echo

pytestmark = pytest.mark.integration


def wait_for(query: str, provider: PrometheusProvider, predicate: object, timeout: float = 30.0) -> float:
    """Seconds until ``predicate(query_vector(query))`` holds; fails the test after ``timeout``."""
    started = time.monotonic()
    last: dict[str, float] = {}
    while time.monotonic() - started < timeout:
        last = provider.query_vector(query)
        if predicate(last):  # type: ignore[operator]
            return time.monotonic() - started
        time.sleep(0.25)
    raise AssertionError(f"{query} never satisfied the condition within {timeout} s; last {last}")


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Supervisor, PrometheusServer, Path]]:
    tmp = tmp_path_factory.mktemp("prom")
    sup = Supervisor()
    try:
        server = PrometheusServer(sup, tmp / "prometheus", free_port())
        server.start()
        yield sup, server, tmp
    finally:
        sup.stop_all()


def test_target_added_via_file_sd_is_scraped_within_seconds(
    prom: tuple[Supervisor, PrometheusServer, Path],
) -> None:
    sup, server, tmp = prom
    port = start_echo(sup, "alpha", tmp)
    with httpx.Client() as c:
        for _ in range(7):
            c.post(f"http://127.0.0.1:{port}/predict", json={})
    provider = PrometheusProvider(server.url)
    assert isinstance(provider, MetricProvider) and provider.is_online()
    server.add_target("alpha", f"127.0.0.1:{port}", {"service": "iris", "backend": "alpha"})
    took = wait_for('echo_requests_total{backend="alpha"}', provider, lambda v: v)
    print(f"file_sd target scraped {took:.1f} s after it was written")
    assert took < 20
    assert provider.run_query('sum(echo_requests_total{backend="alpha"})') == 7.0
    assert provider.query_vector('sum by (server) (echo_requests_total{backend="alpha"})') == {"alpha": 7.0}


def test_removed_target_is_no_longer_scraped(prom: tuple[Supervisor, PrometheusServer, Path]) -> None:
    sup, server, tmp = prom
    port = start_echo(sup, "beta", tmp)
    provider = PrometheusProvider(server.url)
    server.add_target("beta", f"127.0.0.1:{port}")
    wait_for('up{target="beta"} == 1', provider, lambda v: v)
    server.remove_target("beta")
    wait_for('up{target="beta"}', provider, lambda v: not v)  # stale once the target is gone
    assert "beta" not in server.targets()


def test_query_errors_name_the_problem(prom: tuple[Supervisor, PrometheusServer, Path]) -> None:
    sup, server, tmp = prom
    provider = PrometheusProvider(server.url)
    with pytest.raises(MetricQueryError, match="no value"):
        provider.run_query('no_such_metric_total{version="v9"}')
    port = start_echo(sup, "gamma", tmp)
    server.add_target("gamma", f"127.0.0.1:{port}")
    wait_for("up == 1", provider, lambda v: len(v) >= 2)
    with pytest.raises(MetricQueryError, match="values where one was expected"):
        provider.run_query("up")
    with pytest.raises(MetricQueryError, match="rejected"):
        provider.run_query("sum(rate(up[1m]")
    with pytest.raises(MetricQueryError, match="NaN"):
        provider.run_query("0/0")
    assert provider.run_query("scalar(count(up == 1))") >= 2


def test_stopped_prometheus_is_unavailable_not_zero(tmp_path: Path) -> None:
    sup = Supervisor()
    try:
        server = PrometheusServer(sup, tmp_path / "p", free_port())
        server.start()
        provider = PrometheusProvider(server.url, timeout=2)
        assert provider.run_query("vector(1)") == 1.0
        server.stop()
        assert not provider.is_online()
        with pytest.raises(MetricsUnavailableError, match="unreachable") as err:
            provider.run_query("vector(1)")
        assert server.url in str(err.value) and err.value.delay > 0
    finally:
        sup.stop_all()
