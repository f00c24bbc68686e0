"""Where a model server joins feedback labels (and mirrored answers) to its predictions, and who may send them.

One plug-in kind, two providers, picked by ``BENTO_JOIN_STORE`` (an unknown value is an error):

- ``local`` (the default): ``bentos/feedback.py``, one SQLite file per server. Right when each
  version is one server and the router sends a label back to the version that answered (the local
  nginx router does, by ``X-Model-Version``). The server counts labels in its own ``/metrics``;
  mirrored answers are not compared (a shadow's agreement needs the shared store).
- ``redis://host:port/db``: ``bentos/redis_join.py``, one Redis for every pod of every version;
  labels may reach any pod, mirrored answers are joined by request id. ``BENTO_JOIN_PASSWORD``
  (from a Secret) authenticates to Redis. ``bentos/join_exporter.py`` exports the counts.

A regressor's predictions and labels are numbers: both providers count the labelled rows and sum
the absolute and squared errors (``model_feedback_absolute_error_sum``,
``model_feedback_squared_error_sum``) instead of counting correct labels.

Gate inputs are authenticated: with ``BENTO_FEEDBACK_TOKEN`` (or ``BENTO_FEEDBACK_TOKEN_FILE``, a
mounted Secret) set, ``POST /feedback`` needs ``Authorization: Bearer <token>``; anything else is a 401 that records nothing. A shared store refuses to start without a
token: on a cluster the model's public route reaches every pod.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from bentos.parsing import BadRequest

JOIN_STORE_ENV = "BENTO_JOIN_STORE"
TOKEN_ENV = "BENTO_FEEDBACK_TOKEN"
TOKEN_FILE_ENV = "BENTO_FEEDBACK_TOKEN_FILE"
MIN_TOKEN_LENGTH = 16

__all__ = ["Join", "Resolved", "FeedbackAuth", "open_join"]


@dataclass(frozen=True)
class Resolved:
    """What a label did: ``correct`` for this server's version (or the first that answered), and
    every version it was counted for; a duplicate (the same labels again) counts for none. For a
    regressor ``correct`` is 0 and ``absolute_error`` / ``squared_error`` are the sums of
    ``|prediction - label|`` and ``(prediction - label)²`` over the labelled rows (this version's)."""

    received: int
    correct: int
    duplicate: bool = False
    versions: tuple[str, ...] = ()
    absolute_error: float = 0.0
    squared_error: float = 0.0


class Join(Protocol):
    """Predictions by request id; labels and mirrored answers resolve against them."""

    counts_itself: bool  # True: the server counts feedback labels in its own /metrics

    def start(self) -> None: ...

    def close(self) -> None: ...

    def record(self, request_id: str, predicted: Sequence[float]) -> None: ...

    def resolve(self, request_id: str, labels: Sequence[float]) -> Resolved: ...


def _float_env(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, not {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be positive, not {raw!r}")
    return value


def check_env() -> str:
    """The ``BENTO_JOIN_STORE`` value, checked with the token and times it needs (no connection):
    ``bentos/service.py`` calls it before any worker starts, so a wrong setting fails once, fast."""
    where = os.environ.get(JOIN_STORE_ENV, "") or "local"
    _float_env("BENTO_FEEDBACK_FLUSH_SECONDS", 0.05)
    _float_env("BENTO_JOIN_WINDOW_SECONDS", 3600.0)
    auth = FeedbackAuth.from_env()
    if where == "local":
        return where
    if not where.startswith("redis://"):
        raise ValueError(f"{JOIN_STORE_ENV} must be 'local' or a redis://host:port/db URL, not {where!r}")
    if auth.token is None:
        raise ValueError(
            f"{JOIN_STORE_ENV}={where} is shared by every pod: set {TOKEN_ENV} or {TOKEN_FILE_ENV} "
            "(a Secret) so that only your labelling pipeline can send labels"
        )
    return where


def open_join(model: str, version: str, metrics_dir: Path, regression: bool = False) -> Join:
    """The join store ``BENTO_JOIN_STORE`` names, for a server of ``model`` ``version`` (a
    regressor's with ``regression``: predictions and labels are numbers, errors are summed)."""
    where = check_env()
    flush = _float_env("BENTO_FEEDBACK_FLUSH_SECONDS", 0.05)
    window = _float_env("BENTO_JOIN_WINDOW_SECONDS", 3600.0)
    if where == "local":
        from bentos.feedback import FeedbackStore

        return FeedbackStore(
            metrics_dir / "feedback.sqlite3",
            flush_interval=flush,
            retention_seconds=window,
            regression=regression,
        )
    from bentos.redis_join import RedisJoin, connect

    client = connect(where, os.environ.get("BENTO_JOIN_PASSWORD") or None)
    return RedisJoin(
        client, model, version, window_seconds=window, flush_interval=flush, regression=regression
    )


class FeedbackAuth:
    """The bearer token that ``/feedback`` requires (None: open)."""

    def __init__(self, token: str | None) -> None:
        if token is not None and len(token) < MIN_TOKEN_LENGTH:
            raise ValueError(f"the feedback token must be at least {MIN_TOKEN_LENGTH} characters")
        self.token = token
        self._expected = f"Bearer {token}".encode() if token else b""

    @classmethod
    def from_env(cls) -> FeedbackAuth:
        token = os.environ.get(TOKEN_ENV) or None
        path = os.environ.get(TOKEN_FILE_ENV)
        if path:
            try:
                token = Path(path).read_text().strip() or None
            except OSError as exc:
                raise ValueError(f"{TOKEN_FILE_ENV}={path}: {exc.strerror}") from None
        return cls(token)

    def check(self, headers: list[tuple[bytes, bytes]]) -> None:
        """Raise a 401 unless the request carries the token (constant-time comparison)."""
        if self.token is None:
            return
        for key, value in headers:
            if key == b"authorization":
                if hmac.compare_digest(value, self._expected):
                    return
                break
        raise BadRequest(
            401,
            "unauthorized",
            "labels need 'Authorization: Bearer <token>' (the feedback token your operator set); "
            "nothing was recorded",
        )
