"""hcp serve with several model versions: a canary that rates a share of the transcripts chosen by content, a
shadow that rates them again when the server is idle, the version on every rating, per-version metrics, drift
(PSI) against a version's validation distribution, and agreement per version. Through real uvicorn; the last test
with the real embedded model."""

from __future__ import annotations

import json
import math
import re
import threading
import time
from dataclasses import replace

import httpx
import pytest
from scipy.stats import binom

from hcp.batch.results import read_results
from hcp.serve.service import Service
from hcp.serve.settings import ServeError, ServeSettings
from hcp.serve.versions import Deployed, canary_draw, goes_to_canary, histogram, psi
from tests.fakes import GOOD_ANSWER, FakeBackend
from tests.serving import GatedBackend, hcp_serve, served, wait_for

# A transcript the fake answers quote a line of ("RD: I understand how you feel"): its review is training data.
QUOTED = "\nRD: I understand how you feel."
LOW = {**GOOD_ANSWER, "empathy": 2, "clarity": 2, "accuracy": 3, "professionalism": 2}


def visit(number: int) -> str:
    return f"RD: Hello, visit {number}. How have the meals been? Patient: Hard, number {number}.{QUOTED}"


def metric(text: str, name: str, **labels: str) -> float:
    """The value of the series `name` with exactly `labels` in the Prometheus text `text` (0 if absent)."""
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and dict(re.findall(r'(\w+)="([^"]*)"', match.group(1))) == labels:
            return float(match.group(2))
    return 0.0


# --- the split ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("share", [0.1, 0.5])
def test_the_canary_split_holds_its_share_within_the_binomial_interval(share):
    """Over 200 and over 2,000 content ids the canary's count lies in the 99.9% binomial interval of its share."""
    for count in (200, 2000):
        went = sum(goes_to_canary(visit(i), "hcp-rater:4", share) for i in range(count))
        low, high = binom.interval(0.999, count, share)
        assert low <= went <= high, (count, share, went)


def test_a_transcript_always_gets_the_same_version():
    """The draw is the content id's: the same text, however its lines and spaces fall, the same draw, every
    time; another canary (label) draws a new split, independent of the first."""
    for i in range(200):
        text = visit(i)
        assert canary_draw(text, "hcp-rater:4") == canary_draw(text, "hcp-rater:4")
        assert canary_draw(text, "hcp-rater:4") == canary_draw("  " + text.replace(" ", "  \n") + "\n", "hcp-rater:4")
    first = {i for i in range(2000) if goes_to_canary(visit(i), "hcp-rater:4", 0.5)}
    second = {i for i in range(2000) if goes_to_canary(visit(i), "hcp-rater:5", 0.5)}
    low, high = binom.interval(0.999, 2000, 0.25)
    assert low <= len(first & second) <= high  # independent draws: a quarter in both
    assert all(0 <= canary_draw(visit(i), "x") < 1 for i in range(200))
    assert not any(goes_to_canary(visit(i), "x", 0.0) for i in range(200))
    assert all(goes_to_canary(visit(i), "x", 1.0) for i in range(200))


# --- PSI ----------------------------------------------------------------------------------------------------

# (observed counts, expected counts, PSI, why)
PSI_CASES = [
    ([10, 20, 30, 20, 20], [10, 20, 30, 20, 20], 0.0, "the same distribution"),
    ([1, 2, 3, 2, 2], [10, 20, 30, 20, 20], 0.0, "the same shares, other counts"),
    ([50, 50, 0, 0, 0], [0, 0, 0, 50, 50], 2 * (0.5 - 1e-4) * math.log(0.5 / 1e-4) * 2,
     "disjoint: empty bins take epsilon, so it is large but finite"),
    ([20, 30, 50, 0, 0], [30, 30, 40, 0, 0], (0.2 - 0.3) * math.log(0.2 / 0.3) + (0.5 - 0.4) * math.log(0.5 / 0.4),
     "worked by hand"),
]


