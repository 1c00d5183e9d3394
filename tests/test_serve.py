"""hcp serve's API through a real HTTP client against uvicorn on loopback: every status, the queue, the token
rule, and the privacy of the logs. The batch stream and the reviews are in test_serve_batch.py and
test_serve_reviews.py; the page in test_serve_page.py; the OpenAPI property test in test_serve_schema.py."""

from __future__ import annotations

import json
import logging
import threading

import httpx
import pytest
from click.testing import CliRunner

import hcp.scoring.backends
from hcp.cli import cli
from hcp.errors import BackendError
from hcp.scoring.backends import Generation
from hcp.scoring.score import ScoreOptions, score_transcript
from hcp.serve.settings import ServeError, ServeSettings, is_loopback
from tests.fakes import GOOD_ANSWER, FakeBackend
from tests.serving import SECRET, GatedBackend, hcp_serve, served, wait_for

TRANSCRIPT = "RD: Hello, how are you feeling today? Patient: I'm struggling with my diet."


def test_score_answers_exactly_what_hcp_score_json_prints(rubric, tmp_path, monkeypatch):
    monkeypatch.setattr(hcp.scoring.backends, "open_backend", lambda *a, **k: FakeBackend(GOOD_ANSWER))
    printed = json.loads(CliRunner().invoke(cli, ["score", TRANSCRIPT, "--json"]).output)
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path) as server:
        answer = server.client.post("/score", json={"transcript": TRANSCRIPT})
    assert answer.status_code == 200
    body = answer.json()
    turns = body.pop("transcript_turns")  # the page's: the turns, so that it parses nothing itself
    assert body.pop("model_version") == "fake-model"  # the server's: which version rated (the model, without one)
    assert list(body) == list(printed)  # the same keys, in the same order
    assert {k: v for k, v in body.items() if k != "seconds"} == {k: v for k, v in printed.items() if k != "seconds"}
    assert [t["speaker"] for t in turns] == ["rd", "patient"]


def test_score_sends_the_turns_its_quotes_were_checked_against(rubric, tmp_path):
    """The page marks a quoted turn with the server's own turns and lines (hcp.evidence.turns of the text the
    model read: line endings normalised, ends trimmed), never a parse of its own."""
    transcript = "\r\n\nRD: Hi Maria.\r\nHow are you?\r\n  Patient: Tired.\r\n\r\nRD: I understand how you feel.\n"
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path) as server:
        body = server.client.post("/score", json={"transcript": transcript}).json()
    assert body["transcript_turns"] == [{"speaker": "rd", "first_line": 1, "last_line": 2},
                                        {"speaker": "patient", "first_line": 3, "last_line": 4},
                                        {"speaker": "rd", "first_line": 5, "last_line": 5}]
    assert [check["line"] for check in body["evidence"]["empathy"]] == [5]  # the same numbering as the quotes


def test_the_guides_curl_command_works(rubric, tmp_path):
    """curl -d sends application/x-www-form-urlencoded; the body is read as JSON all the same."""
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path) as server:
        answer = server.client.post("/score", content=json.dumps({"transcript": TRANSCRIPT, "seed": 7}),
                                    headers={"Content-Type": "application/x-www-form-urlencoded"})
        backend_calls = server.service.backend.calls
    assert answer.status_code == 200 and answer.json()["rating"]["empathy"] == GOOD_ANSWER["empathy"]
    assert backend_calls[0][1].seed == 7  # the request's seed reached the model


def test_health_and_rubric(rubric, tmp_path):
    with served(FakeBackend(), rubric, tmp_path, queue=3) as server:
        health = server.client.get("/health").json()
        described = server.client.get("/rubric").json()
    assert health["backend"] == "fake" and health["model"] == "fake-model" and health["ready"] is True
    assert health["queue"] == {"waiting": 0, "running": 0, "workers": 1, "limit": 3, "peak": 0}
    assert [d["name"] for d in described["dimensions"]] == list(rubric.names)
    assert described["dimensions"][0]["levels"]["1"] == rubric.dimensions[0].levels[1]
    assert described["schema"] == rubric.json_schema and described["digest"] == rubric.digest


class Down(FakeBackend):
    def generate(self, messages, schema, options):
        raise BackendError("Ollama is not running at http://127.0.0.1:11434 — start it with 'ollama serve'")


