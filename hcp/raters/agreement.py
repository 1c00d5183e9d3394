"""How far annotators agree, per dimension and for the overall score (the rubric's weighted mean of an
annotator's scores), on the transcripts two or more of them rated:

- Krippendorff's alpha, ordinal for the dimensions and interval for the overall score (as `hcp evaluate` computes
  it across runs), every rating of a transcript counted however many annotators rated it;
- quadratically weighted kappa of each pair of annotators on the transcripts both rated, and its mean over the
  pairs (Light's way of extending a two-rater kappa);
- exact and within-one agreement: of the pairs of ratings of one transcript by two annotators, the share that are
  equal, and at most one point apart (the overall score rounded half up, as in `hcp evaluate`);
- each annotator's mean offset from the others: their score minus the mean of the others' scores of the same
  transcript, averaged over the transcripts they rated — positive rates high, negative rates low;

each with a 95% percentile bootstrap interval: the transcripts drawn with replacement (seeded), every statistic
computed on the same draws, and a draw where a statistic is undefined left out of its interval. And the
transcripts to adjudicate: those where two annotators' scores of one dimension are `DISPUTED` points apart or more.

The statistics are computed from per-transcript tables (a transcript's share of alpha's coincidence matrix, of a
pair's confusion matrix, of an offset), so a resample is a vector of counts per transcript and every resample of
every statistic is one matrix product: 1,000 resamples of 200 transcripts take well under a second. The
`krippendorff` package takes a few milliseconds per call, too slow for thousands of resamples per dimension;
tests/test_raters.py checks this alpha against it and against Krippendorff's published example.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from hcp.errors import DataError
from hcp.evaluate.metrics import OVERALL, number, qwk_of_tables, whole
from hcp.raters.annotations import Annotations, Transcript, read_annotations
from hcp.rubric import Rubric

DISPUTED = 2  # points apart on one dimension: the transcript goes to adjudication (and out of the consensus)
MIN_RESAMPLES = 100


@dataclass(frozen=True)
class AgreementOptions:
    files: tuple[Path, ...]  # one per annotator, or one whose records name their annotator
    report: Path | None = None  # folder for agreement.md, agreement.html (with plots) and agreement.json
    resamples: int = 1000  # bootstrap resamples for the intervals
    seed: int = 42  # of the bootstrap

    def __post_init__(self) -> None:
        if self.resamples < MIN_RESAMPLES:
            raise DataError(f"bootstrap resamples must be at least {MIN_RESAMPLES}, got {self.resamples}")
        if self.seed < 0:
            raise DataError(f"the bootstrap seed must be 0 or more, got {self.seed}")


@dataclass
class Agreement:
    metrics: dict[str, Any]  # what agreement.json holds
    files: list[Path]  # the report's files, when one was asked for


def run_agreement(options: AgreementOptions, rubric: Rubric) -> Agreement:
    """Read the annotators' files, measure their agreement, and write the report if asked."""
    annotations = read_annotations(options.files, rubric)
    metrics = measure(annotations, rubric, options.resamples, options.seed)
    files: list[Path] = []
    if options.report is not None:
        from hcp.raters.report import write_report

        files = write_report(metrics, options.report)
    return Agreement(metrics, files)


# --- the measures -------------------------------------------------------------------------------------------


