"""Statistics over seeds: mean ± standard deviation, and the paired difference
of two configurations trained on the same seeds, with a t interval."""

import dataclasses
import math

import numpy as np

__all__ = ["mean_std", "PairedDifference", "paired_difference"]


def mean_std(values):
    """Mean and sample standard deviation (`ddof=1`); the deviation is NaN for one value.

    Raises:
        ValueError: If `values` is empty.
    """
    values = np.asarray(values, dtype="float64")
    if values.size == 0:
        raise ValueError("No values to summarise.")
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else math.nan


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """`mean` of the per-seed differences and its confidence interval
    `[low, high]` (NaN with fewer than two seeds, where none is defined)."""

    mean: float
    low: float
    high: float
    seeds: int
    confidence: float

    @property
    def defined(self):
        """Whether the interval exists (two or more seeds)."""
        return self.seeds > 1


def paired_difference(values, baseline, *, confidence=0.95):
    """The mean of `values[i] - baseline[i]` with a Student-t confidence interval.

    The runs are paired by seed: seed `i` of both configurations starts from
    the same initial weights and sees the batches in the same order, so the
    per-seed differences are the sample, and the interval is
    `mean ± t(confidence, n - 1) · sd / √n` over those `n` differences.

    Args:
        values: Scores of a configuration, one per seed.
        baseline: Scores of the baseline on the same seeds, in the same order.
        confidence: Two-sided confidence level.

    Returns:
        A `PairedDifference`.

    Raises:
        ValueError: If the two are empty or of different lengths.
    """
    from scipy import stats

    values = np.asarray(values, dtype="float64")
    baseline = np.asarray(baseline, dtype="float64")
    if values.ndim != 1 or values.shape != baseline.shape or values.size == 0:
        raise ValueError(
            f"Paired scores need one value per seed on both sides, got shapes {values.shape} and {baseline.shape}."
        )
    differences = values - baseline
    seeds = differences.size
    mean = float(differences.mean())
    if seeds < 2:
        return PairedDifference(mean, math.nan, math.nan, seeds, confidence)
    half_width = float(
        stats.t.ppf(0.5 + confidence / 2, df=seeds - 1) * differences.std(ddof=1) / math.sqrt(seeds)
    )
    return PairedDifference(mean, mean - half_width, mean + half_width, seeds, confidence)
