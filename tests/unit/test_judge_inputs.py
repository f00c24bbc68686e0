"""Every judge and headline is total over its inputs: hostile samples are Inconclusive or Error.

A metric source can give a judge anything: an empty histogram before the first request (this used
to kill ``rollout run`` with an IndexError in ``histogram_quantile_v``), zero counts, one bucket,
no +Inf bucket, unsorted or repeated bounds, NaN / infinite / negative counts after a counter
reset, bounds and counts of different lengths, one version's counts absent, no categories, no
features. Table tests check, for each shape and each judge built by ``make_judge`` from every
built-in template (and a raw query), the verdict and that the message names the problem; a
hypothesis test checks that judges, headlines, sample sizes and ``gate.compare`` never raise on
any sample (``tests.unit.samplekit.any_sample``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollout.actions import MetricResult
from rollout.analysis import stats
from rollout.analysis.base import (
    CategoricalSample,
    FeatureSample,
    HistogramSample,
    MeanSample,
    Measurement,
    ProportionSample,
    Sample,
    ValueSample,
    Verdict,
)
from rollout.analysis.batch import INCONCLUSIVE, HistogramBatch, ProportionBatch
from rollout.analysis.checks import UNITS, check_sample, complete, observed
from rollout.analysis.experiment import ExperimentTest, decide
from rollout.analysis.registry import make_judge, template_of
from rollout.analysis.threshold import headline, sample_size
from rollout.gate import _judge, compare
from rollout.metrics.templates import TEMPLATES
from rollout.spec import MetricSpec
from tests.unit.samplekit import any_sample

NAN, INF = math.nan, math.inf
THRESHOLDS = {
    "error-rate": {"max": 0.05},
    "latency-p99": {"max": 0.5},
    "accuracy": {"min": 0.9},
    "prediction-shift": {"max": 0.25},
    "confidence-shift": {"max": 0.3},
    "feature-drift": {"max": 0.25},
    "shadow-agreement": {"min": 0.9},
    "mae": {"max": 1.0},
    "rmse": {"max": 1.2},
    "prediction-value-shift": {"max": 0.3},
    None: {"max": 1.0},
}
STATISTICAL = {
    "comparative": (
        "error-rate",
        "latency-p99",
        "accuracy",
        "prediction-shift",
        "confidence-shift",
        "feature-drift",
        "mae",
        "rmse",
        "prediction-value-shift",
    ),
    "sequential": ("error-rate", "latency-p99", "accuracy", "mae", "rmse"),
}


def metric_spec(template: str | None, kind: str = "threshold", min_samples: int | None = 10) -> MetricSpec:
    data: dict = {"name": "m", "judge": {"kind": kind}}
    if min_samples is not None:
        data["judge"]["minSamples"] = min_samples
    data["template" if template else "query"] = template or "sum(rate(model_requests_total[{{window}}]))"
    if kind == "threshold":
        data["threshold"] = THRESHOLDS[template]
    return MetricSpec.model_validate(data)


ALL_SPECS = [metric_spec(t) for t in THRESHOLDS] + [
    metric_spec(t, kind) for kind, templates in STATISTICAL.items() for t in templates
]
JUDGES = [(m, make_judge(m)) for m in ALL_SPECS]


def judges_of(*templates: str | None) -> list[tuple[str, MetricSpec]]:
    """(id, spec) of every judge kind that takes the templates' samples."""
    return [
        (f"{m.judge.kind.value}:{m.template or 'query'}", m) for m in ALL_SPECS if m.template in templates
    ]


def judge(m: MetricSpec, sample: Sample) -> Measurement:
    return make_judge(m).judge("m", sample, 0.0)


H = (0.1, 0.5, INF)
GOOD = (50.0, 40.0, 10.0)