# (request body, backend, status, reason, a phrase of the one-line message, why)
ERRORS = [
    (b"", FakeBackend(), 400, "bad_request", "the body is empty", "no body"),
    (b'{"transcript": "RD: hi', FakeBackend(), 400, "bad_request", "not valid JSON", "cut-off JSON"),
    (json.dumps({"transcript": 42}).encode(), FakeBackend(), 400, "bad_request", "transcript: Input should be",
     "a number where the text goes"),
    (json.dumps({"text": SECRET}).encode(), FakeBackend(), 400, "bad_request", "transcript: Field required",
     "the transcript under another name"),
    (json.dumps({"transcript": SECRET, "seed": -1}).encode(), FakeBackend(), 400, "bad_request", "seed:",
     "a negative seed"),
    (json.dumps({"transcript": "  \n "}).encode(), FakeBackend(), 422, "invalid_data", "the transcript is empty",
     "blank transcript: the CLI's message"),
    (json.dumps({"transcript": SECRET * 200}).encode(), FakeBackend(), 422, "too_long", "tokens",
     "too long for the context: refused with the counts"),
    (json.dumps({"transcript": SECRET}).encode(), FakeBackend("not json"), 502, "invalid_output",
     "no valid rating", "the model never gave a valid answer"),
    (json.dumps({"transcript": SECRET}).encode(), Down(), 503, "backend", "Ollama is not running",
     "the backend is down"),
]


@pytest.mark.parametrize(("body", "backend", "status", "reason", "phrase", "why"), ERRORS,
                         ids=[row[-1] for row in ERRORS])
def test_errors_are_one_line_with_status_and_reason(rubric, tmp_path, body, backend, status, reason, phrase, why):
    with served(backend, rubric, tmp_path) as server:
        answer = server.client.post("/score", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == status, why
    error = answer.json()
    assert error["reason"] == reason and phrase in error["detail"], error
    assert "\n" not in error["detail"] and "Qwertyuiop" not in answer.text  # never echoes the transcript
    assert ("Retry-After" in answer.headers) == (status == 503)


def test_a_body_over_the_limit_is_refused_with_413(rubric, tmp_path):
    body = json.dumps({"transcript": "RD: hi. Patient: " + "x" * 5000}).encode()
    with served(FakeBackend(), rubric, tmp_path, max_body=1000) as server:
        by_length = server.client.post("/score", content=body)
        chunked = server.client.post("/score", content=iter([body[:600], body[600:]]))  # no Content-Length
        small = server.client.post("/score", json={"transcript": TRANSCRIPT})
    assert by_length.status_code == 413 and "--max-body-mb" in by_length.json()["detail"]
    assert chunked.status_code == 413 and chunked.json()["reason"] == "too_large"
    assert small.status_code == 200


def test_unknown_paths_and_methods(rubric, tmp_path):
    with served(FakeBackend(), rubric, tmp_path) as server:
        missing = server.client.get("/nothing-here")
        wrong = server.client.get("/score")
    assert missing.status_code == 404 and missing.json()["reason"] == "not_found"
    assert wrong.status_code == 405 and wrong.json()["reason"] == "method_not_allowed"


# --- the queue ----------------------------------------------------------------------------------------------


def post_in_thread(client: httpx.Client, body: dict, answers: list) -> threading.Thread:
    thread = threading.Thread(target=lambda: answers.append(client.post("/score", json=body)))
    thread.start()
    return thread


def test_a_full_queue_answers_503_with_retry_after(rubric, tmp_path):
    backend = GatedBackend(GOOD_ANSWER)
    with served(backend, rubric, tmp_path, queue=1) as server:
        answers: list[httpx.Response] = []
        first = post_in_thread(server.client, {"transcript": TRANSCRIPT + " 1"}, answers)
        backend.wait_started()
        second = post_in_thread(server.client, {"transcript": TRANSCRIPT + " 2"}, answers)
        wait_for(lambda: server.service.scheduler.waiting == 1, what="the second request to wait")
        refused = server.client.post("/score", json={"transcript": TRANSCRIPT + " 3"})
        health = server.client.get("/health").json()
        backend.gate.set()
        first.join(10)
        second.join(10)
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
    assert refused.json()["reason"] == "queue_full" and "--queue 1" in refused.json()["detail"]
    assert health["ready"] is False and health["queue"]["waiting"] == 1 and health["queue"]["running"] == 1
    assert sorted(a.status_code for a in answers) == [200, 200]


@pytest.mark.parametrize(("name", "parallel", "expected"), [("llama-cpp", 4, 1), ("ollama", 3, 3)],
                         ids=["embedded: one at a time whatever --parallel says", "ollama: up to --parallel"])
def test_ratings_at_once(rubric, tmp_path, name, parallel, expected):
    backend = GatedBackend(GOOD_ANSWER, name=name)
    with served(backend, rubric, tmp_path, parallel=parallel, queue=8) as server:
        answers: list[httpx.Response] = []
        threads = [post_in_thread(server.client, {"transcript": f"{TRANSCRIPT} {i}"}, answers) for i in range(5)]
        backend.wait_started(expected)
        wait_for(lambda: server.service.scheduler.waiting == 5 - expected, what="the rest to queue")
        running_now = backend.active
        backend.gate.set()
        for thread in threads:
            thread.join(10)
    assert running_now == expected and backend.most_at_once == expected
    assert [a.status_code for a in answers] == [200] * 5


def test_a_client_that_disconnects_has_its_queued_rating_dropped(rubric, tmp_path):
    backend = GatedBackend(GOOD_ANSWER)
    with served(backend, rubric, tmp_path) as server:
        answers: list[httpx.Response] = []
        first = post_in_thread(server.client, {"transcript": "RD: first. Patient: one."}, answers)
        backend.wait_started()
        with pytest.raises(httpx.ReadTimeout):  # gives up while its rating waits in the queue
            httpx.post(server.url + "/score", json={"transcript": "RD: gone. Patient: two."}, timeout=0.5)
        wait_for(lambda: server.service.scheduler.waiting == 0, what="the queued rating to be dropped")
        backend.gate.set()
        first.join(10)
        metrics = server.client.get("/metrics").text
    assert [a.status_code for a in answers] == [200]
    assert not any("gone" in prompt for prompt in backend.rated)  # never reached the model
    assert 'hcp_failures_total{reason="client_gone"} 1.0' in metrics


# --- security -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                                ("127.8.0.1", True), ("0.0.0.0", False), ("192.168.1.4", False),
                                                ("::", False), ("example.org", False)])
