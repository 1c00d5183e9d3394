"""Scoring many transcripts at once on an engine that decodes several answers together (the embedded backend's
`hcp batch --parallel N`).

Each transcript keeps the guarantees of `score_transcript`, through the same `TranscriptScoring`: its prompt
counted and checked before anything is sent, each answer validated, an invalid or cut-off one retried with a new
seed (in the slot it just left) or given up on. Outcomes come back as each transcript is done, in that order.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Generator, Iterable
from typing import TypeVar

from hcp.errors import HcpError
from hcp.rubric import Rubric
from hcp.scoring.backends import Backend
from hcp.scoring.score import ScoreOptions, ScoreResult, TranscriptScoring

log = logging.getLogger(__name__)

Key = TypeVar("Key")  # what the caller tells its transcripts apart by


def score_parallel(
    transcripts: Iterable[tuple[Key, str]], backend: Backend, rubric: Rubric, options: ScoreOptions, parallel: int
) -> Generator[tuple[Key, ScoreResult | HcpError, float], None, None]:
    """(key, rating or the error that stopped it, seconds) for every transcript, `parallel` decoded at a time.

    Every prompt is counted and checked first: those that cannot be rated (empty, too long) come back at once,
    and the engine's context is sized for the longest of the rest. An error of the engine itself (the context
    cannot be allocated, a decode fails) is raised: the transcripts in flight then have no outcome."""
    waiting: deque[tuple[Key, TranscriptScoring]] = deque()
    for key, text in transcripts:
        try:
            waiting.append((key, TranscriptScoring(text, backend, rubric, options)))
        except HcpError as exc:
            yield key, exc, 0.0
    if not waiting:
        return
    context = max(s.counted for _, s in waiting) + waiting[0][1].num_predict
    engine = backend.parallel(min(parallel, len(waiting)), context)
    busy: dict[int, tuple[Key, TranscriptScoring]] = {}

    def start(slot: int, key: Key, scoring: TranscriptScoring) -> None:
        busy[slot] = key, scoring
        engine.start(slot, scoring.messages, rubric.json_schema, scoring.next_options())

    try:
        while busy or waiting:
            for slot in range(engine.slots):
                if slot not in busy and waiting:
                    start(slot, *waiting.popleft())
            for slot, generation in engine.step():
                key, scoring = busy.pop(slot)
                try:
                    result = scoring.take(generation)
                except HcpError as exc:
                    yield key, exc, scoring.seconds
                    continue
                if result is None:  # invalid: the next attempt, with a new seed, in the same slot
                    start(slot, key, scoring)
                else:
                    yield key, result, result.seconds
    finally:
        engine.close()
