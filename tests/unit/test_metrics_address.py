"""``spec.metricsAddress`` is checked at spec load, and against the controller's allow-list.

At load (rollout/spec.py, rollout/addresses.py): only http/https to a host and an optional port, no
user info, query or fragment; link-local and cloud metadata addresses refused in every notation
(decimal, hex, octal IPv4; IPv4-mapped and other IPv6 forms; trailing dots); the SpecError names
``spec.metricsAddress``; the CRD's coarse pattern accepts every address the validator accepts.
The allow-list (``AddressPolicy``): ``host``, ``host:port`` and URL-prefix entries, matched exactly;
a name resolving to a refused address is refused even when listed (resolved at check time).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Any

import pytest

from rollout.addresses import URL_PATTERN, AddressPolicy, parse, split_entries
from rollout.errors import MetricsAddressRefusedError, SpecError
from rollout.spec import parse_rollout

# each of these is refused at load, whatever the controller allows
HOSTILE = {
    "file://": "file:///etc/passwd",
    "gopher://": "gopher://prometheus:9090/_GET",
    "no scheme": "prometheus:9090",
    "ftp": "ftp://prometheus/",
    "user info": "http://user:pw@prometheus:9090",
    "user only": "http://user@prometheus:9090",
    "metadata": "http://169.254.169.254/latest/meta-data",
    "metadata, trailing dot": "http://169.254.169.254./latest/meta-data",
    "link-local v4": "http://169.254.10.1:9090",
    "link-local v6": "http://[fe80::1]",
    "link-local v6, upper case": "http://[FE80::1]:9090/",
    "link-local v6 with a zone": "http://[fe80::1%25eth0]:9090",
    "AWS v6 metadata": "http://[fd00:ec2::254]/",
    "v4-mapped metadata": "http://[::ffff:169.254.169.254]/",
    "v4-mapped metadata, hex": "http://[::ffff:a9fe:a9fe]/",
    "v4-mapped metadata, long form": "http://[0:0:0:0:0:ffff:a9fe:a9fe]/",
    "NAT64 metadata": "http://[64:ff9b::a9fe:a9fe]/",
    "decimal metadata": "http://2852039166/",
    "hex metadata": "http://0xa9fea9fe/",
    "dotted hex metadata": "http://0xa9.0xfe.0xa9.0xfe/",
    "octal metadata": "http://0251.0376.0251.0376/",
    "short metadata": "http://169.254.43518/",
    "decimal loopback": "http://2130706433:9090/",
    "GCE metadata name": "http://metadata.google.internal/computeMetadata/v1/",
    "GCE metadata name, trailing dot": "http://metadata.google.internal./",
    "GCE metadata name, upper case": "http://METADATA.google.internal/",
    "query": "http://prometheus:9090/?query=up",
    "fragment": "http://prometheus:9090/#x",
    "newline": "http://prometheus:9090/\nHost: evil",
    "space": "http://prometheus :9090",
    "backslash": "http://prometheus:9090\\@evil/",
    "port 0": "http://prometheus:0",
    "port too big": "http://prometheus:65536",
    "empty port": "http://prometheus:/",
    "no host": "http:///api",
    "bare IPv6": "http://::1:9090/",
    "not a host": "http://prom_etheus:9090",
    "numeric last label": "http://10.0.0.1.2:9090",
    "unicode": "http://prométheus:9090",
}
GOOD = [
    "http://prometheus:9090",
    "http://prometheus-operated.monitoring.svc:9090",
    "http://prometheus-operated.monitoring.svc.cluster.local.:9090/",
    "https://prom.example.com/tenant-a",
    "HTTP://Prometheus:9090/a/b",
    "http://10.0.0.7:9090",
    "http://127.0.0.1:9090",
    "http://[::1]:9090",
    "http://[2001:db8::7]/prom",
]


def spec_with(address: Any) -> dict[str, Any]:
    return {
        "apiVersion": "bento-rollout.io/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {"name": "x"},
        "spec": {
            "service": "iris",
            "stable": {"model": "iris:v1"},
            "candidate": {"model": "iris:v2"},
            "strategy": {"canary": {"stepWeight": 10}},
            "metricsAddress": address,
        },
    }


@pytest.mark.parametrize("url", list(HOSTILE.values()), ids=list(HOSTILE))
def test_a_hostile_address_is_refused_at_load_naming_the_field(url: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_rollout(spec_with(url))
    assert err.value.field == "spec.metricsAddress"
    assert str(err.value).startswith("spec.metricsAddress: ")


@pytest.mark.parametrize("url", GOOD)
def test_a_plain_http_address_loads_unchanged_and_passes_the_crd_pattern(url: str) -> None:
    assert parse_rollout(spec_with(url)).spec.metrics_address == url
    assert re.match(URL_PATTERN, url), "the CRD would refuse what the CLI accepts"


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "http://u:p@h:1", "http://h:1/?q", "http://h:1/#f", "http://a b/"]
)
def test_the_crd_pattern_refuses_what_the_api_server_can_tell(url: str) -> None:
    assert not re.match(URL_PATTERN, url)


def test_the_messages_say_what_is_wrong() -> None:
    def why(url: str) -> str:
        with pytest.raises(SpecError) as err:
            parse_rollout(spec_with(url))
        return str(err.value)

    assert "only http and https" in why("file:///etc/passwd")
    assert "user info" in why("http://user:pw@prometheus:9090")
    assert "169.254.169.254 is a cloud metadata address" in why("http://169.254.169.254/latest/meta-data")
    assert "fe80::1 is link-local" in why("http://[fe80::1]")
    assert "'2852039166' ends in a number (the C resolver reads it as an IPv4" in why("http://2852039166/")
    assert "query or a fragment" in why("http://prometheus:9090/?query=up")


@pytest.mark.parametrize(
    "host",
    ["2852039166", "0xa9fea9fe", "0XA9FEA9FE", "0251.0376.0251.0376", "169.254.43518", "169.16689662",
     "127.1", "0x7f.1", "0", "00", "0x0", "08", "0x", "1.2.3.256", "4294967296", "0x1ffffffff",
     "1.2.3.4.5", "1.2.65535", "01.2.3.4", "a.b", "1..2", "1.0x", "0x100.1", "10.0.0.7", "1.2.3.4"],
)  # fmt: skip
def test_a_host_the_c_resolver_reads_as_ipv4_is_refused_unless_written_a_b_c_d(host: str) -> None:
    try:
        read_as = socket.inet_ntoa(socket.inet_aton(host))  # what getaddrinfo would connect to
    except OSError:
        read_as = None
    if read_as == host:
        assert parse(f"http://{host}/").ip == ipaddress.IPv4Address(host)
    elif read_as is not None:
        with pytest.raises(ValueError, match="IPv4"):
            parse(f"http://{host}/")


# --- the allow-list ------------------------------------------------------------------------------


class Resolver:
    """A DNS that answers from a table and records what it was asked."""

    def __init__(self, table: dict[str, list[str]] | None = None) -> None:
        self.table = table or {}
        self.asked: list[str] = []

    def __call__(self, host: str, port: int) -> list[Any]:
        self.asked.append(host)
        return [ipaddress.ip_address(a) for a in self.table.get(host, [])]


def refused(policy: AddressPolicy, url: str) -> str:
    with pytest.raises(MetricsAddressRefusedError) as err:
        policy.check(url)
    assert err.value.field == "spec.metricsAddress"
    return str(err.value)


def test_only_prometheus_9090_allowed_refuses_every_other_address_naming_the_allowed() -> None:
    dns = Resolver({"prometheus": ["10.0.0.9"], "evil.example": ["127.0.0.1"], "localhost": ["127.0.0.1"]})
    policy = AddressPolicy(["prometheus:9090"], dns)
    assert policy.check("http://prometheus:9090").host == "prometheus"
    assert policy.check("https://Prometheus.:9090/sub/path").port == 9090
    for url in [
        "http://evil.example:9090",  # a name that resolves to 127.0.0.1: not listed
        "http://localhost:9090",
        "http://127.0.0.1:9090",
        "http://prometheus:9091",
        "http://prometheus",  # port 80
        "http://prometheus.evil.example:9090",
        "http://[::1]:9090",
    ]:
        message = refused(policy, url)
        assert "allowed: prometheus:9090" in message and "--allowed-metrics-address" in message
    assert "evil.example" not in dns.asked  # not listed: refused without a look-up


def test_host_port_and_url_prefix_entries_match_exactly() -> None:
    policy = AddressPolicy(
        ["prom-a", "prom-b:9090", "https://prom-c.example/tenant", "http://[2001:db8::7]:9090", "10.0.0.7"],
        Resolver(),
    )
    ok = [
        "http://prom-a:1234",
        "https://prom-a",
        "http://prom-b:9090/x",
        "https://prom-b:9090",
        "https://prom-c.example/tenant",
        "https://prom-c.example:443/tenant/",
        "https://prom-c.example/tenant/sub",
        "http://[2001:0db8:0:0::7]:9090",
        "http://10.0.0.7:9090",
    ]
    for url in ok:
        policy.check(url)
    for url in [
        "http://prom-b:9091",
        "http://prom-c.example/tenant",  # the prefix is https
        "https://prom-c.example/tenant-b",  # not below /tenant
        "https://prom-c.example/",
        "https://prom-c.example:8443/tenant",
        "http://[2001:db8::7]:9091",
        "http://[::ffff:10.0.0.7]:9090",  # another host, though it carries 10.0.0.7
    ]:
        refused(policy, url)


def test_link_local_and_metadata_addresses_are_refused_even_when_listed() -> None:
    dns = Resolver({"prometheus": ["10.0.0.9", "169.254.169.254"], "rebind.example": ["fe80::5"]})
    listed = [
        "169.254.169.254",
        "http://[fe80::1]",
        "metadata.google.internal",
        "prometheus:9090",
        "rebind.example",
        "[fd00:ec2::254]",
    ]
    policy = AddressPolicy(listed, dns)
    assert "cloud metadata" in refused(policy, "http://169.254.169.254/latest/meta-data")
    assert "link-local" in refused(policy, "http://[fe80::1]/")
    assert "cloud metadata" in refused(policy, "http://metadata.google.internal/")
    assert "cloud metadata" in refused(policy, "http://[fd00:ec2::254]/")
    assert "resolves to 169.254.169.254" in refused(policy, "http://prometheus:9090")  # one bad answer
    assert "resolves to fe80::5" in refused(policy, "http://rebind.example:80")
    dns.table["prometheus"] = ["10.0.0.9"]  # resolved at check time: the same name, a new answer
    policy.check("http://prometheus:9090")


@pytest.mark.parametrize("url", [u for k, u in HOSTILE.items() if k not in ("no scheme",)])
def test_the_policy_refuses_every_hostile_address_itself(url: str) -> None:
    everything = AddressPolicy(["prometheus", "169.254.169.254", "metadata.google.internal"], Resolver())
    refused(everything, url)


@pytest.mark.parametrize(
    "entry", ["http://u:p@prom:1", "file:///x", "prom:99999", "prom/path", "2852039166", "::1", "prom:"]
)
def test_a_malformed_entry_is_refused_naming_it(entry: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(entry))):
        AddressPolicy([entry], Resolver())


def test_entries_come_comma_separated_or_repeated() -> None:
    assert split_entries(["prom:9090, http://a:1/x", "", " b "]) == ("prom:9090", "http://a:1/x", "b")


def test_an_address_is_normalised_for_matching() -> None:
    a = parse("HTTP://Prom.Example.:9090/x/")
    assert (a.scheme, a.host, a.port, a.path) == ("http", "prom.example", 9090, "/x")
    assert parse("https://[2001:DB8:0::1]/").host == "2001:db8::1"
