"""Fast-path benchmark: did the numeric path keep its speed after the tabular inputs came in?

    python -m bench.fastpath         # ~6 minutes; writes bench/results/fastpath.json

Two ``bentoml serve bentos.service:ModelService`` of ``iris:v1``, side by side on 127.0.0.1, the
same venv, model store (BENTOML_HOME) and worker count: ``before`` runs the tree as it was just
before the tabular work (the parent of the first commit that added bentos/tabular.py), ``after``
HEAD, each checked out as a git worktree under .cache/ (removed at the end). Before any
load, a per-feature OIP request shows which code each server runs (only ``after`` takes it).
``wrk`` loads both with the single-row numeric requests both versions serve — ``POST /predict``
``{"instances": [[...]]}`` and ``POST /v2/models/iris/infer`` with one FP64 [1, 4] input — at 1
and 8 connections, interleaved (each cell's two runs back to back, their order alternating per
repetition): requests per second, p50/p99 latency and the server's CPU per request, medians of
the repetitions. Ratios are after/before, both of the medians and "paired" (the median of each
repetition's own ratio: the headline). Then parse plus predict of one request in a loop (no HTTP),
in a subprocess per tree, 5 interleaved rounds: its CPU time per call (robust to a busy machine)
and wall-clock p50. Target: throughput after >= 0.95 x before. Environment:
BENCH_FASTPATH_SECONDS (per run, default 5), BENCH_FASTPATH_REPS (default 5),
BENCH_FASTPATH_WORKERS (default 1). Called by bench/run.py.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.router import wrk
from bench.serving import BODY, ROW, ensure_model, tree_cpu_seconds
from bentos.metrics import METRICS_DIR_ENV
from rollout.local.bento import REPO_ROOT, BentoServer, bento_server_command
from rollout.local.processes import free_port
from rollout.registry import MODEL_TAG_ENV

RESULTS = REPO_ROOT / "bench" / "results" / "fastpath.json"
# both trees are checked out as git worktrees of their commits (.cache/ is git-ignored): "after" is
# HEAD as committed, not the shared working tree, which other work may be editing meanwhile
WORKTREES = {tree: REPO_ROOT / ".cache" / f"bench-fastpath-{tree}" for tree in ("before", "after")}
MODEL_TAG = "iris:v1"
SECONDS = int(os.environ.get("BENCH_FASTPATH_SECONDS", "5"))
REPETITIONS = int(os.environ.get("BENCH_FASTPATH_REPS", "5"))
WORKERS = int(os.environ.get("BENCH_FASTPATH_WORKERS", "1"))
CONCURRENCY = (1, 8)
TARGET = 0.95
V2_BODY = json.dumps({"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": ROW}]})
# one input per feature: accepted since the tabular work, refused before it (one tensor only)
PER_FEATURE_BODY = json.dumps(
    {
        "inputs": [
            {"name": n, "shape": [1], "datatype": "FP64", "data": [v]}
            for n, v in zip(("sepal_length", "sepal_width", "petal_length", "petal_width"), ROW, strict=True)
        ]
    }
)
PATHS = {"predict": ("/predict", BODY), "v2": ("/v2/models/iris/infer", V2_BODY)}
KEYS = ("rps", "p50_ms", "p99_ms", "cpu_ms_per_request", "errors")

# run in a subprocess with one tree on PYTHONPATH: parse + predict of one body, as the app does
MICRO = """
import json, os, sys, time, warnings
import sklearn
from bentos.join import open_join
from bentos.metrics import use_server_metrics_dir
from bentos.parsing import parse_predict, parse_v2_infer
from bentos.served import Limits, serve_model
from rollout.registry import load_model
sklearn.set_config(assume_finite=True)
warnings.filterwarnings("ignore", message="X does not have valid feature names")
calls, bodies = int(sys.argv[1]), {k: v.encode() for k, v in json.loads(sys.argv[2]).items()}
metrics_dir = use_server_metrics_dir()
loaded = load_model(os.environ["BENTO_MODEL_TAG"])
record = loaded.record
join = open_join(record.name, record.version, metrics_dir, record.metadata.is_regressor)
join.start()
served = serve_model(loaded, Limits(), metrics_dir, join)
def predict(body, rid):
    served.predict_body(parse_predict(body, served.schema), rid)
