"""The page at / in a real headless browser: Debian's chromium, driven by playwright (which never downloads a
browser of its own here). Paste a transcript, see the bars, correct a score, save, find the example in the
reviews file; upload a batch, watch it finish, download the results.

Without chromium this module skips with the reason, except in CI (CI=true), where .ci/run installs chromium
and a missing browser is a failure. HCP_SCREENSHOT=docs/serve.png keeps the screenshot the README shows.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from hcp.scoring.backends import Generation
from tests.fakes import GOOD_ANSWER, FakeBackend
from tests.serving import served

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TRANSCRIPT = ("RD: Hi Maria, I'm Sam, the dietitian. How have the last two weeks been?\n"
              "Patient: Honestly hard. My A1c was 8.4 and I feel like I'm failing.\n"
              "RD: That sounds discouraging, and it's not a failure. Let's pick one change: swap the lunch soda "
              "for water, and we'll check in next week. Does that feel doable?\nPatient: Yes, I can do that.")
WAIT_MS = 20_000


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        reason = "chromium is not installed (apt-get install chromium); .ci/run installs it"
        if os.environ.get("CI"):
            pytest.fail(f"CI: {reason}")
        pytest.skip(reason)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1000, "height": 900}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"the page raised: {errors}"


# The rating quotes the transcript: three quotes in it (lines 1, 2 and 3; line 3 twice) and one that is not.
QUOTED = {**GOOD_ANSWER,
          "empathy_evidence": ["Patient: Honestly hard. My A1c was 8.4 and I feel like I'm failing.",
                               "RD: That sounds discouraging, and it's not a failure."],
          "clarity_evidence": ["RD: I understand how you feel"],  # not in this transcript
          "accuracy_evidence": ["RD: swap the lunch soda for water"],
          "professionalism_evidence": ["RD: Hi Maria, I'm Sam, the dietitian."]}
UNSURE = {"empathy": {5: 0.45, 4: 0.40, 3: 0.15}, "clarity": {4: 0.97, 3: 0.03}, "accuracy": {4: 0.9, 5: 0.1},
          "professionalism": {5: 0.99, 4: 0.01}}


def quoted_answer(rubric) -> Generation:
    text = json.dumps({key: QUOTED[key] for key in rubric.json_schema["properties"]})
    return Generation(text, "stop", 100, 50, 0.1, score_distribution=UNSURE)


def test_rate_correct_and_save_a_review(page, rubric, tmp_path):
    with served(FakeBackend(quoted_answer(rubric)), rubric, tmp_path) as server:
        page.goto(server.url + "/")
        expect(page.locator("#server")).to_contain_text("fake-model", timeout=WAIT_MS)
        for hidden in ("#result", "#progress", "#error", "#downloads", "#token-panel"):
            assert page.is_hidden(hidden), f"{hidden} shows before there is anything to show"

        page.fill("#transcript", TRANSCRIPT)
        page.click("#rate")
        page.wait_for_selector("#result:not([hidden])", timeout=WAIT_MS)
        assert page.is_visible("#result") and page.is_hidden("#progress")
        rows = page.locator("#bars .dim")
        assert rows.count() == len(rubric.names)
        empathy = page.locator('#bars .dim[data-dimension="empathy"]')
        assert empathy.locator(".level").inner_text().startswith("5: " + rubric.dimensions[0].levels[5])
        assert empathy.locator(".fill").evaluate("e => e.style.width") == "100%"
        assert page.inner_text("#overall") == "4.50"
        assert "fake-model (fake)" in page.inner_text("#rated-by") and page.is_hidden("#model-note")
        assert page.input_value("#reasoning") == GOOD_ANSWER["reasoning"]
        assert page.input_value("#strengths").splitlines() == GOOD_ANSWER["strengths"]

        # Confidence: empathy was a close call (45%, under the threshold of 50%); the rating says to look twice.
        assert "confidence 45%, expected score 4.3" in empathy.locator(".confidence.low").inner_text()
        clarity = page.locator('#bars .dim[data-dimension="clarity"]')
        assert "confidence 97%" in clarity.locator(".confidence").inner_text()
        assert clarity.locator(".confidence.low").count() == 0
        flag = page.inner_text("#review-flag")
        assert "the model was unsure of empathy" in flag and "a quote for clarity is not in the transcript" in flag

        # Evidence: each quote under its dimension, verified with its line or not; the transcript marks the lines.
        assert empathy.locator(".quotes .verified .status").all_inner_texts() == ["✓ line 2", "✓ line 3"]
        unverified = clarity.locator(".quotes .unverified")
        assert unverified.count() == 1 and clarity.locator(".quotes .verified").count() == 0
        assert "not verified: not in the transcript" in unverified.inner_text()
        lines = page.locator("#quoted-transcript li")
        assert lines.count() == 4
        assert [lines.nth(i).get_attribute("class") or "" for i in range(4)] == ["quoted"] * 3 + [""]
        assert lines.nth(0).locator(".tags").inner_text() == "professionalism"
        assert lines.nth(2).locator(".tags").inner_text() == "empathy · accuracy"
        empathy.locator(".quotes .verified").nth(1).click()
        assert "flash" in lines.nth(2).get_attribute("class")
        # The review keeps the verified quotes; clarity has none, so saving asks for one and saves nothing.
        assert page.input_value("#evidence-empathy").splitlines() == QUOTED["empathy_evidence"]
        assert page.input_value("#evidence-clarity") == ""

        # The reviewer disagrees on empathy and rewrites the reasoning.
        empathy.locator("select").select_option("2")
        assert "changed" in empathy.get_attribute("class")
        assert empathy.locator(".fill").evaluate("e => e.style.width") == "40%"
        assert "(model: 5)" in empathy.locator(".level").inner_text()
        assert "between 1" in empathy.locator(".level").inner_text()
        expected = rubric.overall({**GOOD_ANSWER, "empathy": 2})
        assert page.inner_text("#overall") == f"{expected:.2f}" and "(model: 4.5)" in page.inner_text("#overall-note")
        page.fill("#reasoning", "Validates the feeling only in passing; the plan is clear.")
        page.click("#save")
        expect(page.locator("#save-status")).to_contain_text("Not saved", timeout=WAIT_MS)
        assert "quotes box of clarity" in page.inner_text("#save-status")
        assert not (tmp_path / "reviews.jsonl").exists()

        page.fill("#evidence-clarity", "RD: Let's pick one change: swap the lunch soda for water")
        page.click("#save")
        expect(page.locator("#save-status")).to_contain_text("Saved as training example", timeout=WAIT_MS)
        page.wait_for_selector("#agreement:not([hidden])")
        agreement_rows = page.locator("#agreement tbody tr")
        assert agreement_rows.count() == len(rubric.names) + 1  # the dimensions and overall
        if os.environ.get("HCP_SCREENSHOT"):
            page.screenshot(path=os.environ["HCP_SCREENSHOT"], full_page=True)
        shot = page.screenshot(full_page=True)

    saved = [json.loads(x) for x in (tmp_path / "reviews.jsonl").read_text().splitlines()]
    assert len(saved) == 1 and saved[0]["empathy"] == 2 and saved[0]["clarity"] == GOOD_ANSWER["clarity"]
    assert saved[0]["reasoning"] == "Validates the feeling only in passing; the plan is clear."
    assert saved[0]["transcript"] == TRANSCRIPT
    assert saved[0]["empathy_evidence"] == QUOTED["empathy_evidence"]
    assert saved[0]["clarity_evidence"] == ["RD: Let's pick one change: swap the lunch soda for water"]
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_review_whose_quotes_are_not_in_the_transcript_is_refused_by_the_server(page, rubric, tmp_path):
    """The page asks for a quote per dimension; the server checks them against the transcript all the same."""
    with served(FakeBackend(quoted_answer(rubric)), rubric, tmp_path) as server:
        page.goto(server.url + "/")
        page.fill("#transcript", TRANSCRIPT)
        page.click("#rate")
        page.wait_for_selector("#result:not([hidden])", timeout=WAIT_MS)
        page.fill("#evidence-clarity", "RD: words nobody said in this visit")
        page.click("#save")
        expect(page.locator("#save-status")).to_contain_text("Not saved", timeout=WAIT_MS)
        status = page.inner_text("#save-status")
        assert "clarity_evidence quote 1 of 1: not in the transcript" in status
        assert "nobody said" not in status  # the message names the key, never the quote
    assert not (tmp_path / "reviews.jsonl").exists()


def test_errors_are_shown(page, rubric, tmp_path):
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path) as server:
        page.goto(server.url + "/")
        page.fill("#transcript", "   ")
        page.click("#rate")
        page.wait_for_selector("#error:not([hidden])", timeout=WAIT_MS)
        assert "the transcript is empty" in page.inner_text("#error")
        assert page.is_hidden("#result")


def test_model_text_is_shown_as_text_never_as_html(page, rubric, tmp_path):
    attack = "<img src=x onerror=\"window.pwned=1\">"
    answer = {**GOOD_ANSWER, "reasoning": attack, "strengths": [attack], "empathy_evidence": ["RD: " + attack]}
    with served(FakeBackend(answer, model="<b>bold</b>"), rubric, tmp_path) as server:
        page.goto(server.url + "/")
        page.fill("#transcript", TRANSCRIPT + "\nRD: " + attack)  # quoted, so its line is marked too
        page.click("#rate")
        page.wait_for_selector("#result:not([hidden])", timeout=WAIT_MS)
        assert page.input_value("#reasoning") == attack
        assert "<b>bold</b>" in page.inner_text("#rated-by")
        assert page.locator("img").count() == 0 and page.locator("#rated-by b").count() == 0
        assert page.locator("#quoted-transcript li.quoted").last.inner_text().startswith("RD: " + attack)
        assert page.evaluate("window.pwned") is None


def test_a_token_is_asked_for_and_used(page, rubric, tmp_path):
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path, token="page-token") as server:
        page.goto(server.url + "/")
        page.wait_for_selector("#token-panel:not([hidden])", timeout=WAIT_MS)
        page.fill("#token", "page-token")
        page.click("#token-form button")
        expect(page.locator("#server")).to_contain_text("fake-model", timeout=WAIT_MS)
        page.fill("#transcript", TRANSCRIPT)
        page.click("#rate")
        page.wait_for_selector("#result:not([hidden])", timeout=WAIT_MS)


def test_upload_a_batch_watch_it_and_download_the_results(page, rubric, tmp_path):
    visits = tmp_path / "visits.csv"
    visits.write_text("id,transcript\nv1,RD: Hello. Patient: Hi.\nv2,\nv3,\"RD: Eat more fibre. Patient: OK.\"\n")
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path) as server:
        page.goto(server.url + "/")
        page.set_input_files("#batch-file", str(visits))
        page.click("#batch-start")
        page.wait_for_selector("#downloads:not([hidden])", timeout=WAIT_MS)
        status = page.inner_text("#batch-status")
        progress = page.locator("#batch-progress")
        assert status.startswith("3 of 3 done") and "2 rated" in status and "1 failed" in status
        assert progress.evaluate("p => [p.value, p.max]") == [3, 3]
        downloaded = {}
        for kind in ("csv", "jsonl"):
            with page.expect_download() as info:
                page.click(f"#download-{kind}")
            path = Path(info.value.path())
            downloaded[kind] = (info.value.suggested_filename, path.read_text())
    name = downloaded["csv"][0].removesuffix(".csv")  # the file's name and a digest of its content
    assert name.startswith("visits-") and downloaded["jsonl"][0] == name + ".jsonl"
    assert [row[0] for row in csv.reader(io.StringIO(downloaded["csv"][1]))][1:] == ["v1", "v2", "v3"]
    records = [json.loads(x) for x in downloaded["jsonl"][1].splitlines()]
    assert [(r["id"], r["status"]) for r in records] == [("v1", "ok"), ("v2", "failed"), ("v3", "ok")]


def test_the_page_marks_the_turns_the_server_read(page, rubric, tmp_path):
    """The quoted turn is marked by the server's turns (transcript_turns), not by a parse of the page's own: an
    indented label starts a turn for the server, so the line after the quote is another speaker's, unmarked."""
    transcript = ("RD: Let's pick one change for this week.\n  Patient: Which one would help most?\n"
                  "RD: Swap the lunch soda for water.\nPatient: OK.")
    quote = "RD: Let's pick one change for this week."
    answer = {**GOOD_ANSWER, **{f"{name}_evidence": [quote] for name in rubric.names}}
    with served(FakeBackend(answer), rubric, tmp_path) as server:
        page.goto(server.url + "/")
        page.fill("#transcript", transcript)
        with page.expect_response("**/score") as scored:
            page.click("#rate")
        turns = scored.value.json()["transcript_turns"]
        page.wait_for_selector("#result:not([hidden])", timeout=WAIT_MS)
        marked = [i + 1 for i, item in enumerate(page.locator("#quoted-transcript li").all())
                  if "quoted" in (item.get_attribute("class") or "")]
    quoted_turn = next(t for t in turns if t["first_line"] == 1)
    assert marked == list(range(1, quoted_turn["last_line"] + 1)) == [1]
    assert "TURN_START" not in (Path(__file__).parents[1] / "hcp/serve/static/app.js").read_text()


