"""Tables for the terminal (rich). Imported by commands only, never at CLI start."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def console() -> Console:
    # Click's runner swaps sys.stdout; a fresh Console per call writes to whatever stdout is now.
    return Console(highlight=False, soft_wrap=False)


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
    for dim in rubric.dimensions:
        table.add_row(dim.name, f"{rating[dim.name]} / {rubric.score_max}", f"{dim.weight:.2f}")
    table.add_row("[bold]overall[/bold]", f"[bold]{result.overall:.2f}[/bold]", "")
    out.print(table)
    out.print(f"[bold]Reasoning[/bold]: {rating['reasoning']}", markup=True)
    out.print("[bold]Strengths[/bold]:")
    for item in rating["strengths"]:
        out.print(f"  + {item}", markup=False)
    out.print("[bold]Areas for improvement[/bold]:")
    for item in rating["areas_for_improvement"]:
        out.print(f"  - {item}", markup=False)
    out.print(
        f"[dim]{result.backend} · {result.model} · {result.prompt_tokens} prompt + {result.output_tokens} output "
        f"tokens · {result.seconds:.1f} s · attempt {result.attempts}[/dim]"
    )
