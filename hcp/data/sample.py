"""Synthetic, labelled conversations between a registered dietitian (RD) and a patient.

Approach
--------
Labels come first, text second. For every conversation we:

1. Draw target scores (1-5) for empathy, clarity, accuracy and professionalism.
   Scores are drawn in blocks of five: each block holds every value 1..5 once per
   dimension, so any n >= 5 (and hence any n >= 50) covers the full range. A shared
   latent "session quality" nudges the ranks, so dimensions are only loosely
   correlated and a reader has to judge each one separately.
2. Pick a topic (13 clinical areas, each with its own concerns, vocabulary, and
   advice graded from unsafe to evidence-based), a patient persona (name, age, mood)
   and an RD, and the labels the transcript gives the two speakers: as real
   transcripts label them (``RD:``, ``Dietitian:``, ``Provider:``, ``Dr. Byrne:``, the
   RD's name, ``Speaker 1:`` / ``Speaker 2:``; ``Patient:``, ``Client:``, ``Pt:``, the
   patient's first name), so a model trained on the data copies the transcript's own
   labels into its quotes. ``classic_labels=True`` writes ``RD:`` / ``Patient:`` only.
3. Write the conversation turn by turn, choosing each RD turn from a bank keyed by
   the target level of the dimension it expresses: empathy drives how the RD reacts
   to feelings, clarity drives how advice is phrased (plain steps and teach-back vs
   jargon and rambling), accuracy drives what the advice says, and professionalism
   drives the opening, the behaviour mid-session and the close. The labels agree with
   the rubric's level descriptors: a close that recaps the plan comes only with advice
   clear enough to make one (clarity 4-5), and only empathy 1 blames the patient.
4. Derive ``reasoning``, ``strengths`` and ``areas_for_improvement`` from the same
   choices, so every label can be traced back to something the RD actually said.
   The reasoning says what the RD did and states no score: the schema writes it before
   the quotes and scores, and a model trained on it should not commit to a number before
   it has quoted anything.
5. Quote, per dimension (``<dimension>_evidence``), the RD's words that express it:
   up to two quotes, each ``"<RD's label>: words"`` copied from the transcript (whole sentences
   where they fit, else the first words of one), so every quote verifies against
   the transcript (``hcp.evidence``). Taking them uses no randomness: transcripts,
   scores, strengths and areas are what they were before quotes existed.

Everything is driven by one ``random.Random(seed)`` (the labels by a second one seeded
from it, so that the classic labels give the same conversations), so output is
deterministic for a given ``(n, seed)``. Transcripts are unique within a call; on a (rare) collision
the text is redrawn from the same generator.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

SAMPLE_DIMENSIONS: tuple[str, ...] = ("empathy", "clarity", "accuracy", "professionalism")

_LEVELS = (1, 2, 3, 4, 5)
_MAX_REDRAWS = 100
_REASONING_LIMIT = 1000  # the rubric's reasoning_max_chars
_BULLET_LIMIT = 160
_QUOTE_LIMIT = 150  # characters of one quote, the label ("RD: ") included (the rubric allows 200)
_QUOTES_PER_DIMENSION = 2
_QUOTE_MIN_WORDS = 3  # shorter quotes verify only as a whole turn (hcp.evidence.MIN_WORDS)
CLASSIC_LABELS = ("RD", "Patient")
_NUMBERED_LABELS = ("Speaker 1", "Speaker 2")  # diarisation's labels: the provider speaks first


# ---------------------------------------------------------------------------
# Bank types
# ---------------------------------------------------------------------------


class Advice(NamedTuple):
    """One piece of RD advice: what the RD says, and a short verb phrase for it."""

    text: str
    action: str  # fits "I'll ...", "advice to ...", "you ..."


class Topic(NamedTuple):
    """A clinical area with its own patient lines, vocabulary and graded advice."""

    name: str  # "chronic kidney disease"
    short: str  # "your kidney diet"
    referral: str  # professional to refer to when out of scope
    reason: str  # why a referral is needed; fits "Because ..."
    female_only: bool
    ages: tuple[int, int]
    concerns: tuple[str, ...]
    details: tuple[str, ...]
    questions: tuple[str, ...]
    jargon: tuple[tuple[str, str], ...]  # (term, plain-language meaning)
    advice: dict[int, tuple[Advice, ...]]  # accuracy level -> advice


class Mood(NamedTuple):
    """How the patient comes across; colours their lines and the RD's reflections."""

    feeling: str  # fits "It sounds like you're ..."
    openers: tuple[str, ...]
    worries: tuple[str, ...]
    acks: tuple[str, ...]


