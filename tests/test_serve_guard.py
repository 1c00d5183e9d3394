"""Who may ask hcp serve, and for how much: the body limit against requests whose headers lie, the Host and
Origin rules of a tokenless server (DNS rebinding, another site's page), CORS preflights beside a token, the
page's Content-Security-Policy wherever it is served. Each test attacks the server the way a web page or a
crafted request would, over real sockets against real uvicorn."""

from __future__ import annotations

import importlib.util
import json
import socket
from urllib.parse import urlsplit

import pytest

from tests.fakes import GOOD_ANSWER, FakeBackend
from tests.serving import served

TRANSCRIPT = "RD: Hello, how are you feeling today? Patient: I'm struggling with my diet."
# uvicorn's two HTTP parsers: each reads headers its own way.
PARSERS = ["h11"] + (["httptools"] if importlib.util.find_spec("httptools") else [])


def raw_request(url: str, head: str, body: bytes = b"") -> tuple[int, bytes]:
    """Send bytes exactly as written (no client tidies the headers) and read the answer: (status, body)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def chunked(body: bytes, size: int = 500) -> bytes:
    pieces = [body[i:i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


# (extra headers, why)
LYING_HEADERS = [
    ("Transfer-Encoding: chunked\nContent-Length: 10\n", "chunked, with a small Content-Length beside it"),
    ("Transfer-Encoding: Chunked\n", "chunked in capitals (httptools passes the header on as written)"),
]


@pytest.mark.parametrize("http", PARSERS)
@pytest.mark.parametrize(("extra", "why"), LYING_HEADERS, ids=[row[1] for row in LYING_HEADERS])
def test_the_body_limit_counts_the_bytes_received_whatever_the_headers_say(rubric, tmp_path, http, extra, why):
    body = json.dumps({"transcript": "RD: hi. Patient: " + "x" * 5000}).encode()
    backend = FakeBackend(GOOD_ANSWER)
    with served(backend, rubric, tmp_path, http=http, max_body=1000) as server:
        host = urlsplit(server.url).netloc
        status, answer = raw_request(server.url, f"POST /score HTTP/1.1\nHost: {host}\nContent-Type: application/json"
                                     f"\n{extra}Connection: close\n", chunked(body))
    assert status in (400, 413), (why, status, answer)  # 400: the parser itself refused the framing
    assert not backend.calls, why  # the body was never read whole, nor rated
    if status == 413:
        assert json.loads(answer)["reason"] == "too_large"


@pytest.mark.parametrize("http", PARSERS)
def test_a_chunked_body_within_the_limit_is_read_whole(rubric, tmp_path, http):
    body = json.dumps({"transcript": TRANSCRIPT}).encode()
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path, http=http, max_body=1000) as server:
        host = urlsplit(server.url).netloc
        status, answer = raw_request(server.url, f"POST /score HTTP/1.1\nHost: {host}\nTransfer-Encoding: chunked\n"
                                     "Connection: close\n", chunked(body, 20))
    assert status == 200 and b"chunked" not in answer, answer


# --- a token, and CORS ----------------------------------------------------------------------------------------

ALLOWED = "https://allowed.example"


def test_a_cors_preflight_is_answered_before_the_token_is_asked_for(rubric, tmp_path):
    """A browser's preflight never carries the token: with --token and --cors-origin, the allowed origin's
    preflight succeeds (and its real request still needs the token); another origin's preflight is refused."""
    token = "a-long-random-token"
    ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path, token=token, cors_origins=(ALLOWED,)) as server:
        allowed = server.client.options("/score", headers={"Origin": ALLOWED, **ask})
        other = server.client.options("/score", headers={"Origin": "https://other.example", **ask})
        without_token = server.client.post("/score", json={"transcript": TRANSCRIPT}, headers={"Origin": ALLOWED})
        with_token = server.client.post("/score", json={"transcript": TRANSCRIPT},
                                        headers={"Origin": ALLOWED, "Authorization": f"Bearer {token}"})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ALLOWED
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    assert other.status_code >= 400 and "access-control-allow-origin" not in other.headers
    assert without_token.status_code == 401
    assert with_token.status_code == 200 and with_token.headers["access-control-allow-origin"] == ALLOWED


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_the_bearer_scheme_is_read_in_any_case(rubric, tmp_path, scheme):
    with served(FakeBackend(), rubric, tmp_path, token="tok-123") as server:
        right = server.client.get("/health", headers={"Authorization": f"{scheme} tok-123"})
        other_scheme = server.client.get("/health", headers={"Authorization": "Basic tok-123"})
        no_scheme = server.client.get("/health", headers={"Authorization": "tok-123"})
    assert right.status_code == 200
    assert other_scheme.status_code == no_scheme.status_code == 401


# --- a tokenless server: its own names, its own page ------------------------------------------------------------


