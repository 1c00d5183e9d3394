"""The transcripts of a batch: a JSONL or CSV file, or a folder of .txt files, one item per distinct id.

The id is the row's `id` when it has one, else a stable id from the content: the first 12 hex digits of the
SHA-256 of the transcript with its whitespace collapsed; in a folder, the file's path relative to the folder.
Rows that cannot be read are items too, with the reason as data (`problem`, `error`), never the text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hcp.data.dataset import read_rows
from hcp.errors import DataError
from hcp.files import read_text_file
from hcp.rubric import normalize_transcript

# A failed record's `error` for rows that could not be rated at all.
UNREADABLE, EMPTY, DUPLICATE_ID = "unreadable", "empty", "duplicate_id"
ID_HEX_DIGITS = 12


@dataclass(frozen=True)
class Item:
    """One transcript to rate, or a row that could not be read (`transcript` None, `problem` says why)."""

    id: str
    source: str  # where it is: 'visits.jsonl:7' or 'clinic/a.txt' — never its text
    transcript: str | None
    problem: str | None = None
    error: str | None = None  # the failed record's kind when the row could not be read
    row: dict[str, Any] = field(default_factory=dict, repr=False)  # the row's fields (labels, for evaluate)


@dataclass
class Inputs:
    path: Path
    items: list[Item]  # one per distinct id, in input order
    repeats: list[str]  # rows that repeated an id with the same transcript (rated once)


def content_id(transcript: str) -> str:
    """A stable id for a transcript without one: the same text, however its lines and spaces fall, same id."""
    key = " ".join(normalize_transcript(transcript).split())
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:ID_HEX_DIGITS]


def transcript_digest(transcript: str | None) -> str | None:
    """The SHA-256 of a transcript exactly as the model reads it (None for a row that could not be read): each
    result records it, so that a transcript changed since it was rated is rated again."""
    return None if transcript is None else hashlib.sha256(transcript.encode("utf-8")).hexdigest()


def read_inputs(path: Path) -> Inputs:
    """The transcripts of a JSONL or CSV file, or of a folder of .txt files, with one item per distinct id."""
    if path.is_dir():
        items = list(_folder_items(path))
        if not items:
            raise DataError(f"{path}: no .txt files found — put one transcript per .txt file in the folder")
    elif not path.exists():
        raise DataError(f"{path}: not found — give a .jsonl or .csv file, or a folder of .txt files")
    else:
        items = list(_file_items(path))
        if not items:
            raise DataError(f"{path}: no transcripts found — the file is empty")
    return _one_per_id(path, items)


def _file_items(path: Path) -> Iterator[Item]:
    rows = list(read_rows(path))
    if rows and not any(isinstance(row, dict) and "transcript" in row for _, row in rows):
        # Counted, never listed: a CSV without a header row has the first transcript's words as column names.
        columns = len({name for _, row in rows if isinstance(row, dict) for name in row})
        raise DataError(f"{path}: no 'transcript' field in any record ({columns} other column(s) or field(s) "
                        "found) — expected a first row (CSV) or key (JSONL) named 'transcript' for the conversation, "
                        "and 'id' if you have one")
    for line, row in rows:
        source = f"{path.name}:{line}"
        if not isinstance(row, dict):  # a Problem: the row could not be parsed
            yield Item(source, source, None, row.message, UNREADABLE)
            continue
        given = row.get("id")
        given = None if given in (None, "") else str(given).strip()
        value = row.get("transcript")
        text = normalize_transcript(value) if isinstance(value, str) else None
        if value is None:
            yield Item(given or source, source, None, "transcript: missing", UNREADABLE, row)
        elif text is None:
            yield Item(given or source, source, None, f"transcript: must be text, got {type(value).__name__}",
                       UNREADABLE, row)
        elif not text:
            yield Item(given or source, source, None, "transcript: is empty", EMPTY, row)
        else:
            yield Item(given or content_id(text), source, text, row=row)


def _folder_items(folder: Path) -> Iterator[Item]:
    files = (p for p in folder.rglob("*") if p.suffix.lower() == ".txt" and p.is_file())
    for path in sorted(files):
        ident = path.relative_to(folder).as_posix()
        if any(part.startswith(".") for part in Path(ident).parts):
            continue  # hidden files: editor backups, .DS_Store and the like
        try:
            text = normalize_transcript(read_text_file(path))
        except DataError as exc:
            yield Item(ident, ident, None, exc.reason, UNREADABLE)  # the record names the file by its id
            continue
        yield Item(ident, ident, text or None, None if text else "transcript: is empty", None if text else EMPTY)


def _one_per_id(path: Path, items: list[Item]) -> Inputs:
    first: dict[str, Item] = {}
    clashes: dict[str, list[Item]] = {}
    repeats: list[str] = []
    for item in items:
        seen = first.get(item.id)
        if seen is None:
            first[item.id] = item
        elif item.id in clashes:
            clashes[item.id].append(item)
        elif seen.transcript is not None and item.transcript is not None and \
                content_id(seen.transcript) == content_id(item.transcript):
            repeats.append(f"{item.source}: same id and transcript as {seen.source} — rated once")
        else:
            clashes[item.id] = [seen, item]
    for ident, clash in clashes.items():
        where = ", ".join(i.source for i in clash)
        first[ident] = Item(ident, clash[0].source, None,
                            f"id {ident!r} is given to different transcripts at {where} — give each its own id",
                            DUPLICATE_ID)
    return Inputs(path, list(first.values()), repeats)
