"""One driver per rollout: the lock a process holds while it drives (or ends) a local rollout.

``RunLock(<home>/rollouts/<name>/run.lock)`` is an ``flock`` on that file with the holder's pid
written in it. The kernel drops an flock when its process dies, however it dies, so a SIGKILLed
``rollout run`` never leaves a rollout locked; the pid in the file only serves the message that
names the holder. ``holder()`` tells whether a live process holds it, without taking it.
``exclusive(path)`` is a plain blocking flock for short critical sections (starting a rollout).
Who calls it: rollout/local/runner.py (``rollout run`` holds it while it runs) and
rollout/local/control.py (``rollout abort`` holds it while it ends a rollout nobody drives).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from rollout.errors import RolloutBusyError, StateError

# a prober (``holder``) takes the lock shared for an instant: an acquirer retries this long
ACQUIRE_PATIENCE = 1.0


class RunLock:
    """The flock of one rollout's ``run.lock``; see the module docstring."""

    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        self.name = name
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """This object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock and write our pid in it; RolloutBusyError naming the live holder."""
        if self._fd is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StateError(f"cannot open the run lock {self.path}: {exc.strerror or exc}") from None
        deadline = time.monotonic() + ACQUIRE_PATIENCE
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pid = _read_pid(fd)
                    os.close(fd)
                    raise RolloutBusyError(self.busy_message(pid)) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the last descriptor drops the flock

    def holder(self) -> int | None:
        """The pid of the live process that holds the lock (0 if it has not written it yet), or
        None when nobody does."""
        if self._fd is not None:
            return os.getpid()
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read the run lock {self.path}: {exc.strerror or exc}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # granted only when nobody holds it
            except BlockingIOError:
                return _read_pid(fd) or 0
            return None
        finally:
            os.close(fd)

    def busy_message(self, pid: int | None) -> str:
        who = f"pid {pid}" if pid else "pid unknown"
        return (
            f"rollout {self.name} is already driven by a live `rollout run` ({who}); "
            "wait for it to end, or stop that process first"
        )

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    """The pid the holder wrote; it writes right after it locks, so wait a moment for it."""
    for _ in range(20):
        with contextlib.suppress(OSError, ValueError):
            text = os.pread(fd, 32, 0).decode().strip()
            if text:
                return int(text)
        time.sleep(0.01)
    return None


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an flock on ``path`` (created) for the ``with`` block, waiting for it if need be."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StateError(f"cannot open the lock {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
