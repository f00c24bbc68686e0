"""Exports the shared join store's counters to Prometheus, under the names one model server uses.

    python -m bentos.join_exporter --store redis://127.0.0.1:6379/0 --listen 127.0.0.1:9108

With ``BENTO_JOIN_STORE=redis://...`` the model servers count no labels themselves: every label
and every mirrored answer is counted once, in Redis (``bentos/redis_join.py``), whichever pod got
it. This process serves those counters (``GET /metrics``) as ``model_feedback_total``,
``model_feedback_correct_total`` (a regressor's: ``model_feedback_absolute_error_sum`` and
``model_feedback_squared_error_sum``), ``model_shadow_comparisons_total`` and
``model_shadow_agreements_total`` with the usual ``model`` and ``version`` labels, so one scrape
of it replaces the per-pod series and ``sum by (version)`` in the templates, alerts and dashboard
keeps its meaning. Run one (or more: Prometheus should scrape one; they read the same numbers).
``model_join_store_up`` is 0 while Redis cannot be read. ``BENTO_JOIN_PASSWORD`` authenticates to
Redis. The counters persist in Redis, so an exporter restart resets nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import redis

from bentos.redis_join import connect, counters
from rollout.metrics import names as n

logger = logging.getLogger("bentos.join_exporter")

HELP = {
    n.FEEDBACK_TOTAL: "Feedback labels counted for predictions this version made (all pods).",
    n.FEEDBACK_CORRECT_TOTAL: "Feedback labels that matched this version's prediction (all pods).",
    n.FEEDBACK_ABSOLUTE_ERROR_SUM: "A regressor's sum of |prediction - label| over its labelled rows (all pods).",
    n.FEEDBACK_SQUARED_ERROR_SUM: "A regressor's sum of (prediction - label)^2 over its labelled rows (all pods).",
    n.SHADOW_COMPARISONS_TOTAL: "Rows this version answered that another version answered too (mirrored).",
    n.SHADOW_AGREEMENTS_TOTAL: "Mirrored rows where the other version gave this version's answer.",
}
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(client: redis.Redis, prefix: str = "bento:join:") -> str:
    """The exposition text of every counter in the store (and ``model_join_store_up``)."""
    try:
        values = counters(client, prefix)
        up = 1
    except redis.RedisError as exc:
        logger.warning("cannot read the join store: %s", exc)
        values, up = {}, 0
    lines = []
    for metric, text in HELP.items():
        lines += [f"# HELP {metric} {text}", f"# TYPE {metric} counter"]
        for (name, model, version), value in sorted(values.items()):
            if name == metric:
                lines.append(
                    f'{metric}{{{n.LABEL_MODEL}="{_label(model)}",{n.LABEL_VERSION}="{_label(version)}"}} {value}'
                )
    lines += [
        "# HELP model_join_store_up 1 when the exporter could read the join store.",
        "# TYPE model_join_store_up gauge",
        f"model_join_store_up {up}",
    ]
    return "\n".join(lines) + "\n"


def serve(client: redis.Redis, host: str, port: int) -> ThreadingHTTPServer:
    """An HTTP server answering ``/metrics`` and ``/healthz`` (not yet serving: call serve_forever)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                body, status, kind = render(client).encode(), 200, CONTENT_TYPE
            elif self.path == "/healthz":
                body, status, kind = b"ok\n", 200, "text/plain"
            else:
                body, status, kind = (
                    b'{"error": {"code": "not_found", "message": "see /metrics"}}',
                    404,
                    "application/json",
                )
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    return ThreadingHTTPServer((host, port), Handler)


def _address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {value!r}")
    return host, int(port)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bentos.join_exporter", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--store", default=os.environ.get("BENTO_JOIN_STORE", ""), help="redis://host:port/db"
    )
    parser.add_argument(
        "--listen", type=_address, default=("127.0.0.1", 9108), help="HOST:PORT (127.0.0.1:9108)"
    )
    args = parser.parse_args(argv)
    try:
        # a short timeout: a hung Redis shows as model_join_store_up 0 within a scrape, not as a
        # scrape that times out
        client = connect(args.store, os.environ.get("BENTO_JOIN_PASSWORD") or None, timeout=0.5)
        server = serve(client, *args.listen)
    except (ValueError, OSError) as exc:
        print(f"join exporter: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    logger.info("exporting %s on http://%s:%d/metrics", args.store, *args.listen)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
