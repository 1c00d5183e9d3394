"""Agreement metrics between paired ratings: human against model, run against run, model against baseline.

Per dimension and for the overall score: exact agreement, within-one agreement, mean absolute error, Spearman
and Pearson correlation (scipy), quadratically weighted kappa and the confusion matrix (numpy, below). The
overall score is a weighted mean, not a whole score: exact and within-one agreement, kappa and the confusion
matrix use it rounded half up to a whole score; MAE and the correlations use it as it is. With several runs,
Krippendorff's alpha (`krippendorff`; ordinal for the dimensions, interval for the overall score) says how far
the runs agree with each other. Differences between two raters carry percentile bootstrap intervals.

A metric that is undefined (a correlation of constant ratings, a kappa where every rating is the same score,
alpha without any variation) is None with a note, never a number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hcp.errors import DataError
from hcp.rubric import Rubric

OVERALL = "overall"
METRICS = ("exact", "within_one", "mae", "spearman", "pearson", "qwk")
COMPARED = ("exact", "within_one", "mae", "qwk", "spearman")  # differences with bootstrap intervals
METRIC_TITLES = {"exact": "exact", "within_one": "within one", "mae": "MAE", "spearman": "Spearman",
                 "pearson": "Pearson", "qwk": "QWK"}


@dataclass
class Rater:
    role: str  # 'model' or 'baseline'
    model: str
    backend: str
    files: list[Path]  # one results file per run
    runs: list[dict[str, dict[str, float]]]  # per run: id -> {dimension: score, 'overall': value}
    notes: list[str] = field(default_factory=list)
    # First run, ids whose record has score probabilities: id -> {"distribution": {dim: {score: p}},
    # "needs_review": bool} (the flag recomputed with the config's threshold, other reasons kept).
    probabilities: dict[str, dict[str, Any]] = field(default_factory=dict)


def whole(values: np.ndarray) -> np.ndarray:
    """Rounded half up (numpy rounds half to even): an overall 3.5 counts as 4."""
    return np.floor(np.asarray(values, dtype=float) + 0.5).astype(int)


def agreement(human: Sequence[float], predicted: Sequence[float], levels: Sequence[int]) -> dict[str, Any]:
    """Agreement of paired ratings (see the module's docstring); undefined metrics are None with a note."""
    from scipy.stats import pearsonr, spearmanr

    h, p = np.asarray(human, dtype=float), np.asarray(predicted, dtype=float)
    hw, pw = whole(h), whole(p)
    notes: list[str] = []
    result: dict[str, Any] = {
        "n": int(h.size),
        "exact": number(np.mean(hw == pw)),
        "within_one": number(np.mean(np.abs(hw - pw) <= 1)),
        "mae": number(np.mean(np.abs(h - p))),
        "spearman": None,
        "pearson": None,
    }
    if h.size < 2:
        notes.append("correlation needs at least two transcripts")
    elif np.ptp(p) == 0 or np.ptp(h) == 0:
        which = "predictions" if np.ptp(p) == 0 else "human scores"
        constant = p[0] if np.ptp(p) == 0 else h[0]
        notes.append(f"constant {which} (all {constant:g}): correlation undefined")
    else:
        result["spearman"] = number(spearmanr(h, p).statistic)
        result["pearson"] = number(pearsonr(h, p).statistic)
    result["qwk"] = number(_row_qwk(hw[None], pw[None], levels)[0])
    if result["qwk"] is None:
        notes.append("kappa undefined: every rating, human and predicted, is the same score")
    result["confusion"] = confusion(hw, pw, levels).tolist()
    result["notes"] = notes
    return result


def number(value: Any) -> float | None:
    """A float for JSON, None where undefined (reports round; metrics.json keeps full precision)."""
    value = float(value)
    return value if np.isfinite(value) else None


def run_reliability(runs: Sequence[dict[str, dict[str, float]]], ids: Sequence[str], name: str,
                    levels: Sequence[int]) -> dict[str, Any]:
    """Krippendorff's alpha of the runs' ratings of one dimension (ordinal) or the overall score (interval)."""
    import krippendorff

    data = np.array([[run[i][name] if i in run else np.nan for i in ids] for run in runs], dtype=float)
    pairable = int(np.sum(np.sum(~np.isnan(data), axis=0) >= 2))
    values = data[~np.isnan(data)]
    if pairable == 0:
        return {"alpha": None, "pairable": 0,
                "note": "no transcript was rated in two runs (each has a rating from one run only), so there is "
                        "nothing to compare — rate the same transcripts in every run"}
    if np.unique(values).size < 2:
        return {"alpha": None, "pairable": pairable,
                "note": f"every rating in every run is {values[0]:g}: alpha undefined (no variation), the runs agree"}
    if name == OVERALL:
        alpha = krippendorff.alpha(reliability_data=data, level_of_measurement="interval")
    else:
        alpha = krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal", value_domain=list(levels))
    return {"alpha": number(alpha), "pairable": pairable, "note": None}


# Vectorised forms of the compared metrics over many resamples at once (rows of a (B, n) array). scikit-learn's
# cohen_kappa_score and scipy's spearmanr take a few milliseconds a call, too slow for thousands of resamples
# per dimension; scipy.stats.bootstrap was looked at, but it gives a NaN interval as soon as one resample's
# statistic is undefined (a constant resample, common in small sets), where we drop those resamples and say so.
# Kappa and the confusion matrix have this one implementation (scikit-learn is not a dependency: it agreed to
# 4e-16 on 2,845 random tables when it was dropped); tests/test_evaluate.py checks them against tables worked
# out by hand and the definition written as loops, and the correlations against scipy.


def batch_metric(name: str, h: np.ndarray, p: np.ndarray, levels: Sequence[int]) -> np.ndarray:
    """Metric `name` for each row of paired (B, n) arrays; NaN where undefined."""
    if name == "exact":
        return np.mean(whole(h) == whole(p), axis=1)
    if name == "within_one":
        return np.mean(np.abs(whole(h) - whole(p)) <= 1, axis=1)
    if name == "mae":
        return np.mean(np.abs(h - p), axis=1)
    if name == "spearman":
        from scipy.stats import rankdata

        return _row_pearson(rankdata(h, axis=1), rankdata(p, axis=1))
    if name == "pearson":
        return _row_pearson(h, p)
    if name == "qwk":
        return _row_qwk(whole(h), whole(p), levels)
    raise ValueError(f"unknown metric {name!r}")


def _row_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denominator = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (a * b).sum(axis=1) / denominator, np.nan)