def infer(body, rid):
    X, v2_id = parse_v2_infer(body, served.schema)
    served.infer_body(X, rid, v2_id)
out = {}
for name, call in (("predict", predict), ("v2", infer)):
    for i in range(300):
        call(bodies[name], f"warm-{name}-{i}")
    timings = []
    cpu = time.process_time()
    for i in range(calls):
        t0 = time.perf_counter()
        call(bodies[name], f"{name}-{i}")
        timings.append(time.perf_counter() - t0)
    cpu = time.process_time() - cpu
    timings.sort()
    out[name] = {"cpu_us": cpu / calls * 1e6, "p50_us": timings[len(timings) // 2] * 1e6}
import bentos.parsing
out["imported_from"] = bentos.parsing.__file__
served.metrics.close()
join.close()
print(json.dumps(out))
"""


def base_commit() -> str:
    """The parent of the first commit that added bentos/tabular.py (git log lists newest first)."""
    added = _git("log", "--diff-filter=A", "--format=%H", "--", "bentos/tabular.py").split()
    if not added:
        raise RuntimeError("no commit adds bentos/tabular.py: nothing to compare against")
    return _git("rev-parse", f"{added[-1]}^")


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def add_worktree(path: Path, commit: str) -> None:
    remove_worktree(path)  # a leftover of an interrupted run
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(path), commit],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
    )


def remove_worktree(path: Path) -> None:
    """Remove one of this benchmark's worktrees (other worktrees of the repository are left alone)."""
    subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=REPO_ROOT, capture_output=True)


def tree_env(tree: Path) -> dict[str, str]:
    """This tree first on PYTHONPATH: bentos/ and rollout/ come from it, not the editable install."""
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(tree), os.environ.get("PYTHONPATH", "")) if p)}


def start_tree_server(name: str, tree: Path) -> BentoServer:
    """``bentoml serve`` of ``tree`` (its working directory and first import path), as the
    project's helper builds it; the handle's ``stop()`` ends only this server's processes."""
    port = free_port()
    argv, env = bento_server_command(MODEL_TAG, port, WORKERS, tree_env(tree))
    log_path = Path(tempfile.mkstemp(prefix=f"fastpath-{name}-", suffix=".log")[1])
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = BentoServer(MODEL_TAG, port, WORKERS, process, log_path)
    server.wait_ready(timeout=240)
    return server


def check_server(server: BentoServer) -> dict[str, Any]:
    """Both numeric requests answer setosa; whether the per-feature OIP request is taken."""
    with httpx.Client(base_url=server.url, timeout=10, headers={"Content-Type": "application/json"}) as c:
        predict = c.post("/predict", content=BODY)
        infer = c.post("/v2/models/iris/infer", content=V2_BODY)
        per_feature = c.post("/v2/models/iris/infer", content=PER_FEATURE_BODY)
    assert predict.json()["predictions"] == ["setosa"], predict.text
    assert infer.json()["outputs"][0]["data"] == ["setosa"], infer.text
    return {"per_feature_v2_status": per_feature.status_code}


def measured_run(server: BentoServer, path: str, script: Path, connections: int) -> dict[str, float]:
    before = tree_cpu_seconds(server.pid)
    result = wrk(f"{server.url}{path}", connections, SECONDS, script)
    used = tree_cpu_seconds(server.pid) - before
    result["cpu_ms_per_request"] = (
        round(used / result["requests"] * 1000, 4) if result.get("requests") else 0.0
    )
    return result