def test_a_note_on_the_model_is_shown_beside_the_scores_as_text(page, rubric, tmp_path):
    """A rating's model_note (set when the embedded test model rated it) is one line near the scores, as text.
    The note is added to the real server's answer on its way to the page, as scoring sets it for that model."""
    note = "<b>SmolLM2-135M</b> is hcp's test model, not a rater: its ratings of real sessions are at chance."

    def add_note(route) -> None:
        response = route.fetch()
        route.fulfill(response=response, json={**response.json(), "model_note": note})

    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path) as server:
        page.route("**/score", add_note)
        page.goto(server.url + "/")
        page.fill("#transcript", TRANSCRIPT)
        page.click("#rate")
        page.wait_for_selector("#result:not([hidden])", timeout=WAIT_MS)
        assert page.inner_text("#model-note") == note and page.is_visible("#model-note")
        assert page.locator("#model-note b").count() == 0


def test_the_page_names_the_version_that_rated_and_the_review_keeps_it(page, rubric, tmp_path):
    """With a canary rating every transcript, the page says the canary's version rated it; the review the page
    saves carries that version beside the model's original rating."""
    from hcp.batch.results import read_results
    from hcp.serve.versions import Deployed

    transcript = TRANSCRIPT + "\nRD: I understand how you feel."  # the fake's quote is in it: a valid review
    with served(Deployed("rater:3", FakeBackend(model="a")), rubric, tmp_path,
                canary=Deployed("rater:4", FakeBackend(GOOD_ANSWER)), canary_share=1.0) as server:
        page.goto(server.url + "/")
        page.fill("#transcript", transcript)
        page.click("#rate")
        page.wait_for_selector("#result:not([hidden])", timeout=WAIT_MS)
        assert page.inner_text("#rated-by").startswith("Rated by version rater:4: fake-model (fake)")
        page.click("#save")
        expect(page.locator("#save-status")).to_contain_text("Saved as training example", timeout=WAIT_MS)
    [saved] = read_results(tmp_path / "reviews.model.jsonl").values()
    assert saved["model_version"] == "rater:4" and saved["model"] == "fake-model"


