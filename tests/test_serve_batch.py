"""POST /batch over real HTTP: a streamed NDJSON line per transcript as each completes, resumable like
`hcp batch`, the client going away, and the results downloads."""

from __future__ import annotations

import csv
import io
import json

import httpx
import pytest

from hcp.batch.results import read_results
from hcp.serve.batches import batch_name
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


def name_of(data: bytes, filename: str) -> str:
    """The name the server gives an upload sent without ?name=."""
    return batch_name(None, filename, data)


def test_an_upload_streams_one_record_per_transcript(rubric, tmp_path):
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path) as server:
        answer = upload(server.client, jsonl(ROWS))
        name = answer.headers["X-HCP-Batch"]
        stored = read_results(server.settings.batch_dir / f"{name}.jsonl")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/x-ndjson"
    assert name == name_of(jsonl(ROWS), "visits.jsonl") and name.startswith("visits-")
    assert answer.headers["X-HCP-Total"] == "4"
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
    assert [r["id"] for r in lines(from_csv)] == ["1", "2"] and from_csv.headers["X-HCP-Batch"].startswith("clinic-")
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
        sent = upload(server.client, jsonl(ROWS))
        first, name = lines(sent), sent.headers["X-HCP-Batch"]
        calls = len(backend.calls)
        same = upload(server.client, jsonl(ROWS))  # the same file: the same batch, nothing to rate
        again = upload(server.client, jsonl([*ROWS, {"id": "e", "transcript": "RD: New. Patient: One."}]), name=name)
        new_calls = len(backend.calls) - calls
        retried = upload(server.client, jsonl(ROWS), retry_failed="true")
    assert [r["status"] for r in first] == ["failed", "ok", "failed", "ok"] and first[0]["error"] == "invalid_output"
    assert same.headers["X-HCP-Batch"] == name and same.headers["X-HCP-Done"] == "4"
    assert again.headers["X-HCP-Done"] == "4" and again.headers["X-HCP-Total"] == "5"
    assert [r["id"] for r in lines(again)] == ["a", "b", "c", "d", "e"] and new_calls == 1  # only 'e' rated
    assert retried.headers["X-HCP-Done"] == "2"  # b and d; a and c are tried again
    assert {r["id"]: r["status"] for r in lines(retried)} == {"b": "ok", "d": "ok", "a": "ok", "c": "failed"}


def test_a_client_that_goes_away_stops_its_batch(rubric, tmp_path):
    backend = GatedBackend(GOOD_ANSWER)
    rows = [{"id": str(i), "transcript": f"RD: Visit {i}. Patient: Fine."} for i in range(6)]
    gone = 'hcp_failures_total{reason="client_gone"} 1.0'
    name = name_of(jsonl(rows), "gone.jsonl")
    with served(backend, rubric, tmp_path) as server:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + "/batch", files={"file": ("gone.jsonl", jsonl(rows))}, timeout=1.0)
        backend.wait_started()  # the first transcript is being rated when the client leaves
        wait_for(lambda: gone in server.client.get("/metrics").text, what="the server to see the client leave")
        backend.gate.set()  # the rating in flight ends; nothing after it starts
        wait_for(lambda: name not in server.service.batches._busy, what="the batch to stop")  # noqa: SLF001
        stored = read_results(server.settings.batch_dir / f"{name}.jsonl")
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
        numbers = server.client.post("/batch", json=["RD: hi. Patient: yo.", 7])
    assert not_a_list.status_code == 400 and no_file.status_code == 400 and text.status_code == 400
    assert numbers.status_code == 400 and numbers.json()["detail"].startswith("item 2 of the list is a number")
    assert "field 'file'" in no_file.json()["detail"]


def test_results_download_as_jsonl_and_csv(rubric, tmp_path):
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path) as server:
        name = upload(server.client, jsonl(ROWS), "dl.jsonl").headers["X-HCP-Batch"]
        as_jsonl = server.client.get(f"/batch/{name}/results.jsonl")
        as_csv = server.client.get(f"/batch/{name}/results.csv")
        missing = server.client.get("/batch/nope/results.csv")
    assert as_jsonl.status_code == 200 and [r["id"] for r in lines(as_jsonl)] == ["a", "b", "c", "d"]
    assert f'filename="{name}.csv"' in as_csv.headers["content-disposition"]
    assert f'filename="{name}.jsonl"' in as_jsonl.headers["content-disposition"]
    table = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [row["id"] for row in table] == ["a", "b", "c", "d"] and table[0]["empathy"] == "5"
    assert table[0]["strengths"] == "Validates feelings;Concrete plan"
    assert missing.status_code == 404 and missing.json()["reason"] == "not_found"


def test_the_uploads_temporary_copy_is_removed(rubric, tmp_path):
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path) as server:
        upload(server.client, jsonl(ROWS), "copy.jsonl")
        upload(server.client, b"", "broken.jsonl")  # refused: removed all the same
        everything = [p.name for p in server.settings.work_dir.rglob("*")]
    assert f"{name_of(jsonl(ROWS), 'copy.jsonl')}.jsonl" in everything
    assert not [name for name in everything if name.startswith(".upload")]


