"""Transcripts and models never go through a proxy named in the environment: HTTP_PROXY, HTTPS_PROXY and ALL_PROXY
are set to a real proxy on 127.0.0.1 that records what it is sent, and every client that carries patient data (the
openai backend, the Ollama backend, export's registration) rates or registers with it left empty-handed."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from hcp.export.register import register
from hcp.scoring.backends.ollama import OllamaBackend
from hcp.scoring.backends.openai import OpenAIBackend
from hcp.scoring.score import ScoreOptions, score_transcript
from tests.fakes import GOOD_ANSWER, with_evidence
from tests.ollama_double import ForcedReply
from tests.openai_server import StubServer

TRANSCRIPT = "RD: How have your meals been this week? Patient: I skipped breakfast most days."
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


class ProxyRecorder:
    """A proxy on 127.0.0.1 that keeps the request line of everything sent to it (a plain proxied request, or a
    CONNECT for https) and answers 502, as a proxy that cannot reach the target would."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                """Quiet: the test reads what was recorded."""

            def _record(self) -> None:
                recorder.seen.append(self.requestline)
                self.send_response(502)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = do_CONNECT = _record  # noqa: N815 - http.server's names

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(monkeypatch, tmp_path):
    """Every proxy variable points at the recorder, with no NO_PROXY exemption (the user's shell, say)."""
    recorder = ProxyRecorder()
    for name in PROXY_VARIABLES:
        monkeypatch.setenv(name, recorder.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    yield recorder
    recorder.close()


def test_a_loopback_openai_server_is_reached_directly_not_through_the_proxy(proxy, rubric, tmp_path):
    answer = json.dumps(with_evidence(GOOD_ANSWER, rubric.json_schema))
    with StubServer([(answer, "stop")]) as stub:
        backend = OpenAIBackend(None, base_url=stub.url)
        try:
            result = score_transcript(TRANSCRIPT, backend, rubric, ScoreOptions(raw_output_dir=tmp_path))
        finally:
            backend.close()
    assert result.rating["empathy"] == GOOD_ANSWER["empathy"]
    assert any(r["path"] == "/v1/chat/completions" for r in stub.requests)  # the transcript went to the server
    assert proxy.seen == []


def test_a_loopback_ollama_daemon_is_reached_directly_not_through_the_proxy(proxy, ollama_double, rubric, tmp_path):
    ollama_double.reset()
    ollama_double.force_replies(ForcedReply(json.dumps(with_evidence(GOOD_ANSWER, rubric.json_schema))))
    try:
        assert OllamaBackend.probe(ollama_double.url, "smollm2") is True
        backend = OllamaBackend("smollm2", host=ollama_double.url, cache_dir=tmp_path / "vocab")
        try:
            result = score_transcript(TRANSCRIPT, backend, rubric, ScoreOptions(raw_output_dir=tmp_path))
        finally:
            backend.close()
        assert result.backend == "ollama" and len(ollama_double.requests_to("/api/chat")) == 1
    finally:
        ollama_double.reset()
    assert proxy.seen == []


def test_registering_a_model_goes_to_the_daemon_directly_not_through_the_proxy(proxy, ollama_double, tmp_path):
    from tests.test_ollama_backend import sentencepiece_gguf

    gguf = sentencepiece_gguf(tmp_path / "m.gguf")
    spec = SimpleNamespace(name="proxied-rater", gguf=gguf,
                           create_request=lambda digest: {"model": "proxied-rater", "files": {"m.gguf": digest}})
    ollama_double.reset()
    try:
        assert register(spec, ollama_double.url, 30) is True
        assert "proxied-rater:latest" in [m["name"] for m in ollama_double.tags()["models"]]
    finally:
        ollama_double.delete({"model": "proxied-rater"})
        ollama_double.reset()
    assert proxy.seen == []