def load_both(servers: dict[str, BentoServer], scripts: dict[str, Path]) -> dict[str, Any]:
    """Every (path, connections) cell, both trees one after the other, repeated: medians."""
    runs: dict[str, dict[str, dict[int, list[dict[str, float]]]]] = {
        tree: {p: {c: [] for c in CONCURRENCY} for p in PATHS} for tree in servers
    }
    for server in servers.values():  # warm both
        for path_name, (path, _) in PATHS.items():
            wrk(f"{server.url}{path}", 8, 1, scripts[path_name])
    for rep in range(REPETITIONS):
        for path_name, (path, _) in PATHS.items():
            for connections in CONCURRENCY:
                order = list(servers) if rep % 2 == 0 else list(reversed(servers))
                for tree in order:
                    run = measured_run(servers[tree], path, scripts[path_name], connections)
                    runs[tree][path_name][connections].append(run)
    return {
        tree: {p: {str(c): _median(r) for c, r in by_c.items()} for p, by_c in by_path.items()}
        for tree, by_path in runs.items()
    }


def _median(runs: list[dict[str, float]]) -> dict[str, Any]:
    medians: dict[str, Any] = {k: round(statistics.median(r.get(k, 0.0) for r in runs), 4) for k in KEYS}
    return medians | {"runs": [{k: r.get(k, 0.0) for k in KEYS} for r in runs]}


def micro(trees: dict[str, Path], calls: int = 3000, rounds: int = 5) -> dict[str, Any]:
    """Parse + predict per request in process, one subprocess per tree and round, interleaved
    (the order alternating per round): medians over rounds, and each round's p50 (``rounds``)."""
    bodies = json.dumps({name: body for name, (_, body) in PATHS.items()})
    got: dict[str, list[dict[str, Any]]] = {tree: [] for tree in trees}
    with tempfile.TemporaryDirectory(prefix="fastpath-micro-") as scratch:
        for i in range(rounds):
            for tree in list(trees) if i % 2 == 0 else list(reversed(trees)):
                root = trees[tree]
                env = os.environ | tree_env(root) | {MODEL_TAG_ENV: MODEL_TAG}
                env[METRICS_DIR_ENV] = str(Path(scratch) / f"{tree}-{len(got[tree])}")
                out = subprocess.run(
                    [sys.executable, "-c", MICRO, str(calls), bodies],
                    cwd=root,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=300,
                    check=True,
                ).stdout
                got[tree].append(json.loads(out.strip().splitlines()[-1]))
    return {
        tree: {
            p: {k: round(statistics.median(r[p][k] for r in rs), 2) for k in ("cpu_us", "p50_us")}
            | {"rounds": [{k: round(r[p][k], 2) for k in ("cpu_us", "p50_us")} for r in rs]}
            for p in PATHS
        }
        | {"imported_from": rs[0]["imported_from"]}
        for tree, rs in got.items()
    }


def _paired(after: list[dict[str, float]], before: list[dict[str, float]], key: str) -> float | None:
    """Median over repetitions of after/before of the two back-to-back runs of one repetition:
    each pair saw the same moment of a shared machine's load, which a ratio of medians does not."""
    pairs = [a[key] / b[key] for a, b in zip(after, before, strict=True) if b[key]]
    return round(statistics.median(pairs), 3) if pairs else None