# (case, sample, verdict, words the message must contain) for every judge of the templates
HISTOGRAM_CASES = [
    ("empty", HistogramSample((), (), ()), Verdict.INCONCLUSIVE, ["no ", "candidate", "no buckets"]),
    ("zero-count", HistogramSample(H, (0, 0, 0), (0, 0, 0)), Verdict.INCONCLUSIVE, ["no ", "candidate"]),
    ("candidate absent", HistogramSample(H, (), GOOD), Verdict.INCONCLUSIVE, ["candidate in the window"]),
    ("single +Inf bucket", HistogramSample((INF,), (10,), (10,)), Verdict.ERROR, ["single bucket", "+Inf"]),
    ("single finite bucket", HistogramSample((0.5,), (10,), (10,)), Verdict.ERROR, ["single bucket"]),
    ("non-monotonic", HistogramSample(H, (50, -10, 10), GOOD), Verdict.ERROR, ["negative", "le=0.5"]),
    ("NaN count", HistogramSample(H, GOOD, (1, NAN, 1)), Verdict.ERROR, ["stable", "NaN"]),
    ("inf count", HistogramSample(H, (INF, 1, 1), GOOD), Verdict.ERROR, ["candidate", "+Inf", "le=0.1"]),
    ("counter reset", HistogramSample(H, GOOD, (-3, 1, 1)), Verdict.ERROR, ["negative", "counter reset"]),
    ("huge count", HistogramSample(H, (1e300, 1, 1), GOOD), Verdict.ERROR, ["2^53"]),
    (
        "lengths differ",
        HistogramSample(H, (1, 2), GOOD),
        Verdict.ERROR,
        ["3 bounds but 2 candidate counts", "groups by le"],
    ),
    ("counts, no bounds", HistogramSample((), (1,), ()), Verdict.ERROR, ["0 bounds but 1 candidate"]),
    ("unsorted", HistogramSample((0.5, 0.1, INF), GOOD, GOOD), Verdict.ERROR, ["out of order", "le=0.5"]),
    ("duplicate", HistogramSample((0.1, 0.1, INF), GOOD, GOOD), Verdict.ERROR, ["le=0.1 more than once"]),
    ("NaN bound", HistogramSample((0.1, NAN, INF), GOOD, GOOD), Verdict.ERROR, ["NaN bucket bound"]),
    ("-Inf bound", HistogramSample((-INF, 0.1, INF), GOOD, GOOD), Verdict.ERROR, ["-Inf"]),
    ("not numbers", HistogramSample(("a", "b"), (1, 2), (1, 2)), Verdict.ERROR, ["not numbers"]),
]
PROPORTION_CASES = [
    ("zero-count", ProportionSample(0, 0, 0, 0), Verdict.INCONCLUSIVE, ["no ", "candidate", "in the window"]),
    ("NaN total", ProportionSample(1, NAN, 1, 100), Verdict.ERROR, ["candidate's total", "NaN"]),
    ("inf bad", ProportionSample(INF, 100, 1, 100), Verdict.ERROR, ["candidate's bad", "+Inf"]),
    ("counter reset", ProportionSample(1, 100, -2, 100), Verdict.ERROR, ["stable's bad", "counter reset"]),
    ("bad above total", ProportionSample(120, 100, 1, 100), Verdict.ERROR, ["120 bad out of 100"]),
]
CATEGORICAL_CASES = [
    (
        "empty categories",
        CategoricalSample((), (), ()),
        Verdict.INCONCLUSIVE,
        ["no predictions", "no categories"],
    ),
    ("zero-count", CategoricalSample(("a", "b"), (0, 0), (0, 0)), Verdict.INCONCLUSIVE, ["no predictions"]),
    ("stable absent", CategoricalSample(("a", "b"), (5, 5), ()), Verdict.INCONCLUSIVE, ["from stable"]),
    ("stable all zero", CategoricalSample(("a", "b"), (5, 5), (0, 0)), Verdict.INCONCLUSIVE, ["from stable"]),
    (
        "lengths differ",
        CategoricalSample(("a", "b", "c"), (1, 2), (1, 2, 3)),
        Verdict.ERROR,
        ["3 categories but 2 candidate counts", "groups by class"],
    ),
    (
        "duplicate",
        CategoricalSample(("a", "a"), (1, 2), (1, 2)),
        Verdict.ERROR,
        ["'a' appears more than once"],
    ),
    ("NaN", CategoricalSample(("a", "b"), (1, NAN), (1, 2)), Verdict.ERROR, ["category 'b'", "NaN"]),
    ("negative", CategoricalSample(("a", "b"), (1, 2), (-1, 2)), Verdict.ERROR, ["stable", "negative"]),
    ("inf", CategoricalSample(("a", "b"), (1, 2), (1, INF)), Verdict.ERROR, ["+Inf"]),
]
FH = HistogramSample((-1.0, 0.0, 1.0, INF), (10, 40, 40, 10), (10, 40, 40, 10))
FEATURE_CASES = [
    ("no features", FeatureSample((), ()), Verdict.INCONCLUSIVE, ["no input features"]),
    (
        "empty histograms",
        FeatureSample(("x",), (HistogramSample((), (), ()),)),
        Verdict.INCONCLUSIVE,
        ["no feature observations"],
    ),
    (
        "stable all zero",
        FeatureSample(("x",), (HistogramSample(FH.bounds, FH.candidate_counts, (0, 0, 0, 0)),)),
        Verdict.INCONCLUSIVE,
        ["from stable"],
    ),
    (
        "features vs histograms",
        FeatureSample(("x", "y"), (FH,)),
        Verdict.ERROR,
        ["2 features but 1 histograms"],
    ),
    ("duplicate feature", FeatureSample(("x", "x"), (FH, FH)), Verdict.ERROR, ["'x' appears more than once"]),
    (
        "NaN in a feature",
        FeatureSample(("x", "y"), (FH, HistogramSample(FH.bounds, (1, NAN, 1, 1), FH.stable_counts))),
        Verdict.ERROR,
        ["feature 'y'", "NaN"],
    ),
    (
        "lengths differ in a feature",
        FeatureSample(("x",), (HistogramSample(FH.bounds, (1, 2), FH.stable_counts),)),
        Verdict.ERROR,
        ["feature 'x'", "4 bounds but 2 candidate counts"],
    ),
    ("not a histogram", FeatureSample(("x",), (ValueSample(1.0),)), Verdict.ERROR, ["no histogram"]),  # type: ignore[arg-type]
]
MEAN_CASES = [
    ("zero", MeanSample(0, 0, 0, 0, 0, 0), Verdict.INCONCLUSIVE, ["no feedback labels for candidate"]),
    ("NaN rows", MeanSample(NAN, 1, 1, 10, 5, 3), Verdict.ERROR, ["candidate's labelled-row count", "NaN"]),
    (
        "counter reset",
        MeanSample(10, 5, 3, 10, -1, 3),
        Verdict.ERROR,
        ["stable's sum of absolute errors", "negative", "counter reset"],
    ),
    ("inf", MeanSample(10, 5, INF, 10, 5, 3), Verdict.ERROR, ["candidate's sum of squared errors", "+Inf"]),
    ("errors, no rows", MeanSample(0, 5, 3, 10, 5, 3), Verdict.ERROR, ["over no labelled rows"]),
    ("squares too small", MeanSample(10, 5, 1, 10, 5, 3), Verdict.ERROR, ["impossible for 10 rows"]),
    ("squares too large", MeanSample(10, 5, 3, 10, 2, 5), Verdict.ERROR, ["stable's", "impossible"]),
    ("not numbers", MeanSample("x", 1, 1, 1, 1, 1), Verdict.ERROR, ["'x', not a number"]),  # type: ignore[arg-type]
]
VALUE_CASES = [
    ("NaN", ValueSample(NAN), Verdict.INCONCLUSIVE, ["returned NaN", "no data"]),
    ("+inf", ValueSample(INF), Verdict.ERROR, ["+Inf", "denominator"]),
    ("-inf", ValueSample(-INF), Verdict.ERROR, ["-Inf"]),
]


