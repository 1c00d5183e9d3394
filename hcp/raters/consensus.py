"""Consensus labels: one training record per transcript from several annotators' ratings of it.

- Each dimension's score is the median of the annotators' scores. Of an even count whose two middle scores
  differ, the lower one (round half down): a tie never lifts a score — the cautious side for labels a model learns
  to give, and the same rule however the annotators' files are ordered. (An annotator closest to the consensus
  would be another rule, but "closest" itself needs the consensus first.)
- The overall score is not a field of the training format: it is computed from these scores by the rubric's
  weights wherever it is needed (`Rubric.overall`).
- Reasoning, strengths and areas for improvement come from the annotator closest to the consensus: the smallest
  sum of score differences, then the smallest overall difference, then the one given first.
- Each dimension's quotes: those of the closest annotator who gave that dimension the consensus score (the closest
  of all, if none did), kept only if they verify against the transcript (`hcp.evidence`) and fit the schema's
  bounds; when none of that annotator's do, the next such annotator's. Under `scoring.evidence` a transcript left
  with a dimension that no verified quote supports is left out, and counted.
- A transcript whose annotators are `DISPUTED` points apart or more on a dimension is left out, unless
  `keep_disputed`; one rated by a single annotator is left out.

The records are checked as `hcp data validate` checks a file (`data.dataset.check_rows`) before they are written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hcp.data.dataset import Example, check_rows, detect_format, write_records
from hcp.errors import DataError
from hcp.evidence import check_quote, evidence_key, turns
from hcp.raters.agreement import DISPUTED, spread
from hcp.raters.annotations import Annotations, Transcript, read_annotations
from hcp.rubric import Rubric

TIE_RULE = "of an even count whose two middle scores differ, the lower (round half down)"


@dataclass(frozen=True)
class ConsensusOptions:
    files: tuple[Path, ...]  # one per annotator, or one whose records name their annotator
    out: Path  # .jsonl or .csv, in the training format
    keep_disputed: bool = False  # write disputed transcripts too (their median), instead of leaving them out


@dataclass
class Consensus:
    out: Path
    written: int
    disputed: int  # transcripts with a dimension DISPUTED points apart or more (written only with keep_disputed)
    kept_disputed: bool
    single: int  # rated by one annotator: left out
    unsupported: int  # left out: a dimension with no verified quote while scoring.evidence asks for quotes


def median_score(scores: Sequence[int]) -> int:
    """The median of whole scores; of an even count whose two middle scores differ, the lower."""
    ordered = sorted(scores)
    return ordered[(len(ordered) - 1) // 2]


def run_consensus(options: ConsensusOptions, rubric: Rubric) -> Consensus:
    """Read the annotators' files, build the consensus records, check them as training data and write them."""
    detect_format(options.out)  # an unknown suffix is refused before anything is read
    for given in options.files:
        if _same_file(options.out, Path(given)):
            raise DataError(f"--out {options.out} is one of the annotators' files — write the consensus to a new "
                            "file")
    annotations = read_annotations(options.files, rubric)
    records, counts = consensus_records(annotations, rubric, options.keep_disputed)
    if not records:
        why = []
        if counts["disputed"] and not options.keep_disputed:
            why.append(f"{counts['disputed']} are disputed — adjudicate them ('hcp data agreement' lists them), or "
                       "pass --keep-disputed")
        if counts["unsupported"]:
            why.append(f"{counts['unsupported']} lack a verified quote for a dimension, which scoring.evidence asks "
                       "for — add the transcript lines each score rests on ('Speaker: words'), or use a config with "
                       "scoring.evidence: false")
        raise DataError(f"no consensus to write: of {len(annotations.transcripts)} transcripts rated by two or more "
                        f"annotators, {'; '.join(why)}")
    checked = check_rows(options.out, enumerate(records, start=1), rubric)
    if not checked.ok:  # a bug, not the user's mistake: what passes the checks here is what validate accepts
        raise RuntimeError(f"consensus records fail the data checks: {checked.problems[0]}")
    write_records(options.out, records)
    return Consensus(options.out, len(records), counts["disputed"], options.keep_disputed, annotations.single,
                     counts["unsupported"])


def consensus_records(annotations: Annotations, rubric: Rubric, keep_disputed: bool
                      ) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The consensus record of each transcript (see the module's docstring), and the counts of those left out."""
    records: list[dict[str, Any]] = []
    counts = {"disputed": 0, "unsupported": 0}
    for transcript in annotations.transcripts:
        ratings = transcript.ratings
        if any(spread([e.scores[n] for e in ratings.values()]) >= DISPUTED for n in rubric.names):
            counts["disputed"] += 1
            if not keep_disputed:
                continue
        scores = {n: median_score([e.scores[n] for e in ratings.values()]) for n in rubric.names}
        order = closest_first(transcript, scores, rubric)
        quotes = _evidence(transcript, order, scores, rubric)
        if rubric.scoring.evidence and len(quotes) < len(rubric.names):
            counts["unsupported"] += 1
            continue
        closest = ratings[order[0]]
        example = Example(closest.transcript, 0, transcript.key if transcript.has_id else None, scores,
                          closest.reasoning, closest.strengths, closest.areas_for_improvement, quotes)
        records.append(example.to_record())
    return records, counts


def closest_first(transcript: Transcript, scores: dict[str, int], rubric: Rubric) -> list[str]:
    """The annotators of a transcript, closest to the consensus first: the sum of score differences, then the
    overall difference, then the order they were given in."""
    overall = rubric.overall(scores)

    def distance(annotator: str) -> tuple[int, float]:
        given = transcript.ratings[annotator].scores
        return sum(abs(given[n] - scores[n]) for n in rubric.names), abs(rubric.overall(given) - overall)

    return sorted(transcript.ratings, key=distance)  # sorted is stable: ties keep the given order


def _evidence(transcript: Transcript, order: list[str], scores: dict[str, int], rubric: Rubric
              ) -> dict[str, list[str]]:
    """Each dimension's verified quotes (see the module's docstring); a dimension none supports is absent."""
    s = rubric.scoring
    transcript_turns = turns(transcript.ratings[order[0]].transcript)  # the text the consensus record carries
    found: dict[str, list[str]] = {}
    for name in rubric.names:
        agreeing = [a for a in order if transcript.ratings[a].scores[name] == scores[name]]
        for annotator in agreeing + [a for a in order if a not in agreeing]:
            quotes = _quotes((transcript.ratings[annotator].source or {}).get(evidence_key(name)))
            verified = [q for q in quotes
                        if len(q) <= s.evidence_max_chars and check_quote(q, transcript_turns).verified]
            if verified:
                found[name] = verified[:s.evidence_max_items]
                break
    return found


def _quotes(value: Any) -> list[str]:
    """A record's quotes for one dimension, whitespace collapsed as the data checker reads them; anything that is
    not a list of texts gives none."""
    if not isinstance(value, list):
        return []
    return [" ".join(v.split()) for v in value if isinstance(v, str) and v.strip()]


def _same_file(out: Path, given: Path) -> bool:
    if out.exists() and given.exists():
        return os.path.samefile(out, given)
    return out.resolve() == given.resolve()
