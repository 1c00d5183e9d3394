"""Rating many transcripts: resumable, one JSON line per transcript, nothing lost and nothing twice.

Input: a JSONL or CSV file (the data formats; only `transcript` is required, `id` is used when present, else a
stable id from the content: the first 12 hex digits of the SHA-256 of the transcript with its whitespace
collapsed), or a folder of `.txt` files (id: the file's path relative to the folder).

Output: the results file, JSONL, one record per transcript appended as soon as it is rated, flushed and
fsynced, so that a crash or `kill -9` loses at most the transcript in flight. Rules:

- A rerun with the same results file skips the ids it already holds; with `retry_failed` it rates the failed
  ones again. The file is append-only: when an id has several records, the newest (last) one is its result.
- A torn last line (the process was killed while writing) is dropped when the file is opened again.
- Duplicate ids in the input: the same id with the same transcript is rated once (the repeats are reported);
  the same id for different transcripts is not rated at all but recorded as failed (`duplicate_id`), naming
  every line, since no rating could say which transcript it belongs to. The rest are rated.
- Rows that cannot be read (bad JSON, no or empty transcript, a binary file) are recorded as failed with
  their line; the rest are rated. Any other text is rated as it is (`hcp data validate` checks more). An
  input with no records at all is an error.
- A transcript whose scoring fails with an error the user can act on (too long, no valid answer after
  retries, the backend gone) is recorded as failed with the error's kind and its one-line reason; after
  BACKEND_ERRORS_IN_A_ROW backend errors in a row the batch stops rather than fail every transcript left.
  Anything else is a bug: it stops the batch with its traceback, and a rerun resumes.

No record, reason or log line holds transcript text: only ids, lines, lengths and counts.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hcp.backends import Backend
from hcp.data import CSV_LIST_SEPARATOR, LIST_FIELDS, atomic_write_text, decode_text, read_file_bytes, read_rows
from hcp.errors import BackendError, ContextOverflowError, DataError, HcpError, InvalidOutputError
from hcp.rubric import Rubric, normalize_transcript
from hcp.scoring import ScoreOptions, score_transcript

log = logging.getLogger("hcp.batch")

OK, FAILED = "ok", "failed"  # a record's status
# A failed record's `error`: what kind of failure, so that a user (or a script) can sort them.
UNREADABLE, EMPTY, DUPLICATE_ID, BACKEND_GONE = "unreadable", "empty", "duplicate_id", "backend"
ERROR_KINDS: tuple[tuple[type[HcpError], str], ...] = (
    (ContextOverflowError, "too_long"),
    (InvalidOutputError, "invalid_output"),
    (BackendError, BACKEND_GONE),
    (DataError, UNREADABLE),
    (HcpError, "error"),
)
ID_HEX_DIGITS = 12
MAX_REASON_CHARS = 500
BACKEND_ERRORS_IN_A_ROW = 3
OLLAMA_KEEP_ALIVE = "30m"  # keep the model loaded between a batch's requests (the daemon's default is 5m)


# --- input ------------------------------------------------------------------------------------------------


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
        columns = sorted({name for _, row in rows if isinstance(row, dict) for name in row})
        raise DataError(f"{path}: no 'transcript' field in any record (found: {', '.join(columns) or 'none'}) — "
                        "name the field or column that holds the conversation 'transcript'")
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
            text = normalize_transcript(decode_text(read_file_bytes(path), ident))
        except DataError as exc:
            yield Item(ident, ident, None, str(exc).split(": ", 1)[1], UNREADABLE)  # the id is in the record
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


# --- the results file -------------------------------------------------------------------------------------


class Results:
    """The results file, open for appending under an exclusive lock; `records` holds the newest per id."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a+b")
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

    def check_rater(self, model: str, rubric: str) -> None:
        """Refuse to mix ratings of another model or rubric into this file."""
        for record in self.records.values():
            if (record.get("model"), record.get("rubric")) != (model, rubric):
                made = f"model {record.get('model')!r}, rubric {record.get('rubric')}"
                raise DataError(f"{self.path} holds ratings made with {made}; this run uses model {model!r}, "
                                f"rubric {rubric} — write to a new results file, or delete this one to rate again")

    def append(self, record: dict[str, Any]) -> None:
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
    one with no newline that is not whole JSON, as a kill in the middle of a write leaves it."""
    *lines, tail = data.split(b"\n")
    records: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(lines, start=1):
        record = _parse_record(line, path, number)
        if record is not None:
            records[record["id"]] = record
    last = _parse_record(tail, path, len(lines) + 1, quiet=True) if tail.strip() else None
    if last is not None:
        records[last["id"]] = last
    return records, len(tail) if tail.strip() and last is None else 0


def _parse_record(line: bytes, path: Path, number: int, quiet: bool = False) -> dict[str, Any] | None:
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        if not quiet:
            log.warning("%s:%d: not a JSON line, ignored (its transcript, if any, is rated again)", path, number)
        return None
    if not (isinstance(record, dict) and isinstance(record.get("id"), str) and record.get("status") in (OK, FAILED)):
        raise DataError(f"{path}:{number}: not a result of hcp batch — hcp appends to its results file, so give "
                        "a new file or the one 'hcp batch --out' wrote")
    return record


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


# --- rating -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchOptions:
    out: Path  # the results JSONL
    csv: Path | None = None  # also write the results as CSV here at the end
    retry_failed: bool = False
    parallel: int = 1  # requests at once (Ollama); the embedded backend rates one at a time
    progress: bool | None = None  # a progress bar on stderr; None: when stderr is a terminal
    label: str = "rating"  # the progress bar's label

    def __post_init__(self) -> None:
        if self.parallel < 1:
            raise DataError(f"parallel must be at least 1, got {self.parallel}")


@dataclass
class BatchSummary:
    out: Path
    csv: Path | None
    total: int  # distinct ids in the input
    rated: int  # rated in this run
    failed: int  # failed in this run
    skipped: int  # rated before, in the results file
    skipped_failed: int  # failed before and not retried
    repeats: int  # input rows that repeated an id with the same transcript
    failed_ids: list[str]  # input ids whose newest record is a failure, this run or before
    means: dict[str, float | None]  # per dimension and 'overall', over the input's rated ids
    parallel: int
    seconds: float
    prompt_tokens: int  # this run
    output_tokens: int


def run_batch(inputs: Inputs, backend: Backend, rubric: Rubric, score_options: ScoreOptions,
              options: BatchOptions) -> BatchSummary:
    """Rate every item of `inputs` not already in the results file; see the module's docstring."""
    started = time.perf_counter()
    workers = options.parallel
    if workers > 1 and backend.name == "llama-cpp":
        log.warning("--parallel %d ignored: the embedded backend runs one llama.cpp instance, which already uses "
                    "every core; rating one transcript at a time", workers)
        workers = 1
    keep_model_loaded(backend)
    results = Results(options.out)
    try:
        results.check_rater(backend.model, rubric.digest)
        todo, skipped, skipped_failed = [], 0, 0
        for item in inputs.items:
            status = results.records.get(item.id, {}).get("status")
            if status == OK:
                skipped += 1
            elif status == FAILED and not options.retry_failed:
                skipped_failed += 1
            else:
                todo.append(item)
        provenance = {"backend": backend.name, "model": backend.model, "rubric": rubric.digest,
                      "seed": score_options.seed}
        counts = _rate_all(todo, lambda item: _rate(item, backend, rubric, score_options, provenance), results,
                           options, workers)
    finally:
        results.close()
    if options.csv is not None:
        write_results_csv(results.records, rubric, options.csv)
    mine = [results.records[i.id] for i in inputs.items if i.id in results.records]
    ok = [r for r in mine if r["status"] == OK]
    scores = [{**r["rating"], "overall": r["overall"]} for r in ok]
    means: dict[str, float | None] = {
        name: round(sum(s[name] for s in scores) / len(ok), 2) if ok else None for name in [*rubric.names, "overall"]}
    return BatchSummary(
        out=options.out, csv=options.csv, total=len(inputs.items), rated=counts.rated, failed=counts.failed,
        skipped=skipped, skipped_failed=skipped_failed, repeats=len(inputs.repeats),
        failed_ids=[r["id"] for r in mine if r["status"] == FAILED], means=means, parallel=workers,
        seconds=round(time.perf_counter() - started, 2), prompt_tokens=counts.prompt_tokens,
        output_tokens=counts.output_tokens,
    )


