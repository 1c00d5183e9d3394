"""Agreement of a model's ratings with human raters — the training guide's "Model Evaluation": human
correlation, inter-rater reliability across runs, A/B testing against a baseline model.

Per dimension and for the overall score: exact agreement, within-one agreement, mean absolute error, Spearman
and Pearson correlation (scipy), quadratically weighted kappa and the confusion matrix (scikit-learn). The
overall score is a weighted mean, not a whole score: exact and within-one agreement, kappa and the confusion
matrix use it rounded half up to a whole score; MAE and the correlations use it as it is. Metrics compare the
first run (seed SEED) with the humans; with several runs, Krippendorff's alpha (`krippendorff`; ordinal for the
dimensions, interval for the overall score) says how far the runs agree with each other. With a baseline model,
the differences (model − baseline) carry percentile bootstrap confidence intervals over transcripts, seeded.

A metric that is undefined (a correlation of constant ratings, a kappa where every rating is the same score,
alpha without any variation) is reported as null with a note, never as a number.

Predictions come from the batch machinery (`hcp.batch`), one results file per rater and run inside the report
folder, so an interrupted evaluation resumes where it stopped.
"""

from __future__ import annotations

import html
import json
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from hcp.backends import Backend
from hcp.batch import OK, BatchOptions, Inputs, read_inputs, read_results, run_batch
from hcp.data import atomic_write_text
from hcp.errors import DataError
from hcp.rubric import Rubric
from hcp.scoring import ScoreOptions

OVERALL = "overall"
METRICS = ("exact", "within_one", "mae", "spearman", "pearson", "qwk")
COMPARED = ("exact", "within_one", "mae", "qwk", "spearman")  # differences with bootstrap intervals
METRIC_TITLES = {"exact": "exact", "within_one": "within one", "mae": "MAE", "spearman": "Spearman",
                 "pearson": "Pearson", "qwk": "QWK"}
SHOWN_PROBLEMS = 5

# Opens the rater for a model name (None: the one the backend options name) with its scoring options.
Opener = Callable[[str | None], tuple[Backend, ScoreOptions]]


@dataclass(frozen=True)
class EvaluateOptions:
    data: Path  # labelled transcripts: JSONL or CSV with one human score per dimension
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

    def __post_init__(self) -> None:
        if self.runs < 1:
            raise DataError(f"runs must be at least 1, got {self.runs}")
        if self.predictions and self.runs > 1:
            raise DataError("--runs scores the set K times; with --predictions give one results file per run "
                            "instead (--predictions run1.jsonl --predictions run2.jsonl)")
        if self.bootstrap < 100:
            raise DataError(f"bootstrap resamples must be at least 100, got {self.bootstrap}")


@dataclass
class Rater:
    role: str  # 'model' or 'baseline'
    model: str
    backend: str
    files: list[Path]  # one results file per run
    runs: list[dict[str, dict[str, float]]]  # per run: id -> {dimension: score, 'overall': value}
    notes: list[str] = field(default_factory=list)


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
            value = _whole_score(item.row.get(name), rubric)
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


def _whole_score(value: Any, rubric: Rubric) -> int | str:
    """The score, or what is wrong with it (as text, never quoting more than a few characters)."""
    lo, hi = rubric.score_min, rubric.score_max
    if value is None or (isinstance(value, str) and not value.strip()):
        return f"missing — give a whole number from {lo} to {hi}"
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):  # CSV cells are text
        value = int(value)
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return f"must be a whole number from {lo} to {hi}, got {str(value)[:20]!r}"
    if not lo <= value <= hi:
        return f"score {value} is outside {lo}..{hi}"
    return value


def read_rater(role: str, files: Sequence[Path], rubric: Rubric) -> Rater:
    """A rater's predictions from results files of `hcp batch` (its successful records; failures are missing)."""
    runs: list[dict[str, dict[str, float]]] = []
    seen: dict[str, str] = {}
    for path in files:
        predictions: dict[str, dict[str, float]] = {}
        for ident, record in read_results(path).items():
            if record["status"] != OK:
                continue
            rating = record.get("rating") or {}
            lacking = [n for n in rubric.names if not isinstance(rating.get(n), int)]
            if lacking:
                raise DataError(f"{path}: the rating of {ident!r} has no {lacking[0]!r} score — it was made with "
                                "another rubric; rate the set again with this config")
            predictions[ident] = {**{n: rating[n] for n in rubric.names}, OVERALL: record["overall"]}
            seen.setdefault("model", str(record.get("model")))
            seen.setdefault("backend", str(record.get("backend")))
        runs.append(predictions)
    return Rater(role, seen.get("model", "unknown"), seen.get("backend", "unknown"), list(files), runs)