def summarise(http: dict[str, Any], inproc: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    ratios: dict[str, Any] = {}
    headline: list[dict[str, Any]] = []
    for path_name in PATHS:
        for c in map(str, CONCURRENCY):
            before, after = http["before"][path_name][c], http["after"][path_name][c]
            keys = ("rps", "p50_ms", "p99_ms", "cpu_ms_per_request")
            cell = {
                "paired": {key: _paired(after["runs"], before["runs"], key) for key in keys},
                "of_medians": {
                    key: round(after[key] / before[key], 3) if before[key] else None for key in keys
                },
            }
            ratios[f"{path_name}@{c}"] = cell
            label = "/predict" if path_name == "predict" else "/v2 infer"
            rps = cell["paired"]["rps"]
            headline.append(
                {
                    "name": f"fastpath: numeric {label} rps after/before @{c} conn (paired median)",
                    "value": rps,
                    "unit": "x",
                    "target": f">= {TARGET}",
                    "met": rps is not None and rps >= TARGET,
                }
            )
            cpu = cell["paired"]["cpu_ms_per_request"]
            headline.append(
                {
                    "name": f"fastpath: server CPU/request after/before, {label} @{c} conn (paired median)",
                    "value": cpu,
                    "unit": "x",
                    "target": f"<= {round(1 / TARGET, 3)}",
                    "met": cpu is not None and cpu <= 1 / TARGET,
                }
            )
        rounds = {tree: inproc[tree][path_name]["rounds"] for tree in inproc}
        in_process = _paired(rounds["after"], rounds["before"], "cpu_us") or 0.0
        ratios[f"{path_name}_in_process"] = {
            "cpu_us": in_process,
            "p50_us": _paired(rounds["after"], rounds["before"], "p50_us"),
        }
        headline.append(
            {
                "name": f"fastpath: in-process parse+predict CPU/call after/before, {path_name} (paired median)",
                "value": in_process,
                "unit": "x",
                "target": f"<= {round(1 / TARGET, 3)}",
                "met": in_process <= 1 / TARGET,
            }
        )
    return ratios, headline


def main() -> None:
    os.environ.setdefault("BENTOML_HOME", str(REPO_ROOT / ".cache" / "bentoml"))  # as the Makefile
    started = time.monotonic()
    ensure_model()
    base = base_commit()
    head = _git("rev-parse", "HEAD")
    commits = {"before": base, "after": head}
    servers: dict[str, BentoServer] = {}
    scratch = Path(tempfile.mkdtemp(prefix="fastpath-wrk-"))
    try:
        for tree, path in WORKTREES.items():
            add_worktree(path, commits[tree])
        scripts: dict[str, Path] = {}
        for name, (_, body) in PATHS.items():
            scripts[name] = scratch / f"{name}.lua"
            scripts[name].write_text(
                f'wrk.method = "POST"\nwrk.body = \'{body}\'\nwrk.headers["Content-Type"] = "application/json"\n'
            )
        for tree, path in WORKTREES.items():
            servers[tree] = start_tree_server(tree, path)
        checks = {tree: check_server(server) for tree, server in servers.items()}
        print(f"tree check (per-feature OIP status): {checks}", flush=True)
        http = load_both(servers, scripts)
        for server in servers.values():
            server.stop()
        inproc = micro(WORKTREES)
    finally:
        for server in servers.values():
            server.stop()
            server.log_path.unlink(missing_ok=True)
        for path in WORKTREES.values():
            remove_worktree(path)
        for script in scratch.glob("*.lua"):
            script.unlink()
        scratch.rmdir()
    ratios, headline = summarise(http, inproc)
    for tree, by_path in http.items():
        for path_name, by_c in by_path.items():
            cells = "  ".join(
                f"@{c}: {v['rps']:.0f} rps p50 {v['p50_ms']:.2f} p99 {v['p99_ms']:.2f} ms"
                for c, v in by_c.items()
            )
            print(f"{tree:6} {path_name:7} {cells}", flush=True)
    report = {
        "benchmark": "fastpath",
        "model": MODEL_TAG,
        "trees": commits,
        "note": (
            f"numeric fast path before the tabular inputs (commit {base[:10]}, parent of the first "
            f"commit adding bentos/tabular.py) against HEAD ({head[:10]}), each checked out in a git "
            f"worktree: the same venv, model store and model, {WORKERS} worker(s) each, the same "
            "machine, both started by bento_server_command, loaded by the same wrk, interleaved; the "
            "machine was shared with other work, so compare the ratios, not the absolute figures"
        ),
        "requests": {name: {"path": path, "body": body} for name, (path, body) in PATHS.items()},
        "tree_check": checks,
        "load_generator": "wrk (bench/router.py: -t min(conn, 2)), keep-alive connections",
        "workers": WORKERS,
        "seconds_per_run": SECONDS,
        "repetitions": REPETITIONS,
        "statistic": "median of repetitions",
        "cpu_ms_per_request": "user+system CPU of the server's process tree per request",
        "load_average_at_end": os.getloadavg(),
        "servers": http,
        "in_process_us": inproc,
        "ratios_after_over_before": ratios,
        "headline": headline,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    for row in headline:
        print(f"{row['name']}: {row['value']} (target {row['target']}) {'MET' if row['met'] else 'MISSED'}")
    print(f"wrote {RESULTS} in {report['elapsed_s']} s")


if __name__ == "__main__":
    main()
