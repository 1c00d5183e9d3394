"""Serving in tests: the app on uvicorn on 127.0.0.1 (a port the system picks), and backends that let a test
hold a rating in flight."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from hcp.rubric import Rubric
from hcp.scoring.backends import GenerateOptions, Generation, Messages
from hcp.scoring.score import ScoreOptions
from hcp.serve.server import BackgroundServer, build_app
from hcp.serve.settings import ServeSettings
from tests.fakes import FakeBackend

SECRET = "RD: Good morning Mr Qwertyuiop, your eGFR is 23. Patient: I drink a lot of orange juice."


@dataclass
class Served:
    url: str
    client: httpx.Client
    app: Any
    settings: ServeSettings

    @property
    def service(self) -> Any:
        return self.app.state.service


@contextmanager
def served(backend: Any, rubric: Rubric, tmp_path: Path, options: ScoreOptions | None = None,
           **settings: Any) -> Iterator[Served]:
    """`backend` behind a real uvicorn on loopback; the reviews and work folder under tmp_path."""
    settings.setdefault("reviews", tmp_path / "reviews.jsonl")
    settings.setdefault("work_dir", tmp_path / "work")
    config = ServeSettings(**settings)
    app = build_app(backend, rubric, options or ScoreOptions(raw_output_dir=tmp_path), config)
    try:
        with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
            yield Served(server.url, client, app, config)
    finally:
        app.state.service.close()


class GatedBackend(FakeBackend):
    """A FakeBackend whose ratings wait until the test opens the gate; it records how many ran at once and
    which transcripts it was asked to rate (by a marker the test puts in them)."""

    def __init__(self, *script: Any, name: str = "fake", **kw: Any) -> None:
        super().__init__(*script, **kw)
        self.name = name
        self.gate = threading.Event()
        self.entered = threading.Semaphore(0)  # released once per rating that has started
        self.active = 0
        self.most_at_once = 0
        self.rated: list[str] = []
        self._lock = threading.Lock()

    def generate(self, messages: Messages, schema: dict[str, Any], options: GenerateOptions) -> Generation:
        with self._lock:
            self.active += 1
            self.most_at_once = max(self.most_at_once, self.active)
            self.rated.append(messages[-1]["content"])
        self.entered.release()
        try:
            if not self.gate.wait(timeout=30):
                raise TimeoutError("the test never opened the gate")
            return super().generate(messages, schema, options)
        finally:
            with self._lock:
                self.active -= 1

    def wait_started(self, count: int = 1, timeout: float = 10) -> None:
        for _ in range(count):
            assert self.entered.acquire(timeout=timeout), "a rating did not start"


def wait_for(predicate: Any, timeout: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