class Act(NamedTuple):
    """A professional (or unprofessional) behaviour and how a reviewer would describe it."""

    text: str
    gist: str
    fix: str = ""


# ---------------------------------------------------------------------------
# The banks: phrases in sample_banks.json beside this module, loaded once
# ---------------------------------------------------------------------------

BANKS_FILE = Path(__file__).with_name("sample_banks.json")


def _by_level(bank: dict[str, Any], make: Any = tuple) -> dict[int, Any]:
    """JSON keys are text; the banks are keyed by score level."""
    return {int(level): make(items) for level, items in bank.items()}


def _load_banks() -> dict[str, Any]:
    raw = json.loads(BANKS_FILE.read_text(encoding="utf-8"))
    banks: dict[str, Any] = {name.upper(): tuple(value) if isinstance(value, list) else value
                             for name, value in raw.items()}
    banks["TOPICS"] = tuple(
        Topic(**{**t, "ages": tuple(t["ages"]), "concerns": tuple(t["concerns"]), "details": tuple(t["details"]),
                 "questions": tuple(t["questions"]), "jargon": tuple(tuple(pair) for pair in t["jargon"]),
                 "advice": _by_level(t["advice"], lambda items: tuple(Advice(**a) for a in items))})
        for t in raw["topics"])
    banks["MOODS"] = tuple(Mood(**{k: v if k == "feeling" else tuple(v) for k, v in m.items()}) for m in raw["moods"])
    for name in ("EMPATHY_FIRST", "EMPATHY_REPLY", "CLARITY_FIRST", "CLARITY_SECOND", "PRO_CLOSING"):
        banks[name] = _by_level(raw[name.lower()])
    for name in ("PRO_OPENING", "PRO_MIDDLE"):
        banks[name] = _by_level(raw[name.lower()], lambda items: tuple(Act(**a) for a in items))
    banks["REASONING"] = {dim: _by_level(levels, str) for dim, levels in raw["reasoning"].items()}
    for name in ("STRENGTHS", "AREAS"):
        banks[name] = {dim: _by_level(levels) for dim, levels in raw[name.lower()].items()}
    return banks


