"""Scoring one transcript: check it fits, generate under the schema, validate, retry, never invent.

The transcript's text is never logged or put into an error message: only its length in characters and tokens.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hcp.config import DEFAULT_ANSWER_TOKENS
from hcp.errors import ContextOverflowError, DataError, InvalidOutputError
from hcp.evidence import UNVERIFIED, check_evidence, first_unverified
from hcp.files import atomic_write_text, state_dir
from hcp.rubric import Rubric, normalize_transcript
from hcp.scoring.backends import MAX_RETRIES, Backend, GenerateOptions, Generation
from hcp.scoring.confidence import summarize

log = logging.getLogger(__name__)

RETRY_MIN_TEMPERATURE = 0.5  # a retry at temperature 0 would give the same answer again


@dataclass(frozen=True)
class ScoreOptions:
    seed: int = 42
    temperature: float = 0.0
    num_ctx: int = 8192
    repeat_penalty: float = 1.1
    max_retries: int = MAX_RETRIES
    answer_tokens: int = DEFAULT_ANSWER_TOKENS  # model.answer_tokens: room kept for the answer, and its limit
    raw_output_dir: Path | None = None  # where invalid answers are kept for the user; None: hcp's state folder
    strict_evidence: bool = False  # a quote not in the transcript makes the answer invalid (retried, reported)


@dataclass
class ScoreResult:
    rating: dict[str, Any]
    overall: float
    model: str
    backend: str
    prompt_tokens: int
    output_tokens: int
    seconds: float
    attempts: int
    # Each dimension's quotes as checked against the transcript: {dim: [{speaker, quote, verified, problem,
    # line}]}; empty when the schema asks for no evidence. evidence_verified: every quote verified (None: none).
    evidence: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    evidence_verified: bool | None = None
    # From the backend's score distribution (hcp/scoring/confidence.py); None where it gave none.
    distribution: dict[str, dict[int, float]] | None = None
    expected: dict[str, float] | None = None  # per dimension, probability-weighted
    confidence: dict[str, float] | None = None  # per dimension, the probability of the chosen score
    overall_expected: float | None = None
    overall_interval: tuple[float, float] | None = None  # scoring.interval_level of the overall's distribution
    # Why a person should look at this rating ("low_confidence:<dimension>", ...); empty: no reason known.
    review_reasons: list[str] = field(default_factory=list)
    # One line shown wherever the rating is, when the model is not a rater to trust (Backend.model_note: the embedded
    # default, not fine-tuned); None for any other model.
    model_note: str | None = None

    @property
    def needs_review(self) -> bool:
        return bool(self.review_reasons)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "needs_review": self.needs_review}


def answer_budget(rubric: Rubric, answer_tokens: int = DEFAULT_ANSWER_TOKENS) -> int:
    """Output tokens to reserve and allow: `answer_tokens` (model.answer_tokens), but never more than the longest
    answer the schema permits (its length in characters, which bounds its tokens in practice). Reserving the
    schema's maximum would turn away long transcripts for answers no model writes; an answer that does run into
    the budget is cut off, and a cut-off answer is never accepted (done_reason 'length': retried, then reported)."""
    return min(answer_tokens, rubric.max_answer_chars)


def check_fits(prompt_tokens: int, num_predict: int, num_ctx: int, transcript_chars: int) -> None:
    if prompt_tokens + num_predict > num_ctx:
        raise ContextOverflowError(
            f"transcript too long for the context: {transcript_chars} characters make a prompt of {prompt_tokens} "
            f"tokens, and with the answer budget of {num_predict} tokens (model.answer_tokens) that needs "
            f"{prompt_tokens + num_predict}, over num_ctx {num_ctx} — raise model.num_ctx in your config (or "
            "--num-ctx), or use a model with a longer context; hcp never rates a transcript the model cannot read "
            "whole")


def score_transcript(
    transcript: str, backend: Backend, rubric: Rubric, options: ScoreOptions | None = None
) -> ScoreResult:
    """Rate one transcript; raises ContextOverflowError or InvalidOutputError rather than guess."""
    scoring = TranscriptScoring(transcript, backend, rubric, options)
    while True:
        result = scoring.take(backend.generate(scoring.messages, rubric.json_schema, scoring.next_options()))
        if result is not None:
            return result


class TranscriptScoring:
    """One transcript's way to a rating, for whoever runs the generations (`score_transcript` one at a time,
    `hcp.scoring.parallel` several together): the prompt counted and checked before anything is sent (here, on
    construction), then each answer checked after (`take`), and retried with a new seed until one is valid or
    the retries are spent."""

    def __init__(self, transcript: str, backend: Backend, rubric: Rubric, options: ScoreOptions | None = None
                 ) -> None:
        self.backend, self.rubric = backend, rubric
        self.options = options or ScoreOptions()
        self.text = normalize_transcript(transcript)
        if not self.text:
            raise DataError("the transcript is empty — give the conversation text ('RD: ... Patient: ...')")
        self.messages = rubric.messages(self.text)
        self.num_predict = answer_budget(rubric, self.options.answer_tokens)
        self.num_ctx = self.options.num_ctx
        trained = backend.context_length()
        if trained and self.num_ctx > trained:
            log.info("num_ctx %d is over the model's trained context %d; using %d", self.num_ctx, trained, trained)
            self.num_ctx = trained
        self.counted = backend.count_prompt_tokens(self.messages)
        check_fits(self.counted, self.num_predict, self.num_ctx, len(self.text))
        self.attempt = 0
        self.started: float | None = None
        self.failures: list[tuple[Generation, str]] = []

    def next_options(self) -> GenerateOptions:
        """How to generate the next attempt: a retry gets a new seed, and a temperature that can change it."""
        if self.started is None:
            self.started = time.perf_counter()
        options = self.options
        temperature = options.temperature if self.attempt == 0 else max(options.temperature, RETRY_MIN_TEMPERATURE)
        return GenerateOptions(temperature=temperature, seed=options.seed + self.attempt, num_ctx=self.num_ctx,
                               num_predict=self.num_predict, repeat_penalty=options.repeat_penalty)

    @property
    def seconds(self) -> float:
        return 0.0 if self.started is None else time.perf_counter() - self.started

    def take(self, generation: Generation) -> ScoreResult | None:
        """The rating, once an answer is valid; None when the next attempt should run; raises when the context
        filled up, or (InvalidOutputError) when no attempt is left."""
        attempt, text, num_ctx, rubric = self.attempt, self.text, self.num_ctx, self.rubric
        self.attempt += 1
        if generation.prompt_tokens + generation.output_tokens > num_ctx:
            # More than the context holds: the engine must have dropped part of the prompt to make room. Exactly
            # num_ctx is a prompt that fit (check_fits allows prompt + budget == num_ctx) and an answer that ran to
            # its budget: a cut-off answer, retried below like any other.
            raise ContextOverflowError(
                f"the model's context ({num_ctx} tokens) filled up while rating a {len(text)}-character transcript "
                f"({generation.prompt_tokens} prompt + {generation.output_tokens} answer tokens) — raise num_ctx")
        problem = _problem(generation, rubric, self.num_predict)
        if problem is None:
            rating = rubric.validate_json(generation.text).model_dump()
            checks = check_evidence(rating, text, tuple(rubric.evidence_keys))
            problem = first_unverified(checks) if self.options.strict_evidence else None
        if problem is None:
            log.info("rated a %d-character transcript: %d prompt + %d output tokens, attempt %d",
                     len(text), generation.prompt_tokens, generation.output_tokens, attempt + 1)
            confidence = confidence_fields(rating, generation, rubric)
            # A person should look twice at a low-confidence score, and at a score resting on quotes that are not
            # in the transcript.
            reasons = [*confidence.pop("review_reasons", []),
                       *(f"unverified_evidence:{dim}" for dim, items in checks.items()
                         if any(not c.verified for c in items))]
            return ScoreResult(
                rating=rating, overall=rubric.overall(rating), model=self.backend.model, backend=self.backend.name,
                prompt_tokens=generation.prompt_tokens or self.counted, output_tokens=generation.output_tokens,
                seconds=round(self.seconds, 3), attempts=attempt + 1,
                evidence={dim: [c.to_json() for c in items] for dim, items in checks.items()},
                evidence_verified=all(c.verified for items in checks.values() for c in items) if checks else None,
                review_reasons=reasons, model_note=self.backend.model_note(), **confidence,
            )
        log.warning("attempt %d gave an invalid answer (%s); %s", attempt + 1, problem,
                    "retrying with a new seed" if attempt < self.options.max_retries else "giving up")
        self.failures.append((generation, problem))
        if attempt < self.options.max_retries:
            return None
        raise InvalidOutputError(_save_failures(self.failures, self.options.raw_output_dir, self.backend,
                                                self.num_predict))


def confidence_fields(rating: dict[str, Any], generation: Generation, rubric: Rubric) -> dict[str, Any]:
    """ScoreResult's distribution, expected scores, confidences, interval and review reasons."""
    summary = None
    if generation.score_distribution is not None:
        weights = {d.name: d.weight for d in rubric.dimensions}
        summary = summarize(rating, generation.score_distribution, weights,
                            threshold=rubric.scoring.confidence_threshold, level=rubric.scoring.interval_level)
    if summary is None:
        log.info("the backend gave no score probabilities: the rating has no confidence and is not flagged by it")
        return {}
    return {"distribution": summary.distribution, "expected": summary.expected, "confidence": summary.confidence,
            "overall_expected": summary.overall_expected, "overall_interval": summary.overall_interval,
            "review_reasons": summary.review_reasons}


