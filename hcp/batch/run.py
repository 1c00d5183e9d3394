"""Rating many transcripts: resumable, one JSON line per transcript, nothing lost and nothing twice.

Input: a JSONL or CSV file (the data formats; only `transcript` is required), or a folder of `.txt` files,
read by `hcp.batch.inputs` with one item per distinct id.

Output: the results file, JSONL, one record per transcript appended as soon as it is rated, flushed and
fsynced, so that a crash, `kill -9` or power cut loses at most the transcripts in flight (one; up to
`parallel`). Rules:

- A rerun with the same results file skips the ids it already holds; with `retry_failed` it rates the failed
  ones again. An id whose transcript changed since (each record holds the transcript's SHA-256) is rated
  again, rated or failed. The file is append-only: when an id has several records, the newest (last) one is
  its result.
- Every record holds what changes a rating (`rater_settings`: backend, model and its digest, rubric, seed,
  temperature, context size...); a rerun made another way is refused rather than mixed into the file.
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

With `parallel` > 1, Ollama and the servers get that many requests at once (threads); on the embedded backend that
many transcripts are decoded together in one llama.cpp context (`hcp.scoring.parallel`) instead. Either way records
come in the order transcripts are done, under the same rules.

No record, reason or log line holds transcript text: only ids, lines, lengths and counts.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import closing, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hcp.batch.inputs import UNREADABLE, Inputs, Item, transcript_digest
from hcp.batch.results import FAILED, OK, Results
from hcp.data.dataset import CSV_LIST_SEPARATOR, LIST_FIELDS
from hcp.errors import BackendError, ContextOverflowError, DataError, HcpError, InvalidOutputError
from hcp.evidence import quote_text, status_text
from hcp.files import atomic_write_text
from hcp.rubric import Rubric
from hcp.scoring.backends import Backend
from hcp.scoring.parallel import score_parallel
from hcp.scoring.score import ScoreOptions, ScoreResult, score_transcript

log = logging.getLogger(__name__)

# A failed record's `error`: what kind of failure, so that a user (or a script) can sort them.
BACKEND_GONE = "backend"
ERROR_KINDS: tuple[tuple[type[HcpError], str], ...] = (
    (ContextOverflowError, "too_long"),
    (InvalidOutputError, "invalid_output"),
    (BackendError, BACKEND_GONE),
    (DataError, UNREADABLE),
    (HcpError, "error"),
)
MAX_REASON_CHARS = 500
# Recorded with each rating but free to change on a rerun: they decide whether a transcript fits or how often
# an invalid answer is retried, not what a rating says (the README's route for a transcript too long: a larger
# --num-ctx, then --retry-failed). Evaluation still keys its prediction files by them.
MAY_CHANGE_ON_RERUN = ("num_ctx", "max_retries")
BACKEND_ERRORS_IN_A_ROW = 3
OLLAMA_KEEP_ALIVE = "30m"  # keep the model loaded between a batch's requests (the daemon's default is 5m)


# --- rating -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchOptions:
    out: Path  # the results JSONL
    csv: Path | None = None  # also write the results as CSV here at the end
    retry_failed: bool = False
    parallel: int = 1  # requests at once (Ollama, a server); embedded: transcripts decoded together
    progress: bool | None = None  # a progress bar on stderr; None: when stderr is a terminal
    label: str = "rating"  # the progress bar's label
    on_record: Callable[[dict[str, Any]], None] | None = None  # called with each record once it is in the file
    # The model version rating (hcp serve's canary): written in each record as `model_version`; the results file
    # is then checked only against the records of this version (the server checks the others against theirs).
    model_version: str | None = None

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
    changed: int  # in the results file, but the transcript changed since: rated again (counted in rated/failed)
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
    if options.csv is not None:
        check_csv_is_ours(options.csv)
    keep_model_loaded(backend)
    settings = rater_settings(backend, rubric, score_options)
    if options.model_version is not None:
        settings["model_version"] = options.model_version
    results = Results(options.out)
    try:
        results.check_rater({k: v for k, v in settings.items() if k not in MAY_CHANGE_ON_RERUN},
                            options.model_version)
        todo, skipped, skipped_failed, changed = [], 0, 0, 0
        for item in inputs.items:
            record = results.records.get(item.id)
            if record is not None and record.get("transcript_sha256") != transcript_digest(item.transcript):
                changed += 1
                todo.append(item)
            elif record is not None and record["status"] == OK:
                skipped += 1
            elif record is not None and not options.retry_failed:
                skipped_failed += 1
            else:
                todo.append(item)
        if changed:
            log.info("%d transcript(s) changed since they were rated: rating them again", changed)
        if workers > 1 and backend.name == "llama-cpp":
            # One llama.cpp instance already uses every core: N transcripts are decoded together in it instead.
            records = _decoded_together(todo, backend, rubric, score_options, settings, workers)
        else:
            records = _records(todo, lambda item: _rate(item, backend, rubric, score_options, settings), workers)
        with closing(records):  # stopped early: the workers or the llama.cpp context go at once
            counts = _rate_all(len(todo), records, results, options)
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
        skipped=skipped, skipped_failed=skipped_failed, changed=changed, repeats=len(inputs.repeats),
        failed_ids=[r["id"] for r in mine if r["status"] == FAILED], means=means, parallel=workers,
        seconds=round(time.perf_counter() - started, 2), prompt_tokens=counts.prompt_tokens,
        output_tokens=counts.output_tokens,
    )


def rater_settings(backend: Backend, rubric: Rubric, options: ScoreOptions) -> dict[str, Any]:
    """Everything that changes a rating, as each record holds it: the backend, the model and which exact model
    it is (`Backend.model_digest`), the rubric's digest, and every scoring option (seed, temperature, context
    size, repeat penalty, retries) but where invalid answers are kept."""
    scoring = {name: value for name, value in asdict(options).items() if name != "raw_output_dir"}
    server = {"server": backend.server()} if backend.server() else {}  # only the server backends have one
    return {"backend": backend.name, "model": backend.model, "model_digest": backend.model_digest(), **server,
            "rubric": rubric.digest, **scoring}


def keep_model_loaded(backend: Backend) -> None:
    """Ollama unloads a model idle for 5 minutes by default; a batch asks it to keep the model loaded."""
    if getattr(backend, "keep_alive", "absent") is None:  # the Ollama backend, left at the daemon's default
        backend.keep_alive = OLLAMA_KEEP_ALIVE  # type: ignore[attr-defined]


def _rate(item: Item, backend: Backend, rubric: Rubric, options: ScoreOptions,
          settings: dict[str, Any]) -> dict[str, Any]:
    """The record of one item (runs in a worker thread when rating in parallel)."""
    provenance = {**settings, "transcript_sha256": transcript_digest(item.transcript)}
    if item.transcript is None:
        return failure_record(item, item.error or UNREADABLE, item.problem or "could not be read", 0.0, provenance)
    started = time.perf_counter()
    try:
        result: ScoreResult | HcpError = score_transcript(item.transcript, backend, rubric, options)
    except HcpError as exc:
        result = exc
    return outcome_record(item, result, time.perf_counter() - started, provenance)


def _decoded_together(todo: list[Item], backend: Backend, rubric: Rubric, options: ScoreOptions,
                      settings: dict[str, Any], parallel: int) -> Generator[dict[str, Any], None, None]:
    """The records of `todo` with `parallel` transcripts decoded together (the embedded backend), as each is done:
    unreadable rows first, then those that cannot be rated (too long), then the ratings."""
    for item in todo:
        if item.transcript is None:
            yield _rate(item, backend, rubric, options, settings)
    pairs = [(item, item.transcript) for item in todo if item.transcript is not None]
    with closing(score_parallel(pairs, backend, rubric, options, parallel)) as outcomes:
        for item, outcome, seconds in outcomes:
            provenance = {**settings, "transcript_sha256": transcript_digest(item.transcript)}
            yield outcome_record(item, outcome, seconds, provenance)


def outcome_record(item: Item, outcome: ScoreResult | HcpError, seconds: float,
                   provenance: dict[str, Any]) -> dict[str, Any]:
    """The record of a rating, or of the error that stopped it."""
    if isinstance(outcome, HcpError):
        kind = next(k for cls, k in ERROR_KINDS if isinstance(outcome, cls))
        return failure_record(item, kind, str(outcome), seconds, provenance)
    checked = ({"evidence": outcome.evidence, "evidence_verified": outcome.evidence_verified}
               if outcome.evidence else {})
    return {"id": item.id, "status": OK, "rating": outcome.rating, "overall": outcome.overall, **checked,
            **provenance, "prompt_tokens": outcome.prompt_tokens, "output_tokens": outcome.output_tokens,
            "seconds": outcome.seconds, "attempts": outcome.attempts, **review_fields(outcome),
            **({"model_note": outcome.model_note} if outcome.model_note else {})}


def review_fields(result: Any) -> dict[str, Any]:
    """What a results record keeps of the score distribution, for `hcp evaluate` and the CSV (null: none)."""
    return {"needs_review": result.needs_review, "review_reasons": result.review_reasons,
            "distribution": result.distribution, "expected": result.expected, "confidence": result.confidence,
            "overall_expected": result.overall_expected,
            "overall_interval": list(result.overall_interval) if result.overall_interval else None}


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


def _rate_all(total: int, records: Iterable[dict[str, Any]], results: Results, options: BatchOptions) -> _Counts:
    """Append each of the `total` records as it completes, with a progress bar (rate and ETA) on stderr."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    counts, backend_errors = _Counts(), 0
    bar = tqdm(total=total, desc=options.label, unit="transcript", dynamic_ncols=True,
               disable=None if options.progress is None else not options.progress)
    # Log lines (the CLI's handler on the 'hcp' logger) go above the bar rather than through it.
    hcp_logger = logging.getLogger("hcp")
    redirect = logging_redirect_tqdm([hcp_logger]) if hcp_logger.handlers and not bar.disable else nullcontext()
    try:
        with redirect:
            for record in records:
                results.append(record)
                bar.update()
                if options.on_record is not None:
                    options.on_record(record)
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
                    left = total - counts.rated - counts.failed
                    raise BackendError(
                        f"stopped after {backend_errors} backend errors in a row (last: {record['reason']}); "
                        f"{left} transcript(s) not tried — fix the backend and run the same command again (rated "
                        "ones are kept; add --retry-failed to retry the failed ones)")
    finally:
        bar.close()
    return counts