def table(cases: list, *templates: str | None) -> list:
    return [
        pytest.param(m, sample, verdict, words, id=f"{jid}-{case}")
        for case, sample, verdict, words in cases
        for jid, m in judges_of(*templates)
    ]


@pytest.mark.parametrize(
    ("m", "sample", "verdict", "words"),
    table(HISTOGRAM_CASES, "latency-p99", "confidence-shift", "prediction-value-shift")
    + table(MEAN_CASES, "mae", "rmse")
    + table(PROPORTION_CASES, "error-rate", "accuracy", "shadow-agreement")
    + table(CATEGORICAL_CASES, "prediction-shift")
    + table(FEATURE_CASES, "feature-drift")
    + table(VALUE_CASES, None),
)
def test_a_hostile_sample_gets_a_verdict_that_names_the_problem(m, sample, verdict, words):
    got = judge(m, sample)
    assert got.verdict == verdict, got.message
    for word in words:
        assert word in got.message, got.message
    # and nothing else the engine calls on the sample raises; a malformed sample has no headline
    value = headline(template_of(m), sample)
    assert value is None or verdict != Verdict.ERROR
    sample_size(sample)
    compare(m, sample, 0.95)


def test_an_empty_latency_histogram_is_no_requests_yet_not_a_crash():
    """The crash of issue 19: ``rollout run`` before the first request."""
    m = metric_spec("latency-p99")
    got = _judge(make_judge, m, MetricResult("m", at=5.0, sample=HistogramSample((), (), ())))
    assert got.verdict == Verdict.INCONCLUSIVE
    assert got.message == "no requests to candidate in the window (the histogram has no buckets yet)"
    assert stats.histogram_quantile(0.99, (), ()) is None
    assert stats.ks_distance(np.array([]), np.array([])) == 0.0


