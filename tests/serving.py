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
from click.testing import CliRunner, Result

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
def served(backend: Any, rubric: Rubric, tmp_path: Path, options: ScoreOptions | None = None, http: str = "auto",
           canary: Any = None, shadow: Any = None, **settings: Any) -> Iterator[Served]:
    """`backend` (or a Deployed version, with a `canary` and a `shadow` version) behind a real uvicorn on loopback
    (`http`: its HTTP parser); the reviews and work folder under tmp_path."""
    settings.setdefault("reviews", tmp_path / "reviews.jsonl")
    settings.setdefault("work_dir", tmp_path / "work")
    config = ServeSettings(**settings)
    app = build_app(backend, rubric, options or ScoreOptions(raw_output_dir=tmp_path), config, canary=canary,
                    shadow=shadow)
    try:
        with BackgroundServer(app, http=http) as server, httpx.Client(base_url=server.url, timeout=60) as client:
            yield Served(server.url, client, app, config)
    finally:
        app.state.service.close()


@dataclass
class CliServer:
    """`hcp serve` run by the CLI in a thread: its URL while it runs, its CliRunner result once stopped."""

    url: str
    result: Result | None = None


@contextmanager
def hcp_serve(monkeypatch: Any, backend: Any, *args: str) -> Iterator[CliServer]:
    """Run `hcp serve ARGS` (on a free loopback port) with `backend` instead of a model, until the block ends;
    `backend` may be a function of the model asked for (--model, --canary, --shadow) that returns one."""
    import socket

    import hcp.scoring.backends
    import hcp.serve.server
    from hcp.cli import cli

    servers, make = [], hcp.serve.server._uvicorn_server  # noqa: SLF001

    def capture(*a: Any, **k: Any) -> Any:
        servers.append(make(*a, **k))
        return servers[-1]

    monkeypatch.setattr(hcp.scoring.backends, "open_backend",
                        lambda name, model=None, **k: backend(model) if callable(backend) else backend)
    monkeypatch.setattr(hcp.serve.server, "_uvicorn_server", capture)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    running = CliServer(f"http://127.0.0.1:{port}")
    thread = threading.Thread(target=lambda: setattr(running, "result", CliRunner().invoke(
        cli, ["serve", "--port", str(port), *args])))
    thread.start()
    try:
        wait_for(lambda: (servers and servers[0].started) or not thread.is_alive(), what="hcp serve to start")
        yield running
    finally:
        if servers:
            servers[0].should_exit = True
        thread.join(15)


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
