"""``rollout demo``: the local progressive-rollout demo, under real Locust load.

Trains the model variants, brings up the embedded stack (BentoML servers, nginx, Prometheus and
the feedback join store - Redis and its exporter - on 127.0.0.1) and runs five rollouts one after
the other, each from ``iris:v1`` serving all traffic: a canary of the good candidate (promoted), a
canary of the poisoned candidate (rolled back), a shadow of the slow candidate (rejected on
latency), a blue/green switch (promoted) and an A/B test (the winner is promoted). Locust sends
prediction traffic with user ids and delayed feedback labels throughout, with the stack's feedback
token; the labels are joined in its Redis, as on a cluster. The report folder ``reports/<run>/``
gets ``summary.json``, one PNG per rollout and the runner's state and timelines; a table is
printed at the end.
Who calls it: ``rollout demo`` (rollout/cli/demo.py), ``make demo``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rollout.demo.report import (
    ScenarioResult,
    first_traffic,
    plot_rollout,
    read_timeline,
    table,
    write_summary,
)
from rollout.local.runner import LocalRunner, rollout_dir, version_of
from rollout.local.stack import LocalStack
from rollout.model import RolloutState
from rollout.routers.base import Backend, RouteTarget
from rollout.spec import ModelRollout, load_rollout

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = REPO_ROOT / "loadtests" / "locustfile.py"


@dataclass(frozen=True)
class Scenario:
    name: str
    spec_file: str
    expected: str  # final phase the scenario demonstrates
    timeout: float = 120.0
    feedback_share: float = 0.5  # share of answers that get a delayed true label (Locust)


SCENARIOS = (
    Scenario("canary-good", "canary-good.yaml", "Promoted"),
    Scenario("canary-poisoned", "canary-poisoned.yaml", "RolledBack"),
    Scenario("shadow-slow", "shadow-slow.yaml", "RolledBack"),
    Scenario("bluegreen", "bluegreen.yaml", "Promoted"),
    # a 2-point accuracy gap needs ~1,200 labels per version to be significant: label every answer
    Scenario("abtest", "abtest.yaml", "Promoted", timeout=360.0, feedback_share=1.0),
)


def spec_path(filename: str) -> Path:
    return Path(str(resources.files("rollout.demo").joinpath("specs", filename)))


def serve_only(stack: LocalStack, service: str, tag: str) -> Backend:
    """Make ``tag`` the only version serving ``service`` (start it if needed, stop the others)."""
    want = version_of(tag)
    current = {b.version: b for b in stack.backends(service).values()}
    backend = current.get(want) or stack.start_bento(service, tag)
    stack.router(service).finalize(RouteTarget(service, backend))
    for b in current.values():
        if b.name != backend.name:
            stack.stop_backend(b.name)
    return backend


@contextlib.contextmanager
def locust(
    url: str,
    summary: Path,
    users: int,
    seconds: float,
    log: Path,
    feedback_share: float | None = None,
    extra_env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run Locust headless against ``url`` for at most ``seconds``; stop it gracefully on exit.
    ``extra_env``: more of the locustfile's settings (e.g. LOAD_FEEDBACK_TOKEN)."""
    env = dict(os.environ, LOAD_SUMMARY=str(summary), **(extra_env or {}))
    if feedback_share is not None:
        env["LOAD_FEEDBACK_SHARE"] = str(feedback_share)
    argv = [
        str(Path(sys.executable).with_name("locust")),
        "-f", str(LOCUSTFILE), "--headless", "-u", str(users), "-r", str(users),
        "--run-time", f"{int(seconds)}s", "--host", url, "--only-summary", "--stop-timeout", "5",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def locust_on(
    stack: LocalStack,
    service: str,
    summary: Path,
    users: int,
    seconds: float,
    log: Path,
    feedback_share: float | None = None,
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """``locust`` against ``service`` of the local stack, its labels sent with the stack's feedback
    token (its model servers refuse a label without it: 401, a failure in Locust's summary)."""
    env = {"LOAD_FEEDBACK_TOKEN": stack.feedback_token}
    return locust(stack.service_url(service), summary, users, seconds, log, feedback_share, env)


def _printer(echo: Callable[[str], None], prefix: str) -> Callable[[RolloutState], None]:
    seen = [0]

    def report(state: RolloutState) -> None:
        for e in state.events[seen[0] :]:
            echo(f"  {prefix} {time.strftime('%H:%M:%S', time.localtime(e.at))} {e.reason:<22} {e.message}")
        seen[0] = len(state.events)

    return report


def run_scenario(
    sc: Scenario,
    stack: LocalStack,
    report_dir: Path,
    users: int,
    echo: Callable[[str], None],
    place: str = "",
) -> ScenarioResult:
    """One rollout under Locust load. ``place``: where it is in the demo ("2/5"), for the header."""
    rollout: ModelRollout = load_rollout(spec_path(sc.spec_file))
    spec = rollout.spec
    where = f"[{place}] " if place else ""
    echo(
        f"== {where}{sc.name}: {spec.strategy.name} of {spec.candidate.model} against {spec.stable.model}"
        f" (at most {sc.timeout:.0f} s)"
    )
    serve_only(stack, spec.service, spec.stable.model)
    summary = report_dir / f"{sc.name}.locust.json"
    with locust_on(
        stack,
        spec.service,
        summary,
        users,
        sc.timeout + 30,
        report_dir / f"{sc.name}.locust.log",
        feedback_share=sc.feedback_share,
    ):
        time.sleep(2.0)  # users spawned: the rollout starts under load
        runner = LocalRunner(rollout, stack, home=stack.home, on_step=_printer(echo, sc.name))
        state = runner.run(timeout=sc.timeout)
        time.sleep(1.0)  # the first requests after the decision count too
    load = json.loads(summary.read_text()) if summary.exists() else {}
    rows = read_timeline(rollout_dir(rollout.metadata.name, stack.home) / "timeline.jsonl")
    first = first_traffic(rows)
    end = state.finished_at
    by_version = load.get("answers_by_version", {})
    total = int(load.get("total_answered", 0)) + int(load.get("total_failed", 0))
    by_candidate = int(by_version.get(version_of(spec.candidate.model), 0))
    plot = plot_rollout(
        f"{sc.name}: {state.phase.value} ({state.reason})", rows, report_dir / f"{sc.name}.png"
    )
    return ScenarioResult(
        name=sc.name,
        strategy=spec.strategy.name,
        stable=spec.stable.model,
        candidate=spec.candidate.model,
        expected=sc.expected,
        outcome=state.phase.value,
        reason=state.reason,
        seconds_total=round((end or time.time()) - (state.started_at or time.time()), 1),
        seconds_to_decision=round(end - first, 1) if end and first else None,
        requests_total=total,
        requests_by_candidate=by_candidate,
        candidate_share=round(by_candidate / total, 4) if total else 0.0,
        failed_requests=int(load.get("total_failed", 0)),
        failures=dict(load.get("failures", {})),
        plot=plot.name,
    )


def run_demo(
    report_root: Path = Path("reports"),
    users: int = 8,
    only: list[str] | None = None,
    echo: Callable[[str], None] = print,
) -> int:
    """Run the scenarios; returns 0 when every one ended as expected with no failed request."""
    from bentos.train import train_many

    started = time.time()
    report_dir = (report_root / time.strftime("%Y%m%d-%H%M%S")).resolve()
    report_dir.mkdir(parents=True, exist_ok=True)
    echo(f"report: {report_dir}")
    echo("models: training the demo's scikit-learn models (seeded; those already in the store are kept)")
    for r in train_many([]):  # every variant; skipped when up to date
        echo(
            f"model {r.tag}: {'up to date' if r.skipped else 'trained'} (holdout accuracy {r.metadata.holdout_accuracy:.3f})"
        )
    scenarios = [s for s in SCENARIOS if not only or s.name in only]
    home = report_dir / "state"
    n = len(scenarios)
    echo(
        f"stack: starting nginx, Prometheus and the join store; then {n} rollout{'s' * (n != 1)}, each under Locust load"
    )
    stack = LocalStack.up(home=home, services=["iris"], supervise=True)
    results: list[ScenarioResult] = []
    try:
        echo(f"stack up: service {stack.service_url('iris')}, Prometheus {stack.prometheus_url}")
        for i, sc in enumerate(scenarios, 1):
            results.append(run_scenario(sc, stack, report_dir, users, echo, place=f"{i}/{len(scenarios)}"))
            echo(f"   {sc.name}: {results[-1].outcome}; demo {time.time() - started:.0f} s so far")
    finally:
        stack.stop()
    meta = {"started": started, "seconds": round(time.time() - started, 1), "users": users}
    write_summary(report_dir, results, meta)
    echo("")
    echo(table(results))
    echo(f"\ndemo took {meta['seconds']:.0f}s; report: {report_dir}/summary.json and one PNG per rollout")
    ok = all(r.as_expected and r.failed_requests == 0 for r in results)
    return 0 if ok else 1
