"""Agreement of two sets of paired ratings, per dimension and overall, with 95% bootstrap intervals: a model
version against the reviewers, or the shadow version against the version users saw.

The point values are `hcp evaluate`'s (`evaluate.metrics.agreement`); the intervals are percentile bootstrap
intervals over the transcripts (drawn with replacement, seeded), as `hcp data agreement` gives them, with the
draws where a statistic is undefined left out of its interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hcp.evaluate.metrics import agreement, batch_metric
from hcp.raters.agreement import estimate

INTERVAL_METRICS = ("exact", "within_one", "mae", "qwk")
RESAMPLES = 1000
SEED = 42


def paired_agreement(first: Sequence[dict[str, float]], second: Sequence[dict[str, float]], names: Sequence[str],
                     levels: Sequence[int], resamples: int = RESAMPLES, seed: int = SEED) -> dict[str, Any]:
    """{name: {n, exact, within_one, mae, qwk, spearman, pearson, notes, intervals: {metric: {value, ci_low,
    ci_high}}}} of `second` against `first` (the reference: reviewers, or the version users saw), matched by
    position."""
    if len(first) != len(second):
        raise ValueError(f"paired ratings: {len(first)} against {len(second)}")
    rng = np.random.default_rng(seed)
    n = len(first)
    draws = np.vstack([np.arange(n)[None], rng.integers(0, n, size=(resamples, n))]) if n else None
    result: dict[str, Any] = {}
    for name in names:
        h = np.array([r[name] for r in first], dtype=float)
        p = np.array([r[name] for r in second], dtype=float)
        found = agreement(h, p, levels)
        found.pop("confusion")
        found["intervals"] = ({metric: estimate(batch_metric(metric, h[draws], p[draws], levels))
                               for metric in INTERVAL_METRICS} if draws is not None else {})
        result[name] = found
    return result
