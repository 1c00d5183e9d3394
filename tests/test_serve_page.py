"""The page at / in a real headless browser: Debian's chromium, driven by playwright (which never downloads a
browser of its own here). Paste a transcript, see the bars, correct a score, save, find the example in the
reviews file; upload a batch, watch it finish, download the results.

Without chromium this module skips with the reason, except in CI (CI=true), where .ci/run installs chromium
and a missing browser is a failure. HCP_SCREENSHOT=docs/serve.png keeps the screenshot the README shows.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

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


def test_rate_correct_and_save_a_review(page, rubric, tmp_path):
    with served(FakeBackend(GOOD_ANSWER), rubric, tmp_path) as server:
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
        assert "fake-model (fake)" in page.inner_text("#rated-by")
        assert page.input_value("#reasoning") == GOOD_ANSWER["reasoning"]
        assert page.input_value("#strengths").splitlines() == GOOD_ANSWER["strengths"]

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
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"


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
    answer = {**GOOD_ANSWER, "reasoning": attack, "strengths": [attack]}
    with served(FakeBackend(answer, model="<b>bold</b>"), rubric, tmp_path) as server:
        page.goto(server.url + "/")
        page.fill("#transcript", TRANSCRIPT)
        page.click("#rate")
        page.wait_for_selector("#result:not([hidden])", timeout=WAIT_MS)
        assert page.input_value("#reasoning") == attack
        assert "<b>bold</b>" in page.inner_text("#rated-by")
        assert page.locator("img").count() == 0 and page.locator("#rated-by b").count() == 0
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
    assert downloaded["csv"][0] == "visits.csv" and downloaded["jsonl"][0] == "visits.jsonl"
    assert [line.split(",")[0] for line in downloaded["csv"][1].splitlines()[1:]] == ["v1", "v2", "v3"]
    records = [json.loads(x) for x in downloaded["jsonl"][1].splitlines()]
    assert [(r["id"], r["status"]) for r in records] == [("v1", "ok"), ("v2", "failed"), ("v3", "ok")]
