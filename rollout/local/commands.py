"""User commands of one local rollout, as files: written by the CLI, read by the runner.

``CommandQueue(<home>/rollouts/<name>/commands)``: ``put`` writes one JSON file per command
(atomically: ``rollout.state.save_text``), ``pending`` lists them oldest first, ``drop`` removes
the ones the engine lists as applied. A command stays queued until a runner applies it, so a
command given while no ``rollout run`` drives the rollout is applied by the next one.
Who calls it: rollout/local/runner.py, rollout/local/control.py, tests.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from rollout.actions import Command, CommandKind
from rollout.state import save_text


class CommandQueue:
    """User commands for one rollout: files written by the CLI, read by the runner."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def put(self, kind: CommandKind, message: str = "") -> Command:
        cmd = Command(id=uuid.uuid4().hex[:12], kind=kind, message=message)
        self.dir.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"id": cmd.id, "kind": cmd.kind.value, "message": message, "at": time.time()})
        save_text(self.dir / f"{time.time_ns()}-{cmd.id}.json", body)
        return cmd

    def pending(self) -> tuple[Command, ...]:
        if not self.dir.is_dir():
            return ()
        out = []
        for path in sorted(self.dir.glob("*.json")):
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
                out.append(
                    Command(id=str(doc["id"]), kind=CommandKind(doc["kind"]), message=doc.get("message", ""))
                )
            except (OSError, ValueError, KeyError):
                continue  # half-written or foreign file: ignored, never fatal
        return tuple(out)

    def drop(self, applied: list[str]) -> None:
        done = set(applied)
        for path in self.dir.glob("*.json") if self.dir.is_dir() else ():
            if path.stem.split("-", 1)[-1] in done:
                path.unlink(missing_ok=True)
