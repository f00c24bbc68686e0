"""Turn a metric spec into a sample: render the template's PromQL, run it, build the Sample.

``collect(metric, provider, ctx)`` runs the queries of the metric's built-in template once for the
stable and once for the candidate version over the same window (or one raw query for the
candidate) through the ``MetricProvider`` interface and returns the sample the judge takes.
Sequential judges get cumulative data (the window is the time since the analysis started), every
other judge the analysis window. Provider failures propagate unchanged (``MetricsUnavailableError``,
``MetricQueryError``); the caller turns them into a measurement in phase Error.
Who calls it: the local runner and the controller, at every analysis interval.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from rollout.analysis.base import (
    CategoricalSample,
    FeatureSample,
    HistogramSample,
    MeanSample,
    ProportionSample,
    Sample,
    ValueSample,
)
from rollout.metrics.base import MetricProvider
from rollout.metrics.templates import (
    MEAN_PART_LABEL,
    SampleKind,
    Template,
    get_template,
    promql_duration,
    render,
    version_label,
)
from rollout.spec import JudgeKind, MetricSpec


@dataclass(frozen=True)
class SampleContext:
    """Where and over what time to measure.

    ``stable`` and ``candidate`` are model tags (``iris:v1``) or bare version labels (``v1``);
    ``window`` is the analysis window in seconds; ``elapsed`` the seconds since this analysis
    started (cumulative judges query that far back; None = use ``window``).
    """

    service: str
    stable: str
    candidate: str
    window: float
    elapsed: float | None = None

    def range_for(self, metric: MetricSpec) -> str:
        seconds = self.window
        if metric.judge.kind == JudgeKind.SEQUENTIAL and self.elapsed is not None:
            seconds = max(self.elapsed, 1.0)
        return promql_duration(seconds)

    def values(self, metric: MetricSpec, version: str) -> dict[str, str]:
        return {
            "service": self.service,
            "stable": version_label(self.stable),
            "candidate": version_label(self.candidate),
            "version": version,
            "window": self.range_for(metric),
        }


def render_queries(metric: MetricSpec, ctx: SampleContext) -> dict[str, dict[str, str]]:
    """version role ('stable' / 'candidate') -> query role -> rendered PromQL (no I/O).

    A raw query is rendered once, for the candidate. ``{{feature}}`` stays in feature-drift bucket
    queries until the features are known.
    """
    if metric.query is not None:
        return {
            "candidate": {"value": render(metric.query, **ctx.values(metric, version_label(ctx.candidate)))}
        }
    template = get_template(metric.template or "")
    out: dict[str, dict[str, str]] = {}
    for role, tag in (("stable", ctx.stable), ("candidate", ctx.candidate)):
        values = ctx.values(metric, version_label(tag)) | {"feature": "{{feature}}"}
        out[role] = {name: render(q, **values) for name, q in template.queries.items()}
    return out


_LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def label_value(key: str, label: str) -> str:
    """The value of ``label`` in a provider's series key.

    Keys are the bare value when the query groups by one label (``0.5``), or a rendering of several
    labels: ``le=0.5,version=v2`` (the Prometheus provider) or ``{le="0.5"}``.
    """
    pairs = dict(_LABEL_RE.findall(key))
    if pairs:
        return pairs.get(label, key)
    for part in key.split(","):
        if part.startswith(label + "="):
            return part[len(label) + 1 :]
    return key


def _number(x: float) -> float:
    return 0.0 if x is None or math.isnan(x) else float(x)


def _vector(provider: MetricProvider, query: str, label: str) -> dict[str, float]:
    return {label_value(k, label): _number(v) for k, v in provider.query_vector(query).items()}


def _per_bucket(cumulative: list[float]) -> tuple[float, ...]:
    """Cumulative ``le`` counts -> per-bucket counts. ``increase()`` extrapolates every bucket on its
    own, so the cumulative values can dip by a hair: they are made monotone first."""
    c = np.maximum.accumulate(np.maximum(np.asarray(cumulative, dtype=float), 0.0))
    return tuple(float(x) for x in np.diff(c, prepend=0.0))


def _le(value: str) -> float:
    return math.inf if value in ("+Inf", "Inf", "inf") else float(value)


def _histogram(stable: dict[str, float], candidate: dict[str, float]) -> HistogramSample:
    bounds = sorted({_le(k) for k in stable} | {_le(k) for k in candidate})
    counts = []
    for vec in (candidate, stable):
        by_bound = {_le(k): v for k, v in vec.items()}
        cum, last = [], 0.0
        for b in bounds:
            last = by_bound.get(b, last)  # a bucket missing from one version: carry the cumulative count
            cum.append(last)
        counts.append(_per_bucket(cum))
    return HistogramSample(tuple(bounds), counts[0], counts[1])


def _proportion(provider: MetricProvider, queries: dict[str, dict[str, str]]) -> ProportionSample:
    out = []
    for role in ("candidate", "stable"):
        q = queries[role]
        total = max(_number(provider.run_query(q["total"])), 0.0)
        if "bad" in q:
            bad = _number(provider.run_query(q["bad"]))
        else:
            bad = total - _number(provider.run_query(q["good"]))
        out.append((min(max(bad, 0.0), total), total))
    (cb, ct), (sb, st) = out
    return ProportionSample(cb, ct, sb, st)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _features(provider: MetricProvider, queries: dict[str, dict[str, str]]) -> FeatureSample:
    names: set[str] = set()
    for role in ("stable", "candidate"):
        names |= set(_vector(provider, queries[role]["features"], "feature"))
    hists = []
    for name in sorted(names):
        vecs = {
            role: _vector(provider, render(queries[role]["buckets"], feature=_escape(name)), "le")
            for role in ("stable", "candidate")
        }
        hists.append(_histogram(vecs["stable"], vecs["candidate"]))
    return FeatureSample(tuple(sorted(names)), tuple(hists))


def _mean(provider: MetricProvider, queries: dict[str, dict[str, str]]) -> MeanSample:
    """A regressor's labelled rows and error sums per version: one query each (the increase() of
    the three counters, over the same scrapes); a sum without a series is 0. Values pass as
    Prometheus gives them: the judges name a sample that cannot be."""
    values = []
    for role in ("candidate", "stable"):
        parts = _vector(provider, queries[role]["sums"], MEAN_PART_LABEL)
        values += [parts.get(part, 0.0) for part in ("n", "total", "total_sq")]
    return MeanSample(*values)


def collect(metric: MetricSpec, provider: MetricProvider, ctx: SampleContext) -> Sample:
    """Run the metric's queries and build its sample. Provider errors propagate."""
    queries = render_queries(metric, ctx)
    if metric.query is not None:
        return ValueSample(_number(provider.run_query(queries["candidate"]["value"])))
    template: Template = get_template(metric.template or "")
    if template.kind == SampleKind.PROPORTION:
        if not template.has_stable:
            # shadow agreement is counted under the candidate's version only
            q = queries["candidate"]
            total = max(_number(provider.run_query(q["total"])), 0.0)
            bad = min(max(total - _number(provider.run_query(q["good"])), 0.0), total)
            return ProportionSample(bad, total, 0.0, 0.0)
        return _proportion(provider, queries)
    if template.kind == SampleKind.HISTOGRAM:
        vecs = {role: _vector(provider, queries[role]["buckets"], "le") for role in ("stable", "candidate")}
        return _histogram(vecs["stable"], vecs["candidate"])
    if template.kind == SampleKind.CATEGORICAL:
        vecs = {
            role: _vector(provider, queries[role]["classes"], "class") for role in ("stable", "candidate")
        }
        cats = tuple(sorted(set(vecs["stable"]) | set(vecs["candidate"])))
        return CategoricalSample(
            cats,
            tuple(max(vecs["candidate"].get(c, 0.0), 0.0) for c in cats),
            tuple(max(vecs["stable"].get(c, 0.0), 0.0) for c in cats),
        )
    if template.kind == SampleKind.FEATURES:
        return _features(provider, queries)
    if template.kind == SampleKind.MEAN:
        return _mean(provider, queries)
    raise AssertionError(f"template {template.name!r} has an unhandled kind {template.kind}")
