"""The review loop: a reviewer's corrected rating becomes a training example, and the model's original rating
is kept beside it, so that agreement with reviewers can be measured the way `hcp evaluate` measures it.

Two files, both the owner's alone (they hold transcripts and model answers), rewritten atomically on each save:

- the reviews file (`--reviews`, e.g. reviews.jsonl): the training guide's JSONL format, one record per
  transcript keyed by its content id (`id`), checked with `hcp data validate`'s own checks before it is written;
  saving the same transcript again replaces its record. `hcp train --data reviews.jsonl` trains on it.
- beside it, `<stem>.model.jsonl`: the model's original rating of each reviewed transcript, as a results file
  of `hcp batch` (same ids), so `hcp evaluate --data reviews.jsonl --predictions reviews.model.jsonl` gives the
  numbers the page shows.

One server holds the files at a time (a lock file beside them); within it, saves go one after another.
"""

from __future__ import annotations

import fcntl
import json
import threading
from pathlib import Path
from typing import Any

from hcp.batch.inputs import content_id
from hcp.batch.results import OK, read_results
from hcp.data.dataset import Example, Problem, check_rows, read_rows
from hcp.errors import DataError
from hcp.evidence import PROBLEMS, check_evidence
from hcp.files import atomic_write_text
from hcp.rubric import Rubric, normalize_transcript
from hcp.serve.settings import ServeError, make_private_folder

SHOWN_PROBLEMS = 3


class ReviewError(DataError):
    """A review that the training data checks refuse (the message names the field)."""


def model_ratings_path(reviews: Path) -> Path:
    return reviews.with_name(f"{reviews.name.rsplit('.', 1)[0]}.model.jsonl")