_BANKS = _load_banks()
TOPICS: tuple[Topic, ...] = _BANKS["TOPICS"]
MOODS: tuple[Mood, ...] = _BANKS["MOODS"]
FEMALE_NAMES: tuple[str, ...] = _BANKS["FEMALE_NAMES"]
MALE_NAMES: tuple[str, ...] = _BANKS["MALE_NAMES"]
RD_NAMES: tuple[str, ...] = _BANKS["RD_NAMES"]
PROVIDER_LABELS: tuple[str, ...] = _BANKS["PROVIDER_LABELS"]  # templates: "Dr. {rd_last}", "{rd_first}"
PATIENT_LABELS: tuple[str, ...] = _BANKS["PATIENT_LABELS"]
FOLLOW_UP_WEEKS: tuple[int, ...] = _BANKS["FOLLOW_UP_WEEKS"]
CONSENT_REPLIES: tuple[str, ...] = _BANKS["CONSENT_REPLIES"]
PROBES: tuple[str, ...] = _BANKS["PROBES"]
EMPATHY_FIRST: dict[int, tuple[str, ...]] = _BANKS["EMPATHY_FIRST"]  # how the RD first meets the feelings
EMPATHY_REPLY: dict[int, tuple[str, ...]] = _BANKS["EMPATHY_REPLY"]  # how the RD answers the worry
CLARITY_FIRST: dict[int, tuple[str, ...]] = _BANKS["CLARITY_FIRST"]
CLARITY_SECOND: dict[int, tuple[str, ...]] = _BANKS["CLARITY_SECOND"]
CONFUSED_QUESTIONS: tuple[str, ...] = _BANKS["CONFUSED_QUESTIONS"]
CONFUSED_ACKS: tuple[str, ...] = _BANKS["CONFUSED_ACKS"]
CHECK_SIMPLE: tuple[str, ...] = _BANKS["CHECK_SIMPLE"]
TEACH_BACK: tuple[str, ...] = _BANKS["TEACH_BACK"]
TEACH_BACK_ANSWERS: tuple[str, ...] = _BANKS["TEACH_BACK_ANSWERS"]
TEACH_BACK_CONFIRM: tuple[str, ...] = _BANKS["TEACH_BACK_CONFIRM"]
PRO_OPENING: dict[int, tuple[Act, ...]] = _BANKS["PRO_OPENING"]
PRO_MIDDLE: dict[int, tuple[Act, ...]] = _BANKS["PRO_MIDDLE"]
PRO_CLOSING: dict[int, tuple[str, ...]] = _BANKS["PRO_CLOSING"]
# A level-5 close after advice too unclear to make a plan (clarity 1-3): follow-up and questions, no recap of steps
# that were never made clear (clarity's descriptors: "no concrete plan", "vague or missing next steps").
PRO_CLOSING_WITHOUT_RECAP: tuple[str, ...] = _BANKS["PRO_CLOSING_WITHOUT_RECAP"]
PRO_CLOSING_GIST: dict[str, str] = _BANKS["PRO_CLOSING_GIST"]  # what the level-5 close did, for the reasoning
REASONING: dict[str, dict[int, str]] = _BANKS["REASONING"]  # what the RD did, per dimension and level: no score
STRENGTHS: dict[str, dict[int, tuple[str, ...]]] = _BANKS["STRENGTHS"]
AREAS: dict[str, dict[int, tuple[str, ...]]] = _BANKS["AREAS"]
MINOR_AREAS: tuple[str, ...] = _BANKS["MINOR_AREAS"]


# ---------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------


@dataclass
class _Draft:
    """A written conversation plus the choices behind it, used to derive labels."""

    scores: dict[str, int]
    ctx: dict[str, str]
    pro_opening: Act
    pro_middle: Act
    empathy_quote: str
    labels: tuple[str, str] = CLASSIC_LABELS  # (the RD's, the patient's), as the transcript writes them
    recapped: bool = False  # the close summarised the agreed plan
    lines: list[str] = field(default_factory=list)
    quotes: dict[str, list[str]] = field(default_factory=lambda: {dim: [] for dim in SAMPLE_DIMENSIONS})

    def rd(self, *parts: str, tags: tuple[str | None, ...] = ()) -> None:
        """One RD turn; `tags[i]` names the dimension part i expresses, which keeps it as evidence."""
        for part, tag in zip(parts, tags, strict=False):
            if part and tag:
                self.quotes[tag].append(_fill(part, self.ctx))
        self.lines.append(f"{self.labels[0]}: " + _fill(" ".join(p for p in parts if p), self.ctx))

    def patient(self, *parts: str) -> None:
        self.lines.append(f"{self.labels[1]}: " + _fill(" ".join(p for p in parts if p), self.ctx))

    @property
    def transcript(self) -> str:
        return "\n".join(self.lines)


