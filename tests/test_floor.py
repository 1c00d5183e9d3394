"""The floor in `hcp evaluate`: what raters that never read what was said (the majority score, the length of the
conversation) get on the same labels, and the model's gain over the better of them. A rater that merely favours
long conversations must not look good in hcp's own report."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import hcp.scoring.backends
from hcp.cli import cli
from hcp.evaluate.floor import floor_metrics, length_rater, majority_rater
from hcp.evaluate.metrics import OVERALL
from hcp.rubric import normalize_transcript
from hcp.scoring.backends import Generation
from tests.fakes import GOOD_ANSWER, FakeBackend

DIMENSIONS = ("empathy", "clarity", "accuracy", "professionalism")


def conversation(pairs: int, warm: bool) -> str:
    lines = []
    for k in range(pairs):
        opening = "I hear how hard this has been. " if warm and k == 0 else ""
        lines += [f"RD: {opening}Let us look at meal {k} together.", f"Patient: Meal {k} was toast and tea."]
    return "\n".join(lines)


def length_part(pairs: int) -> int:
    return min(4, 1 + pairs // 3)


# 48 conversations: every length from 1 to 12 exchanges four times, half of each length warm. The humans' score
# is the length's part (1-4) and one more point for warmth, which a rater only sees by reading.
CASES = [(1 + i % 12, bool((i // 12) % 2)) for i in range(48)]
TRANSCRIPTS = {f"v{i}": conversation(pairs, warm) for i, (pairs, warm) in enumerate(CASES)}


def scores_of(value: int, rubric) -> dict[str, float]:  # noqa: ANN001
    scores = dict.fromkeys(DIMENSIONS, value)
    return {**scores, OVERALL: rubric.overall(scores)}


@pytest.fixture
def human(rubric):
    return {f"v{i}": scores_of(length_part(pairs) + warm, rubric) for i, (pairs, warm) in enumerate(CASES)}


def test_the_majority_rater_gives_the_most_common_score_and_of_a_tie_the_lower(rubric):
    human = {"a": scores_of(2, rubric), "b": scores_of(4, rubric), "c": scores_of(4, rubric),
             "d": scores_of(2, rubric), "e": scores_of(5, rubric)}
    predicted = majority_rater(human, rubric)
    assert {ident: scores["empathy"] for ident, scores in predicted.items()} == dict.fromkeys("abcde", 2)
    assert predicted["a"][OVERALL] == rubric.overall(dict.fromkeys(DIMENSIONS, 2))


def test_the_length_rater_predicts_each_transcript_without_its_own_label(rubric, human):
    first = length_rater(TRANSCRIPTS, human, rubric, seed=42)
    changed = {**human, "v7": scores_of(1 if human["v7"]["empathy"] > 1 else 5, rubric)}
    second = length_rater(TRANSCRIPTS, changed, rubric, seed=42)
    assert second["v7"] == first["v7"]  # the fit that predicted v7 never saw its label
    assert all(set(p) == {*DIMENSIONS, OVERALL} and all(1 <= p[d] <= 5 for d in DIMENSIONS) for p in first.values())


def test_the_length_rater_reads_length(rubric, human):
    metrics = floor_metrics(human, TRANSCRIPTS, human, rubric, resamples=200, seed=1)
    assert metrics["raters"]["length"]["empathy"]["qwk"] > 0.6
    assert metrics["raters"]["majority"]["empathy"]["qwk"] == 0.0  # a constant rater agrees only by chance
    assert metrics["best"]["empathy"] == "length"


def length_favouring(human):  # noqa: ANN001, ANN201
    """Scores from the length alone: the humans' length part, warmth never read."""
    return {ident: {n: float(length_part(CASES[int(ident[1:])][0])) for n in DIMENSIONS} for ident in human}


def test_a_rater_that_favours_long_conversations_gains_nothing_over_the_floor_and_one_that_reads_does(rubric, human):
    by_length = {i: {**s, OVERALL: rubric.overall(s)} for i, s in length_favouring(human).items()}
    floor = floor_metrics(by_length, TRANSCRIPTS, human, rubric, resamples=500, seed=3)
    gain = floor["gain"][OVERALL]["qwk"]
    assert gain["ci_low"] < 0 < gain["ci_high"] or gain["ci_high"] <= 0, gain
    reading = floor_metrics(human, TRANSCRIPTS, human, rubric, resamples=500, seed=3)["gain"][OVERALL]["qwk"]
    assert reading["ci_low"] > 0, reading


def test_a_small_set_has_no_length_rater_and_says_why(rubric, human):
    few = {i: human[i] for i in list(human)[:6]}
    floor = floor_metrics(few, TRANSCRIPTS, few, rubric, resamples=100, seed=1)
    assert list(floor["raters"]) == ["majority"] and set(floor["best"].values()) == {"majority"}
    assert "needs 10 labelled transcripts" in floor["notes"][0]


class ByLength(FakeBackend):
    """Rates from the length of the conversation alone: a rater that merely favours long conversations."""

    def generate(self, messages, schema, options):  # noqa: ANN001, ANN201
        self.calls.append((messages, options))
        transcript = messages[-1]["content"].split("Transcript:\n", 1)[1]
        pairs = transcript.count("\nPatient:") + transcript.startswith("Patient:")
        return Generation(json.dumps({**GOOD_ANSWER, **dict.fromkeys(DIMENSIONS, length_part(pairs))}), "stop", 100,
                          40, 0.01)


def test_hcp_evaluate_reports_the_floor_and_a_length_rater_does_not_look_good(rubric, human, tmp_path, monkeypatch):
    data = tmp_path / "labelled.jsonl"
    data.write_text("".join(json.dumps({"id": i, "transcript": TRANSCRIPTS[i],
                                        **{n: int(human[i][n]) for n in DIMENSIONS}}) + "\n" for i in human))
    backend = ByLength()
    monkeypatch.setattr(hcp.scoring.backends, "open_backend", lambda *a, **k: backend)
    report = tmp_path / "report"
    result = CliRunner().invoke(cli, ["evaluate", "--data", str(data), "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert len(backend.calls) == len(human)
    assert {normalize_transcript(m[-1]["content"].split("Transcript:\n", 1)[1]) for m, _ in backend.calls} == {
        normalize_transcript(t) for t in TRANSCRIPTS.values()}
    floor = json.loads((report / "metrics.json").read_text())["floor"]
    assert floor["n"] == 48 and set(floor["raters"]) == {"majority", "length"}
    gain = floor["gain"][OVERALL]["qwk"]
    assert gain["ci_low"] < 0 < gain["ci_high"] or gain["ci_high"] <= 0, gain
    text = (report / "report.md").read_text()
    assert "The floor: raters that never read what was said" in text
    assert "model − the better trivial rater" in result.output
