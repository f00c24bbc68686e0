"""Screening of samples before they are judged: malformed data is an Error, missing data Inconclusive.

Samples come from sources we do not control: a Prometheus query a user wrote, a histogram without
buckets before the first request, a counter reset inside the window, a query that forgot
``sum by (le)``. Every judge and headline must be total over them, so this module says in one
place what is wrong with a sample and what is missing from it:

- ``check_sample``: why a sample is malformed (NaN, infinite or negative counts, bounds and counts
  of different lengths, unsorted or repeated bounds, a single bucket, no +Inf bucket under a
  quantile, bad above total, a regressor's error sums that no set of labelled rows can have ...),
  as a message a user can act on; None when it is well formed;
- ``complete``: a version whose counts are absent altogether (an empty tuple) observed nothing,
  so its counts become zeros;
- ``missing``: which version has no observations in the window ("no requests to stable in the
  window"), or a raw query that returned NaN; ``observed`` counts them, ``needs_stable`` says
  whether stable's count matters (the one rule, also for ``rollout.gate.needs_stable``);
- ``screen``: the three together, as the early Measurement (Error or Inconclusive) a judge returns
  instead of judging, and the completed sample to judge otherwise.

Who calls it: the judges (``threshold``, ``comparative``, ``sequential``) at the top of ``judge``,
``threshold.headline`` and ``sample_size``, ``experiment.decide`` and ``rollout.gate``. The batch functions
(``verdicts``, the simulator's arrays) are not screened: the simulator builds its input valid.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

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
from rollout.metrics.templates import Headline, SampleKind, Template

# float64 counts are exact integers only below 2^53; a count beyond that is a broken query
MAX_COUNT = 2.0**53

# what each built-in template counts, and how a version is named with it ("no requests to stable")
UNITS: dict[str, tuple[str, str]] = {
    "error-rate": ("requests", "to"),
    "latency-p99": ("requests", "to"),
    "accuracy": ("feedback labels", "for"),
    "prediction-shift": ("predictions", "from"),
    "confidence-shift": ("predictions", "from"),
    "feature-drift": ("feature observations", "from"),
    "shadow-agreement": ("shadow comparisons", "of"),
    "mae": ("feedback labels", "for"),
    "rmse": ("feedback labels", "for"),
    "prediction-value-shift": ("predictions", "from"),
}

# headlines that compare the candidate with stable, so a threshold on them needs stable's data too
_STABLE_HEADLINES = frozenset({Headline.PSI, Headline.KS, Headline.MAX_PSI})

SAMPLE_OF_KIND: dict[SampleKind, type] = {
    SampleKind.VALUE: ValueSample,
    SampleKind.PROPORTION: ProportionSample,
    SampleKind.HISTOGRAM: HistogramSample,
    SampleKind.CATEGORICAL: CategoricalSample,
    SampleKind.FEATURES: FeatureSample,
    SampleKind.MEAN: MeanSample,
}

# relative slack of the consistency checks of a mean sample: increase() extrapolates each series
# on its own, so the three sums of one set of rows can disagree by a hair
MEAN_SLACK = 0.01

_RESET = "a counter reset inside the window, or a query that subtracts counters: use increase() over the window, which handles resets"


def _le(bound: float) -> str:
    """A bound or a value as Prometheus writes it: 0.5, +Inf, -Inf."""
    return "+Inf" if bound == math.inf else "-Inf" if bound == -math.inf else f"{bound:g}"


def _count_problem(x: object) -> str | None:
    """What is wrong with one count (``is NaN: ...``), or None for a finite, non-negative count."""
    try:
        v = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return f"{x!r}, not a number"
    if math.isnan(v):
        return "NaN: the query divides by zero or reads a NaN series; counts come from increase() of counters"
    if math.isinf(v):
        return f"{_le(v)}: a counter overflowed or the query divides by zero"
    if v < 0:
        return f"negative ({v:g}): {_RESET}"
    if v > MAX_COUNT:
        return f"{v:g}, beyond 2^53 where float counts stop being exact: check the query"
    return None


def _floats(values: object) -> np.ndarray | None:
    try:
        a = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        return None
    return a if a.ndim == 1 else None


def _check_counts(who: str, counts: tuple[float, ...], names: list[str]) -> str | None:
    """The first bad count of one version, named by its bucket or category."""
    for name, x in zip(names, counts, strict=False):
        problem = _count_problem(x)
        if problem is not None:
            return f"{who}'s count {name} is {problem}"
    return None


def _check_histogram(h: HistogramSample, what: str, needs_inf: bool) -> str | None:
    b = _floats(h.bounds)
    if b is None:
        return f"{what} has bucket bounds that are not numbers ({h.bounds!r}): check the le label values"
    n = b.size
    for who, counts in (("candidate", h.candidate_counts), ("stable", h.stable_counts)):
        size = len(counts)
        if size not in (0, n):
            return (
                f"{what} has {n} bounds but {size} {who} counts: check the query groups by le "
                f"(sum by (le) (increase(..._bucket[...])))"
            )
    if n == 0:
        return None  # no buckets yet: missing data, not malformed
    if np.isnan(b).any():
        return f"{what} has a NaN bucket bound: check the le label values of the query"
    if np.isneginf(b).any():
        return f"{what} has a -Inf bucket bound: bounds are the finite le values and +Inf"
    repeated = [x for x, count in zip(*np.unique(b, return_counts=True), strict=True) if count > 1]
    if repeated:
        return (
            f"{what} has bound le={_le(repeated[0])} more than once: each bound must be one series; "
            f"sum by (le) over every other label"
        )
    down = np.flatnonzero(np.diff(b) <= 0)
    if down.size:
        i = int(down[0])
        return (
            f"{what} has bounds out of order (le={_le(b[i])} before le={_le(b[i + 1])}): give the bounds "
            f"in increasing order and the counts in the same order"
        )
    if n == 1:
        return (
            f"{what} has a single bucket (le={_le(b[0])}): one bucket cannot tell values apart; check the "
            f"histogram's buckets (the exporter's bucket list, or an le filter in the query)"
        )
    names = [f"in bucket le={_le(x)}" for x in b]
    for who, counts in (("candidate", h.candidate_counts), ("stable", h.stable_counts)):
        problem = _check_counts(who, counts, names)
        if problem is not None:
            return f"{what}: {problem}"
    if needs_inf and b[-1] != math.inf:
        return (
            f"{what} has no +Inf bucket (the largest bound is le={_le(b[-1])}): observations above it are "
            f'not counted, so no quantile can be read; check that the query keeps the le="+Inf" series'
        )
    return None


def _check_labels(labels: tuple[object, ...], what: str, by: str) -> str | None:
    seen: set[object] = set()
    for label in labels:
        try:
            if label in seen:
                return f"{what} {label!r} appears more than once: sum by ({by}) so each is one series"
            seen.add(label)
        except TypeError:
            return f"{what} {label!r} is not a label value"
    return None


def _check_categorical(c: CategoricalSample) -> str | None:
    problem = _check_labels(tuple(c.categories), "category", "class")
    if problem is not None:
        return problem
    n = len(c.categories)
    for who, counts in (("candidate", c.candidate_counts), ("stable", c.stable_counts)):
        if len(counts) not in (0, n):
            return f"{n} categories but {len(counts)} {who} counts: check the query groups by class"
        problem = _check_counts(who, counts, [f"for category {x!r}" for x in c.categories])
        if problem is not None:
            return problem
    return None


def _check_features(f: FeatureSample) -> str | None:
    if len(f.features) != len(f.histograms):
        return (
            f"{len(f.features)} features but {len(f.histograms)} histograms: one histogram per feature "
            f"(check the query groups by feature)"
        )
    problem = _check_labels(tuple(f.features), "feature", "feature")
    if problem is not None:
        return problem
    for name, h in zip(f.features, f.histograms, strict=True):
        if not isinstance(h, HistogramSample):
            return f"feature {name!r} has no histogram (got {type(h).__name__})"
        problem = _check_histogram(h, f"the histogram of feature {name!r}", needs_inf=False)
        if problem is not None:
            return problem
    return None


def _check_proportion(p: ProportionSample) -> str | None:
    for who, bad, total in (
        ("candidate", p.candidate_bad, p.candidate_total),
        ("stable", p.stable_bad, p.stable_total),
    ):
        for name, x in (("total", total), ("bad", bad)):
            problem = _count_problem(x)
            if problem is not None:
                return f"{who}'s {name} count is {problem}"
        if float(bad) > float(total) * (1 + 1e-9):
            return (
                f"{who} has {float(bad):g} bad out of {float(total):g} in total: the bad count must be part "
                f"of the total (the same labels and window in both queries)"
            )
    return None


def _sum_problem(x: object) -> str | None:
    """What is wrong with a sum of errors (``is NaN: ...``): as a count, but a sum of squared errors
    may pass 2^53 (errors in dollars), so only finite and non-negative."""
    problem = _count_problem(x)
    return None if problem is not None and "2^53" in problem else problem


def _check_mean(m: MeanSample) -> str | None:
    """Each version's labelled rows and error sums: numbers, non-negative, and possible for one set
    of rows: no error without rows, and (sum |e|)^2 / n <= sum e^2 <= (sum |e|)^2."""
    for who, n, s1, s2 in (
        ("candidate", m.candidate_n, m.candidate_total, m.candidate_total_sq),
        ("stable", m.stable_n, m.stable_total, m.stable_total_sq),
    ):
        for name, x, check in (
            ("labelled-row count", n, _count_problem),
            ("sum of absolute errors", s1, _sum_problem),
            ("sum of squared errors", s2, _sum_problem),
        ):
            problem = check(x)
            if problem is not None:
                return f"{who}'s {name} is {problem}"
        n, s1, s2 = float(n), float(s1), float(s2)  # type: ignore[arg-type]
        same = "the three queries must count the same rows (the same model, version and window)"
        if n <= 0 and (s1 > 0 or s2 > 0):
            return f"{who} has errors summed ({s1:g} absolute, {s2:g} squared) over no labelled rows: {same}"
        if s1 * s1 > n * s2 * (1 + MEAN_SLACK) or s2 > s1 * s1 * (1 + MEAN_SLACK):
            return (
                f"{who}'s error sums are impossible for {n:g} rows (sum |e| {s1:g}, sum e^2 {s2:g}: "
                f"(sum |e|)^2 / rows <= sum e^2 <= (sum |e|)^2): {same}"
            )
    return None


def check_sample(sample: object, template: Template | None = None) -> str | None:
    """Why ``sample`` cannot be judged, as a message a user can act on; None when it is well formed.

    Missing data (no buckets yet, zero counts, absent counts of one version) is not malformed:
    see ``missing``. With a quantile ``template`` (latency) a histogram must end with +Inf."""
    match sample:
        case ValueSample(value=v):
            try:
                x = float(v)
            except (TypeError, ValueError):
                return f"the query returned {v!r}, not a number"
            if math.isinf(x):
                return f"the query returned {_le(x)}: a division by zero? check the query's denominator"
            return None
        case ProportionSample():
            return _check_proportion(sample)
        case HistogramSample():
            needs_inf = template is not None and template.headline == Headline.QUANTILE
            return _check_histogram(sample, "histogram", needs_inf)
        case CategoricalSample():
            return _check_categorical(sample)
        case FeatureSample():
            return _check_features(sample)
        case MeanSample():
            return _check_mean(sample)
    return f"not a sample: {type(sample).__name__}"


def kind_problem(sample: object, template: Template | None, *, value_ok: bool) -> str | None:
    """A sample of another kind than the template makes (a histogram for error-rate); None if it
    fits. Without a template (a raw query) every sample fits; ``value_ok`` lets one number stand
    for any template (the threshold judge)."""
    if template is None or isinstance(sample, SAMPLE_OF_KIND[template.kind]):
        return None
    if value_ok and isinstance(sample, ValueSample):
        return None
    got = type(sample).__name__.removesuffix("Sample").lower() or type(sample).__name__
    return (
        f"template {template.name!r} makes {template.kind.value} samples but got a {got} sample: "
        f"the metric source and the template disagree"
    )


def complete(sample: Sample) -> Sample:
    """The sample with a version's absent counts (an empty tuple) as zeros: nothing reported is
    nothing observed. Call on a sample ``check_sample`` accepted."""
    match sample:
        case HistogramSample(bounds=b, candidate_counts=c, stable_counts=s) if b and (not c or not s):
            zeros = (0.0,) * len(b)
            return replace(sample, candidate_counts=c or zeros, stable_counts=s or zeros)
        case CategoricalSample(categories=k, candidate_counts=c, stable_counts=s) if k and (not c or not s):
            zeros = (0.0,) * len(k)
            return replace(sample, candidate_counts=c or zeros, stable_counts=s or zeros)
        case FeatureSample(histograms=hs):
            done = tuple(complete(h) for h in hs)
            return sample if done == tuple(hs) else replace(sample, histograms=done)
    return sample


def observed(sample: Sample) -> tuple[float, float]:
    """(candidate, stable) observations of any kind in a completed, well-formed sample (summed
    over features); 1, 0 for a raw value."""
    match sample:
        case ProportionSample(candidate_total=c, stable_total=s):
            return float(c), float(s)
        case (
            HistogramSample(candidate_counts=cc, stable_counts=sc)
            | CategoricalSample(candidate_counts=cc, stable_counts=sc)
        ):
            return float(sum(cc)), float(sum(sc))
        case FeatureSample(histograms=hs):
            sizes = [observed(h) for h in hs]
            return sum(c for c, _ in sizes), sum(s for _, s in sizes)
        case MeanSample(candidate_n=c, stable_n=s):
            return float(c), float(s)
    return 1.0, 0.0


def needs_stable(template: Template | None, *, comparative: bool) -> bool:
    """Judging needs stable's observations too: the judge compares the versions (``comparative``:
    comparative, sequential), or the template's headline is itself a comparison (PSI, KS)."""
    return comparative or (template is not None and template.headline in _STABLE_HEADLINES)


