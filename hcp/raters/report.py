"""The agreement report: agreement.json, and the same content as Markdown and as HTML with plots, rendered as
`hcp evaluate`'s report is. It names transcripts by id (or digest) and annotators by name, never quotes a
transcript; the files are the owner's alone all the same, as the annotators' files are."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hcp.evaluate.metrics import OVERALL
from hcp.evaluate.plots import save_figure
from hcp.evaluate.report import Block, render_html, render_markdown
from hcp.files import atomic_write_text, make_folder

MEASURES = {"alpha": "alpha", "qwk": "mean pairwise QWK", "exact": "exact", "within_one": "within one"}


def write_report(metrics: dict[str, Any], folder: Path) -> list[Path]:
    """agreement.json, agreement.md and agreement.html (the same content) and the plots they show, in `folder`."""
    make_folder(folder, private=True)
    plots = [plot_agreement(metrics, folder), plot_offsets(metrics, folder)]
    blocks = _blocks(metrics, plots)
    files = [
        atomic_write_text(folder / "agreement.json", json.dumps(metrics, indent=2, ensure_ascii=False) + "\n",
                          private=True),
        atomic_write_text(folder / "agreement.md", render_markdown(blocks), private=True),
        atomic_write_text(folder / "agreement.html", render_html(blocks, "hcp agreement"), private=True),
    ]
    return files + [folder / name for name, _ in plots]


def interval_text(estimate: dict[str, Any], signed: bool = False) -> str:
    """'0.812 [0.770, 0.850]'; '—' for an undefined value, '[—]' for an undefined interval."""
    f = (lambda v: f"{v:+.3f}") if signed else (lambda v: f"{v:.3f}")  # noqa: E731
    if estimate["value"] is None:
        return "—"
    if estimate["ci_low"] is None:
        return f"{f(estimate['value'])} [—]"
    return f"{f(estimate['value'])} [{f(estimate['ci_low'])}, {f(estimate['ci_high'])}]"


def scores_text(item: dict[str, Any]) -> str:
    """'empathy: alice 2, bob 4; clarity: ...' for one transcript to adjudicate."""
    return "; ".join(f"{name}: " + ", ".join(f"{a} {s[name]}" for a, s in item["scores"].items())
                     for name in item["dimensions"])


def _blocks(metrics: dict[str, Any], plots: list[tuple[str, str]]) -> list[Block]:
    names = list(metrics["dimensions"])
    rated = ", ".join(f"{a} {n}" for a, n in metrics["ratings"].items())
    blocks: list[Block] = [
        ("h1", f"Agreement between annotators: {', '.join(metrics['annotators'])}"),
        ("p", f"{metrics['transcripts']} transcripts rated by two or more annotators; {metrics['single']} rated by "
              f"one only, left out. Transcripts rated: {rated}. Files: {', '.join(metrics['files'])}; rubric "
              f"{metrics['rubric']}."),
        ("p", "Krippendorff's alpha is ordinal for the dimensions and interval for the overall score (the rubric's "
              "weighted mean); kappa, exact and within-one agreement compare whole scores (the overall rounded half "
              "up), pair by pair. Intervals: 95% percentile bootstrap over transcripts "
              f"({metrics['resamples']} resamples, seed {metrics['seed']})."),
        ("table", (["dimension", "n", *MEASURES.values()],
                   [[name, str(d["n"]), *(interval_text(d[m]) for m in MEASURES)]
                    for name, d in metrics["dimensions"].items()])),
        ("img", plots[0]),
        ("h2", "Pairwise quadratically weighted kappa"),
        ("table", (["annotators", *names],
                   [[pair, *(f"{interval_text(v[n])} (n {v[n]['n']})" for n in names)]
                    for pair, v in metrics["pairs"].items()])),
        ("h2", "Mean offset from the other annotators"),
        ("p", "An annotator's score minus the mean of the others' scores of the same transcript, averaged: above "
              "zero rates high, below zero rates low."),
        ("table", (["annotator", *names],
                   [[a, *(interval_text(o[n], signed=True) for n in names)] for a, o in metrics["offsets"].items()])),
    ]
    largest = metrics["largest_offset"]
    if largest:
        side = "high" if largest["overall"] > 0 else "low"
        blocks.append(("p", f"Largest offset: {largest['annotator']}, {largest['overall']:+.3f} on the overall "
                            f"score (rates {side})."))
    blocks.append(("img", plots[1]))
    adjudicate = metrics["adjudicate"]
    blocks.append(("h2", f"To adjudicate: {len(adjudicate)} transcripts"))
    blocks.append(("p", "A dimension where two annotators' scores are 2 or more apart. Transcripts are named by id, "
                        "or by 'sha256:' and the first 12 hex digits of their text's digest (the id 'hcp batch' "
                        "gives a transcript without one)."))
    if adjudicate:
        blocks.append(("table", (["transcript", "scores", "records"],
                                 [[item["transcript"], scores_text(item), ", ".join(item["where"].values())]
                                  for item in adjudicate])))
    if metrics["notes"]:
        blocks.append(("h2", "Notes"))
        blocks.append(("ul", metrics["notes"]))
    return blocks


def plot_agreement(metrics: dict[str, Any], folder: Path) -> tuple[str, str]:
    """Alpha and the mean pairwise kappa of each dimension and the overall score, with their intervals."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    names = list(metrics["dimensions"])
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 3.6))
    for shift, (measure, label) in zip((-0.1, 0.1), (("alpha", "Krippendorff's alpha"),
                                                      ("qwk", "mean pairwise QWK")), strict=True):
        _points(ax, [metrics["dimensions"][n][measure] for n in names], shift, label)
    ax.set_xticks(range(len(names)), names)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set(ylim=(min(-0.1, ax.get_ylim()[0]), 1.05), ylabel="agreement (1 = perfect)",
           title="Agreement, 95% bootstrap intervals")
    ax.legend(fontsize=8, loc="lower left")
    return save_figure(fig, folder, "agreement.png", "Alpha and mean pairwise kappa, per dimension and overall")


