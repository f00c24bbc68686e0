"""Rollouts on real pods (``make bench``): the single-node cluster with KServe's controller, Traefik as
the Gateway API data plane and the operator in its pod; Locust sends predictions through the
Gateway while five releases are shipped with ``helm upgrade`` (tests/k8s/cluster_rollouts.py):

- canary-good (iris:v2): 20 -> 60 -> 100 %, promoted, handed over to stable;
- canary-faulty (iris:v1 failing 30 % of predictions): rolled back at the first analysis;
- bluegreen (iris:slow): a preview to testers only (no mirror: Traefik has none), then the switch;
- candidate-pod-killed (iris:v1): its only pod deleted as soon as it has traffic;
- stable-pod-killed (iris:v2): stable's only pod deleted as soon as the candidate has traffic.

Writes bench/results/cluster.json (every release's figures and history) and one PNG per release.
What each side had: no retry anywhere in the data plane (Traefik's Gateway API provider has no
retry filter), one pod per version, no preStop delay unless the chart sets one.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def headline(rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    good, bad = rows.get("canary-good"), rows.get("canary-faulty")
    if good:
        out.append({"name": "failed requests during a good canary and its promotion (Locust, through Traefik)",
                    "value": good["failed"], "unit": f"of {good['requests']}", "target": "0",
                    "met": good["failed"] == 0})  # fmt: skip
        if good.get("candidate_pod_start_to_ready_s") is not None:
            out.append({"name": "candidate pod: container start to Ready", "value":
                        good["candidate_pod_start_to_ready_s"], "unit": "s", "target": "", "met": None})  # fmt: skip
    if bad:
        out.append({"name": "requests failed by a faulty canary (30 % HTTP 500 at 20 %), no retry on stable",
                    "value": round(100 * (bad["failed_share"] or 0), 2), "unit": f"% of {bad['requests']}",
                    "target": "", "met": None})  # fmt: skip
        secs = bad.get("first_traffic_to_rollback_s")
        out.append({"name": "faulty canary: first traffic (weight written) to rollback", "value": secs,
                    "unit": "s", "target": "< 30 s", "met": secs is not None and secs < 30})  # fmt: skip
    for name, label in (("candidate-pod-killed", "candidate"), ("stable-pod-killed", "stable")):
        if row := rows.get(name):
            out.append({"name": f"{label} pod deleted mid-canary: failed requests ({row['phase']})",
                        "value": round(100 * (row["failed_share"] or 0), 2), "unit": f"% of {row['requests']}",
                        "target": "", "met": None})  # fmt: skip
    return out


def main() -> None:
    from tests.k8s import cluster_rollouts as cr

    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        out = cr.run(Path(tmp), cr.ALL)
        plots = []
        for row in out["releases"]:
            png = Path(tmp) / f"{row['release']}.png"
            if png.exists():
                shutil.copy(png, RESULTS / f"cluster-{row['release']}.png")
                plots.append(f"cluster-{row['release']}.png")
    rows = {r["release"]: r for r in out["releases"]}
    doc = {
        "what": __doc__.strip().splitlines()[0],
        "setup_seconds": out["setup_seconds"],
        "releases": out["releases"],
        "headline": headline(rows),
        "plots": plots,
        "note": (
            "rollouts on real pods (single-node cluster, KServe v0.20.0, Traefik v3.6.12 as the Gateway API "
            "data plane, the operator in its pod), Locust 8 users through the Gateway; no retry in the data "
            f"plane; measured {time.strftime('%Y-%m-%d')}"
        ),
    }
    (RESULTS / "cluster.json").write_text(json.dumps(doc, indent=1))
    print(json.dumps(doc["headline"], indent=1))


if __name__ == "__main__":
    main()
