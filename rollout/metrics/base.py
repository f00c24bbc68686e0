"""The MetricProvider interface: the only code that queries metrics lives behind it.

Like Flagger's provider interface it is tiny: run one query, get numbers back; ``is_online`` for
health. Failures raise ``MetricsUnavailableError`` (provider unreachable, a TemporaryError) or
``MetricQueryError`` (no value / several values). The analysis layer turns either into a
measurement in phase Error; they never kill the rollout loop.
Who calls it: the local runner and the controller, when the engine asks for a measurement.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class MetricProvider(Protocol):
    def run_query(self, query: str) -> float:
        """Evaluate an instant query that must yield exactly one number."""

    def query_vector(self, query: str) -> dict[str, float]:
        """Evaluate an instant query; the result keyed by a label rendering (``le``, ``class``...)."""

    def is_online(self) -> bool:
        """True when the provider answers."""