def _records(todo: list[Item], rate: Callable[[Item], dict[str, Any]], workers: int
             ) -> Generator[dict[str, Any], None, None]:
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


# The results CSV's first columns: a file at --out that begins otherwise is not one hcp wrote.
CSV_FIRST_COLUMNS = ("id", "status")


def check_csv_is_ours(path: Path) -> None:
    """Refuse to write the results CSV over a file hcp did not write (it is replaced whole at the end)."""
    start = ",".join(CSV_FIRST_COLUMNS).encode() + b","
    try:
        with path.open("rb") as file:
            found = file.read(len(start))
    except (FileNotFoundError, IsADirectoryError):
        return  # none yet, or a folder: writing it says so
    if found and found != start:
        raise DataError(f"{path}: not a results CSV of hcp batch, and the run would replace it — give --out a new "
                        "file (this one is left as it is)")


# A spreadsheet runs a cell that begins with one of these as a formula (OWASP, "CSV Injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """A text cell that a spreadsheet would run as a formula, with a leading ' so that it shows as text;
    numbers and other text as they are. Only the CSV is changed: the JSONL keeps the exact text."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def evidence_cell(evidence: dict[str, list[dict[str, Any]]]) -> str:
    """One readable cell: a line per quote, 'empathy [verified] RD: words' or '[NOT VERIFIED: why]'."""
    return "\n".join(f"{dim} [{status_text(check)}] {quote_text(check)}"
                     for dim, checks in evidence.items() for check in checks)


