"""llama.cpp's own server for the tests: the `llama-server` that `scripts/setup.sh --llama-server` builds from the
installed llama-cpp-python's sources (hcp.export.llama_server), run on 127.0.0.1 with a GGUF, N slots and
continuous batching. A real engine that batches requests: the standard `json_schema` response format, /tokenize,
/apply-template, /props and its own context-size errors.

Where it is not built, the tests that need it skip and say how to build it — except where
$HCP_REQUIRE_LLAMA_SERVER is set (CI, which builds it first): there a missing build fails them.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.openai_server import ServerProcess, free_port

ALIAS = "smollm2"
START_TIMEOUT_S = 120
REQUIRE_VARIABLE = "HCP_REQUIRE_LLAMA_SERVER"


def llama_server_binary() -> Path:
    """The built binary; skips the test (fails it under $HCP_REQUIRE_LLAMA_SERVER) when there is none."""
    from hcp.errors import ExportError
    from hcp.export.llama_server import find_server

    try:
        return find_server()
    except ExportError as exc:
        if os.environ.get(REQUIRE_VARIABLE):
            pytest.fail(f"${REQUIRE_VARIABLE} is set and {exc}")
        pytest.skip(str(exc))


class LlamaServer(ServerProcess):
    """`llama-server -m MODEL -np SLOTS -c SLOTS*SLOT_CONTEXT --cont-batching` on 127.0.0.1; `.url` is its API root
    (…/v1). Restartable on the same port; stopped (or killed, like a crash) by the test."""

    stop_timeout_s = 15

    def __init__(self, model: Path, *, slots: int = 4, slot_context: int = 4096, threads: int = 2,
                 port: int | None = None, binary: Path | None = None, log: Path | None = None) -> None:
        self.binary = binary or llama_server_binary()
        self.model, self.slots, self.slot_context, self.threads = model, slots, slot_context, threads
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [str(self.binary), "--model", str(self.model), "--alias", ALIAS, "--host", "127.0.0.1",
                "--port", str(self.port), "--parallel", str(self.slots),
                "--ctx-size", str(self.slots * self.slot_context), "--cont-batching",
                "--threads", str(self.threads), "--threads-batch", str(self.threads), "--no-webui"]

    def start(self) -> LlamaServer:
        output = self.log.open("ab") if self.log else subprocess.DEVNULL
        self.process = subprocess.Popen(self.command(), stdout=output, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        root = self.url.removesuffix("/v1")
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.process.returncode} at start"
                                   + (f" (its log: {self.log})" if self.log else ""))
            try:
                if httpx.get(f"{root}/health", timeout=2).status_code == 200:  # 503 while the model loads
                    return self
            except httpx.HTTPError:
                pass  # not listening yet: poll again
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"llama-server did not answer /health within {START_TIMEOUT_S} s")

