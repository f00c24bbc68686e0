"""PrometheusProvider against a Prometheus that hangs or answers garbage: a tiny real HTTP server.

Given a server on 127.0.0.1 (fake_prometheus.py: ``http.server`` in a thread, started by the test)
standing in for Prometheus, when it
- hangs (accepts the connection, never answers; or sends headers and then nothing, as a process
  stopped mid-answer; or drips its answer a byte at a time, each within the read timeout): a query
  fails with MetricsUnavailableError after about ``timeout``, and one analysis round of the demo's
  three metrics (8 queries) costs about one timeout, not eight: once a
  query found it unavailable the others fail at once with the same message, for ``hold_off``
  seconds, without a request; after that the next query asks again, and an answer closes the breaker;
- answers a body that is not Prometheus' API (not JSON, no data, no result) or a result whose values
  are not numbers (``"abc"``, missing, wrong shape), or NaN where one number is wanted: the query
  fails with MetricsUnavailableError or MetricQueryError, never a KeyError/ValueError/TypeError
  (nor the RecursionError of JSON nested deeper than the parser goes).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rollout.errors import MetricQueryError, MetricsUnavailableError
from rollout.metrics import prometheus
from rollout.metrics.prometheus import PrometheusProvider
from rollout.metrics.sampler import SampleContext, collect
from rollout.spec import load_rollout
from tests.integration.fake_prometheus import ONE, FakePrometheus, Reply, answer, vector
from tests.kit import ManualClock

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake() -> Iterator[FakePrometheus]:
    with FakePrometheus() as server:
        yield server


# --- a hung Prometheus -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "how", [{"hang": True}, {"hang_after_headers": True}, {"drip": 0.1}], ids=["hang", "headers", "drip"]
)
def test_hung_prometheus_is_unavailable_after_one_timeout(fake: FakePrometheus, how: dict[str, Any]) -> None:
    fake.reply = Reply(body=ONE, **how)
    provider = PrometheusProvider(fake.url, timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(MetricsUnavailableError, match="unreachable.*within 0.5 s") as err:
        provider.run_query("up")
    took = time.monotonic() - t0
    assert 0.45 < took < 1.5, took
    assert fake.url in str(err.value) and err.value.delay > 0


def test_one_analysis_round_against_a_hung_prometheus_costs_one_timeout(fake: FakePrometheus) -> None:
    """The three metrics of the demo's canary (error rate, p99 latency, prediction shift): 8 queries."""
    metrics = load_rollout(REPO / "rollout/demo/specs/canary-good.yaml").spec.analysis.metrics
    ctx = SampleContext("iris", "iris:v1", "iris:v2", window=10.0)
    fake.reply = Reply(hang=True)
    provider = PrometheusProvider(fake.url)  # the defaults the runner and the controller use
    t0 = time.monotonic()
    messages = []
    for metric in metrics:
        with pytest.raises(MetricsUnavailableError) as err:
            collect(metric, provider, ctx)
        messages.append(str(err.value))
    took = time.monotonic() - t0
    print(f"one round of {len(metrics)} metrics against a hung Prometheus: {took:.2f} s, "
          f"{fake.requests} request(s) sent")  # fmt: skip
    assert len(metrics) == 3
    assert fake.requests == 1, "queries after the first failure should fail without a request"
    assert provider.timeout - 0.1 < took < provider.timeout + 1.0, took
    assert len(set(messages)) == 1, messages  # the same message: one event, not one per query


def test_after_the_hold_off_it_asks_again_and_an_answer_closes_the_breaker(fake: FakePrometheus) -> None:
    clock = ManualClock(1000.0)
    provider = PrometheusProvider(fake.url, timeout=0.3, hold_off=2.0, clock=clock)
    fake.reply = Reply(hang=True)
    with pytest.raises(MetricsUnavailableError) as first:
        provider.run_query("up")
    assert fake.requests == 1
    clock.now += 1.5  # within the hold-off: no request, the same message
    with pytest.raises(MetricsUnavailableError) as fast:
        provider.query_vector("up")
    assert fake.requests == 1 and str(fast.value) == str(first.value)
    assert 0 < fast.value.delay <= 0.5 + 1e-9
    clock.now += 1.0  # past it: asks again (still hung: the breaker opens again)
    with pytest.raises(MetricsUnavailableError):
        provider.run_query("up")
    assert fake.requests == 2
    clock.now += 2.5
    fake.reply = Reply(body=ONE)  # it answers again
    assert provider.run_query("up") == 1.5
    assert provider.run_query("up") == 1.5
    assert fake.requests == 4


def test_an_answer_larger_than_a_query_answer_is_not_read(
    fake: FakePrometheus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prometheus, "MAX_ANSWER", 1000)
    fake.reply = Reply(body=vector(*[{"metric": {"i": str(i)}, "value": [1, "1"]} for i in range(100)]))
    with pytest.raises(MetricsUnavailableError, match="answered more than"):
        PrometheusProvider(fake.url).query_vector("up")


def test_a_rejected_query_does_not_open_the_breaker(fake: FakePrometheus) -> None:
    provider = PrometheusProvider(fake.url)
    fake.reply = Reply(400, json.dumps({"status": "error", "error": "parse error at char 5"}).encode())
    with pytest.raises(MetricQueryError, match="rejected.*parse error"):
        provider.run_query("sum(")
    fake.reply = Reply(body=ONE)
    assert provider.run_query("up") == 1.5
    assert fake.requests == 2


