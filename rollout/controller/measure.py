"""The controller's Measure actions: each metric of the analysis queried through the rollout's
metric provider for the window the engine asked for. Every failure is a measurement in phase
Error, never raised: ours (Prometheus unreachable, no value, no Prometheus address at all) as
they are, any other exception (a bug, an answer nobody foresaw) with its type, logged with its
traceback once while it repeats (``defence.ErrorLog``).
Who calls it: rollout.controller.reconciler.
"""

from __future__ import annotations

from collections.abc import Callable

from rollout.actions import Measure, MetricResult
from rollout.errors import RolloutError, excerpt
from rollout.metrics.base import MetricProvider
from rollout.metrics.sampler import SampleContext, collect
from rollout.model import RolloutState
from rollout.spec import RolloutSpec

from .defence import MAX_MESSAGE, ErrorLog


def measure(
    metrics: Callable[[RolloutSpec], MetricProvider],
    errors: ErrorLog,
    clock: Callable[[], float],
    rollout: tuple[str, str],
    spec: RolloutSpec,
    state: RolloutState,
    actions: list[Measure],
) -> tuple[MetricResult, ...]:
    """Run ``actions`` for the rollout ``(namespace, name)``; one result per action, in order."""
    namespace, name = rollout
    provider: MetricProvider | None = None
    by_name = {m.name: m for m in spec.analysis.metrics}
    out = []
    for a in actions:
        started = clock()
        elapsed = started - state.analysis_started_at if state.analysis_started_at else None
        ctx = SampleContext(spec.service, spec.stable.model, spec.candidate.model, a.window, elapsed)
        key = (namespace, name, a.metric)
        try:
            provider = provider or metrics(spec)
            sample = collect(by_name[a.metric], provider, ctx)
        except RolloutError as exc:  # unreachable Prometheus, no value: a measurement in phase Error
            error = excerpt(str(exc), MAX_MESSAGE)  # one line into the status and the Events
        except Exception as exc:
            error, _ = errors.record(key, exc, f"{namespace}/{name}: measuring {a.metric}")
        else:
            errors.clear(key)
            out.append(MetricResult(a.metric, at=started, sample=sample, elapsed=clock() - started))
            continue
        out.append(MetricResult(a.metric, at=started, error=error, elapsed=clock() - started))
    return tuple(out)
