"""What the server holds: the backend (loaded once), its queue, the reviews, the batches and the metrics."""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import replace
from typing import Any

from hcp.batch.run import keep_model_loaded
from hcp.rubric import Rubric
from hcp.scoring.backends import Backend
from hcp.scoring.score import ScoreOptions, ScoreResult, score_transcript
from hcp.serve.batches import Batches
from hcp.serve.metrics import Metrics
from hcp.serve.review_queue import ReviewQueue
from hcp.serve.reviewers import Registry
from hcp.serve.reviews import Reviews
from hcp.serve.scheduler import Scheduler
from hcp.serve.settings import ServeSettings


def open_reviewers(settings: ServeSettings, rubric: Rubric) -> tuple[Registry | None, ReviewQueue | None]:
    """The reviewers file and the review queue hcp serve was given, read and checked (a ServeError naming the
    option and what to do, for `hcp serve` to say before the model loads)."""
    registry = None if settings.reviewers is None else Registry(settings.reviewers)
    queue = None
    if settings.queue_from is not None and settings.queue_input is not None:
        queue = ReviewQueue(settings.queue_from, settings.queue_input, rubric, settings.random_share,
                            settings.queue_seed)
    return registry, queue


class Service:
    def __init__(self, backend: Backend, rubric: Rubric, options: ScoreOptions, settings: ServeSettings) -> None:
        settings.check()
        settings.make_folders()
        self.registry, self.review_queue = open_reviewers(settings, rubric)
        self.backend, self.rubric, self.settings = backend, rubric, settings
        self.options = replace(options, raw_output_dir=settings.work_dir)
        # One llama.cpp instance already uses every core: it rates one transcript at a time.
        workers = 1 if backend.name == "llama-cpp" else settings.parallel
        self.scheduler = Scheduler(workers, settings.queue)
        self.metrics = Metrics(self.scheduler, backend.name, backend.model)
        self.reviews = Reviews(settings.reviews, rubric)
        self.batches = Batches(settings.batch_dir, backend, rubric, self.options, self.scheduler)
        keep_model_loaded(backend)  # Ollama: keep the model loaded between requests
        self.started = time.time()

    def score(self, transcript: str, seed: int | None = None) -> Future[ScoreResult]:
        """Queue one rating (QueueFullError when the queue is full)."""
        options = self.options if seed is None else replace(self.options, seed=seed)
        return self.scheduler.submit(lambda: score_transcript(transcript, self.backend, self.rubric, options))

    def health(self) -> dict[str, Any]:
        scheduler = self.scheduler
        return {
            "status": "ok",
            "ready": scheduler.has_room,  # a /score now would be queued rather than refused
            "backend": self.backend.name,
            "model": self.backend.model,
            "rubric": self.rubric.digest,
            "queue": {"waiting": scheduler.waiting, "running": scheduler.running, "workers": scheduler.workers,
                      "limit": scheduler.max_waiting, "peak": scheduler.peak_waiting},
            "uptime_seconds": round(time.time() - self.started, 1),
        }

    def close(self) -> None:
        """Stop the queue and release the reviews file; the backend stays with whoever opened it."""
        self.scheduler.close()
        self.reviews.close()
