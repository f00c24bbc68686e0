"""Router overhead and routing changes under load: nginx (+Lua) vs direct, side by side in one run.

``python -m bench.router`` starts a trivial ASGI backend (uvicorn, one worker) and the project's
nginx router in front of it, then runs wrk (POST, small JSON body) at 1 and 8 connections against
(a) the backend directly, (b) the router sending everything to stable, (c) the router splitting
50/50 between two backends, (d) a plain nginx without Lua (static upstream, keep-alive: the price
of reload-free routing is (b) - (d)), interleaved, ``REPS`` times; medians of p50/p99/RPS, and nginx worker
CPU per request. Then, at 8 connections, it counts failed requests while the routes change 20
times through the admin API (no reload), while nginx reloads 20 times with a plain SIGHUP, and
20 times the way NginxServer.reload does it (drain keep-alive connections first).
Writes bench/results/router.json (with ``headline`` rows for bench/run.py). Target: p50 overhead
under 1 ms. Who calls it: bench/run.py (``make bench``), or by hand.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rollout.local.nginx import NGINX_BIN, NginxConfig, NginxServer
from rollout.local.processes import Supervisor, free_port, http_ok
from rollout.routers.base import Backend, Routes, RouteTarget
from rollout.routers.nginx import NginxRouter

RESULTS = Path(__file__).resolve().parent / "results"
REPS = int(os.environ.get("BENCH_ROUTER_REPS", "3"))
DURATION = int(os.environ.get("BENCH_ROUTER_SECONDS", "5"))
BODY = '{"instances": [[5.1, 3.5, 1.4, 0.2]]}'
WRK_SCRIPT = f"""wrk.method = "POST"
wrk.body = '{BODY}'
wrk.headers["Content-Type"] = "application/json"
"""
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The stand-in backend: reads the body, answers a fixed JSON prediction."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    body = b'{"predictions": [0]}'
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def parse_wrk(out: str) -> dict[str, float]:
    """wrk --latency output -> rps, p50/p90/p99 (ms), errors (socket errors + non-2xx), requests."""
    res: dict[str, float] = {"errors": 0.0}
    for pct, value, unit in re.findall(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        res[f"p{pct}_ms"] = float(value) * _UNIT_MS[unit]
    if m := re.search(r"Requests/sec:\s+([\d.]+)", out):
        res["rps"] = float(m.group(1))
    if m := re.search(r"(\d+) requests in", out):
        res["requests"] = float(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        res["socket_errors"] = float(sum(int(g) for g in m.groups()))
        res["errors"] += res["socket_errors"]
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        res["non_2xx"] = float(m.group(1))
        res["errors"] += res["non_2xx"]
    return res


def wrk(url: str, connections: int, seconds: int, script: Path) -> dict[str, float]:
    threads = min(connections, 2)
    cmd = [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{seconds}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    return parse_wrk(out)


def cpu_ticks(pids: set[int]) -> int:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except (OSError, IndexError):
            pass
    return total


def plain_nginx_config(prefix: Path, port: int, backend_port: int) -> str:
    """nginx with a static upstream and keep-alive, no Lua: the price of the Lua router beside it."""
    return f"""worker_processes 2;
{"user root root;" if os.geteuid() == 0 else ""}
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    upstream plain {{ server 127.0.0.1:{backend_port}; keepalive 64; keepalive_timeout 4s; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://plain;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def worker_pids(master: int) -> set[int]:
    try:
        return {int(c) for c in Path(f"/proc/{master}/task/{master}/children").read_text().split()}
    except OSError:
        return set()


def measure(nginx: NginxServer | int | None, url: str, conns: int, script: Path) -> dict[str, float]:
    if nginx is None:
        pids: set[int] = set()
    elif isinstance(nginx, int):
        pids = worker_pids(nginx)
    else:
        pids = nginx.worker_pids()
    before = cpu_ticks(pids)
    res = wrk(url, conns, DURATION, script)
    ticks = cpu_ticks(pids) - before
    if res.get("requests"):
        res["nginx_cpu_us_per_request"] = ticks / os.sysconf("SC_CLK_TCK") / res["requests"] * 1e6
    return res


def changes_under_load(
    nginx: NginxServer, url: str, script: Path, change: Any, count: int = 20, seconds: int = 12
) -> dict[str, float]:
    """wrk at 8 connections while ``change(i)`` runs ``count`` times spread over the run."""
    done: list[float] = []

    def driver() -> None:
        time.sleep(1.0)
        for i in range(count):
            t = time.monotonic()
            change(i)
            done.append(time.monotonic() - t)
            time.sleep(max(0.0, (seconds - 3) / count - done[-1]))

    th = threading.Thread(target=driver)
    th.start()
    res = wrk(url, 8, seconds, script)
    res["changes_during_load"] = float(len(done))  # the ones wrk saw
    th.join()
    res["changes"] = float(len(done))
    res["change_apply_ms_p50"] = statistics.median(done) * 1000 if done else float("nan")
    return res


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = set().union(*runs)
    return {k: statistics.median(r[k] for r in runs if k in r) for k in sorted(keys)}


def main() -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-router-"))
    script = tmp / "post.lua"
    script.write_text(WRK_SCRIPT)
    sup = Supervisor()
    try:
        ports = [free_port(), free_port()]
        for i, port in enumerate(ports):
            argv = [
                sys.executable,
                "-m",
                "uvicorn",
                "bench.router:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ]
            # keep-alive longer than nginx's upstream pool keeps a connection idle (60 s), as the
            # model servers do (rollout/local/bento.py)
            argv += ["--log-level", "warning", "--no-access-log", "--timeout-keep-alive", "75"]
            proc = sup.start(
                f"backend{i}", argv, tmp / f"backend{i}.log", cwd=Path(__file__).resolve().parent.parent
            )
            sup.wait_ready(proc, http_ok(f"http://127.0.0.1:{port}/"), timeout=60)
        nginx = NginxServer(
            sup, NginxConfig(prefix=tmp / "nginx", admin_port=free_port(), services={"bench": free_port()})
        )
        nginx.start()
        plain_prefix, plain_port = tmp / "plain", free_port()
        (plain_prefix / "logs").mkdir(parents=True)
        (plain_prefix / "tmp").mkdir()
        (plain_prefix / "nginx.conf").write_text(plain_nginx_config(plain_prefix, plain_port, ports[0]))
        plain = sup.start(
            "plain-nginx", [NGINX_BIN, "-p", str(plain_prefix), "-c", "nginx.conf"], tmp / "plain.log"
        )
        sup.wait_ready(plain, http_ok(f"http://127.0.0.1:{plain_port}/"), timeout=30)
        router = NginxRouter(nginx.admin_url, "bench", token=nginx.admin_token)
        stable, candidate = (
            Backend(n, n, f"127.0.0.1:{p}") for n, p in zip(("stable", "candidate"), ports, strict=True)
        )
        router.ensure(RouteTarget("bench", stable, candidate))
        direct_url, router_url = (
            f"http://127.0.0.1:{ports[0]}/predict",
            nginx.service_url("bench") + "/predict",
        )

        configs = {
            "direct": (direct_url, Routes.all_stable()),
            "nginx_plain": (f"http://127.0.0.1:{plain_port}/predict", Routes.all_stable()),
            "nginx": (router_url, Routes.all_stable()),
            "nginx_split50": (router_url, Routes(candidate_weight=50)),
        }
        raw: dict[str, dict[int, list[dict[str, float]]]] = {c: {1: [], 8: []} for c in configs}
        for url, _ in configs.values():
            wrk(url, 8, 2, script)  # warm up connections and code paths
        for _ in range(REPS):
            for conns in (1, 8):
                for name, (url, routes) in configs.items():
                    router.set_routes(routes)
                    who = None if name == "direct" else plain.pid if name == "nginx_plain" else nginx
                    raw[name][conns].append(measure(who, url, conns, script))
        medians = {name: {str(c): median_of(runs) for c, runs in by.items()} for name, by in raw.items()}

        weights = [0, 10, 25, 50, 75, 100, 50, 5]
        routing = changes_under_load(
            nginx,
            router_url,
            script,
            lambda i: router.set_routes(Routes(candidate_weight=weights[i % len(weights)])),
        )
        router.set_routes(Routes(candidate_weight=50))
        plain_reloads = changes_under_load(
            nginx, router_url, script, lambda i: nginx.reload(drain=0), seconds=20
        )
        reloads = changes_under_load(nginx, router_url, script, lambda i: nginx.reload(), seconds=50)
    finally:
        sup.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    d, n = medians["direct"], medians["nginx"]
    overhead = {c: {k: n[c][k] - d[c][k] for k in ("p50_ms", "p99_ms")} for c in ("1", "8")}
    result = {
        "tool": "wrk, POST small JSON, uvicorn trivial backend, nginx 2 workers with upstream keep-alive",
        "reps": REPS,
        "seconds_per_run": DURATION,
        "medians": medians,
        "overhead_ms": overhead,
        "routing_changes_under_load": routing,
        "graceful_reloads_under_load": reloads,
        "plain_reloads_under_load": plain_reloads,
        "raw": raw,
        "headline": [
            {
                "name": "router p50 overhead @1 conn",
                "value": round(overhead["1"]["p50_ms"], 3),
                "unit": "ms",
                "target": "< 1 ms",
                "met": overhead["1"]["p50_ms"] < 1.0,
            },
            {
                "name": "router p50 overhead @8 conn",
                "value": round(overhead["8"]["p50_ms"], 3),
                "unit": "ms",
                "target": "< 1 ms",
                "met": overhead["8"]["p50_ms"] < 1.0,
            },
            {"name": "router p99 overhead @8 conn", "value": round(overhead["8"]["p99_ms"], 3), "unit": "ms"},
            {
                "name": "Lua router vs plain nginx, p50 @1 conn",
                "value": round(n["1"]["p50_ms"] - medians["nginx_plain"]["1"]["p50_ms"], 3),
                "unit": "ms",
            },
            {
                "name": "RPS @8 conn, nginx / direct",
                "value": round(n["8"]["rps"] / d["8"]["rps"], 3),
                "unit": "x",
            },
            {
                "name": "nginx CPU per request @8 conn",
                "value": round(n["8"].get("nginx_cpu_us_per_request", 0), 1),
                "unit": "us",
            },
            {
                "name": f"failed requests over {routing['changes']:.0f} weight changes (Lua, no reload)",
                "value": routing["errors"],
                "unit": f"of {routing.get('requests', 0):.0f}",
                "target": "0",
                "met": routing["errors"] == 0,
            },
            {
                "name": f"failed requests over {plain_reloads['changes']:.0f} plain reloads (SIGHUP)",
                "value": plain_reloads["errors"],
                "unit": f"of {plain_reloads.get('requests', 0):.0f}",
            },
            {
                "name": f"failed requests over {reloads['changes']:.0f} drained reloads (nginx closes keep-alive first)",
                "value": reloads["errors"],
                "unit": f"of {reloads.get('requests', 0):.0f}",
            },
        ],
    }
    out = RESULTS / "router.json"
    out.write_text(json.dumps(result, indent=2))
    print(
        json.dumps(
            {"medians": medians, "overhead_ms": overhead, "routing": routing, "reloads": reloads}, indent=2
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