def missing(sample: Sample, template: Template | None, *, needs_stable: bool) -> str | None:
    """Why there is nothing to judge yet ("no requests to stable in the window"), or None."""
    if isinstance(sample, ValueSample):
        if math.isnan(float(sample.value)):
            return "the query returned NaN: no data in the window yet (e.g. 0/0 before the first request)"
        return None
    if isinstance(sample, FeatureSample) and not sample.features:
        return "no input features recorded in the window yet"
    noun, to = UNITS.get(template.name, ("observations", "from")) if template else ("observations", "from")
    n_c, n_s = observed(sample)
    absent = [who for who, n in (("candidate", n_c), ("stable", n_s)) if n <= 0]
    if not needs_stable and "stable" in absent:
        absent.remove("stable")
    if not absent:
        return None
    why = f"no {noun} {to} {' or '.join(absent)} in the window"
    if isinstance(sample, HistogramSample) and not sample.bounds:
        why += " (the histogram has no buckets yet)"
    elif isinstance(sample, CategoricalSample) and not sample.categories:
        why += " (no categories yet)"
    return why


def screen(
    metric: str,
    sample: Sample,
    template: Template | None,
    now: float,
    *,
    comparative: bool,
    sizes: tuple[float, float],
) -> tuple[Measurement | None, Sample]:
    """(the Measurement to return instead of judging, or None; the completed sample to judge).

    ``comparative``: the judge compares candidate with stable (comparative, sequential) and takes
    only the template's sample kind; a threshold judge takes one number for any template, and
    needs stable's data only for a shift headline. ``sizes`` go in an Inconclusive's details."""
    problem = kind_problem(sample, template, value_ok=not comparative) or check_sample(sample, template)
    if problem is not None:
        return Measurement(metric, Verdict.ERROR, None, now, problem), sample
    sample = complete(sample)
    why = missing(sample, template, needs_stable=needs_stable(template, comparative=comparative))
    if why is not None:
        details = {"candidate_n": sizes[0], "stable_n": sizes[1]}
        return Measurement(metric, Verdict.INCONCLUSIVE, None, now, why, details), sample
    return None, sample
