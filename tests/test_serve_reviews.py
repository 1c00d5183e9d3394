"""The review loop over real HTTP: a corrected rating becomes a training example that `hcp data validate`
accepts and `hcp train` reads, saved once per transcript, and the page's agreement is `hcp evaluate`'s."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from hcp.cli import cli
from hcp.data.dataset import load_dataset, require_valid
from hcp.serve.reviews import Reviews, model_ratings_path
from hcp.serve.settings import ServeError
from tests.fakes import FAKE_EVIDENCE, GOOD_ANSWER, FakeBackend
from tests.serving import served

# Each visit has the line the fake backend quotes as evidence ("RD: I understand how you feel"), so its quotes
# verify and become part of the training example.
VISITS = [
    "RD: Hello Ana, how have the new meals been? Patient: Hard. I miss bread.\nRD: I understand how you feel.",
    "RD: Your potassium is high. Patient: What should I do?\nRD: I understand how you feel. Cut bananas for now.",
    "RD: Let's set one goal for this week. Patient: Walking after dinner?\nRD: I understand how you feel. Perfect.",
]


def rate_and_review(client, transcript: str, **changes) -> tuple[dict, dict]:
    original = client.post("/score", json={"transcript": transcript}).json()
    review = {**original["rating"], **changes}
    saved = client.post("/reviews", json={"transcript": transcript, "review": review, "original": original})
    assert saved.status_code == 200, saved.text
    return original, saved.json()


def test_a_review_is_training_data_that_validate_and_train_accept(rubric, tmp_path):
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path) as server:
        _, saved = rate_and_review(server.client, VISITS[0], empathy=2,
                                   strengths=["Names the feeling"], reasoning="Warm, but no plan.")
    path = tmp_path / "reviews.jsonl"
    assert saved == {"id": saved["id"], "reviewer": "unnamed", "replaced": False, "training": "review", "reviews": 1,
                     "file": str(path)}
    record = json.loads(path.read_text())
    assert record == {"id": saved["id"], "transcript": VISITS[0], "empathy": 2, "clarity": 4, "accuracy": 4,
                      "professionalism": 5, "reasoning": "Warm, but no plan.", "strengths": ["Names the feeling"],
                      "areas_for_improvement": GOOD_ANSWER["areas_for_improvement"],
                      **{f"{n}_evidence": FAKE_EVIDENCE for n in ("empathy", "clarity", "accuracy", "professionalism")}}
    validated = CliRunner().invoke(cli, ["data", "validate", str(path)])
    assert validated.exit_code == 0, validated.output
    examples = require_valid(load_dataset(path, rubric))  # what hcp train reads its data with
    assert examples[0].scores["empathy"] == 2 and examples[0].id == saved["id"]
    for written in (path, model_ratings_path(path)):
        assert written.stat().st_mode & 0o777 == 0o600  # transcripts and model answers: the owner's alone


def test_saving_again_replaces_the_review(rubric, tmp_path):
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path) as server:
        _, first = rate_and_review(server.client, VISITS[0], empathy=2)
        _, other = rate_and_review(server.client, VISITS[1], clarity=1)
        _, again = rate_and_review(server.client, VISITS[0] + "\n", empathy=3)  # same text, a trailing newline
    records = [json.loads(x) for x in (tmp_path / "reviews.jsonl").read_text().splitlines()]
    assert again["id"] == first["id"] and again["replaced"] is True and again["reviews"] == 2
    assert [r["id"] for r in records] == [first["id"], other["id"]]  # replaced in place, never appended twice
    assert records[0]["empathy"] == 3
    models = [json.loads(x) for x in model_ratings_path(tmp_path / "reviews.jsonl").read_text().splitlines()]
    assert [m["id"] for m in models] == [first["id"], other["id"]]


def test_the_agreement_shown_is_hcp_evaluates(rubric, tmp_path):
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path) as server:
        empty = server.client.get("/reviews/agreement").json()
        rate_and_review(server.client, VISITS[0], empathy=2)
        rate_and_review(server.client, VISITS[1])
        rate_and_review(server.client, VISITS[2], empathy=4, clarity=5)
        shown = server.client.get("/reviews/agreement").json()
    assert empty["n"] == 0 and empty["metrics"] is None
    reviews, models = tmp_path / "reviews.jsonl", model_ratings_path(tmp_path / "reviews.jsonl")
    assert shown["command"] == f"hcp evaluate --data {reviews} --predictions {models}"
    report = tmp_path / "report"
    result = CliRunner().invoke(cli, ["evaluate", "--data", str(reviews), "--predictions", str(models),
                                      "--report", str(report)])
    assert result.exit_code == 0, result.output
    evaluated = json.loads((report / "metrics.json").read_text())["raters"]["model"]
    assert shown["n"] == evaluated["n"] == 3
    assert shown["metrics"] == evaluated["metrics"]
    assert shown["metrics"]["empathy"]["exact"] == pytest.approx(1 / 3)  # the model said 5; reviewers 2, 5, 4
    assert shown["metrics"]["professionalism"]["exact"] == 1.0


# (change to the model's rating, status, phrase, why)
BAD_REVIEWS = [
    ({"reasoning": "   "}, 422, "reasoning: missing or empty", "blank reasoning: the training data checks"),
    ({"empathy": 9}, 400, "review.empathy", "a score off the scale: the schema"),
    ({"strengths": []}, 400, "review.strengths", "no strengths: the schema"),
    ({"tone": 3}, 400, "review.tone", "a field the rubric does not have"),
]


@pytest.mark.parametrize(("change", "status", "phrase", "why"), BAD_REVIEWS, ids=[b[-1] for b in BAD_REVIEWS])
def test_a_review_that_is_not_valid_training_data_is_refused(rubric, tmp_path, change, status, phrase, why):
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path) as server:
        original = server.client.post("/score", json={"transcript": VISITS[0]}).json()
        answer = server.client.post("/reviews", json={"transcript": VISITS[0], "original": original,
                                                      "review": {**original["rating"], **change}})
    assert answer.status_code == status and phrase in answer.json()["detail"], (why, answer.json())
    assert "Ana" not in answer.text and not (tmp_path / "reviews.jsonl").exists()


def test_a_transcript_without_speaker_labels_is_not_training_data(rubric, tmp_path):
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path) as server:
        original = server.client.post("/score", json={"transcript": "hello there"}).json()
        answer = server.client.post("/reviews", json={"transcript": "hello there", "original": original,
                                                      "review": original["rating"]})
    assert answer.status_code == 422 and "speaker labels" in answer.json()["detail"]


def test_one_server_per_reviews_file(rubric, tmp_path):
    first = Reviews(tmp_path / "r.jsonl", rubric)
    try:
        with pytest.raises(ServeError, match="another hcp serve"):
            Reviews(tmp_path / "r.jsonl", rubric)
    finally:
        first.close()
    Reviews(tmp_path / "r.jsonl", rubric).close()  # free again once the first lets go
    with pytest.raises(ServeError, match=".jsonl"):
        Reviews(tmp_path / "r.csv", rubric)


def test_a_review_is_saved_with_every_quote_it_sent_or_not_at_all(rubric, tmp_path):
    """A quote the reviewer typed that is not in the transcript is never dropped quietly (the example would not
    be what the reviewer sent): the save is refused, naming each such quote by its key, number and problem —
    never its words — and saved once the reviewer corrects it."""
    visit = ("RD: Hello Ana, how have the new meals been?\nPatient: Hard. I miss bread so much.\n"
             "RD: I understand how you feel.")
    kept, missing, misattributed = "RD: I understand how you feel.", "Patient: I miss cheese", "RD: I miss bread"
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path) as server:
        original = server.client.post("/score", json={"transcript": visit}).json()

        def save(quotes: list[str]):
            review = {**original["rating"], "empathy_evidence": quotes}
            return server.client.post("/reviews", json={"transcript": visit, "review": review, "original": original})

        refused = save([kept, missing, misattributed])
        nothing_saved = not (tmp_path / "reviews.jsonl").exists()
        corrected = save([kept, "Patient: I miss bread so much"])
    detail = refused.json()["detail"]
    assert refused.status_code == 422 and refused.json()["reason"] == "invalid_review"
    assert "empathy_evidence quote 2 of 3: not in the transcript" in detail
    assert "empathy_evidence quote 3 of 3: those words were said by another speaker" in detail
    assert "quote 1 of 3" not in detail and "cheese" not in refused.text and nothing_saved
    assert corrected.status_code == 200
    record = json.loads((tmp_path / "reviews.jsonl").read_text())
    assert record["empathy_evidence"] == [kept, "Patient: I miss bread so much"]


def test_a_threshold_can_be_calibrated_on_reviews(rubric, tmp_path):
    """The model's original rating beside a review keeps its score distribution, as a batch results record does,
    so `hcp evaluate --target-agreement` reads the reviews file and the ratings beside it (issue 21)."""
    from hcp.scoring.backends import Generation

    text = json.dumps(GOOD_ANSWER)
    sure = {"empathy": {5: 0.9, 4: 0.1}, "clarity": {4: 0.8, 3: 0.2}, "accuracy": {4: 0.7, 5: 0.3},
            "professionalism": {5: 0.95, 4: 0.05}}
    backend = FakeBackend(Generation(text, "stop", 10, 50, 0.01, score_distribution=sure))
    with served(backend, rubric, tmp_path) as server:
        for visit in VISITS:
            original, _ = rate_and_review(server.client, visit)
            assert original["distribution"]["empathy"] == {"5": 0.9, "4": 0.1}
    [model] = [json.loads(x) for x in model_ratings_path(tmp_path / "reviews.jsonl").read_text().splitlines()][:1]
    assert model["distribution"]["empathy"] == {"5": 0.9, "4": 0.1} and model["confidence"]["accuracy"] == 0.7
    reviews, models = tmp_path / "reviews.jsonl", model_ratings_path(tmp_path / "reviews.jsonl")
    result = CliRunner().invoke(cli, ["evaluate", "--data", str(reviews), "--predictions", str(models),
                                      "--target-agreement", "0.9", "--risk", "0.1", "--report", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    threshold = json.loads((tmp_path / "r" / "metrics.json").read_text())["threshold"]
    assert "no rating has score probabilities" not in threshold["verdict"]
    assert "too few" in threshold["verdict"]  # three reviews: the set is too small for a guarantee, and says so