def confusion(human: np.ndarray, predicted: np.ndarray, levels: Sequence[int]) -> np.ndarray:
    """Counts of whole-score pairs: rows the human's score, columns the predicted, in the order of `levels`."""
    k, lo = len(levels), min(levels)
    cells = (np.asarray(human, dtype=int) - lo) * k + (np.asarray(predicted, dtype=int) - lo)
    return np.bincount(cells, minlength=k * k).reshape(k, k)


def _row_qwk(h: np.ndarray, p: np.ndarray, levels: Sequence[int]) -> np.ndarray:
    """Quadratically weighted kappa per row: 1 - sum(w * observed) / sum(w * expected), w = (i - j)^2, the
    expected counts from the row's marginals; NaN where every rating of the row is one and the same score."""
    rows, n = h.shape
    k, lo = len(levels), min(levels)
    cells = (h - lo) * k + (p - lo) + (np.arange(rows) * k * k)[:, None]
    observed = np.bincount(cells.ravel(), minlength=rows * k * k).reshape(rows, k, k)  # (B, human, predicted)
    return qwk_of_tables(observed)


def qwk_of_tables(observed: np.ndarray) -> np.ndarray:
    """Quadratically weighted kappa of each table in a (B, k, k) array of counts (rows one rater's scores,
    columns the other's, in the order of the levels; counts may be weights, as a bootstrap resample's are): NaN
    where a table is empty or every rating in it is one and the same score."""
    k = observed.shape[-1]
    n = observed.sum(axis=(1, 2))
    weights = (np.arange(k)[:, None] - np.arange(k)[None, :]) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = observed.sum(axis=2)[:, :, None] * observed.sum(axis=1)[:, None, :] / n[:, None, None]
        disagreement = (weights * expected).sum(axis=(1, 2))
        return np.where(disagreement > 0, 1 - (weights * observed).sum(axis=(1, 2)) / disagreement, np.nan)


def compare(human: np.ndarray, model: np.ndarray, baseline: np.ndarray, levels: Sequence[int], resamples: int,
            seed: int) -> dict[str, Any]:
    """Model − baseline for each compared metric, with a 95% percentile bootstrap interval over transcripts
    (paired: a resample draws the same transcripts for both)."""
    rng = np.random.default_rng(seed)
    index = rng.integers(0, human.size, size=(resamples, human.size))
    out: dict[str, Any] = {}
    for name in COMPARED:
        point = (batch_metric(name, human[None], model[None], levels)
                 - batch_metric(name, human[None], baseline[None], levels))[0]
        spread = (batch_metric(name, human[index], model[index], levels)
                  - batch_metric(name, human[index], baseline[index], levels))
        spread = spread[np.isfinite(spread)]
        low, high = (np.percentile(spread, [2.5, 97.5]) if spread.size else (np.nan, np.nan))
        out[name] = {"difference": number(point), "ci_low": number(low), "ci_high": number(high),
                     "resamples": int(spread.size)}
    return out


