"""The review queue of `hcp serve --queue-from RESULTS --queue-input INPUT`: which rated transcript a reviewer
should look at next.

A results file of `hcp batch` (or one downloaded from /batch/NAME/results.jsonl) holds ratings, never the
transcripts they rate: the queue takes the input that batch rated too (the same JSONL, CSV or folder of .txt
files), matches each rating to its transcript by id, and refuses a pair where a rating's transcript digest
(`transcript_sha256`) is not that of the input's transcript — the rating would be shown beside another text.

Order: the ratings the model flagged `needs_review` first, then the rest; within each, the lowest confidence
(of the rating's least confident dimension) first; a rating without confidence (a backend that gives no score
distribution) after those with it, in input order. Each pick is, with probability `random_share`, a transcript
drawn uniformly from those this reviewer has not reviewed instead: reviews of uncertain ratings alone would make
the model look worse than it is, while the random picks estimate its agreement with reviewers without bias (the
audit log records each review's pick). A reviewer never gets a transcript they reviewed already.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hcp.batch.inputs import content_id, read_inputs, transcript_digest
from hcp.batch.results import OK, read_results
from hcp.errors import DataError
from hcp.rubric import Rubric
from hcp.serve.settings import ServeError

RANDOM, PRIORITY = "random", "priority"  # how a transcript was picked


@dataclass(frozen=True)
class QueueItem:
    id: str  # the batch's id
    key: str  # the content id the reviews file keys the transcript by
    transcript: str
    record: dict[str, Any]  # the results record

    @property
    def confidence(self) -> float | None:
        values = [v for v in (self.record.get("confidence") or {}).values() if isinstance(v, (int, float))]
        return min(values) if values else None

    def rank(self, position: int) -> tuple[int, int, float, int]:
        confidence = self.confidence
        return (0 if self.record.get("needs_review") else 1, 1 if confidence is None else 0,
                confidence if confidence is not None else 0.0, position)


class ReviewQueue:
    def __init__(self, results: Path, inputs: Path, rubric: Rubric, random_share: float = 0.2,
                 seed: int | None = None) -> None:
        if not 0 <= random_share <= 1:
            raise ServeError(f"--random-share {random_share}: give a share from 0 to 1 (e.g. 0.2)")
        self.results, self.inputs, self.random_share = results, inputs, random_share
        self.items = load_items(results, inputs, rubric)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def next(self, reviewed: set[str]) -> tuple[QueueItem | None, str | None]:
        """The next transcript for a reviewer who has reviewed the content ids `reviewed`, and how it was picked
        (None, None when they have reviewed every one)."""
        left = [item for item in self.items if item.key not in reviewed]
        if not left:
            return None, None
        with self._lock:
            if self._rng.random() < self.random_share:
                return self._rng.choice(left), RANDOM
        return left[0], PRIORITY

    def progress(self, reviewed: set[str]) -> dict[str, int]:
        done = sum(item.key in reviewed for item in self.items)
        return {"reviewed": done, "total": len(self.items), "left": len(self.items) - done}


def load_items(results: Path, inputs: Path, rubric: Rubric) -> list[QueueItem]:
    """The successful ratings of `results`, each with its transcript from `inputs`, in the queue's order."""
    try:
        records = read_results(results)
    except DataError as exc:
        raise ServeError(f"--queue-from {exc}") from None
    try:
        given = {item.id: item for item in read_inputs(inputs).items}
    except DataError as exc:
        raise ServeError(f"--queue-input {exc}") from None
    rated = [r for r in records.values() if r.get("status") == OK]
    if not rated:
        raise ServeError(f"--queue-from {results}: no successful rating in it — rate the input with 'hcp batch' "
                         "first (failed ratings have nothing to review)")
    other_rubric = [r["id"] for r in rated if r.get("rubric") not in (None, rubric.digest)]
    if other_rubric:
        raise ServeError(f"--queue-from {results}: {len(other_rubric)} rating(s) were made under another rubric "
                         f"(first id {other_rubric[0]!r}) — rate the input again under this config's rubric")
    missing = [r["id"] for r in rated if r["id"] not in given or given[r["id"]].transcript is None]
    changed = [r["id"] for r in rated if r["id"] not in missing and r.get("transcript_sha256") is not None
               and r["transcript_sha256"] != transcript_digest(given[r["id"]].transcript)]
    if changed:
        raise ServeError(f"--queue-input {inputs}: {len(changed)} transcript(s) differ from the ones rated in "
                         f"{results} (first id {changed[0]!r}) — give the input that batch rated")
    if len(missing) == len(rated):
        raise ServeError(f"--queue-input {inputs}: none of the {len(rated)} rated ids of {results} is in it — give "
                         "the input that batch rated (results hold ratings, never the transcripts)")
    if missing:
        raise ServeError(f"--queue-input {inputs}: {len(missing)} of the {len(rated)} rated ids of {results} are "
                         f"not in it (first {missing[0]!r}) — give the input that batch rated")
    items = [QueueItem(r["id"], content_id(given[r["id"]].transcript or ""), given[r["id"]].transcript or "", r)
             for r in rated]
    order = sorted(range(len(items)), key=lambda i: items[i].rank(i))
    return [items[i] for i in order]


def score_result(item: QueueItem) -> dict[str, Any]:
    """A results record in the shape /score answers (what the page shows and a review sends back as its
    `original`)."""
    record = item.record
    keep = ("rating", "overall", "model", "backend", "prompt_tokens", "output_tokens", "seconds", "attempts",
            "evidence", "needs_review", "review_reasons", "distribution", "expected", "confidence",
            "overall_expected", "overall_interval", "model_version", "model_note")
    return {key: record[key] for key in keep if key in record}
