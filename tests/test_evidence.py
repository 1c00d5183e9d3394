"""Quoted evidence: the check of each quote against the transcript, and what scoring does with it."""

from __future__ import annotations

import json
import logging

import pytest

from hcp.errors import InvalidOutputError
from hcp.evidence import PROBLEMS, check_evidence, check_quote, normalize, turns
from hcp.scoring.score import ScoreOptions, score_transcript
from tests.fakes import GOOD_ANSWER, FakeBackend

TRANSCRIPT = """RD: Good morning, I'm Sam, a registered dietitian. Is it okay if we talk about your diet today?
Patient: Yes. I'm worried about my blood sugar, to be honest.
RD: I understand this can be hard — it's  a lot to take in.
Let's take it one step at a time.
Dr Lee: Your HbA1c was 58 last month.
Patient: Okay.
RD: Could you tell me, in your own words, what you'll try this week?"""


@pytest.mark.parametrize("quote, verified, problem, reason", [
    ("RD: I understand this can be hard", True, None, "exact words, part of a turn"),
    ("RD:   I understand   this can\tbe hard", True, None, "whitespace differs"),
    ("rd: I UNDERSTAND this can be HARD", True, None, "case differs, the speaker's too"),
    ("RD: I understand this can be hard, it's a lot to take in", True, None, "punctuation differs (dash, comma)"),
    ("RD: Its a lot", False, "not_found", "a word changed by dropping its apostrophe is another word"),
    ("RD: it’s a lot to take in", True, None, "a curly apostrophe is punctuation too"),
    ("RD: a lot to take in. Let's take it one step", True, None, "a turn that runs over two lines is one turn"),
    ("Patient: I understand this can be hard", False, "wrong_speaker", "the words are the RD's"),
    ("RD: Your HbA1c was 58 last month", False, "wrong_speaker", "said by another provider, Dr Lee"),
    ("Dr Lee: your HbA1c was 58 last month.", True, None, "a two-word speaker"),
    ("RD: nderstand this can be har", False, "not_found", "partial words at both ends"),
    ("RD: I understand this can be difficult", False, "not_found", "one word changed"),
    ("RD: I will refer you to a cardiologist", False, "not_found", "an invented quote"),
    ("RD: one step at a time. Dr Lee: Your HbA1c", False, "not_found", "a quote spanning two turns"),
    ("Patient: to be honest. RD: I understand", False, "not_found", "a quote spanning two turns' lines"),
    ("I understand this can be hard", False, "no_speaker", "no speaker given"),
    ("RD: I", False, "too_short", "under three words: matches almost any turn"),
    ("Patient: Okay.", True, None, "a short quote that is a whole turn"),
    ("Patient: Yes", False, "too_short", "short and only part of a turn"),
    ("RD:", False, "too_short", "a speaker and no words"),
    ("", False, "no_speaker", "empty"),
])
def test_quote_check(quote, verified, problem, reason):
    check = check_quote(quote, turns(TRANSCRIPT))
    assert (check.verified, check.problem) == (verified, problem), reason
    assert problem is None or problem in PROBLEMS


def test_a_verified_quote_gives_the_line_of_its_turn():
    assert check_quote("RD: Let's take it one step at a time", turns(TRANSCRIPT)).line == 3
    assert check_quote("Patient: Okay.", turns(TRANSCRIPT)).line == 6


def test_a_transcript_on_one_line_is_split_at_every_speaker():
    one_line = "RD: Hello, how are you feeling today? Patient: I'm struggling with my diet."
    assert [t.speaker for t in turns(one_line)] == ["rd", "patient"]
    assert check_quote("Patient: struggling with my diet", turns(one_line)).verified
    assert check_quote("RD: struggling with my diet", turns(one_line)).problem == "wrong_speaker"


def test_a_colon_inside_a_turn_of_a_multiline_transcript_is_not_a_speaker():
    text = "RD: Remember Sunday: no sweets at all.\nPatient: Fine."
    assert check_quote("RD: Remember Sunday: no sweets", turns(text)).verified


def test_normalize():
    assert normalize("I’m  SO\nsorry…") == normalize("i'm so sorry") == "i m so sorry"


# --- scoring: statuses in the result, --strict-evidence -------------------------------------------------------

QUOTED = {"empathy_evidence": ["RD: I understand this can be hard"],
          "clarity_evidence": ["RD: in your own words, what you'll try this week"],
          "accuracy_evidence": ["Dr Lee: Your HbA1c was 58 last month."],
          "professionalism_evidence": ["RD: I'm Sam, a registered dietitian", "RD: Is it okay if we talk"]}
