"""OpenAI-compatible servers for the openai backend's tests, on 127.0.0.1 only.

`LlamaCppServer` is a real one: llama-cpp-python's own server (`python -m llama_cpp.server`, its `server`
extra) run as a child process with the embedded SmolLM2 GGUF and two threads (the only llama.cpp at work
while these tests run). `StubServer` speaks the protocol
of servers that cannot run here (vLLM: the standard `json_schema` response format and a `/tokenize` that renders
the chat; with `slot_context`, llama-server's /props and its refusal of a prompt over the context) and records what
it was sent: it tests the request hcp builds, not a model.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

MODEL_ALIAS = "smollm2"
START_TIMEOUT_S = 90


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """A server the test runs as a child in its own session: stopped politely, or killed like a crash."""

    process: subprocess.Popen[bytes] | None = None
    stop_timeout_s = 10

    def start(self) -> ServerProcess:
        raise NotImplementedError

    def kill(self) -> None:
        """Like a crash: SIGKILL, no goodbye to open connections."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self):  # noqa: ANN204 - the subclass
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LlamaCppServer(ServerProcess):
    """`python -m llama_cpp.server` on 127.0.0.1; `.url` is its API root (…/v1). Restartable on the same port."""

    def __init__(self, model: Path, n_ctx: int = 8192, port: int | None = None, threads: int = 2) -> None:
        self.model, self.n_ctx, self.port, self.threads = model, n_ctx, port or free_port(), threads
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> LlamaCppServer:
        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model), "--model_alias", MODEL_ALIAS,
                   "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(self.n_ctx),
                   "--n_threads", str(self.threads), "--n_threads_batch", str(self.threads)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.process.returncode} at start")
            try:
                if httpx.get(f"{self.url}/models", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"llama_cpp.server did not answer within {START_TIMEOUT_S} s")



class StubServer:
    """A protocol stub of a vLLM-like server: `/v1/models` (with max_model_len), `/tokenize` over messages,
    `/v1/chat/completions` that honours only `response_format: {type: json_schema}`. `answers` are the contents
    it replies with for rating requests, in turn (the schema probe gets its own answer); `requests` holds every
    JSON body it received, with its path and Authorization header."""

    def __init__(self, answers: list[tuple[str, str]], api_key: str | None = None, max_model_len: int | None = 4096,
                 tokens_per_message: int = 100, system_role: bool = True, slot_context: int | None = None,
                 model_path: str = "/models/rater.Q4_K_M.gguf", usage: dict[str, Any] | None = None,
                 meta: dict[str, Any] | None = None, probe_answer: tuple[str, str] = ('{"ok": 7}', "stop")) -> None:
        self.answers = list(answers)  # (content, finish_reason)
        self.probe_answer = probe_answer  # (content, finish_reason) of the schema probe under json_schema
        # llama-server's ways (tools/server/README.md): `slot_context` set, GET /props answers with the context each
        # slot has and the model file served, and a chat whose prompt is over that context is refused with HTTP 400
        # "request (N tokens) exceeds the available context size (M tokens)", type exceed_context_size_error.
        self.slot_context = slot_context
        self.model_path = model_path
        self.usage = usage  # replaces the usage of rating answers (a server that reports it oddly)
        self.meta = meta  # llama-server's `meta` of a /v1/models entry (the model's sizes, the slot's n_ctx)
        self.system_role = system_role  # False: a Gemma 2 template, which refuses a system turn as vLLM says it
        self.api_key = api_key
        self.max_model_len = max_model_len
        self.tokens_per_message = tokens_per_message
        self.requests: list[dict[str, Any]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                """Quiet: the tests read what the stub recorded, not its log."""

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                if stub.api_key and self.headers.get("Authorization") != f"Bearer {stub.api_key}":
                    self._send(401, {"error": {"message": "invalid api key", "type": "auth"}})
                    return False
                return True

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if not self._authorized():
                    return
                if self.path == "/v1/models":
                    entry = {"id": "org/rater", "object": "model", "owned_by": "stub", "created": time.time_ns()}
                    if stub.max_model_len is not None:
                        entry["max_model_len"] = stub.max_model_len
                    if stub.meta is not None:
                        entry["meta"] = stub.meta
                    self._send(200, {"object": "list", "data": [entry]})
                elif self.path == "/props" and stub.slot_context is not None:
                    self._send(200, {"default_generation_settings": {"id": 0, "n_ctx": stub.slot_context,
                                                                     "params": {"n_predict": -1}},
                                     "total_slots": 1, "model_path": stub.model_path, "build_info": "b0-stub"})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                stub.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                if not self._authorized():
                    return
                if not stub.system_role and any(m.get("role") == "system" for m in body.get("messages", [])):
                    self._send(400, {"object": "error", "message": "System role not supported",
                                     "type": "BadRequestError", "param": None, "code": 400})
                    return
                if self.path == "/tokenize":
                    count = stub.tokens_per_message * len(body.get("messages", []))
                    self._send(200, {"count": count, "max_model_len": stub.max_model_len, "tokens": [1] * count})
                elif self.path == "/v1/chat/completions":
                    self._chat(body)
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def _chat(self, body: dict[str, Any]) -> None:
                prompt = stub.tokens_per_message * len(body["messages"])
                if stub.slot_context is not None and prompt > stub.slot_context:
                    self._send(400, {"error": {
                        "code": 400, "type": "exceed_context_size_error", "n_prompt_tokens": prompt,
                        "n_ctx": stub.slot_context,
                        "message": f"request ({prompt} tokens) exceeds the available context size "
                                   f"({stub.slot_context} tokens)"}})
                    return
                usage = {"prompt_tokens": prompt, "completion_tokens": 50, "total_tokens": 0}
                form = body.get("response_format") or {}
                schema = (form.get("json_schema") or {}).get("schema") if form.get("type") == "json_schema" else None
                if schema is None:
                    content, finish = "Sure! Here is some text.", "stop"  # ignores any other form
                elif set(schema.get("properties", {})) == {"ok"}:
                    content, finish = stub.probe_answer
                else:
                    content, finish = stub.answers.pop(0)
                    usage = stub.usage or usage
                self._send(200, {"id": "x", "object": "chat.completion", "model": body.get("model"),
                                 "choices": [{"index": 0, "finish_reason": finish,
                                              "message": {"role": "assistant", "content": content}}],
                                 "usage": usage})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
