"""The scorer: fit check, validation, retries, raw output kept, nothing made up, nothing patient in logs."""

from __future__ import annotations

import json
import logging

import pytest

from hcp.errors import ContextOverflowError, DataError, InvalidOutputError
from hcp.scoring.backends import Generation
from hcp.scoring.score import ScoreOptions, answer_budget, score_transcript
from tests.fakes import GOOD_ANSWER, FakeBackend, QuotingBackend

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
    assert opts.num_predict == answer_budget(rubric) == ScoreOptions().answer_tokens == 1024  # model.answer_tokens
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
    transcript = "RD: Hi. Patient: " + "x" * 3000
    with pytest.raises(ContextOverflowError, match="num_ctx 4096"):
        score_transcript(transcript, backend, rubric, options(tmp_path, num_ctx=32768))


def test_filled_context_after_the_call_is_refused(rubric, tmp_path):
    # An engine that truncated the prompt silently fills the whole context: never rate that.
    backend = FakeBackend(Generation(json.dumps(GOOD_ANSWER), "stop", 8000, 193, 1.0))
    with pytest.raises(ContextOverflowError, match="filled up"):
        score_transcript(SECRET, backend, rubric, options(tmp_path))


def test_an_answer_that_exactly_fills_the_context_is_retried_not_refused(rubric, tmp_path):
    # The prompt fit beside the budget (prompt + budget == num_ctx, which check_fits allows); the answer ran to
    # the budget and was cut off: that is an answer to retry, not a context that overflowed.
    budget = answer_budget(rubric)
    cut = Generation(json.dumps(GOOD_ANSWER)[:50], "length", 8192 - budget, budget, 1.0)
    backend = FakeBackend(cut, GOOD_ANSWER)
    result = score_transcript(SECRET, backend, rubric, options(tmp_path, num_ctx=8192))
    assert result.rating == GOOD_ANSWER and result.attempts == 2


def test_empty_transcript(rubric, tmp_path):
    with pytest.raises(DataError, match="empty"):
        score_transcript(" \n\t ", FakeBackend(), rubric, options(tmp_path))


def test_no_transcript_text_in_logs(rubric, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    score_transcript(SECRET, FakeBackend("not json", GOOD_ANSWER), rubric, options(tmp_path))
    assert caplog.records, "the scorer should log what it did"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "Zyxwvut" not in logged and "bananas" not in logged


# --- the answer budget ------------------------------------------------------------------------------------


def test_the_answer_budget_is_the_configured_one_capped_by_the_schema(rubric):
    assert answer_budget(rubric, 300) == 300
    assert answer_budget(rubric, 10**6) == rubric.max_answer_chars  # no room kept beyond the longest answer


def transcript_of(prompt_tokens: int, rubric) -> str:
    """A transcript whose prompt is `prompt_tokens` long for FakeBackend (which counts characters)."""
    head = "RD: Hello. Patient: "
    overhead = sum(len(m["content"]) for m in rubric.messages(head + "b")) - 1
    return head + "b" * (prompt_tokens - overhead)


def test_a_long_transcript_that_fits_beside_the_answer_budget_is_rated(rubric, tmp_path):
    # 6,400 prompt tokens in 8,192: refused while the schema's longest answer (~3,170 tokens) was reserved.
    long = transcript_of(6400, rubric)
    backend = FakeBackend(GOOD_ANSWER)
    result = score_transcript(long, backend, rubric, options(tmp_path, num_ctx=8192))
    assert result.rating == GOOD_ANSWER
    assert backend.count_prompt_tokens(rubric.messages(long)) == 6400
    assert backend.calls[0][1].num_predict == 1024 and backend.calls[0][1].num_ctx == 8192


def test_the_refusal_names_the_answer_budget(rubric, tmp_path):
    long = transcript_of(7800, rubric)
    for budget in (1024, 600):
        with pytest.raises(ContextOverflowError) as info:
            score_transcript(long, FakeBackend(), rubric, options(tmp_path, num_ctx=8192, answer_tokens=budget))
        message = str(info.value)
        assert f"a prompt of 7800 tokens, and with the answer budget of {budget} tokens (model.answer_tokens) " \
               f"that needs {7800 + budget}, over num_ctx 8192" in message
    # ...and a smaller budget lets it in.
    assert score_transcript(long, FakeBackend(), rubric, options(tmp_path, answer_tokens=300)).attempts == 1


def test_an_answer_that_hits_the_budget_is_retried_then_reported(rubric, tmp_path):
    cut = Generation(json.dumps(GOOD_ANSWER)[:90], "length", 500, 300, 1.0)
    backend = FakeBackend(cut, GOOD_ANSWER)
    result = score_transcript(SECRET, backend, rubric, options(tmp_path, answer_tokens=300))
    assert result.attempts == 2 and [o.num_predict for _, o in backend.calls] == [300, 300]

    backend = FakeBackend(cut)
    with pytest.raises(InvalidOutputError) as info:
        score_transcript(SECRET, backend, rubric, options(tmp_path / "x", answer_tokens=300, max_retries=2))
    assert len(backend.calls) == 3
    message = str(info.value)
    assert "cut off after 300 tokens (done_reason 'length'; the answer budget is 300)" in message
    assert "raise model.answer_tokens (now 300)" in message


# --- no transcript text in logs or errors, even when the model quotes it ---------------------------------

MARKER = "Xq7Marker"
QUOTED = f"RD: Good morning Mrs {MARKER}vich, your INR is 4.2. Patient: {MARKER} ate kale every day."


def transcript_pieces(text: str) -> list[str]:
    """The marker and every run of 12 characters of the transcript: none may appear where it should not."""
    flat = " ".join(text.split())
    return [MARKER, *(flat[i:i + 12] for i in range(0, len(flat) - 11, 6))]


def assert_private(text: str, *outputs: str) -> None:
    joined = "\n".join(outputs)
    for piece in transcript_pieces(text):
        assert piece not in joined, f"transcript text {piece!r} in: {joined[:300]}"


@pytest.mark.parametrize("kinds", [("valid",), ("out_of_range",), ("extra_key",), ("cut",),
                                   ("extra_key", "out_of_range", "valid")])
def test_answers_that_quote_the_transcript_never_reach_a_log_or_an_error(rubric, tmp_path, caplog, kinds):
    caplog.set_level(logging.DEBUG, logger="hcp")
    backend = QuotingBackend(*kinds)
    error = ""
    try:
        result = score_transcript(QUOTED, backend, rubric, options(tmp_path, max_retries=2))
        assert MARKER in result.rating["reasoning"]  # the fake does quote it: the rating itself may hold it
    except InvalidOutputError as exc:
        error = str(exc)
        (saved,) = tmp_path.glob("hcp-invalid-output-*.json")
        assert MARKER in saved.read_text()  # the raw answers are kept for the user, as they were
    assert caplog.records
    assert_private(QUOTED, error, *(r.getMessage() for r in caplog.records))


def test_a_quoting_backend_on_a_too_long_transcript(rubric, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="hcp")
    long = QUOTED + " Patient: " + f"{MARKER} " * 3000
    with pytest.raises(ContextOverflowError) as info:
        score_transcript(long, QuotingBackend(), rubric, options(tmp_path))
    assert_private(long, str(info.value), *(r.getMessage() for r in caplog.records))