def rater_metrics(rater: Rater, human: dict[str, dict[str, float]], rubric: Rubric) -> dict[str, Any]:
    first = rater.runs[0]
    ids = [i for i in human if i in first]
    if not ids:
        raise DataError(f"none of the {len(human)} labelled transcripts has a rating in {rater.files[0]} — the ids "
                        "must match the labelled file's (its 'id' field, or the id hcp gives a transcript without "
                        "one); rate the labelled file itself with 'hcp batch'")
    missing = [i for i in human if i not in first]
    names = [*rubric.names, OVERALL]
    metrics = {n: agreement([human[i][n] for i in ids], [first[i][n] for i in ids], rubric.scores) for n in names}
    reliability = ({n: run_reliability(rater.runs, list(human), n, rubric.scores) for n in names}
                   if len(rater.runs) > 1 else None)
    return {"model": rater.model, "backend": rater.backend, "files": [str(f) for f in rater.files],
            "runs": len(rater.runs), "n": len(ids), "missing": len(missing), "missing_ids": missing[:20],
            "metrics": metrics, "reliability": reliability, "notes": rater.notes,
            "probabilities": distribution_metrics(rater, human, rubric)}


# --- the score distributions: expected-score agreement, calibration, flagged against unflagged -------------

CALIBRATION_BINS = 10


def calibration(confidence: Sequence[float], correct: Sequence[bool], bins: int = CALIBRATION_BINS
                ) -> dict[str, Any]:
    """Expected calibration error: over equal-width confidence bins, the share of ratings in a bin times the
    gap between its mean confidence and its accuracy, summed (a confidence of 1 falls in the top bin); with the
    bins' rows for a reliability plot."""
    c, ok = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)
    which = np.minimum((c * bins).astype(int), bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            conf, acc = float(c[inside].mean()), float(ok[inside].mean())
            ece += inside.sum() / c.size * abs(conf - acc)
            rows.append({"low": b / bins, "high": (b + 1) / bins, "n": int(inside.sum()), "confidence": conf,
                         "accuracy": acc})
    return {"ece": number(ece) if c.size else None, "n": int(c.size), "bins": rows}


def distribution_metrics(rater: Rater, human: dict[str, dict[str, float]], rubric: Rubric) -> dict[str, Any] | None:
    """Agreement of the argmax and of the expected score with the humans, calibration of the confidence (the
    probability of the chosen score, against whether it equals the human's), and the disagreement with the
    humans among flagged and unflagged ratings; None when no rating has score probabilities."""
    first, probs = rater.runs[0], rater.probabilities
    ids = [i for i in human if i in first and i in probs]
    if not ids:
        return None
    by_dim: dict[str, Any] = {}
    pooled_conf: list[float] = []
    pooled_ok: list[bool] = []
    for name in rubric.names:
        dists = [probs[i]["distribution"][name] for i in ids]
        h = [human[i][name] for i in ids]
        argmax = [max(d, key=d.get) for d in dists]
        expected = [sum(s * p for s, p in d.items()) for d in dists]
        conf = [d.get(int(first[i][name]), 0.0) for d, i in zip(dists, ids, strict=True)]
        ok = [first[i][name] == human[i][name] for i in ids]
        pooled_conf += conf
        pooled_ok += ok
        by_dim[name] = {"argmax": _pick(agreement(h, argmax, rubric.scores)),
                        "expected": _pick(agreement(h, expected, rubric.scores)),
                        "calibration": calibration(conf, ok)}
    weights = {d.name: d.weight for d in rubric.dimensions}
    overall_expected = [sum(weights[n] * sum(s * p for s, p in probs[i]["distribution"][n].items())
                            for n in rubric.names) for i in ids]
    by_dim[OVERALL] = {"argmax": None, "expected": _pick(agreement([human[i][OVERALL] for i in ids],
                                                                    overall_expected, rubric.scores)),
                       "calibration": None}
    groups = {}
    for label, flagged in (("flagged", True), ("unflagged", False)):
        members = [i for i in ids if probs[i]["needs_review"] is flagged]
        wrong = [first[i][n] != human[i][n] for i in members for n in rubric.names]
        groups[label] = {"n": len(members),
                         "disagreement": number(np.mean(wrong)) if members else None,
                         "overall_mae": number(np.mean([abs(first[i][OVERALL] - human[i][OVERALL])
                                                        for i in members])) if members else None}
    return {"n": len(ids), "dimensions": by_dim, "calibration": calibration(pooled_conf, pooled_ok),
            "review": groups}


def _pick(values: dict[str, Any]) -> dict[str, Any]:
    return {"n": values["n"], "qwk": values["qwk"], "spearman": values["spearman"], "mae": values["mae"]}
