"""The floor under a rater's agreement: what raters that never read what was said get on the same labels.

- `majority`: each dimension's most common human score in the labelled set (of a tie, the lower), the same for
  every transcript;
- `length`: each dimension predicted from the transcript's length alone — a least-squares line in the logarithms
  of its words and of its turns, fitted by K-fold cross-validation on the labelled set (each transcript predicted
  by a fit that never saw its label), rounded and kept on the scale.

On real counselling sessions length alone separates good practice from poor better than chance (a longer
session has more room for reflections and a plan), so a model that merely favours long conversations must not
look good. The overall score of each is the rubric's weighted mean of its scores, as a model's is. The model's
gain is over the better of the two on each dimension (by QWK, then exact agreement), with a paired bootstrap
interval over transcripts (`metrics.compare`).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np

from hcp.evaluate.metrics import OVERALL, agreement, compare
from hcp.evidence import turns
from hcp.rubric import Rubric

FOLDS = 5
MIN_FOR_LENGTH = 2 * FOLDS  # labelled transcripts below which a cross-validated fit says nothing
FLOOR_RATERS = ("majority", "length")

Scores = dict[str, dict[str, float]]  # id -> {dimension: score, 'overall': value}


def majority_rater(human: Scores, rubric: Rubric) -> Scores:
    scores = {}
    for name in rubric.names:
        counts = Counter(int(labels[name]) for labels in human.values())
        scores[name] = min(counts, key=lambda score: (-counts[score], score))
    return {ident: {**scores, OVERALL: rubric.overall(scores)} for ident in human}


def length_features(transcript: str) -> list[float]:
    return [1.0, math.log1p(len(transcript.split())), math.log1p(len(turns(transcript)))]


def length_rater(transcripts: dict[str, str], human: Scores, rubric: Rubric, seed: int) -> Scores:
    """Cross-validated predictions from length alone: the ids are shuffled (seeded) into FOLDS folds, and each
    fold is predicted by the line fitted on the others."""
    ids = list(human)
    x = np.array([length_features(transcripts[i]) for i in ids])
    folds = np.array_split(np.random.default_rng(seed).permutation(len(ids)), min(FOLDS, len(ids)))
    predicted = {ident: {} for ident in ids}
    low, high = min(rubric.scores), max(rubric.scores)
    for name in rubric.names:
        y = np.array([human[i][name] for i in ids], dtype=float)
        for held in folds:
            train = np.setdiff1d(np.arange(len(ids)), held)
            coef, *_ = np.linalg.lstsq(x[train], y[train], rcond=None)
            for k in held:
                predicted[ids[k]][name] = int(np.clip(np.floor(x[k] @ coef + 0.5), low, high))
    for scores in predicted.values():
        scores[OVERALL] = rubric.overall({n: scores[n] for n in rubric.names})
    return predicted


def floor_metrics(model: Scores, transcripts: dict[str, str], human: Scores, rubric: Rubric, resamples: int,
                  seed: int) -> dict[str, Any]:
    """Each trivial rater's agreement with the humans, and the model's gain over the better one per dimension,
    on the transcripts the model rated. The raters are built from every labelled transcript."""
    raters = {"majority": majority_rater(human, rubric)}
    notes = []
    if len(human) >= MIN_FOR_LENGTH:
        raters["length"] = length_rater(transcripts, human, rubric, seed)
    else:
        notes.append(f"the length-only rater needs {MIN_FOR_LENGTH} labelled transcripts or more for a "
                     f"{FOLDS}-fold fit; there are {len(human)}")
    ids = [i for i in human if i in model]
    names = [*rubric.names, OVERALL]
    out: dict[str, Any] = {"n": len(ids), "folds": FOLDS, "resamples": resamples, "seed": seed, "notes": notes,
                           "raters": {}, "best": {}, "gain": {}}
    if not ids:
        return out
    for role, predicted in raters.items():
        out["raters"][role] = {n: agreement([human[i][n] for i in ids], [predicted[i][n] for i in ids],
                                            rubric.scores) for n in names}

    def strength(role: str, name: str) -> tuple[float, float]:
        values = out["raters"][role][name]
        return (-math.inf if values["qwk"] is None else values["qwk"], values["exact"] or 0.0)

    h = {n: np.array([human[i][n] for i in ids], dtype=float) for n in names}
    for name in names:
        best = max(raters, key=lambda role: strength(role, name))
        out["best"][name] = best
        out["gain"][name] = compare(h[name], np.array([model[i][name] for i in ids], dtype=float),
                                    np.array([raters[best][i][name] for i in ids], dtype=float),
                                    rubric.scores, resamples, seed)
    return out
