"""What the server holds: the model versions (each loaded once), their queue, the reviews, the batches and the
metrics."""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any

from hcp.batch.run import ERROR_KINDS, keep_model_loaded
from hcp.errors import HcpError
from hcp.rubric import Rubric
from hcp.scoring.backends import Backend
from hcp.scoring.score import ScoreOptions, ScoreResult, score_transcript
from hcp.serve.batches import Batches
from hcp.serve.metrics import Metrics
from hcp.serve.review_queue import ReviewQueue
from hcp.serve.reviewers import Registry
from hcp.serve.reviews import Reviews
from hcp.serve.scheduler import Scheduler
from hcp.serve.settings import ServeError, ServeSettings
from hcp.serve.shadow import Shadow
from hcp.serve.versions import CANARY, CURRENT, SHADOW, Deployed, goes_to_canary


@dataclass(frozen=True)
class Rated:
    """A user's rating and the version that made it."""

    version: str
    result: ScoreResult

    def to_json(self) -> dict[str, Any]:
        return {**self.result.to_json(), "model_version": self.version}


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
    def __init__(self, current: Backend | Deployed, rubric: Rubric, options: ScoreOptions, settings: ServeSettings,
                 canary: Deployed | None = None, shadow: Deployed | None = None) -> None:
        settings.check()
        if not isinstance(current, Deployed):
            current = Deployed(current.model, current)
        check_versions(current, canary, shadow, settings, rubric)
        settings.make_folders()
        self.current, self.canary = current, canary
        self.registry, self.review_queue = open_reviewers(settings, rubric)
        self.backend, self.rubric, self.settings = current.backend, rubric, settings
        self.options = replace(options, raw_output_dir=settings.work_dir)
        # One llama.cpp instance already uses every core: it rates one transcript at a time (whatever the version).
        embedded = any(v.backend.name == "llama-cpp" for v in (current, canary, shadow) if v is not None)
        workers = 1 if embedded else settings.parallel
        self.scheduler = Scheduler(workers, settings.queue)
        self.metrics = Metrics(self.scheduler, current.backend.name, current.backend.model)
        share = settings.canary_share if canary is not None else 0.0
        for version, role, rates in ((current, CURRENT, 1.0 - share), (canary, CANARY, share), (shadow, SHADOW, 0.0)):
            if version is not None:
                self.metrics.track(version.label, role, version.backend.name, version.backend.model, rates, rubric,
                                   version.reference, settings.drift_window)
        self.reviews = Reviews(settings.reviews, rubric)
        rating = [v for v in (current, canary) if v is not None]
        self.batches = Batches(settings.batch_dir, rating, self.version_for, rubric, self.options, self.scheduler,
                               on_rated=self.offer_to_shadow)
        self.shadow = (Shadow(shadow, self.scheduler, rubric, self.options, self.metrics, settings.shadow_backlog,
                              idle=self.idle) if shadow is not None else None)
        for version in (current, canary, shadow):
            if version is not None:
                keep_model_loaded(version.backend)  # Ollama: keep the model loaded between requests
        self.started = time.time()

    def idle(self) -> bool:
        """No request running or waiting for the model, and no batch being rated (a batch's transcripts go
        through the queue one by one, with moments of an empty queue between them)."""
        return self.scheduler.idle and not self.batches.running

    def version_for(self, transcript: str) -> Deployed:
        """The version that rates `transcript` for users: the canary for its share of content ids, else the
        current one. The same transcript always gets the same version."""
        canary = self.canary
        if canary is not None and goes_to_canary(transcript, canary.label, self.settings.canary_share):
            return canary
        return self.current

    def score(self, transcript: str, seed: int | None = None) -> Future[Rated]:
        """Queue one rating (QueueFullError when the queue is full)."""
        options = self.options if seed is None else replace(self.options, seed=seed)
        version = self.version_for(transcript)

        def rate() -> Rated:
            try:
                result = score_transcript(transcript, version.backend, self.rubric, options)
            except HcpError as exc:
                kind = next(k for cls, k in ERROR_KINDS if isinstance(exc, cls))
                self.metrics.version_rated(version.label, self.metrics.roles[version.label],
                                           {"status": "failed", "error": kind})
                raise
            self.offer_to_shadow(transcript, version.label, result.rating)
            return Rated(version.label, result)

        return self.scheduler.submit(rate)

    def offer_to_shadow(self, transcript: str, version: str, rating: dict[str, Any]) -> None:
        if self.shadow is not None:
            self.shadow.offer(transcript, version, rating)

    def versions(self) -> dict[str, Any]:
        """The versions rating now, for /health."""
        share = self.settings.canary_share if self.canary is not None else 0.0
        found: dict[str, Any] = {CURRENT: {"version": self.current.label, "share": 1.0 - share}}
        if self.canary is not None:
            found[CANARY] = {"version": self.canary.label, "share": share}
        if self.shadow is not None:
            found[SHADOW] = {"version": self.shadow.version.label, "waiting": self.shadow.waiting}
        return found

    def health(self) -> dict[str, Any]:
        scheduler = self.scheduler
        return {
            "status": "ok",
            "ready": scheduler.has_room,  # a /score now would be queued rather than refused
            "backend": self.backend.name,
            "model": self.backend.model,
            "versions": self.versions(),
            "rubric": self.rubric.digest,
            "queue": {"waiting": scheduler.waiting, "running": scheduler.running, "workers": scheduler.workers,
                      "limit": scheduler.max_waiting, "peak": scheduler.peak_waiting},
            "uptime_seconds": round(time.time() - self.started, 1),
        }

    def agreement(self) -> dict[str, Any]:
        """The reviewers' agreement with each version, and the shadow's with the versions users saw."""
        found = self.reviews.agreement()
        if self.shadow is not None:
            found["shadow"] = self.shadow.agreement()
        return found

    def close(self) -> None:
        """Stop the shadow and the queue and release the reviews file; the backends stay with whoever opened
        them."""
        if self.shadow is not None:
            self.shadow.close()
        self.scheduler.close()
        self.reviews.close()


def check_rollout(settings: ServeSettings, labels: dict[str, str | None]) -> None:
    """A canary share only with a canary, and one label per version: `labels` maps each option (--model,
    --canary, --shadow) to the label of the version it names, or None. Checked by the CLI before any model
    loads, and by the service."""
    if settings.canary_share > 0 and labels.get("--canary") is None:
        raise ServeError(f"--canary-share {settings.canary_share:g} without --canary — name the version to try "
                         "(--canary NAME:N), or leave the share out")
    given = [(option, label) for option, label in labels.items() if label is not None]
    for number, (option, label) in enumerate(given):
        for other, earlier in given[:number]:
            if label == earlier:
                raise ServeError(f"{option} {label} is the {other} version already — give another version to try")


def check_versions(current: Deployed, canary: Deployed | None, shadow: Deployed | None, settings: ServeSettings,
                   rubric: Rubric) -> None:
    """`check_rollout`, and reference distributions that fit the rubric."""
    versions = {"--model": current, "--canary": canary, "--shadow": shadow}
    check_rollout(settings, {option: v.label if v else None for option, v in versions.items()})
    for option, version in versions.items():
        for dim, counts in ((version.reference or {}) if version else {}).items():
            if dim not in rubric.names or len(counts) != len(rubric.scores) or min(counts, default=0) < 0:
                raise ServeError(f"{option} {version.label}: its score_distribution.{dim} does not fit the rubric "
                                 f"(give a count per score {rubric.score_min}-{rubric.score_max} of one of its "
                                 f"dimensions: {', '.join(rubric.names)})")
