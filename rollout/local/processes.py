"""Supervised child processes of the local data plane: start, wait ready, stop, clean up.

Every process (nginx, Prometheus, ``bentoml serve``) is started in its own session, so it leads its
own process group and a stop signal reaches its workers too. A ``Supervisor`` stops everything it
started when the interpreter exits and on SIGINT/SIGTERM, unless ``detach()`` was called (``rollout
up`` leaves the stack running; ``rollout down`` in another process then stops it with
``stop_pid``, which checks the recorded start time so a recycled pid is never signalled).
Who calls it: rollout/local/nginx.py, prometheus.py and stack.py; tests and benchmarks.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import httpx

from rollout.errors import ProcessError

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def http_ok(url: str, timeout: float = 1.0) -> Callable[[], bool]:
    """A readiness check: True when GET ``url`` answers 2xx."""

    def check() -> bool:
        try:
            return httpx.get(url, timeout=timeout).is_success
        except httpx.HTTPError:
            return False

    return check


def proc_start_time(pid: int) -> int | None:
    """The process' start time in clock ticks since boot (field 22 of /proc/PID/stat), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has exited; only its parent has not reaped it yet
        return None
    return int(fields[19])


def is_running(pid: int, start_time: int | None = None) -> bool:
    """True while ``pid`` is alive and (if given) is still the process that started at ``start_time``."""
    started = proc_start_time(pid)
    return started is not None and (start_time is None or started == start_time)


def stop_pid(
    pid: int, start_time: int | None = None, timeout: float = 10.0, sig: int = signal.SIGTERM
) -> None:
    """Signal the process group led by ``pid``, wait up to ``timeout`` s, then SIGKILL the group.

    Does nothing when the pid is gone or belongs to another process now (start time differs).
    """
    if not is_running(pid, start_time):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
        if not is_running(pid, start_time):
            break
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # the leader is gone or stuck: nothing of the group survives
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, 0) if is_running(pid, start_time) else os.waitpid(pid, os.WNOHANG)


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def secret_file(path: Path) -> str:
    """The secret kept in ``path`` (mode 0600), made on first use (``secrets.token_urlsafe(32)``,
    43 characters): the nginx admin token, the feedback token, the join store's password. Callers
    check what they read (a file someone edited)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    secret = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    return secret


@dataclass
class ManagedProcess:
    """A child the supervisor started; ``pid`` is also its process-group id."""

    name: str
    argv: list[str]
    pid: int
    start_time: int | None
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return is_running(self.pid, self.start_time)

    def describe(self) -> dict[str, object]:
        return {"pid": self.pid, "startTime": self.start_time, "log": str(self.log_path), "argv": self.argv}


class Supervisor:
    """Starts processes in their own process groups and stops them all on exit or Ctrl-C."""

    def __init__(self, cleanup_on_exit: bool = True) -> None:
        self.processes: dict[str, ManagedProcess] = {}
        self._lock = threading.Lock()
        self._cleanup = cleanup_on_exit
        self._previous: dict[int, object] = {}
        if cleanup_on_exit:
            atexit.register(self._at_exit)
            self._install_signal_handlers()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread; atexit still applies
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)

    def _at_exit(self) -> None:
        if self._cleanup:
            self.stop_all()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._cleanup:
            self.stop_all()
        previous = self._previous.get(signum)
        if callable(previous):
            previous(signum, frame)
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
        else:
            raise SystemExit(128 + signum)

    def detach(self) -> None:
        """Leave every process running when this interpreter exits (``rollout up``)."""
        self._cleanup = False
        for sig, previous in self._previous.items():
            if threading.current_thread() is threading.main_thread():
                signal.signal(sig, previous)  # type: ignore[arg-type]
        self._previous.clear()

    def start(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> ManagedProcess:
        """Start ``argv`` in a new session, stdout+stderr appended to ``log_path``."""
        with self._lock:
            if name in self.processes and self.processes[name].alive():
                raise ProcessError(f"process {name!r} is already running (pid {self.processes[name].pid})")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, **(env or {})}
        with open(log_path, "ab") as log:
            try:
                popen = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=full_env,
                    cwd=cwd,
                    start_new_session=True,
                )
            except OSError as exc:
                raise ProcessError(f"cannot start {name} ({argv[0]}): {exc}", delay=0) from exc
        proc = ManagedProcess(name, list(argv), popen.pid, proc_start_time(popen.pid), log_path, popen)
        with self._lock:
            self.processes[name] = proc
        return proc

    def wait_ready(
        self, proc: ManagedProcess, check: Callable[[], bool], timeout: float = 60.0, interval: float = 0.1
    ) -> float:
        """Poll ``check`` until it is true; seconds waited. ProcessError if it exits or times out."""
        started = time.monotonic()
        while True:
            if not proc.alive():
                code = proc.popen.poll() if proc.popen else None
                raise ProcessError(
                    f"{proc.name} exited (code {code}) before it was ready; log {proc.log_path}:\n"
                    f"{log_tail(proc.log_path)}"
                )
            if check():
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                self.stop(proc.name)
                raise ProcessError(
                    f"{proc.name} was not ready after {timeout:.0f} s; log {proc.log_path}:\n"
                    f"{log_tail(proc.log_path)}"
                )
            time.sleep(interval)

    def stop(self, name: str, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
        """Stop one process group (``sig``, then SIGKILL after ``timeout`` s). Unknown names are ignored."""
        with self._lock:
            proc = self.processes.pop(name, None)
        if proc is None:
            return
        if proc.popen is not None and proc.popen.poll() is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # the leader exited: kill any orphaned workers
            return
        stop_pid(proc.pid, proc.start_time, timeout=timeout, sig=sig)
        if proc.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=1)

    def stop_all(self, timeout: float = 10.0) -> None:
        """Stop every process this supervisor started, newest first."""
        for name in reversed(list(self.processes)):
            self.stop(name, timeout=timeout)
