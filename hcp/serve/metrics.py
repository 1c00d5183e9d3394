"""Prometheus metrics: the training guide's monitoring (requests, failures by reason, latency, tokens).

One registry per app, so that tests and several apps in one process do not share counters. Labels take a few
fixed values (the route's path template, the status code, the failure's kind), never anything from a request.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from hcp.serve.scheduler import Scheduler

# Seconds: a rating takes from about a second (a small model on a GPU) to minutes (a 7B model on a CPU).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
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

    def rated(self, source: str, record: dict) -> None:
        """Count one transcript's result: a ScoreResult's JSON or a batch record."""
        failed = record.get("status") == "failed"
        self.ratings.labels(source, "failed" if failed else "ok").inc()
        if failed:
            self.failures.labels(record.get("error", "error")).inc()
            return
        self.tokens.labels("prompt").inc(record.get("prompt_tokens", 0))
        self.tokens.labels("output").inc(record.get("output_tokens", 0))
        self.rating_seconds.labels(source).observe(record.get("seconds", 0.0))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