NO_STABLE = (
    [
        pytest.param(m, ProportionSample(0, 5000, 0, 0), id=f"{jid}-zero")
        for jid, m in judges_of("error-rate", "accuracy")
        if m.judge.kind.value != "threshold"
    ]
    + [
        pytest.param(m, HistogramSample(H, (4000, 900, 100), stable), id=f"{jid}-{case}")
        for jid, m in judges_of("latency-p99", "confidence-shift")
        if m.judge.kind.value != "threshold" or m.template == "confidence-shift"  # KS needs stable
        for case, stable in (("zero", (0, 0, 0)), ("absent", ()))
    ]
    + [
        pytest.param(m, MeanSample(5000, 4000, 5000, 0, 0, 0), id=f"{jid}-zero")
        for jid, m in judges_of("mae", "rmse")
        if m.judge.kind.value != "threshold"
    ]
)


@pytest.mark.parametrize(("m", "sample"), NO_STABLE)
def test_no_stable_observations_is_inconclusive_for_judges_that_compare(m, sample):
    got = judge(m, sample)
    assert got.verdict == Verdict.INCONCLUSIVE
    assert "stable in the window" in got.message, got.message


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.integers(0, 10**6), st.integers(0, 10**6), st.floats(0, 1), st.floats(0, 1))
def test_a_comparing_judge_is_never_successful_without_stable(n, m, rate, spread):
    """Even a perfect candidate: with no stable observations nothing is proven (batch form too)."""
    for spec_ in (
        metric_spec(t, k) for k, ts in STATISTICAL.items() for t in ts if t in ("error-rate", "latency-p99")
    ):
        j = make_judge(spec_)
        if spec_.template == "error-rate":
            sample: Sample = ProportionSample(rate * n, n, 0, 0)
            batch = ProportionBatch(
                np.asarray(rate * n), np.asarray(float(n)), np.asarray(0.0), np.asarray(0.0)
            )
        else:
            counts = (n * (1 - spread), n * spread, m)
            sample = HistogramSample(H, counts, (0, 0, 0))
            batch = HistogramBatch(H, np.asarray(counts), np.zeros(3))
        assert j.judge("m", sample, 0.0).verdict == Verdict.INCONCLUSIVE
        assert int(j.verdicts(batch).code) == INCONCLUSIVE