# --- several reviewers --------------------------------------------------------------------------------------------

# Every dimension quotes a line of this transcript, so each review's quotes verify as they come.
SHARED = ("RD: I understand how you feel. Let's look at your meals.\nPatient: I skip breakfast most days.\n"
          "RD: Try a small breakfast with some protein, and we'll review it in two weeks.")


def review_in_a_tab(browser, url: str, name: str, empathy: str) -> str:
    """A new tab (its own sessionStorage): give a name when asked, reload (not asked again), rate, set empathy,
    save; the save status."""
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    tab = context.new_page()
    try:
        tab.goto(url + "/")
        tab.wait_for_selector("#reviewer-panel:not([hidden])", timeout=WAIT_MS)
        tab.fill("#reviewer-name", name)
        tab.click("#reviewer-form button")
        expect(tab.locator("#reviewer")).to_have_text(f"Reviewing as {name}", timeout=WAIT_MS)
        tab.reload()
        expect(tab.locator("#reviewer")).to_have_text(f"Reviewing as {name}", timeout=WAIT_MS)
        assert tab.is_hidden("#reviewer-panel")  # asked once per tab
        tab.fill("#transcript", SHARED)
        tab.click("#rate")
        tab.wait_for_selector("#result:not([hidden])", timeout=WAIT_MS)
        tab.locator('#bars .dim[data-dimension="empathy"] select').select_option(empathy)
        tab.click("#save")
        expect(tab.locator("#save-status")).to_contain_text(f"{name}'s review", timeout=WAIT_MS)
        return tab.inner_text("#save-status")
    finally:
        context.close()


