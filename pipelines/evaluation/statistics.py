"""Statistics over an arm's images: mean ± std per metric, and paired differences with Student's t interval."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from pipelines.evaluation.arms import Arm


@dataclass(frozen=True)
class Summary:
    n: int  # images with a value
    images: int  # images reconstructed without error
    mean: float | None
    std: float | None  # sample std (ddof 1); None below 2 values


def summarize(arm: Arm, metric: str) -> Summary:
    import numpy as np

    good = arm.good
    values = np.array([arm.values[i][metric] for i in good if metric in arm.values.get(i, {})], dtype=np.float64)
    n = len(values)
    return Summary(
        n=n,
        images=len(good),
        mean=float(values.mean()) if n else None,
        std=float(values.std(ddof=1)) if n > 1 else None,
    )


@dataclass(frozen=True)
class Paired:
    n: int  # images both arms have a value for
    mean: float | None  # mean of (arm − reference)
    std: float | None
    low: float | None  # t-interval at `confidence`; None below 2 pairs
    high: float | None
    p_value: float | None  # two-sided paired t-test
    confidence: float


def paired_difference(a: Mapping[str, float], b: Mapping[str, float], confidence: float = 0.95) -> Paired:
    """Mean of a[i] − b[i] over the ids in both, with Student's t interval and the paired t-test's p-value."""
    import numpy as np
    from scipy import stats

    ids = sorted(set(a) & set(b))
    d = np.array([a[i] - b[i] for i in ids], dtype=np.float64)
    n = len(d)
    if n == 0:
        return Paired(0, None, None, None, None, None, confidence)
    mean = float(d.mean())
    if n == 1:
        return Paired(1, mean, None, None, None, None, confidence)
    std = float(d.std(ddof=1))
    if std == 0:
        # Identical differences: the interval collapses and the t statistic is undefined.
        return Paired(n, mean, 0.0, mean, mean, 1.0 if mean == 0 else 0.0, confidence)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    p = float(2 * stats.t.sf(abs(mean) / (std / math.sqrt(n)), n - 1))
    return Paired(n, mean, std, mean - half, mean + half, p, confidence)


def metric_column(arm: Arm, metric: str) -> dict[str, float]:
    """image_id -> value over the arm's good images that have the metric."""
    return {i: arm.values[i][metric] for i in arm.good if metric in arm.values.get(i, {})}
