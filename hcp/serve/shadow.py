"""The shadow version: it rates again the transcripts users had rated, for comparison only, when the server has
nothing else to do. Users always get the version that rated for them; the shadow's ratings go to /metrics and
to the pairs whose agreement /reviews/agreement reports, and nowhere else (memory only: no file, no log holds
them).

Never in a user's way: a transcript waits for the shadow in a small backlog (`shadow_backlog`; when it is full
the transcript is dropped and counted, `hcp_shadow_dropped_total{reason="backlog_full"}`); a shadow rating starts
only when no request is running or waiting and no batch is being rated (`Scheduler.submit_when_idle`), takes no
room in the queue, and gives up between its model calls as soon as a request comes (`reason="busy"`). One runs
at a time. A request that arrives while a shadow's model call runs waits for that one call on a backend that
rates one at a time (the embedded model): llama.cpp cannot be stopped mid-answer from here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hcp.batch.run import ERROR_KINDS
from hcp.errors import HcpError
from hcp.rubric import Rubric
from hcp.scoring.backends import Backend, GenerateOptions, Generation, Messages
from hcp.scoring.score import ScoreOptions, score_transcript
from hcp.serve.compare import paired_agreement
from hcp.serve.metrics import Metrics
from hcp.serve.scheduler import Scheduler
from hcp.serve.versions import SHADOW, Deployed

log = logging.getLogger(__name__)

IDLE_POLL = 0.05  # seconds between looks at whether the server is idle
MAX_PAIRS = 2000  # the most recent (served, shadow) pairs kept for their agreement


class Yielded(Exception):  # noqa: N818 - not an error: a request came, the shadow steps aside
    """A request arrived while the shadow was rating: it gives way."""


@dataclass(frozen=True)
class Pair:
    """What the version users saw and the shadow gave one transcript: the versions and their scores (no text)."""

    served: str
    served_scores: dict[str, float]
    shadow_scores: dict[str, float]


class YieldingBackend(Backend):
    """The shadow's backend: before each model call, steps aside (Yielded) unless the server is `idle`."""

    def __init__(self, backend: Backend, idle: Callable[[], bool]) -> None:
        self.name, self.model = backend.name, backend.model
        self._backend, self._idle = backend, idle

    def _check(self) -> None:
        if not self._idle():
            raise Yielded

    def count_prompt_tokens(self, messages: Messages) -> int:
        self._check()
        return self._backend.count_prompt_tokens(messages)

    def generate(self, messages: Messages, schema: dict[str, Any], options: GenerateOptions) -> Generation:
        self._check()
        return self._backend.generate(messages, schema, options)

    def context_length(self) -> int | None:
        return self._backend.context_length()

    def model_note(self) -> str | None:
        return self._backend.model_note()


class Shadow:
    def __init__(self, version: Deployed, scheduler: Scheduler, rubric: Rubric, options: ScoreOptions,
                 metrics: Metrics, backlog: int, idle: Callable[[], bool]) -> None:
        """`idle`: whether users' work leaves the model free (no request admitted, no batch running)."""
        self.version, self.scheduler, self.rubric, self.options = version, scheduler, rubric, options
        self.metrics, self.backlog, self.idle = metrics, backlog, idle
        self.backend = YieldingBackend(version.backend, idle)
        self.pairs: deque[Pair] = deque(maxlen=MAX_PAIRS)
        self._waiting: deque[tuple[str, str, dict[str, float]]] = deque()
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="hcp-shadow", daemon=True)
        self._thread.start()

    def offer(self, transcript: str, served: str, rating: dict[str, Any]) -> None:
        """A transcript a user's version rated (`served`, its `rating`): rate it again when the server is idle,
        or drop it (counted) if the backlog is full. Never blocks."""
        scores = self._scores(rating)
        with self._changed:
            if self._closed or len(self._waiting) >= self.backlog:
                self.metrics.shadow_dropped.labels("backlog_full").inc()
                return
            self._waiting.append((transcript, served, scores))
            self._changed.notify_all()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _scores(self, rating: dict[str, Any]) -> dict[str, float]:
        return {**{name: rating[name] for name in self.rubric.names}, "overall": self.rubric.overall(rating)}

    def _work(self) -> None:
        while True:
            with self._changed:
                while not self._waiting and not self._closed:
                    self._changed.wait()
                if self._closed:
                    return
            future = None
            while future is None:  # wait for a moment with no request running or waiting
                if self._closed:
                    return
                future = self.scheduler.submit_when_idle(self._rate_next) if self.idle() else None
                if future is None:
                    time.sleep(IDLE_POLL)
            try:
                future.result()
            except Exception as exc:  # a bug: its message may hold data; the shadow goes on with the next
                log.error("shadow rating stopped by %s", type(exc).__name__)

    def _rate_next(self) -> None:
        with self._changed:
            if not self._waiting:
                return
            transcript, served, served_scores = self._waiting.popleft()
        label = self.version.label
        started = time.perf_counter()
        try:
            result = score_transcript(transcript, self.backend, self.rubric, self.options)
        except Yielded:
            self.metrics.shadow_dropped.labels("busy").inc()
            return
        except HcpError as exc:
            kind = next(k for cls, k in ERROR_KINDS if isinstance(exc, cls))
            self.metrics.version_rated(label, SHADOW, {"status": "failed", "error": kind})
            return
        record = {**result.to_json(), "seconds": round(time.perf_counter() - started, 3)}
        self.metrics.version_rated(label, SHADOW, record)
        self.pairs.append(Pair(served, served_scores, self._scores(result.rating)))

    def agreement(self) -> list[dict[str, Any]]:
        """For each version users saw, its agreement with the shadow on the same transcripts (the shadow against
        it), per dimension and overall, with 95% bootstrap intervals."""
        pairs = list(self.pairs)
        names = [*self.rubric.names, "overall"]
        found = []
        for served in sorted({p.served for p in pairs}):
            mine = [p for p in pairs if p.served == served]
            found.append({"versions": [served, self.version.label], "n": len(mine),
                          "metrics": paired_agreement([p.served_scores for p in mine],
                                                      [p.shadow_scores for p in mine], names, self.rubric.scores)})
        return found

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._waiting.clear()
            self._changed.notify_all()
        self._thread.join(timeout=5)
