"""The API server's way into the node's network namespace: an HTTP CONNECT proxy on a unix socket.

The single-node cluster (node.py) keeps kube-apiserver on the host's 127.0.0.1 and everything of
the cluster's network in the node netns. kube-apiserver reaches kubelets, pods and Services (for
``kubectl logs/exec/port-forward``, ``.../proxy`` paths and admission webhooks) through its
"cluster" egress selector: with ``proxyProtocol: HTTPConnect`` over ``transport: uds`` it sends
``CONNECT host:port`` on this socket. This process runs inside the node netns (node.py starts it
with ``nsenter``), so it dials pod IPs, ClusterIPs (through kube-proxy's rules) and the kubelet
there. A Service name ``<svc>.<ns>.svc[.cluster.local]`` (what the API server asks for a webhook)
is resolved to its ClusterIP with a GET on the API server; there is no cluster DNS.

Run as ``python -m tests.k8s.egress SOCKET PKI_DIR SERVER_URL`` (see ``main``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import ssl
import sys
from pathlib import Path

import httpx

SVC_SUFFIXES = (".svc", ".svc.cluster.local")


class Resolver:
    """``<svc>.<ns>.svc`` -> the Service's ClusterIP, asked of the API server as the admin."""

    def __init__(self, server: str, pki: Path) -> None:
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        self.http = httpx.Client(base_url=server, verify=ctx, timeout=10)

    def resolve(self, host: str) -> str:
        for suffix in SVC_SUFFIXES:
            if host.endswith(suffix):
                parts = host.removesuffix(suffix).split(".")
                if len(parts) == 2:
                    resp = self.http.get(f"/api/v1/namespaces/{parts[1]}/services/{parts[0]}")
                    resp.raise_for_status()
                    return str(resp.json()["spec"]["clusterIP"])
        return host


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _handle(resolver: Resolver, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        host, _, port = target.rpartition(":")
        if method != "CONNECT" or not port.isdigit():
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        address = await asyncio.to_thread(resolver.resolve, host.strip("[]"))
        up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(address, int(port)), 10)
    except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, httpx.HTTPError,
            TimeoutError) as exc:  # fmt: skip
        with contextlib.suppress(Exception):
            writer.write(
                f"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nX-Error: {type(exc).__name__}\r\n\r\n".encode()
            )
            writer.close()
        return
    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
    await writer.drain()
    await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def serve(socket_path: Path, resolver: Resolver) -> None:
    with contextlib.suppress(FileNotFoundError):
        socket_path.unlink()
    server = await asyncio.start_unix_server(lambda r, w: _handle(resolver, r, w), path=str(socket_path))
    os.chmod(socket_path, 0o600)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("socket", type=Path, help="the unix socket to listen on")
    parser.add_argument("pki", type=Path, help="the control plane's pki directory (ca.crt, admin.crt/key)")
    parser.add_argument("server", help="the API server's URL as seen from here (for Service names)")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.socket, Resolver(args.server, args.pki)))


if __name__ == "__main__":
    sys.exit(main())
