"""Present a simulation: a side-by-side text table, the JSON file and a PNG plot.

Who calls it: ``rollout simulate`` (rollout.cli.simulate) and ``bench/judges.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

JUDGE_ORDER = ("threshold", "threshold (calibrated)", "comparative", "sequential")
COLORS = {
    "threshold": "#d62728",
    "threshold (calibrated)": "#ff9896",
    "comparative": "#1f77b4",
    "sequential": "#2ca02c",
}


def _judges(rows: list[dict[str, object]]) -> list[str]:
    present = {str(r["judge"]) for r in rows}
    return [j for j in JUDGE_ORDER if j in present] + sorted(present - set(JUDGE_ORDER))


def _cells(rows: list[dict[str, object]], good: bool | None) -> list[tuple[float, str]]:
    """(rps, scenario) in the order the simulation ran them, optionally only good or bad ones."""
    order = list(dict.fromkeys(str(r["scenario"]) for r in rows))
    cells = {(float(r["rps"]), str(r["scenario"])) for r in rows if good is None or r["good"] == good}
    return sorted(cells, key=lambda c: (c[0], order.index(c[1])))


def table(result: dict[str, object]) -> str:
    """One line per scenario and traffic level; per judge: rolled back %, undecided %, median s, requests."""
    rows: list[dict[str, object]] = result["rows"]  # type: ignore[assignment]
    judges = _judges(rows)
    cells = _cells(rows, None)
    width = max([17, *(len(scenario) for _, scenario in cells)])
    head = f"{'req/s':>5} {'scenario':<{width}}" + "".join(f" | {j[:22]:<22}" for j in judges)
    lines = [
        "rolled back % (undecided %) / median seconds / median candidate requests to decision",
        head,
        "-" * len(head),
    ]
    for rps, scenario in cells:
        line = f"{rps:>5g} {scenario:<{width}}"
        for j in judges:
            r = next(
                (x for x in rows if x["judge"] == j and x["scenario"] == scenario and x["rps"] == rps), None
            )
            if r is None:
                line += f" | {'':<22}"
                continue
            cell = (
                f"{100 * float(r['rolled_back']):5.1f}({100 * float(r['undecided']):3.0f}) "
                f"{float(r['median_seconds_to_decision']):4.0f}s {float(r['median_requests_to_decision']):6.0f}"
            )
            line += f" | {cell:<22}"
        lines.append(line)
    lines.extend(ab_table(result.get("ab_rows") or []))  # type: ignore[arg-type]
    lines.append("")
    for name, t in result["targets"].items():  # type: ignore[union-attr]
        if isinstance(t, dict) and "met" in t:
            figures = ", ".join(f"{k}={v:.4g}" for k, v in t.items() if k != "met" and isinstance(v, float))
            lines.append(f"target {name}: {'MET' if t['met'] else 'NOT MET'} ({figures})")
    return "\n".join(lines)


def ab_table(rows: list[dict[str, object]]) -> list[str]:
    """The A/B cells: per rule, how often each version won, and the median time and labels."""
    if not rows:
        return []
    rules = list(dict.fromkeys(str(r["rule"]) for r in rows))
    head = f"{'req/s':>5} {'scenario':<20}" + "".join(f" | {rule[:30]:<30}" for rule in rules)
    lines = [
        "",
        "A/B: candidate won % / stable won % / no winner % / median s / median labels per version",
        head,
        "-" * len(head),
    ]
    cells = list(dict.fromkeys((float(r["rps"]), str(r["scenario"])) for r in rows))  # type: ignore[arg-type]
    for rps, scenario in cells:
        line = f"{rps:>5g} {scenario:<20}"
        for rule in rules:
            r = next(x for x in rows if x["rule"] == rule and x["scenario"] == scenario and x["rps"] == rps)
            cell = (
                f"{100 * float(r['candidate_won']):5.1f} {100 * float(r['stable_won']):5.1f} "  # type: ignore[arg-type]
                f"{100 * float(r['no_winner']):5.1f} {float(r['median_seconds_to_decision']):5.0f}s "  # type: ignore[arg-type]
                f"{float(r['median_labels_per_version']):6.0f}"  # type: ignore[arg-type]
            )
            line += f" | {cell:<30}"
        lines.append(line)
    return lines


def write_json(result: dict[str, object], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def plot(result: dict[str, object], path: Path) -> None:
    """Four panels: false rollbacks (good), missed regressions (bad), median seconds and requests."""
    rows: list[dict[str, object]] = result["rows"]  # type: ignore[assignment]
    judges = _judges(rows)
    good, bad = _cells(rows, True), _cells(rows, False)
    fig, axes = plt.subplots(2, 2, figsize=(16, 10))
    panels = (
        (axes[0][0], good, "rolled_back", "false-rollback rate (good candidates)", False),
        (axes[0][1], bad, "missed_regression_rate", "missed-regression rate (bad candidates)", False),
        (axes[1][0], bad, "median_seconds_to_decision", "median seconds to decision (bad)", True),
        (
            axes[1][1],
            good + bad,
            "median_requests_to_decision",
            "median candidate requests to decision",
            True,
        ),
    )
    width = 0.8 / max(1, len(judges))
    for ax, cells, key, title, log in panels:
        for i, judge in enumerate(judges):
            xs, ys = [], []
            for k, (rps, scenario) in enumerate(cells):
                r = next(
                    (
                        x
                        for x in rows
                        if x["judge"] == judge and x["scenario"] == scenario and x["rps"] == rps
                    ),
                    None,
                )
                if r is not None and key in r:
                    xs.append(k + (i - (len(judges) - 1) / 2) * width)
                    ys.append(float(r[key]))
            ax.bar(xs, ys, width=width, label=judge, color=COLORS.get(judge))
        ax.set_xticks(range(len(cells)))
        ax.set_xticklabels([f"{s}\n{rps:g} req/s" for rps, s in cells], rotation=60, ha="right", fontsize=7)
        ax.set_title(title)
        if log:
            ax.set_yscale("log")
        if key in ("rolled_back", "missed_regression_rate"):
            ax.axhline(0.01, color="black", linewidth=0.8, linestyle="--")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    cfg = result["config"]
    fig.suptitle(
        f"Judges on {cfg['runs']} simulated rollouts per cell (horizon {cfg['horizon_seconds']:g} s; "  # type: ignore[index]
        f"undecided counts as missed and at the horizon); dashed: 1 %"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