def keep_model_loaded(backend: Backend) -> None:
    """Ollama unloads a model idle for 5 minutes by default; a batch asks it to keep the model loaded."""
    if getattr(backend, "keep_alive", "absent") is None:  # the Ollama backend, left at the daemon's default
        backend.keep_alive = OLLAMA_KEEP_ALIVE  # type: ignore[attr-defined]


def _rate(item: Item, backend: Backend, rubric: Rubric, options: ScoreOptions,
          provenance: dict[str, Any]) -> dict[str, Any]:
    """The record of one item (runs in a worker thread when rating in parallel)."""
    if item.transcript is None:
        return failure_record(item, item.error or UNREADABLE, item.problem or "could not be read", 0.0, provenance)
    started = time.perf_counter()
    try:
        result = score_transcript(item.transcript, backend, rubric, options)
    except HcpError as exc:
        kind = next(k for cls, k in ERROR_KINDS if isinstance(exc, cls))
        return failure_record(item, kind, str(exc), time.perf_counter() - started, provenance)
    return {"id": item.id, "status": OK, "rating": result.rating, "overall": result.overall, **provenance,
            "prompt_tokens": result.prompt_tokens, "output_tokens": result.output_tokens,
            "seconds": result.seconds, "attempts": result.attempts}


def failure_record(item: Item, kind: str, reason: str, seconds: float, provenance: dict[str, Any]) -> dict[str, Any]:
    # One line, bounded. Reasons come from hcp's own errors and row checks, which never quote a transcript.
    reason = " ".join(reason.split())
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[: MAX_REASON_CHARS - 1] + "…"
    return {"id": item.id, "status": FAILED, "error": kind, "reason": reason, "source": item.source, **provenance,
            "seconds": round(seconds, 3)}


