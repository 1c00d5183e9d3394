"""Tables for the terminal (rich). Imported by commands only, never at CLI start.

Model-written and user text (reasoning, strengths, ids, model and file names) is data, never Rich markup: the
console has markup and emoji codes off, so every string prints as it is (a `[/x]` in a reasoning would
otherwise raise after the rating is made, and `[bold]` would vanish). Styles are given as `style=` or `Text`
spans, never written into the text.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text


def console() -> Console:
    # Click's runner swaps sys.stdout; a fresh Console per call writes to whatever stdout is now.
    return Console(highlight=False, soft_wrap=False, markup=False, emoji=False)


def bold(text: str) -> Text:
    return Text(text, style="bold")


def print_data_summary(summary: dict[str, Any]) -> None:
    out = console()
    words = summary["words"]
    out.print(
        f"{summary['file']}: {summary['records']} records, {summary['valid']} valid, "
        f"{summary['invalid_records']} invalid ({summary['problems']} problems, {summary['warnings']} warnings); "
        f"transcript words min {words['min']}, median {words['median']:g}, max {words['max']}"
    )
    distribution = summary["distribution"]
    if not distribution or not summary["valid"]:
        return
    levels = sorted({level for counts in distribution.values() for level in counts})
    table = Table(title="Score distribution (valid records)")
    table.add_column("dimension")
    for level in levels:
        table.add_column(str(level), justify="right")
    for name, counts in distribution.items():
        table.add_row(name, *(str(counts.get(level, 0)) for level in levels))
    out.print(table)


def print_rating(result: Any, rubric: Any) -> None:
    """A ScoreResult as a table: scores with weights, overall, reasoning, strengths, areas for improvement."""
    out = console()
    rating = result.rating
    table = Table(title="Rating", show_lines=False)
    table.add_column("dimension")
    table.add_column("score", justify="right")
    table.add_column("weight", justify="right")
    sure = getattr(result, "confidence", None)  # None: the backend gave no score probabilities
    if sure:
        table.add_column("expected", justify="right")
        table.add_column("confidence", justify="right")
    for dim in rubric.dimensions:
        extra = [f"{result.expected[dim.name]:.2f}", f"{sure[dim.name]:.2f}"] if sure else []
        table.add_row(dim.name, f"{rating[dim.name]} / {rubric.score_max}", f"{dim.weight:.2f}", *extra)
    extra = [f"{result.overall_expected:.2f}", ""] if sure else []
    table.add_row(bold("overall"), bold(f"{result.overall:.2f}"), "", *extra)
    out.print(table)
    if sure:
        low, high = result.overall_interval
        level = rubric.scoring.interval_level
        out.print(f"overall {level:.0%} interval: {low:.2f}–{high:.2f} (confidence: the probability of the chosen "
                  "score)")
    else:
        out.print("no score probabilities from this backend: no confidence, expected scores or interval", style="dim")
    if getattr(result, "needs_review", False):
        out.print(Text.assemble(bold("Needs review"), ": ", ", ".join(result.review_reasons)), style="yellow")
    if getattr(result, "model_note", None):
        out.print(Text.assemble(bold("Note"), ": ", result.model_note), style="yellow")
    out.print(Text.assemble(bold("Reasoning"), ": ", rating["reasoning"]))
    out.print(Text.assemble(bold("Strengths"), ":"))
    for item in rating["strengths"]:
        out.print(f"  + {item}")
    out.print(Text.assemble(bold("Areas for improvement"), ":"))
    for item in rating["areas_for_improvement"]:
        out.print(f"  - {item}")
    print_evidence(out, getattr(result, "evidence", {}))
    out.print(f"{result.backend} · {result.model} · {result.prompt_tokens} prompt + {result.output_tokens} output "
              f"tokens · {result.seconds:.1f} s · attempt {result.attempts}", style="dim")


def print_evidence(out: Console, evidence: dict[str, list[dict[str, Any]]]) -> None:
    """Each dimension's quotes under its name, each with its status (the quotes are the model's text: plain)."""
    from hcp.evidence import quote_text, status_text

    if not evidence:
        return
    out.print(Text.assemble(bold("Evidence"), " (quotes checked against the transcript):"))
    for dim, checks in evidence.items():
        out.print(f"  {dim}:")
        for check in checks:
            line = f" line {check['line']}" if check.get("line") else ""
            colour = "green" if check.get("verified") is True else "red"
            out.print(Text.assemble("    ", (f"[{status_text(check)}{line}]", colour), " ", quote_text(check)))


def print_batch_summary(summary: Any, rubric: Any) -> None:
    """A BatchSummary: what this run did, what the results file holds for the input, mean scores."""
    out = console()
    table = Table(title=f"Batch: {summary.out}")
    table.add_column("")
    table.add_column("transcripts", justify="right")
    rows = [
        ("rated now", summary.rated),
        ("failed now", summary.failed),
        ("skipped: rated before", summary.skipped),
        ("skipped: failed before (--retry-failed retries them)", summary.skipped_failed),
        ("transcript changed since: rated again", summary.changed),
        ("repeated rows, rated once", summary.repeats),
        (bold("failed, in the results file"), len(summary.failed_ids)),
        (bold("distinct ids in the input"), summary.total),
    ]
    for label, count in rows:
        table.add_row(label, str(count))
    out.print(table)
    means = Table(title="Mean scores")
    means.add_column("dimension")
    means.add_column("mean", justify="right")
    for name in [*rubric.names, "overall"]:
        value = summary.means.get(name)
        means.add_row(name, "—" if value is None else f"{value:.2f}")
    out.print(means)
    rate = f", {summary.rated / summary.seconds:.2f} transcripts/s" if summary.rated and summary.seconds else ""
    parallel = f", {summary.parallel} at once" if summary.parallel > 1 else ""
    out.print(f"{summary.seconds:.1f} s{rate}{parallel} · {summary.prompt_tokens} prompt + "
              f"{summary.output_tokens} output tokens · results {summary.out}"
              f"{f' · CSV {summary.csv}' if summary.csv else ''}", style="dim")


def print_evaluation(metrics: dict[str, Any]) -> None:
    """The agreement metrics of each rater (and the differences with their intervals) as tables."""
    out = console()
    # Short headers: the table fits 80 columns. report.md / report.html spell them out.
    shown = {"exact": "exact", "within_one": "±1", "mae": "MAE", "spearman": "rho", "pearson": "r", "qwk": "QWK"}
    fmt = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
    for role, rater in metrics["raters"].items():
        table = Table(title=f"{role}: {rater['model']} — {rater['n']} rated, {rater['missing']} missing")
        table.add_column("dimension", no_wrap=True)
        table.add_column("n", justify="right")
        for title in shown.values():
            table.add_column(title, justify="right")
        if rater["reliability"]:
            table.add_column("alpha", justify="right")
        for name, values in rater["metrics"].items():
            alpha = [fmt(rater["reliability"][name]["alpha"])] if rater["reliability"] else []
            table.add_row(name, str(values["n"]), *(fmt(values[m]) for m in shown), *alpha)
        out.print(table)
        if rater["reliability"]:
            out.print(f"alpha: Krippendorff's, across {rater['runs']} runs")
            # A '—' says nothing by itself: each distinct reason once, with the dimensions it holds for.
            why: dict[str, list[str]] = {}
            for name, reliability in rater["reliability"].items():
                if reliability["alpha"] is None and reliability["note"]:
                    why.setdefault(reliability["note"], []).append(name)
            for note, names in why.items():
                out.print(f"alpha — ({', '.join(names)}): {note}")
        probabilities = rater.get("probabilities")
        if probabilities:
            table = Table(title=f"{role}: score probabilities ({probabilities['n']} ratings)")
            for column in ("dimension", "QWK argmax", "QWK expected", "rho argmax", "rho expected", "ECE"):
                table.add_column(column, justify="left" if column == "dimension" else "right", no_wrap=True)
            for name, d in probabilities["dimensions"].items():
                argmax = d["argmax"] or {}
                ece = d["calibration"]["ece"] if d["calibration"] else None
                table.add_row(name, fmt(argmax.get("qwk")), fmt(d["expected"]["qwk"]), fmt(argmax.get("spearman")),
                              fmt(d["expected"]["spearman"]), fmt(ece))
            out.print(table)
            review = probabilities["review"]
            out.print("needs_review: " + "; ".join(
                f"{label} {g['n']}, disagreement {fmt(g['disagreement'])}" for label, g in review.items()))
    if "differences" in metrics:
        diff = metrics["differences"]
        table = Table(title=f"model − baseline, 95% bootstrap CI ({diff['resamples']} resamples)")
        for column in ("dimension", "metric", "difference", "95% CI"):
            table.add_column(column, justify="left" if column in ("dimension", "metric") else "right")
        for name in metrics["dimensions"]:
            for metric, d in (diff[name] or {}).items():
                if metric in ("exact", "mae", "qwk"):
                    table.add_row(name, shown[metric], fmt(d["difference"]),
                                  f"[{fmt(d['ci_low'])}, {fmt(d['ci_high'])}]")
        out.print(table)
    floor = metrics.get("floor") or {}
    if floor.get("gain"):
        table = Table(title="model − the better trivial rater (majority, length), QWK, 95% bootstrap CI")
        for column in ("dimension", "better", "its QWK", "gain", "95% CI"):
            table.add_column(column, justify="left" if column in ("dimension", "better") else "right")
        for name in metrics["dimensions"]:
            best, gain = floor["best"][name], floor["gain"][name]["qwk"]
            table.add_row(name, best, fmt(floor["raters"][best][name]["qwk"]), fmt(gain["difference"]),
                          f"[{fmt(gain['ci_low'])}, {fmt(gain['ci_high'])}]")
        out.print(table)
    ceiling = metrics.get("ceiling") or {}
    if ceiling.get("dimensions"):
        table = Table(title=f"the ceiling: {len(ceiling['annotators'])} annotators, {ceiling['n']} transcripts, "
                            "QWK, 95% bootstrap CI", show_edge=False)  # within 80 columns
        for column in ("dimension", "annotators", "model", "gap", "consensus"):
            table.add_column(column, justify="left" if column == "dimension" else "right", no_wrap=True)
        for name, d in ceiling["dimensions"].items():
            table.add_row(name, _estimate(d["humans"]["qwk"]), _estimate(d["model"]["qwk"]),
                          _estimate(d["gap"], signed=True), _estimate(d["pairs"]["model–consensus"]["qwk"]))
        out.print(table)
        out.print("annotators: their kappa, averaged over pairs (the ceiling); model: the model's with each "
                  "annotator, averaged; gap: model − annotators; consensus: the model's with their median, which "
                  "the model's table above is measured against")
    threshold = metrics.get("threshold")
    if threshold:
        out.print(f"confidence threshold ({threshold['target']:.0%} within one on every dimension, risk "
                  f"{threshold['risk']:g}, {threshold['n']} ratings): {threshold['verdict']}")
    for note in metrics["notes"]:
        out.print(f"note: {note}")


def _estimate(estimate: dict[str, Any], signed: bool = False) -> Text:
    """A value over its 95% interval, in two lines and the interval to two decimals: the tables stay within 80
    columns (the report gives three)."""
    if estimate["value"] is None:
        return Text("—")
    sign = "+" if signed else ""
    low, high = estimate["ci_low"], estimate["ci_high"]
    interval = "[—]" if low is None else f"[{low:{sign}.2f}, {high:{sign}.2f}]"
    return Text.assemble(f"{estimate['value']:{sign}.3f}", "\n", (interval, "dim"))


def print_agreement(metrics: dict[str, Any], shown: int = 20) -> None:
    """Agreement between annotators (`hcp.raters.agreement.measure`): the measures per dimension, each
    annotator's offset, pairwise kappa, and the transcripts to adjudicate (by id, never by text)."""
    from hcp.raters.report import MEASURES, scores_text

    out = console()
    names = list(metrics["dimensions"])
    # Every dimension is rated on the same transcripts (a record scores them all): their number is in the title.
    table = Table(title=f"Agreement: {', '.join(metrics['annotators'])} — {metrics['transcripts']} transcripts",
                  show_lines=True)
    table.add_column("dimension", no_wrap=True)
    for measure in MEASURES:
        table.add_column({"qwk": "QWK (pairs)", "within_one": "within one"}.get(measure, measure), justify="right")
    for name, d in metrics["dimensions"].items():
        table.add_row(name, *(_estimate(d[m]) for m in MEASURES))
    out.print(table)
    offsets = Table(title="Mean offset from the other annotators (+ rates high)", show_lines=True)
    offsets.add_column("dimension", no_wrap=True)
    pairs = Table(title="Quadratically weighted kappa, pair by pair", show_lines=True)
    pairs.add_column("dimension", no_wrap=True)
    for annotator in metrics["offsets"]:
        offsets.add_column(annotator, justify="right")
    for pair in metrics["pairs"]:
        pairs.add_column(pair, justify="right")
    for name in names:
        offsets.add_row(name, *(_estimate(o[name], signed=True) for o in metrics["offsets"].values()))
        pairs.add_row(name, *(_estimate(p[name]) for p in metrics["pairs"].values()))
    out.print(offsets)
    out.print(pairs)
    largest = metrics["largest_offset"]
    if largest:
        side = "high" if largest["overall"] > 0 else "low"
        out.print(f"largest offset: {largest['annotator']}, {largest['overall']:+.3f} overall (rates {side})")
    adjudicate = metrics["adjudicate"]
    out.print(Text.assemble(bold(f"To adjudicate: {len(adjudicate)} transcript(s)"),
                            " (two scores of a dimension 2+ points apart)"))
    for item in adjudicate[:shown]:
        out.print(f"  {item['transcript']}: {scores_text(item)}")
    if len(adjudicate) > shown:
        out.print(f"  ... and {len(adjudicate) - shown} more (every one in --report's agreement.md and .json)")
    if metrics["single"]:
        out.print(f"{metrics['single']} transcript(s) rated by one annotator only: left out")
    for note in metrics["notes"]:
        out.print(f"note: {note}")
    out.print(f"intervals: 95% bootstrap over transcripts ({metrics['resamples']} resamples, seed {metrics['seed']})",
              style="dim")


