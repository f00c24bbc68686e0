"""Who drives a local rollout: one driver per rollout, one rollout per service, and user
commands that are never lost, whether a ``rollout run`` is alive or not.

- ``begin(runner, fresh=, supersede=)`` prepares ``rollout run``: the runner claims its rollout
  (``run.lock``: a second driver is refused, RolloutBusyError naming its pid); another rollout of
  the same service that is not done refuses the start (RolloutBusyError naming it and how to
  proceed) unless ``supersede``, which aborts it first (all traffic to its stable, its candidate
  stopped). The check and the first save of the state happen under ``<home>/rollouts.lock``, so
  two ``rollout run`` starting at once see each other.
- ``send(name, kind)`` is ``rollout promote|abort|pause|resume``. A live driver applies the
  queued command. With none, ``abort`` acts at once (``abort_now``: one engine step with the
  command, its Finalize executed on the attached stack); the others stay queued for the next
  ``rollout run``, and the answer says so.
- ``load_state``, ``list_rollouts``, ``active_rollout``: the rollouts under ``<home>/rollouts``.

A rollout saved before ``rollout.json`` was kept beside its state is ended with a stand-in spec
(its service, versions and strategy): aborting reads nothing else of the spec.
Who calls it: rollout/cli/local.py, tests.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rollout.actions import CommandKind
from rollout.errors import NotFoundError, RolloutBusyError, StateError
from rollout.local.commands import CommandQueue
from rollout.local.lock import RunLock, exclusive
from rollout.local.runner import LocalRunner, rollout_dir
from rollout.local.stack import LocalStack, default_home
from rollout.model import Event, RolloutState
from rollout.spec import ModelRollout, parse_rollout
from rollout.state import StateStore

SUPERSEDE_TIMEOUT = 90.0  # a live driver ends its rollout within a step and one final scrape (10 s)


def event_line(e: Event) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(e.at))
    return f"{stamp} {e.type.value:<7} {e.reason:<22} {e.message}"


# --- rollout run ------------------------------------------------------------------------------------


def begin(
    runner: LocalRunner, *, fresh: bool = False, supersede: bool = False, echo: Callable[[str], None] = print
) -> RolloutState:
    """Claim the rollout for ``runner`` and save its first state; see the module docstring."""
    name, service = runner.rollout.metadata.name, runner.spec.service
    runner.claim()
    try:
        with exclusive(runner.home / "rollouts.lock"):
            if fresh:
                runner.store.delete()
            others = [(n, s) for n, s in _readable(runner.home) if n != name and s.service == service]
            others = [(n, s) for n, s in others if not s.done]
            if others and not supersede:
                raise RolloutBusyError(_refusal(service, others, runner.home))
            for other, _ in others:
                for line in _supersede(other, runner.stack, runner.home):
                    echo(line)
            if others:
                runner.stack.reload()  # their ends stopped (or unregistered) their candidates
            runner.check_pins()  # a refusal leaves no rollout in progress behind
            return runner.start_state()
    except BaseException:
        runner.lock.release()
        raise


def _refusal(service: str, others: list[tuple[str, RolloutState]], home: Path) -> str:
    def what(n: str, s: RolloutState) -> str:
        pid = RunLock(rollout_dir(n, home) / "run.lock", n).holder()
        driver = f"driven by pid {pid}" if pid is not None else "no process drives it"
        return f"{n} ({s.phase.value}, candidate {s.candidate}, {driver})"

    aborts = ", ".join(f"`rollout abort {n}`" for n, _ in others)
    one = len(others) == 1
    return (
        f"service {service} has {'another rollout' if one else 'other rollouts'} in progress: "
        f"{'; '.join(what(n, s) for n, s in others)}; end {'it' if one else 'them'} with {aborts}, "
        f"or run with --supersede to abort {'it' if one else 'them'} first"
    )


def _supersede(name: str, stack: LocalStack, home: Path) -> list[str]:
    """Abort ``name`` and return when its stable serves again: at once when nobody drives it,
    else by its driver (which is waited for)."""
    lock = RunLock(rollout_dir(name, home) / "run.lock", name)
    if lock.holder() is None:
        stack.reload()  # what other processes started or stopped since we attached
        try:
            return [f"superseding {name}:", *abort_now(name, home, stack)]
        except RolloutBusyError:
            pass  # a `rollout run` of it started just now: it applies the abort
    c = CommandQueue(rollout_dir(name, home) / "commands").put(CommandKind.ABORT, "superseded")
    deadline = time.monotonic() + SUPERSEDE_TIMEOUT
    while lock.holder() is not None or not load_state(name, home).done:
        if time.monotonic() > deadline:
            raise RolloutBusyError(
                f"rollout {name} did not end within {SUPERSEDE_TIMEOUT:.0f} s of the abort (command {c.id}) "
                f"its `rollout run` (pid {lock.holder()}) was given; see `rollout status {name}`"
            )
        time.sleep(0.2)
    state = load_state(name, home)
    return [f"superseded {name}: {state.phase.value} ({state.message})"]


# --- rollout promote|abort|pause|resume -------------------------------------------------------------


def send(name: str, kind: CommandKind, home: Path | None = None) -> list[str]:
    """Give ``kind`` to rollout ``name``; returns what to tell the user. NotFoundError when the
    rollout does not exist or has ended."""
    home = home or default_home()
    state = load_state(name, home)
    if state.done:
        raise NotFoundError(
            f"rollout {name!r} has already ended ({state.phase.value}); nothing to {kind.value}"
        )
    lock = RunLock(rollout_dir(name, home) / "run.lock", name)
    pid = lock.holder()
    no_stack = False
    if pid is None and kind == CommandKind.ABORT:
        try:
            stack: LocalStack | None = LocalStack.attach(home)
        except NotFoundError:
            stack, no_stack = None, True  # nothing to route; the next `rollout run` applies it
        if stack is not None:
            try:
                return abort_now(name, home, stack)
            except RolloutBusyError:
                pid = lock.holder()  # a `rollout run` of it started just now: it applies the abort
    c = CommandQueue(rollout_dir(name, home) / "commands").put(kind)
    head = f"{kind.value} requested for {name} (command {c.id})"
    if pid is not None:
        return [f"{head}; the running `rollout run` (pid {pid}) applies it"]
    why = "no local stack is running and " if no_stack else ""
    return [
        f"{head}; {why}no `rollout run` is driving {name}; "
        f"it is applied when you run `rollout run SPEC` again"
    ]


def abort_now(name: str, home: Path | None = None, stack: LocalStack | None = None) -> list[str]:
    """End rollout ``name``, which no process drives, here and now: one engine step with an
    abort command (queued first, so that a crash loses nothing), then its Finalize on the local
    stack. Returns the step's events and what was done. RolloutBusyError when a live process
    drives it; NotFoundError when no local stack runs (the command is then not queued)."""
    home = home or default_home()
    state = load_state(name, home)
    stack = stack or LocalStack.attach(home)
    runner = LocalRunner(saved_rollout(name, state, home), stack, home=home)
    with runner.lock:
        runner.commands.put(CommandKind.ABORT, "no `rollout run` was driving it")
        state, events, did = runner.apply_commands()
    lines = [event_line(e) for e in events]
    lines.append(f"{name}: {state.phase.value}; " + ("; ".join(did) or "nothing to route"))
    return lines


def saved_rollout(name: str, state: RolloutState, home: Path) -> ModelRollout:
    """The ModelRollout kept beside the state, or a stand-in for a rollout saved without one."""
    path = rollout_dir(name, home) / "rollout.json"
    try:
        return parse_rollout(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return stand_in(name, state)
    except (OSError, ValueError) as exc:
        raise StateError(f"cannot read {path}: {exc}; move it away to abort with a stand-in") from None


_STAND_IN_STRATEGY: dict[str, dict[str, Any]] = {
    "canary": {"canary": {"steps": [{"setWeight": 100}]}},
    "blue_green": {"blueGreen": {}},
    "shadow": {"shadow": {}},
}


def stand_in(name: str, state: RolloutState) -> ModelRollout:
    """A spec with the state's service, versions and strategy: enough for the engine to abort it."""
    metric = next(iter(state.metrics), "winner")
    strategy = _STAND_IN_STRATEGY.get(state.strategy, {"abTest": {"metric": metric}})
    metrics = [] if state.strategy in _STAND_IN_STRATEGY else [
        {"name": metric, "template": "error-rate", "threshold": {"max": 1}}
    ]  # fmt: skip
    return parse_rollout(
        {
            "apiVersion": "bento-rollout.io/v1alpha1",
            "kind": "ModelRollout",
            "metadata": {"name": name},
            "spec": {
                "service": state.service,
                "stable": {"model": state.stable},
                "candidate": {"model": state.candidate},
                "strategy": strategy,
                "analysis": {"metrics": metrics},
            },
        }
    )