class Reviews:
    def __init__(self, path: Path, rubric: Rubric) -> None:
        if path.suffix.lower() != ".jsonl":
            raise ServeError(f"--reviews {path}: name the file .jsonl — reviews are written in the training "
                             "guide's JSONL format")
        if path.is_dir():
            raise ServeError(f"--reviews {path}: is a folder — give a .jsonl file to keep the reviews in")
        self.path = path
        self.model_path = model_ratings_path(path)
        self.rubric = rubric
        self._lock = threading.Lock()
        make_private_folder(path.parent, "--reviews")
        try:
            self._lock_file = (path.parent / f".{path.name}.lock").open("a")
        except OSError as exc:
            raise ServeError(f"--reviews {path}: cannot write in its folder ({exc.strerror}) — choose a location you "
                             "can write to") from None
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise ServeError(f"--reviews {path}: another hcp serve is using this file — stop it, or give "
                             "another file") from None

    def close(self) -> None:
        self._lock_file.close()  # releases the lock

    @property
    def command(self) -> str:
        """The command that computes the agreement the page shows."""
        return f"hcp evaluate --data {self.path} --predictions {self.model_path}"

    def save(self, transcript: str, review: dict[str, Any], original: dict[str, Any]) -> dict[str, Any]:
        """Save a reviewed rating (`review`: the Rating's fields) and the model's `original` result (a
        ScoreResult's JSON); returns the record's id, whether it replaced an earlier review, and the count."""
        text = normalize_transcript(transcript)
        if not text:
            raise ReviewError("transcript: is empty — save a review of the transcript that was rated")
        ident = content_id(text)
        evidence, refused = self._evidence(text, review)
        example = Example(text, 0, ident, scores={n: review[n] for n in self.rubric.names},
                          reasoning=review["reasoning"], strengths=list(review["strengths"]),
                          areas_for_improvement=list(review["areas_for_improvement"]),
                          evidence=evidence)
        rating = {key: original["rating"][key] for key in self.rubric.json_schema["properties"]}
        model_record = {"id": ident, "status": OK, "rating": rating, "overall": self.rubric.overall(rating),
                        "backend": original["backend"], "model": original["model"], "rubric": self.rubric.digest,
                        **({"model_version": original["model_version"]} if original.get("model_version") else {})}
        with self._lock:
            records = self._read()
            replaced = ident in records
            records[ident] = example.to_record()
            checked = check_rows(self.path, enumerate(records.values(), start=1), self.rubric)
            unquoted = self._unquoted(refused)
            if unquoted:  # said in a sentence of its own, unless the record has other problems to fix first
                line = list(records).index(ident) + 1
                evidence_keys = set(self.rubric.evidence_keys.values())
                if not [p for p in checked.problems if p.line == line and p.field not in evidence_keys]:
                    raise ReviewError(unquoted)
            if not checked.ok:
                raise ReviewError(_problems(checked.problems, ident, list(records)))
            models = read_results(self.model_path) if self.model_path.exists() else {}
            models[ident] = model_record
            # The model's ratings first: a crash between the two writes leaves a rating without its review,
            # which evaluation ignores, never a review without the rating it corrects.
            atomic_write_text(self.model_path, _jsonl(models.values()), private=True)
            atomic_write_text(self.path, _jsonl(records.values()), private=True)
        return {"id": ident, "replaced": replaced, "reviews": len(records), "file": str(self.path)}

    def _evidence(self, text: str, review: dict[str, Any]) -> tuple[dict[str, list[str]], list[str]]:
        """Each dimension's quotes for the training example, when the rubric asks for evidence, and the review's
        quotes that are not in the transcript, each named by its key, number and problem (never its words)."""
        quotes: dict[str, list[str]] = {}
        refused = []
        for dim, key in self.rubric.evidence_keys.items():
            given = review.get(key) or []
            checks = check_evidence({key: given}, text, (dim,))[dim]
            quotes[dim] = [item for item, check in zip(given, checks, strict=True) if check.verified]
            refused += [f"{key} quote {number} of {len(checks)}: {PROBLEMS.get(check.problem or '', 'not checked')}"
                        for number, check in enumerate(checks, start=1) if not check.verified]
        return {dim: items for dim, items in quotes.items() if items}, refused

    @staticmethod
    def _unquoted(refused: list[str]) -> str | None:
        """The refusal of a review with a quote that is not the transcript's words. The whole review is refused,
        rather than saved without that quote: a training example holds what the reviewer sent, or nothing, and
        the reviewer (who may have mistyped a line) is told which quote to correct or remove."""
        if not refused:
            return None
        return (f"every quote must be the transcript's own words: {'; '.join(refused)} — copy the line(s) the score "
                "rests on from the transcript, as 'Speaker: words', or remove the quote")

    def _read(self) -> dict[str, dict[str, Any]]:
        """The reviews saved so far, by id, in file order."""
        if not self.path.exists():
            return {}
        records: dict[str, dict[str, Any]] = {}
        for line, row in read_rows(self.path):
            if isinstance(row, Problem):
                raise DataError(f"{row} — fix or remove that line of the reviews file, then save again")
            transcript = row.get("transcript")
            ident = row.get("id") or (content_id(transcript) if isinstance(transcript, str) else f"line-{line}")
            records[str(ident)] = row
        return records

    def count(self) -> int:
        with self._lock:
            return len(self._read())

    def agreement(self) -> dict[str, Any]:
        """`hcp evaluate`'s metrics of the model's original ratings against the reviewers' (per dimension and
        overall), read from the two files as `hcp evaluate --predictions` reads them."""
        from hcp.evaluate.metrics import rater_metrics
        from hcp.evaluate.run import read_labels, read_rater

        with self._lock:
            if not self.path.exists() or not self.model_path.exists() or not self._read():
                return {"n": 0, "metrics": None, "command": self.command}
            _, human = read_labels(self.path, self.rubric)
            rater = read_rater("model", [self.model_path], self.rubric)
            result = rater_metrics(rater, human, self.rubric)
            versions = self._by_version(human)
        return {"n": result["n"], "metrics": result["metrics"], "command": self.command, "versions": versions}

    def _by_version(self, human: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
        """The reviewers' agreement with each model version's original ratings (by the `model_version` each
        carries; 'unknown' for ratings saved without one), with 95% bootstrap intervals."""
        from hcp.evaluate.metrics import OVERALL
        from hcp.serve.compare import paired_agreement

        by_version: dict[str, list[tuple[dict[str, float], dict[str, float]]]] = {}
        for ident, record in read_results(self.model_path).items():
            if ident in human and record.get("status") == OK:
                model = {**record["rating"], OVERALL: record["overall"]}
                by_version.setdefault(record.get("model_version") or "unknown", []).append((human[ident], model))
        names = [*self.rubric.names, OVERALL]
        return [{"version": version, "n": len(pairs),
                 "metrics": paired_agreement([h for h, _ in pairs], [m for _, m in pairs], names, self.rubric.scores)}
                for version, pairs in sorted(by_version.items())]


def _jsonl(records: Any) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def _problems(problems: list[Problem], ident: str, order: list[str]) -> str:
    """The training data checks' objections, the new review's first (they never quote the transcript)."""
    line = order.index(ident) + 1
    mine = [p for p in problems if p.line == line]
    others = [p for p in problems if p.line != line]
    shown = [f"{p.field}: {p.message}" if p.field else p.message for p in mine[:SHOWN_PROBLEMS]]
    if others:
        shown.append(f"and {len(others)} problem(s) in other records of the file, first {others[0]} — fix "
                     "those lines of the file")
    return "the review cannot be saved as training data: " + "; ".join(shown)