def generate_samples(n: int = 200, seed: int = 42, classic_labels: bool = False) -> list[dict]:
    """Deterministic, varied, realistic labelled RD-patient conversations; `classic_labels`: every transcript
    labels its speakers `RD:` and `Patient:` (otherwise the labels vary as real transcripts' do)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = random.Random(seed)
    label_rng = random.Random(f"labels:{seed}")  # its own generator: the classic labels change nothing else
    seen: set[str] = set()
    samples = []
    for scores in _draw_scores(rng, n):
        label_choice = (label_rng.choice(PROVIDER_LABELS), label_rng.choice(PATIENT_LABELS))
        draft = _unique_draft(rng, scores, seen, None if classic_labels else label_choice)
        seen.add(draft.transcript)
        samples.append(_to_sample(rng, draft))
    return samples


def _draw_scores(rng: random.Random, n: int) -> list[dict[str, int]]:
    """Balanced, loosely correlated scores: each block of 5 holds every level once per dimension."""
    rows: list[dict[str, int]] = []
    while len(rows) < n:
        quality = [rng.gauss(0.0, 1.0) for _ in _LEVELS]
        block: list[dict[str, int]] = [{} for _ in _LEVELS]
        for dim in SAMPLE_DIMENSIONS:
            keys = [0.6 * q + rng.gauss(0.0, 1.0) for q in quality]
            for level, idx in enumerate(sorted(range(len(keys)), key=keys.__getitem__), start=1):
                block[idx][dim] = level
        rows.extend(block)
    rows = rows[:n]
    rng.shuffle(rows)
    return rows


def _unique_draft(rng: random.Random, scores: dict[str, int], seen: set[str],
                  labels: tuple[str, str] | None) -> _Draft:
    for _ in range(_MAX_REDRAWS):
        draft = _compose(rng, scores, labels)
        if draft.transcript not in seen:
            return draft
    raise RuntimeError("could not draw a unique transcript")


def _context(rng: random.Random, topic: Topic, mood: Mood) -> dict[str, str]:
    """Persona, RD and vocabulary placeholders shared by every line of one conversation."""
    names = FEMALE_NAMES if topic.female_only else rng.choice((FEMALE_NAMES, MALE_NAMES))
    pname = rng.choice(names)
    rd = rng.choice(RD_NAMES)
    (term, plain), (term2, _), (term3, _) = rng.sample(topic.jargon, 3)
    return {
        "pname": pname,
        "age": str(rng.randint(*topic.ages)),
        "rd": rd,
        "rd_first": rd.split()[0],
        "rd_last": rd.split()[-1],
        "other": rng.choice([x for x in FEMALE_NAMES if x != pname]),
        "topic": topic.name,
        "short": topic.short,
        "referral": topic.referral,
        "reason": topic.reason,
        "weeks": str(rng.choice(FOLLOW_UP_WEEKS)),
        "feeling": mood.feeling,
        "term": term,
        "plain": plain,
        "term2": term2,
        "term3": term3,
    }


def _speaker_labels(templates: tuple[str, str] | None, ctx: dict[str, str]) -> tuple[str, str]:
    """The RD's and the patient's labels from templates ("Dr. {rd_last}", "{pname}"): `Speaker 2` answers
    `Speaker 1`, and a patient who shares the RD's label is `Patient`."""
    if templates is None:
        return CLASSIC_LABELS
    provider, patient = (_fill(template, ctx) for template in templates)
    if provider == _NUMBERED_LABELS[0]:
        return _NUMBERED_LABELS
    return provider, patient if patient.casefold() != provider.casefold() else CLASSIC_LABELS[1]


def _compose(rng: random.Random, scores: dict[str, int], labels: tuple[str, str] | None = None) -> _Draft:
    """Write one conversation whose RD turns express the target score of each dimension."""
    topic, mood = rng.choice(TOPICS), rng.choice(MOODS)
    empathy, accuracy, pro = scores["empathy"], scores["accuracy"], scores["professionalism"]
    ctx = _context(rng, topic, mood)
    first, second = rng.sample(topic.advice[accuracy], 2)
    ctx.update(advice=first.text, advice2=second.text, action=first.action, action2=second.action)
    empathy_line = rng.choice(EMPATHY_FIRST[empathy])
    draft = _Draft(
        scores=scores,
        ctx=ctx,
        pro_opening=rng.choice(PRO_OPENING[pro]),
        pro_middle=rng.choice(PRO_MIDDLE[pro]),
        empathy_quote=_clip(empathy_line.split(". ")[0].rstrip("."), 70),
        labels=_speaker_labels(labels, ctx),
    )

    draft.rd(draft.pro_opening.text, tags=("professionalism",))
    consent = rng.choice(CONSENT_REPLIES) if pro == 5 else ""
    draft.patient(consent, rng.choice(mood.openers), rng.choice(topic.concerns))
    draft.rd(empathy_line, tags=("empathy",))
    details = rng.sample(topic.details, 2)
    draft.patient(details[0])
    if rng.random() < 0.5:
        draft.rd(rng.choice(PROBES))
        draft.patient(details[1])
    _write_advice(rng, draft, topic)
    draft.patient(rng.choice(mood.worries))
    _write_check_and_close(rng, draft, mood)
    return draft