@pytest.mark.parametrize(("observed", "expected", "value", "why"), PSI_CASES, ids=[c[-1] for c in PSI_CASES])
def test_psi(observed, expected, value, why):
    assert psi(observed, expected) == pytest.approx(value, abs=1e-12), why


def test_psi_thresholds_and_histogram():
    assert histogram([1, 1, 5, 3, 9], [1, 2, 3, 4, 5]) == [2, 0, 1, 0, 1]  # off the scale: not counted
    reference = [5, 15, 30, 35, 15]
    assert psi([6, 14, 31, 34, 15], reference) < 0.1  # stable
    assert psi([30, 35, 20, 10, 5], reference) > 0.25  # a large shift
    with pytest.raises(ValueError, match="same bins"):
        psi([1, 2], [1, 2, 3])


# --- the service refuses what cannot work ---------------------------------------------------------------------


# (settings, canary label, shadow label, reference, phrase, why)
REFUSALS = [
    ({"canary_share": 0.2}, None, None, None, "without --canary", "a share with no canary"),
    ({"canary_share": 1.5}, "b", None, None, "between 0 and 1", "a share over 1"),
    ({"canary_share": -0.1}, "b", None, None, "between 0 and 1", "a negative share"),
    ({}, "a", None, None, "--canary a is the --model version", "the canary is the current version"),
    ({}, "b", "b", None, "--shadow b is the --canary version", "the shadow is the canary"),
    ({}, "b", None, {"empathy": [1, 2, 3]}, "score_distribution.empathy", "a reference of three scores"),
    ({}, "b", None, {"kindness": [1, 2, 3, 4, 5]}, "score_distribution.kindness", "a dimension not in the rubric"),
    ({"drift_window": 0}, None, None, None, "drift window", "an empty drift window"),
]


@pytest.mark.parametrize(("settings", "canary", "shadow", "reference", "phrase", "why"), REFUSALS,
                         ids=[r[-1] for r in REFUSALS])
def test_versions_that_cannot_be_served_are_refused_in_one_line(rubric, tmp_path, settings, canary, shadow,
                                                                 reference, phrase, why):
    config = ServeSettings(reviews=tmp_path / "r.jsonl", work_dir=tmp_path / "w", **settings)
    with pytest.raises(ServeError, match=re.escape(phrase)) as refused:
        Service(Deployed("a", FakeBackend()), rubric, options(tmp_path), config,
                canary=Deployed(canary, FakeBackend(), reference) if canary else None,
                shadow=Deployed(shadow, FakeBackend()) if shadow else None)
    assert "\n" not in str(refused.value), why


def options(tmp_path):
    from hcp.scoring.score import ScoreOptions

    return ScoreOptions(raw_output_dir=tmp_path)


# --- canary through uvicorn -----------------------------------------------------------------------------------