def write_results_csv(records: dict[str, dict[str, Any]], rubric: Rubric, path: Path) -> Path:
    """The results as CSV, one row per id (lists joined with ';'), written atomically; model-written and user
    text is made safe to open in a spreadsheet (`spreadsheet_safe`)."""
    columns = [*CSV_FIRST_COLUMNS, "overall", *rubric.names, "needs_review", "review_reasons", "overall_expected",
               "overall_low", "overall_high", *(f"{n}_confidence" for n in rubric.names), "reasoning", "strengths",
               "areas_for_improvement", *(["evidence_verified", "evidence"] if rubric.evidence_keys else []),
               "error", "reason", "backend", "model", "seed", "prompt_tokens", "output_tokens", "seconds"]
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for record in records.values():
        row = {**record, **record.get("rating", {})}
        row["review_reasons"] = CSV_LIST_SEPARATOR.join(record.get("review_reasons") or [])
        if record.get("overall_interval"):
            row["overall_low"], row["overall_high"] = record["overall_interval"]
        row.update({f"{n}_confidence": c for n, c in (record.get("confidence") or {}).items()})
        for name in LIST_FIELDS:
            if name in row:
                row[name] = CSV_LIST_SEPARATOR.join(row[name])
        if "evidence" in row:
            row["evidence"] = evidence_cell(row["evidence"])
        writer.writerow({name: spreadsheet_safe(value) for name, value in row.items()})
    return atomic_write_text(path, buffer.getvalue(), private=True)