def _write_advice(rng: random.Random, draft: _Draft, topic: Topic) -> None:
    """Two advice turns (content from accuracy, phrasing from clarity) and the mid-session act."""
    clarity = draft.scores["clarity"]
    draft.rd(rng.choice(CLARITY_FIRST[clarity]), tags=("clarity",))
    draft.patient(rng.choice(CONFUSED_QUESTIONS if clarity <= 2 else topic.questions))
    draft.rd(rng.choice(CLARITY_SECOND[clarity]), draft.pro_middle.text, tags=("clarity", "professionalism"))
    # The advice (what accuracy judges) is said inside the clarity turns, word for word.
    draft.quotes["accuracy"] += [draft.ctx["advice"], draft.ctx["advice2"]]


def _write_check_and_close(rng: random.Random, draft: _Draft, mood: Mood) -> None:
    """Empathic reply to the worry, the understanding check, the patient's answer, and the close."""
    empathy, clarity, pro = (draft.scores[d] for d in ("empathy", "clarity", "professionalism"))
    check = {5: rng.choice(TEACH_BACK), 4: rng.choice(CHECK_SIMPLE)}.get(clarity, "")
    draft.rd(rng.choice(EMPATHY_REPLY[empathy]), check, tags=("empathy", "clarity"))
    if clarity == 5:
        draft.patient(rng.choice(TEACH_BACK_ANSWERS))
    elif clarity <= 2:
        draft.patient(rng.choice(CONFUSED_ACKS))
    else:
        draft.patient(rng.choice(mood.acks))
    confirm = rng.choice(TEACH_BACK_CONFIRM) if clarity == 5 else ""
    draft.recapped = pro == 5 and clarity >= 4
    closings = PRO_CLOSING_WITHOUT_RECAP if pro == 5 and not draft.recapped else PRO_CLOSING[pro]
    draft.rd(confirm, rng.choice(closings), tags=(None, "professionalism"))


# ---------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------


def _to_sample(rng: random.Random, draft: _Draft) -> dict:
    ctx = _label_context(draft)
    sample: dict = {"transcript": draft.transcript}
    sample.update({dim: draft.scores[dim] for dim in SAMPLE_DIMENSIONS})
    sample["reasoning"] = _reasoning(draft, ctx)
    sample["strengths"] = _strengths(rng, draft, ctx)
    sample["areas_for_improvement"] = _areas(rng, draft, ctx)
    sample.update({f"{dim}_evidence": _evidence(draft, dim) for dim in SAMPLE_DIMENSIONS})
    return sample


def _evidence(draft: _Draft, dim: str) -> list[str]:
    """The first and the last thing the RD said that expresses `dim` (for clarity the last is the check of
    understanding when there is one; for professionalism the opening and the mid-session act), quoted."""
    said = draft.quotes[dim][:2] if dim == "professionalism" else draft.quotes[dim]
    chosen = said[:1] + said[-1:] if len(said) > 1 else said
    # Clarity is in how the advice is put, not in the advice itself (accuracy quotes that): skip its sentences.
    advice = (draft.ctx["advice"], draft.ctx["advice2"]) if dim == "clarity" else ()
    return [_quote(draft.labels[0], text, advice) for text in chosen[:_QUOTES_PER_DIMENSION]]


