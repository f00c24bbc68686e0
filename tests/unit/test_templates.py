"""Built-in templates render the PromQL a user would expect; the sampler turns recorded query results
into the samples the judges take, and lets provider failures through."""

from __future__ import annotations

import math

import pytest

from rollout.analysis.base import (
    CategoricalSample,
    FeatureSample,
    HistogramSample,
    ProportionSample,
    ValueSample,
)
from rollout.errors import MetricQueryError, MetricsUnavailableError, SpecError
from rollout.metrics import names
from rollout.metrics.sampler import SampleContext, collect, label_value, render_queries
from rollout.metrics.templates import TEMPLATES, promql_duration, render, version_label
from rollout.spec import MetricSpec

CTX = SampleContext(service="iris", stable="iris:v1", candidate="iris:v2", window=30.0, elapsed=95.0)


def metric(**kw) -> MetricSpec:
    kw.setdefault("name", "m")
    if kw.get("judge", {}).get("kind", "threshold") == "threshold":
        kw.setdefault("threshold", {"max": 1.0})
    return MetricSpec.model_validate(kw)


class RecordedProvider:
    """The MetricProvider interface over recorded answers; an unknown query has no value."""

    def __init__(
        self, scalars: dict[str, float] | None = None, vectors: dict[str, dict[str, float]] | None = None
    ):
        self.scalars = scalars or {}
        self.vectors = vectors or {}
        self.asked: list[str] = []

    def run_query(self, query: str) -> float:
        self.asked.append(query)
        if query not in self.scalars:
            raise MetricQueryError(f"no value: {query}")
        return self.scalars[query]

    def query_vector(self, query: str) -> dict[str, float]:
        self.asked.append(query)
        return self.vectors.get(query, {})

    def is_online(self) -> bool:
        return True


def test_error_rate_queries_select_5xx_of_each_version_over_the_window():
    q = render_queries(metric(template="error-rate"), CTX)
    assert q["candidate"]["bad"] == (
        'sum(increase(model_requests_total{model="iris",version="v2",endpoint=~"predict|infer",code=~"5.."}[30s]))'
        " or vector(0)"
    )
    assert q["stable"]["total"] == (
        'sum(increase(model_requests_total{model="iris",version="v1",endpoint=~"predict|infer"}[30s])) or vector(0)'
    )


def test_every_template_uses_the_shared_metric_names_and_leaves_no_placeholder():
    exported = {
        names.REQUESTS_TOTAL,
        names.REQUEST_DURATION_SECONDS + "_bucket",
        names.PREDICTIONS_TOTAL,
        names.PREDICTION_CONFIDENCE + "_bucket",
        names.FEATURE_ZSCORE + "_bucket",
        names.FEATURE_ZSCORE + "_count",
        names.FEEDBACK_TOTAL,
        names.FEEDBACK_CORRECT_TOTAL,
        names.SHADOW_COMPARISONS_TOTAL,
        names.SHADOW_AGREEMENTS_TOTAL,
        names.FEEDBACK_ABSOLUTE_ERROR_SUM,
        names.FEEDBACK_SQUARED_ERROR_SUM,
        names.PREDICTION_VALUE + "_bucket",
    }
    for name in TEMPLATES:
        spec = metric(template=name)
        for role, queries in render_queries(spec, CTX).items():
            for text in queries.values():
                assert "{{" not in text.replace("{{feature}}", ""), (name, text)
                series = text.split("increase(")[1].split("{")[0]
                assert series in exported, (name, series)
                assert f'version="{"v2" if role == "candidate" else "v1"}"' in text


def test_sequential_metrics_query_cumulatively_since_the_analysis_started():
    seq = metric(template="error-rate", judge={"kind": "sequential"})
    assert "[95s]" in render_queries(seq, CTX)["candidate"]["total"]
    comp = metric(template="error-rate", judge={"kind": "comparative"})
    assert "[30s]" in render_queries(comp, CTX)["candidate"]["total"]


def test_raw_query_fills_placeholders_and_unknown_placeholder_is_a_spec_error():
    q = render_queries(
        metric(query='x{model="{{service}}",v="{{candidate}}",s="{{stable}}"}[{{window}}]'), CTX
    )
    assert q == {"candidate": {"value": 'x{model="iris",v="v2",s="v1"}[30s]'}}
    with pytest.raises(SpecError, match=r"\{\{nope\}\}"):
        render_queries(metric(query="x{a='{{nope}}'}"), CTX)


