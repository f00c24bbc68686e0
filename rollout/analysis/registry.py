"""Judge registry: one entry per ``JudgeSpec.kind``; ``make_judge(metric)`` builds the judge of a metric.

An unknown kind is an error (``UnknownProviderError``), never a silent fallback to another judge.
A template that cannot be judged the way the spec asks (a raw query under a comparative judge,
shadow agreement against a stable that has none, a template that refuses the kind:
``Template.refuses``, such as prediction-value-shift under the sequential judge) is a
``SpecError`` naming the metric.
Who calls it: the engine (once per metric when an analysis starts), the simulator and the CLI.
"""

from __future__ import annotations

from collections.abc import Callable

from rollout.analysis.base import Judge
from rollout.analysis.comparative import ComparativeJudge
from rollout.analysis.sequential import SequentialJudge
from rollout.analysis.threshold import ThresholdJudge
from rollout.errors import SpecError, UnknownProviderError
from rollout.metrics.templates import SampleKind, Template, get_template
from rollout.spec import Direction, JudgeKind, MetricSpec

JudgeFactory = Callable[[MetricSpec, Template | None], Judge]

JUDGES: dict[str, JudgeFactory] = {
    JudgeKind.THRESHOLD.value: ThresholdJudge,
    JudgeKind.COMPARATIVE.value: ComparativeJudge,
    JudgeKind.SEQUENTIAL.value: SequentialJudge,
}

# which sample kinds each statistical judge can test (the threshold judge takes every kind)
_SUPPORTED: dict[str, set[SampleKind]] = {
    JudgeKind.COMPARATIVE.value: {
        SampleKind.PROPORTION,
        SampleKind.HISTOGRAM,
        SampleKind.CATEGORICAL,
        SampleKind.FEATURES,
        SampleKind.MEAN,
    },
    JudgeKind.SEQUENTIAL.value: {SampleKind.PROPORTION, SampleKind.HISTOGRAM, SampleKind.MEAN},
}


def template_of(metric: MetricSpec) -> Template | None:
    """The metric's built-in template, or None for a raw query. Unknown names are a SpecError."""
    if metric.template is None:
        return None
    try:
        return get_template(metric.template)
    except SpecError as exc:
        reason = exc.message.removeprefix(f"{exc.field}: ") if exc.field else exc.message
        raise SpecError(f"metric {metric.name!r}: {reason}", field="template") from None


def higher_is_better(metric: MetricSpec) -> bool:
    """Which way the metric's value is better (the A/B winner): as written, else its template's
    (accuracy and shadow-agreement higher, the others lower), else lower (a raw query)."""
    if metric.direction is not None:
        return metric.direction == Direction.HIGHER_IS_BETTER
    template = template_of(metric)
    return template is not None and template.higher_is_better


def make_judge(metric: MetricSpec) -> Judge:
    """The judge configured by ``metric.judge`` for this metric."""
    kind = str(getattr(metric.judge.kind, "value", metric.judge.kind))
    factory = JUDGES.get(kind)
    if factory is None:
        raise UnknownProviderError(
            f"metric {metric.name!r}: unknown judge kind {kind!r}; registered: {', '.join(sorted(JUDGES))}"
        )
    template = template_of(metric)
    supported = _SUPPORTED.get(kind)
    if supported is not None:
        if template is None:
            raise SpecError(
                f"metric {metric.name!r}: the {kind} judge compares candidate with stable and needs a "
                f"built-in template; a raw query gives one number — use judge kind 'threshold'",
                field="judge.kind",
            )
        if not template.has_stable:
            raise SpecError(
                f"metric {metric.name!r}: template {template.name!r} has no stable counterpart to compare "
                f"with — use judge kind 'threshold'",
                field="judge.kind",
            )
        refused = dict(template.refuses).get(kind)
        if refused is not None:
            raise SpecError(
                f"metric {metric.name!r}: the {kind} judge cannot judge template {template.name!r}: {refused}",
                field="judge.kind",
            )
        if template.kind not in supported:
            raise SpecError(
                f"metric {metric.name!r}: the {kind} judge does not support template {template.name!r} "
                f"({template.kind.value} samples); use 'comparative' or 'threshold'",
                field="judge.kind",
            )
    return factory(metric, template)


def check_metrics(metrics: list[MetricSpec]) -> None:
    """Build every metric's judge once, so a spec that cannot be judged fails before the rollout
    starts (SpecError naming ``analysis.metrics[i]...``), not as Error measurements later."""
    for i, metric in enumerate(metrics):
        try:
            make_judge(metric)
        except SpecError as exc:
            message = exc.message.removeprefix(f"{exc.field}: ") if exc.field else exc.message
            raise SpecError(message, field=f"analysis.metrics[{i}].{exc.field or 'judge'}") from None
