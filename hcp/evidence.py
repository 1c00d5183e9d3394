"""Quoted evidence: every quote a rating gives, checked against the transcript it rates.

A rating (and a training record) carries, per dimension, the lines of the transcript its score rests on, each
written as the transcript writes a turn: `Speaker: words`. A quote is verified when its words, after
normalising Unicode, case, punctuation and whitespace, appear whole (no partial words: a number such as "1.5" or
"2,300", a hyphenated word, a contraction is one word) inside one turn of the transcript, and that turn's speaker
is the quote's speaker, one of the labels the transcript alternates between (`speakers`). Quotes shorter than
`MIN_WORDS` words verify only when they are a whole turn ("Patient: Yes."), so that "RD: I" cannot pass as evidence.

It lives in the foundation because both ends need it: `hcp/data` checks the quotes of training records, and
`hcp/scoring` the quotes of a model's rating. Written by hand: no library we found (rapidfuzz, difflib) does
speaker-aware exact matching on word boundaries; fuzzy matching would verify quotes that were not said.

Results name problems by a code and the line number of the turn, never by the quoted text: a quote is
transcript text, and goes only to the JSON or terminal the user asked for, never to a log line or an error.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

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

# --- words ------------------------------------------------------------------------------------------------------
# A word keeps what makes it that word: "1.5", "2,300", "5-10", "non-fat", "shouldn't", "5%", "<5", "5+" are one
# word each, so "5", "300", "fat" or "t" never match inside them. Apostrophes and dashes of every kind are folded to one
# spelling first ("it’s" is "it's", "5–10" is "5-10"); an em dash joins only digits ("hard—it's" is two words).
_APOSTROPHES = str.maketrans(dict.fromkeys("’‘ʼ`´", "'"))
_DASHES = str.maketrans(dict.fromkeys("‐‑‒–−", "-"))
_LONG_DASHES = str.maketrans(dict.fromkeys("—―", "-"))  # inside a word they join digits: a range, like "5-10"
_JOIN = r"(?:['-]|(?<=\d)[.,:/⁄—―](?=\d))"  # inside a word; . , : / and the long dashes only between digits
_WORD = re.compile(rf"(?:[<>≤≥~±]\s*(?=\d))?[^\W_]+(?:{_JOIN}[^\W_]+)*(?:(?<=\d)(?:\s*%|\+))?")

# The invisible ones of Unicode's format characters (category Cf; not the Arabic signs that show): dropped, never
# a word boundary. A table, not a per-character category lookup: that took most of the check's time.
_INVISIBLE = dict.fromkeys([0xAD, 0x61C, 0x180E, *range(0x200B, 0x2010), *range(0x202A, 0x202F), *range(0x2060, 0x2065),
                            *range(0x2066, 0x2070), 0xFEFF, 0xE0001, *range(0xE0020, 0xE0080)])

# --- speakers ---------------------------------------------------------------------------------------------------
# A label is one to three capitalised words, or a word and a number ("Speaker 1"), then a colon and a space: at a
# line start, or (for a transcript written on one line) after any whitespace.
_NAME = r"[A-Z][\w'’.-]*"
_LABEL = rf"{_NAME}(?: (?:{_NAME}|\d{{1,3}})){{0,2}}"
_LINE_START_LABEL = re.compile(rf"^[ \t]*(?=({_LABEL}):\s)", re.MULTILINE)
_ANY_LABEL = re.compile(rf"(?:^|(?<=\s))(?=({_LABEL}):\s)")
# Labels that name a speaker wherever they stand (compared normalised): roles, a title and a name, a number.
_ROLES = ("rd rdn dietitian dietician nutritionist provider clinician doctor physician nurse np therapist counselor "
          "counsellor coach interviewer patient pt client participant caregiver carer parent mother father mom mum "
          "dad guardian interpreter relative spouse husband wife partner son daughter")
_USUAL_LABEL = re.compile(
    rf"(?:{'|'.join(_ROLES.split())})"
    r"|(?:dr|doctor|nurse|mr|mrs|ms|mx|miss|prof|professor|rd|dietitian)(?: [^\W\d_][\w'-]*){1,2}"
    r"|(?:speaker|person|participant|patient|client|provider|spk|pt|p|s) ?(?:\d{1,3}|[a-z])")
# The speaker of a quote: up to three words before the first colon (case is not checked).
_QUOTE_SPEAKER = re.compile(r"^\s*([^\W\d_][\w'’.-]*(?: [\w'’.-]+){0,2})\s*:\s*(.*)$", re.DOTALL)
# What was assumed, when the labels left it open (said with counts, never the labels: they are transcript text).
ASSUMED_EVERY_LABEL = ("fewer than two labels recur or are usual speaker labels (RD, Patient, Speaker 1, Dr. Name): "
                       "every label was taken as a speaker")
ASSUMED_WORDS = "{n} label(s) used once were read as words, not as speakers"


def _visible(text: str) -> str:
    """The text without invisible format characters (soft hyphen, zero-width space and joiners, word joiner,
    byte-order mark, direction marks): a quote copied from a page that shows "nutrition" matches it whatever
    the page hid inside the word."""
    return text.translate(_INVISIBLE)


def normalize(text: str) -> str:
    """The words of `text`, folded and joined by single spaces: Unicode compatibility forms, case, apostrophes
    and dashes folded, invisible characters dropped, every other punctuation mark, symbol and space a boundary
    between words. "I’m  SO sorry…" and "i'm so sorry" both give "i'm so sorry"; "2,300 mg" gives "2,300 mg"."""
    folded = unicodedata.normalize("NFKC", _visible(text)).casefold().translate(_APOSTROPHES).translate(_DASHES)
    return " ".join("".join(word.split()).translate(_LONG_DASHES) for word in _WORD.findall(folded))


@dataclass(frozen=True)
class Turn:
    speaker: str  # normalised
    words: str  # normalised
    line: int  # 1-based line of the transcript where the turn starts
    label: str = ""  # the speaker's label as the transcript writes it


@dataclass(frozen=True)
class Speakers:
    """Who speaks in a transcript: the labels taken as speakers (as written, in order of first turn), and what
    was assumed where the labels left it open (None when nothing was)."""

    labels: tuple[str, ...]
    note: str | None


class _Label(NamedTuple):
    start: int  # where the label starts
    body: int  # where the turn's words start (after the colon)
    text: str  # as written
    key: str  # normalised


def _labels(text: str) -> list[_Label]:
    """Every 'Label:' that could start a turn: at line starts, or anywhere after whitespace when at most one line
    starts with one. Of labels ending at the same colon ("Sam Patient:", "Patient:") the longest usual one wins,
    else the longest."""
    found = list(_LINE_START_LABEL.finditer(text))
    if len(found) <= 1:
        found = list(_ANY_LABEL.finditer(text))
    by_colon: dict[int, _Label] = {}
    for match in found:
        label = _Label(match.start(1), match.end(1) + 1, match.group(1), normalize(match.group(1)))
        kept = by_colon.get(label.body)
        if kept is None or (_usual(label.key), len(label.text)) > (_usual(kept.key), len(kept.text)):
            by_colon[label.body] = label
    return sorted(by_colon.values())


def _usual(key: str) -> bool:
    return _USUAL_LABEL.fullmatch(key) is not None


def _speaking(labels: list[_Label]) -> tuple[list[_Label], str | None]:
    """The labels that start turns, and what was assumed. Speakers are the labels a transcript alternates
    between: a usual speaker label, or one that starts two turns or more. A label used once counts when it stands
    alone between two turns of the same speaker (someone answering once); otherwise it is words inside the turn
    ("Breakfast: oats" in the RD's meal plan). With fewer than two such speakers, every label is one."""
    counts = Counter(label.key for label in labels)
    sure = [_usual(label.key) or counts[label.key] > 1 for label in labels]
    if len({label.key for label, is_sure in zip(labels, sure, strict=True) if is_sure}) < 2:
        return labels, ASSUMED_EVERY_LABEL if labels and not all(sure) else None
    kept = []
    for index, (label, is_sure) in enumerate(zip(labels, sure, strict=True)):
        between = 0 < index < len(labels) - 1 and sure[index - 1] and sure[index + 1]
        if is_sure or (between and labels[index - 1].key == labels[index + 1].key):
            kept.append(label)
    unread = len(labels) - len(kept)
    return kept, ASSUMED_WORDS.format(n=unread) if unread else None


def speakers(transcript: str) -> Speakers:
    """The transcript's speakers and what was assumed to find them (see `_speaking`)."""
    kept, note = _speaking(_labels(_visible(transcript)))
    first_spelling: dict[str, str] = {}
    for label in kept:
        first_spelling.setdefault(label.key, label.text)
    return Speakers(tuple(first_spelling.values()), note)


def turns(transcript: str) -> list[Turn]:
    """The transcript's turns: each speaker's label starts one, which runs to the next speaker's label (lines
    without one, and labels that are not speakers, continue the turn). A transcript with at most one labelled
    line start (one written on one line) is split at labels anywhere after whitespace."""
    text = _visible(transcript)  # drops characters only, never a line: line numbers stay the transcript's
    starts, _ = _speaking(_labels(text))
    found = []
    for index, label in enumerate(starts):
        end = starts[index + 1].start if index + 1 < len(starts) else len(text)
        found.append(Turn(label.key, normalize(text[label.body:end]), text.count("\n", 0, label.start) + 1,
                          label.text))
    return found


def split_quote(item: str) -> tuple[str | None, str]:
    """('Speaker', 'words') of an evidence item, or (None, item) when it names no speaker."""
    match = _QUOTE_SPEAKER.match(_visible(item))
    if match is None:
        return None, _visible(item).strip()
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
