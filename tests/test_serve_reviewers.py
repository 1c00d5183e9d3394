"""Several reviewers over real HTTP: each review is its reviewer's, two reviewers' reviews of one transcript are
both kept, the training file holds their consensus (or the adjudicated rating), reviewers sign in with tokens of
their own, an audit log records who did what (never a transcript), and a review queue offers the uncertain
ratings first with a share of random picks."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from hcp.batch.inputs import read_inputs
from hcp.batch.run import BatchOptions, run_batch
from hcp.cli import cli
from hcp.raters.agreement import AgreementOptions, run_agreement
from hcp.scoring.backends import Generation
from hcp.scoring.score import ScoreOptions
from hcp.serve.review_queue import RANDOM, ReviewQueue
from hcp.serve.reviewers import Registry, add_reviewer, read_reviewers
from hcp.serve.reviews import adjudicated_path, audit_path, model_ratings_path, reviewers_folder
from hcp.serve.service import open_reviewers
from hcp.serve.settings import ServeError, ServeSettings
from tests.fakes import GOOD_ANSWER, FakeBackend
from tests.serving import served

SECRET_WORD = "Zanzibarquux"  # a phrase of the transcript that must never reach the audit log
VISIT = (f"RD: Hello {SECRET_WORD}, how have the new meals been?\nPatient: Hard. I miss bread.\n"
         "RD: I understand how you feel.")


def review(client: httpx.Client, transcript: str, reviewer: str | None = None, headers: dict | None = None,
           **scores: int) -> httpx.Response:
    original = client.post("/score", json={"transcript": transcript}, headers=headers).json()
    body = {"transcript": transcript, "review": {**original["rating"], **scores}, "original": original}
    if reviewer is not None:
        body["reviewer"] = reviewer
    return client.post("/reviews", json=body, headers=headers)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_reviewers_reviews_are_both_kept_and_training_sees_their_consensus(rubric, tmp_path):
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path) as server:
        first = review(server.client, VISIT, "alice", empathy=2).json()
        again = review(server.client, VISIT, "alice", empathy=3).json()  # replaces alice's, not bob's
        both = review(server.client, VISIT, "bob", empathy=4, clarity=3).json()
    reviews = tmp_path / "reviews.jsonl"
    folder = reviewers_folder(reviews)
    assert (first["replaced"], again["replaced"], both["replaced"]) == (False, True, False)
    assert (first["training"], both["training"]) == ("review", "consensus")
    alice, bob = records(folder / "alice.jsonl"), records(folder / "bob.jsonl")
    assert len(alice) == len(bob) == 1 and alice[0]["empathy"] == 3 and bob[0]["empathy"] == 4
    trained = records(reviews)
    assert len(trained) == 1 and trained[0]["id"] == both["id"]
    # The consensus is hcp data consensus's, read from the reviewers' own files: median, round half down.
    out = tmp_path / "consensus.jsonl"
    made = CliRunner().invoke(cli, ["data", "consensus", str(folder / "alice.jsonl"), str(folder / "bob.jsonl"),
                                    "--out", str(out)])
    assert made.exit_code == 0, made.output
    assert trained == records(out)
    assert trained[0]["empathy"] == 3 and trained[0]["clarity"] == 3
    for path in (reviews, folder / "alice.jsonl", folder / "bob.jsonl", model_ratings_path(reviews)):
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert folder.stat().st_mode & 0o777 == 0o700
    validated = CliRunner().invoke(cli, ["data", "validate", str(reviews)])
    assert validated.exit_code == 0, validated.output


def test_a_disputed_transcript_waits_for_adjudication_which_becomes_its_consensus(rubric, tmp_path):
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path) as server:
        review(server.client, VISIT, "alice", empathy=5)
        saved = review(server.client, VISIT, "bob", empathy=2).json()
        ident = saved["id"]
        listed = server.client.get("/reviews/disputed").json()["disputed"]
        side = server.client.get(f"/reviews/{ident}").json()
        unknown = server.client.get("/reviews/000000000000")
        adjudication = {**GOOD_ANSWER, "empathy": 3, "reasoning": "Kind words, no plan: a 3."}
        judged = server.client.post(f"/reviews/{ident}/adjudicate",
                                    json={"review": adjudication, "reviewer": "carol"})
        after = server.client.get("/reviews/disputed").json()["disputed"]
    assert saved["training"] == "disputed"
    assert [(d["id"], d["dimensions"], d["adjudicated"]) for d in listed] == [(ident, ["empathy"], False)]
    assert listed[0]["scores"] == {"alice": {"empathy": 5}, "bob": {"empathy": 2}}
    assert side["transcript"] == VISIT and set(side["reviews"]) == {"alice", "bob"}
    assert side["disputed"] == ["empathy"] and side["proposal"]["empathy"] == 2  # the median, round half down
    assert side["model"]["rating"]["empathy"] == GOOD_ANSWER["empathy"]
    assert unknown.status_code == 404 and unknown.json()["reason"] == "not_found"
    assert judged.status_code == 200, judged.text
    assert judged.json()["training"] == "adjudicated" and after[0]["adjudicated"] is True
    reviews = tmp_path / "reviews.jsonl"
    trained = records(reviews)
    assert len(trained) == 1 and trained[0]["empathy"] == 3 and trained[0]["reasoning"] == adjudication["reasoning"]
    assert records(adjudicated_path(reviews)) == trained
    assert records(reviewers_folder(reviews) / "alice.jsonl")[0]["empathy"] == 5  # the reviews stay as they were


def test_before_adjudication_a_disputed_transcript_is_not_training_data(rubric, tmp_path):
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path) as server:
        review(server.client, VISIT, "alice", empathy=5)
        review(server.client, VISIT, "bob", empathy=1)
    assert (tmp_path / "reviews.jsonl").read_text() == ""


def test_the_agreement_panel_has_the_model_against_each_reviewer_and_the_reviewers_together(rubric, tmp_path):
    visits = [VISIT, VISIT.replace("bread", "rice"), VISIT.replace("bread", "pasta")]
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path) as server:
        for number, visit in enumerate(visits):
            review(server.client, visit, "alice", empathy=5 - number)
            review(server.client, visit, "bob", empathy=5 - number, clarity=3 + number % 2)
        shown = server.client.get("/reviews/agreement").json()
    reviews = tmp_path / "reviews.jsonl"
    folder = reviewers_folder(reviews)
    assert set(shown["reviewers"]) == {"alice", "bob"} and shown["n"] == 3
    assert shown["reviewers"]["alice"]["metrics"]["empathy"]["exact"] == pytest.approx(1 / 3)  # the model said 5
    assert shown["reviewers"]["bob"]["metrics"]["clarity"]["exact"] == pytest.approx(1 / 3)  # 3, 4, 3 against 4
    assert shown["reviewers"]["bob"]["command"] == (f"hcp evaluate --data {folder / 'bob.jsonl'} --predictions "
                                                    f"{model_ratings_path(reviews)}")
    # What `hcp data agreement alice.jsonl bob.jsonl` computes (its library call, without the report's plots).
    measured = run_agreement(AgreementOptions((folder / "alice.jsonl", folder / "bob.jsonl")), rubric).metrics
    between = shown["between"]
    assert between["transcripts"] == 3 and between["annotators"] == ["alice", "bob"]
    for name, dimension in measured["dimensions"].items():
        for statistic in ("alpha", "qwk", "exact", "within_one"):
            assert between["dimensions"][name][statistic]["value"] == dimension[statistic]["value"], (name, statistic)
    assert between["dimensions"]["empathy"]["exact"]["value"] == 1.0
    assert between["dimensions"]["clarity"]["exact"]["value"] == pytest.approx(1 / 3)


@pytest.mark.slow
def test_each_reviewers_agreement_is_what_hcp_evaluate_says(rubric, tmp_path):
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path) as server:
        for number, visit in enumerate([VISIT, VISIT.replace("bread", "rice")]):
            review(server.client, visit, "alice", empathy=5 - number)
            review(server.client, visit, "bob", empathy=4 - number, clarity=3 + number)
        shown = server.client.get("/reviews/agreement").json()
    reviews = tmp_path / "reviews.jsonl"
    for name in ("alice", "bob"):
        report = tmp_path / name
        evaluated = CliRunner().invoke(cli, shown["reviewers"][name]["command"].split()[1:] + ["--report", str(report)])
        assert evaluated.exit_code == 0, evaluated.output
        metrics = json.loads((report / "metrics.json").read_text())["raters"]["model"]["metrics"]
        assert shown["reviewers"][name]["metrics"] == metrics, name
    assert reviewers_folder(reviews).is_dir()


# --- reviewers with tokens of their own ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    """A reviewers file with alice and bob, and their tokens."""
    path = tmp_path_factory.mktemp("team") / "team.reviewers"
    return path, {name: add_reviewer(path, name) for name in ("alice", "bob")}


def test_each_reviewer_signs_in_with_their_own_token(rubric, tmp_path, team):
    path, tokens = team
    alice = {"Authorization": f"Bearer {tokens['alice']}"}
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path, reviewers=path, token="the-servers-own") as server:
        client = server.client
        no_token = client.post("/score", json={"transcript": VISIT})
        forged = {"Authorization": "Bearer alice." + "x" * 43}
        wrong = client.get("/health", headers=forged)
        swapped = client.get("/health", headers={"Authorization": f"Bearer {tokens['bob'].replace('bob', 'alice')}"})
        me = client.get("/reviewers/me", headers=alice).json()
        posing = review(client, VISIT, "bob", headers=alice, empathy=2)
        saved = review(client, VISIT, headers=alice, empathy=2)
        shared = {"Authorization": "Bearer the-servers-own"}
        shared_me = client.get("/reviewers/me", headers=shared).json()
        anonymous = review(client, VISIT, "carol", headers=shared, empathy=2)
        as_herself = review(client, VISIT, "alice", headers=alice, empathy=3)
    assert no_token.status_code == wrong.status_code == swapped.status_code == 401
    assert me == {"reviewer": "alice", "by_token": True, "queue": False}
    assert posing.status_code == 403 and posing.json()["reason"] == "reviewer" and "alice" in posing.json()["detail"]
    assert saved.status_code == 200 and saved.json()["reviewer"] == "alice"
    assert shared_me["reviewer"] is None
    assert anonymous.status_code == 403 and "token of their own" in anonymous.json()["detail"]
    assert as_herself.status_code == 200 and as_herself.json()["replaced"] is True
    folder = reviewers_folder(tmp_path / "reviews.jsonl")
    assert sorted(p.name for p in folder.iterdir()) == ["alice.jsonl"]


def test_a_reviewers_file_holds_hashes_only_and_is_the_owners(tmp_path):
    path = tmp_path / "r.reviewers"
    token = add_reviewer(path, "alice")
    text = path.read_text()
    assert token.startswith("alice.") and token.split(".", 1)[1] not in text
    assert text.startswith("alice scrypt$") and path.stat().st_mode & 0o777 == 0o600
    registry = Registry(path)
    assert registry.reviewer_of(token.encode()) == "alice"
    assert registry.reviewer_of(token.encode()) == "alice"  # from memory the second time
    assert registry.reviewer_of(b"alice.wrong") is None and registry.reviewer_of(b"\xff") is None
    renewed = add_reviewer(path, "alice", replace=True)
    assert registry.reviewer_of(token.encode()) is None  # the file changed: the old token no longer signs in
    assert registry.reviewer_of(renewed.encode()) == "alice"
    with pytest.raises(ServeError, match="--replace"):
        add_reviewer(path, "alice")
    with pytest.raises(ServeError, match="reviewer name"):
        add_reviewer(path, "../etc")


# (the file's text, its mode, a phrase of the error, why)
BAD_REVIEWER_FILES = [
    (None, 0o600, "not found", "missing"),
    ("alice scrypt$16384$8$1$c2FsdA$aGFzaA\nbob\n", 0o600, ":2: expected 'NAME HASH'", "a line with a name only"),
    ("alice md5$abc\n", 0o600, ":1: the hash of alice", "not a scrypt hash"),
    ("al/ice scrypt$16384$8$1$c2FsdA$aGFzaA\n", 0o600, ":1: reviewer name", "a name that is a path"),
    ("# nobody yet\n", 0o600, "no reviewers", "empty"),
    ("alice scrypt$16384$8$1$c2FsdA$aGFzaA\n", 0o644, "chmod 600", "others may read it"),
]


@pytest.mark.parametrize(("text", "mode", "phrase", "why"), BAD_REVIEWER_FILES, ids=[b[-1] for b in BAD_REVIEWER_FILES])
def test_a_bad_reviewers_file_is_refused_naming_the_line(tmp_path, text, mode, phrase, why):
    path = tmp_path / "team.reviewers"
    if text is not None:
        path.write_text(text)
        os.chmod(path, mode)
    with pytest.raises(ServeError) as refused:
        read_reviewers(path)
    assert phrase in str(refused.value) and str(path) in str(refused.value), why


# --- the audit log ------------------------------------------------------------------------------------------------


def test_the_audit_log_says_who_did_what_and_never_the_transcript(rubric, tmp_path):
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path) as server:
        ident = review(server.client, VISIT, "alice", empathy=5).json()["id"]
        review(server.client, VISIT, "alice", empathy=4)
        review(server.client, VISIT, "bob", empathy=1)
        adjudicated = {**GOOD_ANSWER, "empathy": 3, "reasoning": f"{SECRET_WORD} was heard: a 3."}
        server.client.post(f"/reviews/{ident}/adjudicate", json={"review": adjudicated, "reviewer": "carol"})
    log = audit_path(tmp_path / "reviews.jsonl")
    assert log.stat().st_mode & 0o777 == 0o600
    text = log.read_text()
    assert SECRET_WORD not in text and "bread" not in text
    entries = [json.loads(line) for line in text.splitlines()]
    assert [(e["reviewer"], e["action"], e["id"], e["model_version"]) for e in entries] == [
        ("alice", "review", ident, "fake-model"), ("alice", "replace_review", ident, "fake-model"),
        ("bob", "review", ident, "fake-model"), ("carol", "adjudicate", ident, "fake-model")]
    assert all(set(e) == {"time", "reviewer", "action", "id", "model_version"} for e in entries)


def test_a_ratings_model_version_is_what_the_audit_log_records(rubric, tmp_path):
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path) as server:
        original = server.client.post("/score", json={"transcript": VISIT}).json()
        saved = server.service.reviews.save(VISIT, original["rating"], {**original, "model_version": "rater:7"},
                                            "alice", "random")
    entry = json.loads(audit_path(tmp_path / "reviews.jsonl").read_text())
    assert entry["model_version"] == "rater:7" and entry["pick"] == "random" and entry["id"] == saved["id"]


def test_a_reviews_file_from_before_names_becomes_unnamed_reviews(rubric, tmp_path):
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path) as server:
        review(server.client, VISIT, empathy=2)
    folder = reviewers_folder(tmp_path / "reviews.jsonl")
    old = (folder / "unnamed.jsonl").read_text()
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path) as server:
        saved = review(server.client, VISIT.replace("bread", "cake"), "alice").json()
    assert (folder / "unnamed.jsonl").read_text() == old and saved["reviews"] == 2


# --- the review queue ---------------------------------------------------------------------------------------------

# Each visit quotes the fake backend's evidence line, so only low confidence flags a rating.
CONFIDENCES = [0.9, 0.3, 0.95, 0.45, 0.8, 0.2, 0.99, 0.6, 0.7, 0.4]


def queue_files(rubric, folder: Path) -> tuple[Path, Path]:
    """A batch input of visits and the results `hcp batch` wrote for it: visit i rated with empathy's
    confidence CONFIDENCES[i] (under 0.5: flagged needs_review)."""
    inputs = folder / "visits.jsonl"
    inputs.write_text("".join(json.dumps({"id": f"v{i}", "transcript": f"RD: I understand how you feel.\n"
                                          f"Patient: Visit {i}, {SECRET_WORD}."}) + "\n"
                              for i in range(len(CONFIDENCES))))
    answer = json.dumps({key: GOOD_ANSWER[key] for key in rubric.json_schema["properties"]})
    sure = {"clarity": {4: 1.0}, "accuracy": {4: 1.0}, "professionalism": {5: 1.0}}
    script = [Generation(answer, "stop", 100, 50, 0.1, score_distribution={"empathy": {5: c, 4: 1 - c}, **sure})
              for c in CONFIDENCES]
    results = folder / "results.jsonl"
    run_batch(read_inputs(inputs), FakeBackend(*script), rubric, ScoreOptions(raw_output_dir=folder),
              BatchOptions(out=results))
    return results, inputs


PRIORITY_ORDER = ["v5", "v1", "v9", "v3", "v7", "v8", "v4", "v0", "v2", "v6"]  # flagged first, least sure first


def test_the_queue_offers_flagged_and_least_confident_first_and_skips_what_you_reviewed(rubric, tmp_path):
    results, inputs = queue_files(rubric, tmp_path)
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path, queue_from=results, queue_input=inputs,
                random_share=0.0) as server:
        client = server.client
        shown = []
        for _ in range(3):
            offered = client.get("/queue/next", params={"reviewer": "alice"}).json()
            shown.append(offered["id"])
            assert offered["pick"] == "priority" and SECRET_WORD in offered["transcript"]
            body = {"transcript": offered["transcript"], "review": offered["result"]["rating"],
                    "original": offered["result"], "reviewer": "alice", "pick": offered["pick"]}
            assert client.post("/reviews", json=body).status_code == 200
        after = client.get("/queue/next", params={"reviewer": "alice"}).json()
        bobs = client.get("/queue/next", params={"reviewer": "bob"}).json()
        me = client.get("/reviewers/me").json()
    assert shown == PRIORITY_ORDER[:3]
    assert after["id"] == PRIORITY_ORDER[3] and after["progress"] == {"reviewed": 3, "total": 10, "left": 7}
    assert bobs["id"] == PRIORITY_ORDER[0] and bobs["progress"]["reviewed"] == 0
    assert me["queue"] is True
    first = offered["result"]
    assert first["needs_review"] is True and first["confidence"]["empathy"] == pytest.approx(0.4)  # v9's
    assert first["transcript_turns"][0]["speaker"] == "rd"


def test_a_queue_is_done_when_every_transcript_is_reviewed(rubric, tmp_path):
    results, inputs = queue_files(rubric, tmp_path)
    queue = ReviewQueue(results, inputs, rubric, random_share=0.5, seed=1)
    keys = {item.key for item in queue.items}
    assert queue.next(keys) == (None, None)
    assert queue.progress(keys) == {"reviewed": 10, "total": 10, "left": 0}


def test_the_random_share_of_picks_is_what_was_asked_and_uniform(rubric, tmp_path):
    results, inputs = queue_files(rubric, tmp_path)
    queue = ReviewQueue(results, inputs, rubric, random_share=0.2, seed=7)
    reviewed = {queue.items[0].key}  # the first in line is reviewed: never offered again
    picks = [queue.next(reviewed) for _ in range(20_000)]
    random_picks = [item.id for item, pick in picks if pick == RANDOM]
    share = len(random_picks) / len(picks)
    assert abs(share - 0.2) < 0.015  # binomial sd 0.003: five sd and more
    counts = Counter(random_picks)
    assert set(counts) == {i.id for i in queue.items[1:]}  # random picks among those left, the reviewed never
    expected = len(random_picks) / 9
    assert all(abs(n - expected) < 0.15 * expected for n in counts.values()), counts
    assert all(item.id == queue.items[1].id for item, pick in picks if pick != RANDOM)
    again = ReviewQueue(results, inputs, rubric, random_share=0.2, seed=7)
    assert [again.next(reviewed) for _ in range(200)] == picks[:200]  # the same seed, the same picks


# (what to break, a phrase of the error, why)
def test_a_queue_that_cannot_work_is_refused_naming_the_file(rubric, tmp_path):
    results, inputs = queue_files(rubric, tmp_path)

    def refused(**given) -> str:
        settings = ServeSettings(reviews=tmp_path / "r.jsonl", work_dir=tmp_path / "w", **given)
        with pytest.raises(ServeError) as error:
            settings.check()
            open_reviewers(settings, rubric)
        return str(error.value)

    assert "not found" in refused(queue_from=tmp_path / "none.jsonl", queue_input=inputs)
    (tmp_path / "not-results.jsonl").write_text('{"transcript": "RD: hi"}\n')
    assert "not a result of hcp batch" in refused(queue_from=tmp_path / "not-results.jsonl", queue_input=inputs)
    assert "--queue-input" in refused(queue_from=results)
    assert "--random-share" in refused(random_share=1.5)
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"id": "zz", "transcript": "RD: Something else."}) + "\n")
    assert "none of the 10 rated ids" in refused(queue_from=results, queue_input=other)
    changed = tmp_path / "changed.jsonl"
    changed.write_text(inputs.read_text().replace("Visit 3", "Visit three"))
    message = refused(queue_from=results, queue_input=changed)
    assert "1 transcript(s) differ" in message and "'v3'" in message and SECRET_WORD not in message


def test_add_reviewer_prints_the_token_once_and_keeps_only_its_hash(tmp_path):
    path = tmp_path / "team.reviewers"
    result = CliRunner().invoke(cli, ["serve", "add-reviewer", "dana", "--reviewers", str(path)])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert token.startswith("dana.") and len(token.splitlines()) == 1
    assert token not in path.read_text() and Registry(path).reviewer_of(token.encode()) == "dana"
