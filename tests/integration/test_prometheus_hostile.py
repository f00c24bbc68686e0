"""A hostile "Prometheus" cannot put its answer into errors, status or Events: a tiny real server.

Given a server on 127.0.0.1 (fake_prometheus.py, started by the test) that answers 10 KB
bodies full of control characters, ANSI escapes, NULs and a fake ``error`` field with newlines, in
every way PrometheusProvider reads an answer (5xx, 400, 200 that is not its API, an odd result),
the MetricsUnavailableError / MetricQueryError message holds at most a 120-character excerpt of it,
printable ASCII on one line, and nothing from past the excerpt (a marker at the end of each body
never shows). Through the controller (``rollout.controller.measure``, whose error becomes the measurement
message in .status and the Events) the same holds. And the controller's transport reaches the
server under a name it resolved itself, and refuses a name that resolves to a link-local address
without a request.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from rollout.actions import Measure
from rollout.engine import new_rollout
from rollout.errors import MetricQueryError, MetricsAddressRefusedError, MetricsUnavailableError, RolloutError
from rollout.metrics.guard import PinnedTransport
from rollout.metrics.prometheus import PrometheusProvider
from rollout.spec import parse_rollout
from tests.integration.fake_prometheus import FakePrometheus, Reply

pytestmark = pytest.mark.integration
MARK = "TAIL-MARKER-NEVER-SHOWN"
# every word of a body is EVIL, so what a message quotes of it is the span from its first EVIL to its last
NOISE = "\x1b[31mEVIL\x1b[0m\x1b]0;EVIL\x07\r\n\t\x00\x08\x7f\u202e\ufeffEVIL<EVIL>EVIL\n"
BODY = (NOISE * 200)[:10_000] + MARK  # 10 KB and a marker past any excerpt
FAKE_ERROR = "EVIL line one\nEVIL line two\r\n\x1b[2JEVIL " + "EVIL" * 2_250 + MARK


def env(error: Any) -> str:
    return json.dumps({"status": "error", "errorType": "bad_data", "error": error})


def ok(kind: str, result: Any) -> str:
    return json.dumps({"status": "success", "data": {"resultType": kind, "result": result}})


# (status, body, error type); every one quotes the hostile text where today's code would
HOSTILE = {
    "500 raw body": (500, BODY, MetricsUnavailableError),
    "503 fake error field": (503, env(FAKE_ERROR), MetricsUnavailableError),
    "502 error field not a string": (502, env({"nested": [FAKE_ERROR]}), MetricsUnavailableError),
    "400 fake error field": (400, env(FAKE_ERROR), MetricQueryError),
    "422 raw body": (422, BODY, MetricQueryError),
    "200 not the API": (200, BODY, MetricsUnavailableError),
    "200 success without result": (200, json.dumps({"status": "success", "data": {"x": BODY}}), None),
    "200 value not a number": (200, ok("vector", [{"metric": {}, "value": [1, BODY]}]), MetricQueryError),
    "200 result not a list": (200, ok("vector", BODY), MetricQueryError),
    "200 odd result type": (200, ok(FAKE_ERROR, []), MetricQueryError),
    "200 hostile labels": (
        200,
        ok("vector", [{"metric": {"l": BODY}, "value": [1, "1"]}, {"metric": {"l": "b"}, "value": [1, "2"]}]),
        MetricQueryError,
    ),
}


@pytest.fixture
def hostile() -> Iterator[FakePrometheus]:
    with FakePrometheus() as server:
        yield server


def serve(fake: FakePrometheus, status: int, body: str) -> None:
    fake.reply = Reply(status, body.encode("utf-8", "surrogatepass"))


def assert_sanitised(message: str, limit: int) -> None:
    assert all(" " <= c <= "~" for c in message), f"not printable ASCII (no newline, no escape): {message!r}"
    assert MARK not in message, "text from past the excerpt"
    assert len(message) <= limit, f"{len(message)} characters: {message!r}"
    assert "EVIL" in message, "the test quotes nothing: it checks nothing"
    quoted = message[message.index("EVIL") : message.rindex("EVIL") + 4]
    assert len(quoted) <= 120, f"{len(quoted)} characters of the answer: {quoted!r}"


@pytest.mark.parametrize("name", list(HOSTILE))
def test_the_error_holds_only_a_sanitised_excerpt_of_the_answer(hostile: FakePrometheus, name: str) -> None:
    status, body, kind = HOSTILE[name]
    serve(hostile, status, body)
    provider = PrometheusProvider(hostile.url, timeout=2.0)
    with pytest.raises(RolloutError) as err:
        provider.run_query("up")
    if kind is not None:
        assert isinstance(err.value, kind), err.value
    assert_sanitised(str(err.value), 300)


def test_through_the_controller_the_measurement_error_is_one_bounded_line(hostile: FakePrometheus) -> None:
    from rollout.controller.defence import ErrorLog
    from rollout.controller.measure import measure

    serve(hostile, 503, env(FAKE_ERROR))
    spec = parse_rollout(
        {
            "apiVersion": "bento-rollout.io/v1alpha1",
            "kind": "ModelRollout",
            "metadata": {"name": "h"},
            "spec": {
                "service": "iris",
                "stable": {"model": "iris:v1"},
                "candidate": {"model": "iris:v2"},
                "strategy": {"canary": {"steps": [{"setWeight": 10}]}},
                "analysis": {
                    "metrics": [{"name": "raw", "query": "up", "threshold": {"max": 1}}],
                },
            },
        }
    ).spec
    (result,) = measure(
        lambda s: PrometheusProvider(hostile.url), ErrorLog(), time.time, ("ns", "h"), spec, new_rollout(spec),
        [Measure("raw", 30.0)],
    )  # fmt: skip
    assert result.error is not None and "EVIL line one EVIL line two EVIL" in result.error
    assert_sanitised(result.error, 300)


def test_the_controllers_transport_reaches_the_server_by_the_name_it_resolved(
    hostile: FakePrometheus,
) -> None:
    serve(hostile, 200, ok("scalar", [1, "4"]))
    table = {"prometheus.test": ["127.0.0.1"], "rebound.test": ["169.254.169.254"]}

    def dns(host: str, port: int) -> list[Any]:
        return [ipaddress.ip_address(a) for a in table.get(host, [])]

    good = PrometheusProvider(f"http://prometheus.test:{hostile.port}", transport=PinnedTransport(dns))
    assert good.run_query("up") == 4.0
    assert hostile.hosts == [f"prometheus.test:{hostile.port}"]
    bad = PrometheusProvider(f"http://rebound.test:{hostile.port}", transport=PinnedTransport(dns))
    with pytest.raises(MetricsAddressRefusedError, match="169.254.169.254"):
        bad.run_query("up")
    assert len(hostile.hosts) == 1  # nothing sent
