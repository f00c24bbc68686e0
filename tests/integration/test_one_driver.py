"""One driver per rollout, one rollout per service, and commands that are never lost - through the
real CLI (exit codes, the one line it prints) on a real stack: nginx, Prometheus, bentoml serve.

Given iris:v1 serving all traffic and a rollout of iris:v2 held at 20 % by a live `rollout run`,
- a second `rollout run` of it exits 2 with one line naming the live one's pid, and `promote` says
  that process applies it;
when that `rollout run` was SIGKILLed instead,
- the rollout is not locked: `pause` is queued and says no `rollout run` drives it; a `rollout run`
  of another rollout of the service exits 2 naming it and how to proceed; `abort` acts at once:
  all traffic to stable, the candidate's server stopped, the queued pause applied too;
- `rollout run --supersede` aborts the other rollouts of the service first - one driven by a live
  process (which then exits 4), one left by a crash before rollouts kept their spec - and runs.

iris:v1 and iris:v2 are started once for the module and registered with the stack as external
backends (finishing a rollout only unregisters them); the crash drill lets its `rollout run` start
its own candidate, since stopping it is the point.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollout.actions import Observations
from rollout.engine import new_rollout, step
from rollout.local.bento import BentoServer
from rollout.local.runner import rollout_dir
from rollout.local.stack import LocalStack
from rollout.model import Phase, Reason, RolloutState
from rollout.routers.base import Backend, Routes, RouteTarget
from rollout.spec import ModelRollout
from rollout.state import StateStore
from tests.kit import bento_servers, rollout_spec

pytestmark = pytest.mark.integration
ROLLOUT = str(Path(sys.executable).with_name("rollout"))
SERVICE = "iris"
HELD = [{"setWeight": 20}, {"pause": {}}, {"setWeight": 100}]  # waits at 20 % for `promote`
QUICK = [{"setWeight": 50}, {"pause": {"duration": "1s"}}, {"setWeight": 100}]


@pytest.fixture(scope="module")
def servers(bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, BentoServer]]:
    logs = tmp_path_factory.mktemp("one-driver-logs")
    os.environ["BENTOML_HOME"] = str(bentoml_home)
    with bento_servers(logs) as started:
        yield started


@pytest.fixture(scope="module")
def stack(servers: dict[str, BentoServer], tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    s = LocalStack.up(home=tmp_path_factory.mktemp("one-driver") / "home", services=[SERVICE])
    try:
        yield s
    finally:
        s.stop()


def reset(stack: LocalStack, servers: dict[str, BentoServer]) -> dict[str, Backend]:
    """iris:v1 serves everything, iris:v2 is known but gets nothing (as after `rollout up`)."""
    backends = {
        v: stack.add_backend(SERVICE, f"ext-{v}", v, f"127.0.0.1:{s.port}") for v, s in servers.items()
    }
    stack.router(SERVICE).ensure(RouteTarget(SERVICE, backends["v1"]))
    return backends


def make_rollout(name: str, steps: list[dict[str, Any]], candidate: str = "iris:v2") -> ModelRollout:
    return rollout_spec(
        name, service=SERVICE, candidate={"model": candidate}, strategy={"canary": {"steps": steps}}
    )


def spec_file(rollout: ModelRollout, directory: Path) -> str:
    path = directory / f"{rollout.metadata.name}.yaml"
    path.write_text(yaml.safe_dump(rollout.model_dump(mode="json", by_alias=True, exclude_none=True)))
    return str(path)


def env(stack: LocalStack) -> dict[str, str]:
    return {**os.environ, "ROLLOUT_HOME": str(stack.home)}


def cli(stack: LocalStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ROLLOUT, *args], env=env(stack), capture_output=True, text=True, timeout=240)


def start_run(stack: LocalStack, spec: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [ROLLOUT, "run", spec],
            env=env(stack),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def load(stack: LocalStack, name: str) -> RolloutState | None:
    return StateStore(rollout_dir(name, stack.home) / "state.json").load()


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := probe():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting until {what}")


def wait_held(stack: LocalStack, name: str, timeout: float = 120.0) -> None:
    def held() -> bool:
        s = load(stack, name)
        return s is not None and s.reason == Reason.WAITING_FOR_PROMOTION

    wait_for(f"{name} waits for promote at 20 %", held, timeout)
    assert stack.router(SERVICE).get_routes().candidate_weight == 20


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"


def test_a_second_run_of_a_driven_rollout_is_refused_naming_the_driver(
    stack: LocalStack, servers: dict[str, BentoServer], tmp_path: Path
) -> None:
    reset(stack, servers)
    spec = spec_file(make_rollout("driven", HELD), tmp_path)
    proc = start_run(stack, spec, tmp_path / "driven.log")
    try:
        wait_held(stack, "driven")
        second = cli(stack, "run", spec)
        assert second.returncode == 2
        assert f"pid {proc.pid}" in one_line(second)
        promote = cli(stack, "promote", "driven")
        assert promote.returncode == 0, promote.stderr
        assert f"the running `rollout run` (pid {proc.pid}) applies it" in promote.stdout
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    state = load(stack, "driven")
    assert state is not None and state.phase == Phase.PROMOTED


def test_a_killed_run_leaves_no_lock_and_abort_ends_the_rollout_at_once(
    stack: LocalStack, servers: dict[str, BentoServer], tmp_path: Path
) -> None:
    backends = reset(stack, servers)
    stack.stop_backend("ext-v2")  # the run starts its own candidate: the abort must stop it
    proc = start_run(stack, spec_file(make_rollout("crashed", HELD), tmp_path), tmp_path / "crashed.log")
    try:
        wait_held(stack, "crashed", timeout=240)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    disk = json.loads((stack.home / "stack" / "stack.json").read_text())["backends"]
    candidate = next(b["pid"] for b in disk.values() if b["version"] == "v2" and b.get("pid"))
    assert alive(candidate), "the candidate's server outlives the killed run"

    pause = cli(stack, "pause", "crashed")
    assert pause.returncode == 0, pause.stderr
    assert (
        "no `rollout run` is driving crashed; it is applied when you run `rollout run SPEC` again"
        in pause.stdout
    )
    assert list((rollout_dir("crashed", stack.home) / "commands").glob("*.json")), "the pause is not queued"

    refused = cli(stack, "run", spec_file(make_rollout("next", QUICK), tmp_path))
    assert refused.returncode == 2
    line = one_line(refused)
    assert "crashed (Paused" in line and "`rollout abort crashed`" in line and "--supersede" in line, line
    assert load(stack, "next") is None, "a refused run left a state behind"

    abort = cli(stack, "abort", "crashed")
    assert abort.returncode == 0, abort.stderr
    assert "crashed: Aborted" in abort.stdout and "stopped iris-v2" in abort.stdout, abort.stdout
    state = load(stack, "crashed")
    assert state is not None and state.phase == Phase.ABORTED
    assert any(e.reason == Reason.PAUSED for e in state.events), "the queued pause was lost"
    assert not list((rollout_dir("crashed", stack.home) / "commands").glob("*.json"))
    router = stack.router(SERVICE)
    assert router.get_routes() == Routes.all_stable()
    assert router.get_backends() == {"stable": backends["v1"].address, "candidate": None}
    wait_for("the candidate's server is stopped", lambda: not alive(candidate), 30)


def test_supersede_aborts_the_service_s_other_rollouts_first(
    stack: LocalStack, servers: dict[str, BentoServer], tmp_path: Path
) -> None:
    reset(stack, servers)
    held = start_run(stack, spec_file(make_rollout("held", HELD), tmp_path), tmp_path / "held.log")
    try:
        wait_held(stack, "held")
        # left by a crash before rollouts kept their spec beside their state: no rollout.json
        ghost = make_rollout("ghost", QUICK, candidate="iris:poisoned")
        started = step(ghost.spec, new_rollout(ghost.spec), Observations(), now=time.time()).state
        StateStore(rollout_dir("ghost", stack.home) / "state.json").save(started)
        spec = spec_file(make_rollout("newer", QUICK), tmp_path)
        refused = cli(stack, "run", spec)
        assert refused.returncode == 2
        line = one_line(refused)
        assert (
            "ghost (Progressing" in line
            and f"held (Paused, candidate iris:v2, driven by pid {held.pid})" in line
        )
        done = cli(stack, "run", spec, "--supersede", "-q")
        assert done.returncode == 0, done.stdout + done.stderr
        assert held.wait(timeout=60) == 4  # aborted by the superseding run
    finally:
        if held.poll() is None:
            os.killpg(held.pid, signal.SIGKILL)
    assert "superseding ghost:" in done.stdout and "superseded held: Aborted" in done.stdout, done.stdout
    phases = {n: s.phase for n in ("ghost", "held", "newer") if (s := load(stack, n)) is not None}
    assert phases == {"ghost": Phase.ABORTED, "held": Phase.ABORTED, "newer": Phase.PROMOTED}


def test_a_metrics_address_in_the_spec_is_said_to_be_the_clusters(
    stack: LocalStack, servers: dict[str, BentoServer], tmp_path: Path
) -> None:
    """spec.metricsAddress is the controller's: `rollout run` queried the local Prometheus and said
    nothing, so a user believed the rollout was gated on the address written."""
    reset(stack, servers)
    rollout = rollout_spec(
        "addressed", service=SERVICE, strategy={"canary": {"steps": HELD}},
        metricsAddress="http://prometheus.monitoring.svc:9090",
    )  # fmt: skip
    spec = spec_file(rollout, tmp_path)
    try:
        r = cli(stack, "run", spec, "--timeout", "3")
        assert r.returncode == 5, r.stdout + r.stderr
        assert (
            "note: spec.metricsAddress (http://prometheus.monitoring.svc:9090) is read by the cluster's "
            f"controller; `rollout run` queries the local stack's Prometheus ({stack.prometheus_url})"
        ) in r.stderr
    finally:
        cli(stack, "abort", "addressed")
