"""Hypothesis strategies for analysis samples of every kind and every shape a metric source can give.

``any_sample()`` draws ValueSample, ProportionSample, HistogramSample, CategoricalSample,
FeatureSample and MeanSample values that are sometimes well formed (sorted bounds ending in +Inf, one count per
bucket, plausible counts) and often hostile: no buckets at all, zero counts, a single bucket, no
+Inf bucket, unsorted or repeated bounds, NaN / infinite / negative / huge counts, bounds and
counts of different lengths, one version's counts absent, no categories, no features, error sums
that no set of rows can have.
Who uses it: ``tests/unit/test_judge_inputs.py`` (judges and headlines are total) and
``tests/unit/test_engine_any_input.py`` (the engine never dies of what the world says).
"""

from __future__ import annotations

import math

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from rollout.analysis.base import (
    CategoricalSample,
    FeatureSample,
    HistogramSample,
    MeanSample,
    ProportionSample,
    Sample,
    ValueSample,
)

# counts a real source gives (whole and fractional: increase() extrapolates) ...
plausible_counts = st.one_of(
    st.integers(0, 5).map(float),
    st.integers(0, 2000).map(float),
    st.floats(0.0, 1e4, allow_nan=False),
)
# ... and anything a float can be
hostile_numbers = st.one_of(
    st.just(math.nan),
    st.sampled_from([math.inf, -math.inf, -1.0, -1e-9, 0.0, 1e300, 5e-324]),
    st.floats(allow_nan=True, allow_infinity=True),
)


def any_number() -> SearchStrategy[float]:
    """A count or value: mostly plausible, sometimes anything a float can be."""
    return st.one_of(plausible_counts, plausible_counts, hostile_numbers)


def any_bounds() -> SearchStrategy[tuple[float, ...]]:
    """Histogram bounds: well formed (increasing, +Inf last), empty, single, unsorted, repeated, NaN."""
    finite = st.lists(st.floats(-1.0, 100.0, allow_nan=False), min_size=1, max_size=6, unique=True)
    good = finite.map(lambda xs: (*sorted(xs), math.inf))
    return st.one_of(
        good,
        good,
        finite.map(lambda xs: tuple(sorted(xs))),  # no +Inf bucket
        st.just(()),
        st.sampled_from([(math.inf,), (0.5,), (0.5, 0.5, math.inf), (1.0, 0.5, math.inf)]),
        st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=6).map(tuple),
    )


def _counts_for(n: int) -> SearchStrategy[tuple[float, ...]]:
    """One count per bucket usually; sometimes absent, zero, or of another length."""
    return st.one_of(
        st.lists(any_number(), min_size=n, max_size=n).map(tuple),
        st.lists(plausible_counts, min_size=n, max_size=n).map(tuple),
        st.just((0.0,) * n),
        st.just(()),
        st.lists(any_number(), max_size=8).map(tuple),
    )


@st.composite
def any_histogram(draw: st.DrawFn) -> HistogramSample:
    bounds = draw(any_bounds())
    return HistogramSample(bounds, draw(_counts_for(len(bounds))), draw(_counts_for(len(bounds))))


@st.composite
def any_categorical(draw: st.DrawFn) -> CategoricalSample:
    names = st.lists(st.sampled_from(["setosa", "versicolor", "virginica", "0", "1", ""]), max_size=4)
    categories = tuple(draw(st.one_of(names.map(lambda xs: sorted(set(xs))), names)))
    n = len(categories)
    return CategoricalSample(categories, draw(_counts_for(n)), draw(_counts_for(n)))


@st.composite
def any_features(draw: st.DrawFn) -> FeatureSample:
    features = tuple(draw(st.lists(st.sampled_from(["sepal_length", "petal_width", "x"]), max_size=3)))
    n = draw(st.one_of(st.just(len(features)), st.integers(0, 3)))
    return FeatureSample(features, tuple(draw(any_histogram()) for _ in range(n)))


@st.composite
def any_proportion(draw: st.DrawFn) -> ProportionSample:
    if draw(st.booleans()):  # bad within total, as a sampler builds it
        totals = [draw(plausible_counts) for _ in range(2)]
        bads = [draw(st.floats(0.0, 1.0)) * t for t in totals]
        return ProportionSample(bads[0], totals[0], bads[1], totals[1])
    return ProportionSample(*(draw(any_number()) for _ in range(4)))


@st.composite
def any_mean(draw: st.DrawFn) -> MeanSample:
    """A regressor's rows and error sums: possible ones (k rows, MAE, the ratio n sum e^2 / (sum
    |e|)^2 between 1 and k, scaled by increase()'s extrapolation) or any six numbers."""
    if draw(st.booleans()):
        values: list[float] = []
        for _ in range(2):
            k = draw(st.integers(0, 2000))
            s1 = k * draw(st.floats(0.0, 100.0))
            s2 = draw(st.floats(1.0, max(1.0, min(k, 5.0)))) * s1 * s1 / k if k else 0.0
            f = draw(st.floats(1.0, 1.2))
            values += [f * k, f * s1, f * s2]
        return MeanSample(*values)
    return MeanSample(*(draw(any_number()) for _ in range(6)))


def any_sample() -> SearchStrategy[Sample]:
    """A sample of any kind and any shape, well formed or hostile (see the module docstring)."""
    return st.one_of(
        any_number().map(ValueSample),
        any_proportion(),
        any_histogram(),
        any_categorical(),
        any_features(),
        any_mean(),
    )
