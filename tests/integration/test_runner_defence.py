"""The local runner's last line of defence, on a real stack (nginx, Prometheus, echo model servers).

Given a rollout at 50 % under ``rollout run``, when every iteration fails with an exception nobody
foresaw (an IndexError injected into the engine call), then the process keeps running, the state
shows Paused / ReconcileError with one Warning event, the traceback is logged once (stderr), the
weights stay; and once the fault clears the rollout goes on by itself to its outcome.
A metric provider's failure of any kind is a measurement in phase Error, and a StateError still
ends the run (acting on a state that is not kept would break persist-then-act).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollout.actions import Measure
from rollout.errors import RouterError, StateError
from rollout.local import runner as runner_module
from rollout.local.runner import LocalRunner, rollout_dir
from rollout.local.stack import LocalStack
from rollout.model import Phase, Reason, RolloutState
from rollout.routers.base import Routes, RouteTarget
from rollout.spec import ModelRollout, parse_rollout
from rollout.state import StateStore

pytestmark = pytest.mark.integration
ECHO = Path(__file__).resolve().parent / "echo_server.py"
ROLLOUT = str(Path(sys.executable).with_name("rollout"))
# `rollout run`, with every engine step failing while the file $FAULT_FILE exists
FAULTY_RUN = """
import os, sys
from pathlib import Path
import rollout.local.runner as r
real = r.step
def step(*args, **kwargs):
    if Path(os.environ["FAULT_FILE"]).exists():
        return [][0]  # IndexError: list index out of range, as a bug would raise it
    return real(*args, **kwargs)
r.step = step
from rollout.cli.main import cli
cli(prog_name="rollout", args=sys.argv[1:])
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    s = LocalStack.up(home=tmp_path_factory.mktemp("defence") / "home", services=["iris"])
    try:
        yield s
    finally:
        s.stop()


def serve_v1(stack: LocalStack) -> None:
    """Echo servers for iris v1 and v2 (started if missing); v1 serves all traffic."""
    for name, info in stack.status()["backends"].items():
        if not info.get("running", True):  # stopped by a `rollout run` (another process)
            stack.stop_backend(name)
    have = {b.version: b for b in stack.backends("iris").values()}
    for v in ("v1", "v2"):
        if v not in have:
            have[v] = stack.start_backend("iris", f"iris-{v}", v, [sys.executable, str(ECHO), v, "{port}"])
    stack.router("iris").finalize(RouteTarget("iris", have["v1"]))


def canary(name: str, metrics: list[dict[str, Any]] | None = None, pause: str | None = "2s") -> ModelRollout:
    """50 %, a pause (None: until promoted), 100 %."""
    steps = [{"setWeight": 50}, {"pause": {"duration": pause} if pause else {}}, {"setWeight": 100}]
    return parse_rollout(
        {
            "apiVersion": "bento-rollout.io/v1alpha1",
            "kind": "ModelRollout",
            "metadata": {"name": name},
            "spec": {
                "service": "iris",
                "stable": {"model": "iris:v1"},
                "candidate": {"model": "iris:v2"},
                "strategy": {"canary": {"steps": steps}},
                "analysis": {"interval": "1s", "metrics": metrics or []},
            },
        }
    )


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := probe():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting until {what}")


