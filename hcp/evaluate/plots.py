"""Plots of a rater's first run against the human scores (matplotlib, written as PNG files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hcp.evaluate.metrics import OVERALL, Rater, confusion, whole
from hcp.rubric import Rubric


def plot_rater(rater: Rater, human: dict[str, dict[str, float]], rubric: Rubric,
               folder: Path) -> list[tuple[str, str]]:
    """Confusion matrices, predicted-vs-human scatter and score distributions of a rater's first run, as PNGs
    in `folder`; [(file name, caption)]."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    first = rater.runs[0]
    ids = [i for i in human if i in first]
    names = [*rubric.names, OVERALL]
    levels = list(rubric.scores)
    pairs = {n: (np.array([human[i][n] for i in ids], float), np.array([first[i][n] for i in ids], float))
             for n in names}
    made = []

    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        h, p = pairs[name]
        matrix = confusion(whole(h), whole(p), levels)
        ax.imshow(matrix, cmap="Blues")
        for (row, col), count in np.ndenumerate(matrix):
            dark = count > matrix.max() / 2  # white on the dark cells
            ax.text(col, row, str(count), ha="center", va="center", fontsize=8, color="white" if dark else "black")
        ax.set_xticks(range(len(levels)), levels)
        ax.set_yticks(range(len(levels)), levels)
        ax.set(title=name, xlabel="predicted", ylabel="human")
    made.append(save_figure(fig, folder, f"confusion-{rater.role}.png", f"{rater.role}: confusion matrices"))

    rng = np.random.default_rng(0)  # jitter, so that equal pairs do not hide each other
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        h, p = pairs[name]
        ax.scatter(h + rng.uniform(-0.15, 0.15, h.size), p + rng.uniform(-0.15, 0.15, p.size), s=12, alpha=0.6)
        ax.plot([levels[0], levels[-1]], [levels[0], levels[-1]], color="grey", linewidth=0.8)
        ax.set(title=name, xlabel="human", ylabel="predicted", xlim=(levels[0] - 0.5, levels[-1] + 0.5),
               ylim=(levels[0] - 0.5, levels[-1] + 0.5))
    made.append(save_figure(fig, folder, f"scatter-{rater.role}.png", f"{rater.role}: predicted vs human"))

    fig, axes = plt.subplots(1, len(rubric.names), figsize=(3.2 * len(rubric.names), 3.0), squeeze=False)
    x = np.arange(len(levels))
    for ax, name in zip(axes[0], rubric.names, strict=True):
        h, p = pairs[name]
        ax.bar(x - 0.2, [np.sum(h == v) for v in levels], width=0.4, label="human")
        ax.bar(x + 0.2, [np.sum(p == v) for v in levels], width=0.4, label="predicted")
        ax.set_xticks(x, levels)
        ax.set(title=name, xlabel="score", ylabel="transcripts")
    axes[0][0].legend(fontsize=8)
    made.append(save_figure(fig, folder, f"distribution-{rater.role}.png", f"{rater.role}: score distributions"))
    return made


def plot_reliability(role: str, calibration: dict[str, Any], folder: Path) -> tuple[str, str]:
    """The reliability diagram of a rater's confidence: per confidence bin, the share of its scores that equal
    the human's, against the bin's mean confidence (on the diagonal: calibrated)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    bins = calibration["bins"]
    ax.bar([b["low"] for b in bins], [b["accuracy"] for b in bins], width=[b["high"] - b["low"] for b in bins],
           align="edge", alpha=0.5, edgecolor="black", label="accuracy")
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o", color="C1", label="bin mean")
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
    ece = calibration["ece"]
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (probability of the chosen score)",
           ylabel="share equal to the human's", title=f"{role}: reliability, ECE {ece:.3f}" if ece is not None
           else f"{role}: reliability")
    ax.legend(fontsize=8, loc="upper left")
    return save_figure(fig, folder, f"reliability-{role}.png", f"{role}: calibration of the confidence")


def plot_threshold(threshold: dict[str, Any], folder: Path) -> tuple[str, str]:
    """Coverage against agreement as the confidence threshold goes down: the agreement of the ratings kept, its
    one-sided lower bound, the target, and the threshold chosen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = threshold["curve"]
    fig, ax = plt.subplots(figsize=(5.0, 4.0))
    coverage = [r["coverage"] for r in rows]
    ax.step(coverage, [r["agreement"] for r in rows], where="post", label="agreement of the ratings kept")
    ax.step(coverage, [r["bound"] for r in rows], where="post", linestyle="--",
            label=f"lower bound ({1 - threshold['risk']:.0%})")
    ax.axhline(threshold["target"], color="grey", linewidth=0.8, label=f"target {threshold['target']:.0%}")
    if threshold["threshold"] is not None:
        ax.plot([threshold["coverage"]], [threshold["agreement"]], "o", color="C3",
                label=f"threshold {threshold['threshold']:.3f}")
    ax.set(xlim=(0, 1.02), ylim=(0, 1.02), xlabel="coverage (share rated without review)",
           ylabel="within one point on every dimension", title="confidence threshold")
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, folder, "threshold.png", "coverage against agreement as the threshold goes down")


def save_figure(fig: Any, folder: Path, name: str, caption: str) -> tuple[str, str]:
    """Write a figure as `folder/name` (PNG) and close it; (file name, caption), as a report shows it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(folder / name, dpi=100)
    plt.close(fig)
    return name, caption
