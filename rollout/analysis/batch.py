"""Samples as arrays: many rollouts (or one) judged in one numpy call.

A judge's verdict rule is written once, over arrays (``verdicts(batch)``); ``judge(sample)`` wraps
one sample as a batch of shape () and reads the one verdict back, and the simulator passes batches
of thousands of simulated rollouts. So what the simulator measures is the judge the engine runs.
Proportion, histogram and mean samples have batch forms; categorical and feature samples are judged one
at a time. Who calls it: the judges in this package and ``rollout.simulator``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rollout.analysis.base import HistogramSample, MeanSample, ProportionSample, Sample, Verdict

SUCCESSFUL, FAILED, INCONCLUSIVE = 0, 1, 2
VERDICT_OF_CODE = (Verdict.SUCCESSFUL, Verdict.FAILED, Verdict.INCONCLUSIVE)


@dataclass(frozen=True)
class ProportionBatch:
    candidate_bad: np.ndarray
    candidate_total: np.ndarray
    stable_bad: np.ndarray
    stable_total: np.ndarray

    @property
    def sizes(self) -> tuple[np.ndarray, np.ndarray]:
        return self.candidate_total, self.stable_total


@dataclass(frozen=True)
class HistogramBatch:
    """Per-bucket counts on the last axis; ``bounds`` shared by every row."""

    bounds: tuple[float, ...]
    candidate_counts: np.ndarray
    stable_counts: np.ndarray

    @property
    def sizes(self) -> tuple[np.ndarray, np.ndarray]:
        return self.candidate_counts.sum(axis=-1), self.stable_counts.sum(axis=-1)


@dataclass(frozen=True)
class MeanBatch:
    """Per version: observations, the sum of their values and of their squares (``MeanSample``)."""

    candidate_n: np.ndarray
    candidate_total: np.ndarray
    candidate_total_sq: np.ndarray
    stable_n: np.ndarray
    stable_total: np.ndarray
    stable_total_sq: np.ndarray

    @property
    def sizes(self) -> tuple[np.ndarray, np.ndarray]:
        return self.candidate_n, self.stable_n


Batch = ProportionBatch | HistogramBatch | MeanBatch


@dataclass
class Verdicts:
    """Verdict codes (SUCCESSFUL / FAILED / INCONCLUSIVE), the headline value (NaN = none) and
    per-test details, all arrays of the batch's shape."""

    code: np.ndarray
    value: np.ndarray
    details: dict[str, np.ndarray] = field(default_factory=dict)


def to_batch(sample: Sample) -> Batch | None:
    """A one-sample batch (shape ()), or None for samples without a batch form."""
    if isinstance(sample, ProportionSample):
        return ProportionBatch(
            np.asarray(float(sample.candidate_bad)),
            np.asarray(float(sample.candidate_total)),
            np.asarray(float(sample.stable_bad)),
            np.asarray(float(sample.stable_total)),
        )
    if isinstance(sample, MeanSample):
        return MeanBatch(
            *(
                np.asarray(float(x))
                for x in (
                    sample.candidate_n,
                    sample.candidate_total,
                    sample.candidate_total_sq,
                    sample.stable_n,
                    sample.stable_total,
                    sample.stable_total_sq,
                )
            )
        )
    if isinstance(sample, HistogramSample):
        return HistogramBatch(
            tuple(sample.bounds),
            np.asarray(sample.candidate_counts, dtype=float),
            np.asarray(sample.stable_counts, dtype=float),
        )
    return None


def scalar(x: np.ndarray) -> float | None:
    """One value of a shape-() result; None for NaN."""
    v = float(x)
    return None if np.isnan(v) else v