def plot_offsets(metrics: dict[str, Any], folder: Path) -> tuple[str, str]:
    """Each annotator's mean offset from the others, per dimension and overall, with its interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [*(n for n in metrics["dimensions"] if n != OVERALL), OVERALL]
    annotators = list(metrics["offsets"])
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 3.6))
    width = 0.8 / len(annotators)
    for index, annotator in enumerate(annotators):
        shift = (index - (len(annotators) - 1) / 2) * width
        _points(ax, [metrics["offsets"][annotator][n] for n in names], shift, annotator, bar=width)
    ax.set_xticks(range(len(names)), names)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set(ylabel="score − the others' mean", title="Mean offset from the other annotators")
    ax.legend(fontsize=8)
    return save_figure(fig, folder, "offsets.png", "Each annotator's mean offset from the others (above 0: rates high)")


def _points(ax: Any, estimates: list[dict[str, Any]], shift: float, label: str, bar: float | None = None) -> None:
    """Estimates at x = 0, 1, ... (+ shift) with their intervals as error bars; as bars when `bar` is a width.
    An undefined estimate is not drawn."""
    import numpy as np

    x = np.arange(len(estimates)) + shift
    value = np.array([np.nan if e["value"] is None else e["value"] for e in estimates], dtype=float)
    low = np.array([np.nan if e["ci_low"] is None else e["ci_low"] for e in estimates], dtype=float)
    high = np.array([np.nan if e["ci_high"] is None else e["ci_high"] for e in estimates], dtype=float)
    errors = np.nan_to_num(np.vstack([value - low, high - value]))
    if bar is None:
        ax.errorbar(x, value, yerr=errors, fmt="o", capsize=3, label=label)
    else:
        ax.bar(x, np.nan_to_num(value), width=bar, yerr=errors, capsize=3, label=label)
