"""Fault drill: Prometheus hangs (SIGSTOP) mid-analysis, on the embedded stack under Locust load.

A hung Prometheus is not a crashed one (tests/e2e/test_faults.py kills it): its port still accepts
connections and no answer ever comes. Given iris:v1 serving all traffic through nginx, 8 Locust
users, and `rollout run` of a canary like rollout/demo/specs/canary-good.yaml (same steps, metrics and
4 s interval), when the stack's Prometheus process (the pid the stack started) is stopped with
SIGSTOP in the middle of the analysis at the 10 % step, then
- every analysis round notices within one interval: a measurement in phase Error is recorded within
  interval + query timeout (2 s) of the freeze, then one round of Errors per interval, each recorded
  within the timeout of its start (the provider's circuit breaker: one timeout per round, not one per
  query). With the 5 s per-query timeout of before, a 14 s freeze went unnoticed: the runner sat in
  one round (~20 s: the readiness query, then each metric's first query) until Prometheus woke up;
- the rollout holds while Prometheus is frozen: phase Paused, reason MetricsUnavailable, the
  candidate keeps 10 % (recorded and applied by nginx), no step completes;
- frozen for about 3.5 intervals, under ``errorLimit``: after SIGCONT the rollout goes on and is
  promoted, with no step started twice;
- frozen past ``errorLimit``: rolled back (MetricsUnavailable), stable serves 100 %;
- either way `rollout run` prints no traceback and Locust sees no failed request.
The model servers, the stack and their fixtures are those of test_faults.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from rollout.demo.scenarios import locust_on
from rollout.local.bento import BentoServer
from rollout.local.runner import rollout_dir
from rollout.local.stack import LocalStack
from rollout.metrics.prometheus import DEFAULT_TIMEOUT
from rollout.model import ERROR, Phase, Reason, RolloutState
from rollout.routers.base import Routes
from rollout.spec import ModelRollout, load_rollout
from rollout.strategies.canary import canary_steps, describe
from tests.e2e import test_faults as faults

pytestmark = [pytest.mark.integration, pytest.mark.slow]
home, servers, stack = faults.home, faults.servers, faults.stack
CANARY_GOOD = faults.REPO / "rollout" / "demo" / "specs" / "canary-good.yaml"
INTERVAL = 4.0  # canary-good's analysis interval
ANALYSIS_AT_10 = 1  # index of the analysis step at 10 % in canary-good's steps
USERS = 8
SLACK = 1.5  # the runner's 0.5 s tick, one engine step and a loaded 2-core machine


def canary_spec(name: str, error_limit: int, directory: Path) -> Path:
    """canary-good.yaml under another name and errorLimit; its steps, metrics and interval as they are."""
    doc = yaml.safe_load(CANARY_GOOD.read_text())
    doc["metadata"]["name"] = name
    doc["spec"]["analysis"]["errorLimit"] = error_limit
    assert doc["spec"]["analysis"]["interval"] == f"{INTERVAL:g}s"
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[float]:
    """SIGSTOP ``pid`` (yields when); SIGCONT it whatever happens."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield time.time()
    finally:
        os.kill(pid, signal.SIGCONT)


@dataclass
class Drill:
    spec: ModelRollout
    state: RolloutState  # the final state
    returncode: int
    output: str  # what `rollout run` printed (stdout and stderr)
    frozen_at: float
    thawed_at: float
    while_frozen: list[tuple[float, RolloutState, Routes]]  # observed between the two
    timeline: list[dict[str, Any]]
    load: dict[str, Any]
    # per metric: (measurement started, its Error recorded) of every Error recorded while frozen
    rounds: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


def error_rounds(timeline: list[dict[str, Any]], metric: str, since: float) -> list[tuple[float, float]]:
    """(round started, result recorded) of every Error measurement of ``metric`` recorded after
    ``since``; a row of the timeline is written at the step that records a new measurement."""
    recorded: dict[float, tuple[float, str]] = {}
    for row in timeline:
        m = row["metrics"].get(metric)
        if m:
            recorded.setdefault(m["at"], (row["t"], m["verdict"]))
    return sorted((at, t) for at, (t, verdict) in recorded.items() if verdict == ERROR and t >= since)


