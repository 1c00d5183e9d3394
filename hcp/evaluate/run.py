"""`hcp evaluate`: how far a model's ratings agree with human raters — the training guide's "Model Evaluation":
human correlation, inter-rater reliability across runs, A/B testing against a baseline model.

The labelled set is scored through the batch stage (one results file per rater and run inside the report
folder, so an interrupted evaluation resumes where it stopped), or read from results files; the metrics
(`hcp.evaluate.metrics`) compare the first run (seed SEED) with the humans, and the report
(`hcp.evaluate.report`) shows them with plots.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from hcp.batch.inputs import Inputs, read_inputs, transcript_digest
from hcp.batch.results import OK, read_results
from hcp.batch.run import BatchOptions, rater_settings, run_batch
from hcp.errors import DataError
from hcp.evaluate.floor import floor_metrics
from hcp.evaluate.metrics import OVERALL, Rater, compare, rater_metrics
from hcp.evaluate.report import write_report
from hcp.evaluate.threshold import calibrate, check_config_target, check_level, write_config
from hcp.rubric import Rubric
from hcp.scoring.backends import Backend
from hcp.scoring.confidence import LOW_CONFIDENCE, rating_confidence, summarize
from hcp.scoring.score import ScoreOptions

SHOWN_PROBLEMS = 5

# Opens the rater for a model name (None: the one the backend options name) with its scoring options.
Opener = Callable[[str | None], tuple[Backend, ScoreOptions]]


@dataclass(frozen=True)
class EvaluateOptions:
    data: Path | tuple[Path, ...]  # labelled transcripts: JSONL or CSV with one human score per dimension
    report: Path  # folder for metrics.json, report.md, report.html, plots and predictions
    predictions: tuple[Path, ...] = ()  # results files to evaluate instead of scoring (one per run)
    runs: int = 1  # scorings with seeds seed..seed+runs-1
    model: str | None = None
    baseline: str | None = None  # a second model, scored the same way
    temperature: float | None = None  # None: the config's
    parallel: int = 1
    retry_failed: bool = False
    bootstrap: int = 1000  # resamples for the confidence intervals of the differences
    seed: int = 42  # of the bootstrap
    progress: bool | None = None
    target_agreement: float | None = None  # calibrate a confidence threshold that guarantees this agreement...
    risk: float = 0.1  # ...with probability 1 - risk
    write_config: Path | None = None  # store that threshold as scoring.confidence_threshold in a copy of...
    config: Path | None = None  # ...this config (None: the default one)

    @property
    def data_files(self) -> tuple[Path, ...]:
        return self.data if isinstance(self.data, tuple) else (self.data,)

    def __post_init__(self) -> None:
        if self.target_agreement is not None:
            check_level("--target-agreement", self.target_agreement)
        check_level("--risk", self.risk)
        if self.write_config is not None:
            if self.target_agreement is None:
                raise DataError("--write-config stores the threshold that --target-agreement finds — give "
                                "--target-agreement too (e.g. --target-agreement 0.9 --risk 0.1)")
            given = [*self.data_files, *self.predictions, *([self.config] if self.config else [])]
            check_config_target(self.write_config, given)
        if self.runs < 1:
            raise DataError(f"runs must be at least 1, got {self.runs}")
        if self.predictions and self.runs > 1:
            raise DataError("--runs scores the set K times; with --predictions give one results file per run "
                            "instead (--predictions run1.jsonl --predictions run2.jsonl)")
        if self.bootstrap < 100:
            raise DataError(f"bootstrap resamples must be at least 100, got {self.bootstrap}")


Scores = dict[str, dict[str, float]]  # id -> {dimension: score, 'overall': value}


@dataclass
class Labels:
    """A labelled set read by the caller (several annotators' files: `hcp.raters.ceiling`) instead of one file."""

    inputs: Inputs  # the transcripts to rate, one per id
    human: Scores  # the labels the model is measured against (several annotators: their consensus)
    # Given the model's first run, the section that compares it with each annotator and the annotators with each
    # other (metrics.json's "ceiling").
    ceiling: Callable[[Scores], dict[str, Any]] | None = None


@dataclass
class Evaluation:
    metrics: dict[str, Any]  # what metrics.json holds
    report: Path
    files: list[Path]  # metrics.json, report.md, report.html, the plots


# --- inputs -----------------------------------------------------------------------------------------------


def read_labels(path: Path, rubric: Rubric) -> tuple[Inputs, dict[str, dict[str, float]]]:
    """The transcripts of a labelled file and their human scores by id (the ids `hcp batch` gives them)."""
    if path.is_dir():
        raise DataError(f"{path}: a folder of .txt files holds no human scores — give a JSONL or CSV file with "
                        f"{', '.join(rubric.names)} for each transcript")
    inputs = read_inputs(path)
    problems: list[str] = []
    human: dict[str, dict[str, float]] = {}
    for item in inputs.items:
        if item.transcript is None:
            problems.append(f"{item.source}: {item.problem}")
            continue
        scores: dict[str, float] = {}
        for name in rubric.names:
            value = rubric.check_score(item.row.get(name), from_text=True, whole_floats=True)
            if isinstance(value, str):
                problems.append(f"{item.source}: {name}: {value}")
            else:
                scores[name] = value
        if len(scores) == len(rubric.names):
            human[item.id] = {**scores, OVERALL: rubric.overall(scores)}
    if problems:
        more = len(problems) - SHOWN_PROBLEMS
        tail = f" (and {more} more)" if more > 0 else ""
        raise DataError(f"{len(problems)} problem(s) in the labelled data: {'; '.join(problems[:SHOWN_PROBLEMS])}"
                        f"{tail} — every transcript needs a whole-number human score per dimension")
    return inputs, human


def read_rater(role: str, files: Sequence[Path], rubric: Rubric, inputs: Inputs | None = None) -> Rater:
    """A rater's predictions from results files of `hcp batch` (its successful records; failures are missing).

    Ratings made under another rubric are refused: its weights, descriptors and dimensions are in the prompt
    the model saw, so they are not this rubric's ratings (re-weighting their scores would pass them off as
    such). With `inputs` (the labelled transcripts), so are ratings of another text under a labelled id: each
    record's transcript digest, where it has one, must be the labelled transcript's. The overall score is
    computed here from the rubric in force, the same arithmetic as the humans' overall, never taken from the
    file."""
    runs: list[dict[str, dict[str, float]]] = []
    seen: dict[str, str] = {}
    probabilities: dict[str, dict[str, Any]] = {}
    for run, path in enumerate(files):
        predictions: dict[str, dict[str, float]] = {}
        results = read_results(path)
        if inputs is not None:
            _check_same_transcripts(path, results, inputs)
        for ident, record in results.items():
            if record["status"] != OK:
                continue
            if record.get("rubric") != rubric.digest:
                made = f"rubric {record['rubric']}" if record.get("rubric") else "no recorded rubric"
                raise DataError(f"{path}: rated with {made}, but the config gives rubric {rubric.digest} (other "
                                "weights, descriptors or dimensions, which the model saw in its prompt) — evaluate "
                                "with the --config used for rating, or rate the set again with this one")
            rating = record.get("rating") or {}
            lacking = [n for n in rubric.names if not isinstance(rating.get(n), int)]
            if lacking:
                raise DataError(f"{path}: the rating of {ident!r} has no {lacking[0]!r} score — it was made with "
                                "another rubric; rate the set again with this config")
            scores = {n: rating[n] for n in rubric.names}
            predictions[ident] = {**scores, OVERALL: rubric.overall(scores)}
            if run == 0 and record.get("distribution"):
                probabilities[ident] = _probabilities(record, scores, rubric)
            seen.setdefault("model", str(record.get("model")))
            seen.setdefault("backend", str(record.get("backend")))
        runs.append(predictions)
    return Rater(role, seen.get("model", "unknown"), seen.get("backend", "unknown"), list(files), runs,
                 probabilities=probabilities)


def _check_same_transcripts(path: Path, results: dict[str, dict[str, Any]], inputs: Inputs) -> None:
    """Refuse ratings recorded under a labelled id but made of another transcript. A record without a digest (an
    older hcp's, a review's model rating) cannot be checked and is taken as it is."""
    labelled, data = {i.id: transcript_digest(i.transcript) for i in inputs.items}, inputs.path
    other = [ident for ident, record in results.items() if record["status"] == OK and ident in labelled
             and record.get("transcript_sha256", labelled[ident]) != labelled[ident]]
    if other:
        shown = ", ".join(repr(i) for i in other[:SHOWN_PROBLEMS]) + (" ..." if len(other) > SHOWN_PROBLEMS else "")
        raise DataError(f"{path}: {len(other)} rating(s) are not of the labelled transcript with the same id in "
                        f"{data} (ids {shown}: their recorded transcript SHA-256 differs) — rate the "
                        f"labelled file itself: hcp batch {data} --out ratings.jsonl, or drop --predictions")


def _probabilities(record: dict[str, Any], scores: dict[str, int], rubric: Rubric) -> dict[str, Any]:
    """A record's score distributions (JSON keys back to scores) and its needs_review flag under the config in
    force: the confidence threshold applied now, any other reason (evidence) kept from the record."""
    distribution = {n: {int(s): float(p) for s, p in record["distribution"][n].items()} for n in rubric.names}
    summary = summarize(scores, distribution, {d.name: d.weight for d in rubric.dimensions},
                        threshold=rubric.scoring.confidence_threshold, level=rubric.scoring.interval_level)
    kept = [r for r in record.get("review_reasons") or [] if not str(r).startswith(LOW_CONFIDENCE)]
    return {"distribution": distribution, "needs_review": bool(kept or (summary and summary.review_reasons)),
            "confidence": rating_confidence(summary.confidence) if summary else None}


def score_rater(role: str, model: str | None, inputs: Inputs, rubric: Rubric, open_rater: Opener,
                options: EvaluateOptions) -> Rater:
    """Rate the labelled set `options.runs` times (seeds seed, seed+1, ...) through the batch machinery.

    Each run's predictions are kept in a file named by the role, model, seed and a digest of everything else
    that changes a rating (`rater_settings`: the model's digest, rubric, backend, temperature, context size...),
    so a rerun made the same way resumes its file, and one made any other way rates again in a file of its own.
    """
    backend, score_options = open_rater(model)
    if options.temperature is not None:
        score_options = replace(score_options, temperature=options.temperature)
    folder = options.report / "predictions"
    files = []
    try:
        for run in range(options.runs):
            run_options = replace(score_options, seed=score_options.seed + run, raw_output_dir=folder)
            settings = rater_settings(backend, rubric, run_options)
            path = folder / f"{role}-{_slug(backend.model)}-seed{run_options.seed}-{_settings_digest(settings)}.jsonl"
            run_batch(inputs, backend, rubric, run_options,
                      BatchOptions(path, retry_failed=options.retry_failed, parallel=options.parallel,
                                   progress=options.progress, label=f"{role} run {run + 1}/{options.runs}"))
            files.append(path)
    finally:
        backend.close()  # before a baseline opens: never two llama.cpp instances at once
    rater = read_rater(role, files, rubric)
    if options.runs > 1 and score_options.temperature == 0:
        rater.notes.append("temperature 0 (greedy): runs differ only where a retry sampled, so alpha measures "
                           "determinism — pass --temperature 0.7 to measure how much sampling changes the ratings")
    return rater


def _settings_digest(settings: dict[str, Any]) -> str:
    """12 hex digits of the settings but the seed (which the file name shows)."""
    kept = {k: v for k, v in settings.items() if k != "seed"}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _slug(model: str) -> str:
    """A file-name part for a model: 'hcp-rater:latest' -> 'hcp-rater-latest', a GGUF path -> its file name."""
    name = model.split(" (")[0]
    name = Path(name).name if name.lower().endswith(".gguf") else name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


# --- the whole evaluation ---------------------------------------------------------------------------------


def evaluate(options: EvaluateOptions, rubric: Rubric, open_rater: Opener, labels: Labels | None = None
             ) -> Evaluation:
    """Score (or read) the predictions, compare them with the human labels, and write the report; with
    `options.target_agreement`, calibrate the confidence threshold (and write it to `options.write_config`)."""
    if labels is None:
        if len(options.data_files) > 1:
            raise DataError("several label files are several annotators: read them with hcp.raters.ceiling")
        inputs, human = read_labels(options.data_files[0], rubric)
    else:
        inputs, human = labels.inputs, labels.human
    if options.predictions:
        raters = [read_rater("model", options.predictions, rubric, inputs)]
    else:
        raters = [score_rater("model", options.model, inputs, rubric, open_rater, options)]
    if options.baseline:
        raters.append(score_rater("baseline", options.baseline, inputs, rubric, open_rater, options))
    metrics: dict[str, Any] = {
        "data": ", ".join(str(f) for f in options.data_files), "labelled": len(human), "rubric": rubric.digest,
        "dimensions": [*rubric.names, OVERALL], "raters": {r.role: rater_metrics(r, human, rubric) for r in raters},
    }
    if len(raters) == 2:
        metrics["differences"] = _differences(raters, human, rubric, options)
    transcripts = {item.id: item.transcript for item in inputs.items if item.transcript is not None}
    metrics["floor"] = floor_metrics(raters[0].runs[0], transcripts, human, rubric, options.bootstrap, options.seed)
    if labels is not None and labels.ceiling is not None:
        metrics["ceiling"] = labels.ceiling(raters[0].runs[0])
    if options.target_agreement is not None:
        metrics["threshold"] = threshold_metrics(raters[0], human, rubric, options)
    metrics["notes"] = _notes(metrics)
    files = write_report(metrics, raters, human, rubric, options.report)
    threshold = metrics.get("threshold")
    if options.write_config is not None and threshold is not None:
        if threshold["threshold"] is None:
            raise DataError(f"--write-config {options.write_config}: not written — {threshold['verdict']} (the "
                            f"report is in {options.report})")
        comment = (f"hcp evaluate: {options.target_agreement:g} agreement within one point, risk "
                   f"{options.risk:g}, on {threshold['n']} ratings of {metrics['data']}")
        files.append(write_config(options.write_config, options.config, threshold["threshold"], comment))
    return Evaluation(metrics, options.report, files)


def threshold_metrics(rater: Rater, human: Scores, rubric: Rubric, options: EvaluateOptions) -> dict[str, Any]:
    """The guaranteed threshold (`hcp.evaluate.threshold`) on the first run's ratings that have a confidence: a
    rating agrees when it is within one point of the human score on every dimension."""
    first = rater.runs[0]
    ids = [i for i in human if i in first and (rater.probabilities.get(i) or {}).get("confidence") is not None]
    agrees = [all(abs(first[i][n] - human[i][n]) <= 1 for n in rubric.names) for i in ids]
    result = calibrate([rater.probabilities[i]["confidence"] for i in ids], agrees,
                       options.target_agreement or 0.0, options.risk)
    rated = sum(1 for i in human if i in first)
    result["without_confidence"] = rated - len(ids)
    result["current_threshold"] = rubric.scoring.confidence_threshold
    return result


def _differences(raters: list[Rater], human: dict[str, dict[str, float]], rubric: Rubric,
                 options: EvaluateOptions) -> dict[str, Any]:
    model, baseline = raters[0].runs[0], raters[1].runs[0]
    ids = [i for i in human if i in model and i in baseline]
    by_name: dict[str, Any] = {"n": len(ids), "resamples": options.bootstrap, "seed": options.seed}
    for name in [*rubric.names, OVERALL]:
        arrays = [np.array([source[i][name] for i in ids], dtype=float) for source in (human, model, baseline)]
        by_name[name] = compare(*arrays, rubric.scores, options.bootstrap, options.seed) if ids else None
    return by_name


def _notes(metrics: dict[str, Any]) -> list[str]:
    notes = [f"floor: {note}" for note in metrics["floor"]["notes"]]
    notes.extend(f"ceiling: {note}" for note in (metrics.get("ceiling") or {}).get("notes", []))
    threshold = metrics.get("threshold")
    if threshold and threshold["without_confidence"]:
        notes.append(f"threshold: {threshold['without_confidence']} rated transcripts have no score probabilities "
                     "and are left out of the calibration")
    for role, rater in metrics["raters"].items():
        notes.extend(f"{role}: {note}" for note in rater["notes"])
        if rater["missing"]:
            notes.append(f"{role}: {rater['missing']} of {metrics['labelled']} labelled transcripts have no rating "
                         f"(failed or not in the predictions); metrics use the {rater['n']} rated")
        for name, values in rater["metrics"].items():
            notes.extend(f"{role} {name}: {note}" for note in values["notes"])
        for name, reliability in (rater["reliability"] or {}).items():
            if reliability["note"]:
                notes.append(f"{role} {name} reliability: {reliability['note']}")
    return notes


# --- the report -------------------------------------------------------------------------------------------

