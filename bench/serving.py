"""Serving benchmark: our BentoML service against KServe's own model server and in-process predict.

    python -m bench.serving          # ~4 minutes; writes bench/results/serving.json

The same iris LogisticRegression (``iris:v1``'s pickled artifact) is served by
- ``bento``: ``bentoml serve bentos.service:ModelService`` (``POST /predict``), and
- ``kserve``: ``kserve.ModelServer`` with a v1-protocol model (``POST /v1/models/iris:predict``),
  run from a separate venv ``.venv-kserve`` created on demand (kserve pins many packages),
both on 127.0.0.1 with the same worker count, side by side, loaded by ``wrk`` with single-row JSON
requests at 1, 8 and 32 connections; 5 repetitions of 6 s, interleaved, medians reported (a p99
from a 3 s run at one connection rests on its ~50 slowest requests: too few on a shared machine). The floor
is an in-process ``predict_proba`` loop on the same model. Results: requests per second and p50/p99
latency per server, concurrency and worker count; ratios against KServe; our p50 at 1 connection
minus the in-process p50 ("added latency"). Targets (issue 2): throughput >= KServe's at no worse
p99, added p50 < 2 ms. Environment: BENCH_SERVING_SECONDS (per run, default 6),
BENCH_SERVING_REPS (default 5),
BENCH_SERVING_WORKERS (default "1,2"). Called by bench/run.py.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from rollout.local.bento import REPO_ROOT, start_bento_server
from rollout.local.processes import free_port

RESULTS = REPO_ROOT / "bench" / "results" / "serving.json"
KSERVE_VENV = REPO_ROOT / ".venv-kserve"
KSERVE_PACKAGES = ["kserve==0.21.0"]
MODEL_TAG = "iris:v1"
CONCURRENCY = (1, 8, 32)
REPETITIONS = int(os.environ.get("BENCH_SERVING_REPS", "5"))
ROW = [5.1, 3.5, 1.4, 0.2]
BODY = json.dumps({"instances": [ROW]})


def ensure_model() -> Path:
    """The pickled artifact of iris:v1 (trained if missing; its hash is checked)."""
    from bentos.train import train
    from bentos.variants import get_variant
    from rollout.registry import load_model

    train(get_variant(MODEL_TAG))
    return load_model(MODEL_TAG).record.artifact_path


def in_process(artifact: Path, calls: int = 3000) -> dict[str, float]:
    """The floor: ``predict_proba`` on one row in a loop, as the service calls it."""
    import numpy as np
    import sklearn

    from rollout.registry import load_model

    estimator = load_model(MODEL_TAG).estimator
    X = np.asarray([ROW], dtype=np.float64)
    timings = []
    with sklearn.config_context(assume_finite=True):
        for _ in range(200):
            estimator.predict_proba(X)
        started = time.perf_counter()
        for _ in range(calls):
            t0 = time.perf_counter()
            estimator.predict_proba(X)
            timings.append(time.perf_counter() - t0)
        total = time.perf_counter() - started
    timings.sort()
    return {
        "calls_per_s": round(calls / total, 1),
        "p50_ms": round(timings[len(timings) // 2] * 1000, 4),
        "p99_ms": round(timings[int(len(timings) * 0.99)] * 1000, 4),
    }


def ensure_kserve_venv() -> Path:
    """``.venv-kserve/bin/python`` with kserve and this project's scikit-learn (to unpickle)."""
    import sklearn

    python = KSERVE_VENV / "bin" / "python"
    stamp = KSERVE_VENV / ".installed"
    wanted = " ".join([*KSERVE_PACKAGES, f"scikit-learn=={sklearn.__version__}"])
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(KSERVE_VENV)], check=True)
    subprocess.run(
        ["nice", "-n", "10", str(python), "-m", "pip", "install", "-q", *wanted.split()],
        check=True,
        timeout=1200,
    )
    stamp.write_text(wanted)
    return python


class KServeServer:
    def __init__(self, python: Path, artifact: Path, workers: int) -> None:
        self.port = free_port()
        self.log = Path(tempfile.mkstemp(prefix="kserve-", suffix=".log")[1])
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    str(python),
                    str(REPO_ROOT / "bench" / "kserve_server.py"),
                    str(artifact),
                    str(self.port),
                    str(workers),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"kserve server exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/v1/models/iris", timeout=2).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"kserve server not ready: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        import psutil

        try:
            workers = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.Error:
            workers = []
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait(timeout=5)
        for worker in workers:
            try:
                worker.kill()
            except psutil.Error:
                pass


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * _UNITS[unit]


