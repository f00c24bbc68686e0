"""What a local rollout shows of itself while it runs: its rollout_* series and its timeline.

``Telemetry(stack, name, collector)`` serves the rollout's series (rollout/exporter.py) on a free
127.0.0.1 port, registered with the stack's Prometheus as target ``rollout-<name>`` (label
component="rollout"); ``stop()`` waits (a few seconds at most) for one scrape of the final state,
so ``increase(rollout_rollbacks_total[...])`` sees the end, then unregisters. ``append_timeline``
adds one line per change to ``timeline.jsonl`` (weights, phase, newest measurements), which the
demo plots. Who calls it: rollout/local/runner.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rollout.errors import StateError
from rollout.exporter import MetricsServer, RolloutCollector
from rollout.local.processes import LOOPBACK, http_ok
from rollout.local.stack import LocalStack
from rollout.model import RolloutState

FINAL_SCRAPE_TIMEOUT = 10.0  # file_sd picks a new target up within 5 s; Prometheus scrapes every 1 s


class Telemetry:
    """The rollout_* series of one rollout, served for the stack's Prometheus."""

    def __init__(self, stack: LocalStack, name: str, collector: RolloutCollector) -> None:
        self.stack = stack
        self.collector = collector
        self.target = f"rollout-{name}"[:100]
        self.server: MetricsServer | None = None

    def serve(self) -> None:
        self.server = MetricsServer(self.collector, LOOPBACK, 0).start()
        self.stack.prometheus.add_target(self.target, self.server.address, {"component": "rollout"})

    def stop(self) -> None:
        """Let Prometheus scrape the last state (when it runs), then stop serving and unregister."""
        server, self.server = self.server, None
        if server is None:
            return
        try:
            if http_ok(self.stack.prometheus_url + "/-/ready")():
                server.wait_scraped(time.time(), FINAL_SCRAPE_TIMEOUT)
        finally:
            self.stack.prometheus.remove_target(self.target)
            server.stop()


def timeline_row(state: RolloutState, now: float) -> dict[str, Any]:
    return {
        "t": now,
        "phase": state.phase.value,
        "step": state.progress.step_name,
        "candidate_weight": state.desired_routes.candidate_weight,
        "mirror_percent": state.desired_routes.mirror_percent,
        "metrics": {
            name: {
                "verdict": m.measurements[-1].verdict,
                "value": m.measurements[-1].value,
                "at": m.measurements[-1].at,
            }
            for name, m in state.metrics.items()
            if m.measurements
        },
    }


def append_timeline(path: Path, state: RolloutState, now: float) -> None:
    try:
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(timeline_row(state, now)) + "\n")
    except OSError as exc:
        raise StateError(f"cannot write {path}: {exc.strerror or exc}") from None