@dataclass
class _Counts:
    rated: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0


def _rate_all(todo: list[Item], rate: Callable[[Item], dict[str, Any]], results: Results,
              options: BatchOptions, workers: int) -> _Counts:
    """Rate `todo`, appending each record as it completes, with a progress bar (rate and ETA) on stderr."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    counts, backend_errors = _Counts(), 0
    bar = tqdm(total=len(todo), desc=options.label, unit="transcript", dynamic_ncols=True,
               disable=None if options.progress is None else not options.progress)
    # Log lines (the CLI's handler on the 'hcp' logger) go above the bar rather than through it.
    hcp_logger = logging.getLogger("hcp")
    redirect = logging_redirect_tqdm([hcp_logger]) if hcp_logger.handlers and not bar.disable else nullcontext()
    try:
        with redirect:
            for record in _records(todo, rate, workers):
                results.append(record)
                bar.update()
                if record["status"] == OK:
                    counts.rated += 1
                    counts.prompt_tokens += record["prompt_tokens"]
                    counts.output_tokens += record["output_tokens"]
                    backend_errors = 0
                    continue
                counts.failed += 1
                bar.set_postfix(failed=counts.failed)
                log.warning("%s: failed (%s): %s", record["source"], record["error"], record["reason"])
                backend_errors = backend_errors + 1 if record["error"] == BACKEND_GONE else 0
                if backend_errors >= BACKEND_ERRORS_IN_A_ROW:
                    left = len(todo) - counts.rated - counts.failed
                    raise BackendError(
                        f"stopped after {backend_errors} backend errors in a row (last: {record['reason']}); "
                        f"{left} transcript(s) not tried — fix the backend and run the same command again (rated "
                        "ones are kept; add --retry-failed to retry the failed ones)")
    finally:
        bar.close()
    return counts


def _records(todo: list[Item], rate: Callable[[Item], dict[str, Any]], workers: int) -> Iterator[dict[str, Any]]:
    """Records in the order they complete. In parallel, the first transcript goes alone: it loads the model in
    the daemon and the backend's lazy state (its tokenizer) before N requests arrive at once."""
    if workers == 1 or len(todo) < 2:
        yield from map(rate, todo)
        return
    yield rate(todo[0])
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hcp-batch")
    pending: set[Future[dict[str, Any]]] = set()
    try:
        for item in todo[1:]:
            pending.add(pool.submit(rate, item))
            if len(pending) >= workers:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (f.result() for f in done)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield from (f.result() for f in done)
    finally:  # stopped early (an error, Ctrl-C): start nothing new; requests in flight end unrecorded
        pool.shutdown(wait=False, cancel_futures=True)


# --- CSV --------------------------------------------------------------------------------------------------


def write_results_csv(records: dict[str, dict[str, Any]], rubric: Rubric, path: Path) -> Path:
    """The results as CSV, one row per id (lists joined with ';'), written atomically."""
    columns = ["id", "status", "overall", *rubric.names, "reasoning", "strengths", "areas_for_improvement",
               "error", "reason", "backend", "model", "seed", "prompt_tokens", "output_tokens", "seconds"]
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for record in records.values():
        row = {**record, **record.get("rating", {})}
        for name in LIST_FIELDS:
            if name in row:
                row[name] = CSV_LIST_SEPARATOR.join(row[name])
        writer.writerow(row)
    return atomic_write_text(path, buffer.getvalue())
