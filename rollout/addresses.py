"""Metrics addresses: what a spec may name, what a controller fetches, and what is never fetched.

``spec.metricsAddress`` is a URL the controller fetches from inside the cluster network, so it is
checked three times:

1. **at spec load** (``check_metrics_url``, rollout/spec.py's validator): only ``http``/``https`` to
   a host and an optional port, an optional path; no user info, query or fragment, nothing but
   printable ASCII, IPv4 only as ``a.b.c.d`` (``http://2852039166/`` is 169.254.169.254 to the C
   resolver, and so are ``0xa9fea9fe`` and ``0251.0376.0251.0376``), IPv6 in brackets without a
   zone; never a link-local or cloud metadata address written as such (``never_fetched``);
2. **by the controller, before anything moves** (``AddressPolicy.check``, every reconcile): the
   address must match an entry of the controller's allow-list (``host``: any port; ``host:port``;
   or a URL prefix: that scheme, host, port and path below), and the host is resolved then: if any
   of its addresses is link-local or a metadata address it is refused, even when listed;
3. **where it connects** (rollout/metrics/guard.py): the provider resolves the host itself,
   refuses the same addresses and connects only to an address it checked, so a name that changes
   its answer between 2. and 3. (DNS rebinding) still reaches nothing it must not.

Pure: no I/O here (rollout.spec imports it; the resolver is handed in: guard.system_resolve).
Who calls it: rollout/spec.py, rollout/controller (the reconciler and ``rollout controller``'s
flags), rollout/metrics/guard.py.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from rollout.errors import MetricsAddressRefusedError, excerpt

log = logging.getLogger("rollout.addresses")
IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[IP]]  # (host, port) -> its addresses now; () if none

SCHEMES = {"http": 80, "https": 443}
LINK_LOCAL = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))
# AWS/GCP/Azure/OCI, AWS ECS task metadata, AWS over IPv6, Alibaba Cloud
METADATA_IPS = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)
METADATA_HOSTS = frozenset(
    {"metadata.google.internal", "metadata.goog", "metadata", "instance-data", "instance-data.ec2.internal"}
)
MAX_URL = 2048
# a coarse form of check_metrics_url for the CRD's openAPIV3Schema: the API server refuses these
URL_PATTERN = (
    r'^[Hh][Tt][Tt][Pp][Ss]?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?(/[!-"$->@-\[\]-~]*)?$'
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_URL = re.compile(r"^(?P<scheme>[^:/?#]+)://(?P<authority>[^/?#]*)(?P<path>[^?#]*)(?P<rest>[?#].*)?$")
_AUTHORITY = re.compile(r"^(?:\[(?P<v6>[^\]]*)\]|(?P<host>[^:\[\]]*))(?::(?P<port>[^:]*))?$")
_NUMBER = re.compile(r"^([0-9]+|0x[0-9a-f]*)$")  # a last label that makes a host an IPv4 address


@dataclass(frozen=True)
class Address:
    """A metrics URL whose form is checked: scheme, host (lowercase, no trailing dot, an IP in its
    canonical form), port (the scheme's when none is written), path without a trailing slash."""

    scheme: str
    host: str
    port: int
    path: str
    ip: IP | None
    port_written: bool = False


# --- what is never fetched -----------------------------------------------------------------------


def _embedded_v4(ip: IP) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, compatible, NAT64, 6to4), else None."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or (int(ip) >> 32 == 0 and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def never_fetched(ip: IP) -> str | None:
    """Why ``ip`` is never fetched (link-local, a cloud metadata address), or None."""
    for candidate in (ip, _embedded_v4(ip)):
        if candidate is None:
            continue
        if candidate in METADATA_IPS:
            return f"{candidate} is a cloud metadata address"
        if any(candidate in net for net in LINK_LOCAL):
            return f"{candidate} is link-local"
    return None


def static_refusal(address: Address) -> str | None:
    """Why ``address`` is never fetched as written (an IP or a metadata host name), or None."""
    if address.ip is not None:
        return never_fetched(address.ip)
    if address.host in METADATA_HOSTS:
        return f"{address.host} is a cloud metadata address"
    return None


def refusal(address: Address, resolve: Resolver) -> str | None:
    """Why ``address`` must not be fetched now: it is, or its host resolves to, a link-local or
    metadata address. None otherwise (also when it does not resolve: there is nothing to reach)."""
    if why := static_refusal(address):
        return why
    if address.ip is None:
        for ip in resolve(address.host, address.port):
            if why := never_fetched(ip):
                return f"{address.host} resolves to {ip} ({why})"
    return None


# --- the form ------------------------------------------------------------------------------------


def _host(raw: str) -> tuple[str, IP | None]:
    """A URL's host (brackets removed) -> (normalised host, its IP if it is one). ValueError if odd."""
    if not raw:
        raise ValueError("has no host")
    host = raw.lower()
    if ":" in host:  # an IPv6 literal (the caller saw the brackets)
        if "%" in host:
            raise ValueError(f"IPv6 host [{raw}] has a zone; name the address without one")
        try:
            v6 = ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"[{raw}] is not an IPv6 address") from None
        return v6.compressed, v6
    if host.endswith("."):
        host = host[:-1]  # an absolute name: the same host
    try:
        v4 = ipaddress.IPv4Address(host)
    except ValueError:
        pass
    else:
        return str(v4), v4
    labels = host.split(".")
    if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"host {raw!r} is not a DNS name nor an IP address")
    if _NUMBER.match(labels[-1]):  # as the URL standard: C's inet_aton would read an IPv4 address
        raise ValueError(
            f"host {raw!r} ends in a number (the C resolver reads it as an IPv4 address: 2852039166 "
            "and 0xa9fea9fe are 169.254.169.254); write IPv4 as a.b.c.d"
        )
    return host, None


