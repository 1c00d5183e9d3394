"""Batches over HTTP: an upload (JSONL or CSV) or a JSON list, rated through `hcp.batch` into a results file
of its own under the work folder, each record streamed to the client as it completes.

A batch has a name (one the client gives, else the upload's file name and a digest of its content), and its
results file is `<work>/batches/<name>.jsonl`: sending the same batch again streams the records already there
and rates only the rest, as a rerun of `hcp batch` does. One request at a time works on a name.

Every transcript goes through the server's queue (`Scheduler`) like a single rating, so a batch never runs the
model beside another request on the embedded backend, and it waits for room rather than being refused. When
the client goes away, the transcript being rated is finished and recorded, and nothing more is started.

With a canary, each transcript is rated by the version its content id goes to (`Service.version_for`), the
current version's share first, then the canary's, into the one results file; each record names its
`model_version`. A record already in the file counts as done whichever of the server's versions made it; a
record that none of them could have made (another model, rubric or setting) refuses the batch, as before.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from hcp.batch.inputs import Inputs, read_inputs, transcript_digest
from hcp.batch.results import FAILED, OK, Results, read_results
from hcp.batch.run import MAY_CHANGE_ON_RERUN, BatchOptions, rater_settings, run_batch, write_results_csv
from hcp.data.dataset import detect_format
from hcp.errors import DataError
from hcp.files import atomic_write_bytes
from hcp.rubric import Rubric
from hcp.scoring.backends import Backend, GenerateOptions, Generation, Messages
from hcp.scoring.score import ScoreOptions
from hcp.serve.scheduler import Cancelled, Scheduler
from hcp.serve.settings import make_private_folder
from hcp.serve.versions import Deployed

MAX_NAME = 80
NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_NAME - 1}}}")
DIGEST_HEX = 12  # of a batch's content, in the name made for it
NAME_RULE = "1 to 80 letters, digits, '.', '_' or '-', starting with a letter or digit"


class BadRequestError(DataError):
    """The request cannot be read: not JSON, not a JSONL or CSV upload, a bad name."""


class ConflictError(DataError):
    """The request clashes with the server's state: a batch already running, a results file of another model."""


def batch_name(given: str | None, filename: str | None, data: bytes) -> str:
    """The client's name, else one made from the upload: its file name without the suffix ('batch' for a JSON
    list) and the first digits of the SHA-256 of its bytes. The same file sent again is the same batch (it
    resumes); another file of the same name is another batch, never mixed into the first."""
    if given is not None:
        if not NAME.fullmatch(given):
            raise BadRequestError(f"name {given[:40]!r}: use {NAME_RULE}")
        return given
    digest = hashlib.sha256(data).hexdigest()[:DIGEST_HEX]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(filename or "").name.rsplit(".", 1)[0]).strip("-._")
    return f"{stem[:MAX_NAME - DIGEST_HEX - 1] or 'batch'}-{digest}"


def read_upload(data: bytes, filename: str, work_dir: Path) -> Inputs:
    """The transcripts of an uploaded JSONL or CSV file, read by `hcp batch`'s reader from a private temporary
    copy (named like the upload, so that failure records say 'visits.csv:7'), removed right after."""
    name = Path(filename or "upload.jsonl").name
    try:
        detect_format(Path(name))
    except DataError as exc:
        raise BadRequestError(str(exc)) from None
    make_private_folder(work_dir, "--work-dir")
    with tempfile.TemporaryDirectory(dir=work_dir, prefix=".upload-") as folder:
        path = atomic_write_bytes(Path(folder) / name, data, private=True)
        try:
            return read_inputs(path)
        except DataError as exc:
            raise BadRequestError(str(exc).replace(str(path), name)) from None


class QueuedBackend(Backend):
    """The server's backend, reached through its queue: what `run_batch` rates with. Each call waits for room
    in the queue; once the batch is cancelled, calls raise Cancelled (not an HcpError, so no failure is
    recorded for the transcript: a rerun rates it)."""

    def __init__(self, backend: Backend, scheduler: Scheduler, cancelled: threading.Event) -> None:
        self.name, self.model = backend.name, backend.model
        self._backend, self._scheduler, self._cancelled = backend, scheduler, cancelled
        self._pending: set[Any] = set()
        self._lock = threading.Lock()

    def _through(self, call: Callable[[], Any]) -> Any:
        if self._cancelled.is_set():
            raise Cancelled
        future = self._scheduler.submit(call, block=True, cancelled=self._cancelled)
        with self._lock:
            self._pending.add(future)
        try:
            return future.result()
        except CancelledError:
            raise Cancelled from None
        finally:
            with self._lock:
                self._pending.discard(future)

    def cancel(self) -> None:
        self._cancelled.set()
        with self._lock:
            for future in self._pending:
                future.cancel()

    def count_prompt_tokens(self, messages: Messages) -> int:
        return self._through(partial(self._backend.count_prompt_tokens, messages))

    def generate(self, messages: Messages, schema: dict[str, Any], options: GenerateOptions) -> Generation:
        return self._through(partial(self._backend.generate, messages, schema, options))

    def context_length(self) -> int | None:
        return self._backend.context_length()

    def model_digest(self) -> str | None:
        return self._backend.model_digest()

    def server(self) -> str | None:
        return self._backend.server()

    def model_note(self) -> str | None:
        return self._backend.model_note()


@dataclass
class Part:
    """The transcripts of a batch that one version rates, and that version through the queue."""

    version: Deployed
    inputs: Inputs
    backend: QueuedBackend