def test_two_reviewers_in_two_tabs_then_adjudication_saves_the_consensus(browser, page, rubric, tmp_path):
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path) as server:
        first = review_in_a_tab(browser, server.url, "alice", "5")
        second = review_in_a_tab(browser, server.url, "bob", "2")
        page.goto(server.url + "/")
        page.fill("#reviewer-name", "carol")
        page.click("#reviewer-form button")
        page.wait_for_selector("#adjudication-card:not([hidden])", timeout=WAIT_MS)
        entry = page.locator("#disputed li")
        assert entry.count() == 1 and "empathy: alice 5, bob 2" in entry.inner_text()
        assert page.is_visible("#agreement-between-block") and page.is_visible("#agreement-reviewers-block")
        assert page.locator("#agreement-reviewers tbody tr").all_inner_texts()[0].startswith("alice")
        entry.locator("button").click()
        page.wait_for_selector("#adjudicate-view:not([hidden])", timeout=WAIT_MS)
        assert page.inner_text("#adjudicate-transcript") == SHARED
        head = page.locator("#side-by-side thead th").all_inner_texts()
        assert head == ["", "alice", "bob", "model"]
        empathy_row = page.locator("#side-by-side tbody tr").first.locator("td").all_inner_texts()
        assert empathy_row == ["empathy", "5", "2", "5"]
        page.locator('.adjudicate-dim[data-dimension="empathy"] select').select_option("4")
        page.fill("#adjudicate-reasoning", "Warm and concrete; the plan could be checked back.")
        page.click("#adjudicate-save")
        expect(page.locator("#adjudicate-status")).to_contain_text("Saved as the consensus", timeout=WAIT_MS)
        expect(page.locator("#disputed li")).to_contain_text("(adjudicated)", timeout=WAIT_MS)
    assert "Saved as training example" in first and "alice's review" in first and "adjudicate it below" in second
    folder = tmp_path / "reviews.reviewers"
    assert sorted(p.name for p in folder.iterdir()) == ["alice.jsonl", "bob.jsonl"]
    trained = [json.loads(x) for x in (tmp_path / "reviews.jsonl").read_text().splitlines()]
    assert len(trained) == 1 and trained[0]["empathy"] == 4
    assert trained[0]["reasoning"] == "Warm and concrete; the plan could be checked back."
    audit = [json.loads(x) for x in (tmp_path / "reviews.audit.jsonl").read_text().splitlines()]
    assert [(a["reviewer"], a["action"]) for a in audit] == [("alice", "review"), ("bob", "review"),
                                                             ("carol", "adjudicate")]


