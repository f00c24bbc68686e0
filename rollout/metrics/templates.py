"""Built-in analysis templates: PromQL over the metric names of ``rollout.metrics.names``.

A template says which queries to run per version (stable and candidate, over the same window) and
what kind of sample they make: counts of bad out of total (``proportion``), bucketed observations
(``histogram``), counts per predicted class (``categorical``), one histogram per input feature
(``features``) or a regressor's labelled rows with the sums of their absolute and squared errors
(``mean``). It also names the headline number a threshold is compared with and the test the
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
    MEAN = "mean"  # n, sum and sum of squares per version (a regressor's absolute errors)


class Headline(StrEnum):
    """The number a threshold is compared with (and reported as the measurement's value)."""

    VALUE = "value"  # raw query result
    BAD_RATE = "bad-rate"  # candidate bad / total (error rate)
    GOOD_RATE = "good-rate"  # 1 - bad / total (accuracy, agreement)
    QUANTILE = "quantile"  # the template's quantile of the candidate histogram (p99 latency)
    PSI = "psi"  # population stability index, candidate against stable
    KS = "ks"  # Kolmogorov-Smirnov distance of candidate and stable histograms
    MAX_PSI = "max-psi"  # the largest per-feature PSI
    MAE = "mae"  # candidate sum of absolute errors / labelled rows
    RMSE = "rmse"  # sqrt(candidate sum of squared errors / labelled rows)


class Test(StrEnum):
    """The test the comparative judge runs on candidate against stable."""

    TWO_PROPORTION = "two-proportion"
    MANN_WHITNEY = "mann-whitney"
    CHI_SQUARE = "chi-square"
    KS = "ks"
    FEATURE_CHI_SQUARE = "feature-chi-square"
    WELCH = "welch"  # one-sided Welch t test of the mean error (absolute for mae, squared for rmse)
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
    # judge kinds that cannot judge this template although they take its sample kind: kind -> why
    # (the SpecError of ``rollout.analysis.registry.make_judge`` says it)
    refuses: tuple[tuple[str, str], ...] = ()

    @property
    def has_stable(self) -> bool:
        return self.test != Test.NONE

    @property
    def higher_is_better(self) -> bool:
        """Which way the headline is better: a good rate (accuracy, agreement) higher; a bad rate,
        a quantile, a distance (shift, drift) lower."""
        return self.headline == Headline.GOOD_RATE


# the prediction endpoints (``endpoint`` label of requests and durations): feedback posts are not
# model answers and would dilute the error rate and the latency
PREDICT_ENDPOINTS = 'endpoint=~"predict|infer"'


def _sel(metric: str, extra: str = "") -> str:
    sel = f'{n.LABEL_MODEL}="{{{{service}}}}",{n.LABEL_VERSION}="{{{{version}}}}"'
    return f"{metric}{{{sel}{',' + extra if extra else ''}}}"


def _count(metric: str, extra: str = "") -> str:
    # "or vector(0)": a counter never incremented (no 5xx yet) has no series; that is zero, not an error
    return f"sum(increase({_sel(metric, extra)}[{{{{window}}}}])) or vector(0)"


def _sum_by(by: str, series: str, extra: str = "") -> str:
    return f"sum by ({by}) (increase({_sel(series, extra)}[{{{{window}}}}]))"


def _buckets(metric: str, by: str = "le", extra: str = "") -> str:
    return _sum_by(by, metric + "_bucket", extra)


# --- one factory per sample kind: a template is one call naming its series --------------------------


def _proportion(
    name: str,
    description: str,
    *,
    total: str,
    bad: str = "",
    good: str = "",
    where: str = "",
    bad_where: str = "",
    test: Test = Test.TWO_PROPORTION,
) -> Template:
    """``bad`` (headline: the bad rate) or ``good`` (the good rate) out of ``total``, counted over the
    window; ``where`` narrows every count, ``bad_where`` only the bad one."""
    if bool(bad) == bool(good):
        raise ValueError(f"template {name}: a proportion counts either bad or good answers")
    if bad:
        queries = {
            "bad": _count(bad, ",".join(filter(None, (where, bad_where)))),
            "total": _count(total, where),
        }
    else:
        queries = {"total": _count(total, where), "good": _count(good, where)}
    return Template(
        name=name,
        kind=SampleKind.PROPORTION,
        headline=Headline.BAD_RATE if bad else Headline.GOOD_RATE,
        test=test,
        queries=queries,
        description=description,
        series=tuple(dict.fromkeys((total, bad or good))),
    )


def _histogram(
    name: str,
    description: str,
    metric: str,
    *,
    headline: Headline,
    test: Test,
    where: str = "",
    quantile: float | None = None,
) -> Template:
    """The bucket counts of histogram ``metric`` over the window."""
    return Template(
        name=name,
        kind=SampleKind.HISTOGRAM,
        headline=headline,
        test=test,
        queries={"buckets": _buckets(metric, extra=where)},
        quantile=quantile,
        description=description,
        series=(metric + "_bucket",),
    )


def _categorical(name: str, description: str, metric: str, by: str) -> Template:
    """Counts of counter ``metric`` per value of label ``by``; PSI headline, chi-square test."""
    return Template(
        name=name,
        kind=SampleKind.CATEGORICAL,
        headline=Headline.PSI,
        test=Test.CHI_SQUARE,
        queries={"classes": _sum_by(by, metric)},
        description=description,
        series=(metric,),
    )


# the three sums of a mean sample, each labelled with its name under this label
MEAN_PART_LABEL = "part"


def _mean(name: str, description: str, headline: Headline) -> Template:
    """A regressor's labelled rows and the sums of their absolute and squared errors, per version;
    the same three counters for MAE and RMSE, the headline says which is judged. One query (the
    three increases, told apart by ``MEAN_PART_LABEL``), so the sums are of the same scrapes:
    three queries run a few milliseconds apart could see a new scrape in one and not in another,
    and give sums no set of rows can have."""
    parts = (
        ("n", n.FEEDBACK_TOTAL),
        ("total", n.FEEDBACK_ABSOLUTE_ERROR_SUM),
        ("total_sq", n.FEEDBACK_SQUARED_ERROR_SUM),
    )
    sums = " or ".join(
        f'label_replace(sum(increase({_sel(metric)}[{{{{window}}}}])), "{MEAN_PART_LABEL}", "{part}", "", "")'
        for part, metric in parts
    )
    return Template(
        name=name,
        kind=SampleKind.MEAN,
        headline=headline,
        test=Test.WELCH,
        queries={"sums": sums},
        description=description,
        series=tuple(metric for _, metric in parts),
    )


def _features(name: str, description: str, metric: str) -> Template:
    """One histogram of ``metric`` per ``feature`` label; largest-PSI headline, per-feature chi-square."""
    return Template(
        name=name,
        kind=SampleKind.FEATURES,
        headline=Headline.MAX_PSI,
        test=Test.FEATURE_CHI_SQUARE,
        queries={
            "features": _sum_by("feature", metric + "_count"),
            # {{feature}} is filled in by the sampler for each feature found by the query above
            "buckets": _buckets(metric, extra='feature="{{feature}}"'),
        },
        description=description,
        series=(metric + "_bucket",),
    )


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        _proportion(
            "error-rate",
            "share of prediction requests answered with a 5xx status",
            total=n.REQUESTS_TOTAL,
            bad=n.REQUESTS_TOTAL,
            where=PREDICT_ENDPOINTS,
            bad_where='code=~"5.."',
        ),
        _histogram(
            "latency-p99",
            "99th percentile of server-side request duration (seconds)",
            n.REQUEST_DURATION_SECONDS,
            headline=Headline.QUANTILE,
            test=Test.MANN_WHITNEY,
            where=PREDICT_ENDPOINTS,
            quantile=0.99,
        ),
        # bad = feedback_total - feedback_correct_total (wrong answers), computed by the sampler
        _proportion(
            "accuracy",
            "share of answers that matched the delayed feedback label (higher is better)",
            total=n.FEEDBACK_TOTAL,
            good=n.FEEDBACK_CORRECT_TOTAL,
        ),
        _categorical(
            "prediction-shift",
            "PSI of the predicted-class distribution, candidate against stable",
            n.PREDICTIONS_TOTAL,
            by="class",
        ),
        _histogram(
            "confidence-shift",
            "KS distance of the prediction-confidence distribution, candidate against stable",
            n.PREDICTION_CONFIDENCE,
            headline=Headline.KS,
            test=Test.KS,
        ),
        _features(
            "feature-drift",
            "largest per-feature PSI of input z-scores, candidate traffic against stable traffic",
            n.FEATURE_ZSCORE,
        ),
        # regressors (rollout.metrics.names: the server sums |prediction - label| and its square)
        _mean(
            "mae",
            "mean absolute error of the labelled predictions (lower is better)",
            Headline.MAE,
        ),
        _mean(
            "rmse",
            "root mean squared error of the labelled predictions (lower is better)",
            Headline.RMSE,
        ),
        Template(
            name="prediction-value-shift",
            kind=SampleKind.HISTOGRAM,
            headline=Headline.KS,
            test=Test.KS,
            queries={"buckets": _buckets(n.PREDICTION_VALUE)},
            description="KS distance of the predicted-value distribution, candidate against stable",
            series=(n.PREDICTION_VALUE + "_bucket",),
            refuses=(
                (
                    "sequential",
                    "a shift of predicted values has no direction to prove a regression in (the "
                    "sequential judge tests a mean log-value, and predictions may be negative); use "
                    "'comparative' (two-sample KS) or 'threshold' (KS distance)",
                ),
            ),
        ),
        _proportion(
            "shadow-agreement",
            "share of mirrored requests where the candidate gave the stable answer",
            total=n.SHADOW_COMPARISONS_TOTAL,
            good=n.SHADOW_AGREEMENTS_TOTAL,
            test=Test.NONE,
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