def test_the_canary_rates_its_share_and_every_rating_names_its_version(rubric, tmp_path):
    """/score and /batch send each transcript to the version its content id draws, every time; the answer, the
    batch record, the results file and the review record name that version; /metrics counts each version's
    ratings, scores and needs_review; /reviews/agreement gives each version's agreement with the reviewers."""
    current, canary = Deployed("rater:3", FakeBackend(GOOD_ANSWER, model="a")), Deployed("rater:4", FakeBackend(LOW))
    texts = [visit(i) for i in range(16)]
    expected = {t: "rater:4" if goes_to_canary(t, "rater:4", 0.5) else "rater:3" for t in texts}
    assert 3 <= list(expected.values()).count("rater:4") <= 13  # both versions get some
    with served(current, rubric, tmp_path, canary=canary, canary_share=0.5) as server:
        answers = [server.client.post("/score", json={"transcript": t}).json() for t in texts]
        again = [server.client.post("/score", json={"transcript": "  " + t + "\n"}).json() for t in texts[:4]]
        batch = server.client.post("/batch", json=[{"id": f"v{i}", "transcript": t} for i, t in enumerate(texts)])
        results_file = server.service.batches.results_path(batch.headers["X-HCP-Batch"])
        reviewed = [server.client.post("/reviews", json={"transcript": t, "review": a["rating"], "original": a})
                    for t, a in zip(texts, answers, strict=True)]
        agreement = server.client.get("/reviews/agreement").json()
        health = server.client.get("/health").json()
        text = server.client.get("/metrics").text
    assert [a["model_version"] for a in answers] == [expected[t] for t in texts]
    assert all(a["rating"]["empathy"] == (2 if a["model_version"] == "rater:4" else 5) for a in answers)
    assert [a["model_version"] for a in again] == [a["model_version"] for a in answers[:4]]  # never flips
    records = [json.loads(line) for line in batch.text.splitlines()]
    assert {r["id"]: r["model_version"] for r in records} == {f"v{i}": expected[t] for i, t in enumerate(texts)}
    assert {r["id"]: r["model"] for r in records} == {f"v{i}": "a" if expected[t] == "rater:3" else "fake-model"
                                                      for i, t in enumerate(texts)}
    assert {i: r["model_version"] for i, r in read_results(results_file).items()} == \
        {r["id"]: r["model_version"] for r in records}
    assert all(r.status_code == 200 for r in reviewed), reviewed[0].text
    saved = read_results(tmp_path / "reviews.model.jsonl")
    assert sorted(r["model_version"] for r in saved.values()) == sorted(expected.values())
    by_version = {v["version"]: v for v in agreement["versions"]}
    assert {v: by_version[v]["n"] for v in by_version} == {v: list(expected.values()).count(v) for v in by_version}
    exact = by_version["rater:4"]["metrics"]["empathy"]
    assert exact["exact"] == 1.0 and exact["intervals"]["exact"] == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0}
    assert health["versions"] == {"current": {"version": "rater:3", "share": 0.5},
                                  "canary": {"version": "rater:4", "share": 0.5}}
    canaries = list(expected.values()).count("rater:4")
    for version, role, count in (("rater:4", "canary", canaries), ("rater:3", "current", len(texts) - canaries)):
        rated = 2 * count + [expected[t] for t in texts[:4]].count(version)  # /score twice over, and the batch
        assert metric(text, "hcp_version_ratings_total", version=version, role=role, status="ok") == rated
        empathy = 2 if version == "rater:4" else 5
        assert metric(text, "hcp_version_score_bucket", version=version, role=role, dimension="empathy",
                      le=f"{empathy - 1}.0") == 0
        assert metric(text, "hcp_version_score_bucket", version=version, role=role, dimension="empathy",
                      le=f"{empathy}.0") == rated
        assert metric(text, "hcp_version_needs_review_share", version=version, role=role) == 0.0
    assert metric(text, "hcp_version_info", version="rater:4", role="canary", backend="fake", model="fake-model") == 0.5


def test_a_failed_rating_is_counted_under_its_version(rubric, tmp_path):
    current, canary = Deployed("rater:3", FakeBackend()), Deployed("rater:4", FakeBackend("not json"))
    text = next(visit(i) for i in range(100) if goes_to_canary(visit(i), "rater:4", 0.5))
    with served(current, rubric, tmp_path, canary=canary, canary_share=0.5) as server:
        answer = server.client.post("/score", json={"transcript": text})
        metrics = server.client.get("/metrics").text
    assert answer.status_code == 502
    assert metric(metrics, "hcp_version_failures_total", version="rater:4", role="canary",
                  reason="invalid_output") == 1
    assert metric(metrics, "hcp_version_ratings_total", version="rater:3", role="current", status="failed") == 0