def measure(annotations: Annotations, rubric: Rubric, resamples: int = 1000, seed: int = 42) -> dict[str, Any]:
    """Everything agreement.json holds (see the module's docstring)."""
    names = [*rubric.names, OVERALL]
    annotators = annotations.annotators
    values = {name: ratings_table(annotations, rubric, name) for name in names}
    weights = resample_weights(len(annotations.transcripts), resamples, seed)
    pairs = list(combinations(range(len(annotators)), 2))
    levels = rubric.scores
    dimensions: dict[str, Any] = {}
    pairwise: dict[str, dict[str, Any]] = {f"{annotators[a]}–{annotators[b]}": {} for a, b in pairs}
    offsets: dict[str, dict[str, Any]] = {name: {} for name in annotators}
    notes: list[str] = []
    for name in names:
        table = values[name]
        alpha = (alpha_interval(weights, table) if name == OVERALL
                 else alpha_ordinal(weights, coincidences(table, levels), len(levels)))
        tables = {pair: weights @ pair_tables(table[:, pair[0]], table[:, pair[1]], levels) for pair in pairs}
        k = len(levels)
        kappas = np.stack([qwk_of_tables(t.reshape(-1, k, k)) for t in tables.values()], axis=1)  # (R, pairs)
        pooled = sum(tables.values()).reshape(-1, k, k)
        total = pooled.sum(axis=(1, 2))
        near = np.abs(np.arange(k)[:, None] - np.arange(k)[None, :]) <= 1
        with np.errstate(invalid="ignore", divide="ignore"):
            exact = np.trace(pooled, axis1=1, axis2=2) / total
            within = (pooled * near).sum(axis=(1, 2)) / total
            defined = np.isfinite(kappas).sum(axis=1)
            mean_kappa = np.where(defined > 0, np.nansum(kappas, axis=1) / defined, np.nan)
        dimensions[name] = {"n": int(np.sum(np.sum(~np.isnan(table), axis=1) >= 2)), "alpha": estimate(alpha),
                            "qwk": estimate(mean_kappa), "exact": estimate(exact), "within_one": estimate(within)}
        for (a, b), column in zip(pairs, kappas.T, strict=True):
            both = int(np.sum(~np.isnan(table[:, a]) & ~np.isnan(table[:, b])))
            pairwise[f"{annotators[a]}–{annotators[b]}"][name] = {"n": both, **estimate(column)}
        for index, annotator in enumerate(annotators):
            offsets[annotator][name] = estimate(mean_offset(weights, table, index))
        if dimensions[name]["alpha"]["value"] is None:
            notes.append(f"{name}: every rating is the same score — alpha and kappa undefined (no variation): the "
                         "annotators agree")
    return {
        "files": [str(f) for f in annotations.files],
        "annotators": annotators,
        "ratings": annotations.counts,
        "rubric": rubric.digest,
        "transcripts": len(annotations.transcripts),
        "single": annotations.single,
        "resamples": resamples,
        "seed": seed,
        "dimensions": dimensions,
        "pairs": pairwise,
        "offsets": offsets,
        "largest_offset": _largest_offset(offsets),
        "adjudicate": adjudication(annotations, rubric),
        "notes": notes,
    }


def ratings_table(annotations: Annotations, rubric: Rubric, name: str) -> np.ndarray:
    """(transcripts, annotators): each annotator's score of each transcript (NaN where they did not rate it); for
    the overall score, the rubric's weighted mean of their scores."""
    def value(transcript: Transcript, annotator: str) -> float:
        example = transcript.ratings.get(annotator)
        if example is None:
            return np.nan
        return rubric.overall(example.scores) if name == OVERALL else example.scores[name]

    return np.array([[value(t, a) for a in annotations.annotators] for t in annotations.transcripts], dtype=float)


def resample_weights(n: int, resamples: int, seed: int) -> np.ndarray:
    """(1 + resamples, n): how often each transcript is drawn — the first row the data itself (all ones), then one
    row per bootstrap resample of the n transcripts, drawn with replacement."""
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n, size=(resamples, n)) + n * np.arange(resamples)[:, None]
    counts = np.bincount(drawn.ravel(), minlength=resamples * n).reshape(resamples, n)
    return np.vstack([np.ones((1, n)), counts]).astype(float)


def estimate(values: np.ndarray) -> dict[str, float | None]:
    """The statistic on the data (values[0]) with the 95% percentile interval of its defined resamples."""
    spread = values[1:][np.isfinite(values[1:])]
    low, high = np.percentile(spread, [2.5, 97.5]) if spread.size else (np.nan, np.nan)
    return {"value": number(values[0]), "ci_low": number(low), "ci_high": number(high)}


# Krippendorff's alpha = 1 - (N - 1) * sum(o * d2) / sum(n_c * n_k * d2), with o the coincidence matrix (each
# ordered pair of ratings of one transcript, weighted 1 / (m - 1) for its m ratings), n_c its margins, N their sum
# and d2 the squared distance between two values (Krippendorff, "Computing Krippendorff's Alpha-Reliability", 2011).


def coincidences(table: np.ndarray, levels: Sequence[int]) -> np.ndarray:
    """(transcripts, k * k): each transcript's share of the coincidence matrix of whole scores on `levels`."""
    n, annotators = table.shape
    k, lo = len(levels), min(levels)
    rated = ~np.isnan(table)
    m = rated.sum(axis=1)
    out = np.zeros((n, k, k))
    for i in range(annotators):
        for j in range(annotators):
            rows = np.nonzero(rated[:, i] & rated[:, j])[0] if i != j else np.array([], dtype=int)
            np.add.at(out, (rows, table[rows, i].astype(int) - lo, table[rows, j].astype(int) - lo),
                      1 / (m[rows] - 1))
    return out.reshape(n, k * k)


