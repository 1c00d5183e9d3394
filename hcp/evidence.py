"""Quoted evidence: every quote a rating gives, checked against the transcript it rates.

A rating (and a training record) carries, per dimension, the lines of the transcript its score rests on, each
written as the transcript writes a turn: `Speaker: words`. A quote is verified when its words, after
normalising Unicode, case, punctuation and whitespace, appear whole (no partial words) inside one turn of the
transcript, and that turn's speaker is the quote's speaker. Quotes shorter than `MIN_WORDS` words verify only
when they are a whole turn ("Patient: Yes."), so that "RD: I" cannot pass as evidence.

It lives in the foundation because both ends need it: `hcp/data` checks the quotes of training records, and
`hcp/scoring` the quotes of a model's rating. Written by hand: no library we found (rapidfuzz, difflib) does
speaker-aware exact matching on word boundaries; fuzzy matching would verify quotes that were not said.

Results name problems by a code and the line number of the turn, never by the quoted text: a quote is
transcript text, and goes only to the JSON or terminal the user asked for, never to a log line or an error.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass
from typing import Any

from hcp.config import EVIDENCE_SUFFIX

MIN_WORDS = 3
UNVERIFIED = "quote not verified"  # in the problem of an answer that --strict-evidence turned away
# What each problem means, for people (terminal, CSV, error messages): never the quote itself.
PROBLEMS = {
    "no_speaker": "no speaker given — write it as 'Speaker: words'",
    "too_short": f"too short to check (under {MIN_WORDS} words and not a whole turn)",
    "wrong_speaker": "those words were said by another speaker",
    "not_found": "not in the transcript",
}
# A turn starts with a label like the data checker's: "RD:", "Patient:", "Dr Smith:" — one or two capitalised
# words and a colon, at the start of a line or (for a transcript written on one line) after whitespace.
_LABEL = r"[A-Z][\w'’.-]*(?: [A-Z][\w'’.-]*)?"
_LINE_START_LABEL = re.compile(rf"^[ \t]*({_LABEL}):(?=\s)", re.MULTILINE)
_ANY_LABEL = re.compile(rf"(?:^|(?<=\s))({_LABEL}):(?=\s)")
# The speaker of a quote: up to three words before the first colon (case is not checked).
_QUOTE_SPEAKER = re.compile(r"^\s*([^\W\d_][\w'’.-]*(?: [\w'’.-]+){0,2})\s*:\s*(.*)$", re.DOTALL)


def normalize(text: str) -> str:
    """Words only: Unicode compatibility forms folded, case folded, punctuation and symbols turned into spaces,
    runs of whitespace made one space. "I’m  SO sorry…" and "i'm so sorry" both give "i m so sorry"."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    spaced = "".join(" " if unicodedata.category(c)[0] in "PSZC" else c for c in folded)
    return " ".join(spaced.split())


@dataclass(frozen=True)
class Turn:
    speaker: str  # normalised
    words: str  # normalised
    line: int  # 1-based line of the transcript where the turn starts


def turns(transcript: str) -> list[Turn]:
    """The transcript's turns. Labels at line starts split it; a line without a label continues the turn above.
    A transcript with at most one labelled line start (one written on one line) is split at every label."""
    starts = list(_LINE_START_LABEL.finditer(transcript))
    if len(starts) <= 1:
        starts = list(_ANY_LABEL.finditer(transcript))
    found = []
    for index, match in enumerate(starts):
        end = starts[index + 1].start() if index + 1 < len(starts) else len(transcript)
        body = transcript[match.end():end]
        found.append(Turn(normalize(match.group(1)), normalize(body), transcript.count("\n", 0, match.start()) + 1))
    return found


def split_quote(item: str) -> tuple[str | None, str]:
    """('Speaker', 'words') of an evidence item, or (None, item) when it names no speaker."""
    match = _QUOTE_SPEAKER.match(item)
    if match is None:
        return None, item.strip()
    return match.group(1).strip(), match.group(2).strip()


@dataclass(frozen=True)
class Check:
    """One quote and what the check found. `problem` is a key of PROBLEMS, None when verified."""

    speaker: str | None
    quote: str
    verified: bool
    problem: str | None
    line: int | None  # the transcript line where the quoted turn starts, when found

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check_quote(item: str, transcript_turns: list[Turn]) -> Check:
    speaker, quote = split_quote(item)
    words = normalize(quote)
    if speaker is None or not words:
        return Check(speaker, quote, False, "no_speaker" if speaker is None else "too_short", None)
    who = normalize(speaker)
    padded = f" {words} "
    found = [t for t in transcript_turns if padded in f" {t.words} "]
    mine = [t for t in found if t.speaker == who]
    if not found:
        return Check(speaker, quote, False, "not_found", None)
    if not mine:
        return Check(speaker, quote, False, "wrong_speaker", None)
    if len(words.split()) < MIN_WORDS and not any(t.words == words for t in mine):
        return Check(speaker, quote, False, "too_short", mine[0].line)
    return Check(speaker, quote, True, None, mine[0].line)


def evidence_key(dimension: str) -> str:
    return dimension + EVIDENCE_SUFFIX


def check_evidence(rating: dict[str, Any], transcript: str, dimensions: tuple[str, ...]) -> dict[str, list[Check]]:
    """Each dimension's quotes (the rating's `<dim>_evidence`), checked against the transcript."""
    transcript_turns = turns(transcript)
    return {dim: [check_quote(item, transcript_turns) for item in rating.get(evidence_key(dim), [])]
            for dim in dimensions}


def status_text(check: dict[str, Any]) -> str:
    """'verified', or 'NOT VERIFIED: <why>', for a check as JSON holds it: only a quote the check found (verified
    true) is ever called verified; anything else, a missing or unknown status included, is not."""
    if check.get("verified") is True:
        return "verified"
    return f"NOT VERIFIED: {PROBLEMS.get(check.get('problem') or '', 'not checked')}"


def quote_text(check: dict[str, Any]) -> str:
    """'Speaker: words' as the rating wrote them."""
    return f"{check['speaker']}: {check['quote']}" if check.get("speaker") else str(check.get("quote", ""))


def first_unverified(checks: dict[str, list[Check]]) -> str | None:
    """'empathy_evidence[1]: not in the transcript' for the first quote that failed, None if all verified: the
    schema's key, an index and the problem, never the quote."""
    for dim, items in checks.items():
        for index, check in enumerate(items):
            if not check.verified:
                return f"{evidence_key(dim)}[{index}]: {UNVERIFIED} ({PROBLEMS[check.problem or 'not_found']})"
    return None