def test_a_closed_connection_is_unavailable_but_tried_again_at_once(fake: FakePrometheus) -> None:
    """A connection closed (or refused) answers at once: no breaker, so a restarted Prometheus
    is found by the very next query (only a time-out, which costs seconds, opens it)."""
    provider = PrometheusProvider(fake.url)
    fake.reply = Reply(close=True)
    with pytest.raises(MetricsUnavailableError, match="unreachable"):
        provider.run_query("up")
    with pytest.raises(MetricsUnavailableError, match="unreachable"):
        provider.run_query("up")
    assert fake.requests == 2


# --- garbage answers -------------------------------------------------------------------------------

UNAVAILABLE: dict[str, Reply] = {
    "not JSON": Reply(body=b"<html>login</html>"),
    "not UTF-8": Reply(body=b"\xff\xfe\x00garbage"),
    "JSON nested too deep": Reply(body=b"[" * 100_000 + b"]" * 100_000),  # a RecursionError in json
    "JSON null": Reply(body=b"null"),
    "JSON list": Reply(body=b"[]"),
    "no status": Reply(body=b'{"data": {"resultType": "vector", "result": []}}'),
    "no data": Reply(body=b'{"status": "success"}'),
    "data not an object": Reply(body=b'{"status": "success", "data": [1]}'),
    "no result": Reply(body=b'{"status": "success", "data": {"resultType": "vector"}}'),
    "no resultType": Reply(body=b'{"status": "success", "data": {"result": []}}'),
    "500, not JSON": Reply(500, b"internal error"),
    "503, Prometheus' error": Reply(503, b'{"status": "error", "error": "query queue full"}'),
}
QUERY_ERROR: dict[str, Reply] = {
    "value abc": Reply(body=vector({"metric": {}, "value": [1, "abc"]})),
    "value missing": Reply(body=vector({"metric": {}})),
    "value null": Reply(body=vector({"metric": {}, "value": [1, None]})),
    "value a list": Reply(body=vector({"metric": {}, "value": [1, ["1"]]})),
    "value true": Reply(body=vector({"metric": {}, "value": [1, True]})),
    "value not a pair": Reply(body=vector({"metric": {}, "value": "1"})),
    "value one element": Reply(body=vector({"metric": {}, "value": [1]})),
    "time abc": Reply(body=vector({"metric": {}, "value": ["x", "1"]})),
    "series not an object": Reply(body=vector("up 1")),
    "labels not an object": Reply(body=vector({"metric": "up", "value": [1, "1"]})),
    "label value not a string": Reply(body=vector({"metric": {"le": 1}, "value": [1, "1"]})),
    "result not a list": Reply(body=answer("vector", {"a": 1})),
    "scalar not a pair": Reply(body=answer("scalar", 3)),
    "a matrix": Reply(body=answer("matrix", [])),
    "400, not JSON": Reply(400, b"bad request"),
}


@pytest.mark.parametrize("call", ["run_query", "query_vector"])
@pytest.mark.parametrize("name", list(UNAVAILABLE))
def test_an_answer_that_is_not_prometheus_api_is_unavailable(
    fake: FakePrometheus, name: str, call: str
) -> None:
    fake.reply = UNAVAILABLE[name]
    provider = PrometheusProvider(fake.url)
    with pytest.raises(MetricsUnavailableError, match=f"Prometheus at {fake.url}"):
        getattr(provider, call)("up")


@pytest.mark.parametrize("call", ["run_query", "query_vector"])
@pytest.mark.parametrize("name", list(QUERY_ERROR))
def test_a_result_that_is_not_numbers_is_a_query_error(fake: FakePrometheus, name: str, call: str) -> None:
    fake.reply = QUERY_ERROR[name]
    provider = PrometheusProvider(fake.url)
    with pytest.raises(MetricQueryError):
        getattr(provider, call)("up")


def test_nan_is_a_query_error_for_one_number_and_nan_in_a_vector(fake: FakePrometheus) -> None:
    fake.reply = Reply(body=vector({"metric": {"le": "0.5"}, "value": [1, "NaN"]}))
    provider = PrometheusProvider(fake.url)
    with pytest.raises(MetricQueryError, match="NaN"):
        provider.run_query("up")
    values = provider.query_vector("up")
    assert list(values) == ["0.5"] and values["0.5"] != values["0.5"]  # NaN: the sampler reads it as 0
    fake.reply = Reply(body=vector({"metric": {"le": "+Inf"}, "value": [1, "+Inf"]}))
    assert provider.query_vector("up") == {"+Inf": float("inf")}


def test_a_malformed_range_answer_is_a_query_error(fake: FakePrometheus) -> None:
    provider = PrometheusProvider(fake.url)
    for result in ([{"metric": {}}], [{"metric": {}, "values": [[1, "x"]]}], [{"metric": {}, "values": 5}]):
        fake.reply = Reply(body=answer("matrix", result))
        with pytest.raises(MetricQueryError, match="malformed"):
            provider.query_range("up", 0, 10, 1)
    fake.reply = Reply(body=answer("matrix", [{"metric": {"version": "v1"}, "values": [[1, "2"], [2, "3"]]}]))
    assert provider.query_range("up", 0, 10, 1) == {"v1": [(1.0, 2.0), (2.0, 3.0)]}