def test_loopback_addresses(host, loopback):
    assert is_loopback(host) is loopback


def test_listening_beyond_loopback_needs_a_token():
    with pytest.raises(ServeError, match="HCP_API_TOKEN"):
        ServeSettings(host="0.0.0.0").check()
    with pytest.raises(ServeError, match="empty"):
        ServeSettings(host="0.0.0.0", token=" ").check()
    ServeSettings(host="0.0.0.0", token="s3cret-token").check()  # allowed with one
    assert "bearer token" in ServeSettings(host="0.0.0.0", token="t").access()
    assert "loopback only" in ServeSettings().access()


def test_cli_refuses_a_public_address_without_a_token_before_loading_a_model(monkeypatch, tmp_path):
    opened = []
    monkeypatch.setattr(hcp.scoring.backends, "open_backend", lambda *a, **k: opened.append(a) or FakeBackend())
    monkeypatch.delenv("HCP_API_TOKEN", raising=False)
    result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0", "--reviews", str(tmp_path / "r.jsonl")])
    assert result.exit_code == 1 and "--token" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and not opened


def test_with_a_token_every_api_request_needs_it(rubric, tmp_path):
    token = "a-long-random-token"
    with served(FakeBackend(), rubric, tmp_path, token=token) as server:
        client = server.client
        missing = client.post("/score", json={"transcript": TRANSCRIPT})
        garbage = client.post("/score", content=b"{", headers={"Content-Type": "application/json"})
        wrong = client.get("/health", headers={"Authorization": "Bearer nope"})
        right = client.post("/score", json={"transcript": TRANSCRIPT}, headers={"Authorization": f"Bearer {token}"})
        page, docs, spec = client.get("/"), client.get("/docs"), client.get("/openapi.json")
        metrics = client.get("/metrics")
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    assert garbage.status_code == 401  # checked before the body is read
    assert wrong.status_code == 401 and missing.json()["reason"] == "unauthorized"
    assert right.status_code == 200 and metrics.status_code == 401
    assert page.status_code == docs.status_code == spec.status_code == 200  # they hold no data
    assert "HTTPBearer" in spec.json()["components"]["securitySchemes"]


