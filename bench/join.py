"""What the shared join store costs per request: the same server with ``BENTO_JOIN_STORE`` local and redis.

    python -m bench.join             # ~2 minutes; writes bench/results/join.json

Two ``bentoml serve`` of ``iris:v1`` (one worker each) side by side on 127.0.0.1: ``local`` keeps
its predictions in its own SQLite file (bentos/feedback.py), ``redis`` sends them to a real
redis-server (bentos/redis_join.py; Debian's, with the chart's durable settings: append-only file
fsynced before every reply). ``wrk`` loads both with single-row predictions at 1 and 8 connections,
interleaved, 3 repetitions of 6 s, medians reported; the servers' own CPU per request and Redis's
are measured too. Then 300 feedback labels, one at a time, to each (the round trip a labelling
pipeline sees), and Redis's memory per remembered prediction. Ratios: redis / local. Environment:
BENCH_JOIN_SECONDS (default 6), BENCH_JOIN_REPS (default 3). Called by bench/run.py.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from bench.serving import BODY, _median, measured_run, run_wrk, tree_cpu_seconds
from bentos.redis_join import connect
from rollout.local.bento import REPO_ROOT, start_bento_server
from rollout.local.processes import Supervisor, free_port
from rollout.local.redis import RedisServer

RESULTS = REPO_ROOT / "bench" / "results" / "join.json"
SECONDS = float(os.environ.get("BENCH_JOIN_SECONDS", "6"))
REPETITIONS = int(os.environ.get("BENCH_JOIN_REPS", "3"))
CONCURRENCY = (1, 8)
TOKEN = "bench-feedback-token-0123456789abcdef"
LABELS = 300


def label_round_trips(url: str) -> dict[str, float]:
    """p50/p99 of predict-then-label, the label's round trip alone (ms)."""
    timings = []
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(timeout=10) as client:
        for _ in range(LABELS):
            rid = f"bench-{uuid.uuid4().hex}"
            client.post(
                f"{url}/predict",
                content=BODY,
                headers={"X-Request-ID": rid, "Content-Type": "application/json"},
            )
            started = time.perf_counter()
            answer = client.post(
                f"{url}/feedback", json={"request_id": rid, "label": "setosa"}, headers=headers
            )
            timings.append(time.perf_counter() - started)
            assert answer.status_code == 200, answer.text
    timings.sort()
    return {
        "p50_ms": round(timings[len(timings) // 2] * 1000, 3),
        "p99_ms": round(timings[int(len(timings) * 0.99)] * 1000, 3),
    }


def main() -> None:
    started = time.monotonic()
    sup = Supervisor()
    with tempfile.TemporaryDirectory(prefix="bench-join-") as tmp:
        store = RedisServer(sup, Path(tmp) / "redis", free_port())
        store.start()
        env = {"BENTO_FEEDBACK_TOKEN": TOKEN}
        servers = {
            "local": start_bento_server("iris:v1", free_port(), 1, extra_env={**env, "BENTO_JOIN_STORE": "local"}, wait=False),
            "redis": start_bento_server(
                "iris:v1", free_port(), 1, wait=False,
                extra_env={**env, "BENTO_JOIN_STORE": store.url, "BENTO_JOIN_PASSWORD": store.password},
            ),
        }  # fmt: skip
        try:
            for server in servers.values():
                server.wait_ready(240)
                run_wrk(f"{server.url}/predict", 8, 1)
            assert store.proc is not None
            runs: dict[str, dict[int, list[dict[str, float]]]] = {
                n: {c: [] for c in CONCURRENCY} for n in servers
            }
            redis_cpu = 0.0
            redis_requests = 0.0
            for _ in range(REPETITIONS):
                for connections in CONCURRENCY:
                    for name, server in servers.items():  # interleaved: both see the same machine load
                        before = tree_cpu_seconds(store.proc.pid)
                        result = measured_run(f"{server.url}/predict", server.pid, connections, SECONDS)
                        runs[name][connections].append(result)
                        if name == "redis":
                            redis_cpu += tree_cpu_seconds(store.proc.pid) - before
                            redis_requests += result["rps"] * SECONDS
            client = connect(store.url, store.password)
            time.sleep(0.5)  # the last flush
            memory = client.info("memory")["used_memory"]
            keys = client.dbsize()
            labels = {name: label_round_trips(server.url) for name, server in servers.items()}
        finally:
            for server in servers.values():
                server.stop()
            sup.stop_all()
    medians = {name: {str(c): _median(r) for c, r in by_c.items()} for name, by_c in runs.items()}
    ratios = {
        str(c): {
            "rps": round(medians["redis"][str(c)]["rps"] / medians["local"][str(c)]["rps"], 3),
            "p50_ms_added": round(medians["redis"][str(c)]["p50_ms"] - medians["local"][str(c)]["p50_ms"], 3),
            "server_cpu_ms_added": round(
                medians["redis"][str(c)]["cpu_ms_per_request"]
                - medians["local"][str(c)]["cpu_ms_per_request"],
                4,
            ),
        }
        for c in CONCURRENCY
    }
    redis_cpu_ms = round(redis_cpu / redis_requests * 1000, 4) if redis_requests else 0.0
    bytes_per_prediction = round(memory / keys) if keys else 0
    headline = [
        {"name": "join: RPS with the Redis join / with the local SQLite one, 8 conn", "value": ratios["8"]["rps"],
         "unit": "x", "target": ">= 0.9", "met": ratios["8"]["rps"] >= 0.9},
        {"name": "join: p50 added by the Redis join, 1 conn", "value": ratios["1"]["p50_ms_added"], "unit": "ms",
         "target": "< 0.5", "met": ratios["1"]["p50_ms_added"] < 0.5},
        {"name": "join: Redis CPU per prediction", "value": redis_cpu_ms, "unit": "ms", "target": "", "met": None},
        {"name": "join: Redis memory per remembered prediction", "value": bytes_per_prediction, "unit": "bytes",
         "target": "", "met": None},
        {"name": "join: label round trip p50, Redis / local", "value": labels["redis"]["p50_ms"], "unit": "ms",
         "target": f"local {labels['local']['p50_ms']} ms", "met": None},
    ]  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "join",
                "model": "iris:v1",
                "servers": "bentoml serve, 1 worker each, same machine, interleaved wrk runs",
                "redis": "Debian redis-server 7, appendonly yes, appendfsync always, on 127.0.0.1",
                "seconds_per_run": SECONDS,
                "repetitions": REPETITIONS,
                "statistic": "median of repetitions",
                "predict": medians,
                "ratios": ratios,
                "redis_cpu_ms_per_prediction": redis_cpu_ms,
                "redis_bytes_per_prediction": bytes_per_prediction,
                "redis_keys": keys,
                "labels": labels,
                "headline": headline,
                "elapsed_s": round(time.monotonic() - started, 1),
            },
            indent=2,
        )
        + "\n"
    )
    print(
        json.dumps(
            {"ratios": ratios, "labels": labels, "redis_cpu_ms": redis_cpu_ms, "bytes": bytes_per_prediction}
        )
    )


if __name__ == "__main__":
    main()