# --- the rollouts under <home>/rollouts --------------------------------------------------------------


def load_state(name: str, home: Path | None = None) -> RolloutState:
    state = StateStore(rollout_dir(name, home) / "state.json").load()
    if state is None:
        raise NotFoundError(f"no rollout named {name!r} under {home or default_home()}; see `rollout status`")
    return state


def list_rollouts(home: Path | None = None) -> list[tuple[str, RolloutState]]:
    """All rollouts with a state file, newest first."""
    base = (home or default_home()) / "rollouts"
    out = []
    for d in base.iterdir() if base.is_dir() else ():
        state = StateStore(d / "state.json").load()
        if state is not None:
            out.append((d.name, state))
    return sorted(out, key=lambda x: x[1].updated_at or 0, reverse=True)


def _readable(home: Path) -> list[tuple[str, RolloutState]]:
    """Like ``list_rollouts``, skipping states that cannot be read (no driver can run them)."""
    base = home / "rollouts"
    out = []
    for d in base.iterdir() if base.is_dir() else ():
        try:
            state = StateStore(d / "state.json").load()
        except StateError:
            continue
        if state is not None:
            out.append((d.name, state))
    return out


def active_rollout(home: Path | None = None) -> str:
    """The name of the one rollout still running (for commands given without a name)."""
    running = [name for name, s in list_rollouts(home) if not s.done]
    if not running:
        raise NotFoundError("no rollout is in progress; give its name, or start one with `rollout run SPEC`")
    if len(running) > 1:
        raise NotFoundError(f"several rollouts are in progress ({', '.join(running)}); give a name")
    return running[0]