def test_cors_is_off_unless_asked(rubric, tmp_path):
    preflight = {"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "POST"}
    with served(FakeBackend(), rubric, tmp_path) as server:
        closed = server.client.options("/score", headers=preflight)
    with served(FakeBackend(), rubric, tmp_path / "2", cors_origins=("https://elsewhere.example",)) as server:
        opened = server.client.options("/score", headers=preflight)
    assert "access-control-allow-origin" not in closed.headers
    assert opened.headers["access-control-allow-origin"] == "https://elsewhere.example"


def test_no_transcript_text_in_any_log_line(rubric, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    with served(FakeBackend("not json"), rubric, tmp_path) as server:
        for name in ("uvicorn.access", "uvicorn.error"):  # uvicorn's loggers do not propagate to the root
            logging.getLogger(name).addHandler(caplog.handler)
        client = server.client
        client.post("/score", json={"transcript": SECRET})  # 502 after retries: warnings logged
        client.post("/score", json={"transcript": SECRET * 200})  # too long
        client.get("/score", params={"transcript": SECRET})  # text in a query string: 405
        client.get("/" + SECRET.replace(" ", "%20"))  # and in a path: 404
        client.post("/batch", json=[SECRET, {"transcript": ""}], params={"name": "log-check"})
        for name in ("uvicorn.access", "uvicorn.error"):
            logging.getLogger(name).removeHandler(caplog.handler)
    server_side = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]  # not the client's
    assert len([r for r in server_side if r.name == "uvicorn.access"]) >= 5
    logged = "\n".join(r.getMessage() for r in server_side)
    assert "Qwertyuiop" not in logged and "orange" not in logged
    assert '"GET /score HTTP/1.1" 405' in logged  # the route, without its query string


def test_a_bug_answers_500_and_logs_no_data(rubric, tmp_path, caplog):
    class Buggy(FakeBackend):
        def generate(self, messages, schema, options):
            raise ValueError(f"something broke near {messages[-1]['content']}")

    with served(Buggy(), rubric, tmp_path) as server:
        answer = server.client.post("/score", json={"transcript": SECRET})
    assert answer.status_code == 500 and answer.json()["reason"] == "internal"
    assert "ValueError" in answer.json()["detail"]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "ValueError" in logged and "Qwertyuiop" not in logged and "Qwertyuiop" not in answer.text


def test_metrics_count_requests_failures_latency_and_tokens(rubric, tmp_path):
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path) as server:
        server.client.post("/score", json={"transcript": TRANSCRIPT})
        server.client.post("/score", json={"transcript": SECRET * 200})
        server.client.request("BREW", "/score")  # a method of the client's invention: not a label value
        text = server.client.get("/metrics").text
    assert 'hcp_requests_total{method="other",route="/score",status="405"} 1.0' in text
    assert 'hcp_requests_total{method="POST",route="/score",status="200"} 1.0' in text
    assert 'hcp_requests_total{method="POST",route="/score",status="422"} 1.0' in text
    assert 'hcp_failures_total{reason="too_long"} 1.0' in text
    assert 'hcp_request_duration_seconds_bucket{le="+Inf",route="/score"} 3.0' in text
    assert 'hcp_ratings_total{source="score",status="ok"} 1.0' in text
    assert 'hcp_tokens_total{kind="output"}' in text and 'hcp_queue_waiting 0.0' in text
    assert 'hcp_model_info{backend="fake",model="fake-model"} 1.0' in text


def test_docs_work_offline(rubric, tmp_path):
    with served(FakeBackend(), rubric, tmp_path) as server:
        docs = server.client.get("/docs").text
        script = server.client.get("/docs-assets/swagger-ui-bundle.js")
        page = server.client.get("/")
    assert "/docs-assets/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
    assert script.status_code == 200 and len(script.content) > 100_000
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert "http" not in page.text.replace("http-equiv", "")  # no external asset in the page


def test_embedded_model_rates_end_to_end(rubric, tmp_path):
    """The real SmolLM2 in llama.cpp (one thread) behind the server, against scoring it in process."""
    from hcp.scoring.backends.llama_cpp import LlamaCppBackend

    backend = LlamaCppBackend(None, num_ctx=8192, threads=1)
    try:
        with served(backend, rubric, tmp_path) as server:
            answer = server.client.post("/score", json={"transcript": TRANSCRIPT, "seed": 3})
            in_process = score_transcript(TRANSCRIPT, backend, rubric, ScoreOptions(seed=3))
    finally:
        backend.close()
    assert answer.status_code == 200
    body = answer.json()
    rubric.rating_model.model_validate(body["rating"])
    assert body["backend"] == "llama-cpp" and body["prompt_tokens"] > 50
    assert body["rating"] == in_process.rating  # same seed, same rating, through HTTP or not


