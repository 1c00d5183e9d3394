"""The distribution arithmetic (hcp/scoring/confidence.py) on tables worked by hand, and the needs_review flag
through score_transcript, JSON and the terminal."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

import hcp.scoring.backends
from hcp.cli import cli
from hcp.scoring.backends import Generation
from hcp.scoring.confidence import (
    TokenStep,
    central_interval,
    chosen_confidence,
    distributions_from_steps,
    expected_score,
    key_before,
    renormalise,
    score_fields,
    summarize,
    weighted_sum_distribution,
)
from hcp.scoring.score import ScoreOptions, score_transcript
from tests.fakes import GOOD_ANSWER, FakeBackend

L = math.log
NAMES = ("empathy", "clarity", "accuracy", "professionalism")


@pytest.mark.parametrize(("given", "expected", "why"), [
    ({1: L(1), 2: L(3)}, {1: 0.25, 2: 0.75}, "1:3 odds"),
    ({3: -0.5, 4: -0.5}, {3: 0.5, 4: 0.5}, "equal log-probabilities"),
    ({5: 1000.0, 1: 0.0}, {1: 0.0, 5: 1.0}, "large logits do not overflow"),
    ({}, {}, "nothing given, nothing back"),
])
def test_renormalise(given, expected, why):
    got = renormalise(given)
    assert got.keys() == expected.keys(), why
    assert all(got[k] == pytest.approx(v, abs=1e-12) for k, v in expected.items()), why


@pytest.mark.parametrize(("distribution", "chosen", "mean", "confidence"), [
    ({1: 0.2, 2: 0.3, 5: 0.5}, 5, 0.2 + 0.6 + 2.5, 0.5),
    ({1: 0.2, 2: 0.3, 5: 0.5}, 3, 3.3, 0.0),  # a chosen score the distribution gives nothing
    ({4: 1.0}, 4, 4.0, 1.0),
])
def test_expected_score_and_confidence(distribution, chosen, mean, confidence):
    assert expected_score(distribution) == pytest.approx(mean)
    assert chosen_confidence(distribution, chosen) == confidence


def test_weighted_sum_is_an_exact_convolution():
    # A: 1 or 3 (even odds), B: always 2, weights 0.5 each -> 1.5 or 2.5, even odds.
    assert weighted_sum_distribution([{1: 0.5, 3: 0.5}, {2: 1.0}], [0.5, 0.5]) == pytest.approx({1.5: 0.5, 2.5: 0.5})
    # Three uniform dimensions on 1..5 with weights .3/.3/.4: 125 combinations, mass 1, mean 3.
    uniform = dict.fromkeys(range(1, 6), 0.2)
    total = weighted_sum_distribution([uniform] * 3, [0.3, 0.3, 0.4])
    assert sum(total.values()) == pytest.approx(1.0)
    assert sum(v * p for v, p in total.items()) == pytest.approx(3.0)
    assert total[1.0] == pytest.approx(0.2 ** 3) and total[5.0] == pytest.approx(0.2 ** 3)


@pytest.mark.parametrize(("distribution", "level", "interval", "why"), [
    ({1.5: 0.5, 2.5: 0.5}, 0.9, (1.5, 2.5), "both halves are inside a 90% interval"),
    ({1: 0.9, 2: 0.1}, 0.8, (1, 1), "10% tails: the cumulative 0.9 at 1 reaches the upper 0.9"),
    ({1: 0.9, 2: 0.1}, 0.9, (1, 2), "5% tails: the upper end needs 0.95, only 2 reaches it"),
    ({1: 0.03, 2: 0.94, 3: 0.03}, 0.9, (2, 2), "3% on each side is under the 5% tails"),
    ({1: 0.06, 2: 0.88, 3: 0.06}, 0.9, (1, 3), "6% on each side is over the 5% tails"),
])
def test_central_interval(distribution, level, interval, why):
    assert central_interval(distribution, level) == interval, why


def test_summary_flags_each_dimension_under_the_threshold():
    weights = {"empathy": 0.5, "clarity": 0.5}
    rating = {"empathy": 3, "clarity": 2}
    dists = {"empathy": {1: 0.5, 3: 0.5}, "clarity": {2: 1.0}}
    summary = summarize(rating, dists, weights, threshold=0.6, level=0.9)
    assert summary.expected == {"empathy": 2.0, "clarity": 2.0}
    assert summary.confidence == {"empathy": 0.5, "clarity": 1.0}
    assert summary.overall_expected == 2.0 and summary.overall_interval == (1.5, 2.5)
    assert summary.review_reasons == ["low_confidence:empathy"]
    assert summarize(rating, dists, weights, threshold=0.5, level=0.9).review_reasons == []  # not below: equal
    assert summarize(rating, {"empathy": dists["empathy"]}, weights, threshold=0.6, level=0.9) is None


def test_score_fields_are_the_schemas_integer_enums(rubric):
    assert score_fields(rubric.json_schema) == {name: [1, 2, 3, 4, 5] for name in NAMES}
    ten = {"properties": {"a": {"enum": list(range(1, 11)), "type": "integer"}, "b": {"type": "string"}}}
    assert score_fields(ten) == {}  # '10' is written '1' then '0': no distribution rather than a wrong one


@pytest.mark.parametrize(("text", "found"), [
    ('{"reasoning": "x", "empathy": ', ("empathy", " ")),
    ('{"reasoning": "x", "empathy":', ("empathy", "")),
    ('..."] ,"empathy" : ', ("empathy", " ")),
    ('{"reasoning": "he said \\"empathy\\": ', None),  # inside a string: the quote is escaped
    ('{"empathy_evidence": ', None),  # another field
    ('{"empathy": 4', None),
])
def test_key_before(text, found):
    assert key_before(text, NAMES) == found


def test_distributions_from_steps_renormalise_over_allowed_score_spellings():
    steps = [
        TokenStep('{"reasoning": "a 5", "empathy":', -0.1, ()),
        # After the colon: ' 4' and '4' both spell 4 (.6 + .1), ' 3' spells 3 (.2); ' ' and 'x' are no scores.
        TokenStep(" 4", L(0.6), ((" 4", L(0.6)), (" 3", L(0.2)), ("4", L(0.1)), (" ", L(0.05)), ("x", L(0.05)))),
        TokenStep(', "clarity":', -0.1, ()),
        TokenStep(" ", L(0.5), ((" ", L(0.5)), (" 2", L(0.4)))),
        # After ': ' a second space is not allowed: ' 5' is left out, the chosen '2' is not in its own top list.
        TokenStep("2", L(0.3), ((" 5", L(0.6)), ("1", L(0.1)))),
        TokenStep("}", -0.1, ()),
    ]
    got = distributions_from_steps(steps, NAMES, [1, 2, 3, 4, 5])
    assert got.keys() == {"empathy", "clarity"}  # accuracy and professionalism never came
    assert got["empathy"] == pytest.approx({3: 0.2 / 0.9, 4: 0.7 / 0.9})
    assert got["clarity"] == pytest.approx({1: 0.25, 2: 0.75})


def scored(distribution, answer=GOOD_ANSWER) -> Generation:
    text = json.dumps(answer)
    return Generation(text, "stop", 100, 50, 0.1, score_distribution=distribution)


CONFIDENT = {name: {s: (0.9 if s == GOOD_ANSWER[name] else 0.025) for s in range(1, 6)} for name in NAMES}


QUOTED = "RD: I understand how you feel. Patient: Hello."  # the fake's evidence quotes it, so it verifies


def test_needs_review_when_a_quote_is_not_in_the_transcript(rubric, tmp_path):
    result = score_transcript("RD: Hi. Patient: Hello.", FakeBackend(scored(CONFIDENT)), rubric,
                              ScoreOptions(raw_output_dir=tmp_path))
    assert result.review_reasons == [f"unverified_evidence:{name}" for name in NAMES] and result.needs_review


def test_needs_review_when_a_dimension_is_unsure(rubric, tmp_path):
    unsure = {**CONFIDENT, "clarity": {3: 0.45, 4: 0.4, 5: 0.15}}
    result = score_transcript(QUOTED, FakeBackend(scored(unsure)), rubric,
                              ScoreOptions(raw_output_dir=tmp_path))
    assert result.review_reasons == ["low_confidence:clarity"] and result.needs_review
    payload = json.loads(json.dumps(result.to_json()))
    assert payload["needs_review"] is True and payload["confidence"]["clarity"] == 0.4
    assert payload["distribution"]["clarity"] == {"3": 0.45, "4": 0.4, "5": 0.15}
    assert payload["expected"]["clarity"] == pytest.approx(3.7)
    lo, hi = payload["overall_interval"]
    assert lo <= payload["overall_expected"] <= hi


def test_a_confident_rating_is_not_flagged(rubric, tmp_path):
    result = score_transcript(QUOTED, FakeBackend(scored(CONFIDENT)), rubric,
                              ScoreOptions(raw_output_dir=tmp_path))
    assert result.review_reasons == [] and result.needs_review is False
    assert result.confidence == dict.fromkeys(NAMES, 0.9)


def test_without_probabilities_the_json_says_null(rubric, tmp_path):
    result = score_transcript(QUOTED, FakeBackend(scored(None)), rubric,
                              ScoreOptions(raw_output_dir=tmp_path)).to_json()
    assert result["distribution"] is None and result["confidence"] is None and result["overall_interval"] is None
    assert result["needs_review"] is False and result["review_reasons"] == []


def test_the_threshold_comes_from_the_config(tmp_path, monkeypatch):
    config = tmp_path / "c.yaml"
    config.write_text("scoring:\n  confidence_threshold: 0.95\n")
    monkeypatch.setattr(hcp.scoring.backends, "open_backend", lambda *a, **k: FakeBackend(scored(CONFIDENT)))
    result = CliRunner().invoke(cli, ["score", QUOTED, "--json", "--config", str(config)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["review_reasons"] == [f"low_confidence:{n}" for n in NAMES]


def test_terminal_shows_confidence_interval_and_the_flag(monkeypatch):
    unsure = {**CONFIDENT, "empathy": {4: 0.3, 5: 0.35, 3: 0.35}}
    monkeypatch.setattr(hcp.scoring.backends, "open_backend", lambda *a, **k: FakeBackend(scored(unsure)))
    out = CliRunner().invoke(cli, ["score", QUOTED], catch_exceptions=False).stdout
    assert "confidence" in out and "expected" in out and "0.35" in out
    assert "overall 90% interval:" in out
    assert "Needs review: low_confidence:empathy" in out


def test_terminal_says_when_there_are_no_probabilities(monkeypatch):
    monkeypatch.setattr(hcp.scoring.backends, "open_backend", lambda *a, **k: FakeBackend(scored(None)))
    out = CliRunner().invoke(cli, ["score", QUOTED], catch_exceptions=False).stdout
    assert "no score probabilities from this backend" in out and "Needs review" not in out


def test_batch_records_and_csv_carry_the_flag_and_the_distribution(monkeypatch, tmp_path):
    import csv

    unsure = {**CONFIDENT, "accuracy": {4: 0.3, 3: 0.7}}
    backend = FakeBackend(scored(unsure), scored(CONFIDENT), scored(None))
    monkeypatch.setattr(hcp.scoring.backends, "open_backend", lambda *a, **k: backend)
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": f"t{n}", "transcript": f"{QUOTED} RD: Bye {n}."}) + "\n"
                           for n in range(3)))
    result = CliRunner().invoke(cli, ["batch", str(inp), "--out", str(tmp_path / "out.jsonl"), "--format", "csv"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    records = {r["id"]: r for r in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
    assert records["t0"]["needs_review"] is True and records["t0"]["review_reasons"] == ["low_confidence:accuracy"]
    assert records["t0"]["distribution"]["accuracy"] == {"3": 0.7, "4": 0.3}
    assert records["t1"]["needs_review"] is False and records["t1"]["confidence"]["empathy"] == 0.9
    assert records["t2"]["distribution"] is None and records["t2"]["needs_review"] is False
    rows = {r["id"]: r for r in csv.DictReader((tmp_path / "out.csv").open())}
    assert (rows["t0"]["needs_review"], rows["t0"]["review_reasons"], rows["t0"]["accuracy_confidence"]) == (
        "True", "low_confidence:accuracy", "0.3")
    assert rows["t1"]["needs_review"] == "False" and rows["t2"]["empathy_confidence"] == ""