def _quote(label: str, text: str, skip: tuple[str, ...] = ()) -> str:
    """'<label>: ' and the first run of sentences of `text` that fits in _QUOTE_LIMIT, leaving out sentences that
    are part of a `skip` text (unless nothing else is left), else its first words: always a run of the
    transcript's own words, never an ellipsis or a word cut in two."""
    prefix = f"{label}: "
    room = _QUOTE_LIMIT - len(prefix)
    sentences = re.split(r"(?<=[.!?])\s+", text.strip())
    own = [not any(sentence in other for other in skip) for sentence in sentences]
    if not any(own):
        own = [True] * len(sentences)
    quoted = ""
    for start in (i for i, mine in enumerate(own) if mine):  # the first run of own sentences of 3 words or more
        quoted = ""
        for sentence, mine in zip(sentences[start:], own[start:], strict=True):
            joined = f"{quoted} {sentence}".strip()
            if len(joined) > room or not mine:
                break
            quoted = joined
        if not quoted:
            quoted = sentences[start][:room + 1].rsplit(" ", 1)[0].rstrip(",;:")
        if len(quoted.split()) >= _QUOTE_MIN_WORDS:
            break
    return prefix + quoted


def _label_context(draft: _Draft) -> dict[str, str]:
    """Placeholders for reviewer-voice text: third person, and the name only if it was spoken."""
    ctx = dict(draft.ctx, quote=draft.empathy_quote)
    if not re.search(rf"\b{re.escape(ctx['pname'])}\b", draft.transcript):
        ctx["pname"] = "the patient"
    referral = ctx["referral"]
    ctx["referral"] = "the patient's " + referral[5:] if referral.startswith("your ") else referral
    ctx["opening"] = _fill(draft.pro_opening.gist, ctx)
    ctx["middle"] = _fill(draft.pro_middle.gist, ctx)
    ctx["closing"] = _fill(PRO_CLOSING_GIST["recap" if draft.recapped else "follow_up"], ctx)
    return ctx


def _reasoning(draft: _Draft, ctx: dict[str, str]) -> str:
    parts = [_fill(REASONING[dim][draft.scores[dim]], ctx) for dim in SAMPLE_DIMENSIONS]
    return _clip(" ".join(parts), _REASONING_LIMIT)


def _strengths(rng: random.Random, draft: _Draft, ctx: dict[str, str]) -> list[str]:
    """Dimensions scoring 4-5 (best first); otherwise the best-scoring dimension(s)."""
    ranked = sorted(SAMPLE_DIMENSIONS, key=lambda d: -draft.scores[d])
    best = draft.scores[ranked[0]]
    chosen = [d for d in ranked if draft.scores[d] >= 4] or [d for d in ranked if draft.scores[d] == best][:2]
    return [_bullet(rng.choice(STRENGTHS[d][draft.scores[d]]), ctx) for d in chosen[:4]]


def _areas(rng: random.Random, draft: _Draft, ctx: dict[str, str]) -> list[str]:
    """Dimensions scoring 1-3 (worst first); otherwise the 4s; a minor point if all are 5."""
    ranked = sorted(SAMPLE_DIMENSIONS, key=lambda d: draft.scores[d])
    chosen = [d for d in ranked if draft.scores[d] <= 3] or [d for d in ranked if draft.scores[d] == 4]
    if not chosen:
        return [_bullet(rng.choice(MINOR_AREAS), ctx)]
    return [_bullet(_area_text(rng, draft, d), ctx) for d in chosen[:4]]


def _area_text(rng: random.Random, draft: _Draft, dim: str) -> str:
    level = draft.scores[dim]
    if dim == "professionalism" and level <= 2:
        return draft.pro_middle.fix
    return rng.choice(AREAS[dim][level])


# ---------------------------------------------------------------------------
# Text helpers
# ---------------------------------------------------------------------------


def _fill(template: str, ctx: dict[str, str]) -> str:
    """Fill {placeholders} from the conversation context."""
    return template.format_map(ctx)


def _bullet(template: str, ctx: dict[str, str]) -> str:
    return _clip(_fill(template, ctx), _BULLET_LIMIT)


def _clip(text: str, limit: int) -> str:
    """Shorten to at most ``limit`` characters at a word boundary."""
    if len(text) <= limit:
        return text
    return text[: limit - 3].rsplit(" ", 1)[0].rstrip(",;:") + "..."
