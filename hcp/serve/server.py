"""Running the app with uvicorn: in the foreground for `hcp serve`, or in a thread for tests and benchmarks.

uvicorn's access log names each request by its route (`POST /score`, `GET /batch/{name}/results.csv`), never
the path and query string the client sent: no request, however it is made, puts patient text in the log.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from starlette.routing import Match

from hcp.rubric import Rubric
from hcp.scoring.backends import Backend
from hcp.scoring.score import ScoreOptions
from hcp.serve.settings import ServeSettings
from hcp.serve.versions import Deployed

ACCESS_LOGGER = "uvicorn.access"
UNKNOWN_PATH = "(a path the server does not serve)"
START_TIMEOUT = 30.0  # seconds


class RouteOnly(logging.Filter):
    """Rewrites uvicorn's access-log records to show the route a request matched instead of its full path."""

    def __init__(self, routes: list[Any]) -> None:
        super().__init__()
        self.routes = routes

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5:
            client, method, full_path, version, status = args
            record.args = (client, method, self.route(str(method), str(full_path)), version, status)
        return True

    def route(self, method: str, full_path: str) -> str:
        path = full_path.split("?", 1)[0]
        scope = {"type": "http", "method": method, "path": path, "root_path": ""}
        for route in self.routes:
            match, _ = route.matches(scope)
            if match != Match.NONE:
                mounted = not hasattr(route, "methods")  # a folder of static files
                return route.path + ("/{path}" if mounted else "")
        return UNKNOWN_PATH


def build_app(backend: Backend | Deployed, rubric: Rubric, options: ScoreOptions, settings: ServeSettings,
              canary: Deployed | None = None, shadow: Deployed | None = None) -> Any:
    """The FastAPI app over a new Service; `app.state.service` holds it (close it when done)."""
    from hcp.serve.app import create_app
    from hcp.serve.service import Service

    service = Service(backend, rubric, options, settings, canary=canary, shadow=shadow)
    app = create_app(service)
    app.state.service = service
    return app


def _uvicorn_server(app: Any, host: str, port: int, access_log: bool, http: str = "auto") -> Any:
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, access_log=access_log, timeout_graceful_shutdown=5,
                            lifespan="off", server_header=False, http=http)
    return uvicorn.Server(config)


def serve(backend: Backend | Deployed, rubric: Rubric, options: ScoreOptions, settings: ServeSettings,
          echo: Callable[[str], None] = print, canary: Deployed | None = None, shadow: Deployed | None = None) -> None:
    """Serve until Ctrl-C. The backends are loaded already (once); the caller closes them."""
    settings.check()
    app = build_app(backend, rubric, options, settings, canary=canary, shadow=shadow)
    service = app.state.service
    backend = service.backend
    server = _uvicorn_server(app, settings.host, settings.port, access_log=True)
    access = logging.getLogger(ACCESS_LOGGER)
    route_only = RouteOnly(app.router.routes)
    access.addFilter(route_only)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    echo(f"hcp serve: http://{host}:{settings.port}/ — {backend.name} model {backend.model}; {settings.access()}; "
         f"reviews -> {settings.reviews}; Ctrl-C stops")
    versions = service.versions()
    for role, version in versions.items() if len(versions) > 1 else ():
        share = f", rates {version['share']:.0%} of the transcripts" if "share" in version else ", for comparison only"
        echo(f"  {role} version {version['version']}{share}")
    try:
        server.run()
    finally:
        access.removeFilter(route_only)
        service.close()


class BackgroundServer:
    """uvicorn serving `app` on 127.0.0.1 in a thread, on a port the system picks (tests, benchmarks); `http`
    picks uvicorn's HTTP parser ('h11', 'httptools'; 'auto': httptools where it is installed).

        with BackgroundServer(app) as server:
            httpx.get(server.url + "/health")
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", access_log: bool = True, http: str = "auto") -> None:
        self.app, self.host, self.access_log, self.http = app, host, access_log, http
        self.url = ""
        self._filter = RouteOnly(app.router.routes)

    def __enter__(self) -> BackgroundServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        port = sock.getsockname()[1]
        self.server = _uvicorn_server(self.app, self.host, port, self.access_log, self.http)
        logging.getLogger(ACCESS_LOGGER).addFilter(self._filter)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, name="hcp-uvicorn",
                                       daemon=True)
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        self.url = f"http://{self.host}:{port}"
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        logging.getLogger(ACCESS_LOGGER).removeFilter(self._filter)
