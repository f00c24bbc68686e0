"""Rollback benchmark: how fast a bad canary is rolled back, and how many requests it hurts.

A real stack (nginx, Prometheus, `bentoml serve` of iris:v1 as stable) under Locust load; the
candidate is the same service with 10 % of its predictions failing with HTTP 500 (the service's
fault-injection setting ``BENTO_FAULT_ERROR_RATE``, as a bad release would). A canary with a 5 %
first step and two error-rate gates (a threshold tripwire for gross failures, failing at more than
5 % over 30+ requests, and a sequential test for subtle ones) runs until it is rolled back. Measured per run: seconds
from the candidate's first traffic to the rollback, the share of all client requests that failed
(hurt), and the share the bad version answered. Three runs; medians in bench/results/rollback.json.
Targets (issue 3): rollback within 30 s of the bad version receiving traffic, under 0.5 % of all
requests hurt. Who calls it: bench/run.py (`make bench`), or `python -m bench.rollback`.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rollout.demo.report import first_traffic, read_timeline
from rollout.demo.scenarios import locust_on, serve_only
from rollout.local.runner import LocalRunner, rollout_dir
from rollout.local.stack import LocalStack
from rollout.spec import ModelRollout, parse_rollout

RESULTS = Path(__file__).resolve().parent / "results"
ERROR_RATE = 0.10
RUNS = 3
USERS = 8


def bad_canary(name: str) -> ModelRollout:
    return parse_rollout(
        {
            "apiVersion": "bento-rollout.io/v1alpha1",
            "kind": "ModelRollout",
            "metadata": {"name": name},
            "spec": {
                "service": "iris",
                "stable": {"model": "iris:v1"},
                "candidate": {"model": "iris:v2"},
                "strategy": {
                    "canary": {
                        "steps": [
                            {"setWeight": 5},
                            {"analysis": {"intervals": 30}},
                            {"setWeight": 25},
                            {"analysis": {"intervals": 30}},
                            {"setWeight": 100},
                        ]
                    }
                },  # fmt: skip
                "analysis": {
                    "interval": "2s",
                    "window": "10s",
                    "metrics": [
                        # a tripwire for gross failures: more than 5 % errors over 30+ requests
                        {
                            "name": "error-rate-gross",
                            "template": "error-rate",
                            "threshold": {"max": 0.05},
                            "judge": {"kind": "threshold", "minSamples": 30},
                            "failureLimit": 0,
                        },
                        # and the sequential test for subtle regressions (valid at every look)
                        {
                            "name": "error-rate",
                            "template": "error-rate",
                            "judge": {
                                "kind": "sequential",
                                "minEffect": 0.02,
                                "alpha": 0.01,
                                "minSamples": 20,
                            },
                        },
                    ],
                },
            },
        }
    )


def start_faulty_candidate(stack: LocalStack) -> None:
    stack.start_bento("iris", "iris:v2", env={"BENTO_FAULT_ERROR_RATE": str(ERROR_RATE)})


def one_run(stack: LocalStack, i: int, out: Path) -> dict[str, Any]:
    serve_only(stack, "iris", "iris:v1")
    start_faulty_candidate(stack)
    rollout = bad_canary(f"bad-canary-{i}")
    summary = out / f"rollback-{i}.locust.json"
    with locust_on(stack, "iris", summary, USERS, 150, out / f"rollback-{i}.locust.log"):
        time.sleep(3)
        state = LocalRunner(rollout, stack).run(timeout=120)
        time.sleep(1)
    load = json.loads(summary.read_text())
    rows = read_timeline(rollout_dir(rollout.metadata.name, stack.home) / "timeline.jsonl")
    first = first_traffic(rows)
    total = load["total_answered"] + load["total_failed"]
    return {
        "outcome": state.phase.value,
        "reason": state.reason,
        "seconds_to_rollback": round(state.finished_at - first, 2) if state.finished_at and first else None,
        "requests_total": total,
        "requests_failed": load["total_failed"],
        "hurt_share": load["total_failed"] / total if total else None,
        "answered_by_bad_version": load["answers_by_version"].get("v2", 0),
        "bad_version_share": (load["answers_by_version"].get("v2", 0) + load["total_failed"]) / total
        if total
        else None,
        "failures": load["failures"],
    }


def main() -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="bench-rollback-"))
    os.environ.setdefault("BENTOML_HOME", str(Path(__file__).resolve().parents[1] / ".cache" / "bentoml"))
    stack = LocalStack.up(home=home, services=["iris"])
    runs = []
    try:
        for i in range(RUNS):
            runs.append(one_run(stack, i, home))
            print(f"run {i}: {runs[-1]}", flush=True)
    finally:
        stack.stop()
    secs = [r["seconds_to_rollback"] for r in runs if r["seconds_to_rollback"] is not None]
    hurt = [r["hurt_share"] for r in runs if r["hurt_share"] is not None]
    med_s = statistics.median(secs) if secs else None
    med_h = statistics.median(hurt) if hurt else None
    doc = {
        "description": f"bad canary ({ERROR_RATE:.0%} of its predictions fail), 5% first step, threshold tripwire + sequential error-rate gates; the router retries a candidate's 5xx once on stable, so a failure hurts a user only when stable fails too (the gates read the candidate's own error counts)",
        "users": USERS,
        "runs": runs,
        "all_rolled_back": all(r["outcome"] == "RolledBack" for r in runs),
        "median_seconds_to_rollback": med_s,
        "median_hurt_share": med_h,
        "headline": [
            {
                "name": "seconds from the bad version's first traffic to rollback (median)",
                "value": med_s,
                "unit": "s",
                "target": "< 30 s",
                "met": med_s is not None and med_s < 30,
            },
            {
                "name": "share of all requests hurt (median)",
                "value": (med_h or 0) * 100,
                "unit": "%",
                "target": "< 0.5 %",
                "met": med_h is not None and med_h < 0.005,
            },
        ],  # fmt: skip
    }
    (RESULTS / "rollback.json").write_text(json.dumps(doc, indent=1))
    print(json.dumps({k: v for k, v in doc.items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()
