"""A stand-in model server for router tests and the router benchmark: answers with its name.

Run as ``python tests/integration/echo_server.py NAME PORT`` ($ECHO_DELAY_MS makes it slow). Every request (any path, GET or POST)
gets ``{"server": NAME, "requestId": <X-Request-ID>, "mirror": bool}``; ``GET /_seen`` returns the
request ids it has answered so tests can check what reached it (shadow traffic included);
``GET /metrics`` exposes ``echo_requests_total{server=NAME}`` in Prometheus' text format.
``/readyz`` answers 200 once it listens. HTTP/1.1 keep-alive, stdlib only, binds 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME = sys.argv[1] if len(sys.argv) > 1 else "backend"
DELAY = float(os.environ.get("ECHO_DELAY_MS", "0")) / 1000  # a slow model: every answer waits this long
FAIL = int(os.environ.get("ECHO_FAIL_STATUS", "0"))  # a broken model: every answer has this status
SEEN: list[dict[str, object]] = []
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 65536  # one write per response (flushed per request), so no Nagle/delayed-ACK stall
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        ctype = "application/json"
        if self.path == "/_seen":
            with LOCK:
                body = json.dumps(SEEN).encode()
        elif self.path == "/metrics":
            with LOCK:
                n = len(SEEN)
            text = f'# TYPE echo_requests_total counter\necho_requests_total{{server="{NAME}"}} {n}\n'
            body = text.encode()
            ctype = "text/plain; version=0.0.4"
        else:
            rid = self.headers.get("X-Request-ID", "")
            mirror = self.headers.get("X-Rollout-Mirror") == "1"
            if self.path != "/readyz":
                with LOCK:
                    SEEN.append({"rid": rid, "mirror": mirror, "path": self.path})
            body = json.dumps({"server": NAME, "requestId": rid, "mirror": mirror}).encode()
            if DELAY and self.path != "/readyz":
                time.sleep(DELAY)
        failing = FAIL and self.path not in ("/readyz", "/metrics", "/_seen")
        self.send_response(FAIL if failing else 200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = _answer
    do_POST = _answer


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), Handler)
    server.daemon_threads = True
    server.serve_forever()


def start_echo(
    supervisor: object, name: str, log_dir: object, delay_ms: float = 0, fail_status: int = 0
) -> int:
    """Start this server as a supervised process named ``name``; its port once it is ready."""
    from pathlib import Path

    from rollout.local.processes import Supervisor, free_port, http_ok

    assert isinstance(supervisor, Supervisor)
    port = free_port()
    env = {**os.environ, "ECHO_DELAY_MS": str(delay_ms), "ECHO_FAIL_STATUS": str(fail_status)}
    proc = supervisor.start(
        name, [sys.executable, __file__, name, str(port)], Path(str(log_dir)) / f"{name}.log", env=env
    )
    supervisor.wait_ready(proc, http_ok(f"http://127.0.0.1:{port}/readyz"), timeout=30)
    return port
