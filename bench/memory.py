"""Memory per server: the BentoML model service against KServe's model server, side by side.

Both serve the same pickled iris model with one worker; each is measured after start-up and again
after 2,000 single-row requests, as the sum over its process tree of RSS and of PSS (proportional
set size: shared pages split between the processes that map them, so a tree is not over-counted).
nginx and Prometheus of the embedded stack are measured the same way. Writes
bench/results/memory.json. Who calls it: bench/run.py, or ``python -m bench.memory``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.serving import BODY, MODEL_TAG, KServeServer, ensure_kserve_venv, ensure_model
from rollout.local.bento import start_bento_server
from rollout.local.processes import free_port
from rollout.local.stack import LocalStack

RESULTS = Path(__file__).resolve().parent / "results"
REQUESTS = 2000


def tree_memory(pid: int) -> dict[str, float]:
    """MB of RSS and PSS summed over a process and its descendants."""
    root = psutil.Process(pid)
    rss = pss = 0.0
    procs = [root, *root.children(recursive=True)]
    for p in procs:
        try:
            info = p.memory_full_info()
        except psutil.Error:
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return {"rss_mb": round(rss / 2**20, 1), "pss_mb": round(pss / 2**20, 1), "processes": len(procs)}


def load(url: str) -> None:
    with httpx.Client(timeout=10) as c:
        for _ in range(REQUESTS):
            c.post(url, content=BODY, headers={"Content-Type": "application/json"}).raise_for_status()


def main() -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    artifact = ensure_model()
    bento = start_bento_server(MODEL_TAG, free_port(), 1, timeout=240)
    kserve = KServeServer(ensure_kserve_venv(), artifact, 1)
    servers: dict[str, Any] = {}
    try:
        kserve.wait_ready()
        for name, pid, url in (
            ("bento", bento.pid, f"{bento.url}/predict"),
            ("kserve", kserve.process.pid, f"{kserve.url}/v1/models/iris:predict"),
        ):
            idle = tree_memory(pid)
            load(url)
            servers[name] = {"after_start": idle, f"after_{REQUESTS}_requests": tree_memory(pid)}
    finally:
        bento.stop()
        kserve.stop()
    home = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    os.environ.setdefault("BENTOML_HOME", str(Path(__file__).resolve().parents[1] / ".cache" / "bentoml"))
    stack = LocalStack.up(home=home, services=["iris"])
    try:
        assert stack.nginx.proc is not None and stack.prometheus.proc is not None
        servers["nginx"] = {"after_start": tree_memory(stack.nginx.proc.pid)}
        servers["prometheus"] = {"after_start": tree_memory(stack.prometheus.proc.pid)}
    finally:
        stack.stop()
    after = f"after_{REQUESTS}_requests"
    ratio = servers["bento"][after]["pss_mb"] / servers["kserve"][after]["pss_mb"]
    doc = {
        "description": "memory per server, 1 worker, same iris model; PSS splits shared pages",
        "servers": servers,
        "ratio_bento_to_kserve_pss": round(ratio, 2),
        "headline": [
            {
                "name": "model service PSS after load (1 worker)",
                "value": servers["bento"][after]["pss_mb"],
                "unit": "MB",
            },
            {
                "name": "KServe model server PSS after load (1 worker)",
                "value": servers["kserve"][after]["pss_mb"],
                "unit": "MB",
            },
            {"name": "memory ratio, model service / KServe (PSS)", "value": round(ratio, 2), "unit": "x"},
            {"name": "nginx router PSS", "value": servers["nginx"]["after_start"]["pss_mb"], "unit": "MB"},
            {"name": "Prometheus PSS", "value": servers["prometheus"]["after_start"]["pss_mb"], "unit": "MB"},
        ],  # fmt: skip
    }
    (RESULTS / "memory.json").write_text(json.dumps(doc, indent=1))
    print(json.dumps(doc["servers"], indent=1))


if __name__ == "__main__":
    main()
