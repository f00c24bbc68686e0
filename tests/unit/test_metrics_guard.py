"""Where the controller connects to Prometheus, and how it is told what it may connect to.

``PinnedTransport`` (rollout/metrics/guard.py) resolves the host itself, refuses every request whose
host is or resolves to a link-local or metadata address (nothing is sent), and sends the others to
the address it checked, the name kept in ``Host`` and SNI; so a name that answers an allowed address
to the controller's check and 169.254.169.254 a moment later (DNS rebinding) reaches nothing.
``rollout controller --allowed-metrics-address`` / ``ROLLOUT_ALLOWED_METRICS_ADDRESSES`` (comma-
separated or repeated) make the allow-list; its default is ``--metrics-address``; a malformed entry
stops the controller with a usage error naming it.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from rollout.cli.main import cli
from rollout.controller import handlers
from rollout.controller.handlers import ControllerConfig, address_policy
from rollout.errors import MetricsAddressRefusedError, UsageError
from rollout.metrics.guard import PinnedTransport
from rollout.metrics.prometheus import PrometheusProvider

OK = {"status": "success", "data": {"resultType": "scalar", "result": [1, "2.5"]}}


class Answers:
    """The DNS the transport asks: a list of answers per host, one taken per look-up."""

    def __init__(self, **table: list[list[str]]) -> None:
        self.table = table

    def __call__(self, host: str, port: int) -> list[Any]:
        answers = self.table[host.replace(".", "_")]
        now = answers.pop(0) if len(answers) > 1 else answers[0]
        return [ipaddress.ip_address(a) for a in now]


def recording() -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A transport answering OK, and what reached it (each request as it was sent)."""
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(
            httpx.Request(request.method, request.url, headers=request.headers, extensions=request.extensions)
        )
        return httpx.Response(200, json=OK)

    return httpx.MockTransport(handler), sent


def test_the_request_goes_to_the_checked_address_with_the_name_kept() -> None:
    inner, sent = recording()
    transport = PinnedTransport(Answers(prom_example=[["10.1.2.3"]]), inner)
    provider = PrometheusProvider("https://prom.example:9090", transport=transport)
    assert provider.run_query("up") == 2.5
    (request,) = sent
    assert request.url.host == "10.1.2.3" and request.url.port == 9090
    assert request.headers["host"] == "prom.example:9090"
    assert request.extensions["sni_hostname"] == "prom.example"  # TLS checks the name's certificate


def test_a_name_that_rebinds_to_the_metadata_address_reaches_nothing() -> None:
    inner, sent = recording()
    dns = Answers(rebind_example=[["10.1.2.3"], ["169.254.169.254"]])
    provider = PrometheusProvider("http://rebind.example:9090", transport=PinnedTransport(dns, inner))
    assert provider.run_query("up") == 2.5
    with pytest.raises(MetricsAddressRefusedError, match="resolves to 169.254.169.254"):
        provider.run_query("up")
    assert len(sent) == 1


@pytest.mark.parametrize(
    "answer", [["169.254.169.254"], ["10.0.0.1", "fe80::1"], ["::ffff:169.254.169.254"], ["fd00:ec2::254"]]
)
def test_any_refused_answer_refuses_the_request(answer: list[str]) -> None:
    inner, sent = recording()
    provider = PrometheusProvider("http://p:9090", transport=PinnedTransport(Answers(p=[answer]), inner))
    with pytest.raises(MetricsAddressRefusedError, match="never fetched"):
        provider.run_query("up")
    assert sent == []


def test_an_ip_literal_is_checked_without_a_look_up() -> None:
    inner, sent = recording()

    def no_dns(host: str, port: int) -> list[Any]:
        raise AssertionError("an IP literal needs no look-up")

    provider = PrometheusProvider("http://[fe80::1]:9090", transport=PinnedTransport(no_dns, inner))
    with pytest.raises(MetricsAddressRefusedError, match="link-local"):
        provider.run_query("up")
    assert sent == []


def test_a_name_that_does_not_resolve_is_unavailable_not_a_crash() -> None:
    from rollout.errors import MetricsUnavailableError

    inner, _ = recording()
    provider = PrometheusProvider("http://gone:9090", transport=PinnedTransport(Answers(gone=[[]]), inner))
    with pytest.raises(MetricsUnavailableError, match="does not resolve"):
        provider.run_query("up")


def test_a_redirect_is_not_followed() -> None:
    from rollout.errors import MetricsUnavailableError

    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(302, headers={"Location": "http://169.254.169.254/latest/meta-data"})

    provider = PrometheusProvider("http://p:9090", transport=httpx.MockTransport(handler))
    with pytest.raises(MetricsUnavailableError, match="answered 302"):
        provider.run_query("up")
    assert len(sent) == 1


# --- the controller's configuration --------------------------------------------------------------


def test_the_allow_list_defaults_to_the_controllers_own_prometheus() -> None:
    policy = address_policy(
        ControllerConfig(metrics_address="http://prometheus-operated.monitoring.svc:9090")
    )
    assert policy.describe() == "http://prometheus-operated.monitoring.svc:9090"
    policy.check("http://prometheus-operated.monitoring.svc:9090/")
    with pytest.raises(MetricsAddressRefusedError):
        policy.check("http://prometheus-operated.monitoring.svc:9091")
    assert address_policy(ControllerConfig()).describe() == "none"


@pytest.mark.parametrize(
    ("cfg", "words"),
    [
        (ControllerConfig(allowed_metrics_addresses=("prom:9090", "http://u:p@x")), "'http://u:p@x'"),
        (ControllerConfig(metrics_address="http://169.254.169.254/"), "--metrics-address"),
        (ControllerConfig(metrics_address="file:///etc/passwd"), "only http and https"),
    ],
)
def test_a_malformed_address_stops_the_controller_with_a_usage_error(
    cfg: ControllerConfig, words: str
) -> None:
    with pytest.raises(UsageError, match=words):
        address_policy(cfg)


def test_the_flag_and_the_environment_make_the_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[ControllerConfig] = []
    monkeypatch.setattr(handlers, "run", lambda cfg: seen.append(cfg))
    runner = CliRunner()
    env = {"ROLLOUT_ALLOWED_METRICS_ADDRESSES": "prom-a:9090, https://prom-b.example/t"}
    res = runner.invoke(cli, ["controller", "--kubeconfig", "/dev/null"], env=env)
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        cli,
        ["controller", "--kubeconfig", "/dev/null", "--allowed-metrics-address", "a:1,b:2",
         "--allowed-metrics-address", "c"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert [c.allowed_metrics_addresses for c in seen] == [
        ("prom-a:9090", "https://prom-b.example/t"),
        ("a:1", "b:2", "c"),
    ]