def score_rater(role: str, model: str | None, inputs: Inputs, rubric: Rubric, open_rater: Opener,
                options: EvaluateOptions) -> Rater:
    """Rate the labelled set `options.runs` times (seeds seed, seed+1, ...) through the batch machinery."""
    backend, score_options = open_rater(model)
    if options.temperature is not None:
        score_options = replace(score_options, temperature=options.temperature)
    folder = options.report / "predictions"
    files = []
    try:
        for run in range(options.runs):
            seed = score_options.seed + run
            path = folder / f"{role}-{_slug(backend.model)}-seed{seed}.jsonl"
            run_batch(inputs, backend, rubric, replace(score_options, seed=seed, raw_output_dir=folder),
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


def _slug(model: str) -> str:
    """A file-name part for a model: 'hcp-rater:latest' -> 'hcp-rater-latest', a GGUF path -> its file name."""
    name = model.split(" (")[0]
    name = Path(name).name if name.lower().endswith(".gguf") else name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


# --- metrics ----------------------------------------------------------------------------------------------


def whole(values: np.ndarray) -> np.ndarray:
    """Rounded half up (numpy rounds half to even): an overall 3.5 counts as 4."""
    return np.floor(np.asarray(values, dtype=float) + 0.5).astype(int)


def agreement(human: Sequence[float], predicted: Sequence[float], levels: Sequence[int]) -> dict[str, Any]:
    """Agreement of paired ratings (see the module's docstring); undefined metrics are None with a note."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import cohen_kappa_score, confusion_matrix

    h, p = np.asarray(human, dtype=float), np.asarray(predicted, dtype=float)
    hw, pw = whole(h), whole(p)
    notes: list[str] = []
    result: dict[str, Any] = {
        "n": int(h.size),
        "exact": _number(np.mean(hw == pw)),
        "within_one": _number(np.mean(np.abs(hw - pw) <= 1)),
        "mae": _number(np.mean(np.abs(h - p))),
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
        result["spearman"] = _number(spearmanr(h, p).statistic)
        result["pearson"] = _number(pearsonr(h, p).statistic)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns, then answers nan, when kappa is undefined
        kappa = cohen_kappa_score(hw, pw, labels=list(levels), weights="quadratic")
    result["qwk"] = _number(kappa)
    if result["qwk"] is None:
        notes.append("kappa undefined: every rating, human and predicted, is the same score")
    result["confusion"] = confusion_matrix(hw, pw, labels=list(levels)).tolist()  # rows human, columns predicted
    result["notes"] = notes
    return result


def _number(value: Any) -> float | None:
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
        return {"alpha": None, "pairable": 0, "note": "no transcript was rated in two runs"}
    if np.unique(values).size < 2:
        return {"alpha": None, "pairable": pairable,
                "note": f"every rating in every run is {values[0]:g}: alpha undefined (no variation), the runs agree"}
    if name == OVERALL:
        alpha = krippendorff.alpha(reliability_data=data, level_of_measurement="interval")
    else:
        alpha = krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal", value_domain=list(levels))
    return {"alpha": _number(alpha), "pairable": pairable, "note": None}


# Vectorised forms of the compared metrics over many resamples at once (rows of a (B, n) array). sklearn's
# cohen_kappa_score and scipy's spearmanr take a few milliseconds a call, too slow for thousands of resamples
# per dimension; scipy.stats.bootstrap was looked at, but it gives a NaN interval as soon as one resample's
# statistic is undefined (a constant resample, common in small sets), where we drop those resamples and say so.
# tests/test_evaluate.py checks these against sklearn and scipy.


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


def _row_qwk(h: np.ndarray, p: np.ndarray, levels: Sequence[int]) -> np.ndarray:
    rows, n = h.shape
    k, lo = len(levels), min(levels)
    cells = (h - lo) * k + (p - lo) + (np.arange(rows) * k * k)[:, None]
    observed = np.bincount(cells.ravel(), minlength=rows * k * k).reshape(rows, k, k)  # (B, human, predicted)
    expected = observed.sum(axis=2)[:, :, None] * observed.sum(axis=1)[:, None, :] / n
    weights = (np.arange(k)[:, None] - np.arange(k)[None, :]) ** 2
    disagreement = (weights * expected).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
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
        out[name] = {"difference": _number(point), "ci_low": _number(low), "ci_high": _number(high),
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
            "metrics": metrics, "reliability": reliability, "notes": rater.notes}


# --- the whole evaluation ---------------------------------------------------------------------------------


def evaluate(options: EvaluateOptions, rubric: Rubric, open_rater: Opener) -> Evaluation:
    """Score (or read) the predictions, compare them with the human labels, and write the report."""
    inputs, human = read_labels(options.data, rubric)
    if options.predictions:
        raters = [read_rater("model", options.predictions, rubric)]
    else:
        raters = [score_rater("model", options.model, inputs, rubric, open_rater, options)]
    if options.baseline:
        raters.append(score_rater("baseline", options.baseline, inputs, rubric, open_rater, options))
    metrics: dict[str, Any] = {
        "data": str(options.data), "labelled": len(human), "rubric": rubric.digest,
        "dimensions": [*rubric.names, OVERALL], "raters": {r.role: rater_metrics(r, human, rubric) for r in raters},
    }
    if len(raters) == 2:
        metrics["differences"] = _differences(raters, human, rubric, options)
    metrics["notes"] = _notes(metrics)
    files = write_report(metrics, raters, human, rubric, options.report)
    return Evaluation(metrics, options.report, files)


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
    notes = []
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

Block = tuple[str, Any]  # ('h1'|'h2'|'p', text), ('table', (headers, rows)), ('img', (file, alt)), ('ul', items)


def write_report(metrics: dict[str, Any], raters: list[Rater], human: dict[str, dict[str, float]],
                 rubric: Rubric, folder: Path) -> list[Path]:
    """metrics.json, report.md and report.html (the same content), and the plots they show, into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    plots = {r.role: plot_rater(r, human, rubric, folder) for r in raters}
    blocks = _blocks(metrics, plots)
    files = [
        atomic_write_text(folder / "metrics.json", json.dumps(metrics, indent=2, ensure_ascii=False) + "\n"),
        atomic_write_text(folder / "report.md", render_markdown(blocks)),
        atomic_write_text(folder / "report.html", render_html(blocks)),
    ]
    return files + [folder / name for names in plots.values() for name, _ in names]


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _blocks(metrics: dict[str, Any], plots: dict[str, list[tuple[str, str]]]) -> list[Block]:
    blocks: list[Block] = [
        ("h1", f"Agreement with human raters: {metrics['data']}"),
        ("p", f"{metrics['labelled']} labelled transcripts; rubric {metrics['rubric']}. Overall = weighted mean, "
              "rounded half up for exact, within-one, kappa and the confusion matrix."),
    ]
    headers = ["dimension", "n", *(METRIC_TITLES[m] for m in METRICS)]
    for role, rater in metrics["raters"].items():
        blocks.append(("h2", f"{role}: {rater['model']} ({rater['backend']})"))
        blocks.append(("p", f"{rater['n']} rated, {rater['missing']} missing; {rater['runs']} run(s): "
                            f"{', '.join(rater['files'])}"))
        rows = [[name, str(values["n"]), *(_fmt(values[m]) for m in METRICS)]
                for name, values in rater["metrics"].items()]
        blocks.append(("table", (headers, rows)))
        if rater["reliability"]:
            blocks.append(("p", "Run-to-run reliability, Krippendorff's alpha (ordinal; overall: interval):"))
            rows = [[name, _fmt(r["alpha"]), str(r["pairable"])] for name, r in rater["reliability"].items()]
            blocks.append(("table", (["dimension", "alpha", "transcripts in 2+ runs"], rows)))
        blocks.extend(("img", plot) for plot in plots[role])
    if "differences" in metrics:
        diff = metrics["differences"]
        blocks.append(("h2", "Model − baseline"))
        blocks.append(("p", f"Paired over {diff['n']} transcripts rated by both; 95% percentile bootstrap intervals "
                            f"({diff['resamples']} resamples, seed {diff['seed']}). For MAE lower is better."))
        rows = []
        for name in metrics["dimensions"]:
            for metric, d in (diff[name] or {}).items():
                rows.append([name, METRIC_TITLES[metric], _fmt(d["difference"]),
                             f"[{_fmt(d['ci_low'])}, {_fmt(d['ci_high'])}]"])
        blocks.append(("table", (["dimension", "metric", "difference", "95% CI"], rows)))
    if metrics["notes"]:
        blocks.append(("h2", "Notes"))
        blocks.append(("ul", metrics["notes"]))
    return blocks


def render_markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for kind, content in blocks:
        if kind in ("h1", "h2"):
            out.append(f"{'#' * int(kind[1])} {content}")
        elif kind == "p":
            out.append(content)
        elif kind == "ul":
            out.append("\n".join(f"- {item}" for item in content))
        elif kind == "img":
            out.append(f"![{content[1]}]({content[0]})")
        elif kind == "table":
            headers, rows = content
            lines = [headers, ["---"] * len(headers), *rows]
            out.append("\n".join("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"
                                 for row in lines))
    return "\n\n".join(out) + "\n"


def render_html(blocks: list[Block]) -> str:
    e = html.escape
    body: list[str] = []
    for kind, content in blocks:
        if kind in ("h1", "h2", "p"):
            body.append(f"<{kind}>{e(content)}</{kind}>")
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{e(item)}</li>" for item in content) + "</ul>")
        elif kind == "img":
            body.append(f'<figure><img src="{e(content[0])}" alt="{e(content[1])}"><figcaption>{e(content[1])}'
                        "</figcaption></figure>")
        elif kind == "table":
            headers, rows = content
            head = "".join(f"<th>{e(h)}</th>" for h in headers)
            cells = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
    style = ("body{font-family:sans-serif;max-width:70em;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}td:first-child{text-align:left}"
             "img{max-width:100%}")
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>hcp evaluation</title>'
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def plot_rater(rater: Rater, human: dict[str, dict[str, float]], rubric: Rubric,
               folder: Path) -> list[tuple[str, str]]:
    """Confusion matrices, predicted-vs-human scatter and score distributions of a rater's first run, as PNGs
    in `folder`; [(file name, caption)]."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    first = rater.runs[0]
    ids = [i for i in human if i in first]
    names = [*rubric.names, OVERALL]
    levels = list(rubric.scores)
    pairs = {n: (np.array([human[i][n] for i in ids], float), np.array([first[i][n] for i in ids], float))
             for n in names}
    made = []

    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        h, p = pairs[name]
        matrix = confusion_matrix(whole(h), whole(p), labels=levels)
        ax.imshow(matrix, cmap="Blues")
        for (row, col), count in np.ndenumerate(matrix):
            dark = count > matrix.max() / 2  # white on the dark cells
            ax.text(col, row, str(count), ha="center", va="center", fontsize=8, color="white" if dark else "black")
        ax.set_xticks(range(len(levels)), levels)
        ax.set_yticks(range(len(levels)), levels)
        ax.set(title=name, xlabel="predicted", ylabel="human")
    made.append(_save(fig, folder, f"confusion-{rater.role}.png", f"{rater.role}: confusion matrices"))

    rng = np.random.default_rng(0)  # jitter, so that equal pairs do not hide each other
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        h, p = pairs[name]
        ax.scatter(h + rng.uniform(-0.15, 0.15, h.size), p + rng.uniform(-0.15, 0.15, p.size), s=12, alpha=0.6)
        ax.plot([levels[0], levels[-1]], [levels[0], levels[-1]], color="grey", linewidth=0.8)
        ax.set(title=name, xlabel="human", ylabel="predicted", xlim=(levels[0] - 0.5, levels[-1] + 0.5),
               ylim=(levels[0] - 0.5, levels[-1] + 0.5))
    made.append(_save(fig, folder, f"scatter-{rater.role}.png", f"{rater.role}: predicted vs human"))

    fig, axes = plt.subplots(1, len(rubric.names), figsize=(3.2 * len(rubric.names), 3.0), squeeze=False)
    x = np.arange(len(levels))
    for ax, name in zip(axes[0], rubric.names):
        h, p = pairs[name]
        ax.bar(x - 0.2, [np.sum(h == v) for v in levels], width=0.4, label="human")
        ax.bar(x + 0.2, [np.sum(p == v) for v in levels], width=0.4, label="predicted")
        ax.set_xticks(x, levels)
        ax.set(title=name, xlabel="score", ylabel="transcripts")
    axes[0][0].legend(fontsize=8)
    made.append(_save(fig, folder, f"distribution-{rater.role}.png", f"{rater.role}: score distributions"))
    return made


def _save(fig: Any, folder: Path, name: str, caption: str) -> tuple[str, str]:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(folder / name, dpi=100)
    plt.close(fig)
    return name, caption
