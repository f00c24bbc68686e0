"""One driver per rollout, without the data plane: the run lock (a real flock, real processes) and
the stand-in spec that lets ``rollout abort`` end a rollout saved before its spec was kept.

Given a rollout's ``run.lock``, when a process holds it, then another holder is refused with one
line naming that pid, and ``holder()`` names it without taking the lock; when that process is
killed with SIGKILL, the lock is free at once. A command for a rollout that a live process drives
names that process; with none it is queued and says it waits for the next ``rollout run`` (an
abort too when no local stack runs: there is nothing to route). Given a rollout of any strategy
saved without its ``rollout.json``, the engine aborts it with the stand-in spec: Aborted, all
traffic to stable.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rollout.actions import ALL_STABLE, Command, CommandKind, Finalize, Observations, Outcome
from rollout.engine import new_rollout, step
from rollout.errors import RolloutBusyError
from rollout.local.commands import CommandQueue
from rollout.local.control import send, stand_in
from rollout.local.lock import RunLock
from rollout.local.runner import rollout_dir
from rollout.model import Phase
from rollout.spec import load_rollout
from rollout.state import StateStore

SPECS = sorted((Path(__file__).resolve().parents[2] / "rollout" / "demo" / "specs").glob("*.yaml"))
HOLD = (
    "import sys, time; from pathlib import Path; from rollout.local.lock import RunLock; "
    "RunLock(Path(sys.argv[1]), 'r').acquire(); print('locked', flush=True); time.sleep(120)"
)


def test_a_second_holder_is_refused_with_the_pid_of_the_first(tmp_path: Path) -> None:
    first = RunLock(tmp_path / "run.lock", "iris-canary")
    second = RunLock(tmp_path / "run.lock", "iris-canary")
    with first:
        assert second.holder() == os.getpid()
        with pytest.raises(RolloutBusyError) as err:
            second.acquire()
        assert err.value.exit_code == 2
        assert f"pid {os.getpid()}" in str(err.value) and "\n" not in str(err.value)
        assert not second.held
    assert second.holder() is None
    with second:
        assert second.held


def test_a_lock_held_by_a_killed_process_is_free_at_once(tmp_path: Path) -> None:
    path = tmp_path / "run.lock"
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        lock = RunLock(path, "r")
        assert lock.holder() == child.pid
        with pytest.raises(RolloutBusyError, match=f"pid {child.pid}"):
            lock.acquire()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert lock.holder() is None
    lock.acquire()  # the stale pid in the file does not matter
    assert path.read_text().strip() == str(os.getpid())
    lock.release()


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    """A home with a canary rollout ``iris-canary`` started (and no local stack)."""
    real = load_rollout(SPECS[0].with_name("canary-good.yaml"))
    state = step(real.spec, new_rollout(real.spec), Observations(), now=100.0).state
    StateStore(rollout_dir("iris-canary", tmp_path) / "state.json").save(state)
    return tmp_path


@pytest.mark.parametrize(
    "kind", [CommandKind.PROMOTE, CommandKind.PAUSE, CommandKind.RESUME, CommandKind.ABORT]
)
def test_a_command_for_a_driven_rollout_names_the_process_that_applies_it(
    saved: Path, kind: CommandKind
) -> None:
    with RunLock(rollout_dir("iris-canary", saved) / "run.lock", "iris-canary"):
        (line,) = send("iris-canary", kind, saved)
    assert f"the running `rollout run` (pid {os.getpid()}) applies it" in line
    assert [c.kind for c in CommandQueue(rollout_dir("iris-canary", saved) / "commands").pending()] == [kind]


@pytest.mark.parametrize("kind", [CommandKind.PROMOTE, CommandKind.PAUSE, CommandKind.ABORT])
def test_a_command_nobody_applies_now_is_queued_and_says_so(saved: Path, kind: CommandKind) -> None:
    (line,) = send("iris-canary", kind, saved)
    assert (
        "no `rollout run` is driving iris-canary; it is applied when you run `rollout run SPEC` again" in line
    )
    if kind == CommandKind.ABORT:
        assert "no local stack is running" in line
    assert [c.kind for c in CommandQueue(rollout_dir("iris-canary", saved) / "commands").pending()] == [kind]


@pytest.mark.parametrize("spec_file", SPECS, ids=[p.stem for p in SPECS])
def test_a_rollout_saved_without_its_spec_is_aborted_with_the_stand_in(spec_file: Path) -> None:
    real = load_rollout(spec_file)
    started = step(real.spec, new_rollout(real.spec), Observations(candidate_ready=True), now=100.0).state
    assert started.phase == Phase.PROGRESSING

    spec = stand_in(real.metadata.name, started).spec
    abort = Command(id="a1", kind=CommandKind.ABORT)
    t = step(spec, started, Observations(commands=(abort,)), now=101.0)
    assert t.state.phase == Phase.ABORTED
    assert t.actions == (
        Finalize(Outcome.ABORTED, ALL_STABLE, stop="candidate", new_stable=real.spec.stable.model),
    )
