"""The local stack's watchdog: restarts a model server, nginx, Prometheus or the join store that died.

On Kubernetes the kubelet restarts a crashed container; on one machine nothing plays that part
unless this does. ``Watchdog(stack).check()`` looks at every process recorded in the stack's state
(``<home>/stack/stack.json``) and starts again, on the same port with the same command, each one
that is gone - unless it was stopped on purpose (``stop_backend``, ``stop_prometheus``, ``rollout
down``). Restarts back off per component (at once, then 1, 2, 4 ... 30 s apart while it keeps
dying) and each is one line in ``<home>/stack/events.jsonl`` (time, component, backend, version,
service, message) that the runner turns into an event of its rollout (``Observations.notices``)
and ``rollout status`` shows. A process that is stopped (SIGSTOP) but alive is not restarted: it is
not dead. Routes survive an nginx restart (its routes file), series survive a Prometheus restart
(same TSDB), every label Redis acknowledged survives its restart (its append-only file, fsynced
before each answer) and the join exporter reads the counters from Redis; a model server comes back
on its address, with the join store's settings, so nothing else has to change.

It runs as a thread of the process that brought the stack up (``LocalStack.up(supervise=True)``,
the demo) or as the detached daemon ``python -m rollout.local.watchdog HOME`` that ``rollout up``
starts and ``rollout down`` stops first. Who calls it: rollout/local/stack.py, the CLI.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rollout.errors import RolloutError
from rollout.local.processes import log_tail
from rollout.local.stackfile import COMPONENTS, alive

if TYPE_CHECKING:
    from rollout.local.stack import LocalStack

log = logging.getLogger("rollout.local.watchdog")
EVENTS_NAME = "events.jsonl"
INTERVAL = 0.5  # seconds between two looks
MAX_BACKOFF = 30.0
BACKOFF_WINDOW = 300.0  # restarts older than this no longer lengthen the back-off
READY_TIMEOUT = 180.0


@dataclass
class _History:
    restarts: deque[float] = field(default_factory=deque)

    def wait(self, now: float) -> float:
        """Seconds to wait before the next restart: 0 the first time, then 1, 2, 4 ... 30."""
        while self.restarts and now - self.restarts[0] > BACKOFF_WINDOW:
            self.restarts.popleft()
        if not self.restarts:
            return 0.0
        delay = min(MAX_BACKOFF, 2.0 ** (len(self.restarts) - 1))
        return max(0.0, self.restarts[-1] + delay - now)


def read_events(home: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """The restart events written since byte ``offset`` of the events file, and the new offset."""
    path = home / "stack" / EVENTS_NAME
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return [], 0
    end = data.rfind(b"\n") + 1  # a line being written is read next time
    events = []
    for line in data[:end].splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events, offset + end


def events_offset(home: Path) -> int:
    """Where the events file ends now (a runner reads only what happens after it started)."""
    try:
        return (home / "stack" / EVENTS_NAME).stat().st_size
    except FileNotFoundError:
        return 0


class Watchdog:
    """Restarts the dead processes of one stack; see the module docstring."""

    def __init__(self, stack: LocalStack, interval: float = INTERVAL) -> None:
        self.stack = stack
        self.interval = interval
        self._history: dict[str, _History] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- one look --------------------------------------------------------------------------------

    def dead(self) -> list[tuple[str, dict[str, Any]]]:
        """(component, its recorded info) of every process that should run and does not."""
        state = self.stack.reload()
        if state is None:  # brought down (`rollout down` stops this daemon first): nothing to watch
            self._stop.set()
            return []
        out = []
        for component in COMPONENTS:
            info = state.get(component, {})
            if info.get("pid") and not info.get("stopped") and not alive(info):
                out.append((component, info))
        for name, info in state.get("backends", {}).items():
            if info.get("pid") and info.get("argv") and not info.get("stopping") and not alive(info):
                out.append((f"backend:{name}", info))
        return out

    def check(self, now: float | None = None) -> list[str]:
        """Restart what died (as far as the back-off allows); the messages of the restarts done."""
        done = []
        for component, info in self.dead():
            now = time.time() if now is None else now
            history = self._history.setdefault(component, _History())
            if history.wait(now) > 0:
                continue
            history.restarts.append(now)
            done.append(self._restart(component, info, len(history.restarts)))
            now = None
        return done

    def _restart(self, component: str, info: dict[str, Any], attempt: int) -> str:
        what = component.removeprefix("backend:")
        detail = {k: info[k] for k in ("service", "version") if k in info}
        pid = info["pid"]  # the restart records the new one in the same dict
        try:
            if component in COMPONENTS:
                self.stack.restart(component)
            else:
                self.stack.restart_backend(what)
            message = f"{what} (pid {pid}) died; restarted (restart {attempt})"
        except (RolloutError, OSError) as exc:
            message = f"{what} (pid {pid}) died; restart {attempt} failed: {exc}"
            log.warning("%s\n%s", message, log_tail(Path(info.get("log", "")), 10))
        self._record({"at": time.time(), "component": component, "message": message, **detail})
        log.warning("%s", message)
        return message

    def _record(self, event: dict[str, Any]) -> None:
        path = self.stack.dir / EVENTS_NAME
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(event) + "\n")

    # --- running ---------------------------------------------------------------------------------

    def run(self) -> None:
        """Look every ``interval`` seconds until ``stop()``."""
        while not self._stop.is_set():
            try:
                self.check()
            except Exception:  # the watchdog must outlive whatever it watches
                log.exception("watchdog: one look failed; trying again")
            self._stop.wait(self.interval)

    def start(self) -> Watchdog:
        self._thread = threading.Thread(target=self.run, name="rollout-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=READY_TIMEOUT)


def main(argv: list[str] | None = None) -> int:
    """``python -m rollout.local.watchdog HOME``: watch the stack under HOME until SIGTERM."""
    import signal

    from rollout.local.stack import LocalStack

    p = argparse.ArgumentParser(prog="python -m rollout.local.watchdog", description=__doc__.splitlines()[0])
    p.add_argument("home", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for attempt in range(20):  # `rollout up` records this daemon just after starting it
        try:
            stack = LocalStack.attach(args.home)
            break
        except RolloutError:
            if attempt == 19:
                raise
            time.sleep(0.25)
    dog = Watchdog(stack)
    signal.signal(signal.SIGTERM, lambda *_: dog._stop.set())
    log.info("watching the stack under %s (pid %d)", args.home, os.getpid())
    dog.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
