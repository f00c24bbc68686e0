"""Built-in analysis templates: PromQL over the metric names of ``rollout.metrics.names``.

A template says which queries to run per version (stable and candidate, over the same window) and
what kind of sample they make: counts of bad out of total (``proportion``), bucketed observations
(``histogram``), counts per predicted class (``categorical``) or one histogram per input feature
(``features``). It also names the headline number a threshold is compared with and the test the
comparative judge runs. Placeholders: ``{{service}}`` (the ``model`` label), ``{{stable}}``,
``{{candidate}}``, ``{{version}}`` (the ``version`` label: the part after ':' of a model tag) and
``{{window}}`` (a PromQL duration such as ``30s``).

Who calls it: ``rollout.metrics.sampler`` (to run the queries) and the judges in
``rollout.analysis`` (to read the headline and the test). Raw ``query`` metrics use no template.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from enum import StrEnum

from rollout.errors import SpecError
from rollout.metrics import names as n


class SampleKind(StrEnum):
    VALUE = "value"  # a raw query: one number
    PROPORTION = "proportion"  # bad / total per version
    HISTOGRAM = "histogram"  # bucket counts per version
    CATEGORICAL = "categorical"  # counts per class per version
    FEATURES = "features"  # one histogram per input feature per version


class Headline(StrEnum):
    """The number a threshold is compared with (and reported as the measurement's value)."""

    VALUE = "value"  # raw query result
    BAD_RATE = "bad-rate"  # candidate bad / total (error rate)
    GOOD_RATE = "good-rate"  # 1 - bad / total (accuracy, agreement)
    QUANTILE = "quantile"  # the template's quantile of the candidate histogram (p99 latency)
    PSI = "psi"  # population stability index, candidate against stable
    KS = "ks"  # Kolmogorov-Smirnov distance of candidate and stable histograms
    MAX_PSI = "max-psi"  # the largest per-feature PSI


class Test(StrEnum):
    """The test the comparative judge runs on candidate against stable."""

    TWO_PROPORTION = "two-proportion"
    MANN_WHITNEY = "mann-whitney"
    CHI_SQUARE = "chi-square"
    KS = "ks"
    FEATURE_CHI_SQUARE = "feature-chi-square"
    NONE = "none"  # no stable counterpart (shadow agreement): threshold only


@dataclass(frozen=True)
class Template:
    name: str
    kind: SampleKind
    headline: Headline
    test: Test
    # role -> PromQL with placeholders, evaluated once per version ({{version}} filled in)
    queries: dict[str, str]
    quantile: float | None = None
    description: str = ""
    # the series this template needs, for error messages and docs
    series: tuple[str, ...] = field(default_factory=tuple)

    @property
    def has_stable(self) -> bool:
        return self.test != Test.NONE


# the prediction endpoints (``endpoint`` label of requests and durations): feedback posts are not
# model answers and would dilute the error rate and the latency
PREDICT_ENDPOINTS = 'endpoint=~"predict|infer"'


def _sel(metric: str, extra: str = "") -> str:
    sel = f'{n.LABEL_MODEL}="{{{{service}}}}",{n.LABEL_VERSION}="{{{{version}}}}"'
    return f"{metric}{{{sel}{',' + extra if extra else ''}}}"


def _count(metric: str, extra: str = "") -> str:
    # "or vector(0)": a counter never incremented (no 5xx yet) has no series; that is zero, not an error
    return f"sum(increase({_sel(metric, extra)}[{{{{window}}}}])) or vector(0)"


def _buckets(metric: str, by: str = "le", extra: str = "") -> str:
    return f"sum by ({by}) (increase({_sel(metric + '_bucket', extra)}[{{{{window}}}}]))"


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template(
            name="error-rate",
            kind=SampleKind.PROPORTION,
            headline=Headline.BAD_RATE,
            test=Test.TWO_PROPORTION,
            queries={
                "bad": _count(n.REQUESTS_TOTAL, f'{PREDICT_ENDPOINTS},code=~"5.."'),
                "total": _count(n.REQUESTS_TOTAL, PREDICT_ENDPOINTS),
            },
            description="share of prediction requests answered with a 5xx status",
            series=(n.REQUESTS_TOTAL,),
        ),
        Template(
            name="latency-p99",
            kind=SampleKind.HISTOGRAM,
            headline=Headline.QUANTILE,
            test=Test.MANN_WHITNEY,
            queries={"buckets": _buckets(n.REQUEST_DURATION_SECONDS, extra=PREDICT_ENDPOINTS)},
            quantile=0.99,
            description="99th percentile of server-side request duration (seconds)",
            series=(n.REQUEST_DURATION_SECONDS + "_bucket",),
        ),
        Template(
            name="accuracy",
            kind=SampleKind.PROPORTION,
            headline=Headline.GOOD_RATE,
            test=Test.TWO_PROPORTION,
            # bad = feedback_total - feedback_correct_total (wrong answers), computed by the sampler
            queries={"total": _count(n.FEEDBACK_TOTAL), "good": _count(n.FEEDBACK_CORRECT_TOTAL)},
            description="share of answers that matched the delayed feedback label (higher is better)",
            series=(n.FEEDBACK_TOTAL, n.FEEDBACK_CORRECT_TOTAL),
        ),
        Template(
            name="prediction-shift",
            kind=SampleKind.CATEGORICAL,
            headline=Headline.PSI,
            test=Test.CHI_SQUARE,
            queries={"classes": f"sum by (class) (increase({_sel(n.PREDICTIONS_TOTAL)}[{{{{window}}}}]))"},
            description="PSI of the predicted-class distribution, candidate against stable",
            series=(n.PREDICTIONS_TOTAL,),
        ),
        Template(
            name="confidence-shift",
            kind=SampleKind.HISTOGRAM,
            headline=Headline.KS,
            test=Test.KS,
            queries={"buckets": _buckets(n.PREDICTION_CONFIDENCE)},
            description="KS distance of the prediction-confidence distribution, candidate against stable",
            series=(n.PREDICTION_CONFIDENCE + "_bucket",),
        ),
        Template(
            name="feature-drift",
            kind=SampleKind.FEATURES,
            headline=Headline.MAX_PSI,
            test=Test.FEATURE_CHI_SQUARE,
            queries={
                "features": f"sum by (feature) (increase({_sel(n.FEATURE_ZSCORE + '_count')}[{{{{window}}}}]))",
                # {{feature}} is filled in by the sampler for each feature found by the query above
                "buckets": _buckets(n.FEATURE_ZSCORE, extra='feature="{{feature}}"'),
            },
            description="largest per-feature PSI of input z-scores, candidate traffic against stable traffic",
            series=(n.FEATURE_ZSCORE + "_bucket",),
        ),
        Template(
            name="shadow-agreement",
            kind=SampleKind.PROPORTION,
            headline=Headline.GOOD_RATE,
            test=Test.NONE,
            queries={"total": _count(n.SHADOW_COMPARISONS_TOTAL), "good": _count(n.SHADOW_AGREEMENTS_TOTAL)},
            description="share of mirrored requests where the candidate gave the stable answer",
            series=(n.SHADOW_COMPARISONS_TOTAL, n.SHADOW_AGREEMENTS_TOTAL),
        ),
    )
}


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        known = ", ".join(sorted(TEMPLATES))
        raise SpecError(f"unknown template {name!r}; built-in templates: {known}", field="template") from None


def version_label(model_tag: str) -> str:
    """'iris:v2' -> 'v2' (the ``version`` label the service exports); a bare name stays as it is."""
    return model_tag.split(":", 1)[1] if ":" in model_tag else model_tag


def promql_duration(seconds: float) -> str:
    """Seconds -> a PromQL range duration: whole seconds, at least 1s (``30s``, ``90s``)."""
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a query window must be a positive number of seconds, got {seconds}")
    return f"{max(1, math.ceil(seconds))}s"


_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def render(query: str, **values: str) -> str:
    """Fill ``{{name}}`` placeholders. An unknown placeholder is a spec error naming it."""

    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in values:
            known = ", ".join("{{" + k + "}}" for k in sorted(values))
            raise SpecError(f"unknown placeholder {{{{{key}}}}} in query; known: {known}", field="query")
        return values[key]

    return _PLACEHOLDER.sub(sub, query)
