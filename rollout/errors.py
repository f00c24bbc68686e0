"""One error hierarchy for bento-rollout.

Every error carries a message a user can act on; text from outside (a response body, a field
of one) enters a message only through ``excerpt``: short, one line, printable ASCII. Errors that may go away by themselves carry a
retry delay (like kopf's ``TemporaryError``); the CLI maps errors to exit codes (like click's
``ClickException.exit_code``: usage and spec errors exit 2).

    RolloutError                      base; exit code 1
    ├── UsageError                    bad command-line use; exit 2
    │   └── RolloutBusyError          a live `rollout run` drives it, or the service has another rollout; exit 2
    ├── SpecError                     invalid rollout spec; names the field; exit 2
    │   └── MetricsAddressRefusedError  spec.metricsAddress not allowed by this controller (addresses.py)
    ├── ModelError                    model store / registry problems
    │   ├── ModelNotFoundError        no such tag in the BentoML model store
    │   ├── ModelIntegrityError       artifact hash does not match the one recorded at training
    │   └── GateFailedError           candidate worse than stable beyond tolerance; exit 3
    ├── StateError                    state file unreadable, unwritable, or disk full
    ├── NotFoundError                 no such rollout / stack / object
    ├── TemporaryError(delay)         worth retrying after ``delay`` seconds
    │   ├── MetricsUnavailableError   metric provider unreachable or query failed
    │   ├── RouterError               data plane could not apply routes
    │   │   └── UnsupportedRouteError a route feature the provider cannot express (also Permanent)
    │   ├── ProcessError              a managed process failed to start or become ready
    │   ├── ConflictError             Kubernetes 409: resourceVersion changed; re-read and retry
    │   └── ApiUnavailableError       Kubernetes API server unreachable, 5xx or 429
    └── PermanentError                will not succeed by retrying
        ├── UnknownProviderError      a router / metric provider / judge name that is not registered
        ├── MetricQueryError          a query returned no value, or several where one was expected
        ├── InvalidObjectError        Kubernetes 400/422: the server rejected the object (its message)
        └── ForbiddenError            Kubernetes 401/403: the credentials may not do this
"""

from __future__ import annotations

import re

EXCERPT = 120  # characters of outside text an error message may carry
_ESCAPES = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-_])")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]+")
_SPACES = re.compile(r"\s+")


def excerpt(text: object, limit: int = EXCERPT) -> str:
    """At most ``limit`` characters of ``text``, safe in a status, an Event or a log line: terminal
    escape sequences dropped, newlines, tabs and every other character that is not printable ASCII
    made one space, runs of spaces one, cut with ``...`` when longer."""
    raw = text if isinstance(text, str) else repr(text)
    raw = raw[: limit * 8]  # bounded work for a huge body; what follows only shortens it
    clean = _SPACES.sub(" ", _UNPRINTABLE.sub(" ", _ESCAPES.sub("", raw))).strip()
    if len(clean) <= limit:
        return clean
    return clean[: max(limit - 3, 0)].rstrip() + "..."


class RolloutError(Exception):
    """Base of every error raised by bento-rollout."""

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(RolloutError):
    exit_code = 2


class RolloutBusyError(UsageError):
    """Refused: a live process already drives the rollout, or another rollout of its service is
    in progress. The message names that process or rollout and how to proceed."""


class SpecError(RolloutError):
    """An invalid rollout spec. ``field`` is the dotted path of the offending field."""

    exit_code = 2

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class MetricsAddressRefusedError(SpecError):
    """``spec.metricsAddress`` is not an address this controller fetches: not on its allow-list, or
    link-local / a cloud metadata address (never fetched). Treated as an invalid spec."""

    def __init__(self, message: str, field: str | None = "spec.metricsAddress") -> None:
        super().__init__(message, field=field)


class ModelError(RolloutError):
    pass


class ModelNotFoundError(ModelError):
    pass


class ModelIntegrityError(ModelError):
    pass


class GateFailedError(ModelError):
    exit_code = 3


class StateError(RolloutError):
    pass


class NotFoundError(RolloutError):
    pass


class TemporaryError(RolloutError):
    """May succeed if retried after ``delay`` seconds."""

    def __init__(self, message: str, delay: float = 1.0) -> None:
        super().__init__(message)
        self.delay = delay


class MetricsUnavailableError(TemporaryError):
    pass


class RouterError(TemporaryError):
    pass


class ProcessError(TemporaryError):
    pass


class PermanentError(RolloutError):
    pass


class UnknownProviderError(PermanentError):
    pass


class MetricQueryError(PermanentError):
    pass


# --- Kubernetes boundary (rollout/k8s/client.py translates ApiException into these) --------------


class ConflictError(TemporaryError):
    """The object changed since it was read (HTTP 409): re-read it and apply the change again."""

    def __init__(self, message: str, delay: float = 0.1) -> None:
        super().__init__(message, delay)


class ApiUnavailableError(TemporaryError):
    """The Kubernetes API server did not answer, answered 5xx, or asked us to slow down (429)."""


class InvalidObjectError(PermanentError):
    """The API server rejected the object (400/422); the message is the server's."""


class ForbiddenError(PermanentError):
    """The credentials in use may not do this (401/403): check the ServiceAccount's Role."""


class UnsupportedRouteError(RouterError, PermanentError):
    """The provider cannot express a route feature (e.g. mirroring with KServe); retrying won't help.

    It is a RouterError (the TrafficRouter contract) and a PermanentError (do not retry).
    """
