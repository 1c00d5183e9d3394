"""The ceiling beside the model: with several annotators' files, `hcp evaluate` measures the model against each
annotator and against their consensus, beside the annotators against each other — the agreement a rater can be
held to, since a model cannot be expected to agree with one annotator better than another annotator does.

The annotators' files are read and matched as `hcp data agreement` reads them (`annotations.py`); the model rates
the transcripts that two or more annotators rated, and its main metrics (and the floor, and a confidence threshold)
are measured against their consensus (each score the median, as `hcp data consensus` takes it: `median_score`).

Per dimension and overall, each with a 95% percentile bootstrap interval (the transcripts drawn with replacement,
the same draws for every pair, so differences are paired): quadratically weighted kappa and within-one agreement of
the model with each annotator, of the model with the consensus, and of each pair of annotators; the mean over
annotators (the model) and over pairs (the humans) — kappa averaged over the pairs (Light's), within-one pooled
over the pairs' ratings, as `agreement.measure` does — and the model's mean kappa minus the humans'. The model
against the consensus is not the same comparison as one annotator against another: a median of several annotators
is steadier than any one of them, so agreeing with it is easier.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hcp.batch.inputs import Inputs, Item
from hcp.data.dataset import read_rows
from hcp.evaluate.metrics import OVERALL, qwk_of_tables
from hcp.evaluate.run import Labels, Scores
from hcp.raters.agreement import estimate, pair_tables, resample_weights
from hcp.raters.annotations import ANNOTATOR_FIELD, Annotations, Transcript, read_annotations
from hcp.raters.consensus import median_score
from hcp.rubric import Rubric, normalize_transcript

CONSENSUS, MODEL = "consensus", "model"


def names_annotators(paths: Sequence[Path]) -> bool:
    """Whether the label files are several annotators': more than one file, or one whose records name their
    `annotator`."""
    if len(paths) != 1:
        return True
    if not Path(paths[0]).is_file():
        return False
    return any(isinstance(row, dict) and ANNOTATOR_FIELD in row for _, row in read_rows(Path(paths[0])))


def panel_labels(paths: Sequence[Path], rubric: Rubric, resamples: int = 1000, seed: int = 42) -> Labels:
    """The transcripts two or more annotators rated, their consensus as the labels, and the ceiling section."""
    annotations = read_annotations(paths, rubric)
    items, human = [], {}
    for transcript in annotations.transcripts:
        first = next(iter(transcript.ratings))
        text = normalize_transcript(transcript.ratings[first].transcript)
        items.append(Item(transcript.key, transcript.where[first], text))
        scores = {n: median_score([e.scores[n] for e in transcript.ratings.values()]) for n in rubric.names}
        human[transcript.key] = {**scores, OVERALL: rubric.overall(scores)}
    return Labels(Inputs(Path(paths[0]), items, []), human,
                  lambda model: ceiling_metrics(annotations, human, model, rubric, resamples, seed))


def ceiling_metrics(annotations: Annotations, consensus: Scores, model: Scores, rubric: Rubric, resamples: int,
                    seed: int) -> dict[str, Any]:
    """metrics.json's "ceiling" (see the module's docstring), on the transcripts the model rated."""
    annotators = annotations.annotators
    transcripts = [t for t in annotations.transcripts if t.key in model]
    out: dict[str, Any] = {"annotators": annotators, "n": len(transcripts), "resamples": resamples, "seed": seed,
                           "dimensions": {}, "notes": []}
    if not transcripts:
        out["notes"].append("the model rated none of the transcripts two or more annotators rated: no ceiling")
        return out
    weights = resample_weights(len(transcripts), resamples, seed)
    columns = [*annotators, CONSENSUS, MODEL]
    human_pairs = [(a, b) for i, a in enumerate(annotators) for b in annotators[i + 1:]]
    model_pairs = [(MODEL, a) for a in annotators]
    for name in [*rubric.names, OVERALL]:
        table = np.array([[_value(t, c, name, consensus, model, rubric) for c in columns] for t in transcripts],
                         dtype=float)
        tables = {pair: weights @ pair_tables(table[:, columns.index(pair[0])], table[:, columns.index(pair[1])],
                                              rubric.scores)
                  for pair in [*human_pairs, *model_pairs, (MODEL, CONSENSUS)]}
        k = len(rubric.scores)
        counts = {pair: int(t[0].sum()) for pair, t in tables.items()}
        humans, machine = _mean(tables, human_pairs, k), _mean(tables, model_pairs, k)
        out["dimensions"][name] = {
            "humans": {"qwk": estimate(humans[0]), "within_one": estimate(humans[1]), "pairs": len(human_pairs)},
            "model": {"qwk": estimate(machine[0]), "within_one": estimate(machine[1])},
            "gap": estimate(machine[0] - humans[0]),
            "pairs": {f"{a}–{b}": {"n": counts[(a, b)], **_pair(tables[(a, b)], k)}
                      for a, b in [*model_pairs, (MODEL, CONSENSUS), *human_pairs]},
        }
    if out["dimensions"][OVERALL]["humans"]["qwk"]["value"] is None:
        out["notes"].append("the annotators' kappa is undefined (every rating the same score): no ceiling to show")
    return out


def _value(transcript: Transcript, column: str, name: str, consensus: Scores, model: Scores, rubric: Rubric
           ) -> float:
    """A column's score of a transcript on one dimension (or overall); NaN where that annotator did not rate it."""
    if column == MODEL:
        return model[transcript.key][name]
    if column == CONSENSUS:
        return consensus[transcript.key][name]
    example = transcript.ratings.get(column)
    if example is None:
        return np.nan
    return rubric.overall(example.scores) if name == OVERALL else example.scores[name]


def _pair(table: np.ndarray, k: int) -> dict[str, Any]:
    qwk, within = _measures(table.reshape(-1, k, k))
    return {"qwk": estimate(qwk), "within_one": estimate(within)}


def _measures(tables: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kappa and within-one agreement of each (R, k, k) table of counts."""
    k = tables.shape[-1]
    near = np.abs(np.arange(k)[:, None] - np.arange(k)[None, :]) <= 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return qwk_of_tables(tables), (tables * near).sum(axis=(1, 2)) / tables.sum(axis=(1, 2))


def _mean(tables: dict[tuple[str, str], np.ndarray], pairs: list[tuple[str, str]], k: int
          ) -> tuple[np.ndarray, np.ndarray]:
    """Over the pairs, per resample: kappa averaged over the pairs where it is defined, within-one pooled."""
    if not pairs:
        empty = np.full(next(iter(tables.values())).shape[0], np.nan)
        return empty, empty
    kappas = np.stack([qwk_of_tables(tables[p].reshape(-1, k, k)) for p in pairs], axis=1)
    defined = np.isfinite(kappas).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        kappa = np.where(defined > 0, np.nansum(kappas, axis=1) / np.maximum(defined, 1), np.nan)
    _, within = _measures(sum(tables[p] for p in pairs).reshape(-1, k, k))
    return kappa, within
