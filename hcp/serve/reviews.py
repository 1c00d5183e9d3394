"""The review loop: reviewers' corrected ratings become training examples, and the model's original rating is
kept beside them, so that agreement with reviewers can be measured the way `hcp evaluate` measures it.

Every review is by a named reviewer (the token's, or the name the page asked for; 'unnamed' for an API client
that gives none). The files, all the owner's alone (they hold transcripts and model answers), rewritten
atomically on each save — for a reviews file `reviews.jsonl`:

- `reviews.reviewers/NAME.jsonl`: each reviewer's reviews, the training guide's JSONL format, one record per
  transcript keyed by its content id (`id`); saving the same transcript again replaces that reviewer's record
  and no one else's. The folder is what `hcp data agreement` and `hcp data consensus` read (one file per
  annotator, named by its stem).
- `reviews.adjudicated.jsonl`: the adjudicated rating of each transcript the reviewers disputed (2 points or
  more apart on a dimension), the same format.
- `reviews.jsonl`, what `hcp train --data reviews.jsonl` trains on: one record per transcript — its adjudicated
  rating where there is one, else the reviewers' consensus (`hcp.raters.consensus`: each score the median, the
  text of the reviewer closest to it) where two or more reviewed it, else its one review. A transcript in
  dispute and not yet adjudicated is left out until it is. Rebuilt from the files above on every save, and
  checked with `hcp data validate`'s own checks.
- `reviews.model.jsonl`: the model's original rating of each reviewed transcript, as a results file of `hcp
  batch` (same ids), so `hcp evaluate --data reviews.jsonl --predictions reviews.model.jsonl` gives the
  numbers the page shows (and `--data reviews.reviewers/NAME.jsonl`, each reviewer's).
- `reviews.audit.jsonl`: one line per save, appended: time, reviewer, action, transcript id, model version —
  never transcript text nor a score's words.

A reviews file written before reviewers were named becomes the reviews of 'unnamed' the first time it is opened.
One server holds the files at a time (a lock file beside them); within it, saves go one after another.
"""

from __future__ import annotations

import fcntl
import json
import threading
import time
from pathlib import Path
from typing import Any

from hcp.batch.inputs import content_id
from hcp.batch.results import OK, read_results
from hcp.data.dataset import Example, Problem, check_rows, read_rows
from hcp.errors import DataError
from hcp.evidence import PROBLEMS, check_evidence
from hcp.files import atomic_write_text, open_for_append
from hcp.raters.agreement import DISPUTED, adjudication, measure, spread
from hcp.raters.annotations import Annotations, Transcript
from hcp.raters.consensus import closest_first, consensus_records, median_score
from hcp.rubric import Rubric, normalize_transcript
from hcp.serve.settings import ServeError, make_private_folder

SHOWN_PROBLEMS = 3
UNNAMED = "unnamed"  # the reviewer of a review whose client named none, and of reviews from before names
AGREEMENT_RESAMPLES = 200  # bootstrap resamples of the reviewers' agreement shown on the page
# Kept from the model's original rating beside a review, as a batch results record keeps them (batch.run.review_fields)
CONFIDENCE_FIELDS = ("needs_review", "review_reasons", "distribution", "expected", "confidence", "overall_expected",
                     "overall_interval")
# What a transcript's record in the training file is.
REVIEW, CONSENSUS, ADJUDICATED, DISPUTED_OUT, UNSUPPORTED = ("review", "consensus", "adjudicated", "disputed",
                                                             "unsupported")


class ReviewError(DataError):
    """A review that the training data checks refuse (the message names the field)."""


class UnknownReviewError(DataError):
    """A transcript id no reviewer has reviewed."""


def model_ratings_path(reviews: Path) -> Path:
    return reviews.with_name(f"{_stem(reviews)}.model.jsonl")


def reviewers_folder(reviews: Path) -> Path:
    return reviews.with_name(f"{_stem(reviews)}.reviewers")


def adjudicated_path(reviews: Path) -> Path:
    return reviews.with_name(f"{_stem(reviews)}.adjudicated.jsonl")


def audit_path(reviews: Path) -> Path:
    return reviews.with_name(f"{_stem(reviews)}.audit.jsonl")


def _stem(path: Path) -> str:
    return path.name.rsplit(".", 1)[0]


