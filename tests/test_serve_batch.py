"""POST /batch over real HTTP: a streamed NDJSON line per transcript as each completes, resumable like
`hcp batch`, the client going away, and the results downloads."""

from __future__ import annotations

import csv
import io
import json

import httpx
import pytest

from hcp.batch.results import read_results
from tests.fakes import GOOD_ANSWER, FakeBackend
from tests.serving import GatedBackend, served, wait_for

ROWS = [
    {"id": "a", "transcript": "RD: Hello, how are you? Patient: Tired."},
    {"id": "b", "transcript": "RD: What did you eat today? Patient: Toast."},
    {"id": "c", "transcript": ""},
    {"id": "d", "transcript": "RD: Any questions? Patient: No, thanks."},
]


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def upload(client: httpx.Client, data: bytes, filename: str = "visits.jsonl", **params) -> httpx.Response:
    return client.post("/batch", files={"file": (filename, data)}, params=params)


def lines(response: httpx.Response) -> list[dict]:
    return [json.loads(x) for x in response.text.splitlines()]


def test_an_upload_streams_one_record_per_transcript(rubric, tmp_path):
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path) as server:
        answer = upload(server.client, jsonl(ROWS))
        stored = read_results(server.settings.batch_dir / "visits.jsonl")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/x-ndjson"
    assert answer.headers["X-HCP-Batch"] == "visits" and answer.headers["X-HCP-Total"] == "4"
    assert answer.headers["X-HCP-Done"] == "0"
    records = lines(answer)
    assert [r["id"] for r in records] == ["a", "b", "c", "d"]
    assert [r["status"] for r in records] == ["ok", "ok", "failed", "ok"]
    assert records[2]["error"] == "empty" and records[2]["source"] == "visits.jsonl:3"
    assert records[0]["rating"]["empathy"] == GOOD_ANSWER["empathy"] and records[0]["backend"] == "fake"
    assert stored == {r["id"]: r for r in records}  # the stream is the results file, line for line


def test_a_csv_upload_and_a_json_list(rubric, tmp_path):
    table = "id,transcript\n1,RD: Hello. Patient: Hi.\n2,\"RD: Two, with a comma. Patient: Yes.\"\n"
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path) as server:
        from_csv = upload(server.client, table.encode(), "clinic.csv")
        listed = ["RD: One. Patient: a.", {"id": "x", "transcript": "RD: b. Patient: c."}]
        from_list = server.client.post("/batch", json=listed)
    assert [r["id"] for r in lines(from_csv)] == ["1", "2"] and from_csv.headers["X-HCP-Batch"] == "clinic"
    records = lines(from_list)
    assert [r["status"] for r in records] == ["ok", "ok"] and records[1]["id"] == "x"
    assert len(records[0]["id"]) == 12  # an id made from the text, as hcp batch makes it
    assert from_list.headers["X-HCP-Batch"].startswith("batch-")


def test_records_stream_as_each_completes(rubric, tmp_path):
    backend = GatedBackend(GOOD_ANSWER)
    with served(backend, rubric, tmp_path) as server, \
            server.client.stream("POST", "/batch", files={"file": ("s.jsonl", jsonl(ROWS[:2]))}) as answer:
        received = answer.iter_lines()
        backend.wait_started()
        backend.gate.set()  # lets both through; the first line is read before the second is rated
        first = json.loads(next(received))
        rest = [json.loads(x) for x in received]
    assert first["id"] == "a" and [r["id"] for r in rest] == ["b"]


def test_sending_a_batch_again_rates_only_what_is_left(rubric, tmp_path):
    backend = FakeBackend(*["not json"] * 3, GOOD_ANSWER)  # the first transcript fails all 3 attempts
    with served(backend, rubric, tmp_path) as server:
        first = lines(upload(server.client, jsonl(ROWS)))
        calls = len(backend.calls)
        again = upload(server.client, jsonl([*ROWS, {"id": "e", "transcript": "RD: New. Patient: One."}]))
        new_calls = len(backend.calls) - calls
        retried = upload(server.client, jsonl(ROWS), retry_failed="true")
    assert [r["status"] for r in first] == ["failed", "ok", "failed", "ok"] and first[0]["error"] == "invalid_output"
    assert again.headers["X-HCP-Done"] == "4" and again.headers["X-HCP-Total"] == "5"
    assert [r["id"] for r in lines(again)] == ["a", "b", "c", "d", "e"] and new_calls == 1  # only 'e' rated
    assert retried.headers["X-HCP-Done"] == "2"  # b and d; a and c are tried again
    assert {r["id"]: r["status"] for r in lines(retried)} == {"b": "ok", "d": "ok", "a": "ok", "c": "failed"}