def run_wrk(url: str, connections: int, seconds: float) -> dict[str, float]:
    script = Path(tempfile.mkstemp(prefix="wrk-", suffix=".lua")[1])
    script.write_text(
        f'wrk.method = "POST"\nwrk.body = \'{BODY}\'\nwrk.headers["Content-Type"] = "application/json"\n'
    )
    try:
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script), url],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=True,
        ).stdout
    finally:
        script.unlink(missing_ok=True)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, errors.groups())) if errors else 0)
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "failed": failed}


def tree_cpu_seconds(pid: int) -> float:
    """User+system CPU of a process and its descendants (the server's CPU, not the machine's)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def measured_run(url: str, pid: int, connections: int, seconds: float) -> dict[str, float]:
    """One wrk run, plus the server's CPU milliseconds per request (robust to a busy machine)."""
    before = tree_cpu_seconds(pid)
    result = run_wrk(url, connections, seconds)
    used = tree_cpu_seconds(pid) - before
    requests = result["rps"] * seconds
    result["cpu_ms_per_request"] = round(used / requests * 1000, 4) if requests else 0.0
    return result


KEYS = ("rps", "p50_ms", "p99_ms", "cpu_ms_per_request", "failed")


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(r[key] for r in runs), 3) for key in KEYS} | {"runs": runs}  # type: ignore[dict-item]


def bench_workers(workers: int, artifact: Path, kserve_python: Path, seconds: float) -> dict[str, Any]:
    bento = start_bento_server(MODEL_TAG, free_port(), workers, timeout=240)
    kserve = KServeServer(kserve_python, artifact, workers)
    try:
        kserve.wait_ready()
        targets = {"bento": f"{bento.url}/predict", "kserve": f"{kserve.url}/v1/models/iris:predict"}
        pids = {"bento": bento.pid, "kserve": kserve.process.pid}
        for url in targets.values():  # same answer from both, and warm
            response = httpx.post(url, content=BODY, headers={"Content-Type": "application/json"}, timeout=10)
            assert response.json()["predictions"] == ["setosa"], response.text
            run_wrk(url, 8, 1)
        runs: dict[str, dict[int, list[dict[str, float]]]] = {
            name: {c: [] for c in CONCURRENCY} for name in targets
        }
        for _ in range(REPETITIONS):
            for connections in CONCURRENCY:
                for name, url in targets.items():  # interleaved: both see the same machine load
                    runs[name][connections].append(measured_run(url, pids[name], connections, seconds))
    finally:
        bento.stop()
        kserve.stop()
    return {name: {str(c): _median(r) for c, r in by_c.items()} for name, by_c in runs.items()}


def bench_variants(seconds: float) -> dict[str, Any]:
    """p50 at 1 connection of the stable model and the slow candidate (a 60-model ensemble), one
    worker each, served side by side: the slow variant must be clearly slower (>= +5 ms)."""
    from bentos.train import train
    from bentos.variants import get_variant

    train(get_variant("iris:slow"))
    servers = {tag: start_bento_server(tag, free_port(), 1, timeout=240) for tag in ("iris:v1", "iris:slow")}
    try:
        runs: dict[str, list[dict[str, float]]] = {tag: [] for tag in servers}
        for server in servers.values():
            run_wrk(f"{server.url}/predict", 1, 1)
        for _ in range(REPETITIONS):
            for tag, server in servers.items():
                runs[tag].append(measured_run(f"{server.url}/predict", server.pid, 1, seconds))
    finally:
        for server in servers.values():
            server.stop()
    medians = {tag: _median(r) for tag, r in runs.items()}
    medians["slow_minus_v1_p50_ms"] = round(medians["iris:slow"]["p50_ms"] - medians["iris:v1"]["p50_ms"], 3)  # type: ignore[assignment]
    return medians