def _parity_shown(parity: Any) -> str:
    """A version's parity figures in a few words (the export's ParityReport, as the manifest keeps it)."""
    if not isinstance(parity, dict):
        return "—" if parity is None else str(parity)
    if parity.get("skipped"):
        return "not checked"
    if isinstance(parity.get("agreement"), (int, float)) and isinstance(parity.get("mean_abs_expected"), (int, float)):
        verdict = " (below target, accepted)" if parity.get("accepted_loss") else ""
        return f"{parity['agreement']:.1%} agree, |Δ| {parity['mean_abs_expected']:.3f}{verdict}"
    return "recorded"


def _number(value: Any) -> str:
    return "—" if not isinstance(value, (int, float)) else f"{value:.3f}"


def print_versions(rows: list[dict[str, Any]]) -> None:
    """The registry's versions, one line each (`hcp models list`): rich tables wrap the labels on a terminal."""
    out = console()
    if not rows:
        out.print("the registry holds no versions yet — 'hcp export-ollama MODEL_DIR --name NAME' registers one")
        return
    width = max(len(row["label"]) for row in rows)
    for row in rows:
        validation = row["validation"] or {}
        loss = validation.get("best_eval_loss") or validation.get("last_eval_loss")
        qwk = (row["gate"] or {}).get("overall_qwk") or {}
        gate = "—" if qwk.get("candidate") is None else f"{qwk['candidate']:.3f}"
        shown = _parity_shown(row["parity"])
        created = str(row["created"] or "—").replace("T", " ")[:16]
        daemon = f"  ollama {row['daemon']}" if row["daemon"] else ""
        out.print(f"{row['label']:{width}s}  {row['status']:9s}  {created:16s}  {str(row['quant'] or '—'):6s}  "
                  f"val loss {_number(loss)}  train loss {_number(validation.get('final_train_loss'))}  "
                  f"gate QWK {gate}  parity {shown}{daemon}",
                  soft_wrap=True)
