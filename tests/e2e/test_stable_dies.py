"""When stable dies mid-rollout: its users are answered, the rollout holds, the watchdog restarts it.

Given a supervised local stack (``LocalStack.up(supervise=True)``, as ``rollout up`` and the demo
bring it up) with iris:v1 serving through the real nginx router under Locust load, when a rollout
of iris:v2 is in flight and stable's ``bentoml serve`` is SIGKILLed with its workers (as an OOM
kill does), then
- fewer than 0.1 % of client requests fail: a failed try goes to the candidate, and after a few
  failures stable is marked down so its share goes straight to the candidate; feedback labels for
  stable's answers get a retryable 503 and are sent again, never handed to the candidate;
- the rollout holds (Paused, StableUnavailable): no step completes and nothing is compared with a
  stable that serves nothing;
- the watchdog restarts stable on its address (a Restarted event in the rollout's history), the
  rollout resumes by itself (StableRecovered) and ends as the evidence says: Promoted.
Drilled mid-canary (at 10 %) and mid-blue/green (during the preview). Real processes throughout.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rollout.demo.scenarios import locust_on
from rollout.local.runner import LocalRunner
from rollout.local.stack import LocalStack
from rollout.model import Phase, Reason, RolloutState
from rollout.routers.base import RouteTarget
from rollout.spec import ModelRollout
from tests.e2e import test_faults as faults
from tests.kit import rollout_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SERVICE = "iris"
home = faults.home  # trains the models once (a module fixture of test_faults)
METRICS = [
    {"name": "error-rate", "template": "error-rate", "threshold": {"max": 0.01}},
    {
        "name": "latency-p99",
        "template": "latency-p99",
        # 1.0, as canary-good.yaml: a canary at a tenth of the traffic answers ~1.6x slower here
        "judge": {"kind": "comparative", "minEffect": 1.0, "alpha": 0.01, "minSamples": 50},
        "failureLimit": 2,
    },
]


@pytest.fixture(scope="module")
def stack(home: Path) -> Iterator[LocalStack]:
    s = LocalStack.up(home=home / "stable-dies", services=[SERVICE], supervise=True)
    try:
        yield s
    finally:
        s.stop()


def rollout(name: str, strategy: dict[str, Any]) -> ModelRollout:
    analysis = {"interval": "2s", "window": "10s", "metrics": METRICS}
    return rollout_spec(name, service=SERVICE, strategy=strategy, analysis=analysis)


def serve_stable(stack: LocalStack) -> None:
    """iris:v1 alone serves the service, started by the stack (so its watchdog can restart it)."""
    for name in list(stack.backends(SERVICE)):
        stack.stop_backend(name)
    stable = stack.start_bento(SERVICE, "iris:v1")
    stack.router(SERVICE).finalize(RouteTarget(SERVICE, stable))


def stable_pid(stack: LocalStack) -> int:
    return int(stack.reload()["backends"][f"{SERVICE}-v1"]["pid"])


def drill(stack: LocalStack, tmp_path: Path, name: str, strategy: dict[str, Any],
          when: Any) -> tuple[RolloutState, list[RolloutState], dict[str, Any], float]:  # fmt: skip
    """Run the rollout under Locust; SIGKILL stable once ``when(state)`` holds; the final state,
    every state seen after the kill, Locust's summary and the time of the kill."""
    serve_stable(stack)
    runner = LocalRunner(rollout(name, strategy), stack)
    summary = tmp_path / "load.json"
    seen: list[RolloutState] = []
    with (
        locust_on(stack, SERVICE, summary, 8, 240, tmp_path / "locust.log"),
        faults.running(runner, 220) as out,
    ):
        faults.wait_for("the moment to kill stable", lambda: (s := faults.load(stack, name)) and when(s), 180)
        faults.kill_server_tree(stable_pid(stack))
        killed = time.time()
        while "final" not in out and time.time() - killed < 200:
            if (s := faults.load(stack, name)) is not None:
                seen.append(s)
            time.sleep(0.2)
        faults.wait_for("the rollout ends", lambda: "final" in out, 30)
        time.sleep(3)  # traffic after the end
    return out["final"], seen, json.loads(summary.read_text()), killed


def assert_survived(final: RolloutState, seen: list[RolloutState], load: dict[str, Any], weight: int) -> None:
    reasons = [e.reason for e in final.events]
    held = [s for s in seen if s.reason == Reason.STABLE_UNAVAILABLE]
    assert held and all(s.phase == Phase.PAUSED for s in held), "stable died and the rollout did not hold"
    assert all(s.desired_routes.candidate_weight == weight for s in held), (
        "a step completed while stable was down"
    )
    restarted = [e.message for e in final.events if e.reason == Reason.RESTARTED]
    assert restarted and "iris-v1" in restarted[0], reasons
    assert Reason.STABLE_RECOVERED in reasons
    assert final.phase == Phase.PROMOTED, final.message
    started = [e.message for e in final.events if e.reason == Reason.STEP_STARTED]
    assert len(started) == len(set(started)), f"a step started twice: {started}"
    total = load["total_answered"] + load["total_failed"]
    share = load["total_failed"] / max(total, 1)
    print(f"stable SIGKILLed: {total} requests, {load['total_failed']} failed ({share:.4%}), "
          f"{load.get('retried', {})} retried, by version {load['answers_by_version']}")  # fmt: skip
    assert total > 1000, "too little load for the drill to mean anything"
    assert share < 0.001, load["failures"]


def test_stable_killed_mid_canary(stack: LocalStack, tmp_path: Path) -> None:
    steps = [{"setWeight": 10}, {"analysis": {"intervals": 4}}, {"setWeight": 50},
             {"analysis": {"intervals": 2}}, {"setWeight": 100}]  # fmt: skip
    final, seen, load, _ = drill(
        stack,
        tmp_path,
        "stable-dies-canary",
        {"canary": {"steps": steps}},
        lambda s: s.desired_routes.candidate_weight == 10 and s.analysis_started_at is not None,
    )
    assert_survived(final, seen, load, 10)


def test_stable_killed_mid_blue_green_preview(stack: LocalStack, tmp_path: Path) -> None:
    strategy = {
        "blueGreen": {"previewDuration": "12s", "postPromotionDuration": "8s", "scaleDownDelay": "4s"}
    }
    final, seen, load, _ = drill(
        stack,
        tmp_path,
        "stable-dies-bluegreen",
        strategy,
        lambda s: s.progress.preview_header is not None and s.analysis_started_at is not None,
    )
    assert_survived(final, seen, load, 0)