def _problem(generation: Generation, rubric: Rubric, budget: int) -> str | None:
    """What is wrong with an answer, in words that never quote it: the model may have copied the transcript into
    any string, or into a key of its own (without a grammar), so only the schema's own field names are named."""
    if generation.done_reason == "length":
        return (f"cut off after {generation.output_tokens} tokens (done_reason 'length'; the answer budget is "
                f"{budget})")
    try:
        rubric.validate_json(generation.text)
    except ValidationError as exc:
        first = exc.errors()[0]
        fields = rubric.json_schema["properties"]
        where = ".".join(str(p) if isinstance(p, int) or p in fields else "(a key not in the schema)"
                         for p in first["loc"]) or "answer"
        return f"{where}: {first['msg']}"
    return None


def _save_failures(failures: list[tuple[Generation, str]], folder: Path | None, backend: Backend,
                   budget: int) -> str:
    """Keep the invalid answers (they may quote the transcript) for the user alone: beside the command's output,
    or in the per-user state folder — never in the current folder, which others may read."""
    folder = state_dir() if folder is None else folder
    path = folder / f"hcp-invalid-output-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6:06d}.json"
    record = {
        "model": backend.model, "backend": backend.name,
        "attempts": [{"problem": p, "done_reason": g.done_reason, "output": g.text} for g, p in failures],
    }
    atomic_write_text(path, json.dumps(record, ensure_ascii=False, indent=2), private=True)
    advice = "try another --seed, or a stronger or fine-tuned model"
    if any(UNVERIFIED in p for _, p in failures):
        advice += (", or rate without --strict-evidence (scoring.strict_evidence) to get the rating with its "
                   "unverified quotes marked")
    if any(g.done_reason == "length" for g, _ in failures):
        advice = f"raise model.answer_tokens (now {budget}) if the model's answers run longer, or {advice}"
    return (f"the model gave no valid rating in {len(failures)} attempt(s) (last: {failures[-1][1]}); "
            f"raw answers saved to {path} — {advice}")
