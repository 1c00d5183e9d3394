"""Reading, checking, splitting and writing rated transcripts.

Two formats, as in the training guide: JSONL (one object per line) and CSV (the same columns). A list in a CSV
cell is a JSON array (`["a; b", "c"]`, what hcp writes: lossless) or, as in the guide, its items joined with ';'
(read where that is unambiguous: a quote's text may hold ';', since each quote starts with its speaker). Both
UTF-8, with or without a byte-order mark. Every problem is reported with the file, the line
(for CSV, the line where the row starts) and the field, and never quotes the transcript: it holds patient data.
"""

from __future__ import annotations

import csv
import io
import json
import random
import statistics
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hcp.errors import DataError
from hcp.evidence import PROBLEMS, Turn, check_quote, evidence_key, split_quote, turns
from hcp.files import atomic_write_text, read_text_file
from hcp.rubric import Rubric, normalize_transcript

MAX_LINE_CHARS = 200_000  # a JSONL line or CSV field longer than this is not one consultation
GUIDE_MIN_WORDS, GUIDE_MAX_WORDS = 100, 2000  # the training guide's advice on transcript length
LIST_FIELDS = ("strengths", "areas_for_improvement")
CSV_LIST_SEPARATOR = ";"  # joins a list field's items in a CSV cell (the guide's simple form)
JSON_LIST_EXAMPLE = 'a JSON array such as ["a; b", "c"]'
CSV_LIST_ADVICE = f"in CSV {JSON_LIST_EXAMPLE}, or items joined with ';'"


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


@dataclass
class Example:
    """One transcript, with its human rating when the file has one."""

    transcript: str
    line: int
    id: str | None = None
    scores: dict[str, int] = field(default_factory=dict)
    reasoning: str | None = None
    strengths: list[str] = field(default_factory=list)
    areas_for_improvement: list[str] = field(default_factory=list)
    evidence: dict[str, list[str]] = field(default_factory=dict)  # dimension -> 'Speaker: words' quotes
    # The record as read (a CSV row in JSON's types), with what this rubric does not use (quotes with
    # scoring.evidence off): what a split writes back.
    source: dict[str, Any] | None = None

    @property
    def labelled(self) -> bool:
        return bool(self.scores)

    def rating(self) -> dict[str, Any]:
        """The human rating in the schema's fields (the training target)."""
        return {
            "reasoning": self.reasoning,
            "strengths": self.strengths,
            "areas_for_improvement": self.areas_for_improvement,
            **{evidence_key(dim): quotes for dim, quotes in self.evidence.items()},
            **self.scores,
        }

    def to_record(self) -> dict[str, Any]:
        """The JSONL record of the training guide's format."""
        record: dict[str, Any] = {"id": self.id} if self.id is not None else {}
        record["transcript"] = self.transcript
        record.update(self.scores)
        if self.labelled:
            record.update(reasoning=self.reasoning, strengths=self.strengths,
                          areas_for_improvement=self.areas_for_improvement)
            record.update({evidence_key(dim): quotes for dim, quotes in self.evidence.items()})
        return record

    def as_read(self) -> dict[str, Any]:
        """The record as its file gave it — a JSONL object unchanged, a CSV row with its scores as numbers and
        its lists as lists — for files that must not change what they copy (a split)."""
        return dict(self.source) if self.source is not None else self.to_record()


@dataclass
class Dataset:
    path: Path
    examples: list[Example]
    problems: list[Problem]
    warnings: list[Problem]
    lines: int  # records read (JSONL lines that are not blank, CSV rows)

    @property
    def ok(self) -> bool:
        return not self.problems


# --- reading ----------------------------------------------------------------------------------------------


def detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return "csv"
    raise DataError(f"{path}: unknown data format '{suffix or '(no suffix)'}' — use a .jsonl or .csv file")