def hung_prometheus_drill(stack: LocalStack, servers: dict[str, BentoServer], tmp_path: Path, name: str,
                          error_limit: int, freeze_for: float | None) -> Drill:  # fmt: skip
    """Run the canary, SIGSTOP Prometheus once the analysis at 10 % has measured once, SIGCONT it
    after ``freeze_for`` s (None: once the rollout has ended), let the rollout finish."""
    faults.reset(stack, servers)
    pid = stack.prometheus.proc.pid
    assert pid == stack.state["prometheus"]["pid"] and "prometheus" in psutil.Process(pid).name()
    spec = canary_spec(name, error_limit, tmp_path)
    env = {**os.environ, "ROLLOUT_HOME": str(stack.home)}
    out_path, summary = tmp_path / f"{name}.out", tmp_path / f"{name}-load.json"

    def mid_analysis(s: RolloutState) -> bool:
        started = s.progress.step_started_at
        if s.progress.step_index != ANALYSIS_AT_10 or started is None or not s.metrics:
            return False
        return all(m.measurements and m.measurements[-1].at >= started for m in s.metrics.values())

    with (
        locust_on(stack, faults.SERVICE, summary, USERS, 170, tmp_path / f"{name}-locust.log"),
        out_path.open("wb") as out,
    ):
        proc = subprocess.Popen([*faults.ROLLOUT, "run", str(spec)], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            faults.observe_while(stack, name, lambda s: mid_analysis(s) or s.done, 120)
            with frozen(pid) as frozen_at:
                at_freeze = faults.load(stack, name)
                assert at_freeze is not None and mid_analysis(at_freeze), "not mid-analysis at 10 %"
                if freeze_for is None:
                    seen = faults.observe_while(stack, name, lambda s: s.done, 90)
                else:
                    seen = faults.observe_while(stack, name, lambda s: time.time() - frozen_at > freeze_for,
                                                freeze_for + 30)  # fmt: skip
                thawed_at = time.time()
            proc.wait(timeout=150)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        time.sleep(1)  # traffic after the end
    directory = rollout_dir(name, stack.home)
    state = faults.load(stack, name)
    assert state is not None
    timeline = [json.loads(x) for x in (directory / "timeline.jsonl").read_text().splitlines()]
    drill = Drill(load_rollout(spec), state, proc.returncode, out_path.read_text(errors="replace"), frozen_at, thawed_at,
                  [x for x in seen if frozen_at <= x[0] <= thawed_at], timeline,
                  json.loads(summary.read_text()))  # fmt: skip
    drill.rounds = {m: error_rounds(timeline, m, frozen_at) for m in state.metrics}
    recorded = [t for rounds in drill.rounds.values() for _, t in rounds if t <= thawed_at]
    costs = "; ".join(f"{m} " + ", ".join(f"{t - at:.1f}" for at, t in r) for m, r in drill.rounds.items())
    print(f"{name}: Prometheus frozen {thawed_at - frozen_at:.1f} s; first Error recorded "
          f"{min(recorded, default=float('nan')) - frozen_at:.1f} s after the freeze; Errors recorded, "
          f"s after their measurement started: {costs}; outcome {state.phase.value} ({state.reason}); "
          f"Locust {drill.load['total_answered']} answered, {drill.load['total_failed']} failed")  # fmt: skip
    for e in state.events:
        if e.at >= frozen_at - INTERVAL:
            print(f"  {e.at - frozen_at:+7.1f} s {e.reason:<22} {e.message[:160]}")
    return drill


def assert_held_and_noticed(drill: Drill) -> None:
    """While frozen: noticed within an interval (+ the timeout) per round, held at 10 %."""
    assert all(drill.rounds.values()), f"a metric recorded no Error while frozen: {drill.rounds}"
    first_recorded = min(t for rounds in drill.rounds.values() for _, t in rounds)
    assert first_recorded - drill.frozen_at <= INTERVAL + DEFAULT_TIMEOUT + SLACK, drill.rounds
    for metric, rounds in drill.rounds.items():
        for at, recorded in rounds:
            assert recorded - at <= DEFAULT_TIMEOUT + SLACK, (
                f"{metric}: a hung measurement took {recorded - at:.1f} s"
            )
        starts = [at for at, _ in rounds]
        gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
        assert all(g <= INTERVAL + DEFAULT_TIMEOUT + SLACK for g in gaps), f"{metric}: rounds every {gaps} s"
    noticed = [s for t, s, _ in drill.while_frozen if t >= first_recorded + 0.5 and not s.done]
    assert noticed, "nothing observed between the first Error and the end of the freeze"
    for s in noticed:
        assert (s.phase, s.reason) == (Phase.PAUSED, Reason.METRICS_UNAVAILABLE), (s.phase, s.reason)
    for _, s, applied in drill.while_frozen:
        if not s.done:
            weights = (s.desired_routes.candidate_weight, applied.candidate_weight)
            assert weights == (10, 10), f"weights moved while blind (recorded, applied): {weights}"
            assert s.progress.step_index == ANALYSIS_AT_10, f"a step completed while blind: {s.progress}"
    assert "Traceback" not in drill.output, drill.output
    assert drill.load["total_failed"] == 0, drill.load["failures"]


def assert_steps_once(drill: Drill) -> None:
    started = [e.message for e in drill.state.events if e.reason == Reason.STEP_STARTED]
    assert len(started) == len(set(started)), f"a step started twice: {started}"
    expected = [describe(step) for step in canary_steps(drill.spec.spec.strategy.canary)]
    names = [row["step"] for row in drill.timeline if row["step"] in expected]
    runs = [n for i, n in enumerate(names) if i == 0 or names[i - 1] != n]
    assert runs == expected[: len(runs)], f"steps not entered once each, in order: {runs}"
    if drill.state.phase == Phase.PROMOTED:
        assert runs == expected, runs
    weights = [row["candidate_weight"] for row in drill.timeline if not Phase(row["phase"]).terminal]
    assert weights == sorted(weights), f"weights went backwards: {weights}"


def test_prometheus_hung_under_the_error_limit_holds_then_promotes(
    stack: LocalStack, servers: dict[str, BentoServer], tmp_path: Path
) -> None:
    freeze = 3.5 * INTERVAL
    drill = hung_prometheus_drill(stack, servers, tmp_path, "prom-hung", error_limit=10, freeze_for=freeze)
    assert_held_and_noticed(drill)
    # a round per interval while frozen: 14 s at a 4 s interval, the first noticed within 6 s -> 2 at least
    assert len(drill.rounds["error-rate"]) >= 2, drill.rounds
    assert drill.state.phase == Phase.PROMOTED, (drill.state.reason, drill.state.message, drill.output)
    assert drill.returncode == 0, drill.output
    assert any(e.reason == Reason.RESUMED and e.at > drill.thawed_at for e in drill.state.events)
    assert_steps_once(drill)
    assert stack.router(faults.SERVICE).get_backends()["stable"] == f"127.0.0.1:{servers['v2'].port}"
    assert drill.load["answers_by_version"].get("v2", 0) > 0


def test_prometheus_hung_past_the_error_limit_rolls_back(
    stack: LocalStack, servers: dict[str, BentoServer], tmp_path: Path
) -> None:
    drill = hung_prometheus_drill(stack, servers, tmp_path, "prom-hung-long", error_limit=2, freeze_for=None)
    assert_held_and_noticed(drill)
    state = drill.state
    assert (state.phase, state.reason) == (Phase.ROLLED_BACK, Reason.METRICS_UNAVAILABLE), state.message
    assert state.finished_at is not None and state.finished_at < drill.thawed_at, "ended only after SIGCONT"
    assert drill.returncode == 1, drill.output
    assert_steps_once(drill)
    router = stack.router(faults.SERVICE)
    assert router.get_routes() == Routes.all_stable()
    assert router.get_backends()["stable"] == f"127.0.0.1:{servers['v1'].port}"
