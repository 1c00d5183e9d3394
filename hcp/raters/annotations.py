"""Several annotators' ratings of the same transcripts, read and matched.

Each annotator's records are in the training format (JSONL or CSV, read and checked by `hcp.data`): one file per
annotator, named by the file's stem (`alice.jsonl` is alice), or one file whose records name their `annotator`.
Quotes are not checked on reading — agreement needs the scores only, and consensus keeps only the quotes that
verify — so annotators' files need no evidence fields whatever `scoring.evidence` says.

Records are matched by `id`; a record without one by its transcript: it takes the id another annotator gave the
same transcript, else the id `hcp batch` gives a transcript without one (the first 12 hex digits of the SHA-256 of
its words), so the adjudication list names it as the results of `hcp batch` do. An id must name one transcript in
every file, and a transcript one id. Every problem names the file, the line and the field, never the transcript.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hcp.batch.inputs import content_id
from hcp.data.dataset import Dataset, Example, Problem, check_rows, detect_format, read_rows, require_valid
from hcp.errors import DataError
from hcp.rubric import Rubric

ANNOTATOR_FIELD = "annotator"


@dataclass
class Transcript:
    """One transcript and each annotator's rating of it, in the order the annotators were given."""

    key: str  # its id, or for a transcript that no annotator gave an id, the id `hcp batch` gives it
    has_id: bool
    ratings: dict[str, Example] = field(default_factory=dict)  # annotator -> the record as the data stage read it
    where: dict[str, str] = field(default_factory=dict)  # annotator -> 'alice.jsonl:7'

    @property
    def label(self) -> str:
        """How lists and reports name it: the id, or 'sha256:<12 hex digits>' — never its text."""
        return self.key if self.has_id else f"sha256:{self.key}"


@dataclass
class Annotations:
    files: list[Path]
    annotators: list[str]  # in the order given
    transcripts: list[Transcript]  # rated by two or more annotators, in order of first appearance
    single: int  # transcripts rated by one annotator only: counted, left out of agreement and consensus
    counts: dict[str, int]  # annotator -> transcripts they rated


def read_annotations(paths: Sequence[Path], rubric: Rubric) -> Annotations:
    """Every annotator's checked records, matched transcript by transcript (see the module's docstring)."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise DataError("no files given — give one file per annotator, or one file whose records name their "
                        f"'{ANNOTATOR_FIELD}'")
    for path in paths:
        detect_format(path)  # an unknown suffix is refused before any file is read
    groups = _by_file(paths) if len(paths) > 1 else _by_field(paths[0])
    reading = Rubric(rubric.scoring.model_copy(update={"evidence": False}))
    ratings = {name: (path, _valid(check_rows(path, rows, reading, csv_format=detect_format(path) == "csv")))
               for name, (path, rows) in groups.items()}
    transcripts = _match(ratings)
    shared = [t for t in transcripts if len(t.ratings) >= 2]
    counts = {name: len(examples) for name, (_, examples) in ratings.items()}
    if not shared:
        rated = ", ".join(f"{name}: {n}" for name, n in counts.items())
        raise DataError(f"no transcript was rated by two or more annotators ({rated} transcripts) — agreement compares "
                        "annotators on the transcripts they share: match them by 'id', or rate the same transcripts")
    return Annotations(paths, list(ratings), shared, len(transcripts) - len(shared), counts)


Rows = list[tuple[int, dict[str, Any] | Problem]]


def _by_file(paths: list[Path]) -> dict[str, tuple[Path, Rows]]:
    """One annotator per file, named by its stem; a record that names an annotator is refused (it would not be
    the one the file name says, or it would say nothing)."""
    groups: dict[str, tuple[Path, Rows]] = {}
    for path in paths:
        name = path.name.rsplit(".", 1)[0]
        if name in groups:
            raise DataError(f"two files are named '{name}' ({groups[name][0]}, {path}) — each file is one annotator, "
                            "named by its file name: rename one, or give a file once")
        rows: Rows = []
        for line, row in read_rows(path):
            if isinstance(row, dict) and ANNOTATOR_FIELD in row:
                row = Problem(str(path), line, ANNOTATOR_FIELD, "with several files each file is one annotator, "
                              "named by its file name — remove the field, or give one file that holds every "
                              "annotator's records")
            rows.append((line, row))
        groups[name] = (path, rows)
    return groups


def _by_field(path: Path) -> dict[str, tuple[Path, Rows]]:
    """One file: each record's `annotator` names whose rating it is."""
    groups: dict[str, tuple[Path, Rows]] = {}
    problems: list[Problem] = []
    lines = 0
    for line, row in read_rows(path):
        lines += 1
        if isinstance(row, Problem):
            problems.append(row)
            continue
        name = row.get(ANNOTATOR_FIELD)
        if isinstance(name, (int, str)) and not isinstance(name, bool) and str(name).strip():
            rest = {k: v for k, v in row.items() if k != ANNOTATOR_FIELD}
            groups.setdefault(str(name).strip(), (path, []))[1].append((line, rest))
        elif name in (None, ""):
            problems.append(Problem(str(path), line, ANNOTATOR_FIELD, "missing — in a single file each record names "
                                    "its annotator (or give one file per annotator, named after them)"))
        else:
            problems.append(Problem(str(path), line, ANNOTATOR_FIELD, f"must be a name, got {type(name).__name__}"))
    if problems:
        _valid(Dataset(path, [], problems, [], lines))
    if len(groups) < 2:
        whose = f" ('{next(iter(groups))}')" if groups else ""
        raise DataError(f"{path}: every record is by one annotator{whose} — agreement needs two or more: give one "
                        f"file per annotator, or one file whose records name their '{ANNOTATOR_FIELD}'")
    return groups


