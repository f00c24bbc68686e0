"""The demo's report: one PNG per rollout (traffic weight and gate metrics over time), the
``summary.json`` of all scenarios, and the table printed at the end.

Reads what the runner wrote (``timeline.jsonl``, the final state) and what Locust wrote (its JSON
summary). Pure file-in, file-out; matplotlib with the Agg backend (no display needed).
Who calls it: rollout/demo/scenarios.py.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


@dataclass
class ScenarioResult:
    name: str
    strategy: str
    stable: str
    candidate: str
    expected: str  # the outcome the scenario is meant to show
    outcome: str  # the rollout's final phase
    reason: str
    seconds_total: float  # rollout start to decision
    seconds_to_decision: float | None  # candidate's first traffic (weight or mirror) to decision
    requests_total: int
    requests_by_candidate: int
    candidate_share: float
    failed_requests: int
    failures: dict[str, int] = field(default_factory=dict)
    plot: str = ""

    @property
    def as_expected(self) -> bool:
        return self.outcome == self.expected


def read_timeline(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def first_traffic(rows: list[dict[str, Any]]) -> float | None:
    for r in rows:
        if r["candidate_weight"] > 0 or r["mirror_percent"] > 0:
            return float(r["t"])
    return None


def plot_rollout(title: str, rows: list[dict[str, Any]], out: Path) -> Path:
    """Candidate weight and mirror percent (top) and each gate metric's value with its verdict."""
    metrics = sorted({m for r in rows for m in r.get("metrics", {})})
    n = 1 + len(metrics)
    fig, axes = plt.subplots(n, 1, figsize=(8, 1.9 * n + 0.6), sharex=True, squeeze=False)
    t0 = rows[0]["t"] if rows else 0.0
    ts = [r["t"] - t0 for r in rows]
    ax = axes[0][0]
    ax.step(
        ts, [r["candidate_weight"] for r in rows], where="post", label="candidate weight %", color="tab:blue"
    )
    ax.step(
        ts, [r["mirror_percent"] for r in rows], where="post", label="mirror %", color="tab:purple", ls="--"
    )
    ax.set_ylim(-5, 105)
    ax.set_ylabel("traffic %")
    ax.legend(loc="upper left", fontsize=7)
    ax.set_title(title, fontsize=10)
    colors = {"Successful": "tab:green", "Failed": "tab:red", "Inconclusive": "tab:gray", "Error": "black"}
    for i, name in enumerate(metrics, start=1):
        ax = axes[i][0]
        seen: dict[float, tuple[float, str]] = {}
        for r in rows:
            m = r.get("metrics", {}).get(name)
            if m and m.get("value") is not None:
                seen[m["at"]] = (m["value"], m["verdict"])
        xs = sorted(seen)
        ax.plot([x - t0 for x in xs], [seen[x][0] for x in xs], color="tab:orange", lw=1)
        ax.scatter(
            [x - t0 for x in xs], [seen[x][0] for x in xs], c=[colors.get(seen[x][1], "k") for x in xs], s=14
        )
        ax.set_ylabel(name, fontsize=8)
    axes[-1][0].set_xlabel(
        "seconds since the rollout started (green: Successful, red: Failed, grey: Inconclusive)"
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def write_summary(report_dir: Path, results: list[ScenarioResult], meta: dict[str, Any]) -> Path:
    doc = {
        **meta,
        "scenarios": [asdict(r) | {"as_expected": r.as_expected} for r in results],
        "all_as_expected": all(r.as_expected for r in results),
        "failed_requests": sum(r.failed_requests for r in results),
    }
    path = report_dir / "summary.json"
    path.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    return path


def table(results: list[ScenarioResult]) -> str:
    head = (
        f"{'scenario':<22} {'strategy':<11} {'candidate':<14} {'outcome':<11} {'expected':<9} "
        f"{'decision s':>10} {'requests':>8} {'by cand.':>8} {'failed':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        dec = "-" if r.seconds_to_decision is None else f"{r.seconds_to_decision:.1f}"
        lines.append(
            f"{r.name:<22} {r.strategy:<11} {r.candidate:<14} {r.outcome:<11} {'yes' if r.as_expected else 'NO':<9} "
            f"{dec:>10} {r.requests_total:>8} {r.requests_by_candidate:>8} {r.failed_requests:>6}"
        )
    return "\n".join(lines)