def test_a_batch_rated_before_the_canary_is_resumed_not_refused(rubric, tmp_path):
    """Records made by the current version before a canary came (no model_version) count as done; the rest are
    rated by the version each transcript draws; a record of another model still refuses the batch."""
    texts = [visit(i) for i in range(8)]
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path) as server:
        first = server.client.post("/batch?name=visits", json=texts[:4])
    assert first.status_code == 200
    canary = Deployed("rater:4", FakeBackend(LOW))
    with served(Deployed("fake-model", FakeBackend(GOOD_ANSWER)), rubric, tmp_path, canary=canary,
                canary_share=0.5) as server:
        second = server.client.post("/batch?name=visits", json=texts)
    assert second.status_code == 200 and second.headers["X-HCP-Done"] == "4"
    new = [json.loads(line) for line in second.text.splitlines()][4:]
    assert sorted(r["model_version"] for r in new) == sorted(
        "rater:4" if goes_to_canary(t, "rater:4", 0.5) else "fake-model" for t in texts[4:])
    with served(Deployed("other:1", FakeBackend(model="other")), rubric, tmp_path, canary=canary,
                canary_share=0.5) as server:
        refused = server.client.post("/batch?name=visits", json=texts)
    assert refused.status_code == 409 and "another model" in refused.json()["detail"]


# --- drift ----------------------------------------------------------------------------------------------------


def test_metrics_export_the_psi_of_the_last_ratings_against_the_reference(rubric, tmp_path):
    """Reference: the version's score distribution on its validation set. Its recent ratings all 5 on empathy
    (the fake's answer) against a reference centred on 3: PSI as psi() computes it; clarity 4 likewise; the window
    keeps the last N."""
    reference = {"empathy": [5, 10, 50, 25, 10], "clarity": [0, 0, 0, 100, 0]}
    current = Deployed("rater:3", FakeBackend(GOOD_ANSWER), reference=reference)
    with served(current, rubric, tmp_path, drift_window=3) as server:
        before = server.client.get("/metrics").text
        for i in range(5):
            server.client.post("/score", json={"transcript": visit(i)})
        text = server.client.get("/metrics").text
    assert math.isnan(metric(before, "hcp_drift_psi", version="rater:3", role="current", dimension="empathy"))
    assert metric(text, "hcp_drift_window_ratings", version="rater:3", role="current") == 3
    assert metric(text, "hcp_drift_psi", version="rater:3", role="current", dimension="empathy") == \
        pytest.approx(psi([0, 0, 0, 0, 3], reference["empathy"]))
    assert metric(text, "hcp_drift_psi", version="rater:3", role="current", dimension="empathy") > 0.25
    assert metric(text, "hcp_drift_psi", version="rater:3", role="current", dimension="clarity") == 0.0
    assert "accuracy" not in "".join(line for line in text.splitlines() if line.startswith("hcp_drift_psi{"))


# --- shadow ---------------------------------------------------------------------------------------------------


class Watching(FakeBackend):
    """A shadow's model: records whether any user work was admitted to the queue whenever it is called."""

    def __init__(self, *script, model="shadow-model"):
        super().__init__(*script, model=model)
        self.service = None
        self.seen_busy: list[bool] = []

    def generate(self, messages, schema, options):
        self.seen_busy.append(not self.service.scheduler.idle or self.service.batches.running)
        return super().generate(messages, schema, options)