def summarise(
    results: dict[str, Any], floor: dict[str, float]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    ratios: dict[str, Any] = {}
    headline: list[dict[str, Any]] = []
    for workers, servers in results.items():
        bento, kserve = servers["bento"], servers["kserve"]
        ratios[workers] = {
            c: {
                "rps_vs_kserve": round(bento[c]["rps"] / kserve[c]["rps"], 3),
                "p99_vs_kserve": round(bento[c]["p99_ms"] / kserve[c]["p99_ms"], 3),
                "p50_vs_kserve": round(bento[c]["p50_ms"] / kserve[c]["p50_ms"], 3),
                "cpu_per_request_vs_kserve": round(
                    bento[c]["cpu_ms_per_request"] / kserve[c]["cpu_ms_per_request"], 3
                )
                if kserve[c]["cpu_ms_per_request"]
                else None,
            }
            for c in bento
        }
        added = round(bento["1"]["p50_ms"] - floor["p50_ms"], 3)
        ratios[workers]["added_p50_ms_vs_in_process"] = added
        ratios[workers]["kserve_added_p50_ms_vs_in_process"] = round(
            kserve["1"]["p50_ms"] - floor["p50_ms"], 3
        )
        for c in bento:
            r = ratios[workers][c]
            headline.append(
                {
                    "name": f"serving: RPS vs KServe, {workers} worker(s), {c} conn",
                    "value": r["rps_vs_kserve"],
                    "unit": "x",
                    "target": ">= 1.0 at p99 <= KServe's",
                    "met": r["rps_vs_kserve"] >= 1.0 and r["p99_vs_kserve"] <= 1.0,
                }
            )
        headline.append(
            {
                "name": f"serving: added p50 over in-process predict, {workers} worker(s), 1 conn",
                "value": added,
                "unit": "ms",
                "target": "< 2",
                "met": added < 2.0,
            }
        )
    return ratios, headline


def main() -> None:
    seconds = float(os.environ.get("BENCH_SERVING_SECONDS", "6"))
    worker_counts = [int(w) for w in os.environ.get("BENCH_SERVING_WORKERS", "1,2").split(",")]
    os.environ.setdefault("BENTOML_HOME", str(REPO_ROOT / ".cache" / "bentoml"))  # as the Makefile
    started = time.monotonic()
    artifact = ensure_model()
    kserve_python = ensure_kserve_venv()
    floor = in_process(artifact)
    print(f"in-process predict_proba: {floor}", flush=True)
    results: dict[str, Any] = {}
    for workers in worker_counts:
        results[str(workers)] = bench_workers(workers, artifact, kserve_python, seconds)
        for name, by_c in results[str(workers)].items():
            cells = "  ".join(
                f"@{c}: {v['rps']:.0f} rps p50 {v['p50_ms']:.2f} p99 {v['p99_ms']:.2f} cpu {v['cpu_ms_per_request']:.2f} ms"
                for c, v in by_c.items()
            )
            print(f"{workers} worker(s) {name:6} {cells}", flush=True)
    variants = bench_variants(seconds)
    print(
        f"slow candidate vs stable, p50 at 1 connection: +{variants['slow_minus_v1_p50_ms']} ms", flush=True
    )
    ratios, headline = summarise(results, floor)
    headline.append(
        {
            "name": "serving: iris:slow p50 minus iris:v1 p50, 1 conn",
            "value": variants["slow_minus_v1_p50_ms"],
            "unit": "ms",
            "target": ">= 5 (a genuinely heavier candidate)",
            "met": variants["slow_minus_v1_p50_ms"] >= 5.0,
        }
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "serving",
        "model": MODEL_TAG,
        "request": BODY,
        "load_generator": "wrk -t1, keep-alive connections",
        "servers_config": {
            "bento": "bentoml serve bentos.service:ModelService (uvicorn, asyncio loop, httptools), POST /predict",
            "kserve": "kserve.ModelServer 0.21, a kserve.Model (uvicorn, its default uvloop), POST /v1/models/iris:predict",
        },
        "cpu_ms_per_request": "user+system CPU of the server's process tree per request (robust to other load)",
        "seconds_per_run": seconds,
        "repetitions": REPETITIONS,
        "statistic": "median of repetitions",
        "load_average_at_end": os.getloadavg(),
        "in_process": floor,
        "servers": results,
        "variants": variants,
        "ratios": ratios,
        "headline": headline,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    RESULTS.write_text(json.dumps(report, indent=2))
    for row in headline:
        print(
            f"{row['name']}: {row['value']} {row['unit']} (target {row['target']}) {'MET' if row['met'] else 'MISSED'}"
        )
    print(f"wrote {RESULTS} in {report['elapsed_s']} s")


if __name__ == "__main__":
    main()
