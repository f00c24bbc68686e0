"""Persisting a rollout's state: atomic save after every transition, load on start.

``StateStore(path)`` writes ``RolloutState`` as JSON: a temporary file in the same directory,
fsync, rename over the old file, fsync the directory. A reader (``rollout status``, a restarted
runner) therefore sees either the old or the new state, never half of one. When the directory
cannot be written or the disk is full, ``save`` raises ``StateError`` and the old file is intact.
Who calls it: the edges (the local runner, ``rollout status``), never the engine, which is pure.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

from pydantic import ValidationError

from rollout.errors import StateError
from rollout.model import RolloutState


class StateStore:
    """One rollout's state file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> RolloutState | None:
        """The saved state, or None when there is none. StateError when it cannot be read."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read rollout state {self.path}: {exc.strerror or exc}") from None
        try:
            return RolloutState.from_json(data)
        except ValidationError as exc:
            first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": str(exc)}
            where = ".".join(str(p) for p in first["loc"]) or "(document)"
            raise StateError(
                f"rollout state {self.path} is corrupt or from another version ({where}: {first['msg']}); "
                "move it away to start the rollout again"
            ) from None

    def save(self, state: RolloutState) -> None:
        """Replace the saved state atomically. StateError (old file intact) when it cannot."""
        save_text(self.path, state.to_json())

    def delete(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def save_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically and durably (tmp + fsync + rename + fsync dir)."""
    directory = path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StateError(f"cannot create state directory {directory}: {exc.strerror or exc}") from None
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(directory)
    except OSError as exc:
        hint = {
            errno.ENOSPC: "the disk is full",
            errno.EDQUOT: "the disk quota is exceeded",
            errno.EACCES: "permission denied",
            errno.EROFS: "the file system is read-only",
            errno.EPERM: "permission denied",
        }.get(exc.errno or 0, exc.strerror or str(exc))
        raise StateError(f"cannot save rollout state to {path}: {hint}; the previous state is kept") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
