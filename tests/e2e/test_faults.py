"""Fault drills on the embedded stack, with real processes: what a user sees when parts fail.

Given iris:v1 serving all traffic through the real nginx router, Prometheus scraping every server and
a candidate iris:v2, when a rollout runs and
- the candidate's server is killed (SIGKILL) mid-canary under Locust load: the runner sees it,
  rolls back, and no client request fails (nginx retries a refused connection once on stable);
- Prometheus crashes (SIGKILL) mid-rollout: nothing is promoted and the weights hold while it is away
  (phase Paused, reason MetricsUnavailable); past ``analysis.errorLimit`` the rollout is rolled
  back; if Prometheus comes back in time, the rollout goes on to promotion;
- nginx is reloaded 50 times under Locust load: not one request fails;
- ``rollout run`` is killed with SIGKILL at a random moment, in 20 seeded runs: ``rollout run``
  again finishes each one Promoted, with the routes nginx applies matching the recorded state and
  no step started twice;
- the rollout's state directory becomes unwritable: ``rollout run`` exits non-zero with one line
  naming the path, and the routes nginx applies stay as they were.

To keep the drills short, two model servers (iris:v1, iris:v2) are started once for the module and
registered with the stack as external backends (``LocalStack.add_backend``): finishing a rollout
only unregisters them, so the next drill reuses them. They join labels in the stack's join store,
as the servers the stack starts do, and Locust sends its labels with the stack's token. Only the candidate-kill drill lets the runner
start its own candidate, since killing it is the point.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from rollout.demo.scenarios import locust_on
from rollout.local.bento import BentoServer
from rollout.local.runner import LocalRunner, rollout_dir
from rollout.local.stack import LocalStack
from rollout.model import Phase, Reason, RolloutState
from rollout.routers.base import Backend, Routes, RouteTarget
from rollout.spec import ModelRollout
from rollout.state import StateStore
from tests.kit import bento_servers, rollout_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
SERVICE = "iris"
ROLLOUT = [str(Path(sys.executable).with_name("rollout"))]
# services of their own for the kill-9 drill, which runs its 20 rollouts in 4 lanes at once (a
# `rollout run` takes seconds to start on a loaded 2-core machine); pause-only specs need no metrics
LANES = ["crash-a", "crash-b", "crash-c", "crash-d"]
ERROR_RATE = {"name": "error-rate", "template": "error-rate", "threshold": {"max": 0.01}}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bento_home = Path(os.environ.get("BENTOML_HOME") or REPO / ".cache" / "bentoml")
    env = {**os.environ, "BENTOML_HOME": str(bento_home), "BENTOML_DO_NOT_TRACK": "True"}
    subprocess.run(
        [sys.executable, "-m", "bentos.train", "--all"], cwd=REPO, env=env, check=True, timeout=900
    )
    os.environ["BENTOML_HOME"] = str(bento_home)
    return tmp_path_factory.mktemp("faults-home")


@pytest.fixture(scope="module")
def stack(home: Path) -> Iterator[LocalStack]:
    s = LocalStack.up(home=home / "rollout", services=[SERVICE, *LANES])
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def servers(home: Path, stack: LocalStack) -> Iterator[dict[str, BentoServer]]:
    """iris:v1 and iris:v2, started once (in parallel) and reused by every drill; they join labels
    in the stack's store (stopped before it)."""
    with bento_servers(home / "logs", env=stack.join.server_env()) as started:
        yield started


def reset(stack: LocalStack, servers: dict[str, BentoServer], service: str = SERVICE) -> dict[str, Backend]:
    """iris:v1 serves everything, iris:v2 is known but gets nothing (as after `rollout up`)."""
    prefix = "ext" if service == SERVICE else service
    backends = {
        v: stack.add_backend(service, f"{prefix}-{v}", v, f"127.0.0.1:{s.port}") for v, s in servers.items()
    }
    stack.router(service).ensure(RouteTarget(service, backends["v1"]))
    return backends