def _jsonl_rows(path: Path, text: str) -> Iterator[tuple[int, dict[str, Any] | Problem]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if len(line) > MAX_LINE_CHARS:
            yield number, Problem(str(path), number, None, f"line is {len(line)} characters, over the limit of "
                                  f"{MAX_LINE_CHARS} — put one transcript per line")
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, Problem(str(path), number, None, f"invalid JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(row, dict):
            yield number, Problem(str(path), number, None, f"expected a JSON object, got {type(row).__name__}")
            continue
        yield number, row


def _csv_rows(path: Path, text: str) -> Iterator[tuple[int, dict[str, Any] | Problem]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    csv.field_size_limit(MAX_LINE_CHARS * 4)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = reader.fieldnames
    except csv.Error as exc:
        raise DataError(f"{path}:1: cannot read the CSV header ({exc})") from None
    if not header:
        return
    if "transcript" not in (name.strip() for name in header if name):
        # Counted, never listed: a CSV without a header row has the first transcript's words as column names.
        raise DataError(f"{path}:1: the first row names no 'transcript' column ({len(header)} columns) — a CSV "
                        "starts with a header row naming its columns, one of them 'transcript' (and 'id' if you have "
                        "one)")
    start = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield start, Problem(str(path), start, None, f"malformed CSV ({exc}) — check the quotes in this row")
            return
        if None in row:  # more cells than header columns
            yield start, Problem(str(path), start, None, f"{len(header) + len(row[None])} cells but the header "
                                 f"has {len(header)} columns — quote fields that contain commas")
        elif all(not (v or "").strip() for v in row.values()):
            pass  # a blank row
        else:
            yield start, {k: v for k, v in row.items() if v is not None or k in header}
        start = reader.line_num + 1


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | Problem]]:
    """(line, row or problem) for each record of a JSONL or CSV file."""
    fmt = detect_format(path)
    text = read_text_file(path, "expected a .jsonl or .csv file")
    yield from (_jsonl_rows if fmt == "jsonl" else _csv_rows)(path, text)


# --- checking ---------------------------------------------------------------------------------------------


class _Checker:
    """Turns raw rows into Examples, collecting problems that name file, line and field."""

    def __init__(self, path: Path, rubric: Rubric, labels: str, csv_format: bool) -> None:
        self.path, self.rubric, self.labels = str(path), rubric, labels  # labels: required | optional | ignore
        self.csv_format = csv_format
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        self.seen: dict[str, int] = {}  # transcript_key -> line
        self.ids: dict[str, int] = {}  # id -> line

    def fail(self, line: int, name: str | None, message: str) -> None:
        self.problems.append(Problem(self.path, line, name, message))

    def example(self, line: int, row: dict[str, Any]) -> Example | None:
        before = len(self.problems)
        # Evidence fields are known whatever scoring.evidence says: data with quotes trains with evidence off too.
        known = {"id", "transcript", *self.rubric.names, "reasoning", *LIST_FIELDS,
                 *(evidence_key(n) for n in self.rubric.names)}
        if self.labels == "required":
            for name in row:
                if name not in known:
                    self.fail(line, name, f"unknown field — expected {', '.join(sorted(known - {'id'}))}")
        transcript = self.transcript(line, row.get("transcript"))
        ident = self.ident(line, row.get("id"), checked=transcript is not None)
        labelled = self.labels == "required" or (
            self.labels == "optional" and any(row.get(n) not in (None, "") for n in self.rubric.names))
        example = Example(transcript or "", line, ident)
        if labelled:
            for name in self.rubric.names:
                score = self.score(line, name, row.get(name, _MISSING))
                if score is not None:
                    example.scores[name] = score
            example.reasoning = self.reasoning(line, row.get("reasoning", _MISSING))
            example.strengths = self.phrases(line, "strengths", row.get("strengths", _MISSING))
            example.areas_for_improvement = self.phrases(
                line, "areas_for_improvement", row.get("areas_for_improvement", _MISSING))
            if self.rubric.scoring.evidence and transcript:
                example.evidence = self.evidence(line, row, turns(transcript))
        example.source = self.json_types(row, example) if self.csv_format else row
        return example if len(self.problems) == before else None

    def json_types(self, row: dict[str, Any], example: Example) -> dict[str, Any]:
        """A CSV row as the JSONL record it stands for: scores as numbers, lists as lists, texts as written,
        empty cells left out."""
        quotes = {evidence_key(n) for n in self.rubric.names}
        record: dict[str, Any] = {}
        for name, value in row.items():
            if value in (None, ""):
                continue
            if name in example.scores:
                value = example.scores[name]
            elif name in LIST_FIELDS or name in quotes:
                value = parse_list_cell(value, quotes=name in quotes) or value  # a cell that is no list: as is
            record[name] = value
        return record

    def ident(self, line: int, value: Any, checked: bool) -> str | None:
        """The record's id, as `hcp batch` and `hcp evaluate` read it. One id for two transcripts would leave them
        unable to tell which a rating belongs to, so it is refused here, not first there. `checked`: the record's
        transcript passed (a repeated transcript is reported as such, whatever its id)."""
        ident = None if value in (None, "") else str(value).strip()
        if ident is None or not checked:
            return ident
        if ident in self.ids:
            self.fail(line, "id", f"{ident!r} is already the id of line {self.ids[ident]}, another transcript — give "
                      "every record its own id (hcp batch and hcp evaluate match ratings to records by id)")
        else:
            self.ids[ident] = line
        return ident

    def transcript(self, line: int, value: Any) -> str | None:
        if value is _MISSING or value is None:
            self.fail(line, "transcript", "missing — every record needs the conversation text")
            return None
        if not isinstance(value, str):
            self.fail(line, "transcript", f"must be text, got {type(value).__name__}")
            return None
        text = normalize_transcript(value)
        if not text:
            self.fail(line, "transcript", "is empty")
            return None
        if len(text) > MAX_LINE_CHARS:
            self.fail(line, "transcript", f"is {len(text)} characters, over the limit of {MAX_LINE_CHARS}")
            return None
        if len(turns(text)) < 2:  # the evidence check's speakers: "RD:", "Speaker 1:", "Dr. Lee:", a first name
            self.fail(line, "transcript", "no speaker labels found — write the turns as 'RD: ...' and 'Patient: ...'")
            return None
        key = transcript_key(text)
        if key in self.seen:
            self.fail(line, "transcript", f"duplicate of the transcript on line {self.seen[key]}")
            return None
        self.seen[key] = line
        words = len(text.split())
        if not GUIDE_MIN_WORDS <= words <= GUIDE_MAX_WORDS:
            self.warnings.append(Problem(self.path, line, "transcript", f"{words} words; the training guide "
                                         f"advises {GUIDE_MIN_WORDS}-{GUIDE_MAX_WORDS}"))
        return text

    def score(self, line: int, name: str, value: Any) -> int | None:
        checked = self.rubric.check_score(None if value is _MISSING else value, from_text=self.csv_format)
        if isinstance(checked, str):
            self.fail(line, name, checked)
            return None
        return checked

    def reasoning(self, line: int, value: Any) -> str | None:
        limit = self.rubric.scoring.reasoning_max_chars
        if value is _MISSING or value is None or (isinstance(value, str) and not value.strip()):
            self.fail(line, "reasoning", "missing or empty — explain the scores in a sentence or two")
            return None
        if not isinstance(value, str):
            self.fail(line, "reasoning", f"must be text, got {type(value).__name__}")
            return None
        text = " ".join(value.split())
        if len(text) > limit:
            self.fail(line, "reasoning", f"{len(text)} characters, the rating schema allows {limit} — shorten it "
                      "or raise scoring.reasoning_max_chars")
            return None
        return text

    def cell_list(self, line: int, name: str, value: Any, quotes: bool = False) -> Any:
        """A list given as text (a CSV cell): a JSON array of texts, else the guide's items joined with ';'.
        Other values come back as they are, for the caller to check."""
        if not isinstance(value, str):
            return value
        parsed = parse_list_cell(value, quotes)
        if parsed is None:
            self.fail(line, name, f"starts and ends like a JSON array but is not an array of texts — write it as "
                      f"{JSON_LIST_EXAMPLE}, or join the items with ';'")
            return _INVALID
        return parsed

    def phrases(self, line: int, name: str, value: Any) -> list[str]:
        most, longest = self.rubric.scoring.list_max_items, self.rubric.scoring.item_max_chars
        value = self.cell_list(line, name, value)
        if value is _INVALID:
            return []
        if value is _MISSING or value is None:
            self.fail(line, name, f"missing — give a list of short phrases ({CSV_LIST_ADVICE})")
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(line, name, "must be a list of text phrases")
            return []
        items = [" ".join(v.split()) for v in value if v.strip()]
        if not 1 <= len(items) <= most:
            split = self.csv_format and len(items) > most  # perhaps items that hold ';'
            hint = f" — if an item holds ';', write the cell as {JSON_LIST_EXAMPLE}" if split else ""
            self.fail(line, name, f"{len(items)} items, expected 1 to {most}{hint}")
            return []
        for index, item in enumerate(items):
            if len(item) > longest:
                self.fail(line, f"{name}[{index}]", f"{len(item)} characters, the rating schema allows {longest}")
        return items


    def evidence(self, line: int, row: dict[str, Any], transcript_turns: list[Turn]) -> dict[str, list[str]]:
        """Each dimension's quotes: present, within the schema's bounds, and each found in the transcript as its
        speaker said it (a training target that quotes what was not said teaches a model to invent)."""
        keys = [evidence_key(n) for n in self.rubric.names]
        if all(row.get(k) in (None, "", _MISSING) for k in keys):
            also = f" (as are {', '.join(keys[1:])})" if len(keys) > 1 else ""
            self.fail(line, keys[0], f"missing{also} — scoring.evidence asks for the transcript lines each score "
                      "rests on: add them as lists of 'Speaker: words' (in CSV joined with ';'), or set "
                      "scoring.evidence: false in your config to train without them")
            return {}
        s = self.rubric.scoring
        found: dict[str, list[str]] = {}
        for name, key in zip(self.rubric.names, keys, strict=True):
            value = self.cell_list(line, key, row.get(key, _MISSING), quotes=True)
            if value is _INVALID:
                continue
            if value is _MISSING or value is None:
                self.fail(line, key, "missing — give the transcript lines the score rests on, as a list of "
                          "'Speaker: words' (or set scoring.evidence: false in your config)")
                continue
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                self.fail(line, key, "must be a list of quotes, each 'Speaker: words'")
                continue
            items = [" ".join(v.split()) for v in value if v.strip()]
            if not 1 <= len(items) <= s.evidence_max_items:
                self.fail(line, key, f"{len(items)} quotes, expected 1 to {s.evidence_max_items}")
                continue
            for index, item in enumerate(items):
                if len(item) > s.evidence_max_chars:
                    self.fail(line, f"{key}[{index}]", f"{len(item)} characters, the rating schema allows "
                              f"{s.evidence_max_chars} — quote less, or raise scoring.evidence_max_chars")
                    continue
                check = check_quote(item, transcript_turns)
                if not check.verified:
                    self.fail(line, f"{key}[{index}]", f"{PROBLEMS[check.problem or 'not_found']} — copy the words "
                              "of one turn as 'Speaker: words' (whitespace, case and punctuation may differ)")
            found[name] = items
        return found


_MISSING: Any = object()
_INVALID: Any = object()  # a cell that could not be read as a list; its problem is already reported


def transcript_key(text: str) -> str:
    """What makes two transcripts the same one: their words, whatever the whitespace and case."""
    return " ".join(text.split()).casefold()


def parse_list_cell(text: str, quotes: bool = False) -> list[str] | None:
    """The items of a list written in one CSV cell, or None for a cell that looks like a JSON array and is not.

    A JSON array of texts is taken as it is: it is how hcp writes lists, and the only form that keeps every
    item whatever it holds. Otherwise the guide's form, items joined with ';'. There a ';' inside an item
    cannot be told from one between items — except in quotes (`quotes`), each of which starts with its
    speaker: a piece that names no speaker is the rest of the quote before it.
    """
    stripped = text.strip()
    if stripped.startswith("[") and stripped.endswith("]"):
        try:
            items = json.loads(stripped)
        except json.JSONDecodeError:
            return None
        return items if isinstance(items, list) and all(isinstance(i, str) for i in items) else None
    joined: list[str] = []
    for piece in text.split(CSV_LIST_SEPARATOR):
        if quotes and joined and piece.strip() and split_quote(piece)[0] is None:
            joined[-1] += CSV_LIST_SEPARATOR + piece
        else:
            joined.append(piece)
    return [item.strip() for item in joined if item.strip()]


def list_cell(items: list[str]) -> str:
    """A list as one CSV cell: a JSON array, which `parse_list_cell` reads back item for item."""
    return json.dumps(items, ensure_ascii=False)


def load_dataset(path: str | Path, rubric: Rubric, labels: str = "required") -> Dataset:
    """Read and check a data file. `labels`: 'required' (training), 'optional' (batch), 'ignore'."""
    path = Path(path)
    return check_rows(path, read_rows(path), rubric, labels, csv_format=detect_format(path) == "csv")


def check_rows(path: Path, rows: Iterable[tuple[int, dict[str, Any] | Problem]], rubric: Rubric,
               labels: str = "required", csv_format: bool = False) -> Dataset:
    """Check (line, row) pairs as `load_dataset` checks a file's, for records about to be written to `path`:
    what passes here, `hcp data validate` accepts."""
    checker = _Checker(path, rubric, labels, csv_format)
    examples: list[Example] = []
    lines = 0
    for line, row in rows:
        lines += 1
        if isinstance(row, Problem):
            checker.problems.append(row)
            continue
        example = checker.example(line, row)
        if example is not None:
            examples.append(example)
    return Dataset(path, examples, checker.problems, checker.warnings, lines)


def require_valid(dataset: Dataset, shown: int = 5) -> list[Example]:
    """The examples of a dataset, or a DataError that lists its first problems."""
    if dataset.ok:
        if not dataset.examples:
            raise DataError(f"{dataset.path}: no records found — the file is empty")
        return dataset.examples
    listed = "; ".join(str(p) for p in dataset.problems[:shown])
    more = len(dataset.problems) - shown
    tail = f" (and {more} more; run 'hcp data validate {dataset.path}')" if more > 0 else ""
    raise DataError(f"{len(dataset.problems)} problem(s) in the data: {listed}{tail}")


# --- summaries, splits, writing ---------------------------------------------------------------------------


def summarize(dataset: Dataset, rubric: Rubric) -> dict[str, Any]:
    """Counts, score distribution per dimension, transcript length in words."""
    words = [len(e.transcript.split()) for e in dataset.examples]
    labelled = [e for e in dataset.examples if e.labelled]
    distribution = {
        name: {score: sum(1 for e in labelled if e.scores.get(name) == score) for score in rubric.scores}
        for name in rubric.names
    }
    return {
        "file": str(dataset.path),
        "records": dataset.lines,
        "valid": len(dataset.examples),
        "invalid_records": len({p.line for p in dataset.problems}),
        "problems": len(dataset.problems),
        "warnings": len(dataset.warnings),
        "distribution": distribution,
        "words": {
            "min": min(words, default=0),
            "median": statistics.median(words) if words else 0,
            "max": max(words, default=0),
        },
    }


def split_examples(
    examples: list[Example], rubric: Rubric, val_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Train / validation split, stratified by the rounded overall score, deterministic for a seed."""
    if not 0 < val_fraction < 1:
        raise DataError(f"validation fraction {val_fraction} must be between 0 and 1 (e.g. 0.2)")
    if len(examples) < 2:
        raise DataError(f"{len(examples)} example(s) cannot be split — need at least 2")
    strata: dict[int, list[Example]] = defaultdict(list)
    for example in examples:
        strata[round(rubric.overall(example.rating()))].append(example)
    rng = random.Random(seed)
    train: list[Example] = []
    val: list[Example] = []
    want = max(1, round(val_fraction * len(examples)))
    # Largest remainder: each stratum gives its share, the leftover goes to the largest fractional parts.
    shares = {k: val_fraction * len(v) for k, v in sorted(strata.items())}
    counts = {k: int(s) for k, s in shares.items()}
    for k in sorted(shares, key=lambda k: (counts[k] - shares[k], k))[: max(0, want - sum(counts.values()))]:
        counts[k] += 1
    for key, group in sorted(strata.items()):
        group = group[:]
        rng.shuffle(group)
        val.extend(group[: counts[key]])
        train.extend(group[counts[key]:])
    if not train:
        raise DataError(f"the split left no training examples — lower the validation fraction ({val_fraction})")
    by_line = lambda e: e.line  # noqa: E731 - keep the file's order inside each split
    return sorted(train, key=by_line), sorted(val, key=by_line)


def shared_transcripts(first: list[Example], second: list[Example]) -> list[tuple[int, int]]:
    """(line in `second`, line in `first`) of each transcript that both hold (as `transcript_key` compares them)."""
    lines = {transcript_key(e.transcript): e.line for e in first}
    return [(e.line, lines[key]) for e in second if (key := transcript_key(e.transcript)) in lines]


def split_three_ways(
    examples: list[Example], rubric: Rubric, val_fraction: float, test_fraction: float, seed: int
) -> tuple[list[Example], list[Example], list[Example]]:
    """Train / validation / test, each share of the whole, stratified as `split_examples`: the test set is set
    aside first, so that figures reported on it come from examples that neither trained the model nor chose its
    checkpoint."""
    for name, fraction in (("validation", val_fraction), ("test", test_fraction)):
        if not 0 < fraction < 1:
            raise DataError(f"{name} fraction {fraction} must be between 0 and 1 (e.g. 0.2)")
    if val_fraction + test_fraction >= 1:
        raise DataError(f"validation ({val_fraction}) and test ({test_fraction}) fractions leave nothing to train "
                        "on — keep their sum below 1")
    if len(examples) < 3:
        raise DataError(f"{len(examples)} example(s) cannot be split three ways — need at least 3")
    rest, test = split_examples(examples, rubric, test_fraction, seed)
    train, val = split_examples(rest, rubric, min(val_fraction * len(examples) / len(rest), 0.99), seed)
    return train, val, test


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    """Write records atomically, readable by their owner only: they hold transcripts."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return atomic_write_text(Path(path), text, private=True)


def write_csv(path: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    """Write records as CSV (tab-separated for .tsv), one column per field in the order first seen, lists as JSON
    arrays (`list_cell`): read back by `load_dataset`, every record gives the same example. Atomic, owner-only."""
    path = Path(path)
    records = list(records)
    columns = list(dict.fromkeys(name for record in records for name in record))
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=columns, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    writer.writeheader()
    for record in records:
        writer.writerow({k: list_cell(v) if isinstance(v, list) else v for k, v in record.items()})
    return atomic_write_text(path, buffer.getvalue(), private=True)


def write_records(path: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    """Write records in the format the file's suffix names (.jsonl or .csv); any other suffix is refused."""
    path = Path(path)
    return (write_jsonl if detect_format(path) == "jsonl" else write_csv)(path, records)
