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
