"""Locust load at several rates through the whole local stack, side by side with the model server alone.

``python -m bench.load`` brings up the embedded stack (nginx + Lua router, Prometheus) with iris:v1
serving the ``iris`` service, then runs the project's Locust scenario (loadtests/locustfile.py:
single-row predictions, half of them followed by a feedback label one second later) headless at
several user counts, each ``SECONDS`` long, against (a) the router's service port and (b) the
model server directly, interleaved, so both see the same machine. For each cell it reads Locust's
own CSV statistics (requests/s, p50/p95/p99 of /predict, failures). Writes bench/results/load.json
(``headline`` rows for bench/run.py) and load.png (p99 against achieved requests/s).
Targets: not one failed request at any rate; the router's p99 within 1.5x + 5 ms of the server's.
Who calls it: bench/run.py (``make bench``), or by hand.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = REPO_ROOT / "loadtests" / "locustfile.py"
SECONDS = int(os.environ.get("BENCH_LOAD_SECONDS", "20"))
# (users, seconds each user waits between requests): about 40, 150 and as many requests/s as
# Locust's one process can send on this machine
RATES: list[tuple[int, float]] = [(4, 0.1), (15, 0.1), (30, 0.0)]


def run_locust(
    url: str, users: int, wait: float, seconds: int, workdir: Path, tag: str, token: str
) -> dict[str, Any]:
    """One headless Locust run; Locust's CSV statistics for /predict and the whole run. ``token``:
    the stack's feedback token, which its model servers want for labels."""
    prefix = workdir / tag
    env = dict(os.environ, LOAD_WAIT=str(wait), LOAD_SUMMARY=str(prefix) + ".summary.json")
    env["LOAD_FEEDBACK_TOKEN"] = token
    argv = [
        str(Path(sys.executable).with_name("locust")),
        "-f", str(LOCUSTFILE), "--headless", "-u", str(users), "-r", str(users),
        "--run-time", f"{seconds}s", "--host", url, "--only-summary", "--stop-timeout", "3",
        "--csv", str(prefix), "--loglevel", "WARNING",
    ]  # fmt: skip
    with (workdir / f"{tag}.log").open("wb") as log:
        subprocess.run(argv, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=seconds + 60, check=False)
    rows = {r["Name"]: r for r in csv.DictReader((workdir / f"{tag}_stats.csv").open())}
    predict, total = rows["/predict"], rows["Aggregated"]
    summary = json.loads(Path(str(prefix) + ".summary.json").read_text())
    return {
        "users": users,
        "wait_s": wait,
        "predict_rps": round(float(predict["Requests/s"]), 1),
        "total_rps": round(float(total["Requests/s"]), 1),
        "p50_ms": float(predict["50%"]),
        "p95_ms": float(predict["95%"]),
        "p99_ms": float(predict["99%"]),
        "requests": int(total["Request Count"]),
        "failures": int(total["Failure Count"]),
        "failure_kinds": summary["failures"],
    }


def plot(cells: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for target, style in (("router", "o-"), ("direct", "s--")):
        pts = sorted((c[target]["predict_rps"], c[target]["p99_ms"]) for c in cells)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=target)
    ax.set_xlabel("achieved /predict requests per second (Locust)")
    ax.set_ylabel("p99 latency of /predict (ms)")
    ax.set_title("Locust load: through nginx router vs model server alone")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> None:
    from rollout.demo.scenarios import serve_only
    from rollout.local.stack import LocalStack

    RESULTS.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("BENTOML_HOME", str(REPO_ROOT / ".cache" / "bentoml"))
    home = Path(tempfile.mkdtemp(prefix="bench-load-"))
    stack = LocalStack.up(home=home, services=["iris"])
    cells: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        backend = serve_only(stack, "iris", "iris:v1")
        urls = {"router": stack.service_url("iris"), "direct": f"http://{backend.address}"}
        run_locust(urls["router"], 2, 0.1, 5, home, "warm-up", stack.feedback_token)
        for users, wait in RATES:
            cell: dict[str, Any] = {}
            for target in ("direct", "router"):
                cell[target] = run_locust(
                    urls[target], users, wait, SECONDS, home, f"{target}-{users}", stack.feedback_token
                )
            cells.append(cell)
            print(f"{users} users, wait {wait}s: " + "  ".join(
                f"{t} {c['predict_rps']} rps p50 {c['p50_ms']} p99 {c['p99_ms']} ms failed {c['failures']}"
                for t, c in cell.items()
            ), flush=True)  # fmt: skip
    finally:
        stack.stop()
    plot(cells, RESULTS / "load.png")
    headline: list[dict[str, Any]] = []
    for cell in cells:
        r, d = cell["router"], cell["direct"]
        bound = 1.5 * d["p99_ms"] + 5
        headline.append(
            {
                "name": f"Locust {r['users']} users: /predict rps via router (p99 router / server alone)",
                "value": r["predict_rps"],
                "unit": f"rps (p99 {r['p99_ms']:.0f} / {d['p99_ms']:.0f} ms)",
                "target": "p99 <= 1.5x server's + 5 ms",
                "met": r["p99_ms"] <= bound,
            }
        )
    failed = sum(c[t]["failures"] for c in cells for t in ("router", "direct"))
    requests = sum(c[t]["requests"] for c in cells for t in ("router", "direct"))
    headline.append(
        {
            "name": f"Locust: failed requests over all {len(cells)} rates (router and direct)",
            "value": failed,
            "unit": f"of {requests}",
            "target": "0",
            "met": failed == 0,
        }
    )
    doc = {
        "benchmark": "load",
        "load_generator": "locust (one process), loadtests/locustfile.py, feedback share 0.5",
        "seconds_per_cell": SECONDS,
        "cells": cells,
        "headline": headline,
        "plots": ["load.png"],
        "elapsed_s": round(time.monotonic() - started, 1),
        "load_average_at_end": os.getloadavg(),
    }
    (RESULTS / "load.json").write_text(json.dumps(doc, indent=1))
    print(f"wrote {RESULTS / 'load.json'}")


if __name__ == "__main__":
    main()
