"""`--backend auto` for real, through the CLI: a GGUF path runs in process, a daemon that has the model rates
(the protocol double, over HTTP), and with no daemon, or one without the model, the embedded default model
does. No fake backend here: score, batch and evaluate each open what auto picks.

llama.cpp threads spin: the double runs with one thread, and the embedded model gets --threads 1."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from hcp.cli import cli
from hcp.scoring.backends.llama_cpp import default_model_path
from tests.ollama_double import ForcedReply

# One dimension and short answers: a real rating on one llama.cpp thread takes seconds, not half a minute.
SMALL_RUBRIC = """\
scoring:
  evidence: false
  reasoning_max_chars: 60
  list_max_items: 1
  item_max_chars: 20
  dimensions:
    empathy: {weight: 1, description: Warmth and respect toward the patient}
"""
ANSWER = json.dumps({"reasoning": "Kind and clear.", "strengths": ["Warm"], "areas_for_improvement": ["Ask more"],
                     "empathy": 4})
TRANSCRIPTS = [
    "RD: Hi, what brings you in today? Patient: My sugar has been high since Christmas.",
    "RD: How is the low-salt diet going? Patient: Hard. I miss crisps, and I am tired all day.",
]


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture(scope="module")
def vocab_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def env(tmp_path, monkeypatch, vocab_cache):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(vocab_cache))  # the Ollama backend's vocabulary, built once here
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    (tmp_path / "small.yaml").write_text(SMALL_RUBRIC)
    return tmp_path


@pytest.fixture
def daemon(ollama_double):
    """The double, plain: it serves 'smollm2' but not the default 'hcp-rater'."""
    ollama_double.reset()
    yield ollama_double
    ollama_double.reset()


@pytest.fixture
def daemon_with_rater(daemon):
    """The double with the default model 'hcp-rater' registered (the embedded GGUF under that name)."""
    daemon.add_model("hcp-rater", default_model_path())
    try:
        yield daemon
    finally:
        daemon.delete({"model": "hcp-rater"})


def run(*args: str):  # noqa: ANN201
    result = CliRunner().invoke(cli, ["-v", *args, "--config", "small.yaml"])
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    return result


def rated_by(result) -> tuple[str, str]:  # noqa: ANN001
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    return payload["backend"], payload["model"]


# --- score ----------------------------------------------------------------------------------------------------


def test_auto_rates_through_the_daemon_that_has_the_model(env, daemon_with_rater, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", daemon_with_rater.url)
    result = run("score", TRANSCRIPTS[0], "--json")
    assert rated_by(result) == ("ollama", "hcp-rater")
    assert "auto: using Ollama model hcp-rater" in result.stderr
    (chat,) = daemon_with_rater.requests_to("/api/chat")
    assert chat.body["model"] == "hcp-rater" and chat.body["format"]["title"] == "Rating"


def test_auto_falls_back_to_the_embedded_model_when_the_daemon_lacks_it(env, daemon):
    result = run("score", TRANSCRIPTS[0], "--json", "--host", daemon.url, "--threads", "1")
    backend, model = rated_by(result)
    assert backend == "llama-cpp" and "embedded default" in model
    assert "auto: no Ollama model hcp-rater answering; using the embedded default model" in result.stderr
    assert [r.body.get("model") for r in daemon.requests_to("/api/show")] == ["hcp-rater"]  # asked, not there
    assert daemon.requests_to("/api/chat") == []


def test_auto_falls_back_to_the_embedded_model_when_no_daemon_answers(env, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", closed_port_url())
    backend, model = rated_by(run("score", TRANSCRIPTS[0], "--json", "--threads", "1"))
    assert backend == "llama-cpp" and "embedded default" in model


def test_auto_runs_a_gguf_path_in_process_without_asking_the_daemon(env, daemon, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", daemon.url)
    path = str(default_model_path())
    assert rated_by(run("score", TRANSCRIPTS[0], "--json", "--model", path, "--threads", "1")) == ("llama-cpp", path)
    assert daemon.requests == []


@pytest.mark.parametrize("where, message", [
    ("daemon", "Error: model 'not-there' not found in Ollama at "),
    ("nothing", "Error: Ollama is not running at "),
])
def test_auto_never_swaps_a_named_model_for_the_embedded_one(env, daemon, where, message):
    host = daemon.url if where == "daemon" else closed_port_url()
    result = run("score", TRANSCRIPTS[0], "--model", "not-there", "--host", host, "--threads", "1")
    assert result.exit_code == 1 and result.output.startswith(message + host), result.output


# --- batch and evaluate ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["daemon", "nothing"])
def test_batch_in_auto_mode(env, daemon, where):
    (env / "in.jsonl").write_text("".join(json.dumps({"id": f"t{n}", "transcript": t}) + "\n"
                                          for n, t in enumerate(TRANSCRIPTS)))
    host = closed_port_url()
    if where == "daemon":
        daemon.add_model("hcp-rater", default_model_path())
        daemon.force_replies(*[ForcedReply(ANSWER)] * 2)  # the daemon path rates for real in the score test above
        host = daemon.url
    try:
        result = run("batch", "in.jsonl", "--out", "out.jsonl", "--host", host, "--threads", "1")
    finally:
        if where == "daemon":
            daemon.delete({"model": "hcp-rater"})
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (env / "out.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["ok", "ok"]
    expected = "ollama" if where == "daemon" else "llama-cpp"
    assert {r["backend"] for r in records} == {expected}
    assert len(daemon.requests_to("/api/chat")) == (2 if where == "daemon" else 0)


@pytest.mark.parametrize("where", ["daemon", "nothing"])
def test_evaluate_in_auto_mode(env, daemon, where, monkeypatch):
    (env / "labelled.jsonl").write_text("".join(json.dumps({"id": f"t{n}", "transcript": t, "empathy": 3 + n})
                                                + "\n" for n, t in enumerate(TRANSCRIPTS)))
    monkeypatch.setenv("OLLAMA_HOST", daemon.url if where == "daemon" else closed_port_url())
    if where == "daemon":
        daemon.add_model("hcp-rater", default_model_path())
        daemon.force_replies(*[ForcedReply(ANSWER)] * 2)
    try:
        result = run("evaluate", "--data", "labelled.jsonl", "--report", "report", "--threads", "1")
    finally:
        if where == "daemon":
            daemon.delete({"model": "hcp-rater"})
    assert result.exit_code == 0, result.output
    rater = json.loads((env / "report" / "metrics.json").read_text())["raters"]["model"]
    assert rater["backend"] == ("ollama" if where == "daemon" else "llama-cpp")
    assert (rater["n"], rater["missing"]) == (2, 0)
