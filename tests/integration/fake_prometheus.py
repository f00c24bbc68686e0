"""A stand-in Prometheus for PrometheusProvider's tests: a tiny real HTTP server on 127.0.0.1.

``http.server`` in a thread (``with FakePrometheus() as fake:``): every POST (the provider's
queries) gets ``fake.reply`` - a status and a body, or a hang (before or after the headers), a
closed connection, or the body dripped out a byte at a time. It counts the requests and records
each one's ``Host`` header. Used by test_prometheus_provider.py and test_prometheus_hostile.py.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """What the fake Prometheus does with the next requests."""

    status: int = 200
    body: bytes = b""
    hang: bool = False  # read the request, never answer
    hang_after_headers: bool = False  # send status and headers, then nothing
    close: bool = False  # close the connection without a word
    drip: float = 0.0  # seconds between the bytes of the body (a server that drips its answer)


def answer(kind: str, result: Any) -> bytes:
    """A successful query answer: ``{"status": "success", "data": {resultType, result}}``."""
    return json.dumps({"status": "success", "data": {"resultType": kind, "result": result}}).encode()


def vector(*samples: Any) -> bytes:
    return answer("vector", list(samples))


ONE = vector({"metric": {}, "value": [1700000000.0, "1.5"]})


class FakePrometheus:
    def __init__(self) -> None:
        self.reply = Reply(body=ONE)
        self.requests = 0
        self.hosts: list[str] = []  # the Host header of each request
        self.release = threading.Event()  # set at teardown: hanging handlers return
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                fake.requests += 1
                fake.hosts.append(self.headers.get("Host", ""))
                reply = fake.reply
                if reply.close:
                    self.close_connection = True
                    return
                if reply.hang:
                    fake.release.wait()
                    return
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                if reply.hang_after_headers:
                    self.wfile.flush()
                    fake.release.wait()
                    return
                if reply.drip:
                    for i in range(len(reply.body)):
                        if fake.release.wait(reply.drip):
                            return
                        self.wfile.write(reply.body[i : i + 1])
                        self.wfile.flush()
                    return
                self.wfile.write(reply.body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FakePrometheus:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
