"""Prometheus metrics: the training guide's monitoring (requests, failures by reason, latency, tokens).

One registry per app, so that tests and several apps in one process do not share counters. Labels take a few
fixed values (the route's path template, the status code, the failure's kind, the versions the server was
started with, the rubric's dimensions), never anything from a request.

Per model version (`hcp_version_*`, labelled by the version and its role: current, canary or shadow): ratings
and failures, the share that needs review, each dimension's score and confidence as histograms, and drift:
`hcp_drift_psi`, the population stability index of the version's last `drift_window` scores of a dimension
against its scores on its validation set (the registry manifest's `score_distribution`), for versions that
have one. An alert rule such as `hcp_drift_psi > 0.25` fires when the transcripts coming in no longer look like
the ones the version was checked on.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from hcp.rubric import Rubric
from hcp.serve.scheduler import Scheduler
from hcp.serve.versions import Drift

# Seconds: a rating takes from about a second (a small model on a GPU) to minutes (a 7B model on a CPU).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
CONFIDENCE_BUCKETS = (0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)  # the probability of the chosen score
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self, scheduler: Scheduler, backend: str, model: str) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("hcp_requests", "HTTP requests by route and status code.",
                                ["route", "method", "status"], registry=registry)
        self.failures = Counter("hcp_failures", "Requests and transcripts that failed, by reason.", ["reason"],
                                registry=registry)
        self.latency = Histogram("hcp_request_duration_seconds", "Time to answer a request, by route.",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=registry)
        self.rating_seconds = Histogram("hcp_rating_seconds", "Time the model took to rate one transcript.",
                                        ["source"], buckets=LATENCY_BUCKETS, registry=registry)
        self.ratings = Counter("hcp_ratings", "Transcripts rated, by source (score, batch) and status (ok, failed).",
                               ["source", "status"], registry=registry)
        self.tokens = Counter("hcp_tokens", "Tokens processed, by kind (prompt, output).", ["kind"],
                              registry=registry)
        waiting = Gauge("hcp_queue_waiting", "Ratings waiting for the model.", registry=registry)
        waiting.set_function(lambda: scheduler.waiting)
        running = Gauge("hcp_queue_running", "Ratings in progress.", registry=registry)
        running.set_function(lambda: scheduler.running)
        Gauge("hcp_queue_limit", "Ratings that may wait before requests are refused with 503.",
              registry=registry).set(scheduler.max_waiting)
        Gauge("hcp_model_info", "The model being served.", ["backend", "model"],
              registry=registry).labels(backend, model).set(1)
        labels = ["version", "role"]
        self.version_info = Gauge("hcp_version_info", "The model versions the server rates with, by role (current, "
                                  "canary, shadow) and the share of transcripts each rates for users.",
                                  [*labels, "backend", "model"], registry=registry)
        self.version_ratings = Counter("hcp_version_ratings", "Transcripts rated, by model version, its role and "
                                       "status (ok, failed).", [*labels, "status"], registry=registry)
        self.version_failures = Counter("hcp_version_failures", "Transcripts a version failed to rate, by reason.",
                                        [*labels, "reason"], registry=registry)
        self.version_needs_review = Counter("hcp_version_needs_review", "Ratings flagged for a person to review, "
                                            "by version (divide by hcp_version_ratings_total{status=\"ok\"} for the "
                                            "share).", labels, registry=registry)
        self.version_needs_review_share = Gauge("hcp_version_needs_review_share", "Share of a version's ratings "
                                                "flagged for review, so far.", labels, registry=registry)
        self.version_scores: Histogram | None = None  # made by `track`, once the rubric's levels are known
        self.version_confidence: Histogram | None = None
        self.drift = Gauge("hcp_drift_psi", "Population stability index of the version's last N scores of a "
                           "dimension against its scores on its validation set (0.1: moderate shift, 0.25: large).",
                           [*labels, "dimension"], registry=registry)
        self.drift_ratings = Gauge("hcp_drift_window_ratings", "Ratings in the window the PSI is computed over.",
                                   labels, registry=registry)
        self.shadow_dropped = Counter("hcp_shadow_dropped", "Transcripts the shadow version did not rate, by reason "
                                      "(backlog_full: more waited than shadow_backlog; busy: a request came "
                                      "while it was rating).", ["reason"], registry=registry)
        self.roles: dict[str, str] = {}  # version label -> role
        self._drifts: dict[str, Drift] = {}
        self._counts: dict[str, list[int]] = {}  # version label -> [ok ratings, needing review]
        self._rubric: Rubric | None = None
        self._lock = threading.Lock()

    def track(self, label: str, role: str, backend: str, model: str, share: float, rubric: Rubric,
              reference: dict[str, list[int]] | None, window: int) -> None:
        """Count a version's ratings under its own label; with a reference distribution, export its drift."""
        if self.version_scores is None:
            levels = [float(score) for score in rubric.scores]
            self.version_scores = Histogram("hcp_version_score", "Each dimension's score, by version.",
                                            ["version", "role", "dimension"], buckets=levels, registry=self.registry)
            self.version_confidence = Histogram("hcp_version_confidence", "Each dimension's confidence (the "
                                                "probability of the chosen score), by version.",
                                                ["version", "role", "dimension"], buckets=CONFIDENCE_BUCKETS,
                                                registry=self.registry)
        self._rubric = rubric
        self.roles[label] = role
        self._counts[label] = [0, 0]
        self.version_info.labels(label, role, backend, model).set(share)
        for status in ("ok", "failed"):
            self.version_ratings.labels(label, role, status)  # exported at 0 from the start
        if reference is not None:
            drift = self._drifts[label] = Drift(reference, rubric.scores, window)
            self.drift_ratings.labels(label, role).set_function(
                lambda d=drift: max((len(r) for r in d.recent.values()), default=0))
            for dim in reference:
                self.drift.labels(label, role, dim).set_function(lambda d=drift, n=dim: d.index(n))

    def version_rated(self, label: str, role: str, record: dict) -> None:
        """Count one transcript's result under the version that made it."""
        failed = record.get("status") == "failed"
        self.version_ratings.labels(label, role, "failed" if failed else "ok").inc()
        if failed:
            self.version_failures.labels(label, role, record.get("error", "error")).inc()
            return
        with self._lock:  # users' ratings end in several threads
            counts = self._counts.setdefault(label, [0, 0])
            counts[0] += 1
            counts[1] += bool(record.get("needs_review"))
            self.version_needs_review_share.labels(label, role).set(counts[1] / counts[0])
        if record.get("needs_review"):
            self.version_needs_review.labels(label, role).inc()
        rating, confidence = record.get("rating") or {}, record.get("confidence") or {}
        if self._rubric is not None and self.version_scores is not None and self.version_confidence is not None:
            for dim in self._rubric.names:
                if isinstance(rating.get(dim), int):
                    self.version_scores.labels(label, role, dim).observe(rating[dim])
                if isinstance(confidence.get(dim), int | float):
                    self.version_confidence.labels(label, role, dim).observe(confidence[dim])
        if label in self._drifts:
            self._drifts[label].add(rating)

    def rated(self, source: str, record: dict) -> None:
        """Count one transcript's result: a ScoreResult's JSON or a batch record."""
        failed = record.get("status") == "failed"
        self.ratings.labels(source, "failed" if failed else "ok").inc()
        self.rated_by_version(record)
        if failed:
            self.failures.labels(record.get("error", "error")).inc()
            return
        self.tokens.labels("prompt").inc(record.get("prompt_tokens", 0))
        self.tokens.labels("output").inc(record.get("output_tokens", 0))
        self.rating_seconds.labels(source).observe(record.get("seconds", 0.0))

    def rated_by_version(self, record: dict) -> None:
        """Count a user's rating (a /score answer or a batch record) under its `model_version`."""
        label = record.get("model_version")
        if label in self.roles:
            self.version_rated(label, self.roles[label], record)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