def make_rollout(name: str, steps: list[dict[str, Any]], metrics: list[dict[str, Any]] | None = None,
                 interval: str = "1s", error_limit: int = 5, service: str = SERVICE) -> ModelRollout:  # fmt: skip
    analysis = {"interval": interval, "window": "5s", "errorLimit": error_limit, "metrics": metrics or []}
    return rollout_spec(name, service=service, strategy={"canary": {"steps": steps}}, analysis=analysis)


def spec_file(rollout: ModelRollout, directory: Path) -> Path:
    path = directory / f"{rollout.metadata.name}.yaml"
    path.write_text(yaml.safe_dump(rollout.model_dump(mode="json", by_alias=True, exclude_none=True)))
    return path


def load(stack: LocalStack, name: str) -> RolloutState | None:
    return StateStore(rollout_dir(name, stack.home) / "state.json").load()


def wait_for(what: str, check: Any, timeout: float = 120.0, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting until {what}")


@contextlib.contextmanager
def running(runner: LocalRunner, timeout: float) -> Iterator[dict[str, RolloutState]]:
    """Run the rollout in a thread; the dict gets its final state under "final"."""
    out: dict[str, RolloutState] = {}
    th = threading.Thread(target=lambda: out.setdefault("final", runner.run(timeout=timeout)), daemon=True)
    th.start()
    try:
        yield out
    finally:
        th.join(timeout + 30)
        runner.request_stop()


def kill_server_tree(pid: int) -> None:
    """SIGKILL a bentoml serve: its process group and its workers (circus gives each its own group)."""
    groups = {os.getpgid(pid)}
    for child in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(ProcessLookupError, psutil.Error):
            groups.add(os.getpgid(child.pid))
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


# --- the candidate dies ----------------------------------------------------------------------------


def test_killed_candidate_is_rolled_back_and_no_client_sees_an_error(
    stack: LocalStack, servers: dict[str, BentoServer], tmp_path: Path
) -> None:
    reset(stack, servers)
    stack.stop_backend("ext-v2")  # the runner starts its own candidate: that one gets killed
    router = stack.router(SERVICE)
    rollout = make_rollout(
        "kill-candidate", [{"setWeight": 30}, {"pause": {"duration": "10m"}}, {"setWeight": 100}]
    )
    runner = LocalRunner(rollout, stack)
    summary = tmp_path / "load.json"
    with (
        locust_on(stack, SERVICE, summary, 4, 400, tmp_path / "locust.log"),
        running(runner, 300) as out,
    ):
        wait_for(
            "30% of traffic goes to the candidate", lambda: router.get_routes().candidate_weight == 30, 300
        )
        time.sleep(4)  # clients are being answered by the candidate
        cand = next(n for n, b in stack.status()["backends"].items() if b["version"] == "v2" and b.get("pid"))
        kill_server_tree(stack.state["backends"][cand]["pid"])
        killed_at = time.time()
        wait_for("the rollout ends", lambda: "final" in out, 120)
        time.sleep(3)  # traffic after the rollback, all on stable
    state = out["final"]
    load_ = json.loads(summary.read_text())
    print(f"candidate SIGKILLed: {load_['total_answered']} answered, {load_['total_failed']} failed, "
          f"by version {load_['answers_by_version']}, rolled back {state.finished_at - killed_at:.1f} s after the kill")  # fmt: skip
    assert state.phase == Phase.ROLLED_BACK and state.reason == Reason.CANDIDATE_FAILED, state.message
    assert state.finished_at is not None and state.finished_at - killed_at < 30
    assert router.get_routes() == Routes.all_stable()
    assert router.get_backends()["stable"] == f"127.0.0.1:{servers['v1'].port}"
    assert load_["answers_by_version"].get("v2", 0) > 0, (
        "the candidate never served: the drill proved nothing"
    )
    # Retry budget: zero. A request sent to the dead candidate fails to connect (or its connection is
    # reset before a response header) and nginx retries it once on stable (proxy_next_upstream error
    # non_idempotent, tries 2); predictions and feedback are safe to repeat.
    assert load_["total_failed"] == 0, load_["failures"]


# --- Prometheus goes away ----------------------------------------------------------------------------


def observe_while(
    stack: LocalStack, name: str, until: Any, timeout: float
) -> list[tuple[float, RolloutState, Routes]]:
    """(time, recorded state, routes nginx applies) every 0.2 s until ``until(state)``."""
    seen = []
    router = stack.router(SERVICE)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = load(stack, name)
        if state is not None:
            seen.append((time.time(), state, router.get_routes()))
            if until(state):
                return seen
        time.sleep(0.2)
    raise AssertionError(
        f"{name}: condition not reached in {timeout} s; last: {seen[-1][1].phase if seen else None}"
    )


def prometheus_drill(stack: LocalStack, servers: dict[str, BentoServer], tmp_path: Path, name: str,
                     error_limit: int, away: float | None) -> tuple[RolloutState, list, dict]:  # fmt: skip
    """Kill Prometheus once the analysis at 20% has measured once; start it again after ``away`` s."""
    reset(stack, servers)
    # the analysis step lasts 4 intervals: it would be over while Prometheus is away, so only the
    # gate (no Successful result while away) stands between the rollout and a blind promotion
    steps = [{"setWeight": 20}, {"analysis": {"intervals": 4}}, {"setWeight": 100}]
    runner = LocalRunner(make_rollout(name, steps, [ERROR_RATE], "1s", error_limit), stack)
    summary = tmp_path / "load.json"
    try:
        with (
            locust_on(stack, SERVICE, summary, 3, 300, tmp_path / "locust.log"),
            running(runner, 200) as out,
        ):
            observe_while(stack, name, lambda s: s.desired_routes.candidate_weight == 20
                          and any(m.measurements for m in s.metrics.values()), 120)  # fmt: skip
            os.kill(stack.prometheus.proc.pid, signal.SIGKILL)  # it crashes: away at once
            stopped = time.time()
            stack.stop_prometheus()  # the stack's bookkeeping: reap it, forget its pid
            if away is None:
                seen = observe_while(stack, name, lambda s: s.done, 120)
            else:
                seen = observe_while(stack, name, lambda s: time.time() - stopped > away, away + 30)
                stack.start_prometheus()
                seen += observe_while(stack, name, lambda s: s.done, 150)
            wait_for("the runner returns", lambda: "final" in out, 60)
    finally:
        if stack.prometheus.proc is None:
            stack.start_prometheus()
    return out["final"], [x for x in seen if x[0] >= stopped], json.loads(summary.read_text())


def test_prometheus_away_past_the_error_limit_rolls_back(
    stack: LocalStack, servers: dict[str, BentoServer], tmp_path: Path
) -> None:
    state, seen, load_ = prometheus_drill(stack, servers, tmp_path, "prom-gone", error_limit=3, away=None)
    phases = [s.phase for _, s, _ in seen]
    assert Phase.PROMOTED not in phases
    paused = [s for _, s, _ in seen if s.phase == Phase.PAUSED]
    assert paused and all(s.reason == Reason.METRICS_UNAVAILABLE for s in paused), phases
    before_end = [r for _, s, r in seen if not s.done]
    assert before_end and all(r.candidate_weight == 20 for r in before_end), "weights moved while blind"
    assert state.phase == Phase.ROLLED_BACK and state.reason == Reason.METRICS_UNAVAILABLE, state.message
    assert stack.router(SERVICE).get_routes() == Routes.all_stable()
    assert load_["total_failed"] == 0, load_["failures"]


def test_prometheus_back_before_the_limit_lets_the_rollout_finish(
    stack: LocalStack, servers: dict[str, BentoServer], tmp_path: Path
) -> None:
    state, seen, load_ = prometheus_drill(stack, servers, tmp_path, "prom-back", error_limit=60, away=8)
    away = [(s, r) for t, s, r in seen if t - seen[0][0] < 8]
    assert any(s.phase == Phase.PAUSED and s.reason == Reason.METRICS_UNAVAILABLE for s, _ in away)
    assert all(s.phase != Phase.PROMOTED and r.candidate_weight == 20 for s, r in away), "moved while blind"
    assert state.phase == Phase.PROMOTED, state.message
    assert any(e.reason == Reason.RESUMED for e in state.events), "no event says the metrics came back"
    assert stack.router(SERVICE).get_backends()["stable"] == f"127.0.0.1:{servers['v2'].port}"
    assert load_["total_failed"] == 0, load_["failures"]


# --- nginx reloads ---------------------------------------------------------------------------------


def test_fifty_nginx_reloads_under_load_fail_no_request(
    stack: LocalStack, servers: dict[str, BentoServer], tmp_path: Path
) -> None:
    router = stack.router(SERVICE)
    backends = reset(stack, servers)
    router.ensure(RouteTarget(SERVICE, backends["v1"], backends["v2"]))
    router.set_routes(Routes(candidate_weight=50))
    summary = tmp_path / "load.json"
    applied: list[float] = []
    with locust_on(stack, SERVICE, summary, 4, 600, tmp_path / "locust.log"):
        time.sleep(3)
        t0 = time.monotonic()
        for _ in range(50):
            applied.append(stack.nginx.reload())
        took = time.monotonic() - t0
        time.sleep(2)
    load_ = json.loads(summary.read_text())
    print(f"50 drained reloads in {took:.0f} s under Locust load: {load_['total_answered']} answered, "
          f"{load_['total_failed']} failed; new workers serving after median {sorted(applied)[25]:.2f} s, "
          f"max {max(applied):.2f} s")  # fmt: skip
    # Zero, with python-requests clients (Locust's HttpUser), which honour only the first
    # Connection header they see: during the drain nginx itself answers "Connection: close" (the
    # request runs in a location with keepalive_timeout 0), so no idle keep-alive connection is left
    # on the old workers to be cut under a client's next request.
    assert load_["total_failed"] == 0, load_["failures"]
    assert load_["total_answered"] > 500
    assert set(load_["answers_by_version"]) == {"v1", "v2"}
    assert router.get_routes() == Routes(candidate_weight=50), "routes survive the reloads"


# --- the rollout process dies ----------------------------------------------------------------------


def crash_and_resume(stack: LocalStack, servers: dict[str, BentoServer], tmp_path: Path, lane: int,
                     runs: int) -> list[str]:  # fmt: skip
    """``runs`` rollouts on the lane's service, each killed once at a seeded random moment and
    resumed; returns where each kill landed. Asserts the end state of every run."""
    service = LANES[lane]
    rng = random.Random(7 + lane)
    env = {**os.environ, "ROLLOUT_HOME": str(stack.home)}
    steps = [{"setWeight": 25}, {"pause": {"duration": "1s"}}, {"setWeight": 60}, {"pause": {"duration": "1s"}},
             {"setWeight": 100}]  # fmt: skip
    router = stack.router(service)
    killed_in: list[str] = []
    for run in range(runs):
        backends = reset(stack, servers, service)
        name = f"{service}-{run}"
        spec = spec_file(make_rollout(name, steps, service=service), tmp_path)
        argv = [*ROLLOUT, "run", str(spec), "-q"]
        state_file = rollout_dir(name, stack.home) / "state.json"
        proc = subprocess.Popen(argv, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
        # start-up (imports, attaching to the stack) takes seconds on a loaded machine: the random
        # moment is counted from the rollout's first saved state (~4 s of steps follow), or, in one
        # run in five, from the process start (a kill while it starts up)
        if rng.random() > 0.2:
            wait_for("the rollout starts", lambda f=state_file, p=proc: f.exists() or p.poll() is not None,
                     180, 0.02)  # fmt: skip
        delay = rng.uniform(0.0, 6.0)  # to past the end: kills during finalize too
        try:
            proc.wait(timeout=delay)
            killed_in.append("after the end")
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            st = load(stack, name)
            killed_in.append(
                f"{st.phase.value} at {st.desired_routes.candidate_weight}%" if st else "start-up"
            )
        done = subprocess.run(argv, env=env, timeout=300, capture_output=True, text=True)
        state = load(stack, name)
        assert state is not None
        assert done.returncode == 0 and state.phase == Phase.PROMOTED, (
            killed_in[-1],
            done.stderr,
            state.message,
        )
        started = [e.message for e in state.events if e.reason == Reason.STEP_STARTED]
        assert len(started) == len(set(started)), f"{name}: a step ran twice: {started}"
        weights = [json.loads(x)["candidate_weight"]
                   for x in (rollout_dir(name, stack.home) / "timeline.jsonl").read_text().splitlines()]  # fmt: skip
        assert weights == sorted(weights), f"{name}: weights went backwards: {weights}"
        # what nginx really applies agrees with the recorded state: the candidate serves everything
        assert state.desired_routes.candidate_weight == 100
        assert router.get_backends() == {"stable": backends["v2"].address, "candidate": None}
        assert router.get_routes() == Routes.all_stable()
        answer = httpx.post(
            stack.service_url(service) + "/predict", json={"instances": [[5.1, 3.5, 1.4, 0.2]]}
        )
        assert answer.headers["x-model-version"] == "v2"
    return killed_in


def test_rollout_killed_at_random_points_resumes_to_a_consistent_promotion(
    stack: LocalStack, servers: dict[str, BentoServer], tmp_path: Path
) -> None:
    with ThreadPoolExecutor(len(LANES)) as pool:
        lanes = [pool.submit(crash_and_resume, stack, servers, tmp_path, i, 5) for i in range(len(LANES))]
        killed_in = [k for lane in lanes for k in lane.result()]
    print(f"{len(killed_in)} runs killed with SIGKILL: {', '.join(killed_in)}")
    assert len(killed_in) == 20
    assert sum("%" in k for k in killed_in) >= 10, f"too few kills mid-rollout: {killed_in}"


# --- the state cannot be written ---------------------------------------------------------------------


@contextlib.contextmanager
def unwritable(directory: Path) -> Iterator[str]:
    """Make ``directory`` refuse new files, for root too: chmod for a user, else chattr +i or a
    read-only bind mount (root ignores permission bits)."""
    if os.geteuid() != 0:
        directory.chmod(0o500)
        try:
            yield "chmod 0500"
        finally:
            directory.chmod(0o755)
        return
    if subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode == 0:
        try:
            yield "chattr +i"
        finally:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
        return
    if (
        subprocess.run(["mount", "--bind", str(directory), str(directory)], capture_output=True).returncode
        == 0
    ):
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(directory)], check=True)
            yield "read-only bind mount"
        finally:
            subprocess.run(["umount", str(directory)], check=True)
        return
    pytest.skip("cannot make a directory unwritable for root here (no chattr, no mount)")