INVENTED = {**QUOTED, "clarity_evidence": ["RD: Please write down everything you eat"]}


def test_every_quote_of_a_rating_is_checked_and_marked(rubric, tmp_path):
    result = score_transcript(TRANSCRIPT, FakeBackend({**GOOD_ANSWER, **INVENTED}), rubric,
                              ScoreOptions(raw_output_dir=tmp_path))
    assert list(result.evidence) == list(rubric.names)
    assert result.evidence["empathy"] == [{"speaker": "RD", "quote": "I understand this can be hard",
                                           "verified": True, "problem": None, "line": 3}]
    assert result.evidence["clarity"][0]["verified"] is False
    assert result.evidence["clarity"][0]["problem"] == "not_found"
    assert result.evidence_verified is False
    assert json.loads(json.dumps(result.to_json()))["evidence"]["professionalism"][1]["verified"] is True


def test_all_quotes_verified(rubric, tmp_path):
    result = score_transcript(TRANSCRIPT, FakeBackend({**GOOD_ANSWER, **QUOTED}), rubric,
                              ScoreOptions(raw_output_dir=tmp_path))
    assert result.evidence_verified is True


def test_without_evidence_in_the_schema_there_is_nothing_to_check(tmp_path):
    from hcp.config import load_config
    from hcp.rubric import Rubric

    rubric = Rubric(load_config().scoring.model_copy(update={"evidence": False}))
    backend = FakeBackend(GOOD_ANSWER)
    result = score_transcript(TRANSCRIPT, backend, rubric, ScoreOptions(raw_output_dir=tmp_path, strict_evidence=True))
    assert "empathy_evidence" not in result.rating
    assert (result.evidence, result.evidence_verified, result.attempts) == ({}, None, 1)


def test_strict_evidence_retries_an_unverified_quote_with_a_new_seed(rubric, tmp_path):
    backend = FakeBackend({**GOOD_ANSWER, **INVENTED}, {**GOOD_ANSWER, **QUOTED})
    result = score_transcript(TRANSCRIPT, backend, rubric, ScoreOptions(raw_output_dir=tmp_path, strict_evidence=True))
    assert result.attempts == 2 and result.evidence_verified is True
    assert [o.seed for _, o in backend.calls] == [42, 43]


def test_strict_evidence_reports_after_the_retries_without_quoting(rubric, tmp_path, caplog):
    backend = FakeBackend({**GOOD_ANSWER, **INVENTED})
    caplog.set_level(logging.DEBUG, logger="hcp")
    with pytest.raises(InvalidOutputError) as info:
        score_transcript(TRANSCRIPT, backend, rubric, ScoreOptions(raw_output_dir=tmp_path, strict_evidence=True))
    message = str(info.value)
    assert len(backend.calls) == 3
    assert "clarity_evidence[0]: quote not verified (not in the transcript)" in message
    assert "--strict-evidence" in message
    (saved,) = tmp_path.glob("hcp-invalid-output-*.json")
    assert "write down everything" in saved.read_text()  # the answers are kept for the user, in a private file
    said = message + "\n".join(r.getMessage() for r in caplog.records)
    for words in ("write down everything", "HbA1c", "understand this", "Sam"):
        assert words not in said


def test_without_strict_an_unverified_quote_is_a_rating_marked_unverified(rubric, tmp_path):
    result = score_transcript(TRANSCRIPT, FakeBackend({**GOOD_ANSWER, **INVENTED}), rubric,
                              ScoreOptions(raw_output_dir=tmp_path))
    assert result.attempts == 1 and result.evidence_verified is False


def test_check_evidence_reads_only_the_dimensions_asked(rubric):
    checks = check_evidence({**GOOD_ANSWER, **QUOTED}, TRANSCRIPT, ("empathy",))
    assert list(checks) == ["empathy"] and checks["empathy"][0].verified


def test_a_dimension_cannot_take_the_name_of_another_dimensions_evidence(tmp_path):
    from hcp.config import load_config
    from hcp.errors import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text("scoring:\n  dimensions:\n    tone: {weight: 1, description: A}\n"
                    "    tone_evidence: {weight: 1, description: B}\n")
    with pytest.raises(ConfigError, match="tone_evidence.* taken by the evidence of dimension 'tone'"):
        load_config(path)