class AuditLog:
    """Append-only, owner-only: one JSON line per action, never transcript text."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file, _ = open_for_append(path, private=True)

    def append(self, reviewer: str, action: str, ident: str, model_version: str | None, **extra: Any) -> None:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "reviewer": reviewer,
                 "action": action, "id": ident, "model_version": model_version, **extra}
        self._file.write((json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8"))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class Reviews:
    def __init__(self, path: Path, rubric: Rubric) -> None:
        if path.suffix.lower() != ".jsonl":
            raise ServeError(f"--reviews {path}: name the file .jsonl — reviews are written in the training "
                             "guide's JSONL format")
        if path.is_dir():
            raise ServeError(f"--reviews {path}: is a folder — give a .jsonl file to keep the reviews in")
        self.path = path
        self.model_path = model_ratings_path(path)
        self.folder = reviewers_folder(path)
        self.adjudicated_path = adjudicated_path(path)
        self.rubric = rubric
        # Annotators' files are read without their quotes checked (hcp.raters.annotations does the same).
        self._reading = Rubric(rubric.scoring.model_copy(update={"evidence": False}))
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
        try:
            self._adopt_unnamed()
            self.audit = AuditLog(audit_path(path))
        except (DataError, OSError) as exc:
            self._lock_file.close()
            raise ServeError(f"--reviews {path}: {exc}") from None

    def _adopt_unnamed(self) -> None:
        """A reviews file from before reviewers were named: its records become the reviews of 'unnamed'."""
        if self.folder.exists() or not self.path.exists():
            make_private_folder(self.folder, "--reviews")
            return
        records = _read_records(self.path)
        make_private_folder(self.folder, "--reviews")
        if records:
            atomic_write_text(self.folder / f"{UNNAMED}.jsonl", _jsonl(records.values()), private=True)

    def close(self) -> None:
        self.audit.close()
        self._lock_file.close()  # releases the lock

    @property
    def command(self) -> str:
        """The command that computes the agreement the page shows."""
        return f"hcp evaluate --data {self.path} --predictions {self.model_path}"

    def reviewer_path(self, reviewer: str) -> Path:
        return self.folder / f"{reviewer}.jsonl"

    # --- saving -------------------------------------------------------------------------------------------

    def save(self, transcript: str, review: dict[str, Any], original: dict[str, Any], reviewer: str = UNNAMED,
             pick: str | None = None) -> dict[str, Any]:
        """Save `reviewer`'s reviewed rating (`review`: the Rating's fields) and the model's `original` result (a
        ScoreResult's JSON); returns the record's id, whether it replaced this reviewer's earlier review, what
        the training file holds for the transcript now, and its count."""
        text = normalize_transcript(transcript)
        if not text:
            raise ReviewError("transcript: is empty — save a review of the transcript that was rated")
        ident = content_id(text)
        example, refused = self._example(text, ident, review)
        record = example.to_record()
        rating = {key: original["rating"][key] for key in self.rubric.json_schema["properties"]}
        model_record = {"id": ident, "status": OK, "rating": rating, "overall": self.rubric.overall(rating),
                        "backend": original["backend"], "model": original["model"], "rubric": self.rubric.digest}
        if original.get("model_version"):
            model_record["model_version"] = original["model_version"]
        if original.get("distribution"):  # what a threshold is calibrated on: as a batch results record keeps it
            model_record.update({key: original.get(key) for key in CONFIDENCE_FIELDS})
        path = self.reviewer_path(reviewer)
        with self._lock:
            mine = _read_records(path)
            replaced = ident in mine
            mine[ident] = record
            self._check(path, mine, ident, refused)
            models = read_results(self.model_path) if self.model_path.exists() else {}
            models[ident] = model_record
            # The model's ratings first: a crash between the writes leaves a rating without its review, which
            # evaluation ignores, never a review without the rating it corrects.
            atomic_write_text(self.model_path, _jsonl(models.values()), private=True)
            atomic_write_text(path, _jsonl(mine.values()), private=True)
            kinds = self._rebuild()
            self.audit.append(reviewer, "replace_review" if replaced else "review", ident, _version(model_record),
                              **({"pick": pick} if pick else {}))
        return {"id": ident, "reviewer": reviewer, "replaced": replaced, "training": kinds.get(ident),
                "reviews": sum(k in (REVIEW, CONSENSUS, ADJUDICATED) for k in kinds.values()),
                "file": str(self.path)}

    def adjudicate(self, ident: str, review: dict[str, Any], reviewer: str) -> dict[str, Any]:
        """Save the adjudicated rating of a transcript the reviewers reviewed: it becomes the transcript's record
        in the training file (its consensus record), whatever the reviewers' own ratings say."""
        with self._lock:
            reviews = self._all_reviews()
            found = [r for by in reviews.values() for i, r in by.items() if i == ident]
            if not found:
                raise UnknownReviewError(f"no review of a transcript with id {ident!r} — adjudicate a transcript the "
                                         "reviewers have reviewed")
            example, refused = self._example(found[0]["transcript"], ident, review)
            adjudicated = _read_records(self.adjudicated_path)
            replaced = ident in adjudicated
            adjudicated[ident] = example.to_record()
            self._check(self.adjudicated_path, adjudicated, ident, refused)
            atomic_write_text(self.adjudicated_path, _jsonl(adjudicated.values()), private=True)
            kinds = self._rebuild()
            models = read_results(self.model_path) if self.model_path.exists() else {}
            self.audit.append(reviewer, "adjudicate", ident, _version(models.get(ident)))
        return {"id": ident, "reviewer": reviewer, "replaced": replaced, "training": kinds.get(ident),
                "file": str(self.path)}

    def _example(self, text: str, ident: str, review: dict[str, Any]) -> tuple[Example, list[str]]:
        """The training example of a review (its verified quotes only), and the quotes it refuses."""
        evidence, refused = self._evidence(text, review)
        return Example(text, 0, ident, scores={n: review[n] for n in self.rubric.names},
                       reasoning=review["reasoning"], strengths=list(review["strengths"]),
                       areas_for_improvement=list(review["areas_for_improvement"]), evidence=evidence), refused

    def _check(self, path: Path, records: dict[str, dict[str, Any]], ident: str, refused: list[str]) -> None:
        """Refuse the record `ident` of `records` unless the file they make is valid training data."""
        checked = check_rows(path, enumerate(records.values(), start=1), self.rubric)
        unquoted = self._unquoted(refused)
        if unquoted:  # said in a sentence of its own, unless the record has other problems to fix first
            line = list(records).index(ident) + 1
            evidence_keys = set(self.rubric.evidence_keys.values())
            if not [p for p in checked.problems if p.line == line and p.field not in evidence_keys]:
                raise ReviewError(unquoted)
        if not checked.ok:
            raise ReviewError(_problems(checked.problems, ident, list(records)))

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

    # --- the training file: one record per transcript -------------------------------------------------------

    def _all_reviews(self) -> dict[str, dict[str, dict[str, Any]]]:
        """reviewer -> {id: record}, reviewers by name."""
        files = sorted(self.folder.glob("*.jsonl")) if self.folder.is_dir() else []
        return {path.name.rsplit(".", 1)[0]: _read_records(path) for path in files}

    def _annotations(self, reviews: dict[str, dict[str, dict[str, Any]]]) -> Annotations | None:
        """The transcripts two or more reviewers reviewed, as `hcp.raters` reads annotators' files."""
        transcripts: dict[str, Transcript] = {}
        for name, records in reviews.items():
            path = self.reviewer_path(name)
            dataset = check_rows(path, enumerate(records.values(), start=1), self._reading)
            for example in dataset.examples:
                key = example.id or content_id(example.transcript)
                transcripts.setdefault(key, Transcript(key, True)).ratings[name] = example
                transcripts[key].where[name] = f"{path}:{example.line}"
        shared = [t for t in transcripts.values() if len(t.ratings) >= 2]
        if not shared:
            return None
        counts = {name: len(records) for name, records in reviews.items()}
        return Annotations([self.reviewer_path(n) for n in reviews], list(reviews), shared,
                           len(transcripts) - len(shared), counts)

    def _rebuild(self) -> dict[str, str]:
        """Write the training file from the reviewers' files and the adjudicated ratings (see the module's
        docstring); returns what each transcript's record is (or why it has none)."""
        reviews = self._all_reviews()
        adjudicated = _read_records(self.adjudicated_path)
        annotations = self._annotations(reviews)
        agreed: dict[str, dict[str, Any]] = {}
        disputed: set[str] = set()
        if annotations is not None:
            records, _ = consensus_records(annotations, self.rubric, keep_disputed=False)
            agreed = {r["id"]: r for r in records}
            disputed = {item["transcript"] for item in adjudication(annotations, self.rubric)}
        order: list[str] = []
        whose: dict[str, list[str]] = {}
        for name, records in reviews.items():
            for ident in records:
                if ident not in whose:
                    order.append(ident)
                whose.setdefault(ident, []).append(name)
        out: dict[str, dict[str, Any]] = {}
        kinds: dict[str, str] = {}
        for ident in order:
            if ident in adjudicated:
                out[ident], kinds[ident] = adjudicated[ident], ADJUDICATED
            elif len(whose[ident]) == 1:
                out[ident], kinds[ident] = reviews[whose[ident][0]][ident], REVIEW
            elif ident in agreed:
                out[ident], kinds[ident] = agreed[ident], CONSENSUS
            else:
                kinds[ident] = DISPUTED_OUT if ident in disputed else UNSUPPORTED
        checked = check_rows(self.path, enumerate(out.values(), start=1), self.rubric)
        if not checked.ok:  # each record passed these checks in its own file: a bug if they fail here
            raise RuntimeError(f"the training file's records fail the data checks: {checked.problems[0]}")
        atomic_write_text(self.path, _jsonl(out.values()), private=True)
        return kinds

    # --- reading ------------------------------------------------------------------------------------------

    def count(self) -> int:
        with self._lock:
            return len(_read_records(self.path))

    def reviewed_by(self, reviewer: str) -> set[str]:
        """The ids `reviewer` has reviewed."""
        with self._lock:
            return set(_read_records(self.reviewer_path(reviewer)))

    def disputed(self) -> list[dict[str, Any]]:
        """The transcripts reviewers dispute (`hcp data agreement`'s adjudication list), each marked whether it
        has been adjudicated."""
        with self._lock:
            annotations = self._annotations(self._all_reviews())
            done = _read_records(self.adjudicated_path)
        if annotations is None:
            return []
        return [{**item, "id": item["transcript"], "adjudicated": item["transcript"] in done}
                for item in adjudication(annotations, self.rubric)]

    def side_by_side(self, ident: str) -> dict[str, Any]:
        """A transcript and every reviewer's rating of it, the model's, the consensus the median gives and the
        adjudicated rating if there is one: what the adjudication view shows."""
        with self._lock:
            reviews = {name: records[ident] for name, records in self._all_reviews().items() if ident in records}
            models = read_results(self.model_path) if self.model_path.exists() else {}
            adjudicated = _read_records(self.adjudicated_path).get(ident)
        if not reviews:
            raise UnknownReviewError(f"no review of a transcript with id {ident!r} — adjudicate a transcript the "
                                     "reviewers have reviewed")
        first = next(iter(reviews.values()))
        scores = {n: median_score([r[n] for r in reviews.values()]) for n in self.rubric.names}
        examples = {name: check_rows(self.reviewer_path(name), [(1, record)], self._reading).examples[0]
                    for name, record in reviews.items()}
        transcript = Transcript(ident, True, examples)
        closest = closest_first(transcript, scores, self.rubric)[0]
        model = models.get(ident)
        return {"id": ident, "transcript": first["transcript"], "reviews": reviews,
                "model": None if model is None else {"rating": model["rating"], "model": model.get("model"),
                                                     "model_version": model.get("model_version")},
                "proposal": {**reviews[closest], **scores, "from": closest}, "adjudicated": adjudicated,
                "disputed": [n for n in self.rubric.names if spread([r[n] for r in reviews.values()]) >= DISPUTED]}

    def agreement(self) -> dict[str, Any]:
        """`hcp evaluate`'s metrics of the model's original ratings against the training file (each transcript's
        consensus) and against each reviewer; and the reviewers' agreement with each other (`hcp data
        agreement`'s measures) where two or more reviewed the same transcripts."""
        from hcp.evaluate.metrics import rater_metrics
        from hcp.evaluate.run import read_labels, read_rater

        def against(labels: Path) -> dict[str, Any] | None:
            if not labels.exists() or not _read_records(labels):
                return None
            _, human = read_labels(labels, self.rubric)
            result = rater_metrics(read_rater("model", [self.model_path], self.rubric), human, self.rubric)
            return {"n": result["n"], "metrics": result["metrics"],
                    "command": f"hcp evaluate --data {labels} --predictions {self.model_path}"}

        with self._lock:
            if not self.model_path.exists():
                return {"n": 0, "metrics": None, "command": self.command, "reviewers": {}, "between": None,
                        "versions": []}
            consensus = against(self.path)
            versions = self._by_version(read_labels(self.path, self.rubric)[1]) if consensus else []
            reviews = self._all_reviews()
            reviewers = {name: against(self.reviewer_path(name)) for name in reviews}
            annotations = self._annotations(reviews)
        between = None
        if annotations is not None:
            measured = measure(annotations, self.rubric, AGREEMENT_RESAMPLES)
            files = " ".join(str(self.reviewer_path(n)) for n in reviews)
            between = {"transcripts": measured["transcripts"], "annotators": measured["annotators"],
                       "dimensions": measured["dimensions"], "pairs": measured["pairs"],
                       "command": f"hcp data agreement {files}"}
        return {"n": consensus["n"] if consensus else 0, "metrics": consensus["metrics"] if consensus else None,
                "command": self.command, "reviewers": {n: r for n, r in reviewers.items() if r},
                "between": between, "versions": versions}

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


def _version(model_record: dict[str, Any] | None) -> str | None:
    """The model version of a rating: its `model_version` where the server records one, else its model."""
    if model_record is None:
        return None
    return model_record.get("model_version") or model_record.get("model")


def _read_records(path: Path) -> dict[str, dict[str, Any]]:
    """A training-format file's records, by id, in file order ({} when it does not exist)."""
    if not path.exists():
        return {}
    records: dict[str, dict[str, Any]] = {}
    for line, row in read_rows(path):
        if isinstance(row, Problem):
            raise DataError(f"{row} — fix or remove that line of the reviews file, then save again")
        transcript = row.get("transcript")
        ident = row.get("id") or (content_id(transcript) if isinstance(transcript, str) else f"line-{line}")
        records[str(ident)] = row
    return records


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
