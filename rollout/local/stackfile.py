"""The local stack's state file and the processes it records (rollout/local/stack.py's storage).

``<home>/stack/stack.json`` holds what runs (pids with start times, ports, paths, backends) so that
another process can attach to the stack, bring it down or supervise it (rollout/local/watchdog.py).
It is read and written under ``stack.lock`` (an flock shared by every process that writes it);
``down`` sets it aside as ``stack.json.down`` first, so a stack being brought down is seen as gone.
A recorded process is a dict with ``pid``, ``startTime`` and ``log``: alive only while that pid is
still the process that started then (a pid reused by another program is not ours).
``bring_down`` stops what a state records (``rollout down``).
Who calls it: rollout/local/stack.py, rollout/local/watchdog.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rollout.errors import ProcessError, StateError
from rollout.local.processes import ManagedProcess, is_running, stop_pid

# what runs besides the model servers, by the key of its record (also the process' name)
COMPONENTS = ("nginx", "prometheus", "redis", "joinExporter")
STATE_NAME = "stack.json"
DOWN_NAME = "stack.json.down"  # the state of a stack being brought down (``down`` sets it aside)


@contextlib.contextmanager
def flock(stack_dir: Path) -> Iterator[None]:
    """The stack's lock (``stack.lock``), shared by every process that writes its state file."""
    with open(stack_dir / "stack.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_state(home: Path, name: str = STATE_NAME) -> dict[str, Any] | None:
    """The state under ``home`` (None: no stack); StateError when it cannot be read."""
    path = home / "stack" / name
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StateError(
            f"cannot read the stack state {path}: {exc}; remove it after stopping the processes"
        ) from exc


def write_state(stack_dir: Path, state: dict[str, Any]) -> None:
    """Replace the state file at once (a reader sees the old or the new one, never half)."""
    path = stack_dir / STATE_NAME
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(path)
    except OSError as exc:
        raise StateError(f"cannot write the stack state {path}: {exc}") from exc


def record(info: dict[str, Any], proc: ManagedProcess | None) -> None:
    """Write ``proc``'s pid, start time and log into its record ``info``."""
    if proc is None:
        raise ProcessError("process did not start")
    info.update(pid=proc.pid, startTime=proc.start_time, log=str(proc.log_path))


def alive(info: dict[str, Any]) -> bool:
    """The recorded process still runs (the same process: pid and start time)."""
    return bool(info.get("pid")) and is_running(int(info["pid"]), info.get("startTime"))


def foreign(name: str, info: dict[str, Any]) -> ManagedProcess:
    """A handle on a recorded process that another process started (an attached stack)."""
    return ManagedProcess(name, [], int(info["pid"]), info.get("startTime"), Path(info.get("log", "")))


def kill_group(info: dict[str, Any]) -> None:
    """SIGKILL what is left of the process group of a recorded process whose leader died (its
    workers would keep its ports). The group id is the leader's pid, which no other process can
    take while the group has members; a group with none left is ESRCH."""
    pid = info.get("pid")
    if pid and not alive(info):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(int(pid), signal.SIGKILL)


def bring_down(home: Path) -> bool:
    """Stop every process recorded in the state under ``home``; False when nothing was running.

    The file is set aside first (``stack.json.down``, under the stack's lock), so whoever looks
    at the stack meanwhile finds it gone: a live ``rollout run`` ends at its next look, rather
    than see its candidate being stopped and roll it back. It is removed last; a ``down`` cut
    short is finished by the next ``down`` or ``up``. The watchdog goes first (it would restart
    what is stopped), then the model servers (their last predictions reach Redis), then the rest."""
    stack_dir = home / "stack"
    if not stack_dir.is_dir():
        return False
    with flock(stack_dir):
        if (stack_dir / STATE_NAME).exists():
            os.replace(stack_dir / STATE_NAME, stack_dir / DOWN_NAME)
    state = read_state(home, DOWN_NAME)
    if not state:
        return False
    was_running = False
    watchdog = state.get("watchdog", {})
    if watchdog.get("pid") and alive(watchdog):
        stop_pid(watchdog["pid"], watchdog.get("startTime"), timeout=15)
    for info in [*state.get("backends", {}).values(), *(state.get(c, {}) for c in reversed(COMPONENTS))]:
        if info.get("pid") and alive(info):
            was_running = True
            stop_pid(info["pid"], info.get("startTime"), timeout=15)
    data = state.get("prometheus", {}).get("data")
    if data and Path(data).name.startswith("rollout-prometheus-"):
        shutil.rmtree(data, ignore_errors=True)
    (stack_dir / DOWN_NAME).unlink(missing_ok=True)
    return was_running