def test_the_shadow_rates_when_idle_and_users_see_the_current_version(rubric, tmp_path):
    """Users' answers are the current version's; the shadow rates each transcript again once nothing else runs,
    never beside a user's rating; its backlog is bounded and what it drops is counted; its pairs give the two
    versions' agreement with each other."""
    current = GatedBackend(GOOD_ANSWER, model="a")
    watching = Watching(LOW)
    with served(Deployed("rater:3", current), rubric, tmp_path, shadow=Deployed("rater:5", watching),
                shadow_backlog=1) as server:
        watching.service = server.service
        answers: list = []
        threads = [threading.Thread(target=lambda i=i: answers.append(
            server.client.post("/score", json={"transcript": visit(i)}).json())) for i in range(3)]
        for thread in threads:
            thread.start()
        current.wait_started()
        wait_for(lambda: server.service.scheduler.waiting == 2, what="two requests waiting")
        current.gate.set()  # three ratings run; each is offered to the shadow as it ends
        for thread in threads:
            thread.join(30)
        wait_for(lambda: len(watching.calls) == 1, what="the shadow to rate")
        wait_for(lambda: len(server.service.shadow.pairs) == 1, what="the shadow's pair")
        agreement = server.client.get("/reviews/agreement").json()
        text = server.client.get("/metrics").text
        health = server.client.get("/health").json()
    assert len(answers) == 3 and all(a["model_version"] == "rater:3" and a["rating"]["empathy"] == 5 for a in answers)
    assert watching.seen_busy == [False]  # it rated once the queue was empty, never beside a user's rating
    assert metric(text, "hcp_shadow_dropped_total", reason="backlog_full") == 2  # backlog of 1: two dropped
    assert metric(text, "hcp_version_ratings_total", version="rater:5", role="shadow", status="ok") == 1
    assert metric(text, "hcp_version_ratings_total", version="rater:3", role="current", status="ok") == 3
    assert metric(text, "hcp_ratings_total", source="score", status="ok") == 3  # users' ratings only
    [pairs] = agreement["shadow"]
    assert pairs["versions"] == ["rater:3", "rater:5"] and pairs["n"] == 1
    assert pairs["metrics"]["empathy"]["exact"] == 0.0 and pairs["metrics"]["empathy"]["mae"] == 3.0
    assert health["versions"]["shadow"] == {"version": "rater:5", "waiting": 0}


def test_the_shadow_waits_for_an_empty_queue_rather_than_queue_ahead_of_a_request(rubric, tmp_path):
    """Work offered to the shadow while a user's rating runs is not queued behind it: a request that comes next is
    rated first, and the shadow rates once both are done (nothing dropped as busy)."""
    current = GatedBackend(GOOD_ANSWER, model="a")
    watching = Watching(LOW)
    with served(Deployed("rater:3", current), rubric, tmp_path, shadow=Deployed("rater:5", watching)) as server:
        watching.service = server.service
        answers: list = []

        def ask(number: int) -> None:
            answers.append(server.client.post("/score", json={"transcript": visit(number)}).json())

        first = threading.Thread(target=ask, args=(1,))
        first.start()
        current.wait_started()
        server.service.offer_to_shadow(visit(9), "rater:3", GOOD_ANSWER)
        time.sleep(0.3)  # the shadow looks for an idle moment every 0.05 s
        second = threading.Thread(target=ask, args=(2,))
        second.start()
        wait_for(lambda: server.service.scheduler.waiting == 1, what="the second request to wait")
        current.gate.set()
        first.join(30)
        second.join(30)
        wait_for(lambda: len(server.service.shadow.pairs) == 3, what="the shadow to rate all three")
        text = server.client.get("/metrics").text
    assert len(answers) == 2 and metric(text, "hcp_shadow_dropped_total", reason="busy") == 0
    assert watching.seen_busy == [False, False, False]


class Slow(FakeBackend):
    """A shadow's model whose token count waits for the test, so that a request can arrive mid-rating."""

    def __init__(self, *script):
        super().__init__(*script, model="slow")
        self.counting, self.go = threading.Event(), threading.Event()

    def count_prompt_tokens(self, messages):
        self.counting.set()
        assert self.go.wait(30)
        return super().count_prompt_tokens(messages)


def test_the_shadow_steps_aside_when_a_request_comes(rubric, tmp_path):
    """A request that arrives while the shadow rates is not refused (the shadow takes no room in the queue) and
    gets the current version's rating; the shadow gives up before its next model call, and says so."""
    slow = Slow(LOW)
    with served(Deployed("rater:3", FakeBackend(GOOD_ANSWER)), rubric, tmp_path, shadow=Deployed("rater:5", slow),
                queue=0) as server:
        first = server.client.post("/score", json={"transcript": visit(1)})
        assert slow.counting.wait(10)  # the shadow is rating visit 1
        answer: list = []
        thread = threading.Thread(target=lambda: answer.append(
            server.client.post("/score", json={"transcript": visit(2)})))
        thread.start()
        wait_for(lambda: server.service.scheduler.waiting == 1, what="the request to wait")
        slow.go.set()
        thread.join(30)
        text = server.client.get("/metrics").text
    assert first.status_code == 200 and answer[0].status_code == 200  # not refused, though the queue holds 0
    assert answer[0].json()["model_version"] == "rater:3"
    assert metric(text, "hcp_shadow_dropped_total", reason="busy") >= 1
    assert not [m for m, _ in slow.calls if "visit 1." in m[-1]["content"]]  # visit 1 never reached generate


