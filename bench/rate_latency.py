"""Latency against request rate: why comparative latency gates are unfair to a small canary.

    python -m bench.rate_latency     # ~1 minute; writes bench/results/rate_latency.json

Two servers of the same kind (``bentoml serve`` of iris:v1 and iris:v2, 1 worker each) are paced
side by side, as a 10 % canary and its stable are: one at ``LOW`` requests per second, the other at
``HIGH``, then swapped, so that what differs is the rate, not the model. Each request is one row of
``POST /predict`` on its own keep-alive client; the latency is measured by the client. Reported per
server and rate: p50 and p99 in ms, and the ratio low-rate / high-rate of each. A ratio well above
1 means a comparative latency judge (relative slow-down against stable) sees a regression that is
only the canary being idle: canary-good.yaml gates latency on an absolute bound for that reason.
Environment: BENCH_RATE_SECONDS (per run, default 12). Called by bench/run.py.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from rollout.local.bento import REPO_ROOT, BentoServer, start_bento_server
from rollout.local.processes import free_port

RESULTS = REPO_ROOT / "bench" / "results" / "rate_latency.json"
LOW, HIGH = 8.0, 72.0  # a 10 % canary and its stable under the demo's Locust load (~80 req/s)
SECONDS = float(os.environ.get("BENCH_RATE_SECONDS", "12"))
BODY = {"instances": [[5.1, 3.5, 1.4, 0.2]]}


def paced(server: BentoServer, rate: float, seconds: float, out: list[float]) -> None:
    """Send one request every 1/rate seconds (bounded by ``seconds``); latencies into ``out``."""
    period = 1.0 / rate
    with httpx.Client(timeout=10.0) as client:
        for _ in range(20):  # warm the connection and the process
            client.post(server.url + "/predict", json=BODY)
        start = time.perf_counter()
        n = 0
        while time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            client.post(server.url + "/predict", json=BODY)
            out.append(time.perf_counter() - t0)
            n += 1
            time.sleep(max(0.0, start + n * period - time.perf_counter()))


def quantiles(values: list[float]) -> dict[str, float]:
    v = sorted(values)
    return {
        "n": len(v),
        "p50_ms": round(v[len(v) // 2] * 1000, 3),
        "p99_ms": round(v[min(len(v) - 1, int(len(v) * 0.99))] * 1000, 3),
    }


def side_by_side(servers: dict[str, BentoServer], rates: dict[str, float]) -> dict[str, Any]:
    got: dict[str, list[float]] = {v: [] for v in servers}
    threads = [threading.Thread(target=paced, args=(servers[v], rates[v], SECONDS, got[v])) for v in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {v: {"rate": rates[v], **quantiles(got[v])} for v in servers}


def main() -> None:
    logs = Path(os.environ.get("TMPDIR", "/tmp"))
    servers = {
        v: start_bento_server(f"iris:{v}", free_port(), wait=False, log_path=logs / f"rate-latency-{v}.log")
        for v in ("v1", "v2")
    }
    try:
        for s in servers.values():
            s.wait_ready(300)
        runs = [
            side_by_side(servers, {"v1": HIGH, "v2": LOW}),
            side_by_side(servers, {"v1": LOW, "v2": HIGH}),
        ]
    finally:
        for s in servers.values():
            s.stop()
    low = [r[v] for r in runs for v in r if r[v]["rate"] == LOW]
    high = [r[v] for r in runs for v in r if r[v]["rate"] == HIGH]
    ratio_p50 = sum(x["p50_ms"] for x in low) / sum(x["p50_ms"] for x in high)
    ratio_p99 = sum(x["p99_ms"] for x in low) / sum(x["p99_ms"] for x in high)
    doc = {
        "what": f"the same model kind at {LOW:g} vs {HIGH:g} req/s side by side, then swapped",
        "seconds_per_run": SECONDS,
        "runs": runs,
        "low_over_high_p50": round(ratio_p50, 2),
        "low_over_high_p99": round(ratio_p99, 2),
        "headline": [
            {
                "name": f"p50 at {LOW:g} req/s / p50 at {HIGH:g} req/s (same model kind)",
                "value": round(ratio_p50, 2),
                "unit": "x",
                "target": "informational: > 1 means a small canary looks slower",
                "met": None,
            }
        ],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=1))
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