def test_generation_counts_reach_the_metrics(rubric, tmp_path):
    answer = Generation(json.dumps(GOOD_ANSWER), "stop", 120, 33, 0.1)
    with served(FakeBackend(answer), rubric, tmp_path) as server:
        server.client.post("/score", json={"transcript": TRANSCRIPT})
        text = server.client.get("/metrics").text
    assert 'hcp_tokens_total{kind="prompt"} 120.0' in text and 'hcp_tokens_total{kind="output"} 33.0' in text


def test_hcp_serve_starts_says_how_it_is_reachable_and_serves(monkeypatch, tmp_path):
    """The command end to end: the options reach the server, the start-up line says loopback or token."""
    backend = FakeBackend(GOOD_ANSWER)
    reviews = tmp_path / "mine.jsonl"
    with hcp_serve(monkeypatch, backend, "--reviews", str(reviews), "--work-dir", str(tmp_path / "w"), "--token",
                   "tok", "--queue", "2") as server:
        health = httpx.get(server.url + "/health", headers={"Authorization": "Bearer tok"}).json()
    output = server.result.output
    assert server.result.exit_code == 0, output
    assert f"{server.url}/" in output and "loopback only" in output and "bearer token" in output
    assert str(reviews) in output
    assert health["queue"]["limit"] == 2 and health["backend"] == "fake" and backend.closed


# A transcript whose line the fake backend quotes ("RD: I understand how you feel"): its review is training data.
REVIEWED = "RD: Hello Ana, how have the new meals been? Patient: Hard. I miss bread.\nRD: I understand how you feel."


def test_hcp_serve_keeps_its_files_in_the_users_state_folder(monkeypatch, tmp_path):
    """Run from a project folder, hcp serve writes nothing there: the reviews and the batches (patient data) go to
    $XDG_STATE_HOME/hcp/serve, in folders of the owner's alone."""
    project, state = tmp_path / "project", tmp_path / "state"
    project.mkdir()
    monkeypatch.chdir(project)
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    monkeypatch.delenv("HCP_API_TOKEN", raising=False)
    visits = json.dumps({"id": "a", "transcript": REVIEWED}).encode() + b"\n"
    with hcp_serve(monkeypatch, FakeBackend(GOOD_ANSWER)) as server:
        batch = httpx.post(server.url + "/batch", files={"file": ("visits.jsonl", visits)})
        original = httpx.post(server.url + "/score", json={"transcript": REVIEWED}).json()
        saved = httpx.post(server.url + "/reviews", json={"transcript": REVIEWED, "review": original["rating"],
                                                          "original": original})
    assert server.result.exit_code == 0, server.result.output
    assert batch.status_code == 200 and saved.status_code == 200, saved.text
    assert list(project.iterdir()) == []  # nothing in the folder it was started from
    folder = state / "hcp" / "serve"
    assert saved.json()["file"] == str(folder / "reviews.jsonl")
    results = list((folder / "batches").glob("*.jsonl"))
    assert len(results) == 1
    for path in (state / "hcp", folder, folder / "batches"):
        assert path.stat().st_mode & 0o777 == 0o700, path
    for path in (folder / "reviews.jsonl", *results):
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_the_folders_hcp_serve_creates_are_the_owners_alone(rubric, tmp_path):
    reviews, work = tmp_path / "r" / "deep" / "reviews.jsonl", tmp_path / "w" / "x"
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path, reviews=reviews, work_dir=work) as server:
        server.client.post("/batch", json=[TRANSCRIPT])
    for folder in (tmp_path / "r", reviews.parent, tmp_path / "w", work, work / "batches"):
        assert folder.stat().st_mode & 0o777 == 0o700, folder


@pytest.mark.parametrize("option", ["--reviews", "--work-dir"])
def test_a_folder_that_cannot_be_created_is_one_line_before_the_model_loads(monkeypatch, tmp_path, option):
    opened = []
    monkeypatch.setattr(hcp.scoring.backends, "open_backend", lambda *a, **k: opened.append(a) or FakeBackend())
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    places = {"--reviews": tmp_path / "r.jsonl", "--work-dir": tmp_path / "w"}
    for inside in (blocker / "sub", blocker / "sub" / "deeper"):  # (a file given as --work-dir: click's error)
        places[option] = inside / "reviews.jsonl" if option == "--reviews" else inside
        result = CliRunner().invoke(cli, ["serve", "--reviews", str(places["--reviews"]), "--work-dir",
                                          str(places["--work-dir"])])
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
        assert f"{option}: cannot create the folder" in result.output and "a file is in the way" in result.output
        assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not opened