def test_helpers():
    assert version_label("iris:v2") == "v2" and version_label("v2") == "v2"
    assert promql_duration(30) == "30s" and promql_duration(0.2) == "1s" and promql_duration(90.5) == "91s"
    assert render("{{ a }}-{{b}}", a="1", b="2") == "1-2"
    assert label_value("0.5", "le") == "0.5"
    assert label_value("le=0.5,version=v2", "le") == "0.5"
    assert label_value('{le="+Inf"}', "le") == "+Inf"


def _recorded_error_rate(bad_c: float, all_c: float, bad_s: float | None, all_s: float) -> RecordedProvider:
    q = render_queries(metric(template="error-rate"), CTX)
    scalars = {q["candidate"]["bad"]: bad_c, q["candidate"]["total"]: all_c, q["stable"]["total"]: all_s}
    if bad_s is not None:
        scalars[q["stable"]["bad"]] = bad_s
    return RecordedProvider(scalars)


def test_error_rate_sample_from_recorded_results():
    sample = collect(metric(template="error-rate"), _recorded_error_rate(3.0, 120.0, 1.0, 1080.0), CTX)
    assert sample == ProportionSample(3.0, 120.0, 1.0, 1080.0)


def test_accuracy_bad_is_feedback_minus_correct():
    spec = metric(template="accuracy")
    q = render_queries(spec, CTX)
    p = RecordedProvider(
        {
            q["candidate"]["total"]: 50.0,
            q["candidate"]["good"]: 41.0,
            q["stable"]["total"]: 80.0,
            q["stable"]["good"]: 78.0,
        }
    )
    assert collect(spec, p, CTX) == ProportionSample(9.0, 50.0, 2.0, 80.0)


def test_latency_histogram_from_cumulative_buckets_including_a_missing_bucket():
    spec = metric(template="latency-p99")
    q = render_queries(spec, CTX)
    cand = {"0.01": 10.0, "0.1": 90.0, "+Inf": 100.0}
    stab = {"0.01": 50.0, "0.05": 95.0, "0.1": 99.0, "+Inf": 100.0}  # 0.05 only exported by stable
    p = RecordedProvider(vectors={q["candidate"]["buckets"]: cand, q["stable"]["buckets"]: stab})
    s = collect(spec, p, CTX)
    assert isinstance(s, HistogramSample)
    assert s.bounds == (0.01, 0.05, 0.1, math.inf)
    assert s.candidate_counts == (10.0, 0.0, 80.0, 10.0)
    assert s.stable_counts == (50.0, 45.0, 4.0, 1.0)


def test_prediction_shift_union_of_classes():
    spec = metric(template="prediction-shift")
    q = render_queries(spec, CTX)
    p = RecordedProvider(
        vectors={
            q["candidate"]["classes"]: {"setosa": 5.0, "virginica": 7.0},
            q["stable"]["classes"]: {"setosa": 6.0, "versicolor": 4.0},
        }
    )
    assert collect(spec, p, CTX) == CategoricalSample(
        ("setosa", "versicolor", "virginica"), (5.0, 0.0, 7.0), (6.0, 4.0, 0.0)
    )


def test_feature_drift_queries_each_feature_found():
    spec = metric(template="feature-drift")
    q = render_queries(spec, CTX)
    vectors = {q[r]["features"]: {"petal_len": 10.0, "sepal_len": 10.0} for r in ("stable", "candidate")}
    for r, shift in (("stable", 0.0), ("candidate", 5.0)):
        for f in ("petal_len", "sepal_len"):
            bucket_q = q[r]["buckets"].replace("{{feature}}", f)
            vectors[bucket_q] = {"0.0": 5.0 - (shift if f == "petal_len" else 0), "+Inf": 10.0}
    p = RecordedProvider(vectors=vectors)
    s = collect(spec, p, CTX)
    assert isinstance(s, FeatureSample) and s.features == ("petal_len", "sepal_len")
    assert s.histograms[0].candidate_counts == (0.0, 10.0) and s.histograms[0].stable_counts == (5.0, 5.0)
    assert s.histograms[1].candidate_counts == s.histograms[1].stable_counts


def test_raw_query_is_a_value_sample():
    spec = metric(query="up")
    assert collect(spec, RecordedProvider({"up": 0.25}), CTX) == ValueSample(0.25)


def test_provider_failures_propagate():
    class Down(RecordedProvider):
        def run_query(self, query: str) -> float:
            raise MetricsUnavailableError("prometheus at 127.0.0.1:1 is unreachable")

    with pytest.raises(MetricsUnavailableError):
        collect(metric(template="error-rate"), Down(), CTX)
    with pytest.raises(MetricQueryError):
        collect(metric(query="nothing_here"), RecordedProvider(), CTX)


def test_unknown_template_is_a_spec_error():
    with pytest.raises(SpecError, match="unknown template 'error_rate'"):
        collect(metric(template="error_rate"), RecordedProvider(), CTX)