@dataclass
class BatchJob:
    """One request's batch: what is already in the results file, and what is left to rate, by version."""

    name: str
    inputs: Inputs
    results: Path
    done: list[dict[str, Any]]  # records already in the results file, streamed first
    todo: int
    retry_failed: bool
    parts: list[Part]
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def total(self) -> int:
        return len(self.inputs.items)

    def cancel(self) -> None:
        """Start nothing more; what waits in the queue is dropped."""
        for part in self.parts:
            part.backend.cancel()


OnRated = Callable[[str, str, dict[str, Any]], None]  # (transcript, model_version, rating)


class Batches:
    def __init__(self, folder: Path, versions: list[Deployed], version_for: Callable[[str], Deployed],
                 rubric: Rubric, options: ScoreOptions, scheduler: Scheduler, on_rated: OnRated | None = None) -> None:
        """`versions`: those that rate for users, the current one first; `version_for`: which rates a transcript;
        `on_rated`: told of each rating (the shadow's offer)."""
        self.folder = folder
        self.versions, self.version_for, self.on_rated = versions, version_for, on_rated
        self.rubric, self.scheduler = rubric, scheduler
        self.options = replace(options, raw_output_dir=folder)
        self._busy: set[str] = set()
        self._lock = threading.Lock()
        self._csv_lock = threading.Lock()

    def results_path(self, name: str) -> Path:
        if not NAME.fullmatch(name):
            raise BadRequestError(f"batch name {name[:40]!r}: use {NAME_RULE}")
        return self.folder / f"{name}.jsonl"

    def claim(self, name: str) -> None:
        """Reserve a batch name for one request; `release` it when its run ends."""
        with self._lock:
            if name in self._busy:
                raise ConflictError(f"batch {name!r} is being rated by another request — wait for it to finish, "
                                    "or give this batch another name")
            self._busy.add(name)

    @property
    def running(self) -> bool:
        """Whether any batch is being prepared or rated."""
        return bool(self._busy)

    def release(self, name: str) -> None:
        with self._lock:
            self._busy.discard(name)

    def prepare(self, name: str, inputs: Inputs, retry_failed: bool) -> BatchJob:
        """Check the results file (every record made by one of the server's versions, with its rubric and
        settings) and collect what it already holds for these ids."""
        path = self.results_path(name)
        try:
            results = Results(path)
        except DataError as exc:
            raise ConflictError(str(exc)) from None
        try:
            self._check_rater(name, path, results)
            done = []
            for item in inputs.items:
                record = results.records.get(item.id)
                if record is None or record.get("transcript_sha256") != transcript_digest(item.transcript):
                    continue  # not rated yet, or its transcript changed since: run_batch rates it
                if record["status"] == OK or (record["status"] == FAILED and not retry_failed):
                    done.append(record)
        finally:
            results.close()
        cancelled = threading.Event()
        parts = []
        for version in self.versions:
            # A row that cannot be read has no content to route by: the current version records its failure.
            items = [i for i in inputs.items if (self.version_for(i.transcript) if i.transcript is not None
                                                 else self.versions[0]) is version]
            if items:
                parts.append(Part(version, Inputs(inputs.path, items, inputs.repeats if not parts else []),
                                  QueuedBackend(version.backend, self.scheduler, cancelled)))
        return BatchJob(name, inputs, path, done, len(inputs.items) - len(done), retry_failed, parts, cancelled)

    def _check_rater(self, name: str, path: Path, results: Results) -> None:
        """Every record must be one the server's versions could have made: a record with a `model_version` is
        checked against that version's settings, an older one without against the current version's."""
        current = self.versions[0]
        made_by = {}
        for version in self.versions:
            settings = rater_settings(version.backend, self.rubric, self.options)
            made_by[version.label] = {k: v for k, v in settings.items() if k not in MAY_CHANGE_ON_RERUN}
        for record in results.records.values():
            settings = made_by.get(record.get("model_version", current.label))
            if settings is None or any(record.get(key) != value for key, value in settings.items()):
                raise ConflictError(
                    f"batch {name!r} holds ratings made with another model or rubric than this server's (model "
                    f"{current.backend.model!r}, rubric {self.rubric.digest}) — send it under another name "
                    f"(?name=...), or delete {path} to rate it again")

    def run(self, job: BatchJob, on_record: Callable[[dict[str, Any]], None]) -> None:
        """Rate what is left of `job` (in the caller's thread), version by version, calling `on_record` with each
        new record. Ends quietly when the job is cancelled."""
        for part in job.parts:
            transcripts = {item.id: item.transcript for item in part.inputs.items}

            def recorded(record: dict[str, Any], part: Part = part, transcripts: dict = transcripts) -> None:
                on_record(record)
                if record["status"] == OK and self.on_rated is not None:
                    self.on_rated(transcripts[record["id"]], part.version.label, record["rating"])

            options = BatchOptions(job.results, retry_failed=job.retry_failed, parallel=self.scheduler.workers,
                                   progress=False, label=job.name, on_record=recorded,
                                   model_version=part.version.label)
            try:
                run_batch(part.inputs, part.backend, self.rubric, self.options, options)
            except Cancelled:
                return
            if job.cancelled.is_set():
                return

    def results_snapshot(self, name: str) -> bytes:
        """The results file as it is now, up to its last complete record: a batch may be appending one."""
        data = self.results_path(name).read_bytes()
        return data[: data.rfind(b"\n") + 1]

    def csv_snapshot(self, name: str) -> bytes:
        """The results as CSV (also written beside the results file, as `hcp batch --format csv` writes it)."""
        with self._csv_lock:  # one writer at a time, and the bytes read back are the ones just written
            records = read_results(self.results_path(name))
            return write_results_csv(records, self.rubric, self.results_path(name).with_suffix(".csv")).read_bytes()

