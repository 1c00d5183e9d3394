"""The queue in front of the model: at most `workers` ratings at once, at most `max_waiting` waiting.

The embedded backend is one llama.cpp instance whose threads already use every core, so it gets one worker:
never two llama.cpp runs at once. Ollama gets `--parallel` workers (match the daemon's OLLAMA_NUM_PARALLEL).
A request that finds the queue full is refused at once (503 with Retry-After) rather than kept waiting without
bound; a batch waits for room instead, one transcript at a time. A job still waiting when its client goes away
is cancelled and never runs.

Background work (the shadow version's ratings) runs only when no request is admitted (`submit_when_idle`) and
never counts against the queue: a request that arrives meanwhile is never refused for it, and waits at most for
the background job already running (the embedded backend rates one transcript at a time).

concurrent.futures gives the workers and cancellation; what it lacks is the bound, kept here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from hcp.errors import BackendError

T = TypeVar("T")
WAIT_STEP = 0.2  # seconds between looks at a blocked submitter's cancel flag


class QueueFullError(BackendError):
    """The server has as many requests waiting as it allows."""


class Cancelled(Exception):  # noqa: N818 - not an error: the client went away
    """The client that asked for the work is gone; nothing is recorded for it."""


class Scheduler:
    def __init__(self, workers: int, max_waiting: int) -> None:
        self.workers = workers
        self.max_waiting = max_waiting
        self.peak_waiting = 0
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hcp-rater")
        self._changed = threading.Condition()
        self._admitted = 0  # submitted and not finished: running + waiting
        self._running = 0

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return max(0, self._admitted - self._running)

    @property
    def has_room(self) -> bool:
        return self._admitted < self.workers + self.max_waiting

    def submit(self, job: Callable[[], T], *, block: bool = False,
               cancelled: threading.Event | None = None) -> Future[T]:
        """Queue `job`. Full queue: QueueFullError, or with `block` wait for room (Cancelled if `cancelled`
        is set meanwhile)."""
        with self._changed:
            while not self.has_room:
                if not block:
                    raise QueueFullError(
                        f"the server is busy: {self.waiting} request(s) are waiting for the model, the most it "
                        f"queues (--queue {self.max_waiting}) — try again in a few seconds")
                if cancelled is not None and cancelled.is_set():
                    raise Cancelled
                self._changed.wait(WAIT_STEP)
            self._admitted += 1
            future = self._pool.submit(self._run, job)
            self.peak_waiting = max(self.peak_waiting, self.waiting)
        future.add_done_callback(self._finished)  # also runs when a waiting job is cancelled
        return future

    def submit_when_idle(self, job: Callable[[], T]) -> Future[T] | None:
        """Run `job` now if no request is admitted (running or waiting), else None. It takes no room in the queue
        and is not counted as running or waiting."""
        with self._changed:
            if self._admitted:
                return None
            return self._pool.submit(job)

    @property
    def idle(self) -> bool:
        """No request running or waiting (background work aside)."""
        return self._admitted == 0

    def _run(self, job: Callable[[], T]) -> T:
        with self._changed:
            self._running += 1
        try:
            return job()
        finally:
            with self._changed:
                self._running -= 1

    def _finished(self, _future: Future) -> None:
        with self._changed:
            self._admitted -= 1
            self._changed.notify_all()

    def close(self) -> None:
        """Cancel what waits, let what runs finish."""
        self._pool.shutdown(wait=True, cancel_futures=True)