def test_unwritable_state_directory_stops_the_rollout_with_one_clear_line_and_routing_unchanged(
    stack: LocalStack, servers: dict[str, BentoServer], tmp_path: Path
) -> None:
    reset(stack, servers)
    name = "read-only"
    steps = [{"setWeight": 20}, {"pause": {"duration": "4s"}}, {"setWeight": 50}, {"pause": {"duration": "1s"}},
             {"setWeight": 100}]  # fmt: skip
    spec = spec_file(make_rollout(name, steps), tmp_path)
    env = {**os.environ, "ROLLOUT_HOME": str(stack.home)}
    argv = [*ROLLOUT, "run", str(spec), "-q"]
    proc = subprocess.Popen(
        argv, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    router = stack.router(SERVICE)
    directory = rollout_dir(name, stack.home)
    try:
        wait_for("the rollout is at 20%", lambda: router.get_routes().candidate_weight == 20, 120, 0.05)
        with unwritable(directory) as how:
            _, err = proc.communicate(timeout=60)  # the pause ends; saving the 50% step fails
            routes_after = router.get_routes()
            time.sleep(2)
            routes_later = router.get_routes()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    lines = err.decode().strip().splitlines()
    print(f"state directory made unwritable with {how}; rollout run exited {proc.returncode}: {lines}")
    assert proc.returncode not in (0, None)
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert str(directory / "state.json") in lines[0]
    assert routes_after == routes_later == Routes(candidate_weight=20), "routing changed"
    assert load(stack, name).desired_routes.candidate_weight == 20  # the kept state agrees with nginx
    # writable again: the same command picks the rollout up where it stopped
    done = subprocess.run(argv, env=env, timeout=120, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert load(stack, name).phase == Phase.PROMOTED
