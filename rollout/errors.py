"""One error hierarchy for bento-rollout.

Every error carries a message a user can act on. Errors that may go away by themselves carry a
retry delay (like kopf's ``TemporaryError``); the CLI maps errors to exit codes (like click's
``ClickException.exit_code``: usage and spec errors exit 2).

    RolloutError                      base; exit code 1
    ├── UsageError                    bad command-line use; exit 2
    ├── SpecError                     invalid rollout spec; names the field; exit 2
    ├── ModelError                    model store / registry problems
    │   ├── ModelNotFoundError        no such tag in the BentoML model store
    │   ├── ModelIntegrityError       artifact hash does not match the one recorded at training
    │   └── GateFailedError           candidate worse than stable beyond tolerance; exit 3
    ├── StateError                    state file unreadable, unwritable, or disk full
    ├── NotFoundError                 no such rollout / stack / object
    ├── TemporaryError(delay)         worth retrying after ``delay`` seconds
    │   ├── MetricsUnavailableError   metric provider unreachable or query failed
    │   ├── RouterError               data plane could not apply routes
    │   └── ProcessError              a managed process failed to start or become ready
    └── PermanentError                will not succeed by retrying
        ├── UnknownProviderError      a router / metric provider / judge name that is not registered
        └── MetricQueryError          a query returned no value, or several where one was expected
"""

from __future__ import annotations


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


class SpecError(RolloutError):
    """An invalid rollout spec. ``field`` is the dotted path of the offending field."""

    exit_code = 2

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


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