def test_two_different_files_of_the_same_name_are_two_batches(rubric, tmp_path):
    """Two clinics' visits.jsonl: each its own batch, its CSV its own rows only; neither resumes the other."""
    first = [{"id": "a", "transcript": "RD: Clinic one. Patient: Hi."}, {"id": "b", "transcript": "RD: One b."}]
    second = [{"id": "x", "transcript": "RD: Clinic two. Patient: Hello."}]
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path) as server:
        one, two = upload(server.client, jsonl(first)), upload(server.client, jsonl(second))
        tables = {answer.headers["X-HCP-Batch"]: server.client.get(f"/batch/{answer.headers['X-HCP-Batch']}"
                                                                   "/results.csv").text for answer in (one, two)}
    assert one.headers["X-HCP-Batch"] != two.headers["X-HCP-Batch"] and two.headers["X-HCP-Done"] == "0"
    ids = {name: [row["id"] for row in csv.DictReader(io.StringIO(text))] for name, text in tables.items()}
    assert ids == {one.headers["X-HCP-Batch"]: ["a", "b"], two.headers["X-HCP-Batch"]: ["x"]}


@pytest.mark.parametrize("filename", ["_visits.jsonl", ".visits.jsonl", "-visits.jsonl", "___.jsonl"])
def test_an_uploads_file_name_never_makes_a_name_the_server_refuses(rubric, tmp_path, filename):
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path) as server:
        answer = upload(server.client, jsonl(ROWS[:1]), filename)
    assert answer.status_code == 200, answer.text
    assert answer.headers["X-HCP-Batch"].startswith("visits-" if "visits" in filename else "batch-")


def test_a_json_list_takes_the_ids_an_upload_takes(rubric, tmp_path):
    """A JSON list is read as the JSONL file it would be: a numeric id is its text, as in an uploaded file."""
    rows = [{"id": 7, "transcript": "RD: Seven. Patient: Yes."}, {"id": "eight", "transcript": "RD: Eight."}]
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path) as server:
        listed = server.client.post("/batch", json=rows)
        uploaded = upload(server.client, jsonl(rows), "numbers.jsonl")
    assert listed.status_code == uploaded.status_code == 200, listed.text
    assert [r["id"] for r in lines(listed)] == [r["id"] for r in lines(uploaded)] == ["7", "eight"]


def test_a_results_download_is_whole_records_while_the_batch_writes(rubric, tmp_path):
    """The results file of a running batch ends, at times, in a record half-written: a download stops at the
    last whole record, and its length is what was sent."""
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path) as server:
        name = upload(server.client, jsonl(ROWS), "live.jsonl").headers["X-HCP-Batch"]
        with (server.settings.batch_dir / f"{name}.jsonl").open("ab") as results:
            results.write(b'{"id": "e", "status": "o')  # a writer between two writes of one record
            results.flush()
            half = server.client.get(f"/batch/{name}/results.jsonl")
    assert half.status_code == 200 and half.text.endswith("\n")
    assert [r["id"] for r in lines(half)] == ["a", "b", "c", "d"]
    assert int(half.headers["content-length"]) == len(half.content)


def test_results_download_while_the_file_grows(rubric, tmp_path):
    """Many downloads while records are appended: each one a whole, readable snapshot (a length taken from the
    file's size and then a longer file broke about one in fourteen)."""
    import threading
    import time

    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path) as server:
        name = upload(server.client, jsonl(ROWS), "grows.jsonl").headers["X-HCP-Batch"]
        record = (json.dumps(lines(server.client.get(f"/batch/{name}/results.jsonl"))[0]) + "\n").encode()
        stop = threading.Event()

        def append() -> None:
            with (server.settings.batch_dir / f"{name}.jsonl").open("ab", buffering=0) as results:
                while not stop.is_set():
                    results.write(record[:50])
                    time.sleep(0.0005)
                    results.write(record[50:])

        writer = threading.Thread(target=append)
        writer.start()
        try:
            answers = [server.client.get(f"/batch/{name}/results.jsonl") for _ in range(40)]
        finally:
            stop.set()
            writer.join(10)
    assert [a.status_code for a in answers] == [200] * 40
    assert all(lines(a) and a.text.endswith("\n") for a in answers)


class NotedServerBackend(FakeBackend):
    """A backend that rates on a server and is no rater to trust: what hcp batch records of it, so must /batch."""

    def server(self) -> str | None:
        return "http://127.0.0.1:9/v1"

    def model_note(self) -> str | None:
        return "a test model: its ratings are not a rater's"


def test_a_batch_through_the_server_records_what_hcp_batch_records_of_the_rater(rubric, tmp_path):
    with served(NotedServerBackend(GOOD_ANSWER), rubric, tmp_path) as server:
        records = lines(upload(server.client, jsonl(ROWS[:2])))
    assert [r["server"] for r in records] == ["http://127.0.0.1:9/v1"] * 2
    assert [r["model_note"] for r in records] == ["a test model: its ratings are not a rater's"] * 2
