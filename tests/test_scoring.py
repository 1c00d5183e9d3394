"""The scorer: fit check, validation, retries, raw output kept, nothing made up, nothing patient in logs."""

from __future__ import annotations

import json
import logging

import pytest

from hcp.errors import ContextOverflowError, DataError, InvalidOutputError
from hcp.scoring.backends import Generation
from hcp.scoring.score import ScoreOptions, answer_budget, score_transcript
from tests.fakes import GOOD_ANSWER, FakeBackend

SECRET = "RD: Hello Mrs Zyxwvut, your potassium was 6.1. Patient: I ate bananas."


def options(tmp_path, **kw):
    return ScoreOptions(raw_output_dir=tmp_path, **kw)


def test_valid_answer_gives_rating_and_overall(rubric, tmp_path):
    backend = FakeBackend(GOOD_ANSWER)
    result = score_transcript(SECRET, backend, rubric, options(tmp_path))
    assert result.rating == GOOD_ANSWER
    assert result.overall == pytest.approx(0.3 * 5 + 0.25 * 4 + 0.25 * 4 + 0.2 * 5)
    assert (result.attempts, result.backend, result.model) == (1, "fake", "fake-model")
    messages, opts = backend.calls[0]
    assert messages == rubric.messages(SECRET)
    assert opts.num_predict == answer_budget(rubric) >= 3000  # room for the longest answer the schema allows
    assert opts.temperature == 0.0 and opts.seed == 42


def test_invalid_then_valid_retries_with_new_seed(rubric, tmp_path):
    backend = FakeBackend('{"reasoning": "cut', GOOD_ANSWER)
    result = score_transcript(SECRET, backend, rubric, options(tmp_path))
    assert result.attempts == 2
    seeds = [o.seed for _, o in backend.calls]
    assert seeds == [42, 43]
    assert backend.calls[1][1].temperature >= 0.5  # a retry at temperature 0 would repeat itself


@pytest.mark.parametrize(
    "bad, reason",
    [
        ('{"reasoning": "x"', "truncated JSON"),
        (json.dumps({**GOOD_ANSWER, "empathy": 7}), "score out of range"),
        (json.dumps({k: v for k, v in GOOD_ANSWER.items() if k != "clarity"}), "missing score"),
        (Generation(json.dumps(GOOD_ANSWER), "length", 100, 3170, 1.0), "done_reason length"),
    ],
)
def test_invalid_after_retries_saves_raw_output(rubric, tmp_path, bad, reason):
    backend = FakeBackend(bad)
    with pytest.raises(InvalidOutputError) as info:
        score_transcript(SECRET, backend, rubric, options(tmp_path, max_retries=2))
    assert len(backend.calls) == 3, reason
    saved = list(tmp_path.glob("hcp-invalid-output-*.json"))
    assert len(saved) == 1 and str(saved[0]) in str(info.value)
    record = json.loads(saved[0].read_text())
    assert len(record["attempts"]) == 3
    assert SECRET not in str(info.value)


def test_transcript_too_long_is_refused_before_generating(rubric, tmp_path):
    backend = FakeBackend(GOOD_ANSWER)
    long = "RD: Hello. Patient: " + "I ate bread. " * 2000
    with pytest.raises(ContextOverflowError) as info:
        score_transcript(long, backend, rubric, options(tmp_path, num_ctx=8192))
    assert backend.calls == []
    message = str(info.value)
    assert "num_ctx 8192" in message and "prompt of" in message and "raise model.num_ctx" in message


def test_model_context_caps_num_ctx(rubric, tmp_path):
    backend = FakeBackend(GOOD_ANSWER, context=4096)
    transcript = "RD: Hi. Patient: " + "x" * 1000
    with pytest.raises(ContextOverflowError, match="num_ctx 4096"):
        score_transcript(transcript, backend, rubric, options(tmp_path, num_ctx=32768))


def test_filled_context_after_the_call_is_refused(rubric, tmp_path):
    # An engine that truncated the prompt silently fills the whole context: never rate that.
    backend = FakeBackend(Generation(json.dumps(GOOD_ANSWER), "stop", 8000, 192, 1.0))
    with pytest.raises(ContextOverflowError, match="filled up"):
        score_transcript(SECRET, backend, rubric, options(tmp_path))


def test_empty_transcript(rubric, tmp_path):
    with pytest.raises(DataError, match="empty"):
        score_transcript(" \n\t ", FakeBackend(), rubric, options(tmp_path))


def test_no_transcript_text_in_logs(rubric, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    score_transcript(SECRET, FakeBackend("not json", GOOD_ANSWER), rubric, options(tmp_path))
    assert caplog.records, "the scorer should log what it did"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "Zyxwvut" not in logged and "bananas" not in logged