def test_a_client_that_goes_away_stops_its_batch(rubric, tmp_path):
    backend = GatedBackend(GOOD_ANSWER)
    rows = [{"id": str(i), "transcript": f"RD: Visit {i}. Patient: Fine."} for i in range(6)]
    gone = 'hcp_failures_total{reason="client_gone"} 1.0'
    with served(backend, rubric, tmp_path) as server:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + "/batch", files={"file": ("gone.jsonl", jsonl(rows))}, timeout=1.0)
        backend.wait_started()  # the first transcript is being rated when the client leaves
        wait_for(lambda: gone in server.client.get("/metrics").text, what="the server to see the client leave")
        backend.gate.set()  # the rating in flight ends; nothing after it starts
        wait_for(lambda: "gone" not in server.service.batches._busy, what="the batch to stop")  # noqa: SLF001
        stored = read_results(server.settings.batch_dir / "gone.jsonl")
        again = upload(server.client, jsonl(rows), "gone.jsonl")
    assert backend.rated[:1] and len(backend.rated) - 5 == 1  # one rated before the client left, 5 on resending
    assert list(stored) == ["0"]  # the one in flight was finished and recorded; a resend rates the rest
    assert again.headers["X-HCP-Done"] == "1" and len(lines(again)) == 6


def test_a_batch_name_is_one_requests_at_a_time(rubric, tmp_path):
    backend = GatedBackend(GOOD_ANSWER)
    with served(backend, rubric, tmp_path) as server:
        with server.client.stream("POST", "/batch", files={"file": ("busy.jsonl", jsonl(ROWS[:1]))}):
            backend.wait_started()
            clash = upload(httpx.Client(base_url=server.url), jsonl(ROWS[:1]), "busy.jsonl")
            backend.gate.set()
    assert clash.status_code == 409 and clash.json()["reason"] == "conflict"


def test_a_results_file_of_another_model_is_not_mixed(rubric, tmp_path):
    with served(FakeBackend(GOOD_ANSWER, model="one"), rubric, tmp_path) as server:
        upload(server.client, jsonl(ROWS[:1]), "shared.jsonl")
    with served(FakeBackend(GOOD_ANSWER, model="two"), rubric, tmp_path) as server:
        clash = upload(server.client, jsonl(ROWS[:1]), "shared.jsonl")
        other_name = upload(server.client, jsonl(ROWS[:1]), "shared.jsonl", name="shared-two")
    assert clash.status_code == 409 and "another name" in clash.json()["detail"]
    assert other_name.status_code == 200 and lines(other_name)[0]["model"] == "two"


# (upload, file name, params, status, phrase)
BAD = [
    (b"", "empty.jsonl", {}, 400, "no transcripts found", "an empty file"),
    (b'{"text": "RD: hi"}\n', "x.jsonl", {}, 400, "no 'transcript' field", "no transcript field"),
    (b"RD: hi. Patient: hello.", "visit.txt", {}, 400, "unknown data format", "a .txt upload"),
    (jsonl(ROWS[:1]), "ok.jsonl", {"name": "../../etc"}, 400, "name", "a name that is a path"),
]


@pytest.mark.parametrize(("data", "filename", "params", "status", "phrase", "why"), BAD, ids=[b[-1] for b in BAD])
def test_bad_uploads_are_one_line_errors(rubric, tmp_path, data, filename, params, status, phrase, why):
    with served(FakeBackend(), rubric, tmp_path) as server:
        answer = upload(server.client, data, filename, **params)
    assert answer.status_code == status and phrase in answer.json()["detail"], why
    assert str(tmp_path) not in answer.json()["detail"]  # names the upload, not the server's temporary copy


def test_other_bodies_are_refused(rubric, tmp_path):
    with served(FakeBackend(), rubric, tmp_path) as server:
        not_a_list = server.client.post("/batch", json={"transcript": "RD: hi. Patient: yo."})
        no_file = server.client.post("/batch", files={"other": ("a.jsonl", b"{}")})
        text = server.client.post("/batch", content=b"RD: hi", headers={"Content-Type": "text/plain"})
    assert not_a_list.status_code == 400 and no_file.status_code == 400 and text.status_code == 400
    assert "field 'file'" in no_file.json()["detail"]


def test_results_download_as_jsonl_and_csv(rubric, tmp_path):
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path) as server:
        upload(server.client, jsonl(ROWS), "dl.jsonl")
        as_jsonl = server.client.get("/batch/dl/results.jsonl")
        as_csv = server.client.get("/batch/dl/results.csv")
        missing = server.client.get("/batch/nope/results.csv")
    assert as_jsonl.status_code == 200 and [r["id"] for r in lines(as_jsonl)] == ["a", "b", "c", "d"]
    assert 'filename="dl.csv"' in as_csv.headers["content-disposition"]
    table = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [row["id"] for row in table] == ["a", "b", "c", "d"] and table[0]["empathy"] == "5"
    assert table[0]["strengths"] == "Validates feelings;Concrete plan"
    assert missing.status_code == 404 and missing.json()["reason"] == "not_found"


def test_the_uploads_temporary_copy_is_removed(rubric, tmp_path):
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path) as server:
        upload(server.client, jsonl(ROWS), "copy.jsonl")
        upload(server.client, b"", "broken.jsonl")  # refused: removed all the same
        everything = [p.name for p in server.settings.work_dir.rglob("*")]
    assert "copy.jsonl" in everything and not [name for name in everything if name.startswith(".upload")]
