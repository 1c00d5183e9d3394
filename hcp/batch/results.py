"""The results file of a batch: JSONL, one record per transcript, appended and synced as each is rated.

The file is append-only and held under an exclusive lock while a batch writes it: when an id has several
records, the newest (last) one is its result, and a torn last line (a kill in the middle of a write) is dropped
when the file is opened again, so its transcript is rated again. Only a file hcp wrote is resumed: every line a
record, but for a torn last line that begins as hcp begins each record; any other file is refused untouched.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Any

from hcp.errors import DataError
from hcp.files import open_for_append

log = logging.getLogger(__name__)

OK, FAILED = "ok", "failed"  # a record's status
# Every record is written as one JSON object whose first key is its id: what a torn last line begins with.
RECORD_START = b'{"id": '
_MISSING = object()


class Results:
    """The results file, open for appending under an exclusive lock; `records` holds the newest per id."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file, _ = open_for_append(path, private=True)  # ratings quote what the model read
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise DataError(f"{path}: another hcp process is writing this file — wait for it to finish, or "
                            "write to another file") from None
        self._file.seek(0)
        data = self._file.read()
        self.records, torn = _parse_results(data, path)
        if torn:  # killed while writing it: drop the partial line, its transcript is rated again
            log.warning("%s: incomplete last line (an interrupted run) dropped", path)
            self._file.truncate(len(data) - torn)
        elif data and not data.endswith(b"\n"):  # a whole record but for its newline
            self._write(b"\n")

    def check_rater(self, settings: dict[str, Any], version: str | None = None) -> None:
        """Refuse to mix into this file ratings made another way: `settings` holds everything that changes a
        rating (backend, model and its digest, rubric, seed, temperature, context size...), and every record
        carries the settings it was made with. With a `version` (a server rating with several model versions),
        only the records of that `model_version` are checked: the caller checks the others against theirs."""
        for record in self.records.values():
            if version is not None and record.get("model_version") != version:
                continue
            for key, value in settings.items():
                if record.get(key, _MISSING) != value:
                    made = f"{key} {record[key]!r}" if key in record else f"no recorded {key} (an older hcp)"
                    raise DataError(f"{self.path} holds ratings made with {made}; this run uses {key} {value!r} — "
                                    "write to a new results file, or delete this one to rate again")

    def append(self, record: dict[str, Any]) -> None:
        record = {"id": record["id"], **record}  # the id first: a torn line is known by RECORD_START
        self._write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        self.records[record["id"]] = record

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()  # closing releases the lock


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    """The newest record per id of a results file, in the order ids first appear (read-only, never repairs)."""
    if path.suffix.lower() == ".csv":
        raise DataError(f"{path}: give the JSONL results file beside it ({path.with_suffix('.jsonl').name}); the "
                        "CSV is written from it")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: results file not found — make one with 'hcp batch INPUT --out {path}'") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder — give the results file 'hcp batch --out' wrote") from None
    return _parse_results(data, path)[0]


def _parse_results(data: bytes, path: Path) -> tuple[dict[str, dict[str, Any]], int]:
    """The records of a results file, newest per id, and the length in bytes of a torn last line (0 if none):
    one with no newline that begins as a record but is not whole JSON, as a kill in the middle of a write leaves
    it. Any other line that is not a record means the file is not hcp's: a DataError, and nothing is changed."""
    *lines, tail = data.split(b"\n")
    records: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(lines, start=1):
        record = _parse_record(line, path, number)
        if record is not None:
            records[record["id"]] = record
    torn = bool(tail.strip()) and tail.startswith(RECORD_START) and _parse_json(tail) is None
    last = _parse_record(tail, path, len(lines) + 1) if tail.strip() and not torn else None
    if last is not None:
        records[last["id"]] = last
    if data and not records and not torn:
        raise _not_results(path, 1)  # only blank lines: not a file hcp wrote
    return records, len(tail) if torn else 0


def _parse_json(line: bytes) -> Any:
    try:
        return json.loads(line)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        return None


def _parse_record(line: bytes, path: Path, number: int) -> dict[str, Any] | None:
    if not line.strip():
        return None
    record = _parse_json(line)
    if not (isinstance(record, dict) and isinstance(record.get("id"), str) and record.get("status") in (OK, FAILED)):
        raise _not_results(path, number)
    return record


def _not_results(path: Path, number: int) -> DataError:
    return DataError(f"{path}:{number}: not a result of hcp batch — hcp appends to its results file, so give a new "
                     "file or the one 'hcp batch --out' wrote (this one is left as it is)")


def output_paths(out: Path, fmt: str | None, source: Path | None = None) -> tuple[Path, Path | None]:
    """(results JSONL, CSV or None) for --out and --format. The JSONL is always kept: it is what a rerun
    resumes from. `--format csv` (or an --out ending in .csv) writes the CSV beside it at the end."""
    fmt = fmt or ("csv" if out.suffix.lower() == ".csv" else "jsonl")
    if fmt == "jsonl" and out.suffix.lower() == ".csv":
        raise DataError(f"{out}: --format jsonl writes JSON lines — name the file .jsonl, or use --format csv")
    csv_path = None if fmt == "jsonl" else out if out.suffix.lower() == ".csv" else out.with_suffix(".csv")
    results = out if csv_path is None else csv_path.with_suffix(".jsonl")
    if source is not None and any(p.resolve() == source.resolve() for p in (results, csv_path) if p):
        raise DataError(f"{out}: the results would overwrite the input {source} — give --out another file")
    return results, csv_path
