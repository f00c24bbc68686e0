"""``make bench``: run every benchmark in one go, then write bench/results/summary.md.

Each benchmark module exposes ``main() -> None`` and writes ``bench/results/<name>.json``; a JSON
may carry a ``headline`` list of ``{"name", "value", "unit", "target", "met"}`` rows, which the
summary puts in one table, and ``plots`` (PNG paths relative to bench/results/) that it links.
A benchmark that fails is reported in the summary as failed; the run goes on and exits non-zero.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
MODULES = [
    "serving",
    "memory",
    "router",
    "load",
    "rollback",
    "judges",
    "rate_latency",
    "join",
    "cluster",
    "fastpath",
]


def machine() -> dict[str, object]:
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def write_summary(status: dict[str, str]) -> Path:
    lines = ["# bento-rollout benchmark summary", ""]
    m = machine()
    lines += [
        f"Machine: {m['cores']} cores, {m['memory_gib']} GiB, {m['cpu']}; Python {m['python']}.",
        "Every figure below comes from one run of `make bench` on this machine; comparisons are",
        "side by side in the same run and given as ratios where they compare two systems.",
        "",
        "| benchmark | figure | value | target | met |",
        "|---|---|---|---|---|",
    ]
    plots: list[str] = []
    details: list[str] = []
    notes: list[str] = []
    for name in MODULES:
        path = RESULTS / f"{name}.json"
        if status.get(name, "").startswith("failed") or not path.exists():
            lines.append(f"| {name} | (benchmark {status.get(name, 'not run')}) | | | |")
            continue
        data = json.loads(path.read_text())
        for row in data.get("headline", []):
            met = row.get("met")
            mark = "yes" if met else ("no" if met is not None else "")
            value = f"{_fmt(row.get('value'))} {row.get('unit', '')}".strip()
            lines.append(f"| {name} | {row.get('name')} | {value} | {row.get('target', '')} | {mark} |")
        plots += [f"![{name}]({p})" for p in data.get("plots", [])]
        if data.get("note"):
            notes.append(f"- `{name}`: {data['note']}")
        details.append(f"- `{name}`: [{path.name}]({path.name})")
    if notes:
        lines += ["", "Notes:", "", *notes]
    lines += ["", "## Plots", "", *plots, "", "## Raw results", "", *details, ""]
    out = RESULTS / "summary.md"
    out.write_text("\n".join(lines), encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    only = (argv if argv is not None else sys.argv[1:]) or MODULES
    RESULTS.mkdir(parents=True, exist_ok=True)
    status: dict[str, str] = {}
    for name in only:
        if name not in MODULES:
            print(f"unknown benchmark {name!r}; choose from {', '.join(MODULES)}", file=sys.stderr)
            return 2
        t0 = time.monotonic()
        print(f"== bench.{name}", flush=True)
        try:
            importlib.import_module(f"bench.{name}").main()
            status[name] = f"ok in {time.monotonic() - t0:.0f}s"
        except Exception:  # one failed benchmark must not hide the others
            traceback.print_exc()
            status[name] = "failed"
        print(f"== bench.{name}: {status[name]}", flush=True)
    summary = write_summary(status)
    print(f"summary: {summary}")
    return 1 if any(s == "failed" for s in status.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