def test_the_next_transcript_to_review_comes_from_the_queue(page, rubric, tmp_path):
    from hcp.serve.review_queue import ReviewQueue
    from tests.test_serve_reviewers import queue_files

    results, inputs = queue_files(rubric, tmp_path)
    # The server's queue and this one have the same seed: the same picks, call for call.
    expected = ReviewQueue(results, inputs, rubric, random_share=0.5, seed=3)
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path, queue_from=results, queue_input=inputs,
                random_share=0.5, queue_seed=3) as server:
        page.goto(server.url + "/")
        page.fill("#reviewer-name", "alice")
        page.click("#reviewer-form button")
        page.wait_for_selector("#queue-card:not([hidden])", timeout=WAIT_MS)
        reviewed: set[str] = set()
        picks = []
        for number in range(1, 4):
            item, pick = expected.next(reviewed)
            picks.append(pick)
            page.click("#queue-next")
            expect(page.locator("#queue-pick")).to_contain_text(f"Transcript {item.id}:", timeout=WAIT_MS)
            assert ("at random" in page.inner_text("#queue-pick")) == (pick == "random")
            assert page.input_value("#transcript") == item.transcript and page.is_visible("#result")
            page.click("#save")
            expect(page.locator("#queue-progress")).to_have_text(f"{number} of 10 reviewed by you · {10 - number} "
                                                                 "left", timeout=WAIT_MS)
            reviewed.add(item.key)
    audit = [json.loads(x) for x in (tmp_path / "reviews.audit.jsonl").read_text().splitlines()]
    assert [a["pick"] for a in audit] == picks and all(a["reviewer"] == "alice" for a in audit)


@pytest.mark.slow  # the default suite checks the reviewer tokens over HTTP (test_serve_reviewers.py)
def test_a_reviewer_signs_in_with_their_own_token(page, rubric, tmp_path):
    from hcp.serve.reviewers import add_reviewer

    token = add_reviewer(tmp_path / "team.reviewers", "alice")
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path, reviewers=tmp_path / "team.reviewers") as server:
        page.goto(server.url + "/")
        page.wait_for_selector("#token-panel:not([hidden])", timeout=WAIT_MS)
        page.fill("#token", token)
        page.click("#token-form button")
        expect(page.locator("#reviewer")).to_have_text("Reviewing as alice (your token)", timeout=WAIT_MS)
        assert page.is_hidden("#reviewer-panel")  # the token names the reviewer: no name is asked
        page.fill("#transcript", SHARED)
        page.click("#rate")
        page.wait_for_selector("#result:not([hidden])", timeout=WAIT_MS)
        page.click("#save")
        expect(page.locator("#save-status")).to_contain_text("alice's review", timeout=WAIT_MS)
    assert (tmp_path / "reviews.reviewers" / "alice.jsonl").exists()
