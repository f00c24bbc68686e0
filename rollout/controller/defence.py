"""The controller's last line of defence: what an unexpected exception inside one reconcile becomes.

A bug or an answer nobody foresaw (an ``IndexError`` from a judge, a ``KeyError`` from a router, a
``ValueError`` from the sampler) must not crash the handler, nor turn into a hot crash loop with a
traceback per tick. Nor may one of ours that retrying cannot mend (a 403 from the controller's
Role for a service the chart does not name, an object the API server rejects) repeat in the log
alone while ``.status`` says nothing. The reconciler catches every exception but a conflict (409:
retried at once on fresh data) and an API server away (nothing could be written), and:

1. holds the rollout with the pure ``rollout.engine.hold_on_error`` (phase Paused, reason
   ReconcileError, weights as they are; one Warning event per distinct error), written to
   ``.status`` conditionally, as every state is;
2. logs it once per distinct error in a row (``ErrorLog``; with its traceback unless it is one of
   ours, whose message says it all), a one-line warning after;
3. raises ``HeldError``, a ``TemporaryError`` whose delay doubles while the same error repeats
   (1 s, 2 s, 4 s ... 30 s): kopf retries the timer after that delay, not at once.

While the error is not forgotten, every engine step is told so (``Observations.edge_error``), so
a reconcile that steps and then fails (a router refusing ``set_routes``) keeps the rollout held
instead of writing Resumed and ReconcileError again on every retry. A reconcile that goes through
forgets the error; the next one returns the rollout to Progressing (the engine does that). A
measurement that fails unexpectedly is not a reconcile error: ``measure.measure`` reports it
as ``MetricResult(error=...)`` (the gate holds, Paused/MetricsUnavailable) and logs it through an
``ErrorLog`` of its own. Who calls it: rollout.controller.reconciler and handlers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Hashable
from dataclasses import dataclass, field

from rollout.errors import RolloutError, TemporaryError, excerpt

log = logging.getLogger("rollout.controller")
MAX_MESSAGE = 300  # an error message is an event message and a status message: keep it short
BASE_DELAY = 1.0
MAX_DELAY = 30.0


class HeldError(TemporaryError):
    """The rollout was held on an unexpected error; retry after ``delay`` (it grows while it repeats)."""


def describe(exc: BaseException) -> str:
    """``IndexError: list index out of range``: the type and the message, bounded, on one line of
    printable ASCII (``rollout.errors.excerpt``: an exception may quote what a server answered)."""
    text = str(exc).strip()
    return excerpt(f"{type(exc).__name__}: {text}" if text else type(exc).__name__, MAX_MESSAGE)


def backoff(repeats: int) -> float:
    """The retry delay after the ``repeats``-th failure in a row with the same error (1-based)."""
    return min(BASE_DELAY * 2 ** max(repeats - 1, 0), MAX_DELAY)


@dataclass
class ErrorLog:
    """The last error of each key (a rollout, a rollout's metric) and how often it came in a row.

    Thread-safe: kopf runs the timers of different rollouts in different threads."""

    _seen: dict[Hashable, tuple[str, int]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, key: Hashable, exc: BaseException, what: str) -> tuple[str, float]:
        """Note ``exc`` for ``key``; log it (a bug: with its traceback) if it is new for the key, else
        one line.
        Returns (the message, the retry delay)."""
        message = describe(exc)
        with self._lock:
            last, repeats = self._seen.get(key, ("", 0))
            repeats = repeats + 1 if message == last else 1
            self._seen[key] = (message, repeats)
        delay = backoff(repeats)
        if repeats == 1:
            trace = None if isinstance(exc, RolloutError) else (type(exc), exc, exc.__traceback__)
            log.error("%s: %s", what, message, exc_info=trace)
        else:
            log.warning("%s: %s (%d times in a row; retry in %gs)", what, message, repeats, delay)
        return message, delay

    def clear(self, key: Hashable) -> None:
        """The key went through cleanly: a later error is new again (and logged in full)."""
        with self._lock:
            gone = self._seen.pop(key, None)
        if gone is not None:
            log.info("%s: recovered after %d failures (%s)", key, gone[1], gone[0])

    def last(self, key: Hashable) -> str | None:
        """The message of the key's last error, while no reconcile of it has gone through since."""
        with self._lock:
            seen = self._seen.get(key)
        return seen[0] if seen is not None else None

    def repeats(self, key: Hashable) -> int:
        with self._lock:
            return self._seen.get(key, ("", 0))[1]
