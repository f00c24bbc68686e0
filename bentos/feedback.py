"""Joining feedback (the true label) to an earlier prediction by request id, across workers.

A server runs several worker processes and a feedback request may land in a different worker than
the prediction it refers to, so predictions are kept in one small SQLite file per server (WAL mode,
next to the server's metrics files). The hot path only appends ``(request_id, predicted classes)`` (a regressor's: values)
to an in-memory list; a background thread writes the list every 50 ms and prunes rows older than
the retention time. A feedback request flushes its own worker's list, then looks the id up, waiting
briefly for other workers' flushes before answering 404. Called by ``bentos/app.py``.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from bentos.background import Buffer, Periodic
from bentos.join import Resolved
from bentos.parsing import BadRequest

logger = logging.getLogger("bentos.feedback")

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    request_id TEXT PRIMARY KEY,
    predicted TEXT NOT NULL,
    label TEXT,
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS predictions_ts ON predictions (ts);
"""


def errors_of(predicted: Sequence[float], labels: Sequence[float]) -> tuple[float, float]:
    """A regressor's ``(sum |prediction - label|, sum (prediction - label)²)``; 422 when they
    overflow a double (labels this far from the predictions cannot be counted)."""
    errors = [p - t for p, t in zip(predicted, labels, strict=True)]
    absolute = math.fsum(abs(e) for e in errors)
    squared = math.fsum(e * e for e in errors)  # inf when it overflows (``**`` would raise)
    if not (math.isfinite(absolute) and math.isfinite(squared)):
        raise BadRequest(
            422, "value_out_of_range", "labels this far from the predictions overflow the error sums"
        )
    return absolute, squared


class FeedbackStore:
    """Predictions by request id for one server; feedback resolves against them once.

    The ``local`` :class:`bentos.join.Join`: the server counts labels in its own metrics. A
    regressor's store (``regression``) keeps predicted values and sums the errors of a label."""

    counts_itself = True

    def __init__(
        self,
        path: Path,
        flush_interval: float = 0.05,
        retention_seconds: float = 3600.0,
        lookup_wait: float = 0.6,
        regression: bool = False,
    ) -> None:
        self.path = path
        self.regression = regression
        self.flush_interval = flush_interval
        self.retention_seconds = retention_seconds
        self.lookup_wait = lookup_wait
        self._pending: Buffer[tuple[str, str, float]] = Buffer()
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), timeout=10.0, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._last_prune = 0.0
        self._flusher = Periodic("feedback-flush", flush_interval, self._step)

    def start(self) -> None:
        self._flusher.start()

    def close(self) -> None:
        self._flusher.stop()
        self._db.close()

    def record(self, request_id: str, predicted: Sequence[float]) -> None:
        """Hot path: remember what was predicted for ``request_id`` (written to disk later)."""
        self._pending.append((request_id, ",".join(map(str, predicted)), time.time()))

    def flush(self) -> None:
        with self._lock:
            batch = self._pending.take()
            if not batch:
                return
            try:
                # one transaction per batch (autocommit would commit, and write the WAL, per row)
                with self._db:
                    self._db.execute("BEGIN")
                    self._db.executemany(
                        "INSERT OR REPLACE INTO predictions (request_id, predicted, label, ts) VALUES (?, ?, NULL, ?)",
                        batch,
                    )
            except sqlite3.Error as exc:
                logger.warning("dropped %d predictions from the feedback store: %s", len(batch), exc)

    def _prune(self) -> None:
        with self._lock:
            try:
                self._db.execute(
                    "DELETE FROM predictions WHERE ts < ?", (time.time() - self.retention_seconds,)
                )
            except sqlite3.Error as exc:
                logger.warning("could not prune the feedback store: %s", exc)

    def _step(self) -> None:
        self.flush()
        now = time.monotonic()
        if now - self._last_prune > 30.0:
            self._last_prune = now
            self._prune()

    def resolve(self, request_id: str, labels: Sequence[float]) -> Resolved:
        """Record ``labels`` as the truth for ``request_id``.

        Blocking (SQLite): run it in a thread. Raises BadRequest 404 for an unknown (or expired)
        request id, 409 when other labels for it were already recorded (the same labels again are
        a duplicate, counted once), 422 when the number of labels does not match the number of
        predicted rows (or a regressor's errors overflow a double).
        """
        self.flush()
        deadline = time.monotonic() + self.lookup_wait
        while True:
            with self._lock:
                row = self._db.execute(
                    "SELECT predicted, label FROM predictions WHERE request_id = ?", (request_id,)
                ).fetchone()
            if row is not None or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        if row is None:
            raise BadRequest(
                404,
                "unknown_request_id",
                f"no prediction with request id {request_id!r} on this server (unknown, or older than "
                f"{self.retention_seconds:.0f} s)",
            )
        predicted = [float(v) if self.regression else int(v) for v in row[0].split(",")]
        sent = ",".join(map(str, labels))
        if row[1] is not None:
            return self._again(request_id, labels, row[1] == sent)
        if len(labels) != len(predicted):
            raise BadRequest(
                422,
                "label_count",
                f"request {request_id!r} predicted {len(predicted)} rows; send {len(predicted)} labels "
                f"({'label' if len(predicted) == 1 else 'labels'})",
            )
        errors = errors_of(predicted, labels) if self.regression else None
        with self._lock:
            cursor = self._db.execute(
                "UPDATE predictions SET label = ? WHERE request_id = ? AND label IS NULL", (sent, request_id)
            )
        if cursor.rowcount == 0:  # another worker recorded labels between the SELECT and here
            with self._lock:
                again = self._db.execute(
                    "SELECT label FROM predictions WHERE request_id = ?", (request_id,)
                ).fetchone()
            return self._again(request_id, labels, again is not None and again[0] == sent)
        if errors is not None:
            return Resolved(len(labels), 0, False, (), *errors)
        correct = sum(1 for p, t in zip(predicted, labels, strict=True) if p == t)
        return Resolved(len(labels), correct, False, ())

    @staticmethod
    def _again(request_id: str, labels: Sequence[float], same: bool) -> Resolved:
        if same:
            return Resolved(len(labels), 0, True)
        raise BadRequest(
            409, "feedback_exists", f"other labels for request id {request_id!r} were already recorded"
        )
