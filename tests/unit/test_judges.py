"""Each statistical test against scipy on the expanded data, and the judges' verdicts as a user sees them."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from rollout.analysis import stats
from rollout.analysis.base import (
    CategoricalSample,
    FeatureSample,
    HistogramSample,
    ProportionSample,
    ValueSample,
    Verdict,
)
from rollout.analysis.batch import FAILED, SUCCESSFUL, VERDICT_OF_CODE, ProportionBatch
from rollout.analysis.drift import (
    agreement_rate,
    confidence_shift,
    feature_drift,
    join_answers,
    prediction_shift,
)
from rollout.analysis.registry import check_metrics, make_judge
from rollout.analysis.stats import half_width, log_mixture_ratio
from rollout.errors import SpecError, UnknownProviderError
from rollout.spec import JudgeSpec, MetricSpec

counts = st.lists(st.integers(0, 40), min_size=2, max_size=8)


def expand(c) -> np.ndarray:
    return np.repeat(np.arange(len(c), dtype=float), np.asarray(c, dtype=int))


def spec(template: str | None = None, kind: str = "threshold", **kw) -> MetricSpec:
    data = {"name": "m", "judge": {"kind": kind, **kw.pop("judge", {})}, **kw}
    if template:
        data["template"] = template
    else:
        data.setdefault("query", "up")
    return MetricSpec.model_validate(data)


# --- the tests behind the judges, against scipy ----------------------------------------------------


def test_two_proportion_z_known_value():
    res = stats.two_proportion_z(30, 1000, 10, 1000)
    pooled = 40 / 2000
    z = 0.02 / math.sqrt(pooled * (1 - pooled) * (2 / 1000))
    assert res.statistic == pytest.approx(z) == pytest.approx(3.1944, abs=1e-4)
    assert res.p_value == pytest.approx(sps.norm.sf(z))


@settings(max_examples=60, deadline=None)
@given(counts, counts)
def test_mann_whitney_on_buckets_matches_scipy(c, s):
    c, s = c[: min(len(c), len(s))], s[: min(len(c), len(s))]
    if sum(c) < 2 or sum(s) < 2 or len(set(expand(c)) | set(expand(s))) < 2:
        return
    ours = stats.mann_whitney_greater(np.array(c), np.array(s))
    ref = sps.mannwhitneyu(
        expand(c), expand(s), alternative="greater", method="asymptotic", use_continuity=True
    )
    assert ours.statistic == pytest.approx(ref.statistic)
    assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(counts, counts)
def test_chi_square_matches_scipy(c, s):
    c, s = c[: min(len(c), len(s))], s[: min(len(c), len(s))]
    table = np.array([c, s])[:, np.array(c) + np.array(s) > 0]
    if table.shape[1] < 2 or table.sum(axis=1).min() == 0:
        return
    ours = stats.chi_square(np.array(c), np.array(s))
    stat, p, _, _ = sps.chi2_contingency(table, correction=False)
    assert ours.statistic == pytest.approx(stat)
    assert ours.p_value == pytest.approx(p, rel=1e-6, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(counts, counts)
def test_ks_on_buckets_matches_scipy_asymptotic(c, s):
    c, s = c[: min(len(c), len(s))], s[: min(len(c), len(s))]
    if sum(c) < 1 or sum(s) < 1:
        return
    ours = stats.ks_two_sample(np.array(c), np.array(s))
    ref = sps.ks_2samp(expand(c), expand(s), method="asymp")
    assert ours.statistic == pytest.approx(ref.statistic)
    if np.isnan(ref.pvalue):  # scipy's asymptotic form is undefined for one observation a side
        return
    assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-12)


def test_histogram_quantile_interpolates_like_prometheus():
    bounds = (0.1, 0.2, 0.4, math.inf)
    assert stats.histogram_quantile(0.5, bounds, (50, 30, 20, 0)) == pytest.approx(0.1)
    assert stats.histogram_quantile(0.65, bounds, (50, 30, 20, 0)) == pytest.approx(0.15)
    assert stats.histogram_quantile(0.25, bounds, (50, 30, 20, 0)) == pytest.approx(
        0.05
    )  # first bucket from 0
    assert stats.histogram_quantile(0.99, bounds, (0, 0, 50, 50)) == 0.4  # +Inf bucket: last finite bound
    assert stats.histogram_quantile(0.99, bounds, (0, 0, 0, 0)) is None


def test_psi_known_values():
    assert stats.psi(np.array([500, 500]), np.array([500, 500])) == pytest.approx(0.0)
    a, b = (np.array([700.5, 300.5]) / 1001), (np.array([500.5, 500.5]) / 1001)
    expected = float(np.sum((a - b) * np.log(a / b)))
    assert stats.psi(np.array([700, 300]), np.array([500, 500])) == pytest.approx(expected)
    assert expected == pytest.approx(0.1695, abs=1e-3)


def test_cumulative_buckets_become_non_negative_counts():
    assert list(stats.cumulative_to_counts(np.array([2.0, 5.0, 4.9, 9.0]))) == [2.0, 3.0, 0.0, 4.0]


def test_mixture_ratio_with_one_prior_is_the_closed_form_msprt(monkeypatch):
    monkeypatch.setattr(stats, "TAU_SCALES", (1.0,))
    d, v, tau = 0.03, 1e-4, 0.01
    closed = 0.5 * math.log(v / (v + tau**2)) + d * d * tau**2 / (2 * v * (v + tau**2))
    assert float(log_mixture_ratio(d, v, tau)) == pytest.approx(closed)
    # and the confidence sequence's half-width is the closed-form one
    h = math.sqrt(2 * v * (v + tau**2) / tau**2 * (math.log(100) + 0.5 * math.log((v + tau**2) / v)))
    assert half_width(v, tau, 0.01) == pytest.approx(h, rel=1e-6)


@settings(max_examples=100, deadline=None)
@given(st.floats(1e-7, 1e-2), st.floats(1e-3, 0.2), st.sampled_from([0.01, 0.05]))
def test_half_width_is_where_the_mixture_ratio_reaches_one_over_alpha(var, tau, alpha):
    h = half_width(var, tau, alpha)
    target = math.log(1 / alpha)
    assert (
        float(log_mixture_ratio(h * 0.999, var, tau))
        < target
        <= float(log_mixture_ratio(h * 1.001, var, tau))
    )
    # more data (smaller variance) -> a narrower sequence
    assert half_width(var / 4, tau, alpha) < h


# --- the always-valid guarantee, which a fixed test checked every interval does not have ----------


def _peeking_false_alarms(kind: str, runs: int, looks: int, alpha: float, seed: int) -> float:
    """Equal candidate and stable (5% bad), judged on cumulative data at every look, the whole
    batch of runs at once; a run stops at its first Failed (or, sequential, Successful)."""
    rng = np.random.default_rng(seed)
    judge = make_judge(spec("error-rate", kind, judge={"alpha": alpha, "minEffect": 0.02, "minSamples": 50}))
    per_look = 100
    bad = rng.binomial(per_look, 0.05, size=(runs, looks, 2)).cumsum(axis=1).astype(float)
    open_ = np.ones(runs, dtype=bool)
    alarms = np.zeros(runs, dtype=bool)
    for k in range(looks):
        n = np.full(runs, per_look * (k + 1.0))
        v = judge.verdicts(ProportionBatch(bad[:, k, 0], n, bad[:, k, 1], n))
        # the fixed test alarms at any significant look (what an engine peeking every interval sees)
        fired = v.code == FAILED if kind == "sequential" else v.details["p_value"] < alpha
        alarms |= open_ & fired
        open_ &= ~fired & ~((v.code == SUCCESSFUL) & (kind == "sequential"))
    return float(alarms.mean())


def test_batch_verdicts_are_the_verdicts_of_the_judge():
    rng = np.random.default_rng(7)
    for kind in ("threshold", "comparative", "sequential"):
        extra = {"threshold": {"max": 0.05}} if kind == "threshold" else {}
        judge = make_judge(spec("error-rate", kind, judge={"minSamples": 30}, **extra))
        n = rng.integers(0, 400, size=(60, 2)).astype(float)
        bad = rng.binomial(n.astype(int), [0.03, 0.06]).astype(float)
        batch = judge.verdicts(ProportionBatch(bad[:, 1], n[:, 1], bad[:, 0], n[:, 0]))
        for i in range(60):
            one = judge.judge("e", ProportionSample(bad[i, 1], n[i, 1], bad[i, 0], n[i, 0]), 0.0)
            assert one.verdict == VERDICT_OF_CODE[int(batch.code[i])], (kind, i, one)


def test_sequential_false_rollbacks_stay_below_alpha_under_peeking():
    # equal candidate and stable, checked 30 times on cumulative data: at most alpha false alarms
    assert _peeking_false_alarms("sequential", runs=4000, looks=30, alpha=0.05, seed=1) <= 0.05


def test_fixed_test_checked_every_interval_alarms_far_more_often_than_alpha():
    assert _peeking_false_alarms("comparative", runs=4000, looks=30, alpha=0.05, seed=1) > 0.12


# --- judges -------------------------------------------------------------------------------------


def test_threshold_error_rate_fails_above_max_passes_below_and_waits_without_data():
    j = make_judge(spec("error-rate", threshold={"max": 0.01}))
    assert j.judge("e", ProportionSample(2, 100, 0, 100), 5.0).verdict == Verdict.FAILED
    m = j.judge("e", ProportionSample(1, 200, 0, 100), 5.0)
    assert m.verdict == Verdict.SUCCESSFUL and m.value == pytest.approx(0.005) and m.at == 5.0
    assert j.judge("e", ProportionSample(0, 0, 0, 100), 5.0).verdict == Verdict.INCONCLUSIVE


def test_threshold_waits_for_min_samples_only_when_the_user_sets_it():
    plain = make_judge(spec("error-rate", threshold={"max": 0.01}))
    assert plain.judge("e", ProportionSample(1, 20, 0, 100), 0).verdict == Verdict.FAILED
    careful = make_judge(spec("error-rate", threshold={"max": 0.01}, judge={"minSamples": 200}))
    m = careful.judge("e", ProportionSample(1, 20, 0, 100), 0)
    assert m.verdict == Verdict.INCONCLUSIVE and "too few" in m.message
    assert careful.judge("e", ProportionSample(5, 200, 0, 100), 0).verdict == Verdict.FAILED
    batch = careful.verdicts(
        ProportionBatch(np.array([1.0, 5.0]), np.array([20.0, 200.0]), np.zeros(2), np.full(2, 100.0))
    )
    assert list(batch.code) == [2, FAILED]


def test_threshold_accuracy_is_the_good_rate_and_fails_below_min():
    j = make_judge(spec("accuracy", threshold={"min": 0.9}, direction="higher"))
    m = j.judge("a", ProportionSample(15, 100, 5, 100), 0.0)
    assert m.verdict == Verdict.FAILED and m.value == pytest.approx(0.85)


def test_threshold_latency_p99_and_prediction_psi_and_raw_value():
    lat = make_judge(spec("latency-p99", threshold={"max": 0.1}))
    m = lat.judge("l", HistogramSample((0.05, 0.1, 0.25, math.inf), (90, 8, 2, 0), (100, 0, 0, 0)), 0.0)
    assert m.value == pytest.approx(0.175) and m.verdict == Verdict.FAILED
    shift = make_judge(spec("prediction-shift", threshold={"max": 0.25}))
    same = CategoricalSample(("a", "b", "c"), (30, 30, 40), (300, 300, 400))
    assert shift.judge("p", same, 0.0).verdict == Verdict.SUCCESSFUL
    moved = CategoricalSample(("a", "b", "c"), (80, 10, 10), (300, 300, 400))
    assert shift.judge("p", moved, 0.0).verdict == Verdict.FAILED
    raw = make_judge(spec(threshold={"min": 1, "max": 3}))
    assert raw.judge("r", ValueSample(2.0), 0.0).verdict == Verdict.SUCCESSFUL
    assert raw.judge("r", ValueSample(float("nan")), 0.0).verdict == Verdict.INCONCLUSIVE


def test_comparative_proportion_needs_significance_and_the_minimum_effect():
    j = make_judge(
        spec("error-rate", "comparative", judge={"minEffect": 0.02, "alpha": 0.01, "minSamples": 200})
    )
    assert j.judge("e", ProportionSample(20, 100, 1, 100), 0.0).verdict == Verdict.INCONCLUSIVE  # too few
    big = j.judge("e", ProportionSample(60, 1000, 10, 1000), 0.0)
    assert big.verdict == Verdict.FAILED and big.details["effect"] == pytest.approx(0.05)
    # significant (20000 samples) but only +0.5 points: below what the user said matters
    small = j.judge("e", ProportionSample(300, 20000, 200, 20000), 0.0)
    assert small.details["p_value"] < 0.01 and small.verdict == Verdict.SUCCESSFUL
    noise = j.judge("e", ProportionSample(14, 1000, 10, 1000), 0.0)
    assert noise.verdict == Verdict.SUCCESSFUL


def test_comparative_latency_mann_whitney_catches_a_slow_candidate():
    j = make_judge(spec("latency-p99", "comparative", judge={"minEffect": 0.2, "minSamples": 100}))
    bounds = (0.01, 0.02, 0.05, 0.1, math.inf)
    slow = j.judge("l", HistogramSample(bounds, (10, 40, 400, 50, 0), (300, 150, 50, 0, 0)), 0.0)
    assert slow.verdict == Verdict.FAILED and slow.details["effect"] >= 0.2
    same = j.judge("l", HistogramSample(bounds, (30, 15, 5, 0, 0), (300, 150, 50, 0, 0)), 0.0)
    assert same.verdict == Verdict.INCONCLUSIVE  # 50 candidate observations < 100
    same = j.judge("l", HistogramSample(bounds, (300, 150, 50, 0, 0), (300, 150, 50, 0, 0)), 0.0)
    assert same.verdict == Verdict.SUCCESSFUL


def test_comparative_drift_gates():
    conf = make_judge(spec("confidence-shift", "comparative", judge={"minEffect": 0.1}))
    bounds = (0.5, 0.8, 0.95, 1.0)
    assert (
        conf.judge("c", HistogramSample(bounds, (300, 300, 300, 100), (50, 150, 400, 400)), 0).verdict
        == Verdict.FAILED
    )
    assert (
        conf.judge("c", HistogramSample(bounds, (50, 150, 400, 400), (50, 150, 400, 400)), 0).verdict
        == Verdict.SUCCESSFUL
    )
    pred = make_judge(spec("prediction-shift", "comparative", judge={"minEffect": 0.1}))
    moved = CategoricalSample(("a", "b", "c"), (800, 100, 100), (300, 300, 400))
    assert pred.judge("p", moved, 0).verdict == Verdict.FAILED
    feat = make_judge(spec("feature-drift", "comparative", judge={"minEffect": 0.1}))
    ok = HistogramSample((0.0, math.inf), (500, 500), (500, 500))
    drifted = HistogramSample((0.0, math.inf), (100, 900), (500, 500))
    m = feat.judge("f", FeatureSample(("x1", "x2"), (ok, drifted)), 0)
    assert m.verdict == Verdict.FAILED and "x2" in m.message
    assert feat.judge("f", FeatureSample(("x1", "x2"), (ok, ok)), 0).verdict == Verdict.SUCCESSFUL


def test_sequential_decides_both_ways_and_waits_in_between():
    j = make_judge(
        spec("error-rate", "sequential", judge={"minEffect": 0.02, "alpha": 0.01, "minSamples": 100})
    )
    assert j.judge("e", ProportionSample(30, 300, 3, 300), 0).verdict == Verdict.FAILED  # 10% vs 1%
    assert (
        j.judge("e", ProportionSample(50, 5000, 50, 5000), 0).verdict == Verdict.SUCCESSFUL
    )  # equal, much data
    assert j.judge("e", ProportionSample(4, 300, 3, 300), 0).verdict == Verdict.INCONCLUSIVE
    assert j.judge("e", ProportionSample(9, 90, 1, 90), 0).verdict == Verdict.INCONCLUSIVE  # < minSamples


def test_sequential_latency_uses_log_mean_shift():
    j = make_judge(
        spec("latency-p99", "sequential", judge={"minEffect": 0.2, "alpha": 0.01, "minSamples": 100})
    )
    bounds = (0.01, 0.02, 0.05, 0.1, math.inf)
    assert (
        j.judge("l", HistogramSample(bounds, (10, 40, 400, 50, 0), (300, 150, 50, 0, 0)), 0).verdict
        == Verdict.FAILED
    )
    same = (3000, 1500, 500, 0, 0)
    assert j.judge("l", HistogramSample(bounds, same, same), 0).verdict == Verdict.SUCCESSFUL


def test_registry_rejects_unknown_kinds_and_impossible_combinations():
    bogus = MetricSpec.model_construct(
        name="m",
        template="error-rate",
        query=None,
        threshold=None,
        judge=JudgeSpec.model_construct(kind="bayes"),
    )
    with pytest.raises(UnknownProviderError, match="bayes"):
        make_judge(bogus)
    with pytest.raises(SpecError, match="raw query"):
        make_judge(spec(kind="comparative"))
    with pytest.raises(SpecError, match="no stable counterpart"):
        make_judge(spec("shadow-agreement", "sequential"))
    with pytest.raises(SpecError, match="does not support"):
        make_judge(spec("prediction-shift", "sequential"))
    with pytest.raises(SpecError, match="unknown template"):
        make_judge(spec("p99", threshold={"max": 1}))


def test_shadow_agreement_threshold_on_the_agreement_rate():
    j = make_judge(spec("shadow-agreement", threshold={"min": 0.95}))
    m = j.judge("s", ProportionSample(8, 100, 0, 0), 0)
    assert m.value == pytest.approx(0.92) and m.verdict == Verdict.FAILED


# --- drift gates ----------------------------------------------------------------------------------


def test_prediction_shift_is_psi_with_a_chi_square_p_value():
    s = CategoricalSample(("a", "b", "c"), (50, 30, 20), (40, 40, 20))
    d = prediction_shift(s)
    _, p, _, _ = sps.chi2_contingency(np.array([[50, 30, 20], [40, 40, 20]]), correction=False)
    assert d.p_value == pytest.approx(p) and d.effect == pytest.approx(
        stats.psi(np.array([50, 30, 20]), np.array([40, 40, 20]))
    )
    assert prediction_shift(CategoricalSample(("a",), (0,), (5,))) is None


def test_confidence_shift_is_ks_on_the_histogram():
    d = confidence_shift(HistogramSample((0.5, 0.9, 1.0), (10, 30, 60), (40, 30, 30)))
    assert d.effect == pytest.approx(0.3)
    ref = sps.ks_2samp(expand([10, 30, 60]), expand([40, 30, 30]), method="asymp")
    assert d.p_value == pytest.approx(ref.pvalue)


def test_feature_drift_names_the_feature_that_moved():
    same = HistogramSample((-1.0, 0.0, 1.0, math.inf), (100, 400, 400, 100), (100, 400, 400, 100))
    moved = HistogramSample((-1.0, 0.0, 1.0, math.inf), (10, 90, 400, 500), (100, 400, 400, 100))
    d = feature_drift(FeatureSample(("sepal", "petal"), (same, moved)), alpha=0.01)
    assert d.what.endswith("petal") and d.p_value < 0.01 and d.effect > 0.5
    assert feature_drift(FeatureSample((), ()), alpha=0.01) is None


def test_shadow_agreement_join_by_request_id():
    stable = {"r1": "setosa", "r2": "virginica", "r3": "setosa"}
    candidate = {"r1": "setosa", "r2": "versicolor", "r4": "setosa"}  # r3 not mirrored, r4 not in stable
    assert join_answers(stable, candidate) == (2, 1)
    assert agreement_rate(ProportionSample(1, 2, 0, 0)) == 0.5
    assert agreement_rate(ProportionSample(0, 0, 0, 0)) is None


def test_check_metrics_names_the_metric_field_before_the_rollout_starts():
    ok = spec("error-rate", "sequential")
    with pytest.raises(SpecError) as err:
        check_metrics([ok, spec("prediction-shift", "sequential")])
    assert err.value.field == "analysis.metrics[1].judge.kind" and "does not support" in str(err.value)
    check_metrics([ok])