def test_missing_inf_bucket_is_an_error_only_where_a_quantile_is_read():
    sample = HistogramSample((0.5, 0.8, 0.95, 1.0), (300, 300, 300, 100), (300, 300, 300, 100))
    for jid, m in judges_of("latency-p99"):
        assert judge(m, sample).verdict == Verdict.ERROR, jid
        assert "no +Inf bucket" in judge(m, sample).message
    for jid, m in judges_of("confidence-shift"):  # confidence lies in [0, 1]: 1.0 is the top
        assert judge(m, sample).verdict == Verdict.SUCCESSFUL, jid


def test_the_threshold_judge_takes_one_number_for_any_template_the_others_refuse_it():
    assert judge(metric_spec("latency-p99", min_samples=None), ValueSample(0.2)).verdict == Verdict.SUCCESSFUL
    got = judge(metric_spec("latency-p99", "comparative"), ValueSample(0.2))
    assert got.verdict == Verdict.ERROR and "makes histogram samples but got a value sample" in got.message
    got = judge(metric_spec("error-rate", "sequential"), CategoricalSample(("a",), (1,), (1,)))
    assert got.verdict == Verdict.ERROR and "template 'error-rate'" in got.message


def test_absent_counts_of_one_version_are_zeros():
    assert complete(HistogramSample(H, GOOD, ())) == HistogramSample(H, GOOD, (0.0, 0.0, 0.0))
    assert complete(CategoricalSample(("a",), (), (2,))) == CategoricalSample(("a",), (0.0,), (2,))
    # a threshold on the candidate's latency needs nothing from stable
    got = judge(metric_spec("latency-p99"), HistogramSample(H, (90, 10, 0), ()))
    assert got.verdict == Verdict.SUCCESSFUL and got.value == pytest.approx(0.46)


def test_a_judge_that_raises_anyway_is_an_error_measurement_not_a_crash():
    class Broken:
        def judge(self, metric: str, sample: Sample, now: float) -> Measurement:
            raise KeyError("boom")

    got = _judge(lambda _m: Broken(), metric_spec(None), MetricResult("m", at=1.0, sample=ValueSample(0.1)))
    assert got.verdict == Verdict.ERROR and got.message == "judge failed: KeyError: 'boom'"


def test_every_template_names_what_it_counts():
    assert set(UNITS) == set(TEMPLATES)


# --- property: total over anything --------------------------------------------------------------


@settings(max_examples=250, deadline=None, derandomize=True)
@given(any_sample())
def test_judges_headlines_sizes_and_comparisons_never_raise(sample):
    for m, j in JUDGES:
        template = template_of(m)
        got = j.judge("m", sample, 0.0)
        assert isinstance(got, Measurement) and got.verdict in tuple(Verdict)
        if got.verdict in (Verdict.ERROR, Verdict.INCONCLUSIVE):
            assert got.message
        if check_sample(sample, template) is not None:
            assert got.verdict == Verdict.ERROR
        elif got.verdict == Verdict.SUCCESSFUL:
            n_c, n_s = observed(complete(sample))
            assert isinstance(sample, ValueSample) or n_c > 0
            if m.judge.kind.value != "threshold":
                assert n_s > 0, "a comparing judge is never Successful without stable observations"
        value = headline(template, sample)
        assert value is None or math.isfinite(value)
        n_c, n_s = sample_size(sample)
        assert isinstance(n_c, float) and isinstance(n_s, float)
        compare(m, sample, None)
        compare(m, sample, 0.95)
        if template is not None:
            decide(ExperimentTest(template, m.judge.min_effect, False), sample)