def test_the_shadow_writes_nothing_and_logs_no_transcript(rubric, tmp_path, caplog):
    from tests.serving import SECRET

    caplog.set_level("DEBUG")
    watching = Watching(LOW)
    with served(Deployed("rater:3", FakeBackend()), rubric, tmp_path, shadow=Deployed("rater:5", watching)) as server:
        watching.service = server.service
        server.client.post("/score", json={"transcript": SECRET})
        wait_for(lambda: len(server.service.shadow.pairs) == 1, what="the shadow's pair")
    assert "Qwertyuiop" not in caplog.text
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not [p for p in written if "Qwertyuiop" in p.read_text(errors="replace")], written


# --- the real embedded model -----------------------------------------------------------------------------------


def embedded_pair():
    """Two llama.cpp instances of SmolLM2, one thread each (the server runs them one at a time), and a rubric
    without quotes: shorter answers, and the rating is what these tests look at."""
    from hcp.config import load_config
    from hcp.rubric import Rubric
    from hcp.scoring.backends.llama_cpp import LlamaCppBackend
    from hcp.scoring.score import ScoreOptions

    plain = Rubric.from_config(load_config(None).model_copy(update={"scoring": load_config(None).scoring.model_copy(
        update={"evidence": False})}))
    backends = [LlamaCppBackend(None, num_ctx=2048, threads=1) for _ in range(2)]
    return backends, plain, ScoreOptions(num_ctx=2048)


def test_the_canary_and_the_shadow_rate_with_the_embedded_model(rubric, tmp_path):
    """A transcript drawn to the canary (version 2) gets its rating through uvicorn, named so; the shadow (version
    3, another llama.cpp instance) rates it again once the server is idle, and the pair reaches /metrics and
    /reviews/agreement."""
    (first, second), plain, options = embedded_pair()
    to_canary = next(visit(i) for i in range(40) if canary_draw(visit(i), "smollm2:2") < 0.5)
    try:
        with served(Deployed("smollm2:1", first), plain, tmp_path, replace(options, raw_output_dir=tmp_path),
                    canary=Deployed("smollm2:2", second), canary_share=0.5,
                    shadow=Deployed("smollm2:3", first)) as server:
            answer = server.client.post("/score", json={"transcript": to_canary, "seed": 3})
            wait_for(lambda: len(server.service.shadow.pairs) == 1, timeout=120, what="the shadow's rating")
            text = server.client.get("/metrics").text
            agreement = server.client.get("/reviews/agreement").json()
    finally:
        first.close()
        second.close()
    assert answer.status_code == 200, answer.text
    body = answer.json()
    plain.rating_model.model_validate(body["rating"])
    assert body["model_version"] == "smollm2:2" and body["backend"] == "llama-cpp"
    assert metric(text, "hcp_version_ratings_total", version="smollm2:2", role="canary", status="ok") == 1
    assert metric(text, "hcp_version_ratings_total", version="smollm2:1", role="current", status="ok") == 0
    assert metric(text, "hcp_version_confidence_count", version="smollm2:2", role="canary", dimension="empathy") == 1
    assert metric(text, "hcp_version_confidence_sum", version="smollm2:2", role="canary", dimension="empathy") == \
        pytest.approx(body["confidence"]["empathy"])
    assert metric(text, "hcp_version_ratings_total", version="smollm2:3", role="shadow", status="ok") == 1
    [pairs] = agreement["shadow"]
    assert pairs["versions"] == ["smollm2:2", "smollm2:3"] and pairs["n"] == 1