def _valid(dataset: Dataset, shown: int = 5) -> list[Example]:
    """The examples, or a DataError listing the first problems (as `data.dataset.require_valid` does, without its
    advice to run 'hcp data validate': that checks quotes, which agreement does not need, and refuses the
    `annotator` field and the repeated transcripts of a file that holds every annotator's records)."""
    if not dataset.problems:
        return require_valid(dataset)  # an empty file is refused there
    listed = "; ".join(str(p) for p in dataset.problems[:shown])
    more = len(dataset.problems) - shown
    tail = f" (and {more} more)" if more > 0 else ""
    raise DataError(f"{len(dataset.problems)} problem(s) in the data: {listed}{tail}")


def _match(ratings: dict[str, tuple[Path, list[Example]]]) -> list[Transcript]:
    """The transcripts, each with every annotator's rating of it (see the module's docstring)."""
    by_id: dict[str, tuple[str, str]] = {}  # id -> (content key, where)
    by_content: dict[str, tuple[str, str]] = {}  # content key -> (id, where)
    for path, examples in ratings.values():
        for example in examples:
            if example.id is None:
                continue
            key, where = content_id(example.transcript), f"{path}:{example.line}"
            if example.id in by_id and by_id[example.id][0] != key:
                raise DataError(f"id {example.id!r} names another transcript in {where} than in "
                                f"{by_id[example.id][1]} — an id must name the same conversation in every file: fix "
                                "the id or the transcript")
            if key in by_content and by_content[key][0] != example.id:
                raise DataError(f"{by_content[key][1]} and {where} hold the same transcript under two ids "
                                f"({by_content[key][0]!r}, {example.id!r}) — give it one id in every file")
            by_id.setdefault(example.id, (key, where))
            by_content.setdefault(key, (example.id, where))
    transcripts: dict[str, Transcript] = {}
    for name, (path, examples) in ratings.items():
        for example in examples:
            key = content_id(example.transcript)
            ident = example.id or (by_content[key][0] if key in by_content else None)
            transcript = transcripts.setdefault(ident or key, Transcript(ident or key, ident is not None))
            transcript.ratings[name] = example
            transcript.where[name] = f"{path}:{example.line}"
    return list(transcripts.values())
