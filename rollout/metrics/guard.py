"""PinnedTransport: an httpx transport that connects only to addresses it has checked itself.

The controller checks a ModelRollout's ``metricsAddress`` against its allow-list and what the host
resolves to (rollout/addresses.py) before anything is fetched; but httpx would resolve the name
again when it connects, and a name may answer differently the second time (DNS rebinding: first
the allowed Prometheus, then 169.254.169.254). So this transport resolves the host, refuses the
request if any answer is link-local or a cloud metadata address (``MetricsAddressRefusedError``,
nothing is sent), and sends it to the checked addresses themselves, in order: the ``Host`` header
stays the name and, for https, so do SNI and the certificate check (httpcore's ``sni_hostname``
request extension). Redirects are not followed by the provider's client, and proxies from the
environment are not used (httpx uses none when it is given a transport).
Who calls it: the controller's metrics factory (rollout/controller/handlers.py) gives it to
``PrometheusProvider``; the controller's ``AddressPolicy`` resolves with ``system_resolve``.
"""

from __future__ import annotations

import ipaddress
import socket

import httpx

from rollout.addresses import IP, Resolver, never_fetched
from rollout.errors import MetricsAddressRefusedError


def system_resolve(host: str, port: int) -> tuple[IP, ...]:
    """Every address ``host`` resolves to now, in the resolver's order; none when it does not."""
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return ()
    out: list[IP] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if ip not in out:
            out.append(ip)
    return tuple(out)


class PinnedTransport(httpx.BaseTransport):
    def __init__(self, resolve: Resolver = system_resolve, inner: httpx.BaseTransport | None = None) -> None:
        self.resolve = resolve
        self.inner = inner or httpx.HTTPTransport()

    def _addresses(self, host: str, port: int) -> tuple[IP, ...]:
        try:
            return (ipaddress.ip_address(host),)
        except ValueError:
            return tuple(self.resolve(host, port))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        port = url.port or (443 if url.scheme == "https" else 80)
        addresses = self._addresses(url.host, port)
        for ip in addresses:
            if why := never_fetched(ip):
                raise MetricsAddressRefusedError(
                    f"{url.host} resolves to {ip} ({why}): never fetched", field=None
                )
        if not addresses:
            raise httpx.ConnectError(f"{url.host} does not resolve", request=request)
        if url.scheme == "https":
            request.extensions = {**request.extensions, "sni_hostname": url.host}
        last: httpx.ConnectError | None = None
        try:
            for ip in addresses:
                request.url = url.copy_with(host=str(ip))
                try:
                    return self.inner.handle_request(request)
                except httpx.ConnectError as exc:  # the next address, as a resolver's client would
                    last = exc
        finally:
            request.url = url
        assert last is not None
        raise last

    def close(self) -> None:
        self.inner.close()
