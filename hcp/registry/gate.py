"""The promotion gate: is the candidate not worse than the promoted version, against human labels?

Both versions rate the same labelled transcripts. For the overall score's quadratically weighted kappa, and for
each dimension's within-one agreement, the difference candidate − promoted gets a 95% percentile bootstrap
interval over the transcripts, paired (a resample draws the same transcripts for both: `hcp.evaluate.metrics.
compare`, the interval `hcp evaluate --baseline` reports). The candidate passes a check when the whole interval
lies above −margin: a drop as large as the margin is ruled out, not merely unseen. An interval that cannot be
computed (a kappa of constant ratings) does not pass: nothing was shown. A candidate that fails to rate a
transcript the promoted version rates is worse at its job, whatever its agreement on the rest.

With no version promoted yet, the candidate passes when it rates every transcript of the set validly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from hcp.evaluate.metrics import COMPARED, METRIC_TITLES, OVERALL, agreement, compare
from hcp.rubric import Rubric

Scores = Mapping[str, Mapping[str, float]]  # transcript id -> {dimension: score, 'overall': value}
DEFAULT_MARGIN = 0.05
SHOWN_IDS = 5


def gate_checks(rubric: Rubric) -> list[tuple[str, str]]:
    """(score, metric) pairs the gate tests: the overall QWK, then each dimension's within-one agreement."""
    return [(OVERALL, "qwk"), *((name, "within_one") for name in rubric.names)]


def decide(human: Scores, candidate: Scores, promoted: Scores | None, rubric: Rubric, *,
           margin: float = DEFAULT_MARGIN, resamples: int = 1000, seed: int = 42) -> dict[str, Any]:
    """The gate's decision, with everything the report shows: each rater's agreement with the humans, every
    compared metric's difference and interval, the checks and why the candidate passes or not."""
    names = [*rubric.names, OVERALL]
    failed = [i for i in human if i not in candidate]
    decision: dict[str, Any] = {
        "labelled": len(human), "margin": margin, "resamples": resamples, "seed": seed,
        "candidate": _agreement(human, candidate, names, rubric), "candidate_failed": len(failed),
        "promoted": None, "differences": None, "checks": [], "reasons": [],
    }
    if promoted is None:
        decision["first"] = True
        if failed:
            decision["reasons"].append(f"it did not rate {len(failed)} of the {len(human)} transcripts validly "
                                       f"(ids {_shown(failed)}); the first version must rate the whole set")
        decision["promote"] = not failed
        return decision

    decision["first"] = False
    decision["promoted"] = _agreement(human, promoted, names, rubric)
    worse_coverage = [i for i in failed if i in promoted]
    ids = [i for i in human if i in candidate and i in promoted]
    if worse_coverage:
        decision["reasons"].append(f"it failed to rate {len(worse_coverage)} transcript(s) the promoted version "
                                   f"rated (ids {_shown(worse_coverage)})")
    if not ids:
        decision["reasons"].append("no transcript was rated by both versions")
        decision["promote"] = False
        return decision
    differences: dict[str, Any] = {"n": len(ids)}
    for name in names:
        h, c, p = (np.array([source[i][name] for i in ids], dtype=float) for source in (human, candidate, promoted))
        differences[name] = compare(h, c, p, rubric.scores, resamples, seed)
    decision["differences"] = differences
    for name, metric in gate_checks(rubric):
        entry = differences[name][metric]
        low = entry["ci_low"]
        passes = low is not None and low > -margin
        decision["checks"].append({"score": name, "metric": metric, "difference": entry["difference"],
                                   "ci_low": low, "ci_high": entry["ci_high"], "passes": passes})
        if not passes:
            shown = "cannot be computed (constant ratings)" if low is None else f"reaches {low:+.3f}"
            decision["reasons"].append(f"{name} {METRIC_TITLES[metric]}: the 95% interval of the difference {shown}, "
                                       f"not above -{margin:g}")
    decision["promote"] = not decision["reasons"]
    return decision


def _agreement(human: Scores, rater: Scores, names: list[str], rubric: Rubric) -> dict[str, Any]:
    ids = [i for i in human if i in rater]
    if not ids:
        return {"n": 0, "metrics": {}}
    metrics = {n: agreement([human[i][n] for i in ids], [rater[i][n] for i in ids], rubric.scores) for n in names}
    return {"n": len(ids), "metrics": {n: {m: metrics[n][m] for m in (*COMPARED, "pearson")} for n in names}}


def _shown(ids: list[str]) -> str:
    return ", ".join(repr(i) for i in ids[:SHOWN_IDS]) + (" ..." if len(ids) > SHOWN_IDS else "")
