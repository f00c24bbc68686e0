"""Gates for regressors: the mae, rmse and prediction-value-shift templates render the PromQL of the
counters the server exports, the sampler turns their answers into samples, and the threshold,
comparative and sequential judges decide right on synthetic errors (a regression proven, an
equivalence proven, too few rows, data no set of rows can have); the spec refuses a judge kind a
template cannot take."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats as sps

from rollout.analysis import means
from rollout.analysis.base import HistogramSample, MeanSample, Verdict
from rollout.analysis.batch import MeanBatch
from rollout.analysis.registry import check_metrics, make_judge
from rollout.errors import SpecError
from rollout.gate import compare
from rollout.metrics import names
from rollout.metrics.sampler import SampleContext, collect, render_queries
from rollout.spec import MetricSpec
from tests.unit.test_templates import RecordedProvider

CTX = SampleContext(service="house", stable="house:v1", candidate="house:v2", window=30.0, elapsed=95.0)


def spec(template: str, kind: str = "threshold", **judge: object) -> MetricSpec:
    data: dict = {"name": "m", "template": template, "judge": {"kind": kind, **judge}}
    if kind == "threshold":
        data["threshold"] = {"max": 1.0}
    return MetricSpec.model_validate(data)


def errors_sample(
    n_c: int, n_s: int, scale_c: float = 1.0, seed: int = 0, laplace: bool = False
) -> MeanSample:
    """Sums of |e| and e^2 over normal (or Laplace) errors, candidate's ``scale_c`` times stable's."""
    rng = np.random.default_rng(seed)
    draw = rng.laplace if laplace else rng.normal
    c, s = np.abs(draw(0, scale_c, n_c)), np.abs(draw(0, 1.0, n_s))
    return MeanSample(n_c, c.sum(), (c**2).sum(), n_s, s.sum(), (s**2).sum())


# --- templates and the sampler --------------------------------------------------------------------


def test_mae_and_rmse_query_increase_of_the_three_counters_per_version_in_one_query():
    for template in ("mae", "rmse"):
        q = render_queries(spec(template), CTX)
        for role, version in (("candidate", "v2"), ("stable", "v1")):
            sel = f'{{model="house",version="{version}"}}[30s]'
            assert q[role] == {
                "sums": " or ".join(
                    f'label_replace(sum(increase({metric}{sel})), "part", "{part}", "", "")'
                    for part, metric in (
                        ("n", names.FEEDBACK_TOTAL),
                        ("total", names.FEEDBACK_ABSOLUTE_ERROR_SUM),
                        ("total_sq", names.FEEDBACK_SQUARED_ERROR_SUM),
                    )
                )
            }
    # sequential: everything since the analysis started
    assert "[95s]" in render_queries(spec("mae", "sequential"), CTX)["candidate"]["sums"]


def test_prediction_value_shift_queries_the_predicted_value_buckets():
    q = render_queries(spec("prediction-value-shift"), CTX)
    assert q["candidate"] == {
        "buckets": f'sum by (le) (increase({names.PREDICTION_VALUE}_bucket{{model="house",version="v2"}}[30s]))'
    }


def test_the_sampler_builds_a_mean_sample_from_the_counters():
    m = spec("mae")
    q = render_queries(m, CTX)
    answers = {
        q["candidate"]["sums"]: {"n": 200.0, "total": 170.0, "total_sq": 220.0},
        q["stable"]["sums"]: {'{part="n"}': 180.0, '{part="total"}': 144.0, '{part="total_sq"}': 170.0},
    }
    sample = collect(m, RecordedProvider(vectors=answers), CTX)
    assert sample == MeanSample(200.0, 170.0, 220.0, 180.0, 144.0, 170.0)
    # no labelled rows yet: no series at all, zeros (no data, not an error)
    assert collect(m, RecordedProvider(), CTX) == MeanSample(0, 0, 0, 0, 0, 0)
    got = make_judge(m).judge("m", sample, 0.0)
    assert got.verdict == Verdict.SUCCESSFUL and got.value == pytest.approx(0.85)


def test_predicted_values_below_zero_make_a_histogram_the_ks_judges_take():
    m = spec("prediction-value-shift", "comparative", minEffect=0.1, minSamples=50)
    q = render_queries(m, CTX)
    cand = {"-10": 10.0, "0": 300.0, "10": 900.0, "+Inf": 1000.0}
    stab = {"-10": 100.0, "0": 500.0, "10": 900.0, "+Inf": 1000.0}
    p = RecordedProvider(vectors={q["candidate"]["buckets"]: cand, q["stable"]["buckets"]: stab})
    sample = collect(m, p, CTX)
    assert sample == HistogramSample((-10.0, 0.0, 10.0, math.inf), (10, 290, 600, 100), (100, 400, 400, 100))
    got = make_judge(m).judge("m", sample, 0.0)
    assert got.verdict == Verdict.FAILED and "KS distance 0.2" in got.message
    same = make_judge(m).judge(
        "m", HistogramSample(sample.bounds, sample.stable_counts, sample.stable_counts), 0
    )
    assert same.verdict == Verdict.SUCCESSFUL and same.value == 0.0


# --- the statistics -------------------------------------------------------------------------------


def test_mae_mean_and_variance_are_exact_from_the_two_sums():
    a = np.abs(np.random.default_rng(1).normal(0, 2, 500))
    mean, var = means.version_moments(np.asarray(500.0), a.sum(), (a**2).sum(), squared=False)
    assert float(mean) == pytest.approx(a.mean()) and float(var) == pytest.approx(a.var(ddof=1))


def test_the_squared_error_variance_is_matched_to_the_tails_the_sums_show():
    assert float(means.kurtosis_for_ratio(math.pi / 2)) == pytest.approx(3.0, rel=1e-3)  # normal
    assert float(means.kurtosis_for_ratio(2.0)) == pytest.approx(6.0, rel=1e-3)  # Laplace
    assert float(means.kurtosis_for_ratio(1.2)) == pytest.approx(3.0)  # lighter than normal: the normal's
    rng = np.random.default_rng(2)
    for errors, kurtosis in ((rng.normal(0, 1, 200_000), 3.0), (rng.laplace(0, 1, 200_000), 6.0)):
        a = np.abs(errors)
        _, var = means.version_moments(np.asarray(float(a.size)), a.sum(), (a**2).sum(), squared=True)
        assert float(var) == pytest.approx((a**2).var(), rel=0.1)  # the true variance of e^2
        assert float(var) == pytest.approx((kurtosis - 1) * (a**2).mean() ** 2, rel=0.05)


def test_welch_p_value_matches_scipy_on_the_rows():
    rng = np.random.default_rng(4)
    c, s = np.abs(rng.normal(0, 1.1, 80)), np.abs(rng.normal(0, 1.0, 300))
    sample = MeanSample(80, c.sum(), (c**2).sum(), 300, s.sum(), (s**2).sum())
    batch = MeanBatch(*(np.asarray(float(x)) for x in vars(sample).values()))
    ours = float(means.welch_greater_v(means.mean_test(batch, squared=False, min_effect=0.1)))
    ref = sps.ttest_ind(c, s, equal_var=False, alternative="greater").pvalue
    assert ours == pytest.approx(ref, rel=1e-6)


# --- the judges -----------------------------------------------------------------------------------


def test_threshold_compares_the_candidate_s_mae_or_rmse_with_the_maximum():
    s = MeanSample(100, 80, 100, 0, 0, 0)  # MAE 0.8, RMSE 1.0; a threshold needs nothing of stable
    assert make_judge(spec("mae")).judge("m", s, 0).verdict == Verdict.SUCCESSFUL
    rmse = MetricSpec.model_validate({"name": "m", "template": "rmse", "threshold": {"max": 0.9}})
    got = make_judge(rmse).judge("m", s, 0)
    assert got.verdict == Verdict.FAILED and got.value == pytest.approx(1.0)
    assert "above the maximum 0.9" in got.message


@pytest.mark.parametrize("template", ["mae", "rmse"])
def test_comparative_fails_a_regression_and_passes_an_equal_candidate(template):
    judge = make_judge(spec(template, "comparative", minEffect=0.1, minSamples=100))
    bad = judge.judge("m", errors_sample(3000, 3000, 1.2), 0)
    assert bad.verdict == Verdict.FAILED, bad.message
    assert bad.details["effect"] == pytest.approx(0.2, abs=0.05) and bad.details["p_value"] < 0.01
    assert f"relative {template.upper()} increase" in bad.message
    good = judge.judge("m", errors_sample(3000, 3000, 1.0), 0)
    assert good.verdict == Verdict.SUCCESSFUL, good.message
    # significant but below minEffect: not a regression that matters
    small = judge.judge("m", errors_sample(200_000, 200_000, 1.04, seed=5), 0)
    assert small.verdict == Verdict.SUCCESSFUL and "below the minimum effect" in small.message
    few = judge.judge("m", errors_sample(60, 3000, 1.5), 0)
    assert few.verdict == Verdict.INCONCLUSIVE and "too few samples: candidate 60" in few.message


@pytest.mark.parametrize("template", ["mae", "rmse"])
def test_sequential_proves_a_regression_or_an_equivalence_and_waits_otherwise(template):
    judge = make_judge(spec(template, "sequential", minEffect=0.1, minSamples=100, alpha=0.01))
    bad = judge.judge("m", errors_sample(5000, 5000, 1.25), 0)
    assert bad.verdict == Verdict.FAILED and "regression proven" in bad.message, bad.message
    assert bad.details["lower"] > 0 and bad.details["relative"] == pytest.approx(0.25, abs=0.05)
    good = judge.judge("m", errors_sample(20_000, 20_000, 1.0), 0)
    assert good.verdict == Verdict.SUCCESSFUL and "proven less than 10% above" in good.message, good.message
    unsure = judge.judge("m", errors_sample(300, 300, 1.05), 0)
    assert unsure.verdict == Verdict.INCONCLUSIVE and "not decided yet" in unsure.message
    few = judge.judge("m", errors_sample(99, 5000, 2.0), 0)
    assert few.verdict == Verdict.INCONCLUSIVE and "too few samples" in few.message


def test_sequential_batch_and_one_sample_agree_and_perfect_predictions_do_not_crash():
    judge = make_judge(spec("mae", "sequential", minSamples=10))
    samples = [errors_sample(500, 500, k, seed=i) for i, k in enumerate((1.0, 1.3, 1.02))]
    batch = MeanBatch(*(np.asarray([float(getattr(s, f)) for s in samples]) for f in vars(samples[0])))
    codes = judge.verdicts(batch).code
    assert [judge.judge("m", s, 0).verdict for s in samples] == [
        (Verdict.SUCCESSFUL, Verdict.FAILED, Verdict.INCONCLUSIVE)[int(c)] for c in codes
    ]
    for kind in ("comparative", "sequential"):
        got = make_judge(spec("mae", kind, minSamples=10)).judge("m", MeanSample(50, 0, 0, 50, 0, 0), 0)
        assert got.verdict in (Verdict.SUCCESSFUL, Verdict.INCONCLUSIVE) and got.value == 0.0
        stable_exact = MeanSample(5000, 4000, 5000, 5000, 0, 0)
        worse = make_judge(spec("mae", kind, minSamples=10)).judge("m", stable_exact, 0)
        assert worse.verdict == Verdict.FAILED, (kind, worse.message)  # stable exact, candidate not


# --- the spec -------------------------------------------------------------------------------------


def test_prediction_value_shift_refuses_the_sequential_judge_naming_the_field():
    with pytest.raises(SpecError, match="cannot judge template 'prediction-value-shift'") as err:
        check_metrics([spec("mae", "sequential"), spec("prediction-value-shift", "sequential")])
    assert err.value.field == "analysis.metrics[1].judge.kind"
    assert "'comparative'" in str(err.value)
    check_metrics([spec(t, k) for t in ("mae", "rmse") for k in ("threshold", "comparative", "sequential")])
    check_metrics([spec("prediction-value-shift", k) for k in ("threshold", "comparative")])


@pytest.mark.parametrize(
    "sample",
    [
        MeanSample(10, 0, 0, 10, 1.1125369292536007e-307, 0),  # tau^2 underflows to 0
        MeanSample(10, 20, 40, 10, 1.1125369292536007e-307, 0),  # a ratio that overflows
        MeanSample(1e6, 1e11, 1.5e16, 1e6, 1e11, 1.5e16),  # errors in dollars: sums past 2^53
    ],
)
def test_extreme_sums_get_a_verdict_and_no_warning(sample):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for template in ("mae", "rmse"):
            for kind in ("threshold", "comparative", "sequential"):
                got = make_judge(spec(template, kind, minSamples=5)).judge("m", sample, 0)
                assert got.verdict in (Verdict.SUCCESSFUL, Verdict.INCONCLUSIVE, Verdict.FAILED), got.message


def test_an_ab_test_on_mae_names_the_version_with_the_lower_error():
    metric = spec("mae", minEffect=0.1)
    better = errors_sample(4000, 4000, 0.8, seed=8)  # the candidate's errors 20 % smaller
    cmp = compare(metric, better, 0.95)
    assert cmp is not None and cmp.winner == "candidate" and cmp.upper < 0
    assert cmp.candidate == pytest.approx(0.8 * math.sqrt(2 / math.pi), rel=0.05)
    assert cmp.stable == pytest.approx(math.sqrt(2 / math.pi), rel=0.05) and "MAE difference" in cmp.interval
    assert compare(metric, errors_sample(4000, 4000, 1.25, seed=9), 0.95).winner == "stable"
    assert compare(metric, errors_sample(4000, 4000, 1.0, seed=10), 0.95).winner is None
    assert compare(metric, better).winner is None  # no test asked for
    assert compare(spec("rmse", minEffect=0.1), better, 0.95).winner == "candidate"