@pytest.mark.slow
def test_a_batch_split_between_versions_with_the_embedded_model(rubric, tmp_path):
    """A batch of two transcripts, one drawn to each version, through uvicorn: each record names its version; the
    shadow (a backlog of one) rates the first again once the batch is done and drops the second."""
    (first, second), plain, options = embedded_pair()
    texts = [visit(i) for i in range(40)]
    to_canary = next(t for t in texts if canary_draw(t, "smollm2:2") < 0.3)
    to_current = next(t for t in texts if canary_draw(t, "smollm2:2") > 0.7)
    try:
        with served(Deployed("smollm2:1", first), plain, tmp_path, replace(options, raw_output_dir=tmp_path),
                    canary=Deployed("smollm2:2", second), canary_share=0.5,
                    shadow=Deployed("smollm2:3", second), shadow_backlog=1) as server:
            batch = server.client.post("/batch", json=[{"id": "cur", "transcript": to_current},
                                                      {"id": "can", "transcript": to_canary}])
            wait_for(lambda: len(server.service.shadow.pairs) == 1, timeout=120, what="the shadow's rating")
            text = server.client.get("/metrics").text
            agreement = server.client.get("/reviews/agreement").json()
    finally:
        first.close()
        second.close()
    records = {r["id"]: r for r in map(json.loads, batch.text.splitlines())}
    assert {i: (r["status"], r["model_version"]) for i, r in records.items()} == {
        "cur": ("ok", "smollm2:1"), "can": ("ok", "smollm2:2")}
    for record in records.values():
        plain.rating_model.model_validate(record["rating"])
    assert metric(text, "hcp_version_ratings_total", version="smollm2:2", role="canary", status="ok") == 1
    assert metric(text, "hcp_version_ratings_total", version="smollm2:3", role="shadow", status="ok") == 1
    assert metric(text, "hcp_shadow_dropped_total", reason="backlog_full") == 1  # a backlog of one
    [pairs] = agreement["shadow"]
    assert pairs["versions"] == ["smollm2:1", "smollm2:3"] and pairs["n"] == 1


# --- the command ----------------------------------------------------------------------------------------------


def test_hcp_serve_with_a_canary_and_a_shadow(monkeypatch, tmp_path):
    """The options reach the server: each model opened as --model opens one, labelled as given; the start-up
    lines name the versions and their shares; every model is closed when the server stops."""
    opened: dict = {}

    def open_model(model):
        opened[model] = FakeBackend(LOW if model == "b.gguf" else GOOD_ANSWER, model=model or "hcp-rater")
        return opened[model]

    folders = ("--reviews", str(tmp_path / "r.jsonl"), "--work-dir", str(tmp_path / "w"))
    with hcp_serve(monkeypatch, open_model, "--model", "a.gguf", "--canary", "b.gguf", "--canary-share", "1",
                   "--shadow", "c.gguf", *folders) as server:
        answer = httpx.post(server.url + "/score", json={"transcript": visit(1)}).json()
        health = httpx.get(server.url + "/health").json()
    assert server.result.exit_code == 0, server.result.output
    assert answer["model_version"] == "b.gguf" and answer["rating"]["empathy"] == 2
    assert health["versions"]["current"] == {"version": "a.gguf", "share": 0.0}
    assert health["versions"]["shadow"]["version"] == "c.gguf"
    assert "canary version b.gguf, rates 100% of the transcripts" in server.result.output
    assert "shadow version c.gguf, for comparison only" in server.result.output
    assert sorted(opened) == ["a.gguf", "b.gguf", "c.gguf"] and all(b.closed for b in opened.values())
    with hcp_serve(monkeypatch, open_model, "--canary", "b.gguf", *folders) as server:
        health = httpx.get(server.url + "/health").json()
    assert health["versions"]["canary"] == {"version": "b.gguf", "share": 0.1}  # the default share
    assert health["versions"]["current"]["version"] == "hcp-rater"  # no --model: the model the backend opened