def test_a_tokenless_server_answers_only_to_its_own_names(rubric, tmp_path):
    """DNS rebinding: a page at http://attacker.example:PORT/ whose name now points at 127.0.0.1 reaches the
    server with its own name in Host; the server refuses it."""
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path) as server:
        port = urlsplit(server.url).port
        answers = {host: server.client.get("/health", headers={"Host": host})
                   for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}",
                                f"attacker.example:{port}", "attacker.example", f"127.0.0.1:{port + 1}",
                                f"localhost.:{port}")}
        rebound = server.client.post("/score", json={"transcript": TRANSCRIPT},
                                     headers={"Host": f"attacker.example:{port}"})
        page = server.client.get("/", headers={"Host": f"attacker.example:{port}"})
        calls = len(server.service.backend.calls)
    statuses = {host: answer.status_code for host, answer in answers.items()}
    assert statuses == {f"127.0.0.1:{port}": 200, f"localhost:{port}": 200, f"LOCALHOST:{port}": 200,
                        f"[::1]:{port}": 200, f"attacker.example:{port}": 403, "attacker.example": 403,
                        f"127.0.0.1:{port + 1}": 403, f"localhost.:{port}": 403}
    refused = answers[f"attacker.example:{port}"].json()
    assert refused["reason"] == "bad_host" and f"127.0.0.1:{port}" in refused["detail"]
    assert rebound.status_code == 403 and page.status_code == 403 and calls == 0


def test_a_server_with_a_token_answers_to_any_name(rubric, tmp_path):
    """Behind a proxy or on a public address the name is the user's to choose; the token guards it."""
    with served(FakeBackend(), rubric, tmp_path, token="tok") as server:
        answer = server.client.get("/health", headers={"Host": "hcp.clinic.example", "Authorization": "Bearer tok"})
    assert answer.status_code == 200


# (headers a browser sends with the write, allowed, why)
ORIGINS = [
    ({"Origin": "https://attacker.example", "Sec-Fetch-Site": "cross-site"}, False, "another site's page"),
    ({"Origin": "https://attacker.example"}, False, "another site, from a browser without Sec-Fetch-Site"),
    ({"Sec-Fetch-Site": "cross-site"}, False, "Sec-Fetch-Site alone"),
    ({"Origin": "null", "Sec-Fetch-Site": "cross-site"}, False, "a sandboxed frame or a file:// page"),
    ({"Origin": "http://127.0.0.1:{other}", "Sec-Fetch-Site": "same-site"}, False, "another port of this machine"),
    ({"Origin": "http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"}, True, "the server's own page"),
    ({"Sec-Fetch-Site": "none"}, True, "typed by the user"),
    ({}, True, "a program such as curl"),
    ({"Origin": ALLOWED, "Sec-Fetch-Site": "cross-site"}, True, "an origin --cors-origin names"),
]


@pytest.mark.parametrize(("headers", "allowed", "why"), ORIGINS, ids=[row[-1] for row in ORIGINS])
def test_a_tokenless_server_takes_writes_only_from_its_own_page(rubric, tmp_path, headers, allowed, why):
    """A page on any site can POST text/plain or a form to 127.0.0.1 without a CORS preflight: a rating, or a
    batch whose results it could then read. Only the server's own page (and --cors-origin) may write."""
    visits = b'{"id": "v1", "transcript": "RD: Hello. Patient: Hi."}\n'
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path, cors_origins=(ALLOWED,)) as server:
        port = urlsplit(server.url).port
        sent = {name: value.format(port=port, other=port + 1) for name, value in headers.items()}
        rating = server.client.post("/score", content=json.dumps({"transcript": TRANSCRIPT}),
                                    headers={"Content-Type": "text/plain", **sent})
        batch = server.client.post("/batch", files={"file": ("visits.jsonl", visits)}, headers=sent)
        batches = list(server.settings.batch_dir.glob("*.jsonl")) if server.settings.batch_dir.exists() else []
        calls = len(server.service.backend.calls)
    if allowed:
        assert rating.status_code == 200 and batch.status_code == 200, why
        return
    assert rating.status_code == batch.status_code == 403, why
    assert rating.json()["reason"] == "cross_origin" and "--cors-origin" in rating.json()["detail"]
    assert calls == 0 and not batches, why  # nothing rated, no batch started


def test_the_page_has_its_content_security_policy_wherever_it_is_served(rubric, tmp_path):
    with served(FakeBackend(), rubric, tmp_path) as server:
        root, static = server.client.get("/"), server.client.get("/static/index.html")
        script = server.client.get("/static/app.js")
    assert root.text == static.text
    assert static.headers["Content-Security-Policy"] == root.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in root.headers["Content-Security-Policy"]
    assert script.headers["Content-Security-Policy"] == root.headers["Content-Security-Policy"]