def parse(url: str, *, scheme_optional: bool = False) -> Address:
    """Check the form of a metrics URL (with ``scheme_optional``: also an allow-list entry's
    ``host[:port]``, scheme ``any``). ValueError saying what is wrong. Nothing is resolved, and
    what is never fetched is ``refusal``'s business."""
    if not isinstance(url, str) or not url:
        raise ValueError("must be a non-empty http(s) URL")
    if len(url) > MAX_URL:
        raise ValueError(f"is longer than {MAX_URL} characters")
    if any(not ("!" <= c <= "~") or c == "\\" for c in url):
        raise ValueError("may hold printable ASCII only: no spaces, control characters or backslashes")
    m = _URL.match(url)
    if m is None and scheme_optional:
        m = _URL.match(f"any://{url}")
    if m is None:
        raise ValueError(f"{url!r} is not a URL: use http://host:port or https://host:port")
    scheme = m["scheme"].lower()
    if scheme not in SCHEMES and not (scheme_optional and scheme == "any"):
        raise ValueError(f"only http and https are fetched, not {m['scheme']}:")
    if m["rest"]:
        raise ValueError("may not carry a query or a fragment ('?', '#')")
    if "@" in m["authority"]:
        raise ValueError("may not carry user info (user:password@); put credentials elsewhere")
    auth = _AUTHORITY.match(m["authority"])
    if auth is None:
        raise ValueError(f"has a malformed host or port {m['authority']!r} (IPv6 goes in brackets)")
    host, ip = _host(auth["v6"] if auth["v6"] is not None else auth["host"])
    port = SCHEMES.get(scheme, 0)
    if auth["port"] is not None:
        if not (auth["port"].isdigit() and len(auth["port"]) <= 5 and 1 <= int(auth["port"]) <= 65535):
            raise ValueError(f"port {auth['port']!r} is not a number from 1 to 65535")
        port = int(auth["port"])
    return Address(scheme, host, port, m["path"].rstrip("/"), ip, auth["port"] is not None)


def check_metrics_url(url: object) -> object:
    """The spec's validator of ``metricsAddress``: ``url`` unchanged, or ValueError. A value that
    is not a string passes unchanged too (pydantic's own type check refuses it)."""
    if isinstance(url, str) and (why := static_refusal(parse(url))):
        raise ValueError(f"is never fetched: {why}")
    return url


# --- the controller's allow-list -----------------------------------------------------------------


@dataclass(frozen=True)
class Allowed:
    """One allow-list entry: ``host`` (any port, either scheme), ``host:port`` (either scheme) or a
    URL prefix (that scheme, host and port, the path itself or below it)."""

    text: str
    scheme: str | None
    host: str
    port: int | None
    path: str

    @classmethod
    def of(cls, text: str, a: Address) -> Allowed:
        """The entry ``text``, whose form ``parse(text, scheme_optional=True)`` gave as ``a``."""
        if a.scheme != "any":
            return cls(text, a.scheme, a.host, a.port, a.path)
        if a.path:
            raise ValueError("has a path: write a URL prefix (http://host:port/path) for one")
        return cls(text, None, a.host, a.port if a.port_written else None, "")

    def matches(self, a: Address) -> bool:
        if self.scheme is not None and a.scheme != self.scheme:
            return False
        if a.host != self.host or (self.port is not None and a.port != self.port):
            return False
        return not self.path or a.path == self.path or a.path.startswith(self.path + "/")


class AddressPolicy:
    """The metrics addresses a ModelRollout may name (``entries``), less those never fetched.
    ``resolve``: the host's addresses now (the controller's: guard.system_resolve)."""

    def __init__(self, entries: Iterable[str], resolve: Resolver) -> None:
        self.allowed: tuple[Allowed, ...] = ()
        for entry in entries:
            try:
                address = parse(entry, scheme_optional=True)
                allowed = Allowed.of(entry, address)
            except ValueError as exc:
                raise ValueError(f"allowed metrics address {entry!r} {exc}") from None
            if why := static_refusal(address):
                log.warning("allowed metrics address %r is never fetched all the same: %s", entry, why)
            self.allowed += (allowed,)
        self.resolve = resolve

    def describe(self) -> str:
        return ", ".join(a.text for a in self.allowed) or "none"

    def check(self, url: str) -> Address:
        """The address, or MetricsAddressRefusedError saying why (and what is allowed). In this
        order: the form, an address never fetched as written, the allow-list, then what the host
        resolves to now (a listed name that resolves to a link-local address is refused)."""
        try:
            address = parse(url)
        except ValueError as exc:
            raise MetricsAddressRefusedError(f"{excerpt(url)!r} {exc}") from None
        if why := static_refusal(address):
            raise MetricsAddressRefusedError(f"{url} is never fetched: {why}")
        if not any(a.matches(address) for a in self.allowed):
            raise MetricsAddressRefusedError(
                f"{url} is not an address this controller fetches; allowed: {self.describe()} "
                "(rollout controller --allowed-metrics-address, ROLLOUT_ALLOWED_METRICS_ADDRESSES)"
            )
        if why := refusal(address, self.resolve):
            raise MetricsAddressRefusedError(f"{url} is never fetched: {why}")
        return address


def split_entries(values: Iterable[str]) -> tuple[str, ...]:
    """Flag or environment values, each possibly comma-separated -> the entries, blanks dropped."""
    return tuple(part.strip() for value in values for part in value.split(",") if part.strip())