def test_an_unexpected_error_holds_the_rollout_and_the_run_goes_on(stack: LocalStack, tmp_path: Path) -> None:
    serve_v1(stack)
    rollout = canary("defended")
    spec = tmp_path / "defended.yaml"
    spec.write_text(yaml.safe_dump(rollout.model_dump(mode="json", by_alias=True, exclude_none=True)))
    fault = tmp_path / "fault"
    env = {**os.environ, "ROLLOUT_HOME": str(stack.home), "FAULT_FILE": str(fault)}
    proc = subprocess.Popen(
        [sys.executable, "-c", FAULTY_RUN, "run", str(spec)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    store = StateStore(rollout_dir("defended", stack.home) / "state.json")
    router = stack.router("iris")
    try:
        wait_for("the canary is at 50 %", lambda: router.get_routes().candidate_weight == 50)
        fault.touch()
        held = wait_for(
            "the rollout holds on the error",
            lambda: (s := store.load()) is not None and s.reason == Reason.RECONCILE_ERROR and s,
        )
        time.sleep(3.5)  # retried after 1 s and 2 s more: still failing, still one event
        assert proc.poll() is None, "rollout run ended on the error"
        still = store.load()
        assert still is not None and still.phase == Phase.PAUSED and still.reason == Reason.RECONCILE_ERROR
        assert router.get_routes() == Routes(candidate_weight=50), "the weights moved while failing"
        fault.unlink()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    final = store.load()
    assert final is not None
    assert proc.returncode == 0 and final.phase == Phase.PROMOTED, (proc.returncode, err)
    assert held.phase == Phase.PAUSED and held.message == "held: IndexError: list index out of range"
    errors = [e for e in final.events if e.reason == Reason.RECONCILE_ERROR]
    assert len(errors) == 1 and errors[0].type.value == "Warning", errors
    assert any(e.reason == Reason.RESUMED for e in final.events if e.at >= errors[0].at)
    assert err.count("Traceback (most recent call last)") == 1, err
    assert "IndexError: list index out of range" in err
    assert out.count("ReconcileError") == 1, out  # the CLI printed the event once


def test_a_failure_after_the_state_is_saved_holds_without_undoing_the_step(
    stack: LocalStack, caplog: pytest.LogCaptureFixture
) -> None:
    serve_v1(stack)
    runner = LocalRunner(canary("after-save"), stack, tick=0.05, error_backoff=0.2)
    set_routes, failures = runner.router.set_routes, []

    def flaky(routes: Routes) -> None:  # the first attempt at 50 % fails after the step was saved
        if routes.candidate_weight == 50 and len(failures) < 3:
            failures.append(routes)
            raise KeyError("weights")
        set_routes(routes)

    runner.router.set_routes = flaky  # type: ignore[method-assign]
    seen: list[RolloutState] = []
    runner.on_step = seen.append
    with caplog.at_level(logging.ERROR, logger="rollout.local"):
        final = runner.run(timeout=60)
    assert len(failures) == 3 and final.phase == Phase.PROMOTED, final.message
    held = [s for s in seen if s.reason == Reason.RECONCILE_ERROR]
    assert held and all(s.desired_routes.candidate_weight == 50 for s in held), "the saved step was undone"
    started = [e.message for e in final.events if e.reason == Reason.STEP_STARTED]
    assert len(started) == len(set(started)), f"a step started twice: {started}"
    # each retry's step goes through before acting fails again; the runner reports the failed
    # iteration (Observations.edge_error), so the rollout stays held - one Warning in all, and
    # Resumed only once an iteration went through
    errors = [e for e in final.events if e.reason == Reason.RECONCILE_ERROR]
    assert [e.message for e in errors] == ["KeyError: 'weights'"]
    resumed = [e for e in final.events if e.reason == Reason.RESUMED and e.at >= errors[0].at]
    assert len(resumed) == 1, [e.message for e in resumed]
    assert len([r for r in caplog.records if r.exc_info]) == 1, "the traceback is logged once"


def test_our_own_errors_hold_the_rollout_with_one_line_and_no_traceback(
    stack: LocalStack, caplog: pytest.LogCaptureFixture
) -> None:
    """A RolloutError (nginx unreachable) says what failed: logged once as one line; the 60-line
    httpx traceback under it told a user of `rollout run` nothing more."""
    serve_v1(stack)
    runner = LocalRunner(canary("own-error"), stack, tick=0.05, error_backoff=0.2)
    set_routes, failures = runner.router.set_routes, []

    def unreachable(routes: Routes) -> None:
        if routes.candidate_weight == 50 and len(failures) < 3:
            failures.append(routes)
            raise RouterError("nginx admin API at http://127.0.0.1:1 is unreachable; is the stack up?")
        set_routes(routes)

    runner.router.set_routes = unreachable  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="rollout.local"):
        final = runner.run(timeout=60)
    assert len(failures) == 3 and final.phase == Phase.PROMOTED, final.message
    logged = [r for r in caplog.records if "is unreachable" in r.getMessage()]
    assert len(logged) == 1, [r.getMessage() for r in caplog.records]
    assert logged[0].exc_info is None, "a traceback for an error that says what failed"


def test_any_failure_of_a_metric_provider_is_a_measurement_in_error(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rollout = canary(
        "measured", [{"name": "error-rate", "template": "error-rate", "threshold": {"max": 0.5}}]
    )
    runner = LocalRunner(rollout, stack)

    def broken(*_args: Any) -> Any:
        raise ValueError("a sample nobody foresaw")

    monkeypatch.setattr(runner_module, "collect", broken)
    state = RolloutState(service="iris", strategy="canary", stable="iris:v1", candidate="iris:v2")
    with caplog.at_level(logging.ERROR, logger="rollout.local"):
        results = [runner.measure(state, Measure("error-rate", 5.0), now=float(i)) for i in range(3)]
    assert all(r.sample is None and r.error == "ValueError: a sample nobody foresaw" for r in results)
    assert len([r for r in caplog.records if r.exc_info]) == 1, "the traceback is logged once"


def test_a_state_error_still_ends_the_run_and_frees_the_rollout(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    serve_v1(stack)

    def unwritable(*_args: Any, **_kwargs: Any) -> Any:
        raise StateError(
            "cannot save rollout state to /x/state.json: permission denied; the previous state is kept"
        )

    monkeypatch.setattr(runner_module, "step", unwritable)
    runner = LocalRunner(canary("state-error"), stack, tick=0.05)
    with pytest.raises(StateError, match="permission denied"):
        runner.run(timeout=30)
    assert runner.lock.holder() is None


def test_rollout_down_under_a_live_run_ends_it_with_one_line(tmp_path: Path) -> None:
    """`rollout down` while `rollout run` drives a rollout: the run ends within a few seconds with
    one line saying why and how to resume (it held for ever, retrying an nginx that was gone)."""
    own = LocalStack.up(home=tmp_path / "home", services=["iris"])
    proc = None
    try:
        serve_v1(own)
        rollout = canary("downed", pause=None)  # held at 50 % until promoted
        spec = tmp_path / "downed.yaml"
        spec.write_text(yaml.safe_dump(rollout.model_dump(mode="json", by_alias=True, exclude_none=True)))
        env = {**os.environ, "ROLLOUT_HOME": str(own.home)}
        proc = subprocess.Popen([ROLLOUT, "run", str(spec)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
        router = own.router("iris")
        wait_for("the canary holds at 50 %", lambda: router.get_routes().candidate_weight == 50)
        down = subprocess.run([ROLLOUT, "down"], env=env, capture_output=True, text=True, timeout=60)
        assert "stopped the local stack" in down.stdout, down
        out, err = proc.communicate(timeout=30)
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, 9)
        own.stop()
    assert proc.returncode == 1, (out, err)
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: the local stack under") and "`rollout down`" in last, err
    assert "`rollout up`, then `rollout run SPEC` resumes it" in last, last
    state = StateStore(rollout_dir("downed", tmp_path / "home") / "state.json").load()
    assert state is not None and not state.done, (
        f"`rollout down` ended the rollout: {state and state.message}"
    )


def test_rollout_down_shows_the_stack_gone_before_it_stops_a_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that looks while `rollout down` stops the servers one by one must find the stack gone,
    not its candidate dead: it rolled the rollout back (CandidateFailed) on its way out."""
    from rollout.local import stackfile as stack_module  # where `down` stops what the state records

    own = LocalStack.up(home=tmp_path / "home", services=["iris"])
    try:
        serve_v1(own)
        seen: list[bool] = []
        real_stop = stack_module.stop_pid

        def stop_pid(*args: Any, **kwargs: Any) -> None:
            seen.append(own.reload() is None)  # what a `rollout run` sees now
            real_stop(*args, **kwargs)

        monkeypatch.setattr(stack_module, "stop_pid", stop_pid)
        assert LocalStack.down(own.home)
    finally:
        monkeypatch.undo()
        own.stop()
    assert len(seen) >= 4 and all(seen), f"the stack looked alive while down stopped a server: {seen}"


def test_a_saved_rollout_of_another_candidate_starts_over_and_an_ended_one_is_kept(stack: LocalStack) -> None:
    """The spec of a rollout saved earlier now names another candidate (the user edited it): the
    run starts a new rollout of that candidate, as the cluster's controller does, and says which
    one it replaced - it resumed the old candidate's state before. The same candidate, ended, is
    the saved result (kept; `--fresh` runs it again)."""
    name = "edited-spec"
    old = RolloutState(service="iris", strategy="canary", stable="iris:v1", candidate="iris:poisoned",
                       phase=Phase.ROLLED_BACK, finished_at=time.time())  # fmt: skip
    StateStore(rollout_dir(name, stack.home) / "state.json").save(old)
    runner = LocalRunner(canary(name), stack)
    state = runner.start_state()
    assert (state.candidate, state.phase) == ("iris:v2", Phase.PENDING)
    assert runner.replaced is not None and runner.replaced.candidate == "iris:poisoned"
    done = state.model_copy(update={"phase": Phase.PROMOTED, "finished_at": time.time()})
    runner.store.save(done)
    again = LocalRunner(canary(name), stack)
    assert again.start_state().phase == Phase.PROMOTED and again.replaced is None
