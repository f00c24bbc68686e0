"""Verdicts, samples and the Judge interface shared by every judge.

A metric provider turns a metric spec into a *sample* (numbers for candidate and, for comparative
judges, stable); a judge turns a sample into a *measurement* with one of four verdicts, as in Argo
Rollouts: Successful, Failed, Inconclusive (not enough evidence yet) or Error (could not measure).
Judges are pure functions of their input: no I/O, no clocks.
Who calls it: the engine (via analysis results fed in as observations) and the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class Verdict(StrEnum):
    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"
    ERROR = "Error"


@dataclass(frozen=True)
class ValueSample:
    """A single number for the candidate (threshold judge)."""

    value: float


@dataclass(frozen=True)
class ProportionSample:
    """Counts of 'bad' (errors, wrong answers) out of trials, per version, over the same window."""

    candidate_bad: float
    candidate_total: float
    stable_bad: float
    stable_total: float


@dataclass(frozen=True)
class HistogramSample:
    """Bucketed observations per version (Prometheus histogram increases over the same window).

    ``bounds`` are the upper bounds (``le``) in increasing order, the last may be +Inf; counts are
    per bucket (not cumulative).
    """

    bounds: tuple[float, ...]
    candidate_counts: tuple[float, ...]
    stable_counts: tuple[float, ...]


@dataclass(frozen=True)
class CategoricalSample:
    """Counts per category (predicted class) per version, for distribution-shift tests."""

    categories: tuple[str, ...]
    candidate_counts: tuple[float, ...]
    stable_counts: tuple[float, ...]


@dataclass(frozen=True)
class FeatureSample:
    """One histogram per input feature (z-score buckets), per version, for input-drift tests."""

    features: tuple[str, ...]
    histograms: tuple[HistogramSample, ...]


@dataclass(frozen=True)
class MeanSample:
    """Per version, over the same window: ``n`` observations, the ``total`` of their values and the
    ``total_sq`` of their squares. For a regressor's labelled rows (the mae and rmse templates) the
    values are the absolute errors |prediction - label|, so ``total_sq`` is the sum of squared
    errors (``rollout.analysis.means`` reads means and variances from the three numbers)."""

    candidate_n: float
    candidate_total: float
    candidate_total_sq: float
    stable_n: float
    stable_total: float
    stable_total_sq: float


Sample = ValueSample | ProportionSample | HistogramSample | CategoricalSample | FeatureSample | MeanSample


@dataclass(frozen=True)
class Measurement:
    metric: str
    verdict: Verdict
    value: float | None = None  # the headline number (e.g. candidate error rate, p-value)
    at: float = 0.0  # when it was taken (the ``now`` passed in)
    message: str = ""
    details: dict[str, float] = field(default_factory=dict)


class Judge(Protocol):
    """Turns a sample into a verdict. Pure; configured from a ``JudgeSpec`` and ``MetricSpec``."""

    def judge(self, metric: str, sample: Sample, now: float) -> Measurement: ...
