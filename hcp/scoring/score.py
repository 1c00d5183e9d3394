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

from hcp.errors import ContextOverflowError, DataError, InvalidOutputError
from hcp.rubric import Rubric, normalize_transcript
from hcp.scoring.backends import Backend, GenerateOptions, Generation

log = logging.getLogger(__name__)

RETRY_MIN_TEMPERATURE = 0.5  # a retry at temperature 0 would give the same answer again


@dataclass(frozen=True)
class ScoreOptions:
    seed: int = 42
    temperature: float = 0.0
    num_ctx: int = 8192
    repeat_penalty: float = 1.1
    max_retries: int = 2
    raw_output_dir: Path = field(default_factory=Path.cwd)  # where invalid answers are kept for the user


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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def answer_budget(rubric: Rubric) -> int:
    """Output tokens to allow: the longest answer the schema permits (tokens are rarely shorter than a
    character, so its length in characters bounds its length in tokens)."""
    return rubric.max_answer_chars


def check_fits(prompt_tokens: int, num_predict: int, num_ctx: int, transcript_chars: int) -> None:
    if prompt_tokens + num_predict > num_ctx:
        raise ContextOverflowError(
            f"transcript too long for the context: {transcript_chars} characters make a prompt of {prompt_tokens} "
            f"tokens, and with room for the answer ({num_predict} tokens) that needs {prompt_tokens + num_predict}, "
            f"over num_ctx {num_ctx} — raise model.num_ctx in your config (or --num-ctx), or use a model with a "
            "longer context; hcp never rates a transcript the model cannot read whole")


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
        self.num_predict = answer_budget(rubric)
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
        attempt, text, num_ctx = self.attempt, self.text, self.num_ctx
        self.attempt += 1
        if generation.prompt_tokens + generation.output_tokens >= num_ctx:
            # The context filled up: the engine may have dropped part of the prompt to make room.
            raise ContextOverflowError(
                f"the model's context ({num_ctx} tokens) filled up while rating a {len(text)}-character transcript "
                f"({generation.prompt_tokens} prompt + {generation.output_tokens} answer tokens) — raise num_ctx")
        problem = _problem(generation, self.rubric)
        if problem is None:
            rating = self.rubric.validate_json(generation.text).model_dump()
            log.info("rated a %d-character transcript: %d prompt + %d output tokens, attempt %d",
                     len(text), generation.prompt_tokens, generation.output_tokens, attempt + 1)
            return ScoreResult(
                rating=rating, overall=self.rubric.overall(rating), model=self.backend.model,
                backend=self.backend.name, prompt_tokens=generation.prompt_tokens or self.counted,
                output_tokens=generation.output_tokens, seconds=round(self.seconds, 3), attempts=attempt + 1,
            )
        log.warning("attempt %d gave an invalid answer (%s); %s", attempt + 1, problem,
                    "retrying with a new seed" if attempt < self.options.max_retries else "giving up")
        self.failures.append((generation, problem))
        if attempt < self.options.max_retries:
            return None
        raise InvalidOutputError(_save_failures(self.failures, self.options.raw_output_dir, self.backend))


def _problem(generation: Generation, rubric: Rubric) -> str | None:
    if generation.done_reason == "length":
        return f"cut off after {generation.output_tokens} tokens (done_reason 'length')"
    try:
        rubric.validate_json(generation.text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "answer"
        return f"{where}: {first['msg']}"
    return None


def _save_failures(failures: list[tuple[Generation, str]], folder: Path, backend: Backend) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"hcp-invalid-output-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6:06d}.json"
    record = {
        "model": backend.model, "backend": backend.name,
        "attempts": [{"problem": p, "done_reason": g.done_reason, "output": g.text} for g, p in failures],
    }
    path.write_text(json.dumps(record, ensure_ascii=False, indent=2), encoding="utf-8")
    return (f"the model gave no valid rating in {len(failures)} attempt(s) (last: {failures[-1][1]}); "
            f"raw answers saved to {path} — try another --seed, or a stronger or fine-tuned model")
