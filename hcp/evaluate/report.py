"""The evaluation report: metrics.json, and the same content as Markdown and as HTML, with the plots."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from hcp.evaluate.metrics import METRIC_TITLES, METRICS, Rater
from hcp.evaluate.plots import plot_rater, plot_reliability, plot_threshold
from hcp.files import atomic_write_text, make_folder
from hcp.rubric import Rubric

Block = tuple[str, Any]  # ('h1'|'h2'|'p', text), ('table', (headers, rows)), ('img', (file, alt)), ('ul', items)


def write_report(metrics: dict[str, Any], raters: list[Rater], human: dict[str, dict[str, float]],
                 rubric: Rubric, folder: Path) -> list[Path]:
    """metrics.json, report.md and report.html (the same content), and the plots they show, into `folder`."""
    make_folder(folder)
    plots = {r.role: plot_rater(r, human, rubric, folder) for r in raters}
    for role, rater in metrics["raters"].items():
        if rater.get("probabilities"):
            plots[role].append(plot_reliability(role, rater["probabilities"]["calibration"], folder))
    if metrics.get("threshold") and metrics["threshold"]["curve"]:
        plots.setdefault("threshold", []).append(plot_threshold(metrics["threshold"], folder))
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
            rows = [[name, _fmt(r["alpha"]), str(r["pairable"]), r["note"] or ""]
                    for name, r in rater["reliability"].items()]
            blocks.append(("table", (["dimension", "alpha", "transcripts in 2+ runs", "note"], rows)))
        blocks.extend(_probability_blocks(rater.get("probabilities")))
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
    blocks.extend(_floor_blocks(metrics))
    blocks.extend(_ceiling_blocks(metrics))
    blocks.extend(_threshold_blocks(metrics, plots.get("threshold", [])))
    if metrics["notes"]:
        blocks.append(("h2", "Notes"))
        blocks.append(("ul", metrics["notes"]))
    return blocks


def _floor_blocks(metrics: dict[str, Any]) -> list[Block]:
    floor = metrics["floor"]
    if not floor["gain"]:
        return []
    blocks: list[Block] = [
        ("h2", "The floor: raters that never read what was said"),
        ("p", f"majority: each dimension's most common human score, for every transcript; length: a line in the "
              f"logarithms of the transcript's words and turns, fitted by {floor['folds']}-fold cross-validation. "
              f"The model's gain is over the better of them (by QWK) on each dimension, paired over the "
              f"{floor['n']} transcripts the model rated; 95% percentile bootstrap intervals ({floor['resamples']} "
              "resamples). A gain whose interval includes zero is no evidence that the model reads the "
              "conversation."),
    ]
    rows = []
    for name in metrics["dimensions"]:
        best, gain = floor["best"][name], floor["gain"][name]
        rows.append([name, *(_fmt(floor["raters"][role][name]["qwk"]) if role in floor["raters"] else "—"
                             for role in ("majority", "length")), best, _fmt(gain["qwk"]["difference"]),
                     f"[{_fmt(gain['qwk']['ci_low'])}, {_fmt(gain['qwk']['ci_high'])}]",
                     _fmt(gain["exact"]["difference"])])
    blocks.append(("table", (["dimension", "majority QWK", "length QWK", "better", "model's QWK gain", "95% CI",
                              "exact gain"], rows)))
    return blocks


def _interval(estimate: dict[str, Any]) -> str:
    if estimate["value"] is None:
        return "—"
    return f"{estimate['value']:.3f} [{_fmt(estimate['ci_low'])}, {_fmt(estimate['ci_high'])}]"


def _ceiling_blocks(metrics: dict[str, Any]) -> list[Block]:
    ceiling = metrics.get("ceiling")
    if not ceiling or not ceiling["dimensions"]:
        return []
    blocks: list[Block] = [
        ("h2", "The ceiling: the annotators' agreement with each other"),
        ("p", f"{len(ceiling['annotators'])} annotators ({', '.join(ceiling['annotators'])}); {ceiling['n']} "
              "transcripts rated by two or more of them and by the model. The model's metrics above are against "
              "their consensus (the median score). Here the model against each annotator (kappa averaged over "
              "them, within-one pooled) beside the annotators against each other (averaged over the pairs): a "
              "model cannot be held to agree with one annotator better than another annotator does. Agreeing with "
              "the consensus is easier than with any one annotator. 95% percentile bootstrap intervals "
              f"({ceiling['resamples']} resamples, the same for every pair)."),
    ]
    rows = [[name, _interval(d["humans"]["qwk"]), _interval(d["model"]["qwk"]), _interval(d["gap"]),
             _interval(d["pairs"]["model–consensus"]["qwk"]), _interval(d["humans"]["within_one"]),
             _interval(d["model"]["within_one"])] for name, d in ceiling["dimensions"].items()]
    blocks.append(("table", (["dimension", "annotators' QWK", "model–annotators QWK", "model − annotators",
                              "model–consensus QWK", "annotators within one", "model–annotators within one"], rows)))
    rows = [[pair, name, str(values["n"]), _interval(values["qwk"]), _interval(values["within_one"])]
            for name, d in ceiling["dimensions"].items() for pair, values in d["pairs"].items()]
    blocks.append(("table", (["pair", "dimension", "n", "QWK", "within one"], rows)))
    return blocks


def _threshold_blocks(metrics: dict[str, Any], plots: list[tuple[str, str]]) -> list[Block]:
    threshold = metrics.get("threshold")
    if not threshold:
        return []
    blocks: list[Block] = [
        ("h2", "A confidence threshold with a guarantee"),
        ("p", f"Target: {threshold['target']:.0%} of the ratings at or above the threshold within one point of the "
              f"human score on every dimension, with probability at least {1 - threshold['risk']:.0%}. A rating's "
              "confidence is the lowest of its dimensions' (the probability of the chosen score); needs_review "
              "flags exactly the ratings below scoring.confidence_threshold. Candidates are the confidences seen, "
              "tested from the highest down, the first keeping at least "
              f"{threshold['min_kept']} ratings (fewer cannot pass), each by the exact binomial tail; testing stops "
              "at the first that fails, so choosing the lowest accepted spends nothing."),
        ("p", f"Result: {threshold['verdict']}. (The config in force has {threshold['current_threshold']:g}.)"),
    ]
    rows = [[f"{r['threshold']:.3f}", str(r["kept"]), f"{r['coverage']:.1%}", f"{r['agreement']:.1%}",
             f"{r['bound']:.1%}", f"{r['p_value']:.3g}",
             "accepted" if r["accepted"] else ("failed" if r["tested"] else "not tested")]
            for r in threshold["curve"]]
    if rows:
        blocks.append(("table", (["threshold", "kept", "coverage", "agreement", "lower bound", "p", "test"], rows)))
    blocks.extend(("img", plot) for plot in plots)
    return blocks


def _probability_blocks(probabilities: dict[str, Any] | None) -> list[Block]:
    if probabilities is None:
        return [("p", "No score probabilities in these ratings (the backend gave none): no expected scores, "
                      "confidence or needs_review.")]
    blocks: list[Block] = [("p", f"Score probabilities ({probabilities['n']} ratings): agreement with the humans "
                                 "of the most probable score (argmax) and of the probability-weighted expected "
                                 "score; ECE: expected calibration error of the confidence (the probability of "
                                 "the chosen score) against whether it equals the human's.")]
    rows = []
    for name, d in probabilities["dimensions"].items():
        argmax = d["argmax"] or {}
        rows.append([name, _fmt(argmax.get("qwk")), _fmt(d["expected"]["qwk"]), _fmt(argmax.get("spearman")),
                     _fmt(d["expected"]["spearman"]), _fmt(d["calibration"]["ece"]) if d["calibration"] else "—"])
    rows.append(["all dimensions", "", "", "", "", _fmt(probabilities["calibration"]["ece"])])
    blocks.append(("table", (["dimension", "QWK argmax", "QWK expected", "Spearman argmax", "Spearman expected",
                              "ECE"], rows)))
    review = probabilities["review"]
    blocks.append(("p", "Disagreement with the humans (share of dimension scores that differ; overall MAE) among "
                        "ratings flagged needs_review and the rest:"))
    blocks.append(("table", (["ratings", "n", "disagreement", "overall MAE"],
                             [[label, str(g["n"]), _fmt(g["disagreement"]), _fmt(g["overall_mae"])]
                              for label, g in review.items()])))
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


def render_html(blocks: list[Block], title: str = "hcp evaluation") -> str:
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
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
