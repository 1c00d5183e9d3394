"""The promotion report: promotion.json, and the same content as Markdown and HTML (evaluate's renderers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hcp.evaluate.metrics import COMPARED, METRIC_TITLES
from hcp.evaluate.report import Block, render_html, render_markdown
from hcp.files import atomic_write_text, make_folder
from hcp.registry.store import Version

SHOWN = ("qwk", "within_one", "exact", "mae", "spearman")


def write_promotion_report(decision: dict[str, Any], candidate: Version, current: Version | None, options: Any,
                           folder: Path) -> list[Path]:
    """promotion.json, promotion.md and promotion.html in `folder` (its owner's alone, like the registry)."""
    make_folder(folder, private=True)
    payload = {"candidate": candidate.label, "promoted": current.label if current else None,
               "data": str(options.data), "decision": decision}
    blocks = report_blocks(decision, candidate, current, str(options.data))
    return [
        atomic_write_text(folder / "promotion.json", json.dumps(payload, indent=2, ensure_ascii=False) + "\n",
                          private=True),
        atomic_write_text(folder / "promotion.md", render_markdown(blocks), private=True),
        atomic_write_text(folder / "promotion.html", render_html(blocks, f"hcp promotion of {candidate.label}"),
                          private=True),
    ]


def _fmt(value: Any, signed: bool = False) -> str:
    if value is None:
        return "—"
    return (f"{value:+.3f}" if signed else f"{value:.3f}") if isinstance(value, float) else str(value)


def report_blocks(decision: dict[str, Any], candidate: Version, current: Version | None, data: str) -> list[Block]:
    against = current.label if current else "no promoted version (first promotion)"
    verdict = "PROMOTE" if decision["promote"] else "REFUSE"
    blocks: list[Block] = [
        ("h1", f"Promotion of {candidate.label}: {verdict}"),
        ("p", f"Candidate {candidate.label} against {against}, on {decision['labelled']} labelled transcripts of "
              f"{data}. The candidate passes when the paired 95% bootstrap interval ({decision['resamples']} "
              f"resamples, seed {decision['seed']}) of each difference candidate − promoted lies above "
              f"−{decision['margin']:g}: the overall score's QWK, and each dimension's within-one agreement."),
    ]
    if decision["checks"]:
        rows = [[c["score"], METRIC_TITLES[c["metric"]], _fmt(c["difference"], True),
                 f"[{_fmt(c['ci_low'], True)}, {_fmt(c['ci_high'], True)}]", "pass" if c["passes"] else "FAIL"]
                for c in decision["checks"]]
        blocks += [("h2", "The gate"), ("table", (["score", "metric", "difference", "95% interval", "check"], rows))]
    blocks.append(("h2", "Decision"))
    blocks.append(("ul", decision["reasons"] or ["every check passed: the candidate is not worse"]))
    blocks.append(("h2", "Agreement with the human labels"))
    roles = [("candidate", candidate.label)] + ([("promoted", current.label)] if current else [])
    headers = ["score", *(f"{label} {METRIC_TITLES[m]}" for _, label in roles for m in ("qwk", "within_one"))]
    names = list(decision["candidate"]["metrics"])
    rows = [[name, *(_fmt(decision[role]["metrics"][name][m]) for role, _ in roles for m in ("qwk", "within_one"))]
            for name in names]
    blocks.append(("p", f"{candidate.label} rated {decision['candidate']['n']} of {decision['labelled']}"
                        + (f"; {current.label} rated {decision['promoted']['n']}." if current else ".")))
    blocks.append(("table", (headers, rows)))
    if decision["differences"]:
        blocks.append(("h2", "Every difference, candidate − promoted, with its 95% interval"))
        rows = []
        for name in names:
            entry = decision["differences"][name]
            rows.append([name, *(f"{_fmt(entry[m]['difference'], True)} [{_fmt(entry[m]['ci_low'], True)}, "
                                 f"{_fmt(entry[m]['ci_high'], True)}]" for m in COMPARED)])
        blocks.append(("table", (["score", *(METRIC_TITLES[m] for m in COMPARED)], rows)))
        blocks.append(("p", "MAE: lower is better, so a negative difference favours the candidate."))
    return blocks