def alpha_ordinal(weights: np.ndarray, coincidence: np.ndarray, k: int) -> np.ndarray:
    """Ordinal alpha for each row of weights: the distance between levels c <= d is the number of ratings from c
    to d, less half of those at c and at d, squared."""
    o = (weights @ coincidence).reshape(-1, k, k)
    margins = o.sum(axis=2)  # (R, k)
    cumulative = np.cumsum(margins, axis=1)
    lo, hi = np.minimum.outer(np.arange(k), np.arange(k)), np.maximum.outer(np.arange(k), np.arange(k))
    between = cumulative[:, hi] - cumulative[:, lo] + margins[:, lo]  # (R, k, k): ratings from c to d
    d2 = (between - (margins[:, :, None] + margins[:, None, :]) / 2) ** 2
    observed = (o * d2).sum(axis=(1, 2))
    expected = (margins[:, :, None] * margins[:, None, :] * d2).sum(axis=(1, 2))
    return _alpha(margins.sum(axis=1), observed, expected)


def alpha_interval(weights: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Interval alpha for each row of weights. With d2 = (v - w)^2 no coincidence matrix is needed: over the
    ordered pairs of a transcript's m ratings, sum (v_i - v_j)^2 = 2 m sum(v^2) - 2 sum(v)^2, and over all values,
    sum n_c n_k (v_c - v_k)^2 = 2 N sum(v^2) - 2 sum(v)^2."""
    rated = ~np.isnan(table)
    m = rated.sum(axis=1).astype(float)
    v = np.where(rated, table, 0.0)
    s1, s2 = v.sum(axis=1), (v * v).sum(axis=1)
    within = (2 * m * s2 - 2 * s1 * s1) / (m - 1)
    big_n, sum1, sum2 = weights @ m, weights @ s1, weights @ s2
    return _alpha(big_n, weights @ within, 2 * big_n * sum2 - 2 * sum1 * sum1)


def _alpha(total: np.ndarray, observed: np.ndarray, expected: np.ndarray) -> np.ndarray:
    # Without variation (every rating one value) alpha is undefined; a relative tolerance keeps the rounding of
    # weighted means from passing for variation.
    varied = expected > 1e-9 * np.maximum(total, 1) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(varied, 1 - (total - 1) * observed / expected, np.nan)


def pair_tables(first: np.ndarray, second: np.ndarray, levels: Sequence[int]) -> np.ndarray:
    """(transcripts, k * k): one count in the cell of the two annotators' whole scores (rows the first's), for each
    transcript both rated; zeros elsewhere."""
    k, lo = len(levels), min(levels)
    both = ~np.isnan(first) & ~np.isnan(second)
    out = np.zeros((first.size, k * k))
    rows = np.nonzero(both)[0]
    out[rows, (whole(first[rows]) - lo) * k + whole(second[rows]) - lo] = 1
    return out


def mean_offset(weights: np.ndarray, table: np.ndarray, annotator: int) -> np.ndarray:
    """An annotator's score minus the mean of the others' scores of the same transcript, averaged over the
    transcripts they rated, for each row of weights."""
    rated = ~np.isnan(table)
    others = np.delete(table, annotator, axis=1)
    counted = (~np.isnan(others)).sum(axis=1)
    mine = rated[:, annotator] & (counted > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = np.where(mine, table[:, annotator] - np.nansum(others, axis=1) / np.maximum(counted, 1), 0.0)
        return np.where((weights @ mine) > 0, (weights @ gap) / (weights @ mine), np.nan)


def _largest_offset(offsets: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The annotator whose overall score is furthest from the others', and by how much (signed)."""
    known = {a: o[OVERALL]["value"] for a, o in offsets.items() if o[OVERALL]["value"] is not None}
    if not known:
        return None
    annotator = max(known, key=lambda a: abs(known[a]))
    return {"annotator": annotator, "overall": known[annotator]}


def adjudication(annotations: Annotations, rubric: Rubric) -> list[dict[str, Any]]:
    """The transcripts where two annotators' scores of a dimension are DISPUTED points apart or more: each named
    by its id (or the digest of its text), with the dimensions in dispute, every annotator's scores and where their
    record is — never the transcript."""
    found = []
    for transcript in annotations.transcripts:
        disputed = [name for name in rubric.names
                    if spread([e.scores[name] for e in transcript.ratings.values()]) >= DISPUTED]
        if disputed:
            found.append({"transcript": transcript.label, "dimensions": disputed,
                          "scores": {a: {n: e.scores[n] for n in disputed} for a, e in transcript.ratings.items()},
                          "where": dict(transcript.where)})
    return found


def spread(scores: Sequence[int]) -> int:
    return max(scores) - min(scores)
